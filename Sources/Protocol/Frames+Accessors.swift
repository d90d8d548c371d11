/// What every frame says about itself, without encoding it: its `type`, and the correlation `id` (client) or
/// `ref` (broker). Clients use these to route answers; the codec's wire format does not depend on them.
extension ClientFrame {
    /// The frame's `type` on the wire.
    public var type: FrameType {
        switch self {
        case .ping: .ping
        case .auth: .auth
        case .viewer(_, let request):
            switch request {
            case .directoryList: .directoryList
            case .subscribe, .subscribeDirectory: .indicatorsSubscribe
            case .unsubscribe: .indicatorsUnsubscribe
            }
        case .channel(_, let request): request.type
        case .peek(_, let request): request.type
        }
    }

    /// The correlation `id`, echoed as the answer's `ref`.
    public var id: String? {
        switch self {
        case .ping(let id), .auth(let id, _), .viewer(let id, _), .channel(let id, _), .peek(let id, _): id
        }
    }

    /// The same frame with another correlation `id`.
    public func with(id: String?) -> ClientFrame {
        switch self {
        case .ping: .ping(id: id)
        case .auth(_, let credentials): .auth(id: id, credentials)
        case .viewer(_, let request): .viewer(id: id, request)
        case .channel(_, let request): .channel(id: id, request)
        case .peek(_, let request): .peek(id: id, request)
        }
    }
}

extension ChannelRequest {
    /// The request's `type` on the wire.
    public var type: FrameType {
        switch self {
        case .create: .channelCreate
        case .invite: .channelInvite
        case .join: .channelJoin
        case .leave: .channelLeave
        case .remove: .channelRemove
        case .list: .channelList
        case .describe: .channelDescribe
        case .rotate: .channelRotate
        case .publishKeys: .channelKeys
        case .getKeys: .channelKeysGet
        case .send: .messageSend
        case .subscribe: .channelSubscribe
        case .unsubscribe: .channelUnsubscribe
        case .history: .history
        case .listing: .channelListing
        case .setCursor: .cursorSet
        case .unread: .unreadList
        }
    }
}

extension PeekRequest {
    /// The request's `type` on the wire.
    public var type: FrameType {
        switch self {
        case .request: .peekRequest
        case .confirm: .peekConfirm
        case .status: .peekStatus
        case .refuse: .peekRefuse
        case .grant: .peekGrant
        case .earnings: .earnings
        }
    }
}

extension ServerFrame {
    /// The frame's `type` on the wire.
    public var type: FrameType {
        switch self {
        case .pong: .pong
        case .error: .error
        case .hello: .hello
        case .welcome: .welcome
        case .ok: .ok
        case .channel: .channel
        case .channels: .channels
        case .keys: .channelKeys
        case .messageAck: .messageAck
        case .subscribed: .subscribed
        case .channelEvent: .channelEvent
        case .messages: .messages
        case .directory: .directory
        case .indicators: .indicators
        case .peek: .peek
        case .peekUpdate: .peekUpdate
        case .earnings: .earnings
        case .cursor: .cursor
        case .unread: .unread
        }
    }

    /// The `id` of the request this frame answers; nil for frames the broker sends on its own.
    public var ref: String? {
        switch self {
        case .pong(let ref, _), .error(_, let ref), .welcome(let ref, _, _, _), .ok(let ref), .channel(let ref, _),
             .channels(let ref, _, _), .keys(let ref, _, _, _, _, _), .messageAck(let ref, _, _, _),
             .subscribed(let ref, _, _, _, _), .messages(let ref, _, _, _), .directory(let ref, _, _),
             .indicators(let ref, _), .peek(let ref, _), .earnings(let ref, _, _), .cursor(let ref, _),
             .unread(let ref, _, _):
            ref
        case .hello, .channelEvent, .peekUpdate:
            nil
        }
    }
}
