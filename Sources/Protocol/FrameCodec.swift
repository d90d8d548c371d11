/// Decodes client frames and encodes server frames: every rule of the wire format lives here.
public struct FrameCodec: Sendable {
    public let limits: Limits

    public init(limits: Limits = Limits()) { self.limits = limits }

    /// The result of decoding one WebSocket text message.
    public struct Decoded: Equatable, Sendable {
        public var frame: Result<ClientFrame, ProtocolError>
        /// The request's `id` when it could be read, even if the frame was refused, so the error can echo it.
        public var id: String?

        public init(frame: Result<ClientFrame, ProtocolError>, id: String?) {
            self.frame = frame
            self.id = id
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
            default:
                throw ProtocolError(.unknownType, "unknown frame type \"\(Self.printable(type))\"")
            }
            try fields.rejectUnconsumed()
            return Decoded(frame: .success(frame), id: id)
        } catch let error as ProtocolError {
            return Decoded(frame: .failure(error), id: id)
        } catch {
            return Decoded(frame: .failure(ProtocolError(.internalError, "unexpected decoding failure")), id: id)
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
