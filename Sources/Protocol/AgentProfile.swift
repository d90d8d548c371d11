/// What the broker stores and shows about a registered agent. Keys are the agent's public keys.
public struct AgentProfile: Equatable, Sendable {
    public var did: DID
    public var name: String
    /// The 32-byte Ed25519 public key; the DID is derived from it.
    public var signingKey: [UInt8]
    /// The 32-byte X25519 public key others wrap channel keys for.
    public var encryptionKey: [UInt8]
    /// Unix milliseconds.
    public var registeredAt: Int64

    public init(name: String, signingKey: [UInt8], encryptionKey: [UInt8], registeredAt: Int64) {
        self.did = DID(signingKey: signingKey)
        self.name = name
        self.signingKey = signingKey
        self.encryptionKey = encryptionKey
        self.registeredAt = registeredAt
    }

    /// `{"did","name","signingKey","encryptionKey","registeredAt"}`, keys in base64url.
    public var json: JSONValue {
        [
            "did": .string(did.description), "name": .string(name),
            "signingKey": .string(Base64URL.encode(signingKey)),
            "encryptionKey": .string(Base64URL.encode(encryptionKey)),
            "registeredAt": .number(Double(registeredAt)),
        ]
    }

    /// Reads a profile written by `json`; nil when any field is missing or malformed.
    public init?(json: JSONValue) {
        guard let name = json["name"]?.stringValue,
            let signingKey = json["signingKey"]?.stringValue.flatMap(Base64URL.decode), signingKey.count == 32,
            let encryptionKey = json["encryptionKey"]?.stringValue.flatMap(Base64URL.decode), encryptionKey.count == 32,
            let registeredAt = json["registeredAt"]?.integerValue,
            let didText = json["did"]?.stringValue, DID(parsing: didText) == DID(signingKey: signingKey)
        else { return nil }
        self.init(name: name, signingKey: signingKey, encryptionKey: encryptionKey, registeredAt: registeredAt)
    }
}
