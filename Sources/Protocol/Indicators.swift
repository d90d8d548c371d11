/// The public, content-free numbers of one listed channel. See "Public indicators" in `docs/PROTOCOL.md`.
public struct ChannelIndicators: Equatable, Sendable {
    public var id: ChannelID
    public var listed: Bool
    public var title: String
    public var topic: String
    public var members: Int64
    public var online: Int64
    public var messages: Int64
    public var messagesLastMinute: Int64
    /// Unix ms of the last message, rounded down to 10 s; 0 if none.
    public var lastActivity: Int64
    public var peeks: Int64
    public var peeksActive: Int64

    public init(id: ChannelID, listed: Bool, title: String, topic: String, members: Int64, online: Int64,
                messages: Int64, messagesLastMinute: Int64, lastActivity: Int64, peeks: Int64 = 0,
                peeksActive: Int64 = 0)
    {
        self.id = id
        self.listed = listed
        self.title = title
        self.topic = topic
        self.members = members
        self.online = online
        self.messages = messages
        self.messagesLastMinute = messagesLastMinute
        self.lastActivity = lastActivity - lastActivity % 10_000
        self.peeks = peeks
        self.peeksActive = peeksActive
    }

    /// What a channel that stopped being listed is sent as, once.
    public static func unlisted(_ id: ChannelID) -> ChannelIndicators {
        ChannelIndicators(id: id, listed: false, title: "", topic: "", members: 0, online: 0, messages: 0,
                          messagesLastMinute: 0, lastActivity: 0)
    }

    public var json: JSONValue {
        if !listed { return ["id": .string(id.rawValue), "listed": false] }
        return [
            "id": .string(id.rawValue), "listed": true, "title": .string(title), "topic": .string(topic),
            "members": .number(Double(members)), "online": .number(Double(online)),
            "messages": .number(Double(messages)), "messagesLastMinute": .number(Double(messagesLastMinute)),
            "lastActivity": .number(Double(lastActivity)), "peeks": .number(Double(peeks)),
            "peeksActive": .number(Double(peeksActive)),
        ]
    }

    /// Reads indicators written by `json`; nil when a field is missing or malformed.
    public init?(json: JSONValue) {
        guard let id = json["id"]?.stringValue.flatMap(ChannelID.init), let listed = json["listed"]?.boolValue else {
            return nil
        }
        guard listed else {
            self = .unlisted(id)
            return
        }
        guard let title = json["title"]?.stringValue, let topic = json["topic"]?.stringValue,
            let members = json["members"]?.integerValue, let online = json["online"]?.integerValue,
            let messages = json["messages"]?.integerValue, let lastMinute = json["messagesLastMinute"]?.integerValue,
            let lastActivity = json["lastActivity"]?.integerValue, let peeks = json["peeks"]?.integerValue,
            let peeksActive = json["peeksActive"]?.integerValue
        else { return nil }
        self.init(id: id, listed: true, title: title, topic: topic, members: members, online: online,
                  messages: messages, messagesLastMinute: lastMinute, lastActivity: lastActivity, peeks: peeks,
                  peeksActive: peeksActive)
    }

    public static let maxTitleLength = 64
    public static let maxTopicLength = 200
}

/// Frames a viewer (a connection that has not logged in) may send.
public enum ViewerRequest: Equatable, Sendable {
    case directoryList(cursor: Int, limit: Int)
    case subscribe([ChannelID])
    case subscribeDirectory
    case unsubscribe
}
