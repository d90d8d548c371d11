import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
@testable import AgentChatClient

/// A member whose envelope of the current epoch does not open is not stuck until the next membership change: its
/// SDK rotates the epoch and keys it afresh (real brokers, real Redis).
@Suite(.serialized) struct KeyRecoveryTests {
    @Test func aMemberThatCannotOpenItsEnvelopeRotatesAndSends() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", on: 1)
        let channel = try await alice.createChannel(name: "recover-\(UUID().uuidString)", members: [bob.identity.did])
        // Alice starts epoch 2 and publishes a set whose envelope for Bob is not a sealed box for his key.
        try await alice.rotate(channel: channel.id, keying: false)
        let description = try await alice.describe(channel: channel.id)
        #expect(description.epoch == channel.epoch + 1 && description.keyedEpoch == channel.epoch)
        let key = SecureRandom.bytes(AES256GCM.keyLength)
        var envelopes: [DID: String] = [:]
        for member in description.members {
            envelopes[member.did] = member.did == bob.identity.did
                ? Base64URL.encode(SecureRandom.bytes(ChannelKeys.envelopeBytes))
                : Base64URL.encode(try EncryptionKeyPair.sealForRecipient(key, recipientPublicKey: member.encryptionKey))
        }
        let signed = ChannelKeys.signedBytes(channel: channel.id, epoch: description.epoch,
                                             envelopes: Dictionary(uniqueKeysWithValues: envelopes.map {
                                                 ($0.key.description, $0.value)
                                             }))
        _ = try await alice.request(.channel(id: nil, .publishKeys(ChannelKeys(
            channel: channel.id, epoch: description.epoch, envelopes: envelopes,
            signature: Base64URL.encode(alice.identity.sign(signed))))))

        let stream = Collector(try await alice.subscribe(channel: channel.id))
        defer { stream.cancel() }
        let text = "after-rotation-\(UUID().uuidString)"
        let receipt = try await bob.send(channel: channel.id, text: text)
        #expect(try await bob.describe(channel: channel.id).epoch == description.epoch + 1)
        try await waitUntil("alice reads bob's message", timeout: 20) {
            stream.values.compactMap(\.message).contains { $0.offset == receipt.offset }
        }
        let message = try #require(stream.values.compactMap(\.message).first { $0.offset == receipt.offset })
        #expect(message.verified && message.text == text && message.epoch == description.epoch + 1)
        await cluster.closeClients()
    }
}
