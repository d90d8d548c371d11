import AgentChatCore
import AgentChatProtocol
import AgentChatRedis

/// Listed channels, their public indicators, and agent presence in Redis. Loop-bound.
package final class IndicatorStore: IndicatorStoring {
    private let redis: RedisClient

    package init(redis: RedisClient) {
        self.redis = redis
        redis.scripts.register(Self.listing)
        redis.scripts.register(Self.indicators)
    }

    /// KEYS: meta, members, log, rate. ARGV: owner, listed, title, topic, now (ms). Owner only. Answers the time to
    /// file the channel under in the directory (its last activity, else its creation).
    ///
    /// Messages are counted per second (`rate`) only while a channel is listed (`channel_append`), so listing a
    /// channel counts the last two minutes of its history afresh: at most 50 reads of 200 entries.
    static let listing = RedisScript(name: "channel_listing", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        local meta = redis.call('HMGET', KEYS[1], 'owner', 'listed', 'lastActivity', 'createdAt')
        if meta[1] ~= ARGV[1] then return {'forbidden'} end
        if ARGV[2] == '1' and meta[2] ~= '1' then
          redis.call('DEL', KEYS[4])
          local since = tonumber(ARGV[5]) - 120000
          local before = '+'
          for _ = 1, 50 do
            local entries = redis.call('XREVRANGE', KEYS[3], before, '-', 'COUNT', 200)
            local done = #entries < 200
            for _, entry in ipairs(entries) do
              local time = tonumber(entry[2][4])
              if time < since then
                done = true
                break
              end
              redis.call('HINCRBY', KEYS[4], math.floor(time / 1000), 1)
            end
            if done then break end
            before = '(' .. entries[#entries][1]
          end
          redis.call('PEXPIRE', KEYS[4], 120000)
        end
        redis.call('HSET', KEYS[1], 'listed', ARGV[2], 'title', ARGV[3], 'topic', ARGV[4])
        return {'ok', tonumber(meta[3] or meta[4])}
        """)

    /// KEYS: meta, members, rate. ARGV: now (ms). Everything but `online`, plus the member list.
    static let indicators = RedisScript(name: "channel_indicators", source: """
        local meta = redis.call('HMGET', KEYS[1], 'listed', 'title', 'topic', 'seq', 'lastActivity', 'peeks',
                                'peeksActive')
        if meta[1] ~= '1' then return {'unlisted'} end
        local now = math.floor(tonumber(ARGV[1]) / 1000)
        local rate = redis.call('HGETALL', KEYS[3])
        local recent = 0
        for i = 1, #rate, 2 do
          if tonumber(rate[i]) > now - 60 then recent = recent + tonumber(rate[i + 1]) end
        end
        return {'ok', meta[2] or '', meta[3] or '', tonumber(meta[4] or 0), tonumber(meta[5] or 0), recent,
                tonumber(meta[6] or 0), tonumber(meta[7] or 0), redis.call('SMEMBERS', KEYS[2])}
        """)

    /// Lists or unlists a channel (owner only) and updates the directory.
    package func setListing(_ id: ChannelID, owner: DID, listed: Bool, title: String, topic: String, now: Int64,
                            completion: @escaping StoreCompletion<Void>)
    {
        redis.scripts.call(Self.listing.name,
                           keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.log(id), RedisKeys.rate(id)],
                           arguments: [RedisArgument(owner.description), listed ? "1" : "0", RedisArgument(title),
                                       RedisArgument(topic), RedisArgument(now)]) { [redis] result in
            switch result.map(ScriptReply.init) {
            case .failure: completion(.failure(.unavailable))
            case .success(let reply) where reply.status != "ok": completion(.failure(reply.refusal))
            case .success(let reply):
                let command: [RedisArgument] = listed
                    ? ["ZADD", RedisKeys.directory, RedisArgument(reply.int(1) ?? 0), RedisArgument(id.rawValue)]
                    : ["ZREM", RedisKeys.directory, RedisArgument(id.rawValue)]
                redis.send(command) { result in completion(result.map { _ in () }.unavailableOnFailure) }
            }
        }
    }

    /// Moves a listed channel up the directory after activity.
    package func touch(_ id: ChannelID, at time: Int64) {
        redis.send(["ZADD", RedisKeys.directory, "XX", RedisArgument(time), RedisArgument(id.rawValue)]) { _ in }
    }

    /// Listed channels, most recently active first.
    package func directory(cursor: Int, limit: Int, completion: @escaping StoreCompletion<[ChannelID]>) {
        redis.send(["ZREVRANGE", RedisKeys.directory, RedisArgument(cursor), RedisArgument(cursor + limit - 1)]) {
            result in
            completion(result.unavailableOnFailure.map { value in
                (value.array ?? []).compactMap { $0.bytes }.compactMap { ChannelID(String(decoding: $0, as: UTF8.self)) }
            })
        }
    }

    /// The indicators of a channel; nil when it is not listed (or does not exist).
    package func indicators(_ id: ChannelID, now: Int64, completion: @escaping StoreCompletion<ChannelIndicators?>)
    {
        redis.scripts.call(Self.indicators.name, keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.rate(id)],
                           arguments: [RedisArgument(now)]) { [redis] result in
            let reply: ScriptReply
            switch result {
            case .failure: return completion(.failure(.unavailable))
            case .success(let value): reply = ScriptReply(value)
            }
            guard reply.status == "ok", reply.values.count >= 9 else { return completion(.success(nil)) }
            let members = (reply.values[8].array ?? []).compactMap { $0.bytes }
                .compactMap { DID(parsing: String(decoding: $0, as: UTF8.self)) }
            var indicators = ChannelIndicators(
                id: id, listed: true, title: reply.string(1) ?? "", topic: reply.string(2) ?? "",
                members: Int64(members.count), online: 0, messages: reply.int(3) ?? 0,
                messagesLastMinute: reply.int(5) ?? 0, lastActivity: reply.int(4) ?? 0, peeks: reply.int(6) ?? 0,
                peeksActive: reply.int(7) ?? 0)
            guard !members.isEmpty else { return completion(.success(indicators)) }
            // Presence keys live under each agent's own hash tag (one slot each on a cluster), so they are read one
            // by one, pipelined.
            var remaining = members.count
            var failure: RedisError?
            for member in members {
                redis.send(["EXISTS", RedisKeys.presence(member)]) { result in
                    switch result {
                    case .success(let value): indicators.online += Int64(value.int ?? 0)
                    case .failure(let error): failure = error
                    }
                    remaining -= 1
                    if remaining == 0 { completion(failure == nil ? .success(indicators) : .failure(.unavailable)) }
                }
            }
        }
    }

    /// Marks agents present for `milliseconds` (refreshed while they stay connected).
    package func markPresent(_ dids: [DID], milliseconds: Int64) {
        for did in dids {
            redis.send(["SET", RedisKeys.presence(did), "1", "PX", RedisArgument(milliseconds)]) { _ in }
        }
    }

    /// Lets an agent's presence run out after `milliseconds` (its last connection here closed).
    package func expirePresence(_ did: DID, after milliseconds: Int64) {
        redis.send(["PEXPIRE", RedisKeys.presence(did), RedisArgument(milliseconds)]) { _ in }
    }
}
