/// The client's side of the codec: encoding what a client sends and decoding what the broker sends, so that the
/// SDK, the load-test harness and the fake brokers speak the same typed frames as the broker. `decode` of an
/// encoded client frame gives the frame back, and `encode` of a decoded broker frame gives the bytes back (both
/// are checked against the golden frames in `Tests/Golden`).
extension FrameCodec {
    // MARK: Client frames

    /// A client frame as compact JSON with sorted keys, every optional field with a default written out.
    public func encode(_ frame: ClientFrame) -> [UInt8] {
        JSONWriter.encode(Self.json(frame))
    }

    public static func json(_ frame: ClientFrame) -> JSONValue {
        var fields: [String: JSONValue]
        let id: String?
        switch frame {
        case .ping(let frameID):
            id = frameID
            fields = ["type": .string(FrameType.ping.rawValue)]
        case .auth(let frameID, let credentials):
            id = frameID
            switch credentials {
            case .token(let token):
                fields = ["token": .string(token)]
            case .signature(let did, let signature):
                fields = ["did": .string(did.description), "signature": .string(Base64URL.encode(signature))]
            }
            fields["type"] = .string(FrameType.auth.rawValue)
        case .viewer(let frameID, let request):
            id = frameID
            fields = json(request)
        case .channel(let frameID, let request):
            id = frameID
            fields = json(request)
        case .peek(let frameID, let request):
            id = frameID
            fields = json(request)
        }
        if let id { fields["id"] = .string(id) }
        return .object(fields)
    }

    private static func json(_ request: PeekRequest) -> [String: JSONValue] {
        func frame(_ type: FrameType, _ channel: ChannelID, _ more: [String: JSONValue]) -> [String: JSONValue] {
            more.merging(["type": .string(type.rawValue), "channel": .string(channel.rawValue)]) { $1 }
        }
        switch request {
        case .request(let channel, let viewerKey):
            return frame(.peekRequest, channel, ["viewerKey": .string(Base64URL.encode(viewerKey))])
        case .confirm(let channel, let peek, let token):
            return frame(.peekConfirm, channel, ["peek": .string(peek), "token": .string(token)])
        case .status(let channel, let peek, let token):
            return frame(.peekStatus, channel, ["peek": .string(peek), "token": .string(token)])
        case .refuse(let channel, let peek):
            return frame(.peekRefuse, channel, ["peek": .string(peek)])
        case .grant(let channel, let peek, let grant):
            return frame(.peekGrant, channel, ["peek": .string(peek), "grant": grant.json])
        case .earnings(let limit):
            return ["type": .string(FrameType.earnings.rawValue), "limit": .number(Double(limit))]
        }
    }

    private static func json(_ request: ViewerRequest) -> [String: JSONValue] {
        switch request {
        case .directoryList(let cursor, let limit):
            ["type": .string(FrameType.directoryList.rawValue), "cursor": .number(Double(cursor)),
             "limit": .number(Double(limit))]
        case .subscribe(let ids):
            ["type": .string(FrameType.indicatorsSubscribe.rawValue),
             "channels": .array(ids.map { .string($0.rawValue) })]
        case .subscribeDirectory:
            ["type": .string(FrameType.indicatorsSubscribe.rawValue), "directory": true]
        case .unsubscribe:
            ["type": .string(FrameType.indicatorsUnsubscribe.rawValue)]
        }
    }

    private static func json(_ request: ChannelRequest) -> [String: JSONValue] {
        func frame(_ type: FrameType, _ channel: ChannelID, _ more: [String: JSONValue] = [:]) -> [String: JSONValue] {
            more.merging(["type": .string(type.rawValue), "channel": .string(channel.rawValue)]) { $1 }
        }
        func number(_ value: Int64) -> JSONValue { .number(Double(value)) }
        switch request {
        case .create(let name, let open, let members):
            return ["type": .string(FrameType.channelCreate.rawValue), "name": .string(name), "open": .bool(open),
                    "members": .array(members.map { .string($0.description) })]
        case .invite(let channel, let did):
            return frame(.channelInvite, channel, ["did": .string(did.description)])
        case .join(let channel):
            return frame(.channelJoin, channel)
        case .leave(let channel):
            return frame(.channelLeave, channel)
        case .remove(let channel, let did):
            return frame(.channelRemove, channel, ["did": .string(did.description)])
        case .list(let after, let limit):
            var fields: [String: JSONValue] = ["type": .string(FrameType.channelList.rawValue),
                                               "limit": .number(Double(limit))]
            if let after { fields["after"] = .string(after.rawValue) }
            return fields
        case .describe(let channel):
            return frame(.channelDescribe, channel)
        case .rotate(let channel):
            return frame(.channelRotate, channel)
        case .publishKeys(let keys):
            var envelopes: [String: JSONValue] = [:]
            for (did, envelope) in keys.envelopes { envelopes[did.description] = .string(envelope) }
            return frame(.channelKeys, keys.channel, ["epoch": number(keys.epoch), "envelopes": .object(envelopes),
                                                      "signature": .string(keys.signature)])
        case .getKeys(let channel, let epoch):
            return frame(.channelKeysGet, channel, ["epoch": number(epoch)])
        case .send(let message):
            return frame(.messageSend, message.channel, [
                "epoch": number(message.epoch), "clientMessageId": .string(message.clientMessageID),
                "nonce": .string(message.nonce), "ciphertext": .string(message.ciphertext),
                "signature": .string(message.signature),
            ])
        case .subscribe(let channel, let since, let historyEpoch):
            var more: [String: JSONValue] = [:]
            if let since { more["since"] = number(since) }
            if let historyEpoch { more["historyEpoch"] = .string(historyEpoch) }
            return frame(.channelSubscribe, channel, more)
        case .unsubscribe(let channel):
            return frame(.channelUnsubscribe, channel)
        case .history(let channel, let before, let after, let limit):
            var more: [String: JSONValue] = ["limit": .number(Double(limit))]
            if let before { more["before"] = number(before) }
            if let after { more["after"] = number(after) }
            return frame(.history, channel, more)
        case .listing(let channel, let listed, let title, let topic):
            return frame(.channelListing, channel, ["listed": .bool(listed), "title": .string(title),
                                                    "topic": .string(topic)])
        case .setCursor(let channel, let offset):
            return frame(.cursorSet, channel, ["offset": number(offset)])
        case .unread(let after, let limit):
            var fields: [String: JSONValue] = ["type": .string(FrameType.unreadList.rawValue),
                                               "limit": .number(Double(limit))]
            if let after { fields["after"] = .string(after.rawValue) }
            return fields
        }
    }

    // MARK: Broker frames

    /// Reads a frame the broker sent. Fields a client does not know are ignored (the broker may add some); a
    /// missing or malformed field it needs, or an unknown `type`, is a `ProtocolError` (`bad_frame`).
    public func decodeServerFrame(_ bytes: [UInt8]) throws(ProtocolError) -> ServerFrame {
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes)
        } catch {
            throw ProtocolError(.badJSON, "\(error.message) at byte \(error.offset)")
        }
        return try Self.serverFrame(json)
    }

    public static func serverFrame(_ json: JSONValue) throws(ProtocolError) -> ServerFrame {
        func bad(_ what: String) -> ProtocolError { ProtocolError(.badFrame, what) }
        guard let typeName = json["type"]?.stringValue else { throw bad("a frame needs a string \"type\"") }
        guard let type = FrameType(rawValue: typeName), type.direction != .fromClient else {
            throw bad("not a broker frame type: \(printable(typeName))")
        }
        let ref = json["ref"]?.stringValue
        func string(_ key: String) throws(ProtocolError) -> String {
            guard let value = json[key]?.stringValue else { throw bad("\(typeName) needs a string \"\(key)\"") }
            return value
        }
        func integer(_ key: String) throws(ProtocolError) -> Int64 {
            guard let value = json[key]?.integerValue else { throw bad("\(typeName) needs an integer \"\(key)\"") }
            return value
        }
        func bool(_ key: String) throws(ProtocolError) -> Bool {
            guard let value = json[key]?.boolValue else { throw bad("\(typeName) needs a boolean \"\(key)\"") }
            return value
        }
        func channel(_ key: String = "channel") throws(ProtocolError) -> ChannelID {
            guard let id = ChannelID(try string(key)) else { throw bad("\"\(key)\" is not a channel id") }
            return id
        }
        func did(_ key: String) throws(ProtocolError) -> DID {
            guard let did = DID(parsing: try string(key)) else { throw bad("\"\(key)\" is not a DID") }
            return did
        }
        func array(_ key: String) throws(ProtocolError) -> [JSONValue] {
            guard let value = json[key]?.arrayValue else { throw bad("\(typeName) needs an array \"\(key)\"") }
            return value
        }
        func indicators() throws(ProtocolError) -> [ChannelIndicators] {
            var result: [ChannelIndicators] = []
            for item in try array("channels") {
                guard let parsed = ChannelIndicators(json: item) else { throw bad("malformed indicators") }
                result.append(parsed)
            }
            return result
        }
        switch type {
        case .pong:
            return .pong(ref: ref, time: try integer("time"))
        case .error:
            return .error(ProtocolError(ErrorCode(rawValue: try string("code")), try string("message")), ref: ref)
        case .hello:
            return .hello(broker: try string("broker"), challenge: try string("challenge"),
                          expiresAt: try integer("expiresAt"))
        case .welcome:
            guard let agent = json["agent"].flatMap(AgentProfile.init(json:)) else { throw bad("malformed agent") }
            return .welcome(ref: ref, agent: agent, token: try string("token"), expiresAt: try integer("expiresAt"))
        case .ok:
            return .ok(ref: ref)
        case .channel:
            guard let description = json["channel"].flatMap(ChannelDescription.init(json:)) else {
                throw bad("malformed channel description")
            }
            return .channel(ref: ref, description)
        case .channels:
            var descriptions: [ChannelDescription] = []
            for item in try array("channels") {
                guard let description = ChannelDescription(json: item) else { throw bad("malformed channel description") }
                descriptions.append(description)
            }
            let next = json["next"] == nil ? nil : try channel("next")
            return .channels(ref: ref, descriptions, next: next)
        case .channelKeys:
            guard let object = json["envelopes"]?.objectValue else { throw bad("channel.keys needs \"envelopes\"") }
            var envelopes: [String: String] = [:]
            for (recipient, value) in object {
                guard let envelope = value.stringValue else { throw bad("an envelope is not a string") }
                envelopes[recipient] = envelope
            }
            return .keys(ref: ref, channel: try channel(), epoch: try integer("epoch"), sender: try did("sender"),
                         signature: try string("signature"), envelopes: envelopes)
        case .messageAck:
            return .messageAck(ref: ref, channel: try channel(), offset: try integer("offset"),
                               duplicate: try bool("duplicate"))
        case .subscribed:
            return .subscribed(ref: ref, channel: try channel(), historyEpoch: try string("historyEpoch"),
                               offset: try integer("offset"), recovered: try bool("recovered"))
        case .channelEvent:
            return .channelEvent(channel: try channel(), event: try string("event"), did: try did("did"),
                                 epoch: try integer("epoch"))
        case .messages:
            var messages: [StoredMessage] = []
            for item in try array("messages") {
                guard let message = StoredMessage(json: item) else { throw bad("malformed stored message") }
                messages.append(message)
            }
            let next = json["next"] == nil ? nil : try integer("next")
            return .messages(ref: ref, channel: try channel(), messages, next: next)
        case .directory:
            let next = json["next"] == nil ? nil : Int(try integer("next"))
            return .directory(ref: ref, try indicators(), next: next)
        case .indicators:
            return .indicators(ref: ref, try indicators())
        case .peek, .peekUpdate:
            guard let view = json["peek"].flatMap(PeekView.init(json:)) else { throw bad("malformed peek") }
            return type == .peek ? .peek(ref: ref, view) : .peekUpdate(view)
        case .earnings:
            var entries: [EarningsEntry] = []
            for item in try array("entries") {
                guard let channel = item["channel"]?.stringValue.flatMap(ChannelID.init),
                    let peek = item["peek"]?.stringValue, let cents = item["cents"]?.integerValue,
                    let time = item["time"]?.integerValue
                else { throw bad("malformed earnings entry") }
                entries.append(EarningsEntry(channel: channel, peek: peek, cents: cents, time: time))
            }
            return .earnings(ref: ref, balanceCents: try integer("balanceCents"), entries: entries)
        case .cursor:
            guard let cursor = ReadCursor(json: json) else { throw bad("malformed cursor") }
            return .cursor(ref: ref, cursor)
        case .unread:
            var cursors: [ReadCursor] = []
            for item in try array("channels") {
                guard let cursor = ReadCursor(json: item) else { throw bad("malformed read cursor") }
                cursors.append(cursor)
            }
            let next = json["next"] == nil ? nil : try channel("next")
            return .unread(ref: ref, cursors, next: next)
        default:
            throw bad("not a broker frame type: \(typeName)")
        }
    }
}

/// One stored message as the broker delivers it (in `messages` frames): what the sender sent, with the offset,
/// sender and time the broker gave it. The channel is the frame's.
public struct StoredMessage: Equatable, Sendable {
    public var offset: Int64
    public var sender: DID
    public var timestamp: Int64
    public var epoch: Int64
    public var clientMessageID: String
    public var nonce: String
    public var ciphertext: String
    public var signature: String

    public init(offset: Int64, sender: DID, timestamp: Int64, epoch: Int64, clientMessageID: String, nonce: String,
                ciphertext: String, signature: String)
    {
        self.offset = offset
        self.sender = sender
        self.timestamp = timestamp
        self.epoch = epoch
        self.clientMessageID = clientMessageID
        self.nonce = nonce
        self.ciphertext = ciphertext
        self.signature = signature
    }

    /// The stored item's bytes, exactly as the broker stores and sends them (`offset` first).
    public var itemBytes: [UInt8] {
        MessageItem.prefix + Array(String(offset).utf8)
            + MessageItem.suffix(ciphertext: ciphertext, epoch: epoch, clientMessageID: clientMessageID, nonce: nonce,
                                 sender: sender, signature: signature, timestamp: timestamp)
    }

    public init?(json: JSONValue) {
        guard let offset = json["offset"]?.integerValue,
            let sender = json["sender"]?.stringValue.flatMap(DID.init(parsing:)),
            let timestamp = json["ts"]?.integerValue, let epoch = json["epoch"]?.integerValue,
            let id = json["id"]?.stringValue, let nonce = json["nonce"]?.stringValue,
            let ciphertext = json["ciphertext"]?.stringValue, let signature = json["signature"]?.stringValue
        else { return nil }
        self.init(offset: offset, sender: sender, timestamp: timestamp, epoch: epoch, clientMessageID: id, nonce: nonce,
                  ciphertext: ciphertext, signature: signature)
    }
}
