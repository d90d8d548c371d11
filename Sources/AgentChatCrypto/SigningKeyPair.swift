import AgentChatProtocol
import CSodium

/// An Ed25519 key pair (libsodium `crypto_sign_*`): the broker's token-signing key, an agent's identity key.
///
/// The 64-byte secret key (seed ‖ public key, libsodium's layout) is held in ``SecretBytes``: never printed,
/// wiped when the last copy is freed.
public struct SigningKeyPair: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public static let publicKeyLength = 32
    public static let secretKeyLength = 64
    public static let seedLength = 32
    public static let signatureLength = 64

    /// The 32-byte public key.
    public let publicKey: [UInt8]
    /// The 64-byte libsodium secret key: seed ‖ public key.
    public let secretKey: SecretBytes

    /// A new random key pair.
    public init() {
        Sodium.initialize()
        var pk = [UInt8](repeating: 0, count: Self.publicKeyLength)
        secretKey = SecretBytes(count: Self.secretKeyLength) { sk in
            _ = crypto_sign_keypair(&pk, sk)  // always 0
        }
        publicKey = pk
    }

    /// The key pair derived from a 32-byte seed (RFC 8032's private key; RFC 8037's `d`).
    public init(seed: [UInt8]) throws(CryptoError) {
        guard seed.count == Self.seedLength else {
            throw .invalidKeyLength("Ed25519 seed", expected: Self.seedLength, got: seed.count)
        }
        try self.init(seed: SecretBytes(seed))
    }

    /// The key pair derived from a 32-byte seed held as a secret.
    public init(seed: SecretBytes) throws(CryptoError) {
        guard seed.count == Self.seedLength else {
            throw .invalidKeyLength("Ed25519 seed", expected: Self.seedLength, got: seed.count)
        }
        Sodium.initialize()
        var pk = [UInt8](repeating: 0, count: Self.publicKeyLength)
        secretKey = SecretBytes(count: Self.secretKeyLength) { sk in
            seed.withPointer { s in _ = crypto_sign_seed_keypair(&pk, sk, s) }  // always 0
        }
        publicKey = pk
    }

    /// The 32-byte seed the key pair derives from (the first half of ``secretKey``): what a key file stores.
    public var seed: SecretBytes {
        SecretBytes(count: Self.seedLength) { out in
            secretKey.withPointer { sk in _ = crypto_sign_ed25519_sk_to_seed(out, sk) }
        }
    }

    /// The key's identifier in token headers.
    public var keyID: KeyID { KeyID(publicKey: publicKey) }

    /// The DID of this key (`did:agentchat:z6Mk…`).
    public var did: DID { DID(signingKey: publicKey) }

    /// A detached 64-byte Ed25519 signature of `message`.
    public func sign(_ message: [UInt8]) -> [UInt8] {
        var signature = [UInt8](repeating: 0, count: Self.signatureLength)
        secretKey.withPointer { sk in
            withBytes(message) { m, mlen in _ = crypto_sign_detached(&signature, nil, m, UInt64(mlen), sk) }
        }
        return signature
    }

    /// Whether `signature` is a valid Ed25519 signature of `message` by `publicKey`. Wrong lengths are rejected
    /// before libsodium is called.
    public static func verify(signature: [UInt8], message: [UInt8], publicKey: [UInt8]) -> Bool {
        guard signature.count == signatureLength, publicKey.count == publicKeyLength else { return false }
        Sodium.initialize()
        return withBytes(message) { m, mlen in
            crypto_sign_verify_detached(signature, m, UInt64(mlen), publicKey) == 0
        }
    }

    public var description: String { "SigningKeyPair(kid: \(keyID), secret redacted)" }
    public var debugDescription: String { description }
}
