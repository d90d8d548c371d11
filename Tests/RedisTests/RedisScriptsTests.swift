import AgentChatLoop
import AgentChatRedis
import Testing
import TestSupport

@Suite(.serialized) struct RedisScriptsTests {
    private static let incrementBy = RedisScript(
        name: "increment-by", source: "return redis.call('INCRBY', KEYS[1], ARGV[1])")

    private func call(_ scripts: OnLoop<RedisScripts>, _ name: String, keys: [RedisArgument] = [],
                      arguments: [RedisArgument] = []) async throws -> Result<RedisValue, RedisError> {
        try await scripts.loop.submitAndWait { complete in
            scripts.value.call(name, keys: keys, arguments: arguments) { complete(.success($0)) }
        }
    }

    @Test func loadsOnConnectCallsWithEvalshaAndRecoversFromScriptFlush() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let (connection, scripts) = try await makeScripts(loop, server.endpoint, registering: [Self.incrementBy])
        defer { shutDown(loop, closing: [scripts, connection]) }
        try await waitConnected(connection)
        try await eventually("script loaded on connect", on: loop) { scripts.value.sha(of: "increment-by") != nil }
        let sha = try #require(try await loop.submit { scripts.value.sha(of: "increment-by") })
        #expect(sha.count == 40)
        #expect(try await send(connection, ["SCRIPT", "EXISTS", RedisArgument(sha)]) == .array([.integer(1)]))

        #expect(try await call(scripts, "increment-by", keys: ["counter"], arguments: [5]) == .success(.integer(5)))
        #expect(try await loop.submit { scripts.value.loadCount } == 1)

        #expect(try await send(connection, ["SCRIPT", "FLUSH"]) == .status("OK"))
        #expect(try await send(connection, ["SCRIPT", "EXISTS", RedisArgument(sha)]) == .array([.integer(0)]))
        // NOSCRIPT: reloaded and retried once, transparently.
        #expect(try await call(scripts, "increment-by", keys: ["counter"], arguments: [2]) == .success(.integer(7)))
        #expect(try await loop.submit { scripts.value.loadCount } == 2)
        #expect(try await send(connection, ["SCRIPT", "EXISTS", RedisArgument(sha)]) == .array([.integer(1)]))
        #expect(try await call(scripts, "increment-by", keys: ["counter"], arguments: [1]) == .success(.integer(8)))
        #expect(try await loop.submit { scripts.value.loadCount } == 2)
    }

    @Test func scriptsRegisteredWhileConnectedAndErrors() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let (connection, scripts) = try await makeScripts(loop, server.endpoint)
        defer { shutDown(loop, closing: [scripts, connection]) }
        try await waitConnected(connection)
        #expect(try await call(scripts, "nope") == .failure(.unknownScript("nope")))

        try await loop.submit {
            scripts.value.register(RedisScript(name: "echo", source: "return {KEYS[1], ARGV[1], ARGV[2]}"))
            scripts.value.register(RedisScript(name: "fails", source: "return redis.error_reply('ERR custom')"))
            scripts.value.register(RedisScript(name: "bad-syntax", source: "return ((("))
        }
        let echoed = try await call(scripts, "echo", keys: ["k"], arguments: [RedisArgument([0, 1]), 42])
        #expect(echoed == .success(.array([.bulk(Array("k".utf8)), .bulk([0, 1]), .bulk(Array("42".utf8))])))
        #expect(try await call(scripts, "fails") == .failure(.replyError("ERR custom")))
        let syntax = try await call(scripts, "bad-syntax")
        #expect(throws: RedisError.self) { try syntax.get() }

        // Not connected: fails fast.
        server.kill()
        try await eventually("disconnected", on: loop) { connection.value.state != .connected }
        #expect(try await call(scripts, "echo", keys: ["k"], arguments: [1, 2]) == .failure(.notConnected))
    }
}
