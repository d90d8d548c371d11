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
            let frameType = FrameType(rawValue: type)  // looked up once per frame
            switch type {
            case "ping":
                frame = .ping(id: id)
            case "auth":
                frame = .auth(id: id, try decodeAuth(&fields))
            case _ where frameType.map(FrameType.viewerRequests.contains) == true:
                frame = .viewer(id: id, try decodeViewerRequest(type, &fields))
            case _ where frameType.map(FrameType.channelRequests.contains) == true:
                frame = .channel(id: id, try decodeChannelRequest(type, &fields))
            case _ where frameType.map(FrameType.peekRequests.contains) == true:
                frame = .peek(id: id, try decodePeekRequest(frameType!, &fields))
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

    /// The `id` of a client frame exactly as `decode` reads it (a string of at most `Limits.maxFrameIDBytes` in a
    /// JSON object; nil otherwise), without looking at the rest: for answering a frame that is dropped unread (over
    /// the frame budget) with its `ref`.
    public func readableID(_ bytes: [UInt8]) -> String? {
        guard case .object(let object)? = try? JSONParser.parse(bytes) else { return nil }
        var fields = FrameFields(object)
        return try? fields.optionalString("id", maxBytes: limits.maxFrameIDBytes)
    }

    private func decodePeekRequest(_ type: FrameType, _ fields: inout FrameFields) throws(ProtocolError)
        -> PeekRequest
    {
        func peekID() throws(ProtocolError) -> String {
            let id = try fields.requiredString("peek", maxBytes: 32)
            guard id.hasPrefix("pk_"), id.utf8.count == 25, Base64URL.decode(String(id.dropFirst(3)))?.count == 16
            else { throw ProtocolError(.invalidField, "\"peek\" is not a peek id") }
            return id
        }
        switch type {
        case .peekRequest:
            let channel = try fields.channel()
            let key = try fields.base64("viewerKey", length: 32)
            return .request(channel: channel, viewerKey: Base64URL.decode(key)!)
        case .peekConfirm, .peekStatus:
            let channel = try fields.channel()
            let peek = try peekID()
            let token = try fields.requiredString("token", maxBytes: 64)
            return type == .peekConfirm ? .confirm(channel: channel, peek: peek, token: token)
                : .status(channel: channel, peek: peek, token: token)
        case .peekRefuse:
            return .refuse(channel: try fields.channel(), peek: try peekID())
        case .peekGrant:
            let channel = try fields.channel()
            let peek = try peekID()
            guard let object = try fields.optionalObject("grant") else {
                throw ProtocolError(.missingField, "missing field \"grant\"")
            }
            guard let grant = PeekGrant(json: .object(object)) else {
                throw ProtocolError(.invalidField, "\"grant\" must hold epoch, sender, ephemeralKey (32 bytes), "
                                    + "nonce (12), ciphertext (48) and signature (64)")
            }
            return .grant(channel: channel, peek: peek, grant: grant)
        default:
            let limit = try fields.optionalInteger("limit") ?? 50
            guard (1...500).contains(limit) else { throw ProtocolError(.invalidField, "\"limit\" must be 1 to 500") }
            return .earnings(limit: Int(limit))
        }
    }

    private func decodeViewerRequest(_ type: String, _ fields: inout FrameFields) throws(ProtocolError)
        -> ViewerRequest
    {
        switch type {
        case "directory.list":
            let cursor = try fields.optionalInteger("cursor") ?? 0
            let limit = try fields.optionalInteger("limit") ?? 20
            guard cursor >= 0, cursor <= 1_000_000 else { throw ProtocolError(.invalidField, "bad \"cursor\"") }
            guard (1...100).contains(limit) else { throw ProtocolError(.invalidField, "\"limit\" must be 1 to 100") }
            return .directoryList(cursor: Int(cursor), limit: Int(limit))
        case "indicators.subscribe":
            let directory = try fields.optionalBool("directory") ?? false
            let channels = try fields.optionalArray("channels", maxCount: 100)
            switch (directory, channels) {
            case (true, nil): return .subscribeDirectory
            case (false, let list?):
                var ids: [ChannelID] = []
                for value in list {
                    guard let id = value.stringValue.flatMap(ChannelID.init) else {
                        throw ProtocolError(.invalidField, "\"channels\" must hold channel ids")
                    }
                    if !ids.contains(id) { ids.append(id) }
                }
                guard !ids.isEmpty else { throw ProtocolError(.invalidField, "\"channels\" is empty") }
                return .subscribe(ids)
            default:
                throw ProtocolError(.invalidField, "give \"channels\" or \"directory\": true")
            }
        default:
            return .unsubscribe
        }
    }

    private func decodeChannelRequest(_ type: String, _ fields: inout FrameFields) throws(ProtocolError)
        -> ChannelRequest
    {
        switch type {
        case "channel.create":
            let name = try fields.requiredString("name", maxBytes: 4 * 64)
            guard RegistrationRequest.isValidName(name) else {
                throw ProtocolError(.invalidField, "\"name\" must be 1 to 64 characters without control characters")
            }
            let open = try fields.optionalBool("open") ?? false
            let members = try fields.optionalArray("members", maxCount: 100) ?? []
            var dids: [DID] = []
            for member in members {
                guard let text = member.stringValue, let did = DID(parsing: text) else {
                    throw ProtocolError(.invalidField, "\"members\" must hold did:agentchat identifiers")
                }
                if !dids.contains(did) { dids.append(did) }
            }
            return .create(name: name, open: open, members: dids)
        case "channel.invite":
            return .invite(try fields.channel(), try fields.did("did"))
        case "channel.join":
            return .join(try fields.channel())
        case "channel.leave":
            return .leave(try fields.channel())
        case "channel.remove":
            return .remove(try fields.channel(), try fields.did("did"))
        case "channel.list":
            let (after, limit) = try fields.channelPage()
            return .list(after: after, limit: limit)
        case "unread.list":
            let (after, limit) = try fields.channelPage()
            return .unread(after: after, limit: limit)
        case "cursor.set":
            let channel = try fields.channel()
            let offset = try fields.requiredInteger("offset")
            guard offset >= 0 else { throw ProtocolError(.invalidField, "\"offset\" must not be negative") }
            return .setCursor(channel, offset: offset)
        case "channel.describe":
            return .describe(try fields.channel())
        case "channel.rotate":
            return .rotate(try fields.channel())
        case "channel.keys":
            let channel = try fields.channel()
            let epoch = try fields.positiveInteger("epoch")
            let signature = try fields.base64("signature", length: 64)
            guard let envelopes = try fields.optionalObject("envelopes") else {
                throw ProtocolError(.missingField, "missing field \"envelopes\"")
            }
            guard !envelopes.isEmpty, envelopes.count <= ChannelKeys.maxMembers else {
                throw ProtocolError(.invalidField, "\"envelopes\" must hold 1 to \(ChannelKeys.maxMembers) entries")
            }
            var parsed: [DID: String] = [:]
            for (didText, value) in envelopes {
                guard let did = DID(parsing: didText), let envelope = value.stringValue,
                    let bytes = Base64URL.decode(envelope), bytes.count == ChannelKeys.envelopeBytes
                else {
                    throw ProtocolError(.invalidField,
                                        "\"envelopes\" maps DIDs to base64url sealed boxes of \(ChannelKeys.envelopeBytes) bytes")
                }
                parsed[did] = envelope
            }
            return .publishKeys(ChannelKeys(channel: channel, epoch: epoch, envelopes: parsed, signature: signature))
        case "channel.keys.get":
            return .getKeys(try fields.channel(), epoch: try fields.positiveInteger("epoch"))
        case "message.send":
            let channel = try fields.channel()
            let epoch = try fields.positiveInteger("epoch")
            let clientMessageID = try fields.requiredString("clientMessageId",
                                                            maxBytes: MessageSend.maxClientMessageIDBytes)
            guard !clientMessageID.isEmpty,
                !clientMessageID.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
            else {
                throw ProtocolError(.invalidField,
                                    "\"clientMessageId\" must be 1 to 64 UTF-8 bytes without control characters")
            }
            let nonce = try fields.base64("nonce", length: 12)
            let ciphertext = try fields.requiredString("ciphertext", maxBytes: MessageSend.maxCiphertextBytes * 4 / 3 + 4)
            guard let bytes = Base64URL.decode(ciphertext), bytes.count >= 16,
                bytes.count <= MessageSend.maxCiphertextBytes
            else {
                throw ProtocolError(.invalidField,
                                    "\"ciphertext\" must be base64url of 16 to \(MessageSend.maxCiphertextBytes) bytes")
            }
            let signature = try fields.base64("signature", length: 64)
            return .send(MessageSend(channel: channel, epoch: epoch, clientMessageID: clientMessageID, nonce: nonce,
                                     ciphertext: ciphertext, signature: signature))
        case "channel.subscribe":
            let channel = try fields.channel()
            let since = try fields.optionalInteger("since")
            if let since, since < 0 { throw ProtocolError(.invalidField, "\"since\" must not be negative") }
            let historyEpoch = try fields.optionalString("historyEpoch", maxBytes: 64)
            return .subscribe(channel, since: since, historyEpoch: historyEpoch)
        case "channel.unsubscribe":
            return .unsubscribe(try fields.channel())
        case "channel.listing":
            let channel = try fields.channel()
            guard let listed = try fields.optionalBool("listed") else {
                throw ProtocolError(.missingField, "missing field \"listed\"")
            }
            let title = try fields.optionalString("title", maxBytes: 4 * ChannelIndicators.maxTitleLength) ?? ""
            let topic = try fields.optionalString("topic", maxBytes: 4 * ChannelIndicators.maxTopicLength) ?? ""
            if listed {
                guard RegistrationRequest.isValidName(title) else {
                    throw ProtocolError(.invalidField, "\"title\" must be 1 to 64 characters without control characters")
                }
                guard topic.unicodeScalars.count <= ChannelIndicators.maxTopicLength,
                    !topic.unicodeScalars.contains(where: { $0.value < 0x20 || (0x7F...0x9F).contains($0.value) })
                else { throw ProtocolError(.invalidField, "\"topic\" is at most 200 characters, no control characters") }
            }
            return .listing(channel, listed: listed, title: title, topic: topic)
        default:  // "history"
            let channel = try fields.channel()
            let before = try fields.optionalInteger("before")
            let after = try fields.optionalInteger("after")
            guard before == nil || after == nil else {
                throw ProtocolError(.invalidField, "give \"before\" or \"after\", not both")
            }
            let limit = try fields.optionalInteger("limit") ?? 100
            guard (1...500).contains(limit) else { throw ProtocolError(.invalidField, "\"limit\" must be 1 to 500") }
            if let value = before ?? after, value < 0 {
                throw ProtocolError(.invalidField, "offsets are not negative")
            }
            return .history(channel, before: before, after: after, limit: Int(limit))
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
        case .ok(let ref):
            return Self.encode(type: "ok", ref: ref, [:])
        case .channel(let ref, let description):
            return Self.encode(type: "channel", ref: ref, ["channel": description.json])
        case .channels(let ref, let descriptions, let next):
            var fields: [String: JSONValue] = ["channels": .array(descriptions.map(\.json))]
            if let next { fields["next"] = .string(next.rawValue) }
            return Self.encode(type: "channels", ref: ref, fields)
        case .keys(let ref, let channel, let epoch, let sender, let signature, let envelopes):
            return Self.encode(type: "channel.keys", ref: ref, [
                "channel": .string(channel.rawValue), "epoch": .number(Double(epoch)),
                "sender": .string(sender.description), "signature": .string(signature),
                "envelopes": .object(envelopes.mapValues { .string($0) }),
            ])
        case .messageAck(let ref, let channel, let offset, let duplicate):
            return Self.encode(type: "message.ack", ref: ref, [
                "channel": .string(channel.rawValue), "offset": .number(Double(offset)), "duplicate": .bool(duplicate),
            ])
        case .subscribed(let ref, let channel, let historyEpoch, let offset, let recovered):
            return Self.encode(type: "subscribed", ref: ref, [
                "channel": .string(channel.rawValue), "historyEpoch": .string(historyEpoch),
                "offset": .number(Double(offset)), "recovered": .bool(recovered),
            ])
        case .channelEvent(let channel, let event, let did, let epoch):
            return Self.encode(type: "channel.event", ref: nil, [
                "channel": .string(channel.rawValue), "event": .string(event), "did": .string(did.description),
                "epoch": .number(Double(epoch)),
            ])
        case .messages(let ref, let channel, let messages, let next):
            return MessageItem.batch(channel: channel, items: messages.map(\.itemBytes), ref: ref, next: next)
        case .directory(let ref, let channels, let next):
            var fields: [String: JSONValue] = ["channels": .array(channels.map(\.json))]
            if let next { fields["next"] = .number(Double(next)) }
            return Self.encode(type: "directory", ref: ref, fields)
        case .indicators(let ref, let channels):
            return Self.encode(type: "indicators", ref: ref, ["channels": .array(channels.map(\.json))])
        case .peek(let ref, let view):
            return Self.encode(type: "peek", ref: ref, ["peek": view.json])
        case .peekUpdate(let view):
            return Self.encode(type: "peek.update", ref: nil, ["peek": view.json])
        case .earnings(let ref, let balance, let entries):
            return Self.encode(type: "earnings", ref: ref, [
                "balanceCents": .number(Double(balance)), "entries": .array(entries.map(\.json)),
            ])
        case .cursor(let ref, let cursor):
            var fields = cursor.json.objectValue ?? [:]
            fields["name"] = nil
            return Self.encode(type: "cursor", ref: ref, fields)
        case .unread(let ref, let cursors, let next):
            var fields: [String: JSONValue] = ["channels": .array(cursors.map(\.json))]
            if let next { fields["next"] = .string(next.rawValue) }
            return Self.encode(type: "unread", ref: ref, fields)
        case .welcome(let ref, let agent, let token, let expiresAt):
            var object: [String: JSONValue] = [
                "type": "welcome", "agent": agent.json, "token": .string(token),
                "expiresAt": .number(Double(expiresAt)),
            ]
            if let ref { object["ref"] = .string(ref) }
            return JSONWriter.encode(.object(object))
        }
    }

    private static func encode(type: String, ref: String?, _ fields: [String: JSONValue]) -> [UInt8] {
        var object = fields
        object["type"] = .string(type)
        if let ref { object["ref"] = .string(ref) }
        return JSONWriter.encode(.object(object))
    }

    /// A type name shortened for an error message, so a hostile frame cannot make the reply large: at most 32
    /// bytes of UTF-8, cut between Unicode scalars. (Counting characters is not enough: one character can hold any
    /// number of combining marks.)
    static func printable(_ s: String) -> String {
        guard s.utf8.count > 32 else { return s }
        var kept = String.UnicodeScalarView()
        var bytes = 0
        for scalar in s.unicodeScalars {
            bytes += UTF8.width(scalar)
            if bytes > 32 { break }
            kept.append(scalar)
        }
        return String(kept) + "…"
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

    mutating func optionalInteger(_ key: String) throws(ProtocolError) -> Int64? {
        consumed.insert(key)
        guard let value = object[key], value != .null else { return nil }
        guard let integer = value.integerValue else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be an integer, not \(value.typeName)")
        }
        return integer
    }

    mutating func positiveInteger(_ key: String) throws(ProtocolError) -> Int64 {
        let value = try requiredInteger(key)
        guard value > 0 else { throw ProtocolError(.invalidField, "\"\(key)\" must be positive") }
        return value
    }

    mutating func optionalBool(_ key: String) throws(ProtocolError) -> Bool? {
        consumed.insert(key)
        guard let value = object[key], value != .null else { return nil }
        guard let bool = value.boolValue else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be true or false, not \(value.typeName)")
        }
        return bool
    }

    mutating func optionalArray(_ key: String, maxCount: Int) throws(ProtocolError) -> [JSONValue]? {
        consumed.insert(key)
        guard let value = object[key], value != .null else { return nil }
        guard let array = value.arrayValue else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be an array, not \(value.typeName)")
        }
        guard array.count <= maxCount else {
            throw ProtocolError(.invalidField, "\"\(key)\" holds at most \(maxCount) entries")
        }
        return array
    }

    mutating func optionalObject(_ key: String) throws(ProtocolError) -> [String: JSONValue]? {
        consumed.insert(key)
        guard let value = object[key], value != .null else { return nil }
        guard let fields = value.objectValue else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be an object, not \(value.typeName)")
        }
        return fields
    }

    mutating func channel() throws(ProtocolError) -> ChannelID {
        let text = try requiredString("channel", maxBytes: 64)
        guard let id = ChannelID(text) else { throw ProtocolError(.invalidField, "\"channel\" is not a channel id") }
        return id
    }

    /// `after` (a channel id) and `limit` (1–100, default 100) of a paged request over the agent's channels.
    mutating func channelPage() throws(ProtocolError) -> (after: ChannelID?, limit: Int) {
        let after = try optionalString("after", maxBytes: 64)
        let limit = try optionalInteger("limit") ?? 100
        guard (1...100).contains(limit) else { throw ProtocolError(.invalidField, "\"limit\" must be 1 to 100") }
        guard after == nil || after.flatMap(ChannelID.init) != nil else {
            throw ProtocolError(.invalidField, "\"after\" is not a channel id")
        }
        return (after.flatMap(ChannelID.init), Int(limit))
    }

    mutating func did(_ key: String) throws(ProtocolError) -> DID {
        let text = try requiredString(key, maxBytes: 128)
        guard let did = DID(parsing: text) else {
            throw ProtocolError(.invalidField, "\"\(key)\" is not a did:agentchat identifier")
        }
        return did
    }

    /// A base64url string that must decode to exactly `length` bytes; returned as sent.
    mutating func base64(_ key: String, length: Int) throws(ProtocolError) -> String {
        let text = try requiredString(key, maxBytes: length * 2 + 4)
        guard let bytes = Base64URL.decode(text), bytes.count == length else {
            throw ProtocolError(.invalidField, "\"\(key)\" must be \(length) bytes in base64url")
        }
        return text
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
