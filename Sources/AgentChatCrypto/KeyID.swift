import AgentChatProtocol

/// A signing key's identifier, as carried in a token's `kid` header: base64url of the first 12 bytes of the
/// BLAKE2b-256 hash of the Ed25519 public key (16 characters).
public struct KeyID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String

    /// The identifier of an Ed25519 public key.
    public init(publicKey: [UInt8]) {
        rawValue = Base64URL.encode(Hash.blake2b(publicKey, count: 32).prefix(12))
    }

    /// An identifier as received (for looking it up); not checked against any key.
    public init(rawValue: String) { self.rawValue = rawValue }

    public var description: String { rawValue }
}
