/// What the broker stores and shows about a registered agent. Keys are the agent's public keys.
public struct AgentProfile: Equatable, Sendable {
    public var did: DID
    public var name: String
    /// The 32-byte Ed25519 public key; the DID is derived from it.
    public var signingKey: [UInt8]
    /// The 32-byte X25519 public key others wrap channel keys for.
    public var encryptionKey: [UInt8]
    /// Unix milliseconds, the broker's clock.
    public var registeredAt: Int64
    /// The registration's timestamp and signature, binding `name` and `encryptionKey` to the DID; nil for a
    /// profile stored before profiles kept it (it cannot be verified).
    public var registration: RegistrationSignature?

    public init(name: String, signingKey: [UInt8], encryptionKey: [UInt8], registeredAt: Int64,
                registration: RegistrationSignature? = nil)
    {
        self.did = DID(signingKey: signingKey)
        self.name = name
        self.signingKey = signingKey
        self.encryptionKey = encryptionKey
        self.registeredAt = registeredAt
        self.registration = registration
    }

    /// The bytes `registration` must sign (`RegistrationRequest.signedBytes`); nil without a registration.
    public var registrationSignedBytes: [UInt8]? {
        registration.map {
            RegistrationRequest.signedBytes(name: name, signingKey: signingKey, encryptionKey: encryptionKey,
                                            timestamp: $0.timestamp)
        }
    }

    /// `{"did","name","signingKey","encryptionKey","registeredAt","registrationTimestamp","registrationSignature"}`,
    /// keys and signature in base64url; the last two only when known.
    public var json: JSONValue {
        var fields: [String: JSONValue] = [
            "did": .string(did.description), "name": .string(name),
            "signingKey": .string(Base64URL.encode(signingKey)),
            "encryptionKey": .string(Base64URL.encode(encryptionKey)),
            "registeredAt": .number(Double(registeredAt)),
        ]
        registration?.add(to: &fields)
        return .object(fields)
    }

    /// Reads a profile written by `json`; nil when a required field is missing or malformed. A missing or
    /// malformed registration signature leaves `registration` nil.
    public init?(json: JSONValue) {
        guard let name = json["name"]?.stringValue,
            let signingKey = json["signingKey"]?.stringValue.flatMap(Base64URL.decode), signingKey.count == 32,
            let encryptionKey = json["encryptionKey"]?.stringValue.flatMap(Base64URL.decode), encryptionKey.count == 32,
            let registeredAt = json["registeredAt"]?.integerValue,
            let didText = json["did"]?.stringValue, DID(parsing: didText) == DID(signingKey: signingKey)
        else { return nil }
        self.init(name: name, signingKey: signingKey, encryptionKey: encryptionKey, registeredAt: registeredAt,
                  registration: RegistrationSignature(fieldsOf: json))
    }
}
