import AgentChatLoop
import AgentChatRedis
import Logging

/// One Redis command connection for an operator tool (backup, restore), driven from async code: it runs its own
/// loop thread, and `pipeline` sends a batch of commands in one write and waits for every reply.
///
/// Unlike the broker's client it never waits out an outage: a connection lost mid-way fails the pending batch
/// (the tool stops with an error rather than carrying on with a gap).
package final class RedisSession: @unchecked Sendable {
    package let target: RedisTarget
    private let loop: EventLoop
    /// Touched only on the loop thread.
    private var connection: RedisConnection?

    private init(target: RedisTarget, loop: EventLoop) {
        self.target = target
        self.loop = loop
    }

    /// Connects, waiting up to `timeout` ms for the first connection.
    package static func connect(_ target: RedisTarget, timeout: UInt64 = 5_000) async throws -> RedisSession {
        let session = RedisSession(target: target, loop: EventLoop.startThread(name: "agentchat-redis-tool"))
        do {
            try await session.loop.submitAndWait { (complete: @escaping (Result<Void, any Error>) -> Void) in
                let connection = RedisConnection(loop: session.loop, target: target,
                                                 logger: Logger(label: "agentchat.redis.tool"))
                session.connection = connection
                var done = false
                let timer = LoopTimer(loop: session.loop) {
                    guard !done else { return }
                    done = true
                    complete(.failure(RedisSessionError("cannot connect to Redis at \(target)")))
                }
                connection.onStateChange = { state in
                    guard state == .connected, !done else { return }
                    done = true
                    timer.stop()
                    complete(.success(()))
                }
                timer.start(after: timeout)
                connection.start()
            }
        } catch {
            await session.close()
            throw error
        }
        return session
    }

    /// Sends every command in one write; the replies in order (a reply error is a `.failure(.replyError)` element).
    /// Throws when the connection is lost.
    package func pipeline(_ commands: [[RedisArgument]]) async throws -> [Result<RedisValue, RedisError>] {
        guard !commands.isEmpty else { return [] }
        let target = self.target
        return try await loop.submitAndWait { (complete: @escaping (Result<[Result<RedisValue, RedisError>], any Error>) -> Void) in
            guard let connection = self.connection, connection.state == .connected else {
                complete(.failure(RedisSessionError("lost the connection to Redis at \(target)")))
                return
            }
            var replies = [Result<RedisValue, RedisError>?](repeating: nil, count: commands.count)
            var remaining = commands.count
            var failed = false
            for (index, command) in commands.enumerated() {
                connection.send(command) { result in
                    guard !failed else { return }
                    switch result {
                    case .failure(let error) where error.replyMessage == nil:
                        failed = true
                        complete(.failure(RedisSessionError("lost the connection to Redis at \(target) (\(error))")))
                        return
                    default:
                        replies[index] = result
                    }
                    remaining -= 1
                    if remaining == 0 { complete(.success(replies.map { $0! })) }
                }
            }
        }
    }

    /// One command; a reply error is thrown.
    package func command(_ arguments: [RedisArgument]) async throws -> RedisValue {
        let name = arguments.first.map { String(decoding: $0.bytes, as: UTF8.self) } ?? ""
        switch try await pipeline([arguments])[0] {
        case .success(let value): return value
        case .failure(let error): throw RedisSessionError("Redis refused \(name): \(error.replyMessage ?? "\(error)")")
        }
    }

    /// Closes the connection and stops the loop thread. Idempotent.
    package func close() async {
        _ = try? await loop.submit { [self] in
            connection?.close()
            connection = nil
        }
        loop.stop()
    }
}

/// A failure of an operator tool's Redis session, with the sentence to show.
package struct RedisSessionError: Error, Sendable, CustomStringConvertible {
    package let description: String
    package init(_ description: String) { self.description = description }
}
