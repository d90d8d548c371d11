/// Decodes client frames and encodes server frames: every rule of the wire format lives here.
public struct FrameCodec: Sendable {
    public let limits: Limits

    public init(limits: Limits = Limits()) { self.limits = limits }

    /// The result of decoding one WebSocket text message.
    public struct Decoded: Equatable, Sendable {
        public var frame: Result<ClientFrame, ProtocolError>
        /// The request's `id` when it could be read, even if the frame was refused, so the error can echo it.
        public var id: String?
        /// The frame's `type` when it could be read.
        public var type: String?

        public init(frame: Result<ClientFrame, ProtocolError>, id: String?, type: String? = nil) {
            self.frame = frame
            self.id = id
            self.type = type
        }
    }

    public func decode(_ bytes: [UInt8]) -> Decoded {
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch {
            return Decoded(frame: .failure(ProtocolError(.badJSON, "\(error.message) at byte \(error.offset)")), id: nil)
        }
        guard case .object(let object) = json else {
            return Decoded(frame: .failure(ProtocolError(.badFrame, "a frame is a JSON object")), id: nil)
        }
        var fields = FrameFields(object)
        let id: String?
        do {
            id = try fields.optionalString("id", maxBytes: limits.maxFrameIDBytes)
        } catch {
            return Decoded(frame: .failure(error), id: nil)
        }
        guard case .string(let type)? = object["type"] else {
            return Decoded(frame: .failure(ProtocolError(.badFrame, "a frame needs a string field \"type\"")), id: id)
        }
        fields.consume("type")
        do {
            let frame: ClientFrame
            switch type {
            case "ping":
                frame = .ping(id: id)
            case "auth":
                frame = .auth(id: id, try decodeAuth(&fields))
            default:
                throw ProtocolError(.unknownType, "unknown frame type \"\(Self.printable(type))\"")
            }
            try fields.rejectUnconsumed()
            return Decoded(frame: .success(frame), id: id, type: type)
        } catch let error as ProtocolError {
            return Decoded(frame: .failure(error), id: id, type: type)
        } catch {
            return Decoded(frame: .failure(ProtocolError(.internalError, "unexpected decoding failure")), id: id,
                           type: type)
        }
    }

    private func decodeAuth(_ fields: inout FrameFields) throws(ProtocolError) -> AuthCredentials {
        let token = try fields.optionalString("token", maxBytes: 8192)
        let did = try fields.optionalString("did", maxBytes: 128)
        let signature = try fields.optionalString("signature", maxBytes: 128)
        switch (token, did, signature) {
        case (let token?, nil, nil):
            return .token(token)
        case (nil, let did?, let signature?):
            guard let parsed = DID(parsing: did) else {
                throw ProtocolError(.invalidField, "\"did\" is not a did:agentchat identifier")
            }
            guard let bytes = Base64URL.decode(signature), bytes.count == 64 else {
                throw ProtocolError(.invalidField, "\"signature\" must be 64 bytes in base64url")
            }
            return .signature(did: parsed, signature: bytes)
        case (nil, nil, nil):
            throw ProtocolError(.missingField, "auth needs \"did\" and \"signature\", or \"token\"")
        case (nil, _, nil), (nil, nil, _):
            throw ProtocolError(.missingField, "auth with a signature needs both \"did\" and \"signature\"")
        default:
            throw ProtocolError(.invalidField, "auth takes \"token\" or \"did\" and \"signature\", not both")
        }
    }

    public func encode(_ frame: ServerFrame) -> [UInt8] {
        switch frame {
        case .pong(let ref, let time):
            var object: [String: JSONValue] = ["type": "pong", "time": .number(Double(time))]
            if let ref { object["ref"] = .string(ref) }
            return JSONWriter.encode(.object(object))
        case .error(let error, let ref):
            var object: [String: JSONValue] = [
                "type": "error", "code": .string(error.code.rawValue), "message": .string(error.message),
            ]
            if let ref { object["ref"] = .string(ref) }
            return JSONWriter.encode(.object(object))
        case .hello(let broker, let challenge, let expiresAt):
            return JSONWriter.encode([
                "type": "hello", "broker": .string(broker), "challenge": .string(challenge),
                "expiresAt": .number(Double(expiresAt)),
            ])
        case .welcome(let ref, let agent, let token, let expiresAt):
            var object: [String: JSONValue] = [
                "type": "welcome", "agent": agent.json, "token": .string(token),
                "expiresAt": .number(Double(expiresAt)),
            ]
            if let ref { object["ref"] = .string(ref) }
            return JSONWriter.encode(.object(object))
        }
    }

    /// A type name shortened for an error message, so a hostile frame cannot make the reply large.
    static func printable(_ s: String) -> String {
        s.utf8.count <= 32 ? s : String(s.prefix(32)) + "…"
    }
}

/// Reads the fields of one frame object, remembering which were read so unknown fields can be refused.
struct FrameFields {
    private let object: [String: JSONValue]
    private var consumed: Set<String> = []

    init(_ object: [String: JSONValue]) { self.object = object }

    mutating func consume(_ key: String) { consumed.insert(key) }

    mutating func optionalString(_ key: String, maxBytes: Int) throws(ProtocolError) -> String? {
        consumed.insert(key)
        switch object[key] {
        case nil, .null?: return nil
        case .string(let s)?:
            guard s.utf8.count <= maxBytes else {
                throw ProtocolError(.invalidField, "\"\(key)\" is longer than \(maxBytes) bytes")
            }
            return s
        case let other?:
            throw ProtocolError(.invalidField, "\"\(key)\" must be a string, not \(other.typeName)")
        }
    }

    mutating func requiredInteger(_ key: String) throws(ProtocolError) -> Int64 {
        consumed.insert(key)
        guard let value = object[key] else { throw ProtocolError(.missingField, "missing field \"\(key)\"") }
        guard let integer = value.integerValue else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be an integer, not \(value.typeName)")
        }
        return integer
    }

    mutating func requiredString(_ key: String, maxBytes: Int) throws(ProtocolError) -> String {
        guard object[key] != nil else { throw ProtocolError(.missingField, "missing field \"\(key)\"") }
        guard let value = try optionalString(key, maxBytes: maxBytes) else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be a string, not null")
        }
        return value
    }

    func rejectUnconsumed() throws(ProtocolError) {
        if let extra = object.keys.filter({ !consumed.contains($0) }).sorted().first {
            throw ProtocolError(.unknownField, "unknown field \"\(FrameCodec.printable(extra))\"")
        }
    }
}
