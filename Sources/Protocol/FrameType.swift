/// The WebSocket subprotocol of AgentChat protocol v1, negotiated with `Sec-WebSocket-Protocol`.
public enum WireProtocol {
    public static let subprotocol = "agentchat.v1"
}

/// Every `type` of protocol v1, in one place. Some names travel both ways (`channel.keys` is a request and the
/// answer to `channel.keys.get`); `direction` says which.
public enum FrameType: String, CaseIterable, Sendable {
    // Client → broker.
    case ping
    case auth
    case directoryList = "directory.list"
    case indicatorsSubscribe = "indicators.subscribe"
    case indicatorsUnsubscribe = "indicators.unsubscribe"
    case channelCreate = "channel.create"
    case channelInvite = "channel.invite"
    case channelJoin = "channel.join"
    case channelLeave = "channel.leave"
    case channelRemove = "channel.remove"
    case channelList = "channel.list"
    case channelRotate = "channel.rotate"
    case channelDescribe = "channel.describe"
    case channelKeys = "channel.keys"
    case channelKeysGet = "channel.keys.get"
    case messageSend = "message.send"
    case channelSubscribe = "channel.subscribe"
    case channelUnsubscribe = "channel.unsubscribe"
    case history
    case cursorSet = "cursor.set"
    case unreadList = "unread.list"
    case channelListing = "channel.listing"
    case peekRequest = "peek.request"
    case peekConfirm = "peek.confirm"
    case peekStatus = "peek.status"
    case peekRefuse = "peek.refuse"
    case peekGrant = "peek.grant"
    /// Both ways: the request and its answer.
    case earnings
    // Broker → client.
    case pong
    case error
    case hello
    case welcome
    case ok
    case channel
    case channels
    case messageAck = "message.ack"
    case subscribed
    case channelEvent = "channel.event"
    case messages
    case directory
    case indicators
    case peek
    case peekUpdate = "peek.update"
    case cursor
    case unread

    public enum Direction: Sendable {
        case fromClient, fromBroker, both
    }

    /// Requests of viewers (public indicators; no login needed).
    public static let viewerRequests: Set<FrameType> = [.directoryList, .indicatorsSubscribe, .indicatorsUnsubscribe]
    /// Peek requests: the viewer's (no login needed) and the members'.
    public static let peekRequests: Set<FrameType> = [.peekRequest, .peekConfirm, .peekStatus, .peekRefuse, .peekGrant,
                                                      .earnings]
    /// What an unauthenticated connection may send: login, ping, the viewer requests and the viewer's peek requests.
    public static let beforeAuthentication: Set<FrameType> = viewerRequests.union([.ping, .auth, .peekRequest,
                                                                                   .peekConfirm, .peekStatus])
    /// Channel, key and message requests: the client's types that are neither login, viewer nor peek ones.
    public static let channelRequests: Set<FrameType> = Set(allCases.filter { $0.direction != .fromBroker })
        .subtracting(beforeAuthentication).subtracting(peekRequests)

    public var direction: Direction {
        switch self {
        case .channelKeys, .earnings: .both
        case .pong, .error, .hello, .welcome, .ok, .channel, .channels, .messageAck, .subscribed, .channelEvent,
             .messages, .directory, .indicators, .peek, .peekUpdate, .cursor, .unread:
            .fromBroker
        default: .fromClient
        }
    }
}
