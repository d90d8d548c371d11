import AgentChatCore
import AgentChatLoop
import AgentChatProtocol
import AgentChatRedis
import Testing
import TestSupport

@testable import AgentChatPersistence

/// `ChannelStore` gathers the appends that arrive before the command connection's next write into
/// `channel_append` calls of at most `appendsPerCall`, on a real Redis: every command sent on that connection
/// afterwards (by any store) comes after them, appends queued when the connection goes away are answered, and on a
/// cluster each append is its own call.
@Suite(.serialized) struct ChannelStoreBatchTests {
    static let alice = DID(signingKey: [UInt8](repeating: 7, count: 32))

    private static func channels(_ count: Int) -> [ChannelID] {
        (1...count).map { ChannelID(randomBytes: [UInt8](repeating: UInt8($0), count: 16)) }
    }

    private static func message(_ n: Int, in channel: ChannelID) -> MessageSend {
        MessageSend(channel: channel, epoch: 1, clientMessageID: "m\(n)", nonce: "AAAAAAAAAAAAAAAA",
                    ciphertext: "Y2lwaGVy", signature: "c2ln")
    }

    /// Sends `count` appends round-robin over `channels` with `store`, in the loop turn that runs `body`, recording
    /// each answer in `outcomes` by number.
    private static func appendAll(_ store: ChannelStore, channels: [ChannelID], count: Int,
                                  into outcomes: Collected<(Int, StoreResult<AppendOutcome>)>)
    {
        for n in 0..<count {
            let message = message(n, in: channels[n % channels.count])
            store.append(message, sender: alice, suffix: MessageItem.suffix(message, sender: alice, timestamp: 1_000),
                         now: 1_000 + Int64(n)) { outcomes.items.append((n, $0)) }
        }
    }

    /// A started client on `target`, healthy, with `channels` set up (alice a member, epoch 1 keyed).
    private func client(_ loop: EventLoop, _ target: RedisTarget, channels: [ChannelID]) async throws
        -> OnLoop<RedisClient>
    {
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, target: target)
            client.start()
            return OnLoop(loop: loop, client)
        }
        try await eventually("healthy", on: loop) { client.value.isHealthy }
        for channel in channels {
            _ = try await send(client, ["HSET", RedisKeys.channel(channel), "epoch", "1", "keyedEpoch", "1"])
            _ = try await send(client, ["SADD", RedisKeys.members(channel), RedisArgument(Self.alice.description)])
        }
        return client
    }

    /// A store on `client`, once its scripts are loaded (a call made before waits for the load).
    private func makeStore(_ client: OnLoop<RedisClient>) async throws -> OnLoop<ChannelStore> {
        let loop = client.loop
        let store = try await loop.submit { OnLoop(loop: loop, ChannelStore(redis: client.value)) }
        try await eventually("scripts loaded", on: loop) { client.value.scripts.sha(of: ChannelStore.append.name) != nil }
        return store
    }

    private func send(_ client: OnLoop<RedisClient>, _ arguments: [RedisArgument]) async throws -> RedisValue {
        try await client.loop.submitAndWait { complete in
            client.value.send(arguments) { complete($0.mapError { $0 as any Error }) }
        }
    }

    /// How many `EVALSHA` calls the server behind `connection` ran since its last `CONFIG RESETSTAT`.
    private func evalshaCalls(_ connection: OnLoop<RedisConnection>) async throws -> Int {
        let stats = String(decoding: try await RedisTests.send(connection, ["INFO", "commandstats"]).bytes ?? [],
                           as: UTF8.self)
        let line = stats.split(whereSeparator: \.isNewline).first { $0.hasPrefix("cmdstat_evalsha:calls=") } ?? ""
        return Int(line.dropFirst("cmdstat_evalsha:calls=".count).prefix { $0.isNumber }) ?? 0
    }

    /// Every append answered `stored`, in the order sent: offsets 1, 2, … in each channel.
    private func expectStoredInOrder(_ outcomes: Collected<(Int, StoreResult<AppendOutcome>)>, count: Int,
                                     channels: Int, on loop: EventLoop) async throws
    {
        try await eventually("every append answered", on: loop) { outcomes.items.count == count }
        let answers = try await loop.submit { outcomes.items }.sorted { $0.0 < $1.0 }
        #expect(answers.map(\.0) == Array(0..<count))
        for (n, outcome) in answers {
            #expect(outcome == .success(.stored(offset: Int64(n / channels + 1), listed: false)), "append \(n): \(outcome)")
        }
    }

    /// 40 appends over two channels and then a leave, in one loop turn: 32 in one call (the most a call takes), the
    /// other 8 in a second call that goes before the leave, then the leave; every append stored, in order.
    @Test func aTurnsAppendsGoInFewCallsInOrderAndBeforeTheNextCommand() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let channels = Self.channels(2)
        let client = try await client(loop, .direct(server.endpoint),
                                      channels: channels)
        let stats = try await makeConnection(loop, server.endpoint)
        defer { shutDown(loop, closing: [client, stats]) }
        try await waitConnected(stats)
        let store = try await makeStore(client)
        defer { loop.execute { store.release() } }
        _ = try await RedisTests.send(stats, ["CONFIG", "RESETSTAT"])

        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        #expect(ChannelStore.appendsPerCall == 32)
        let left: StoreResult<Int64> = try await loop.submitAndWait { complete in
            Self.appendAll(store.value, channels: channels, count: 40, into: outcomes)
            store.value.leave(channels[0], Self.alice) { complete(.success($0)) }
        }
        #expect((try? left.get()) != nil, "\(left)")
        try await expectStoredInOrder(outcomes, count: 40, channels: 2, on: loop)
        #expect(try await evalshaCalls(stats) == 3)
    }

    /// A command another part of the broker sends on the same connection in the same turn, after the appends,
    /// reaches Redis after them: here a read of the log sees both messages.
    @Test func anyLaterCommandOnTheConnectionSeesTheAppends() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let channels = Self.channels(1)
        let client = try await client(loop, .direct(server.endpoint),
                                      channels: channels)
        defer { shutDown(loop, closing: [client]) }
        let store = try await makeStore(client)
        defer { loop.execute { store.release() } }

        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        let length: RedisValue = try await loop.submitAndWait { complete in
            Self.appendAll(store.value, channels: channels, count: 2, into: outcomes)
            client.value.send(["XLEN", RedisKeys.log(channels[0])]) { complete($0.mapError { $0 as any Error }) }
        }
        #expect(length == .integer(2))
        try await expectStoredInOrder(outcomes, count: 2, channels: 1, on: loop)
    }

    /// Appends waiting for a write when the client closes are answered `unavailable` at once, none left waiting,
    /// and nothing is stored.
    @Test func appendsQueuedWhenTheConnectionGoesAreAnswered() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let channels = Self.channels(1)
        let client = try await client(loop, .direct(server.endpoint),
                                      channels: channels)
        let check = try await makeConnection(loop, server.endpoint)
        defer { shutDown(loop, closing: [client, check]) }
        try await waitConnected(check)
        let store = try await makeStore(client)
        defer { loop.execute { store.release() } }

        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        let answeredInTheTurn = try await loop.submit {
            Self.appendAll(store.value, channels: channels, count: 5, into: outcomes)
            let before = outcomes.items.count
            client.value.close()
            return (before, outcomes.items.count)
        }
        #expect(answeredInTheTurn.0 == 0)  // they were waiting
        #expect(answeredInTheTurn.1 == 5)  // and the close answered them
        for (n, outcome) in try await loop.submit({ outcomes.items }) {
            #expect(outcome == .failure(.unavailable), "append \(n): \(outcome)")
        }
        #expect(try await RedisTests.send(check, ["EXISTS", RedisKeys.log(channels[0])]) == .integer(0))
    }

    /// On a cluster every append is its own call (one call's keys must share a slot), still stored in order.
    @Test func onAClusterEachAppendIsItsOwnCall() async throws {
        let cluster = try RedisClusterGroup()
        defer { cluster.stop() }
        let loop = EventLoop.startThread()
        let channels = Self.channels(5)
        let client = try await client(loop, RedisTarget(.cluster(seeds: cluster.endpoints)), channels: channels)
        var servers: [OnLoop<RedisConnection>] = []
        for port in cluster.ports {
            let connection = try await makeConnection(loop, .tcp(host: "127.0.0.1", port: port))
            try await waitConnected(connection)
            servers.append(connection)
        }
        defer { shutDown(loop, closing: [client] + servers) }
        let store = try await loop.submit { OnLoop(loop: loop, ChannelStore(redis: client.value)) }
        defer { loop.execute { store.release() } }
        for server in servers { _ = try await RedisTests.send(server, ["CONFIG", "RESETSTAT"]) }

        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        try await loop.submit { Self.appendAll(store.value, channels: channels, count: 50, into: outcomes) }
        try await expectStoredInOrder(outcomes, count: 50, channels: 5, on: loop)
        var calls = 0
        for server in servers { calls += try await evalshaCalls(server) }
        #expect(calls == 50)
    }
}
