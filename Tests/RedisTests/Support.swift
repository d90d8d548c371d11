import AgentChatLoop
import AgentChatRedis
import Foundation
import Testing

/// Holds a loop-bound object so it is created, used and released on the loop thread (LoopTimer and hiredis
/// state must never be freed from another thread).
final class OnLoop<T>: @unchecked Sendable {
    let loop: EventLoop
    private var stored: T?

    /// Call on the loop thread.
    init(loop: EventLoop, _ value: T) {
        loop.preconditionInEventLoop()
        self.loop = loop
        stored = value
    }

    var value: T {
        loop.preconditionInEventLoop()
        return stored!
    }

    /// Drops the object on the loop thread.
    func release() {
        loop.preconditionInEventLoop()
        stored = nil
    }
}

/// A value collected on the loop thread and read back with `loop.submit`.
final class Collected<T>: @unchecked Sendable {
    var items: [T] = []
}

struct TimedOut: Error, CustomStringConvertible {
    let what: String
    var description: String { "timed out waiting for \(what)" }
}

/// Polls `condition` on the loop thread until it holds; generous timeout, only for waiting.
func eventually(_ what: String, on loop: EventLoop, timeout: Duration = .seconds(20),
                _ condition: @escaping @Sendable () -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while true {
        if try await loop.submit(condition) { return }
        if ContinuousClock.now > deadline { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(20))
    }
}

/// Sends one command on the loop thread and waits for its reply.
func send(_ connection: OnLoop<RedisConnection>, _ arguments: [RedisArgument]) async throws -> RedisValue {
    try await connection.loop.submitAndWait { complete in
        connection.value.send(arguments) { complete($0.mapError { $0 as any Error }) }
    }
}

/// Like `send` but returns the Result, so tests can look at the RedisError.
func result(_ connection: OnLoop<RedisConnection>, _ arguments: [RedisArgument]) async throws
    -> Result<RedisValue, RedisError>
{
    try await connection.loop.submitAndWait { complete in
        connection.value.send(arguments) { complete(.success($0)) }
    }
}

/// Makes a started connection on `loop`.
func makeConnection(_ loop: EventLoop, _ endpoint: RedisEndpoint) async throws -> OnLoop<RedisConnection> {
    try await loop.submit {
        let connection = RedisConnection(loop: loop, endpoint: endpoint)
        connection.start()
        return OnLoop(loop: loop, connection)
    }
}

/// Makes a started connection on `loop` with `RedisScripts` on it, `registering` registered before it starts (so
/// they load on connect). Close both with `shutDown(loop, closing: [scripts, connection])`.
func makeScripts(_ loop: EventLoop, _ endpoint: RedisEndpoint, registering: [RedisScript] = []) async throws
    -> (connection: OnLoop<RedisConnection>, scripts: OnLoop<RedisScripts>)
{
    try await loop.submit {
        let connection = RedisConnection(loop: loop, endpoint: endpoint)
        let scripts = RedisScripts(connection: connection)
        for script in registering { scripts.register(script) }
        connection.start()
        return (OnLoop(loop: loop, connection), OnLoop(loop: loop, scripts))
    }
}

func waitConnected(_ connection: OnLoop<RedisConnection>) async throws {
    try await eventually("connected", on: connection.loop) { connection.value.state == .connected }
}

/// Closes and releases every holder's object on the loop thread, then stops the loop. Synchronous, for `defer`.
func shutDown(_ loop: EventLoop, closing holders: [any Closable]) {
    loop.execute {
        for holder in holders { holder.closeAndRelease() }
    }
    loop.stop()
}

protocol Closable: Sendable {
    func closeAndRelease()
}

extension OnLoop: Closable {
    func closeAndRelease() {
        guard stored != nil else { return }
        switch stored {
        case let connection as RedisConnection: connection.close()
        case let client as RedisClient: client.close()
        case let pubSub as RedisPubSub: pubSub.close()
        default: break
        }
        release()
    }
}

/// A fresh path under the temporary directory (not created).
func temporaryDirectory() -> String {
    FileManager.default.temporaryDirectory.appendingPathComponent("agentchat-test-\(UUID().uuidString.prefix(8))").path
}

func removeDirectory(_ path: String) {
    try? FileManager.default.removeItem(atPath: path)
}
