import AgentChatClient
import AgentChatProtocol
import Foundation
import TestSupport
import WebSocketClient
import Testing

/// A broker on a Sentinel-monitored Redis group (a master, two replicas, three sentinels, all real processes) with
/// `--redis-replicas 2`: the master is killed with SIGKILL mid-stream; the broker finds the new master through the
/// sentinels, and once the old master is back as a replica messages flow again; every acknowledged message is in
/// the new master's history, in order, without a gap, and reached the subscriber exactly once.
///
/// `WAIT 2` with two replicas: every acknowledged message is on both, so whichever the sentinels promote has it.
/// (With `WAIT 1` the promoted replica can lack acknowledged messages: the sentinels choose by replication offsets
/// they may have read before the last writes. A run on a loaded machine lost three that way.)
@Suite(.serialized) struct SentinelFailoverTests {
    @Test func messagesKeepFlowingThroughAFailoverAndNothingAcknowledgedIsLost() async throws {
        let group = try await DedicatedThread.run { try SentinelGroup() }
        defer { group.stop() }
        let broker = try await BrokerProcess.start(extraArguments: [
            "--redis-sentinels", group.sentinelsArgument, "--redis-master", SentinelGroup.masterName,
            "--redis-replicas", "2", "--redis-replicas-timeout", "2000", "--register-rate", "1000",
        ], logLevel: "info")
        defer { broker.stop() }
        #expect(broker.combinedOutput.contains("master '\(SentinelGroup.masterName)' of sentinels"))

        var clients: [AgentChatClient] = []
        for name in ["alice", "bob"] {
            let client = try AgentChatClient(identity: .generate(name: name), server: broker.baseURL,
                                             configuration: testConfiguration())
            _ = try await client.register(name: name)
            try await client.connect()
            clients.append(client)
        }
        let (alice, bob) = (clients[0], clients[1])
        let channel = try await alice.createChannel(name: "failover", members: [bob.identity.did])
        let received = Collector(try await bob.subscribe(channel: channel.id))

        var acknowledged: [Int64: String] = [:]
        var rejoin: Task<Void, any Error>?
        for n in 0..<40 {
            if n == 15 {
                group.kill(group.masterPort)
                // Once the sentinels have promoted a replica, the old master comes back as its replica, so that
                // the new master has two again and `WAIT 2` can be met (until then sends are refused and retried).
                rejoin = Task.detached {
                    let deadline = ContinuousClock.now + .seconds(60)
                    while ContinuousClock.now < deadline {
                        if let master = try group.currentMasterPort(), group.replicaPorts.contains(master) {
                            return try group.restartAsReplica(group.masterPort, of: master)
                        }
                        try await Task.sleep(for: .milliseconds(200))
                    }
                }
            }
            let text = "message \(n)"
            let (receipt, _) = try await sendUntilAcknowledged(alice, channel: channel.id, text: text,
                                                               clientMessageID: "m\(n)", pause: .milliseconds(200))
            acknowledged[receipt.offset] = text
        }
        try await rejoin?.value
        let newMaster = try group.currentMasterPort()
        #expect(newMaster.map(group.replicaPorts.contains) == true)
        #expect(acknowledged.count == 40)
        #expect(acknowledged.keys.sorted() == Array(1...40))

        // Every acknowledged message is on the new master, verified and decrypted.
        let history = try await alice.history(channel: channel.id, limit: 500, after: 0)
        #expect(history.map(\.offset) == Array(1...40))
        let allVerified = history.allSatisfy { $0.verified }
        #expect(allVerified)
        #expect(Dictionary(uniqueKeysWithValues: history.map { ($0.offset, $0.text ?? "") }) == acknowledged)
        // The subscriber got each exactly once, in order (the broker caught its feed up after the failover).
        try await waitUntil("bob's 40 messages", timeout: 30) { received.values.compactMap(\.message).count >= 40 }
        #expect(received.values.compactMap(\.message).map(\.offset) == Array(1...40))
        received.cancel()
        // The broker followed the failover to the new master.
        #expect(broker.combinedOutput.contains("127.0.0.1:\(newMaster ?? 0)"))

        // The new master has two replicas: a broker that wants three refuses to acknowledge (unavailable), yet the
        // message is stored; asked again with the same client message id, the first broker acknowledges it as a
        // duplicate of the same offset.
        let strict = try await BrokerProcess.start(extraArguments: [
            "--redis-sentinels", group.sentinelsArgument, "--redis-master", SentinelGroup.masterName,
            "--redis-replicas", "3", "--redis-replicas-timeout", "300", "--register-rate", "1000",
        ], logLevel: "info")
        defer { strict.stop() }
        let carol = try AgentChatClient(identity: alice.identity, server: strict.baseURL,
                                        configuration: testConfiguration())
        try await carol.connect()
        let refused = await #expect(throws: AgentChatError.self) {
            try await carol.send(channel: channel.id, bytes: Array("late".utf8), clientMessageID: "late")
        }
        #expect(refused?.code == "unavailable")
        #expect(refused?.message.contains("replica") == true)
        let again = try await alice.send(channel: channel.id, bytes: Array("late".utf8), clientMessageID: "late")
        #expect(again.duplicate && again.offset == 41)
        await carol.close()
        for client in clients { await client.close() }
    }
}
