import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
@testable import AgentChatClient

/// A broker, or anyone who can write to Redis, must not be able to make the SDK seal a channel key to an
/// encryption key the member never registered. Real broker, real Redis; the tampering is done in Redis directly.
@Suite(.serialized) struct MemberKeyTrustTests {
    /// The agent hash of `did` (docs/ARCHITECTURE.md, Redis keys).
    static func agentKey(_ did: DID) -> String { "agentchat:agent:{\(did)}" }

    /// `bytes` as a redis-cli double-quoted string of `\xNN` escapes (values in the agent hash are raw bytes).
    static func quoted(_ bytes: [UInt8]) -> String {
        "\"" + bytes.map { String(format: "\\x%02x", $0) }.joined() + "\""
    }

    /// Runs one command through redis-cli against the cluster's Redis; returns its output.
    @discardableResult
    static func redis(_ cluster: ChannelCluster, _ command: String) async throws -> String {
        try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(cluster.redis.port)"], stdin: command + "\n")
    }

    /// Alice (the one who keys the channel) and Bob, registered and connected on one real broker.
    static func pair(_ cluster: ChannelCluster) async throws -> (AgentChatClient, AgentChatClient) {
        (try await cluster.agent("alice", on: 0), try await cluster.agent("bob", on: 0))
    }

    /// Nothing was published for the channel's epoch: Bob (a member) still sees it unkeyed, and if a key set exists
    /// anyway, shows whether `attacker` opens Bob's envelope in it.
    static func expectNothingPublished(bob: AgentChatClient, attacker: EncryptionKeyPair?) async throws {
        let channel = try #require(try await bob.listChannels().first, "the channel was created for Bob")
        #expect(channel.keyedEpoch < channel.epoch, "a key set was published for epoch \(channel.epoch)")
        guard channel.keyedEpoch >= channel.epoch else { return }
        let set = try await bob.request(.channel(id: nil, .getKeys(channel.id, epoch: channel.epoch)))
        guard case .keys(_, _, _, _, _, let envelopes) = set else {
            Issue.record("expected channel.keys, got \(set.type)")
            return
        }
        let envelope = envelopes[bob.identity.did.description].flatMap(Base64URL.decode)
        if let attacker, let envelope, (try? attacker.openSealed(envelope)) != nil {
            Issue.record("the attacker's key opens the channel key sealed for Bob")
        }
    }

    @Test func aSubstitutedEncryptionKeyIsRefusedAndNothingIsSealed() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let (alice, bob) = try await Self.pair(cluster)
        let attacker = EncryptionKeyPair()
        try await Self.redis(cluster, "HSET \(Self.agentKey(bob.identity.did)) encryptionKey "
                             + Self.quoted(attacker.publicKey))

        let error = await #expect(throws: AgentChatError.memberKeyUnverified) {
            try await alice.createChannel(name: "tampered", members: [bob.identity.did])
        }
        #expect(error?.member == bob.identity.did)
        #expect(error?.message.contains(bob.identity.did.description) == true)
        try await Self.expectNothingPublished(bob: bob, attacker: attacker)

        // Sending needs the epoch's key: refused the same way, still nothing published.
        let channel = try #require(try await alice.listChannels().first)
        let sendError = await #expect(throws: AgentChatError.memberKeyUnverified) {
            try await alice.send(channel: channel.id, text: "for bob only")
        }
        #expect(sendError?.member == bob.identity.did)
        #expect(sendError?.channel == channel.id)
        try await Self.expectNothingPublished(bob: bob, attacker: attacker)
        await cluster.closeClients()
    }

    /// Joining keys the new epoch; the joiner checks every member, itself included: its own stored key was
    /// replaced, so it refuses too.
    @Test func aJoinerRefusesToKeyWhenItsOwnStoredKeyWasReplaced() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let (alice, bob) = try await Self.pair(cluster)
        let channel = try await alice.createChannel(name: "open", open: true)
        #expect(try await alice.describe(channel: channel.id).keyedEpoch == channel.epoch)
        try await Self.redis(cluster, "HSET \(Self.agentKey(bob.identity.did)) encryptionKey "
                             + Self.quoted(EncryptionKeyPair().publicKey))

        let error = await #expect(throws: AgentChatError.memberKeyUnverified) {
            try await bob.join(channel: channel.id)
        }
        #expect(error?.member == bob.identity.did && error?.channel == channel.id)
        let after = try await alice.describe(channel: channel.id)
        #expect(after.epoch == channel.epoch + 1 && after.keyedEpoch == channel.epoch)
        await cluster.closeClients()
    }

    /// A profile stored before profiles carried their registration signature (or with it deleted) cannot be
    /// verified, so nothing is sealed to it.
    @Test func aMemberWithoutARegistrationSignatureIsRefused() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let (alice, bob) = try await Self.pair(cluster)
        try await Self.redis(cluster, "HDEL \(Self.agentKey(bob.identity.did)) registrationSignature "
                             + "registrationTimestamp")

        let described = try await alice.request(.channel(id: nil, .create(name: "legacy", open: false,
                                                                          members: [bob.identity.did])))
        guard case .channel(_, let channel) = described else {
            Issue.record("expected channel, got \(described.type)")
            return
        }
        // Described without them. (Through the typed frame: the codec reads a malformed registration as none too.)
        let entry = try #require(channel.members.first { $0.did == bob.identity.did })
        #expect(entry.registration == nil)

        let error = await #expect(throws: AgentChatError.memberKeyUnverified) {
            try await alice.send(channel: channel.id, text: "for bob only")
        }
        #expect(error?.member == bob.identity.did)
        #expect(error?.message.contains("no registration signature") == true)
        try await Self.expectNothingPublished(bob: bob, attacker: nil)
        await cluster.closeClients()
    }

    @Test func untamperedMembersAreVerifiedAndKeyed() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let (alice, bob) = try await Self.pair(cluster)
        let channel = try await alice.createChannel(name: "honest", members: [bob.identity.did])
        #expect(channel.members.count == 2)
        // The broker keeps the signature from registration and returns it in `welcome` as well.
        #expect(await alice.profile?.verifyRegistration() == .valid)
        for member in channel.members {
            #expect(member.registration != nil, "\(member.did) is described without its registration signature")
            #expect(member.verifyRegistration() == .valid)
        }
        #expect(try await alice.describe(channel: channel.id).keyedEpoch == channel.epoch)
        let text = "hello \(UUID().uuidString)"
        _ = try await alice.send(channel: channel.id, text: text)
        #expect(try await bob.history(channel: channel.id).map(\.text) == [text])
        await cluster.closeClients()
    }

    /// The CLI prints the refusal with the member's DID and exits 5 (an answer from the broker not to be trusted).
    @Test func cliNamesTheMemberWhoseKeyDoesNotVerify() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let global = ["--server", cluster.url(0), "--identity", root + "/id.json"]
        #expect(try await runCLI(["keygen"] + global).status == 0)
        let register = try await runCLI(["register", "--name", "alice-cli"] + global)
        #expect(register.status == 0, "\(register.stderr)")
        let bob = try await cluster.agent("bob", on: 0)
        try await Self.redis(cluster, "HSET \(Self.agentKey(bob.identity.did)) encryptionKey "
                             + Self.quoted(EncryptionKeyPair().publicKey))

        let create = try await runCLI(["channel", "create", "--name", "tampered", "--member",
                                       bob.identity.did.description] + global)
        #expect(create.status == 5, "stdout: \(create.stdout) stderr: \(create.stderr)")
        #expect(create.stderr.contains("member_key_unverified"))
        #expect(create.stderr.contains("member: \(bob.identity.did)"))
        await cluster.closeClients()
    }
}
