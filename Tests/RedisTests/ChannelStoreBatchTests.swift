import AgentChatCore
import AgentChatLoop
import AgentChatProtocol
import AgentChatRedis
import Testing
import TestSupport

@testable import AgentChatPersistence

/// `ChannelStore` sends a loop turn's appends to a real Redis in `channel_append` calls of at most
/// `appendsPerCall` (on a cluster, one call per hash slot), flushed before any other command of the store, so one
/// client's requests keep their order.
@Suite(.serialized) struct ChannelStoreBatchTests {
    static let alice = DID(signingKey: [UInt8](repeating: 7, count: 32))

    /// Sets up `channels` (alice a member, epoch 1 keyed) through `client`, resets every server's command counts,
    /// then in one loop turn sends `count` appends round-robin over the channels and a leave of the first channel.
    /// Checks that every append was stored in order before the leave, and answers how many `EVALSHA` calls the
    /// servers at `ports` ran (appends and the leave).
    private func appendInOneTurn(_ client: OnLoop<RedisClient>, ports: [Int], channels: [ChannelID], count: Int)
        async throws -> Int
    {
        let loop = client.loop
        let store = try await loop.submit { OnLoop(loop: loop, ChannelStore(redis: client.value)) }
        defer { loop.execute { store.release() } }
        func send(_ arguments: [RedisArgument]) async throws -> RedisValue {
            try await loop.submitAndWait { complete in
                client.value.send(arguments) { complete($0.mapError { $0 as any Error }) }
            }
        }
        for channel in channels {
            _ = try await send(["HSET", RedisKeys.channel(channel), "epoch", "1", "keyedEpoch", "1"])
            _ = try await send(["SADD", RedisKeys.members(channel), RedisArgument(Self.alice.description)])
        }
        // A connection of its own to each server, for its command counts.
        var servers: [OnLoop<RedisConnection>] = []
        for port in ports {
            let connection = try await makeConnection(loop, .tcp(host: "127.0.0.1", port: port))
            try await waitConnected(connection)
            servers.append(connection)
        }
        defer { loop.execute { for server in servers { server.closeAndRelease() } } }
        for server in servers { _ = try await sendCommand(server, ["CONFIG", "RESETSTAT"]) }

        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        let left: StoreResult<Int64> = try await loop.submitAndWait { complete in
            for n in 0..<count {
                let message = MessageSend(channel: channels[n % channels.count], epoch: 1, clientMessageID: "m\(n)",
                                          nonce: "AAAAAAAAAAAAAAAA", ciphertext: "Y2lwaGVy", signature: "c2ln")
                store.value.append(message, sender: Self.alice,
                                   suffix: MessageItem.suffix(message, sender: Self.alice, timestamp: 1_000 + Int64(n)),
                                   now: 1_000 + Int64(n)) { outcomes.items.append((n, $0)) }
            }
            store.value.leave(channels[0], Self.alice) { complete(.success($0)) }
        }
        #expect((try? left.get()) != nil, "\(left)")
        try await eventually("every append answered", on: loop) { outcomes.items.count == count }

        // Every append was stored before the leave, in the order sent: offsets 1, 2, … in each channel.
        let answers = try await loop.submit { outcomes.items }.sorted { $0.0 < $1.0 }
        #expect(answers.map(\.0) == Array(0..<count))
        for (n, outcome) in answers {
            #expect(outcome == .success(.stored(offset: Int64(n / channels.count + 1), listed: false)),
                    "append \(n): \(outcome)")
        }
        var calls = 0
        for server in servers {
            let stats = String(decoding: try await sendCommand(server, ["INFO", "commandstats"]).bytes ?? [],
                               as: UTF8.self)
            let line = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_evalsha:calls=") } ?? ""
            calls += Int(line.dropFirst("cmdstat_evalsha:calls=".count).prefix { $0.isNumber }) ?? 0
        }
        return calls
    }

    /// The module's `send(connection, arguments)`, under a name the local `send` above does not hide.
    private func sendCommand(_ connection: OnLoop<RedisConnection>, _ arguments: [RedisArgument]) async throws
        -> RedisValue
    {
        try await send(connection, arguments)
    }

    private static func channels(_ count: Int) -> [ChannelID] {
        (1...count).map { ChannelID(randomBytes: [UInt8](repeating: UInt8($0), count: 16)) }
    }

    @Test func aTurnsAppendsGoInFewCallsInOrderAndBeforeTheNextCommand() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, endpoint: server.endpoint)
            client.start()
            return OnLoop(loop: loop, client)
        }
        defer { shutDown(loop, closing: [client]) }
        try await eventually("healthy", on: loop) { client.value.isHealthy }

        // 40 appends over two channels: 32 in one call, 8 in the next (sent before the leave), then the leave.
        #expect(ChannelStore.appendsPerCall == 32)
        let calls = try await appendInOneTurn(client, ports: [server.port], channels: Self.channels(2), count: 40)
        #expect(calls == 3)
    }

    @Test func onAClusterOneCallPerSlot() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, target: RedisTarget(.cluster(seeds: cluster.endpoints)))
            client.start()
            return OnLoop(loop: loop, client)
        }
        defer { shutDown(loop, closing: [client]) }
        try await eventually("cluster client healthy", on: loop) { client.value.isHealthy }

        // Five channels (each its own slot here), 10 appends each: one call per slot, then the leave.
        let channels = Self.channels(5)
        let slots = Set(channels.map { RedisClusterSlot.of(RedisKeys.channel($0).bytes) })
        #expect(slots.count == 5)
        let calls = try await appendInOneTurn(client, ports: cluster.ports, channels: channels, count: 50)
        #expect(calls == slots.count + 1)
    }
}
