import AgentChatLoop
import AgentChatRedis
import Testing
import TestSupport

@Suite(.serialized) struct RedisClientTests {
    @Test func survivesAKilledRedisAndRecoversEverything() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let states = Collected<RedisConnection.State>()
        let messages = Collected<String>()
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, endpoint: server.endpoint)
            client.connection.onStateChange = { states.items.append($0) }
            client.scripts.register(RedisScript(name: "get", source: "return redis.call('GET', KEYS[1])"))
            client.pubSub.subscribe(channel: "events") { messages.items.append(String(decoding: $0, as: UTF8.self)) }
            client.start()
            return OnLoop(loop: loop, client)
        }
        let command = try await loop.submit { OnLoop(loop: loop, client.value.connection) }
        defer { shutDown(loop, closing: [command, client]) }

        try await eventually("healthy", on: loop) { client.value.isHealthy }
        try await eventually("subscribed", on: loop) { client.value.pubSub.isActive(channel: "events") }
        #expect(try await send(command, ["SET", "k", "v1"]) == .status("OK"))
        #expect(try await send(command, ["PUBLISH", "events", "one"]) == .integer(1))
        try await eventually("first message", on: loop) { messages.items == ["one"] }

        server.kill()
        try await eventually("disconnected", on: loop) { states.items.last == .disconnected || states.items.last == .connecting }
        #expect(try await loop.submit { client.value.isHealthy } == false)
        #expect(try await result(command, ["GET", "k"]) == .failure(.notConnected))

        try server.restart()  // AOF (everysec) may or may not hold k; the test does not depend on it.
        try await eventually("healthy again", on: loop) { client.value.isHealthy }
        #expect(try await loop.submit { states.items.last } == .connected)
        #expect(try await send(command, ["SET", "k", "v2"]) == .status("OK"))
        let scripted: Result<RedisValue, RedisError> = try await loop.submitAndWait { complete in
            client.value.scripts.call("get", keys: ["k"]) { complete(.success($0)) }
        }
        #expect(scripted == .success(.bulk(Array("v2".utf8))))
        try await eventually("subscribed again", on: loop) { client.value.pubSub.isActive(channel: "events") }
        #expect(try await send(command, ["PUBLISH", "events", "two"]) == .integer(1))
        try await eventually("second message", on: loop) { messages.items == ["one", "two"] }
    }
}
