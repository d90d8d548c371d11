import AgentChatCore
import AgentChatRedis

/// Heartbeats of every broker process and Redis's own figures, for the admin page.
///
/// Keys: `agentchat:broker:<id>` holds one broker's last heartbeat (a JSON object; expires by itself), and the sorted
/// set `agentchat:brokers` maps broker ids to when they were last seen (Unix ms; entries older than a day are
/// trimmed at every heartbeat).
package final class OperationsStore: OperationsStoring {
    static let brokers = RedisArgument("\(RedisKeys.prefix)brokers")
    static func broker(_ id: String) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)broker:\(id)") }
    private static let dayMilliseconds: Int64 = 24 * 3600 * 1000

    private let redis: RedisClient

    package init(redis: RedisClient) { self.redis = redis }

    package func heartbeat(id: String, record: [UInt8], now: Int64, ttlMilliseconds: Int64,
                           completion: @escaping StoreCompletion<Void>)
    {
        redis.send(["SET", Self.broker(id), RedisArgument(record), "PX", RedisArgument(ttlMilliseconds)]) { _ in }
        redis.send(["ZREMRANGEBYSCORE", Self.brokers, "-inf", RedisArgument("(\(now - Self.dayMilliseconds)")]) { _ in }
        redis.send(["ZADD", Self.brokers, RedisArgument(now), RedisArgument(id)]) { result in
            completion(result.map { _ in () }.unavailableOnFailure)
        }
    }

    package func forget(id: String) {
        redis.send(["ZREM", Self.brokers, RedisArgument(id)]) { _ in }
        redis.send(["DEL", Self.broker(id)]) { _ in }
    }

    package func heartbeats(since: Int64, completion: @escaping StoreCompletion<[[UInt8]]>) {
        redis.send(["ZRANGEBYSCORE", Self.brokers, RedisArgument(since), "+inf"]) { [redis] result in
            guard case .success(.array(let ids)) = result else { return completion(.failure(.unavailable)) }
            let keys = ids.compactMap(\.string).map(Self.broker)
            guard !keys.isEmpty else { return completion(.success([])) }
            redis.send(["MGET"] + keys) { result in
                guard case .success(.array(let values)) = result else { return completion(.failure(.unavailable)) }
                completion(.success(values.compactMap(\.bytes)))
            }
        }
    }

    package func listedChannelCount(completion: @escaping StoreCompletion<Int>) {
        redis.send(["ZCARD", RedisKeys.directory]) { result in
            guard case .success(let value) = result, let count = value.int else {
                return completion(.failure(.unavailable))
            }
            completion(.success(count))
        }
    }

    package func serverInfo(completion: @escaping StoreCompletion<[String: String]>) {
        redis.send(["INFO"]) { result in
            guard case .success(let value) = result, let text = value.string else {
                return completion(.failure(.unavailable))
            }
            var fields: [String: String] = [:]
            for line in text.split(whereSeparator: \.isNewline) where !line.hasPrefix("#") {
                guard let colon = line.firstIndex(of: ":") else { continue }
                fields[String(line[..<colon])] = String(line[line.index(after: colon)...])
            }
            completion(.success(fields))
        }
    }
}
