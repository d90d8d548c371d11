/// An agent's read position in one channel: the last offset it has read (`cursor.set`), beside the channel's
/// latest offset. Kept by the broker per member and channel, shared by all of the agent's connections.
public struct ReadCursor: Equatable, Sendable {
    public var channel: ChannelID
    /// The channel's name; in `unread` replies only (a `cursor` reply names the channel by id alone).
    public var name: String?
    /// The last offset read (0: nothing yet).
    public var read: Int64
    /// The channel's latest offset.
    public var offset: Int64
    /// Messages after `read` that history still holds.
    public var unread: Int64

    public init(channel: ChannelID, name: String? = nil, read: Int64, offset: Int64, unread: Int64) {
        self.channel = channel
        self.name = name
        self.read = read
        self.offset = offset
        self.unread = unread
    }

    /// The cursor of a channel whose latest offset is `offset` and whose oldest retained message is `firstOffset`
    /// (0 when history is empty): `unread` counts the retained messages after `read`.
    public init(channel: ChannelID, name: String? = nil, read: Int64, offset: Int64, firstOffset: Int64) {
        let read = min(read, offset)
        let unread = firstOffset == 0 ? 0 : max(0, offset - max(read, firstOffset - 1))
        self.init(channel: channel, name: name, read: read, offset: offset, unread: unread)
    }

    /// The same cursor without the channel's name (as a `cursor` reply carries it).
    public var withoutName: ReadCursor {
        var cursor = self
        cursor.name = nil
        return cursor
    }

    /// `{"channel","name"?,"offset","read","unread"}`.
    public var json: JSONValue {
        var fields: [String: JSONValue] = [
            "channel": .string(channel.rawValue), "read": .number(Double(read)), "offset": .number(Double(offset)),
            "unread": .number(Double(unread)),
        ]
        if let name { fields["name"] = .string(name) }
        return .object(fields)
    }

    public init?(json: JSONValue) {
        guard let channel = json["channel"]?.stringValue.flatMap(ChannelID.init), let read = json["read"]?.integerValue,
            let offset = json["offset"]?.integerValue, let unread = json["unread"]?.integerValue
        else { return nil }
        let name = json["name"]?.stringValue
        if json["name"] != nil, name == nil { return nil }
        self.init(channel: channel, name: name, read: read, offset: offset, unread: unread)
    }
}
