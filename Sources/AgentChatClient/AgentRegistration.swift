import AgentChatProtocol

/// The body of `POST /api/v1/agents/register`, signed by the identity's Ed25519 key.
///
/// The signature covers the UTF-8 bytes of five lines joined with `\n`, no trailing newline
/// (``canonicalString``): `agentchat-register-v1`, the name, the two keys in base64url exactly as sent, and the
/// timestamp in decimal.
public struct AgentRegistration: Sendable {
    /// The first line of the signed text.
    public static let domain = "agentchat-register-v1"

    public let name: String
    /// Base64url of the 32-byte Ed25519 public key, exactly as sent.
    public let signingKey: String
    /// Base64url of the 32-byte X25519 public key, exactly as sent.
    public let encryptionKey: String
    /// The agent's clock, Unix milliseconds.
    public let timestamp: Int64
    /// Base64url of the 64-byte signature of ``canonicalString``.
    public let signature: String

    /// Validates `name` and signs a request for `identity` at `timestamp`.
    public init(identity: AgentIdentity, name: String, timestamp: Int64) throws(AgentChatError) {
        try Self.validate(name: name)
        self.name = name
        self.signingKey = Base64URL.encode(identity.signingPublicKey)
        self.encryptionKey = Base64URL.encode(identity.encryptionPublicKey)
        self.timestamp = timestamp
        let text = Self.canonicalString(name: name, signingKey: signingKey, encryptionKey: encryptionKey,
                                        timestamp: timestamp)
        self.signature = Base64URL.encode(identity.sign(Array(text.utf8)))
    }

    /// The signed text (the protocol's `RegistrationRequest.signedBytes`, as a string).
    public static func canonicalString(name: String, signingKey: String, encryptionKey: String, timestamp: Int64)
        -> String
    {
        String(decoding: RegistrationRequest.signedBytes(name: name, signingKey: signingKey,
                                                         encryptionKey: encryptionKey, timestamp: timestamp),
               as: UTF8.self)
    }

    /// The text this request's signature covers.
    public var canonicalString: String {
        Self.canonicalString(name: name, signingKey: signingKey, encryptionKey: encryptionKey, timestamp: timestamp)
    }

    /// The JSON body, exactly the five fields.
    public var json: JSONValue {
        .object([
            "name": .string(name),
            "signingKey": .string(signingKey),
            "encryptionKey": .string(encryptionKey),
            "timestamp": .number(Double(timestamp)),
            "signature": .string(signature),
        ])
    }

    /// The broker's rule for names: 1–64 Unicode scalars, no control characters (U+0000–U+001F, U+007F–U+009F),
    /// not only whitespace. Checked here so that a bad name fails before anything is sent.
    public static func validate(name: String) throws(AgentChatError) {
        guard RegistrationRequest.isValidName(name) else {
            throw .invalidArgument("a name is 1 to 64 characters, not only whitespace, without control characters")
        }
    }
}
