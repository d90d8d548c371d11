import AgentChatLoop
@testable import AgentChatRedis
import Foundation
import Testing
import TestSupport

@Suite struct RedisClusterSlotTests {
    @Test func crc16AndSlotsMatchTheSpecification() {
        #expect(RedisClusterSlot.crc16(Array("123456789".utf8)) == 0x31C3)
        // Values from `CLUSTER KEYSLOT` on Redis 7.0.
        #expect(RedisClusterSlot.of("foo") == 12182)
        #expect(RedisClusterSlot.of("bar") == 5061)
        #expect(RedisClusterSlot.of("{user1000}.following") == RedisClusterSlot.of("{user1000}.followers"))
        #expect(RedisClusterSlot.of("{user1000}.following") == RedisClusterSlot.of("user1000"))
        // An empty tag does not count: the whole key is hashed; only the first tag counts.
        #expect(RedisClusterSlot.of("foo{}{bar}") != RedisClusterSlot.of("bar"))
        #expect(RedisClusterSlot.of("foo{{bar}}zap") == RedisClusterSlot.of("{bar"))
        #expect(RedisClusterSlot.of("foo{bar}{zap}") == RedisClusterSlot.of("bar"))
    }

    @Test func routingKeys() {
        #expect(RedisClusterSlot.routingKey(of: ["PING"]) == nil)
        #expect(RedisClusterSlot.routingKey(of: ["PUBLISH", "agentchat:peeks", "x"]) == nil)
        #expect(RedisClusterSlot.routingKey(of: ["SPUBLISH", "a{b}", "x"]) == Array("a{b}".utf8))
        #expect(RedisClusterSlot.routingKey(of: ["hgetall", "k"]) == Array("k".utf8))
        #expect(RedisClusterSlot.routingKey(of: ["EVALSHA", "abc", "2", "k1", "k2", "arg"]) == Array("k1".utf8))
        #expect(RedisClusterSlot.routingKey(of: ["EVALSHA", "abc", "0", "arg"]) == nil)
    }

    @Test func redirectionsAndMaps() {
        #expect(RedisClusterReply("MOVED 3999 127.0.0.1:6381") == .moved(slot: 3999, to: .tcp(host: "127.0.0.1", port: 6381)))
        #expect(RedisClusterReply("ASK 1 [::1]:7000") == .ask(slot: 1, to: .tcp(host: "::1", port: 7000)))
        #expect(RedisClusterReply("TRYAGAIN Multiple keys request during rehashing of slot") == .tryAgain)
        #expect(RedisClusterReply("CLUSTERDOWN The cluster is down") == .down)
        #expect(RedisClusterReply("MOVED 99999 127.0.0.1:1") == nil)
        #expect(RedisClusterReply("ERR wrong") == nil)

        let reply = RedisValue.array([
            .array([.integer(0), .integer(99), .array([.bulk(Array("10.0.0.1".utf8)), .integer(7000)])]),
            .array([.integer(100), .integer(16383), .array([.bulk(Array("10.0.0.2".utf8)), .integer(7001)])]),
        ])
        let map = try! #require(RedisClusterMap(clusterSlots: reply))
        #expect(map.coversEverySlot)
        #expect(map.master(of: 50) == .tcp(host: "10.0.0.1", port: 7000))
        #expect(map.master(of: 100) == .tcp(host: "10.0.0.2", port: 7001))
        #expect(map.slotCount(of: .tcp(host: "10.0.0.1", port: 7000)) == 100)
        #expect(RedisClusterMap(clusterSlots: .array([.integer(1)])) == nil)
    }
}

/// The cluster router against a real three-master cluster.
@Suite(.serialized) struct RedisClusterTests {
    static let counter = RedisScript(name: "counter", source: """
        redis.call('INCR', KEYS[1])
        return redis.call('INCRBY', KEYS[2], ARGV[1])
        """)

    private func makeClient(_ loop: EventLoop, _ cluster: RedisClusterGroup, credentials: RedisCredentials? = nil,
                            waitHealthy: Bool = true) async throws -> OnLoop<RedisClient>
    {
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, target: RedisTarget(.cluster(seeds: cluster.endpoints),
                                                                     credentials: credentials))
            client.scripts.register(Self.counter)
            client.start()
            return OnLoop(loop: loop, client)
        }
        if waitHealthy { try await eventually("cluster client healthy", on: loop) { client.value.isHealthy } }
        return client
    }

    private func send(_ client: OnLoop<RedisClient>, _ arguments: [RedisArgument]) async throws -> RedisValue {
        try await client.loop.submitAndWait { complete in
            client.value.send(arguments) { complete($0.mapError { $0 as any Error }) }
        }
    }

    private func call(_ client: OnLoop<RedisClient>, keys: [RedisArgument], by: Int) async throws -> RedisValue {
        try await client.loop.submitAndWait { complete in
            client.value.scripts.call("counter", keys: keys, arguments: [RedisArgument(by)]) {
                complete($0.mapError { $0 as any Error })
            }
        }
    }

    @Test func keysAndScriptsSpreadOverEveryMaster() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster)
        defer { shutDown(loop, closing: [client]) }

        for index in 0..<300 {
            #expect(try await send(client, ["SET", RedisArgument("agentchat:ch:{c\(index)}:meta"), RedisArgument(index)])
                == .status("OK"))
        }
        // One script per channel, two keys with the channel's hash tag.
        for index in 0..<60 {
            let keys = [RedisArgument("agentchat:ch:{c\(index)}:a"), RedisArgument("agentchat:ch:{c\(index)}:b")]
            #expect(try await call(client, keys: keys, by: index) == .integer(Int64(index)))
        }
        let sizes = try cluster.ports.map { Int(try cluster.cli($0, ["DBSIZE"])) ?? -1 }
        #expect(sizes.allSatisfy { $0 > 0 }, "every master holds keys: \(sizes)")
        #expect(sizes.reduce(0, +) == 300 + 120)
        for index in stride(from: 0, to: 300, by: 37) {
            let key = "agentchat:ch:{c\(index)}:meta"
            #expect(Int(try cluster.cli(cluster.ports[0], ["CLUSTER", "KEYSLOT", key])) == RedisClusterSlot.of(key))
            #expect(try await send(client, ["GET", RedisArgument(key)]) == .bulk(Array("\(index)".utf8)))
        }
        // Keyless commands go to any master; WAIT is refused.
        #expect(try await send(client, ["PING"]) == .status("PONG"))
        let wait = try await loop.submitAndWait { complete in
            client.value.waitForReplicas(1, timeoutMilliseconds: 10) { complete(.success($0)) }
        }
        #expect(throws: (any Error).self) { try wait.get() }
        #expect(try await loop.submit { client.value.cluster?.movedCount } == 0)
    }

    @Test func followsMovedAndAskDuringAMigration() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster)
        defer { shutDown(loop, closing: [client]) }

        let keys: [RedisArgument] = ["agentchat:ch:{moving}:a", "agentchat:ch:{moving}:b"]
        let slot = RedisClusterSlot.of("moving")
        #expect(try await call(client, keys: keys, by: 5) == .integer(5))
        let from = try #require(cluster.owner(of: slot))
        let to = try #require(cluster.ports.first { $0 != from })

        // ASK: the keys have gone to `to`, the slot is still `from`'s (MIGRATING): `from` answers ASK for them.
        try cluster.moveSlot(slot, from: from, to: to) {
            let value = try await_(client) { done in
                client.value.scripts.call("counter", keys: keys, arguments: ["1"]) { done($0) }
            }
            #expect(value == .integer(6))
            let fresh = try await_(client) { done in
                client.value.send(["SET", "agentchat:ch:{moving}:new", "x"]) { done($0) }
            }
            #expect(fresh == .status("OK"))
        }
        #expect(try await loop.submit { client.value.cluster!.askCount } >= 2)
        #expect(try await loop.submit { client.value.cluster!.movedCount } == 0)

        // MOVED: the slot is `to`'s now; the client's map still says `from` until it follows the redirection.
        #expect(try await call(client, keys: keys, by: 1) == .integer(7))
        #expect(try await send(client, ["GET", "agentchat:ch:{moving}:new"]) == .bulk(Array("x".utf8)))
        #expect(try await loop.submit { client.value.cluster!.movedCount } >= 1)
        #expect(try await loop.submit { client.value.cluster!.map.master(of: slot) } == .tcp(host: "127.0.0.1", port: to))
        #expect(cluster.owner(of: slot) == to)
        #expect(try cluster.cli(to, ["GET", "agentchat:ch:{moving}:a"]) == "3")
    }

    @Test func retriesTryAgainWhileAScriptsKeysAreSplitByAMigration() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster)
        defer { shutDown(loop, closing: [client]) }

        let keys: [RedisArgument] = ["agentchat:ch:{split}:a", "agentchat:ch:{split}:b"]
        let slot = RedisClusterSlot.of("split")
        #expect(try await call(client, keys: keys, by: 10) == .integer(10))
        let from = try #require(cluster.owner(of: slot))
        let to = try #require(cluster.ports.first { $0 != from })
        let fromID = try cluster.nodeID(from), toID = try cluster.nodeID(to)
        _ = try cluster.cli(to, ["CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", fromID])
        _ = try cluster.cli(from, ["CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", toID])
        // One key moved, the other not: the source answers the script TRYAGAIN until both have moved.
        _ = try cluster.cli(from, ["MIGRATE", "127.0.0.1", "\(to)", "agentchat:ch:{split}:a", "0", "5000"])
        let answer = Collected<Result<RedisValue, RedisError>>()
        try await loop.submit {
            client.value.scripts.call("counter", keys: keys, arguments: ["1"]) { answer.items.append($0) }
        }
        try await eventually("a TRYAGAIN", on: loop) { client.value.cluster!.tryAgainCount > 0 }
        #expect(try await loop.submit { answer.items.isEmpty }, "still retrying")
        _ = try cluster.cli(from, ["MIGRATE", "127.0.0.1", "\(to)", "agentchat:ch:{split}:b", "0", "5000"])
        try await eventually("the script ran", on: loop) { !answer.items.isEmpty }
        #expect(try await loop.submit { try answer.items[0].get() } == .integer(11))
        #expect(try await loop.submit { client.value.cluster!.askCount } >= 1)
        for port in cluster.ports { _ = try cluster.cli(port, ["CLUSTER", "SETSLOT", "\(slot)", "NODE", toID]) }
        #expect(try await call(client, keys: keys, by: 1) == .integer(12))
        #expect(try cluster.cli(to, ["GET", "agentchat:ch:{split}:a"]) == "3")  // three calls, each INCRs it
    }

    /// A master crashes (SIGKILL) and the cluster promotes its replica: the same client finds the new master of
    /// those slots by itself (the dead node's connection fails, the slot map is read again), reads every key the old
    /// master had replicated, writes and runs scripts there, and is healthy again.
    @Test func followsAFailoverToThePromotedReplica() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let victim = cluster.ports[0]
        let replica = try cluster.addReplica(of: victim)
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster)
        defer { shutDown(loop, closing: [client]) }

        let keys = (0..<300).map { "agentchat:ch:{c\($0)}:meta" }
            .filter { cluster.owner(of: RedisClusterSlot.of($0)) == victim }
        #expect(keys.count > 50, "\(keys.count) of 300 keys on the first master")
        for (index, key) in keys.enumerated() {
            #expect(try await send(client, ["SET", RedisArgument(key), RedisArgument(index)]) == .status("OK"))
        }
        let replicated = keys.count
        try await eventually("the replica has every key", on: loop, timeout: .seconds(30)) {
            (try? cluster.cli(replica, ["DBSIZE"])) == "\(replicated)"
        }

        cluster.kill(victim)
        try cluster.waitUntilMaster(replica, timeout: 60)
        // Until the client has learnt the new map, commands may fail; each key is read once it answers.
        var values: [String: RedisValue] = [:]
        let deadline = ContinuousClock.now + .seconds(60)
        for key in keys {
            while values[key] == nil, ContinuousClock.now < deadline {
                if let value = try? await send(client, ["GET", RedisArgument(key)]) {
                    values[key] = value
                } else {
                    try await Task.sleep(for: .milliseconds(100))
                }
            }
        }
        for (index, key) in keys.enumerated() {
            #expect(values[key] == .bulk(Array("\(index)".utf8)), "\(key)")
        }
        #expect(cluster.owner(of: RedisClusterSlot.of(keys[0]), askingPort: cluster.ports[1]) == replica)
        #expect(try await send(client, ["SET", RedisArgument(keys[0]), "after"]) == .status("OK"))
        let scripted = [RedisArgument("agentchat:ch:{c0}:a"), RedisArgument("agentchat:ch:{c0}:b")]
        #expect(try await call(client, keys: scripted, by: 5) == .integer(5))
        try await eventually("healthy after the failover", on: loop, timeout: .seconds(30)) { client.value.isHealthy }
    }

    @Test func credentialsApplyToEveryMaster() async throws {
        let password = "cluster-\(UUID().uuidString.prefix(8))"
        let cluster = try RedisClusterGroup(password: password)
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster, credentials: RedisCredentials(password: password))
        let anonymous = try await makeClient(loop, cluster, waitHealthy: false)
        defer { shutDown(loop, closing: [client, anonymous]) }
        for index in 0..<60 {
            #expect(try await send(client, ["SET", RedisArgument("agentchat:agent:{a\(index)}"), "1"]) == .status("OK"))
        }
        #expect(try cluster.ports.allSatisfy { Int(try cluster.cli($0, ["DBSIZE"])) ?? 0 > 0 })
        try await Task.sleep(for: .seconds(1))
        #expect(try await loop.submit { !anonymous.value.isHealthy })
        let refused = try await loop.submitAndWait { complete in
            anonymous.value.send(["GET", "agentchat:agent:{a1}"]) { complete(.success($0)) }
        }
        #expect(throws: RedisError.self) { try refused.get() }
    }

    @Test func shardedSubscriptionFollowsItsSlot() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await makeClient(loop, cluster)
        defer { shutDown(loop, closing: [client]) }

        let channel = "agentchat:ch:{feed}:feed"
        let received = Collected<String>()
        let activations = Collected<Int>()
        let classic = Collected<String>()
        try await loop.submit {
            client.value.pubSub.subscribe(channel: Array(channel.utf8), sharded: true, onActive: {
                activations.items.append(1)
            }) { received.items.append(String(decoding: $0, as: UTF8.self)) }
            client.value.pubSub.subscribe(channel: "agentchat:peeks") { classic.items.append(String(decoding: $0, as: UTF8.self)) }
        }
        try await eventually("sharded subscription active", on: loop) {
            client.value.cluster!.isShardedActive(channel: Array(channel.utf8)) && activations.items.count == 1
        }
        try await eventually("classic subscription active", on: loop) { client.value.pubSub.isActive(channel: "agentchat:peeks") }
        #expect(try await send(client, ["SPUBLISH", RedisArgument(channel), "one"]) == .integer(1))
        #expect(try await send(client, ["PUBLISH", "agentchat:peeks", "notice"]) == .integer(1))
        try await eventually("first message", on: loop) { received.items == ["one"] && classic.items == ["notice"] }

        let slot = RedisClusterSlot.of(channel)
        let from = try #require(cluster.owner(of: slot))
        let to = try #require(cluster.ports.first { $0 != from })
        try cluster.moveSlot(slot, from: from, to: to)
        // Redis ends the subscription on the old master; the router subscribes again on the new one.
        try await eventually("subscribed again on the new master", on: loop) {
            activations.items.count == 2 && client.value.cluster!.isShardedActive(channel: Array(channel.utf8))
        }
        #expect(try cluster.cli(to, ["PUBSUB", "SHARDNUMSUB", channel]).hasSuffix("1"))
        #expect(try await send(client, ["SPUBLISH", RedisArgument(channel), "two"]) == .integer(1))
        try await eventually("message after the move", on: loop) { received.items == ["one", "two"] }
        #expect(try await loop.submit { client.value.cluster!.subscriptionMoves } >= 1)
    }
}

/// Runs one client operation from a test thread that is not the loop, blocking until it answers (for the
/// synchronous `moveSlot` hook).
private func await_(_ client: OnLoop<RedisClient>,
                    _ body: @escaping @Sendable (@escaping @Sendable (Result<RedisValue, RedisError>) -> Void) -> Void)
    throws -> RedisValue
{
    let semaphore = DispatchSemaphore(value: 0)
    let box = Collected<Result<RedisValue, RedisError>>()
    client.loop.execute {
        body { result in
            box.items.append(result)
            semaphore.signal()
        }
    }
    guard semaphore.wait(timeout: .now() + 20) == .success else { throw TimedOut(what: "cluster reply") }
    return try box.items[0].get()
}
