import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// Ownership transfer, key rotation without a membership change, the member cap, and the limits on ids and
/// envelopes: what `docs/PROTOCOL.md` promises about a channel's life.
@Suite(.serialized) struct ChannelLifecycleTests {
    @Test func whenTheOwnerLeavesTheMemberWhoseDIDSortsFirstOwnsTheChannel() throws {
        let cluster = try ClusterFixture()
        let owner = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let others = try (0..<3).map { _ in try RawSession(agent: TestAgent(), port: cluster.second.port) }
        let id = try #require(owner.createChannel(members: others.map(\.did))["id"]?.stringValue)
        #expect(try owner.request(["type": "channel.leave", "channel": .string(id)])["type"] == "ok")
        let heir = try #require(others.min { Array($0.did.description.utf8).lexicographicallyPrecedes(Array($1.did.description.utf8)) })
        let description = try others[0].describe(id)["channel"]
        #expect(description?["owner"]?.stringValue == heir.did.description)
        #expect(description?["epoch"] == 2)
        // The new owner can do what only the owner may.
        let removed = try #require(others.first { $0.did != heir.did })
        #expect(try heir.request(["type": "channel.remove", "channel": .string(id), "did": .string(removed.did.description)])["type"] == "ok")
        #expect(try heir.request(["type": "channel.listing", "channel": .string(id), "listed": true, "title": "Inherited"])["type"] == "ok")
    }

    @Test func anyMemberRotatesTheEpochAndSubscribersAreTold() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let eve = try RawSession(agent: TestAgent(), port: cluster.second.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        try alice.request(["type": "channel.subscribe", "channel": .string(id)])
        #expect(try bob.request(["type": "channel.rotate", "channel": .string(id)])["type"] == "ok")
        let event = try alice.next("channel.event")
        #expect(event["event"] == "epoch_rotated" && event["epoch"] == 2 && event["did"]?.stringValue == bob.did.description)
        #expect(try alice.send(id, epoch: 1)["code"] == "stale_epoch")
        #expect(try alice.send(id, epoch: 2)["code"] == "stale_epoch")  // not keyed yet
        #expect(try bob.publishKeys(id)["type"] == "ok")
        #expect(try alice.send(id, epoch: 2)["type"] == "message.ack")
        #expect(try eve.request(["type": "channel.rotate", "channel": .string(id)])["code"] == "not_found")
        #expect(try alice.describe(id)["channel"]?["epoch"] == 2)
    }

    @Test func aFullChannelRefusesAnotherMember() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel(open: true)["id"]?.stringValue)
        // Fill the member set to the cap directly (registering 1,000 agents would only slow the test down).
        let filler = (1..<ChannelKeys.maxMembers).map { "did:agentchat:zFiller\($0)" }
        for chunk in stride(from: 0, to: filler.count, by: 200) {
            _ = try RedisProbe.command(port: cluster.redis.port,
                                       ["SADD", "agentchat:ch:{\(id)}:members"] + filler[chunk..<min(chunk + 200, filler.count)])
        }
        let before = try alice.describe(id)["channel"]?["epoch"]
        #expect(try bob.request(["type": "channel.join", "channel": .string(id)])["code"] == "channel_full")
        #expect(try alice.describe(id)["channel"]?["epoch"] == before)
    }

    @Test(arguments: ["tab\there", "bell\u{07}", "del\u{7F}", "c1\u{85}", ""])
    func clientMessageIDsWithControlCharactersAreRefused(clientMessageID: String) throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        #expect(try alice.send(id, epoch: 1, clientMessageID: clientMessageID)["code"] == "invalid_field")
        // 64 UTF-8 bytes is the limit, whatever the characters: 16 four-byte characters fit, 17 do not.
        #expect(try alice.send(id, epoch: 1, clientMessageID: String(repeating: "😀", count: 16))["type"] == "message.ack")
        #expect(try alice.send(id, epoch: 1, clientMessageID: String(repeating: "😀", count: 17))["code"] == "invalid_field")
    }

    @Test func envelopesMustBeSealedChannelKeys() throws {
        let cluster = try ClusterFixture()
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        for length in [79, 81, 32] {
            let envelopes = [alice.did.description: Base64URL.encode(SecureRandom.bytes(length))]
            let signature = alice.agent.signing.sign(ChannelKeys.signedBytes(channel: ChannelID(id)!, epoch: 1, envelopes: envelopes))
            let reply = try alice.request(["type": "channel.keys", "channel": .string(id), "epoch": 1,
                                           "envelopes": .object(envelopes.mapValues { .string($0) }),
                                           "signature": .string(Base64URL.encode(signature))])
            #expect(reply["code"] == "invalid_field", "\(length) bytes")
        }
        #expect(try alice.publishKeys(id)["type"] == "ok")
    }
}
