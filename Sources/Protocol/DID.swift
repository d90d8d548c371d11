/// An agent's decentralised identifier: `did:agentchat:` followed by the did:key multibase encoding of its
/// Ed25519 public key, `z` + base58btc(0xED 0x01 ‖ key).
///
/// The DID is a pure function of the signing key, and the key is recovered from the DID without a lookup.
public struct DID: Hashable, Sendable, CustomStringConvertible {
    /// The method prefix every DID starts with.
    public static let prefix = "did:agentchat:"
    /// The multicodec varint for an Ed25519 public key (0xED, as an unsigned varint: 0xED 0x01).
    static let ed25519Multicodec: [UInt8] = [0xED, 0x01]
    /// Longest text that can be a DID: the prefix, `z`, and the at most 47 base58 characters of 34 bytes.
    static let maxLength = prefix.utf8.count + 1 + 47

    /// The full DID string, `did:agentchat:z…`: the only thing stored. The broker keeps a DID per logged-in
    /// connection, and a second copy of the key would cost each of them a heap block (80 bytes of an idle
    /// connection's ~3 KiB, docs/BENCHMARKS.md); equality and hashing need only the text, which the key determines.
    public let description: String

    /// The 32-byte Ed25519 public key, decoded from the text (about a microsecond; it is read only to check a
    /// signature, which costs far more).
    public var signingKey: [UInt8] {
        // Every initialiser makes or checks the text, so it always decodes to the multicodec prefix and 32 bytes.
        Array(Base58.decode(String(description.dropFirst(DID.prefix.count + 1)))!.dropFirst(2))
    }

    /// The DID of an Ed25519 public key. The key must be 32 bytes.
    public init(signingKey: [UInt8]) {
        precondition(signingKey.count == 32, "an Ed25519 public key is 32 bytes")
        self.description = DID.prefix + "z" + Base58.encode(DID.ed25519Multicodec + signingKey)
    }

    /// Parses a DID strictly: the exact prefix, the `z` multibase prefix, base58btc that decodes to 34 bytes
    /// starting 0xED 0x01, and an encoding that is the canonical one for those bytes. Nil otherwise.
    public init?(parsing text: String) {
        // Compared as UTF-8 bytes: String equality is Unicode-canonical (U+212A KELVIN SIGN equals "K").
        let utf8 = Array(text.utf8)
        let prefix = Array(DID.prefix.utf8)
        // Bounded before decoding: base58 decoding is quadratic, and DIDs arrive as unbounded JSON object keys
        // (`channel.keys` envelopes), where a 60 KB key would hold the loop for about a second.
        guard utf8.count <= DID.maxLength, utf8.count > prefix.count, utf8.starts(with: prefix), utf8[prefix.count] == UInt8(ascii: "z"),
            let bytes = Base58.decode(String(decoding: utf8[(prefix.count + 1)...], as: UTF8.self)),
            bytes.count == 34, bytes[0] == 0xED, bytes[1] == 0x01
        else { return nil }
        let did = DID(signingKey: Array(bytes[2...]))
        // Base58 with one-for-one leading ones is canonical already; this guards against any other spelling.
        guard did.description.utf8.elementsEqual(utf8) else { return nil }
        self = did
    }
}
