import AgentChatProtocol

/// What the core keeps about one connection: login state, frame budget, subscriptions. Loop-bound; created by
/// `FrameRouter` when the connection opens and dropped when it closes.
final class Session {
    let connection: any Connection
    /// Login state.
    var auth: SessionAuthStateMachine
    var frameBudget: TokenBucket
    /// Channels this connection is subscribed to (see `ChannelService`).
    var channels: Set<ChannelID> = []
    /// Peeks this (viewer) connection follows.
    var peeks: Set<PeekKey> = []

    init(connection: any Connection, auth: SessionAuthStateMachine, frameBudget: TokenBucket) {
        self.connection = connection
        self.auth = auth
        self.frameBudget = frameBudget
    }

    var id: UInt64 { connection.id }
    var remoteAddress: String { connection.remoteAddress }
    var isOpen: Bool { connection.isOpen }
    var queuedBytes: Int { connection.queuedBytes }
    var queueLimit: Int { connection.queueLimit }
    var authenticatedDID: DID? { auth.authenticatedDID }

    func close(_ code: CloseCode, _ reason: String) { connection.close(code, reason) }
    func whenDrained(_ body: @escaping () -> Void) { connection.whenDrained(body) }
}

/// The one way frames leave the core: encodes, queues on the connection, and counts
/// (`agentchat_frames_sent_total`, `agentchat_frame_errors_total`). Loop-bound.
struct Outbox {
    let codec: FrameCodec
    let metrics: BrokerMetrics

    init(codec: FrameCodec, metrics: BrokerMetrics) {
        self.codec = codec
        self.metrics = metrics
    }

    /// Encodes and queues one frame.
    func send(_ frame: ServerFrame, to session: Session) {
        if case .error(let error, _) = frame { metrics.frameError(error.code.rawValue) }
        send(OutboundFrame(codec.encode(frame)), type: frame.type, to: session)
    }

    /// Queues one encoded frame of `type`.
    func send(_ frame: OutboundFrame, type: FrameType, to session: Session) {
        metrics.framesSent(type)
        session.connection.send(frame)
    }

    /// Queues one encoded frame of `type` on each of `sessions`.
    func broadcast(_ frame: OutboundFrame, type: FrameType, to sessions: some Sequence<Session>) {
        var count = 0
        for session in sessions {
            session.connection.send(frame)
            count += 1
        }
        if count > 0 { metrics.framesSent(type, count: count) }
    }

    /// Queues a reply to the connection's own request once it fits in the queue, so that asking never makes a
    /// reader a slow consumer (4008).
    func sendPaced(_ frame: OutboundFrame, type: FrameType, to session: Session) {
        guard session.isOpen else { return }
        if session.queuedBytes > 0, session.queuedBytes + frame.count > session.queueLimit {
            session.whenDrained { [weak session] in
                guard let session else { return }
                sendPaced(frame, type: type, to: session)
            }
            return
        }
        send(frame, type: type, to: session)
    }

    /// An `error` reply.
    func fail(_ session: Session, _ error: ProtocolError, ref: String?) {
        send(.error(error, ref: ref), to: session)
    }
}
