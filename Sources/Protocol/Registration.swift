/// A registration request (`POST /api/v1/agents/register`), parsed and checked for shape, not yet for its
/// signature (that needs libsodium, outside this module).
public struct RegistrationRequest: Equatable, Sendable {
    public var name: String
    public var signingKey: [UInt8]
    public var encryptionKey: [UInt8]
    public var timestamp: Int64
    public var signature: [UInt8]
    /// The two keys exactly as sent (base64url), as they enter the signed bytes.
    public var signingKeyText: String
    public var encryptionKeyText: String

    /// Largest accepted name, in Unicode scalars.
    public static let maxNameLength = 64
    /// How far the request's timestamp may be from the broker's clock, in milliseconds.
    public static let maxClockSkew: Int64 = 5 * 60 * 1000

    /// Parses a request body; every refusal carries the code the endpoint answers with.
    public static func parse(_ body: [UInt8]) throws(ProtocolError) -> RegistrationRequest {
        let json: JSONValue
        do {
            json = try JSONParser.parse(body)
        } catch {
            throw ProtocolError(.badJSON, "\(error.message) at byte \(error.offset)")
        }
        guard case .object(let object) = json else { throw ProtocolError(.badJSON, "the body is a JSON object") }
        var fields = FrameFields(object)
        let name = try fields.requiredString("name", maxBytes: 4 * maxNameLength)
        let signingKeyText = try fields.requiredString("signingKey", maxBytes: 64)
        let encryptionKeyText = try fields.requiredString("encryptionKey", maxBytes: 64)
        let signatureText = try fields.requiredString("signature", maxBytes: 128)
        let timestamp = try fields.requiredInteger("timestamp")
        try fields.rejectUnconsumed()

        guard isValidName(name) else {
            throw ProtocolError(.invalidField,
                                "\"name\" must be 1 to \(maxNameLength) characters without control characters")
        }
        let signingKey = try decodeKey(signingKeyText, field: "signingKey", length: 32)
        let encryptionKey = try decodeKey(encryptionKeyText, field: "encryptionKey", length: 32)
        let signature = try decodeKey(signatureText, field: "signature", length: 64)
        return RegistrationRequest(name: name, signingKey: signingKey, encryptionKey: encryptionKey,
                                   timestamp: timestamp, signature: signature, signingKeyText: signingKeyText,
                                   encryptionKeyText: encryptionKeyText)
    }

    /// The bytes the agent signs: five lines joined with `\n`, see `docs/PROTOCOL.md`.
    public var signedBytes: [UInt8] {
        Self.signedBytes(name: name, signingKey: signingKeyText, encryptionKey: encryptionKeyText,
                         timestamp: timestamp)
    }

    /// The request's timestamp and signature, as the broker keeps them with the profile.
    public var selfSignature: RegistrationSignature {
        RegistrationSignature(timestamp: timestamp, signature: signature)
    }

    /// The one definition of the registration's signed bytes (`docs/PROTOCOL.md`): the UTF-8 bytes of
    /// `agentchat-register-v1`, the name, the two keys in base64url and the timestamp in decimal, joined with `\n`.
    public static func signedBytes(name: String, signingKey: String, encryptionKey: String, timestamp: Int64)
        -> [UInt8]
    {
        Array("agentchat-register-v1\n\(name)\n\(signingKey)\n\(encryptionKey)\n\(timestamp)".utf8)
    }

    /// The same bytes from raw keys. Base64url without padding has one encoding per byte string (decoders refuse
    /// any other), so these are the bytes of the request as it was sent.
    public static func signedBytes(name: String, signingKey: [UInt8], encryptionKey: [UInt8], timestamp: Int64)
        -> [UInt8]
    {
        signedBytes(name: name, signingKey: Base64URL.encode(signingKey),
                    encryptionKey: Base64URL.encode(encryptionKey), timestamp: timestamp)
    }

    public static func isValidName(_ name: String) -> Bool {
        let scalars = name.unicodeScalars
        guard !scalars.isEmpty, scalars.count <= maxNameLength else { return false }
        guard !scalars.allSatisfy({ $0.properties.isWhitespace }) else { return false }
        return !scalars.contains { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) }
    }

    private static func decodeKey(_ text: String, field: String, length: Int) throws(ProtocolError) -> [UInt8] {
        guard let bytes = Base64URL.decode(text) else {
            throw ProtocolError(.invalidField, "\"\(field)\" is not base64url without padding")
        }
        guard bytes.count == length else {
            throw ProtocolError(.invalidField, "\"\(field)\" must be \(length) bytes, not \(bytes.count)")
        }
        return bytes
    }
}

/// An agent's registration self-signature, kept with its profile: the `timestamp` and `signature` of the
/// registration request. Anyone can check with the DID alone that the profile's name and encryption key are the
/// ones the agent signed (`RegistrationRequest.signedBytes`); a broker cannot substitute them unnoticed.
public struct RegistrationSignature: Equatable, Sendable {
    /// JSON field names in profiles and in channel member entries.
    public static let timestampField = "registrationTimestamp"
    public static let signatureField = "registrationSignature"
    /// Bytes in an Ed25519 signature.
    public static let signatureLength = 64

    /// The request's `timestamp`: the agent's clock at registration, Unix milliseconds (not `registeredAt`).
    public var timestamp: Int64
    /// The 64-byte Ed25519 signature over the signed bytes.
    public var signature: [UInt8]

    public init(timestamp: Int64, signature: [UInt8]) {
        self.timestamp = timestamp
        self.signature = signature
    }

    /// Reads `registrationTimestamp` and `registrationSignature` from a profile or member object; nil when either
    /// is absent or malformed (such a profile cannot be verified).
    public init?(fieldsOf json: JSONValue) {
        guard let timestamp = json[Self.timestampField]?.integerValue,
            let signature = json[Self.signatureField]?.stringValue.flatMap(Base64URL.decode),
            signature.count == Self.signatureLength
        else { return nil }
        self.init(timestamp: timestamp, signature: signature)
    }

    /// Adds the two fields to a profile or member object.
    public func add(to fields: inout [String: JSONValue]) {
        fields[Self.timestampField] = .number(Double(timestamp))
        fields[Self.signatureField] = .string(Base64URL.encode(signature))
    }
}

/// The bytes an agent signs to log in: `agentchat-auth-v1\n<broker>\n<challenge>`.
public enum AuthChallenge {
    /// Random bytes in a challenge.
    public static let length = 32
    /// How long a challenge may be answered, in milliseconds.
    public static let lifetime: Int64 = 60_000

    public static func signedBytes(broker: String, challenge: String) -> [UInt8] {
        Array("agentchat-auth-v1\n\(broker)\n\(challenge)".utf8)
    }
}
