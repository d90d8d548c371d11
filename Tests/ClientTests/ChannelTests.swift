import AgentChatCrypto
import AgentChatProtocol
import Foundation
import TestSupport
import Testing
@testable import AgentChatClient

/// Channels and end-to-end encryption through the SDK, against real `agentchat-broker` processes sharing a real
/// Redis (TestSupport). Each test starts its own cluster and stops it.
@Suite(.serialized) struct ChannelTests {
    static func unique(_ label: String) -> String { "\(label)-\(UUID().uuidString)" }

    /// The stored messages of a `messages` answer (none for any other frame).
    static func storedMessages(_ frame: ServerFrame) -> [StoredMessage] {
        if case .messages(_, _, let items, _) = frame { items } else { [] }
    }

    /// Asserts that no plaintext appears anywhere in Redis (and that the dump is real: the channel name is there).
    static func expectNoPlaintext(in cluster: ChannelCluster, plaintexts: [String], marker: String) async throws {
        let dump = try await cluster.dumpRedis()
        #expect(!dump.keys.isEmpty)
        #expect(dump.text.contains(marker), "the Redis dump misses \(marker): the scan did not read values")
        for plaintext in plaintexts {
            #expect(!dump.text.contains(plaintext), "plaintext \(plaintext) found in Redis")
        }
    }

    @Test func membersOnDifferentBrokersExchangeMessagesAndStrangersAreRefused() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", on: 1)
        let carol = try await cluster.agent("carol", on: 1)
        let name = Self.unique("room")
        let channel = try await alice.createChannel(name: name, members: [bob.identity.did])
        #expect(Set(channel.members.map(\.did)) == [alice.identity.did, bob.identity.did])
        #expect(try await alice.describe(channel: channel.id).keyedEpoch == channel.epoch)

        let bobStream = Collector(try await bob.subscribe(channel: channel.id))
        let first = Self.unique("secret-hello")
        let receipt = try await alice.send(channel: channel.id, text: first)
        #expect(receipt.offset == 1 && !receipt.duplicate)
        try await waitUntil("bob receives", timeout: 20) { bobStream.messages.count == 1 }
        let got = try #require(bobStream.messages.first)
        #expect(got.verified && got.text == first && got.offset == 1)
        #expect(got.sender == alice.identity.did.description)
        #expect(got.clientMessageID == receipt.clientMessageID)
        #expect(bobStream.resumes.first?.recovered == true)

        let reply = Self.unique("secret-reply")
        #expect(try await bob.send(channel: channel.id, text: reply).offset == 2)
        let aliceStream = Collector(try await alice.subscribe(channel: channel.id, since: 0))
        try await waitUntil("alice reads both", timeout: 20) { aliceStream.messages.count == 2 }
        #expect(aliceStream.messages.map(\.text) == [first, reply])
        #expect(aliceStream.messages.allSatisfy { $0.verified })
        try await waitUntil("bob sees his own message", timeout: 20) { bobStream.messages.count == 2 }

        // A non-member: the channel does not exist for them.
        await #expect(throws: AgentChatError.notFound) { try await carol.describe(channel: channel.id) }
        await #expect(throws: AgentChatError.notFound) { _ = try await carol.subscribe(channel: channel.id) }
        await #expect(throws: AgentChatError.notFound) { try await carol.history(channel: channel.id) }
        await #expect(throws: AgentChatError.notFound) { try await carol.send(channel: channel.id, text: "x") }
        await #expect(throws: AgentChatError.notFound) { try await carol.join(channel: channel.id) }
        await #expect(throws: AgentChatError.notFound) {
            try await carol.request(.channel(id: nil, .getKeys(channel.id, epoch: channel.epoch)))
        }
        #expect(try await carol.listChannels().isEmpty)
        #expect(try await bob.listChannels().map(\.id) == [channel.id])

        let history = try await bob.history(channel: channel.id, limit: 10)
        #expect(history.map(\.text) == [first, reply])

        aliceStream.cancel()
        bobStream.cancel()
        await cluster.closeClients()
        try await Self.expectNoPlaintext(in: cluster, plaintexts: [first, reply], marker: name)
    }

    @Test func aMemberWhoLeftGetsNoKeyForTheNextEpoch() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", on: 1)
        let channel = try await alice.createChannel(name: "leavers", members: [bob.identity.did])
        let aliceStream = Collector(try await alice.subscribe(channel: channel.id))
        let before = Self.unique("secret-before")
        _ = try await alice.send(channel: channel.id, text: before)
        #expect(try await bob.history(channel: channel.id).map(\.text) == [before])  // bob holds epoch 1's key

        try await bob.leave(channel: channel.id)
        try await waitUntil("alice sees bob leave", timeout: 20) {
            aliceStream.values.contains { if case .membership(let e) = $0 { e.event == "member_left" } else { false } }
        }
        let after = Self.unique("secret-after")
        let receipt = try await alice.send(channel: channel.id, text: after)
        #expect(receipt.epoch > channel.epoch)
        let description = try await alice.describe(channel: channel.id)
        #expect(description.members.map(\.did) == [alice.identity.did])

        // The broker gives bob nothing for the new epoch.
        await #expect(throws: AgentChatError.notFound) {
            try await bob.request(.channel(id: nil, .getKeys(channel.id, epoch: receipt.epoch)))
        }
        await #expect(throws: AgentChatError.notFound) { try await bob.history(channel: channel.id) }
        // The key set of the new epoch has no envelope for bob.
        let keys = try await alice.request(.channel(id: nil, .getKeys(channel.id, epoch: receipt.epoch)))
        guard case .keys(_, _, _, _, _, let envelopes) = keys else {
            Issue.record("expected channel.keys, got \(keys.type)")
            return
        }
        #expect(envelopes.keys.sorted() == [alice.identity.did.description])

        // Crypto level: the new message's ciphertext opens with none of the keys bob holds.
        let raw = try await alice.request(.channel(id: nil, .history(channel.id, before: nil,
                                                                     after: receipt.offset - 1, limit: 1)))
        let item = try #require(Self.storedMessages(raw).first)
        #expect(item.offset == receipt.offset)
        let ciphertext = try #require(Base64URL.decode(item.ciphertext))
        let nonce = try #require(Base64URL.decode(item.nonce))
        let bobKeys = await bob.channelState.keys
        #expect(!bobKeys.isEmpty)
        #expect(!bobKeys.keys.contains(EpochKeyID(channel: channel.id, epoch: receipt.epoch)))
        for (id, key) in bobKeys {
            for epoch in Set([id.epoch, receipt.epoch]) {
                let ad = MessageSend.associatedData(channel: channel.id, epoch: epoch, sender: alice.identity.did,
                                                    clientMessageID: receipt.clientMessageID)
                #expect(throws: (any Error).self) { try AES256GCM.open(ciphertext, key: key, nonce: nonce, associatedData: ad) }
            }
        }
        // And alice, who has the key, reads it.
        #expect(try await alice.history(channel: channel.id).map(\.text) == [before, after])
        aliceStream.cancel()
        await cluster.closeClients()
        try await Self.expectNoPlaintext(in: cluster, plaintexts: [before, after], marker: "leavers")
    }

    @Test func staleEpochIsRefusedAndTheSDKRecovers() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let dave = try await cluster.agent("dave", on: 1)
        let channel = try await alice.createChannel(name: "open-room", open: true)
        let old = Self.unique("secret-old")
        let first = try await alice.send(channel: channel.id, text: old)
        #expect(first.epoch == channel.epoch)

        let joined = try await dave.join(channel: channel.id)  // a new epoch; dave keys it
        #expect(joined.epoch == channel.epoch + 1)
        try await waitUntil("dave keyed the new epoch", timeout: 20) {
            (try? await dave.describe(channel: channel.id).keyedEpoch) == joined.epoch
        }

        // A message under the old epoch is refused by the broker.
        let key = try #require(await alice.channelState.keys[EpochKeyID(channel: channel.id, epoch: first.epoch)])
        let nonce = SecureRandom.bytes(12)
        let ad = MessageSend.associatedData(channel: channel.id, epoch: first.epoch, sender: alice.identity.did,
                                            clientMessageID: "stale-1")
        let sealed = Base64URL.encode(try AES256GCM.seal(Array("x".utf8), key: key, nonce: nonce, associatedData: ad))
        let nonceText = Base64URL.encode(nonce)
        let signature = alice.identity.sign(MessageSend.signedBytes(
            channel: channel.id, epoch: first.epoch, clientMessageID: "stale-1", nonce: nonceText, ciphertext: sealed))
        await #expect(throws: AgentChatError.staleEpoch) {
            try await alice.request(.channel(id: nil, .send(MessageSend(
                channel: channel.id, epoch: first.epoch, clientMessageID: "stale-1", nonce: nonceText,
                ciphertext: sealed, signature: Base64URL.encode(signature)))))
        }

        // The SDK still believes in the old epoch; its next send is refused, re-keys and succeeds by itself.
        let retriesBefore = await alice.channelStatistics.staleEpochRetries
        let new = Self.unique("secret-new")
        let second = try await alice.send(channel: channel.id, text: new)
        #expect(second.epoch == joined.epoch)
        #expect(await alice.channelStatistics.staleEpochRetries == retriesBefore + 1)

        // Dave reads the new message; the old one (before he joined) is surfaced as unreadable, never as text.
        let history = try await dave.history(channel: channel.id)
        #expect(history.count == 2)
        #expect(history[0].verified == false && history[0].plaintext == nil && history[0].text == nil)
        #expect(history[0].failure == .keyUnavailable("not_found"))
        #expect(history[1].verified && history[1].text == new)
        await cluster.closeClients()
        try await Self.expectNoPlaintext(in: cluster, plaintexts: [old, new], marker: "open-room")
    }

    @Test func aDuplicateClientMessageIDIsStoredOnce() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let channel = try await alice.createChannel(name: "dups")
        let text = Array(Self.unique("secret-dup").utf8)
        let one = try await alice.send(channel: channel.id, bytes: text, clientMessageID: "same-id")
        let two = try await alice.send(channel: channel.id, bytes: text, clientMessageID: "same-id")
        #expect(!one.duplicate && two.duplicate && one.offset == two.offset)
        let three = try await alice.send(channel: channel.id, text: "other")
        #expect(three.offset == one.offset + 1)
        let history = try await alice.history(channel: channel.id)
        #expect(history.map(\.offset) == [1, 2])
        #expect(history.first?.plaintext == text)
        await cluster.closeClients()
    }

    @Test func aTamperedMessageIsNeverSurfacedAsText() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let channel = try await alice.createChannel(name: "tamper")
        let receipt = try await alice.send(channel: channel.id, text: "genuine")
        let raw = try await alice.request(.channel(id: nil, .history(channel.id, before: nil, after: nil, limit: 1)))
        let item = try #require(Self.storedMessages(raw).first)
        // A flipped ciphertext byte breaks the signature.
        var bytes = try #require(Base64URL.decode(item.ciphertext))
        bytes[0] ^= 1
        var tampered = item
        tampered.ciphertext = Base64URL.encode(bytes)
        let bad = await alice.openMessage(tampered, channel: channel.id)
        #expect(bad.failure == .badSignature && bad.plaintext == nil && bad.text == nil && !bad.verified)
        // Another sender claimed: the signature does not verify with that DID.
        var forged = item
        forged.sender = AgentIdentity.generate().did
        #expect(await alice.openMessage(forged, channel: channel.id).failure == .badSignature)
        // The untouched item verifies and opens.
        let good = await alice.openMessage(item, channel: channel.id)
        #expect(good.verified && good.text == "genuine" && good.offset == receipt.offset)
        await cluster.closeClients()
    }

    @Test func aThousandMessagesSurviveASocketKillWithoutGapsOrDuplicates() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        // Bob reaches his broker through a proxy that can cut his connection (no closing handshake, as a network
        // failure would): he reconnects and resumes as after a real failure.
        let proxy = try FaultProxy(targetPort: cluster.brokers[1].port)
        defer { proxy.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", server: "http://127.0.0.1:\(proxy.port)")
        let channel = try await alice.createChannel(name: "firehose", members: [bob.identity.did])
        let stream = Collector(try await bob.subscribe(channel: channel.id, since: 0))
        let prefix = Self.unique("secret-stream")
        let total = 1_000
        let sender = Task {
            for index in 1...total { try await alice.send(channel: channel.id, text: "\(prefix)-\(index)") }
        }
        try await waitUntil("bob is mid-stream", timeout: 60) { stream.messages.count >= 150 }
        proxy.cutAll()
        try await waitUntil("bob is further along", timeout: 60) { stream.messages.count >= 600 }
        proxy.cutAll()
        try await sender.value
        try await waitUntil("bob has everything", timeout: 120) { stream.messages.count >= total }
        try await Task.sleep(for: .milliseconds(300))  // anything extra would show up now

        let messages = stream.messages
        #expect(messages.count == total)
        #expect(messages.map(\.offset) == Array(1...Int64(total)))
        #expect(messages.allSatisfy { $0.verified })
        #expect(messages.map(\.text) == (1...total).map { "\(prefix)-\($0)" })
        let resumes = stream.resumes
        #expect(resumes.filter(\.isReconnect).count >= 2)
        #expect(resumes.allSatisfy { $0.recovered })
        #expect(await bob.channelStatistics.resubscriptions >= 2)
        stream.cancel()
        await cluster.closeClients()
        try await Self.expectNoPlaintext(in: cluster, plaintexts: (1...total).map { "\(prefix)-\($0)" },
                                         marker: "firehose")
    }

    @Test func resumingFromATrimmedOffsetReportsNotRecovered() async throws {
        let cluster = try await ChannelCluster(brokers: 1, extraArguments: ["--history-max", "10"])
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", on: 0)
        let channel = try await alice.createChannel(name: "short-memory", members: [bob.identity.did])
        for index in 1...30 { _ = try await alice.send(channel: channel.id, text: "m\(index)") }
        let stream = Collector(try await bob.subscribe(channel: channel.id, since: 2))
        try await waitUntil("bob gets what is left", timeout: 20) { stream.messages.count >= 10 }
        try await Task.sleep(for: .milliseconds(200))
        let resume = try #require(stream.resumes.first)
        #expect(resume.recovered == false && resume.since == 2 && resume.latestOffset == 30)
        #expect(stream.messages.map(\.offset) == Array(21...30))
        #expect(stream.messages.map(\.text) == (21...30).map { "m\($0)" })

        // Resuming from a retained offset is recovered.
        let again = Collector(try await bob.subscribe(channel: channel.id, since: 25))
        try await waitUntil("bob resumes", timeout: 20) { again.messages.count >= 5 }
        #expect(again.resumes.first?.recovered == true)
        #expect(again.messages.map(\.offset) == Array(26...30))
        again.cancel()
        await cluster.closeClients()
    }

    @Test func cliCreateSendListenHistory() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let alice = ["--server", cluster.url(0), "--identity", root + "/alice.json"]
        let bob = ["--server", cluster.url(1), "--identity", root + "/bob.json"]
        let carol = ["--server", cluster.url(1), "--identity", root + "/carol.json"]
        for (who, global) in [("alice", alice), ("bob", bob), ("carol", carol)] {
            #expect(try await runCLI(["keygen"] + global).status == 0)
            let register = try await runCLI(["register", "--name", who] + global)
            #expect(register.status == 0, "\(register.stderr)")
        }
        let bobDID = try AgentIdentity.load(from: root + "/bob.json").did.description
        let aliceDID = try AgentIdentity.load(from: root + "/alice.json").did.description

        let create = try await runCLI(["channel", "create", "--name", "cli-room", "--member", bobDID] + alice)
        #expect(create.status == 0, "\(create.stderr)")
        let channel = create.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ChannelID(channel) != nil)

        let members = try await runCLI(["channel", "members", "--channel", channel] + bob)
        #expect(members.status == 0, "\(members.stderr)")
        #expect(members.stdout.contains(aliceDID) && members.stdout.contains(bobDID))

        let secret = Self.unique("secret-cli")
        let send = try await runCLI(["send", "--channel", channel, secret] + alice)
        #expect(send.status == 0, "\(send.stderr)")
        #expect(send.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1")

        let listen = try await runCLI(["listen", "--channel", channel, "--from", "1", "--count", "1", "--json"] + bob)
        #expect(listen.status == 0, "\(listen.stderr)")
        let lines = listen.stdout.split(separator: "\n")
        #expect(lines.count == 1)
        let line = try JSONParser.parse(Array((lines.first ?? "").utf8))
        #expect(line["offset"]?.integerValue == 1)
        #expect(line["sender"]?.stringValue == aliceDID)
        #expect(line["plaintext"]?.stringValue == secret)
        #expect(line["verified"]?.boolValue == true)
        #expect((line["timestamp"]?.integerValue ?? 0) > 0)

        let second = try await runCLI(["send", "--channel", channel, "--json", "second"] + bob)
        #expect(second.status == 0, "\(second.stderr)")
        #expect(try JSONParser.parse(Array(second.stdout.utf8))["offset"]?.integerValue == 2)

        let history = try await runCLI(["history", "--channel", channel, "--limit", "10"] + alice)
        #expect(history.status == 0, "\(history.stderr)")
        let historyLines = history.stdout.split(separator: "\n")
        #expect(historyLines.count == 2)
        #expect(historyLines.first?.hasSuffix(": " + secret) == true)
        #expect(historyLines.last?.hasSuffix(": second") == true)
        let historyJSON = try await runCLI(["history", "--channel", channel, "--json"] + alice)
        #expect(historyJSON.stdout.split(separator: "\n").count == 2)

        // A non-member is refused: status 3, the code on stderr, nothing on stdout.
        let refused = try await runCLI(["history", "--channel", channel] + carol)
        #expect(refused.status == 3)
        #expect(refused.stderr.contains("not_found") && refused.stdout.isEmpty)
        let badChannel = try await runCLI(["send", "--channel", "nope", "x"] + alice)
        #expect(badChannel.status == 2)

        // Join and leave round trip for carol via invitation.
        #expect(try await runCLI(["channel", "invite", "--channel", channel, "--did",
                                  try AgentIdentity.load(from: root + "/carol.json").did.description] + bob).status == 0)
        #expect(try await runCLI(["channel", "join", "--channel", channel] + carol).status == 0)
        #expect(try await runCLI(["channel", "leave", "--channel", channel] + carol).status == 0)
        try await Self.expectNoPlaintext(in: cluster, plaintexts: [secret], marker: "cli-room")
    }
}
