import AgentChatCrypto
import AgentChatProtocol

/// Whether a profile's name and encryption key are the ones its agent signed at registration.
///
/// The broker hands out other agents' encryption keys (in channel member entries); only the registration
/// self-signature ties a key to the DID. The SDK seals a channel key to a member only when this is ``valid``.
public enum RegistrationCheck: String, Equatable, Sendable {
    /// Ed25519 over `RegistrationRequest.signedBytes` verifies with the signing key read out of the DID.
    case valid
    /// No registration signature (a profile stored before profiles kept it, or one the broker left out).
    case missing
    /// The signature does not verify: the name or the encryption key is not what the agent signed.
    case invalid

    /// Checks `registration` over `name` and `encryptionKey` with the key read out of `did`.
    public static func check(did: DID, name: String, encryptionKey: [UInt8],
                             registration: RegistrationSignature?) -> RegistrationCheck
    {
        guard let registration else { return .missing }
        let signed = RegistrationRequest.signedBytes(name: name, signingKey: did.signingKey,
                                                     encryptionKey: encryptionKey, timestamp: registration.timestamp)
        return SigningKeyPair.verify(signature: registration.signature, message: signed, publicKey: did.signingKey)
            ? .valid : .invalid
    }
}

extension ChannelDescription.Member {
    /// Checks the member's registration self-signature (see ``RegistrationCheck``).
    public func verifyRegistration() -> RegistrationCheck {
        RegistrationCheck.check(did: did, name: name, encryptionKey: encryptionKey, registration: registration)
    }
}

extension AgentProfile {
    /// Checks the profile's registration self-signature (see ``RegistrationCheck``).
    public func verifyRegistration() -> RegistrationCheck {
        RegistrationCheck.check(did: did, name: name, encryptionKey: encryptionKey, registration: registration)
    }
}
