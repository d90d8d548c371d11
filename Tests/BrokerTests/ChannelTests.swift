import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Synchronization
import Testing
import TestSupport
import WebSocketClient

/// Two broker processes on one Redis, sharing an issuer, as a cluster behind one address would.
final class ClusterFixture {
    let redis: RedisServer
    let first: BrokerProcess
    let second: BrokerProcess

    init(_ extraArguments: [String] = []) throws {
        redis = try RedisServer()
        let common = ["--redis-url", "redis://127.0.0.1:\(redis.port)", "--issuer", "agentchat-test"] + extraArguments
        do {
            first = try BrokerProcess(extraArguments: common)
            second = try BrokerProcess(extraArguments: common)
        } catch {
            redis.stop()
            throw error
        }
    }

    deinit {
        first.stop()
        second.stop()
        redis.stop()
    }
}

@Suite(.serialized) struct ChannelTests {
    @Test func membersOnDifferentBrokersExchangeMessagesInOrder() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(name: "bob"), port: cluster.second.port)
        let channel = try alice.createChannel(name: "pair", members: [bob.did])
        let id = try #require(channel["id"]?.stringValue)
        #expect(channel["epoch"] == 1 && channel["owner"]?.stringValue == alice.did.description)
        #expect(channel["members"]?.arrayValue?.count == 2)
        #expect(try alice.publishKeys(id)["type"] == "ok")

        let subscribed = try bob.request(["type": "channel.subscribe", "channel": .string(id)])
        #expect(subscribed["type"] == "subscribed" && subscribed["recovered"] == true)
        var offsets: [Int64] = []
        for _ in 0..<20 {
            let ack = try alice.send(id, epoch: 1)
            #expect(ack["type"] == "message.ack")
            offsets.append(try #require(ack["offset"]?.integerValue))
        }
        #expect(offsets == Array(1...20))
        let received = try bob.receiveMessages(20, channel: id)
        #expect(received.compactMap { $0["offset"]?.integerValue } == Array(1...20))
        #expect(received.allSatisfy { $0["sender"]?.stringValue == alice.did.description })
        // Both brokers see the same membership truth.
        #expect(try bob.describe(id)["channel"]?["offset"] == 20)
    }

    @Test func nonMembersCannotSendReadOrSeeAPrivateChannel() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let eve = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        // PROTOCOL: a private channel the agent is not in and one that does not exist both answer not_found.
        #expect(try eve.send(id, epoch: 1)["code"] == "not_found")
        #expect(try eve.send(ChannelID(randomBytes: SecureRandom.bytes(16)).rawValue, epoch: 1)["code"] == "not_found")
        // An open channel is visible to all: sending without joining it is not_member.
        let open = try #require(alice.createChannel(name: "open", open: true)["id"]?.stringValue)
        try alice.publishKeys(open)
        #expect(try eve.send(open, epoch: 1)["code"] == "not_member")
        for request: JSONValue in [["type": "channel.describe", "channel": .string(id)],
                                   ["type": "channel.subscribe", "channel": .string(id)],
                                   ["type": "history", "channel": .string(id)],
                                   ["type": "channel.join", "channel": .string(id)],
                                   ["type": "channel.keys.get", "channel": .string(id), "epoch": 1]]
        {
            #expect(try eve.request(request)["code"] == "not_found", "\(request)")
        }
        // An unknown channel answers exactly the same.
        let unknown = ChannelID(randomBytes: SecureRandom.bytes(16)).rawValue
        #expect(try eve.describe(unknown)["code"] == "not_found")
        #expect(try eve.request(["type": "channel.list"])["channels"] == [])
    }

    /// The owner removing itself would leave a channel whose owner is not a member and that nobody can manage: it
    /// is refused, and changes nothing (leaving is `channel.leave`, which passes the ownership on).
    @Test func theOwnerCannotRemoveItself() throws {
        let fixture = try BrokerFixture()
        let alice = try RawSession(agent: TestAgent(), port: fixture.port)
        let bob = try RawSession(agent: TestAgent(), port: fixture.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        let refused = try alice.request(["type": "channel.remove", "channel": .string(id),
                                         "did": .string(alice.did.description)])
        #expect(refused["code"] == "invalid_field")
        let channel = try alice.describe(id)["channel"]
        #expect(channel?["owner"]?.stringValue == alice.did.description)
        #expect(channel?["epoch"] == 1)
        #expect(channel?["members"]?.arrayValue?.count == 2)
        // A member other than the owner still gets forbidden, for itself as for others.
        #expect(try bob.request(["type": "channel.remove", "channel": .string(id),
                                 "did": .string(bob.did.description)])["code"] == "forbidden")
    }

    @Test func membershipChangesStartEpochsAndStaleEpochsAreRefused() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let carol = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        // No keys yet: sending is refused.
        #expect(try alice.send(id, epoch: 1)["code"] == "stale_epoch")
        try alice.publishKeys(id)
        #expect(try alice.send(id, epoch: 1)["type"] == "message.ack")
        #expect(try bob.publishKeys(id)["code"] == "keys_exist")

        // Carol is invited and joins: epoch 2. Epoch-1 messages are refused; keys missing Carol are refused.
        #expect(try bob.request(["type": "channel.invite", "channel": .string(id), "did": .string(carol.did.description)])["type"] == "ok")
        let joined = try carol.request(["type": "channel.join", "channel": .string(id)])
        #expect(joined["channel"]?["epoch"] == 2)
        #expect(try alice.send(id, epoch: 1)["code"] == "stale_epoch")
        #expect(try alice.send(id, epoch: 2)["code"] == "stale_epoch")  // epoch 2 has no keys yet
        let description = try alice.describe(id)["channel"]
        var partial: [String: String] = [:]
        for member in description?["members"]?.arrayValue ?? [] where member["did"]?.stringValue != carol.did.description {
            partial[member["did"]!.stringValue!] = Base64URL.encode(SecureRandom.bytes(80))
        }
        let signature = alice.agent.signing.sign(ChannelKeys.signedBytes(channel: ChannelID(id)!, epoch: 2, envelopes: partial))
        let refused = try alice.request(["type": "channel.keys", "channel": .string(id), "epoch": 2,
                                         "envelopes": .object(partial.mapValues { .string($0) }),
                                         "signature": .string(Base64URL.encode(signature))])
        #expect(refused["code"] == "stale_epoch")
        #expect(try alice.publishKeys(id)["type"] == "ok")
        #expect(try alice.send(id, epoch: 2)["type"] == "message.ack")

        // Bob leaves: epoch 3, and he gets no envelope for it.
        #expect(try bob.request(["type": "channel.leave", "channel": .string(id)])["type"] == "ok")
        try alice.publishKeys(id)
        #expect(try alice.describe(id)["channel"]?["epoch"] == 3)
        #expect(try bob.request(["type": "channel.keys.get", "channel": .string(id), "epoch": 3])["code"] == "not_found")
        #expect(try carol.request(["type": "channel.keys.get", "channel": .string(id), "epoch": 3])["type"] == "channel.keys")
        // Only the owner removes.
        #expect(try carol.request(["type": "channel.remove", "channel": .string(id), "did": .string(alice.did.description)])["code"] == "forbidden")
        #expect(try alice.request(["type": "channel.remove", "channel": .string(id), "did": .string(carol.did.description)])["type"] == "ok")
        #expect(try carol.send(id, epoch: 4)["code"] == "not_found")
    }

    @Test func aRepeatedClientMessageIDIsStoredOnce() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        try bob.request(["type": "channel.subscribe", "channel": .string(id)])
        let first = try alice.send(id, epoch: 1, clientMessageID: "same")
        let again = try alice.send(id, epoch: 1, clientMessageID: "same")
        #expect(first["offset"] == 1 && first["duplicate"] == false)
        #expect(again["offset"] == 1 && again["duplicate"] == true)
        #expect(try alice.send(id, epoch: 1, clientMessageID: "other")["offset"] == 2)
        let received = try bob.receiveMessages(2, channel: id)
        #expect(received.compactMap { $0["offset"]?.integerValue } == [1, 2])
        #expect(try alice.describe(id)["channel"]?["offset"] == 2)
    }

    @Test func resumeAfterADisconnectMidStreamHasNoGapsOrDuplicates() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bobAgent = TestAgent()
        var bob = try RawSession(agent: bobAgent, port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        let subscribed = try bob.request(["type": "channel.subscribe", "channel": .string(id)])
        let historyEpoch = try #require(subscribed["historyEpoch"]?.stringValue)

        // Alice streams 1,000 messages (pipelined) while Bob reads a few hundred and then his socket dies.
        let sender = Thread { for _ in 0..<1000 { _ = try? alice.send(id, epoch: 1) } }
        sender.start()
        let firstPart = try bob.receiveMessages(300, channel: id)
        var seen = firstPart.compactMap { $0["offset"]?.integerValue }
        bob.client.disconnect()
        let last = try #require(seen.last)

        bob = try RawSession(agent: bobAgent, port: cluster.first.port, register: false)
        let resumed = try bob.request(["type": "channel.subscribe", "channel": .string(id), "since": .number(Double(last)),
                                       "historyEpoch": .string(historyEpoch)])
        #expect(resumed["recovered"] == true)
        let rest = try bob.receiveMessages(1000 - seen.count, channel: id, timeout: 60)
        seen += rest.compactMap { $0["offset"]?.integerValue }
        while !sender.isFinished { Thread.sleep(forTimeInterval: 0.01) }
        #expect(seen == Array(1...1000))
        #expect(Set(seen).count == seen.count)
    }

    @Test func messagesPublishedWhileABrokerLostPubSubAreCaughtUp() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        try bob.request(["type": "channel.subscribe", "channel": .string(id)])
        for _ in 0..<5 { _ = try alice.send(id, epoch: 1) }
        #expect(try bob.receiveMessages(5, channel: id).count == 5)
        // Cut every pub/sub connection (both brokers'); messages published before they resubscribe are not
        // delivered by Redis, only found again in history.
        for round in 0..<3 {
            _ = try RedisProbe.command(port: cluster.redis.port, ["CLIENT", "KILL", "TYPE", "pubsub"])
            for _ in 0..<20 { _ = try alice.send(id, epoch: 1) }
            _ = round
        }
        let rest = try bob.receiveMessages(60, channel: id, timeout: 30)
        #expect(rest.compactMap { $0["offset"]?.integerValue } == Array(6...65))
    }

    @Test func resumingFromTrimmedHistoryOrAnotherHistoryEpochSaysNotRecovered() throws {
        let cluster = try ClusterFixture(["--history-max", "10"])
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        for _ in 0..<30 { _ = try alice.send(id, epoch: 1) }
        let trimmed = try alice.request(["type": "channel.subscribe", "channel": .string(id), "since": 5])
        #expect(trimmed["recovered"] == false)
        // It is sent what is left: the last 10.
        #expect(try alice.receiveMessages(10, channel: id).compactMap { $0["offset"]?.integerValue } == Array(21...30))
        try alice.request(["type": "channel.unsubscribe", "channel": .string(id)])
        let otherEpoch = try alice.request(["type": "channel.subscribe", "channel": .string(id), "since": 29,
                                            "historyEpoch": "not-this-one"])
        #expect(otherEpoch["recovered"] == false)
        let fine = try alice.request(["type": "channel.subscribe", "channel": .string(id), "since": 25,
                                      "historyEpoch": trimmed["historyEpoch"]!])
        #expect(fine["recovered"] == true)
        // History pages both ways.
        let newest = try alice.request(["type": "history", "channel": .string(id), "limit": 3])
        #expect(newest["messages"]?.arrayValue?.compactMap { $0["offset"]?.integerValue } == [30, 29, 28])
        let after = try alice.request(["type": "history", "channel": .string(id), "after": 25, "limit": 2])
        #expect(after["messages"]?.arrayValue?.compactMap { $0["offset"]?.integerValue } == [26, 27])
    }

    @Test func aSlowConsumerIsCutWhileItsNeighbourKeepsUp() throws {
        let cluster = try ClusterFixture(["--max-queue-bytes", "65536"])
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let slow = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let fast = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [slow.did, fast.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        try slow.request(["type": "channel.subscribe", "channel": .string(id)])
        try fast.request(["type": "channel.subscribe", "channel": .string(id)])
        // The slow one stops reading; 400 messages of ~11 KB fill its socket buffers and then its queue.
        let total = 400
        let fastSeen = Mutex<Int>(0)
        let fastReader = Thread {
            let items = (try? fast.receiveMessages(total, channel: id, timeout: 60)) ?? []
            fastSeen.withLock { $0 = items.count }
        }
        fastReader.start()
        for _ in 0..<total { _ = try alice.send(id, epoch: 1, ciphertext: SecureRandom.bytes(8 * 1024)) }
        while !fastReader.isFinished { Thread.sleep(forTimeInterval: 0.05) }
        #expect(fastSeen.withLock { $0 } == total)
        // The slow consumer finds a 4008 close after what it was sent.
        var closeCode: UInt16?
        let deadline = Date().addingTimeInterval(30)
        while closeCode == nil, Date() < deadline {
            switch try? slow.client.receive(timeout: 5) {
            case .close(let code, _)?: closeCode = code
            case nil: closeCode = 0
            default: continue
            }
        }
        #expect(closeCode == 4008)
    }

    @Test func withRedisDownNothingIsAcknowledgedAndSendingResumesAfter() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        #expect(try alice.send(id, epoch: 1)["offset"] == 1)
        cluster.redis.kill()
        // Give the broker a moment to notice; every answer while Redis is down is a refusal, never an ack.
        Thread.sleep(forTimeInterval: 0.3)
        for _ in 0..<5 {
            let reply = try alice.send(id, epoch: 1, clientMessageID: "while-down")
            #expect(reply["type"] == "error" && reply["code"] == "unavailable")
        }
        try cluster.redis.restart()
        var reply: JSONValue = nil
        let deadline = Date().addingTimeInterval(20)
        repeat {
            Thread.sleep(forTimeInterval: 0.2)
            reply = try alice.send(id, epoch: 1, clientMessageID: "after")
        } while reply["type"] != "message.ack" && Date() < deadline
        // The channel works again once Redis is back (what Redis itself kept across its SIGKILL depends on
        // appendfsync: everysec may lose the last second, always loses nothing).
        #expect(reply["type"] == "message.ack")
    }

    @Test func badChannelFramesGetTheirCodes() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        let before = try RedisProbe.keyCount(port: cluster.redis.port)
        let good: [String: JSONValue] = ["type": "message.send", "channel": .string(id), "epoch": 1,
                                         "clientMessageId": "c", "nonce": .string(Base64URL.encode(SecureRandom.bytes(12))),
                                         "ciphertext": .string(Base64URL.encode(SecureRandom.bytes(32))),
                                         "signature": .string(Base64URL.encode(SecureRandom.bytes(64)))]
        func with(_ key: String, _ value: JSONValue?) -> JSONValue {
            var fields = good
            fields[key] = value
            return .object(fields)
        }
        let cases: [(JSONValue, String)] = [
            (with("channel", nil), "missing_field"),
            (with("channel", "ch_nope"), "invalid_field"),
            (with("channel", .string(ChannelID(randomBytes: SecureRandom.bytes(16)).rawValue)), "not_found"),
            (with("epoch", "1"), "invalid_field"),
            (with("epoch", 0), "invalid_field"),
            (with("nonce", "AAAA"), "invalid_field"),
            (with("ciphertext", "***"), "invalid_field"),
            (with("ciphertext", .string(Base64URL.encode(SecureRandom.bytes(33 * 1024)))), "invalid_field"),
            (with("signature", .string(Base64URL.encode(SecureRandom.bytes(10)))), "invalid_field"),
            (with("clientMessageId", ""), "invalid_field"),
            (with("extra", 1), "unknown_field"),
            (["type": "channel.create"], "missing_field"),
            (["type": "channel.create", "name": "x", "members": ["did:agentchat:zzz"]], "invalid_field"),
            (["type": "channel.create", "name": "x", "members": .array([.string(TestAgent().did.description)])], "unknown_agent"),
            (["type": "history", "channel": .string(id), "limit": 0], "invalid_field"),
        ]
        for (frame, code) in cases {
            #expect(try alice.request(frame)["code"]?.stringValue == code, "\(frame)")
        }
        #expect(try RedisProbe.keyCount(port: cluster.redis.port) == before)
        #expect(try alice.describe(id)["channel"]?["offset"] == 0)
    }
}
