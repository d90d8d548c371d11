import AgentChatProtocol
import CSodium

/// An X25519 key pair (libsodium `crypto_box_*`), and anonymous sealed boxes to a public key.
public struct EncryptionKeyPair: Sendable, CustomStringConvertible, CustomDebugStringConvertible {
    public static let publicKeyLength = 32
    public static let secretKeyLength = 32
    /// Bytes a sealed box adds to its plaintext (an ephemeral public key and a MAC).
    public static let sealOverhead = 48

    /// The 32-byte public key.
    public let publicKey: [UInt8]
    /// The 32-byte secret scalar.
    public let secretKey: SecretBytes

    /// A new random key pair.
    public init() {
        Sodium.initialize()
        var pk = [UInt8](repeating: 0, count: Self.publicKeyLength)
        secretKey = SecretBytes(count: Self.secretKeyLength) { sk in _ = crypto_box_keypair(&pk, sk) }
        publicKey = pk
    }

    /// The key pair of a 32-byte secret key.
    public init(secretKey: [UInt8]) throws(CryptoError) {
        try self.init(secretKey: SecretBytes(secretKey))
    }

    /// The key pair of a 32-byte secret key held as a secret.
    public init(secretKey: SecretBytes) throws(CryptoError) {
        guard secretKey.count == Self.secretKeyLength else {
            throw .invalidKeyLength("X25519 secret key", expected: Self.secretKeyLength, got: secretKey.count)
        }
        Sodium.initialize()
        var pk = [UInt8](repeating: 0, count: Self.publicKeyLength)
        let status = secretKey.withPointer { sk in crypto_scalarmult_base(&pk, sk) }
        try check(status, .operationFailed("X25519 public key derivation failed"))
        self.publicKey = pk
        self.secretKey = secretKey
    }

    /// Encrypts `plaintext` so that only the holder of `recipientPublicKey`'s secret key can read it
    /// (`crypto_box_seal`: anonymous sender, ephemeral key). The result is 48 bytes longer than the plaintext.
    public static func sealForRecipient(_ plaintext: [UInt8], recipientPublicKey: [UInt8]) throws(CryptoError)
        -> [UInt8]
    {
        guard recipientPublicKey.count == publicKeyLength else {
            throw .invalidKeyLength("X25519 public key", expected: publicKeyLength, got: recipientPublicKey.count)
        }
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: plaintext.count + sealOverhead)
        let status = withBytes(plaintext) { m, mlen in
            crypto_box_seal(&out, m, UInt64(mlen), recipientPublicKey)
        }
        try check(status, .operationFailed("crypto_box_seal failed"))
        return out
    }

    /// Opens a box sealed to this key pair's public key; throws ``CryptoError/authenticationFailed`` if it was
    /// sealed to another key or altered.
    public func openSealed(_ ciphertext: [UInt8]) throws(CryptoError) -> [UInt8] {
        guard ciphertext.count >= Self.sealOverhead else {
            throw .invalidInputLength("a sealed box is at least \(Self.sealOverhead) bytes")
        }
        let length = ciphertext.count - Self.sealOverhead
        // One spare byte so the output pointer is never null for an empty plaintext.
        var out = [UInt8](repeating: 0, count: length + 1)
        let status = secretKey.withPointer { sk in
            crypto_box_seal_open(&out, ciphertext, UInt64(ciphertext.count), publicKey, sk)
        }
        try check(status, .authenticationFailed)
        out.removeLast()
        return out
    }

    public var description: String { "EncryptionKeyPair(public: \(Base64URL.encode(publicKey)), secret redacted)" }
    public var debugDescription: String { description }
}
