import AgentChatClient
import AgentChatProtocol
import AgentChatRedis
import Foundation
import TestSupport
import Testing
import WebSocketClient

/// Two brokers on a real three-master Redis Cluster (`--redis-cluster`), two agents (one on each broker) exchanging
/// messages in 20 channels while `redis-cli --cluster reshard` moves 3,000 slots from the first master to the second,
/// then 3,000 from the third to the first. Every
/// acknowledged message is in history once, in order, without a gap, and every subscriber received each exactly
/// once, without the SDK having to repair a gap (the brokers' feeds followed their slots and caught up themselves).
@Suite(.serialized) struct RedisClusterReshardTests {
    static let channels = 20
    static let slotsMoved = 3_000

    @Test func messagesKeepFlowingWhileSlotsMoveAndNothingIsLostOrRepeated() async throws {
        let cluster = try await DedicatedThread.run { try RedisClusterGroup() }
        defer { cluster.stop() }
        let group = try await ChannelCluster(brokers: 2, redisArguments: ["--redis-cluster", cluster.clusterArgument],
                                             logLevel: "info")
        defer { group.stop() }
        let brokers = group.brokers
        #expect(brokers[0].combinedOutput.contains("Redis Cluster slot map"))

        let (alice, bob) = (try await group.agent("alice", on: 0), try await group.agent("bob", on: 1))
        let agents = [alice, bob]
        var channels: [ChannelID] = []
        for index in 0..<Self.channels {
            channels.append(try await alice.createChannel(name: "reshard-\(index)", members: [bob.identity.did]).id)
        }
        var received: [[Collector<ChannelStreamEvent>]] = []
        for channel in channels {
            received.append([Collector(try await alice.subscribe(channel: channel)),
                             Collector(try await bob.subscribe(channel: channel))])
        }
        let ownersBefore = channels.map { cluster.owner(of: RedisClusterSlot.of($0.rawValue)) }

        // The reshard runs on its own thread while the agents send, one message per channel per round, alternating
        // senders (so every message crosses from one broker to the other).
        let ports = cluster.ports
        let started = ContinuousClock.now
        let finished = Flag()
        let reshard = Task.detached {
            defer { finished.set() }
            return try cluster.reshard(from: ports[0], to: ports[1], slots: Self.slotsMoved)
                + cluster.reshard(from: ports[2], to: ports[0], slots: Self.slotsMoved)
        }
        var acknowledged = [[Int64: String]](repeating: [:], count: channels.count)
        var round = 0
        var reshardDone = false
        var doneAtRound = 0
        var reshardOutput = ""
        while round < 400 {
            for (index, channel) in channels.enumerated() {
                let sender = (index + round) % 2 == 0 ? alice : bob
                let text = "c\(index) r\(round)"
                let (receipt, _) = try await sendUntilAcknowledged(sender, channel: channel, text: text,
                                                                   clientMessageID: "c\(index)-r\(round)")
                #expect(acknowledged[index][receipt.offset] == nil || receipt.duplicate)
                acknowledged[index][receipt.offset] = text
            }
            round += 1
            if !reshardDone, finished.isSet {
                reshardDone = true
                doneAtRound = round
                reshardOutput = try await reshard.value
            }
            // Three more rounds after the reshard has finished (at least ten in all).
            if reshardDone, round >= max(10, doneAtRound + 3) { break }
        }
        if !reshardDone { reshardOutput = try await reshard.value }
        let elapsed = ContinuousClock.now - started
        let rounds = round
        #expect(cluster.slotCount(of: ports[1]) > 5_461 + Self.slotsMoved - 10, "reshard: \(reshardOutput.suffix(300))")
        #expect(cluster.slotCount(of: ports[2]) < 5_461 - Self.slotsMoved + 10, "reshard: \(reshardOutput.suffix(300))")
        let ownersAfter = channels.map { cluster.owner(of: RedisClusterSlot.of($0.rawValue)) }
        let movedChannels = zip(ownersBefore, ownersAfter).filter { $0 != $1 }.count
        #expect(movedChannels > 0, "some channels' slots moved")

        let total = try await expectEveryChannelComplete(channels, acknowledged: acknowledged, received: received,
                                                         reader: alice, timeout: 30)
        for agent in agents { #expect(await agent.channelStatistics.gapsRepaired == 0) }
        let feedMoves = brokers.map { $0.combinedOutput.components(separatedBy: "sharded subscription ended").count - 1 }
        print("""
            redis-cluster reshard figures: \(total) messages in \(Self.channels) channels (\(rounds) rounds), \
            2 × \(Self.slotsMoved) slots moved, \(movedChannels) channels' slots among them, feed moves seen by the \
            brokers \(feedMoves), \(elapsed) from the reshard's start to the last acknowledgement
            """)
        for agent in agents { await agent.close() }
    }
}

/// Set once by the reshard thread.
private final class Flag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}

/// The end of a many-channel run: in each channel the acknowledged offsets are 1…N, history holds exactly the
/// acknowledged messages at their offsets, and every subscriber received each once, in order. Answers the number
/// of messages in all.
func expectEveryChannelComplete(_ channels: [ChannelID], acknowledged: [[Int64: String]],
                                received: [[Collector<ChannelStreamEvent>]], reader: AgentChatClient,
                                timeout: Double) async throws -> Int
{
    var total = 0
    for (index, channel) in channels.enumerated() {
        let count = acknowledged[index].count
        total += count
        #expect(acknowledged[index].keys.sorted() == (1...Int64(count)).map { $0 })
        let history = try await reader.history(channel: channel, limit: 500, after: 0)
        #expect(history.map(\.offset) == (1...Int64(count)).map { $0 })
        #expect(Dictionary(uniqueKeysWithValues: history.map { ($0.offset, $0.text ?? "") }) == acknowledged[index])
        for collector in received[index] {
            try await waitUntil("channel \(index): \(count) messages", timeout: timeout) {
                collector.values.compactMap(\.message).count >= count
            }
            #expect(collector.values.compactMap(\.message).map(\.offset) == (1...Int64(count)).map { $0 })
            collector.cancel()
        }
    }
    return total
}
