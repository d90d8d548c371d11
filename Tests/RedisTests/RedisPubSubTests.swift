import AgentChatLoop
import AgentChatRedis
import Testing
import TestSupport

@Suite(.serialized) struct RedisPubSubTests {
    @Test func deliversToEverySubscriberAndReferenceCountsChannels() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let first = Collected<[UInt8]>()
        let second = Collected<[UInt8]>()
        let channel: [UInt8] = [0, 99, 104, 255]  // binary channel name
        let publisher = try await makeConnection(loop, server.endpoint)
        let (pubSub, subscriptions) = try await loop.submit {
            let pubSub = RedisPubSub(loop: loop, endpoint: server.endpoint)
            pubSub.start()
            let a = pubSub.subscribe(channel: channel) { first.items.append($0) }
            let b = pubSub.subscribe(channel: channel) { second.items.append($0) }
            return (OnLoop(loop: loop, pubSub), OnLoop(loop: loop, [a, b]))
        }
        defer { shutDown(loop, closing: [pubSub, publisher]) }
        try await waitConnected(publisher)
        try await eventually("subscribed", on: loop) { pubSub.value.isActive(channel: channel) }
        #expect(try await send(publisher, ["PUBSUB", "NUMSUB", RedisArgument(channel)]).array?.last == .integer(1))

        let payload: [UInt8] = [0, 1, 2, 0, 255, 13, 10]
        #expect(try await send(publisher, ["PUBLISH", RedisArgument(channel), RedisArgument(payload)]) == .integer(1))
        try await eventually("both delivered", on: loop) { first.items.count == 1 && second.items.count == 1 }
        #expect(try await loop.submit { first.items == [payload] && second.items == [payload] })

        // One subscriber leaves: the channel stays subscribed for the other.
        try await loop.submit { pubSub.value.unsubscribe(subscriptions.value[0]) }
        #expect(try await send(publisher, ["PUBLISH", RedisArgument(channel), "two"]) == .integer(1))
        try await eventually("second delivered", on: loop) { second.items.count == 2 }
        #expect(try await loop.submit { first.items.count } == 1)

        // The last one leaves: the server drops the subscription.
        try await loop.submit { pubSub.value.unsubscribe(subscriptions.value[1]) }
        try await eventually("unsubscribed", on: loop) { !pubSub.value.isActive(channel: channel) }
        #expect(try await send(publisher, ["PUBSUB", "NUMSUB", RedisArgument(channel)]).array?.last == .integer(0))
        #expect(try await send(publisher, ["PUBLISH", RedisArgument(channel), "three"]) == .integer(0))

        // Subscribe again on the same connection, and a second channel beside it.
        let third = Collected<String>()
        try await loop.submit {
            pubSub.value.subscribe(channel: channel) { third.items.append(String(decoding: $0, as: UTF8.self)) }
            pubSub.value.subscribe(channel: "other") { third.items.append("other:" + String(decoding: $0, as: UTF8.self)) }
        }
        try await eventually("resubscribed", on: loop) {
            pubSub.value.isActive(channel: channel) && pubSub.value.isActive(channel: "other")
        }
        #expect(try await send(publisher, ["PUBLISH", RedisArgument(channel), "four"]) == .integer(1))
        #expect(try await send(publisher, ["PUBLISH", "other", "five"]) == .integer(1))
        try await eventually("third delivered", on: loop) { third.items.count == 2 }
        #expect(try await loop.submit { third.items } == ["four", "other:five"])
    }

    @Test func resubscribesAfterRedisRestarts() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let received = Collected<String>()
        let states = Collected<RedisConnection.State>()
        let publisher = try await makeConnection(loop, server.endpoint)
        let pubSub = try await loop.submit {
            let pubSub = RedisPubSub(loop: loop, endpoint: server.endpoint)
            pubSub.onStateChange = { states.items.append($0) }
            pubSub.start()
            pubSub.subscribe(channel: "news") { received.items.append(String(decoding: $0, as: UTF8.self)) }
            return OnLoop(loop: loop, pubSub)
        }
        defer { shutDown(loop, closing: [pubSub, publisher]) }
        try await waitConnected(publisher)
        try await eventually("subscribed", on: loop) { pubSub.value.isActive(channel: "news") }
        #expect(try await send(publisher, ["PUBLISH", "news", "before"]) == .integer(1))
        try await eventually("first message", on: loop) { received.items == ["before"] }

        server.kill()
        try await eventually("pub/sub disconnected", on: loop) { states.items.contains(.disconnected) }
        #expect(try await loop.submit { pubSub.value.isActive(channel: "news") } == false)

        try server.restart()
        try await waitConnected(publisher)
        try await eventually("subscribed again", on: loop) { pubSub.value.isActive(channel: "news") }
        #expect(try await send(publisher, ["PUBLISH", "news", "after"]) == .integer(1))
        try await eventually("second message", on: loop) { received.items == ["before", "after"] }
    }
}
