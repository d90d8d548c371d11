import AgentChatClient
import AgentChatProtocol
import AgentChatRedis
import Foundation
import TestSupport
import Testing
import WebSocketClient

/// Two brokers on a real three-master Redis Cluster whose first master has a replica; two agents (one on each
/// broker) send in 12 channels. Once the replica has everything, the first master is killed with SIGKILL and the
/// cluster promotes the replica while the agents keep sending (retrying what the brokers refuse meanwhile). Every
/// acknowledged message is in history once, in order, without a gap, and every subscriber received each exactly
/// once: the brokers' commands, scripts and sharded feeds moved to the new master by themselves.
///
/// Redis replicates asynchronously and a cluster broker cannot `WAIT` (docs/ops/redis-cluster.md), so traffic is
/// paused until the replica is level before the kill: what this tests is the brokers following the failover, not
/// what an unreplicated write would lose.
@Suite(.serialized) struct RedisClusterFailoverTests {
    static let channels = 12

    @Test func messagesKeepFlowingWhenAMasterDiesAndItsReplicaTakesOver() async throws {
        let cluster = try await DedicatedThread.run { try RedisClusterGroup() }
        defer { cluster.stop() }
        let victim = cluster.ports[0]
        let replica = try await DedicatedThread.run { try cluster.addReplica(of: victim) }
        let group = try await ChannelCluster(brokers: 2, redisArguments: ["--redis-cluster", cluster.clusterArgument],
                                             logLevel: "info")
        defer { group.stop() }
        let (alice, bob) = (try await group.agent("alice", on: 0), try await group.agent("bob", on: 1))
        let agents = [alice, bob]
        var channels: [ChannelID] = []
        for index in 0..<Self.channels {
            channels.append(try await alice.createChannel(name: "failover-\(index)", members: [bob.identity.did]).id)
        }
        let onVictim = channels.filter { cluster.owner(of: RedisClusterSlot.of($0.rawValue)) == victim }.count
        var received: [[Collector<ChannelStreamEvent>]] = []
        for channel in channels {
            received.append([Collector(try await alice.subscribe(channel: channel)),
                             Collector(try await bob.subscribe(channel: channel))])
        }

        var acknowledged = [[Int64: String]](repeating: [:], count: channels.count)
        var refusedSends = 0
        func sendRound(_ round: Int) async throws {
            for (index, channel) in channels.enumerated() {
                let sender = (index + round) % 2 == 0 ? alice : bob
                let text = "c\(index) r\(round)"
                let (receipt, refused) = try await sendUntilAcknowledged(sender, channel: channel, text: text,
                                                                         clientMessageID: "c\(index)-r\(round)",
                                                                         timeout: .seconds(90))
                refusedSends += refused
                #expect(acknowledged[index][receipt.offset] == nil || receipt.duplicate)
                acknowledged[index][receipt.offset] = text
            }
        }
        for round in 0..<5 { try await sendRound(round) }

        // The replica has every write of its master (the same replication offset), then the master dies.
        try await waitUntil("the replica level with its master", timeout: 30) {
            func offset(_ port: Int) -> String? {
                (try? cluster.cli(port, ["INFO", "replication"]))?.split(whereSeparator: \.isNewline)
                    .first { $0.hasPrefix("master_repl_offset:") }.map(String.init)
            }
            let master = offset(victim), copy = offset(replica)
            return master != nil && master == copy
        }
        cluster.kill(victim)
        let killedAt = ContinuousClock.now
        // Sending goes on while the cluster notices and promotes the replica (refusals are retried).
        var round = 5
        while round < 60 {
            try await sendRound(round)
            round += 1
            if round >= 10, (try? cluster.cli(replica, ["ROLE"]))?.hasPrefix("master") == true { break }
        }
        try await DedicatedThread.run { try cluster.waitUntilMaster(replica, timeout: 60) }
        for _ in 0..<5 {
            try await sendRound(round)
            round += 1
        }
        let elapsed = ContinuousClock.now - killedAt

        let total = try await expectEveryChannelComplete(channels, acknowledged: acknowledged, received: received,
                                                         reader: alice, timeout: 60)
        #expect(onVictim > 0, "some channels live on the master that dies")
        print("""
            redis-cluster failover figures: \(total) messages in \(Self.channels) channels (\(round) rounds), \
            \(onVictim) channels on the killed master, \(refusedSends) sends refused and retried, \(elapsed) from \
            the kill to the last acknowledgement
            """)
        for agent in agents { await agent.close() }
    }
}
