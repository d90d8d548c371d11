@testable import AgentChatClient
import AgentChatCrypto
import AgentChatProtocol
import Testing

/// The SDK's check of a member's registration self-signature: the SDK's own signing (``AgentRegistration``) and
/// the check use the protocol's one definition of the signed bytes.
@Suite struct RegistrationCheckTests {
    static let timestamp: Int64 = 1_704_067_200_000

    /// A member entry as an honest broker describes it: name, key and the registration's timestamp and signature.
    static func honestMember(_ identity: AgentIdentity, name: String = "bob") throws -> ChannelDescription.Member {
        let registration = try AgentRegistration(identity: identity, name: name, timestamp: timestamp)
        return ChannelDescription.Member(
            did: identity.did, name: name, encryptionKey: identity.encryptionPublicKey,
            registration: RegistrationSignature(timestamp: registration.timestamp,
                                                signature: Base64URL.decode(registration.signature)!))
    }

    @Test func theSDKSignsTheProtocolsCanonicalBytes() throws {
        let identity = AgentIdentity.generate()
        let registration = try AgentRegistration(identity: identity, name: "bob", timestamp: Self.timestamp)
        let bytes = RegistrationRequest.signedBytes(name: "bob", signingKey: identity.signingPublicKey,
                                                    encryptionKey: identity.encryptionPublicKey,
                                                    timestamp: Self.timestamp)
        #expect(Array(registration.canonicalString.utf8) == bytes)
        #expect(SigningKeyPair.verify(signature: Base64URL.decode(registration.signature)!, message: bytes,
                                      publicKey: identity.did.signingKey))
    }

    @Test func anHonestMemberVerifies() throws {
        let member = try Self.honestMember(.generate())
        #expect(member.verifyRegistration() == .valid)
        let profile = AgentProfile(name: member.name, signingKey: member.did.signingKey,
                                   encryptionKey: member.encryptionKey, registeredAt: 1,
                                   registration: member.registration)
        #expect(profile.verifyRegistration() == .valid)
    }

    enum Tampering: String, CaseIterable, Sendable {
        case substitutedEncryptionKey, renamed, otherTimestamp, signatureOfAnotherAgent, flippedSignatureBit,
             anotherAgentsDID
    }

    @Test(arguments: Tampering.allCases)
    func aTamperedMemberDoesNotVerify(_ tampering: Tampering) throws {
        let identity = AgentIdentity.generate()
        var member = try Self.honestMember(identity)
        switch tampering {
        case .substitutedEncryptionKey: member.encryptionKey = EncryptionKeyPair().publicKey
        case .renamed: member.name = "mallory"
        case .otherTimestamp: member.registration?.timestamp += 1
        case .signatureOfAnotherAgent:
            member.registration?.signature = try Self.honestMember(.generate()).registration!.signature
        case .flippedSignatureBit: member.registration?.signature[10] ^= 0x01
        case .anotherAgentsDID: member.did = AgentIdentity.generate().did
        }
        #expect(member.verifyRegistration() == .invalid)
    }

    @Test func aMemberWithoutSignatureIsMissingNotValid() throws {
        var member = try Self.honestMember(.generate())
        member.registration = nil
        #expect(member.verifyRegistration() == .missing)
    }

    @Test(arguments: [RegistrationCheck.missing, .invalid])
    func theRefusalNamesTheMemberAndTheChannel(_ check: RegistrationCheck) {
        let did = AgentIdentity.generate().did
        let channel = ChannelID("ch_AAAAAAAAAAAAAAAAAAAAAA")!
        let error = AgentChatError.memberKeyUnverified(did, channel: channel, epoch: 3, check)
        #expect(error == .memberKeyUnverified)
        #expect(error.code == "member_key_unverified")
        #expect(error.member == did && error.channel == channel)
        #expect(error.message.contains(did.description) && error.message.contains(channel.rawValue))
        #expect(error.message.contains(check == .missing ? "no registration signature" : "does not verify"))
    }
}
