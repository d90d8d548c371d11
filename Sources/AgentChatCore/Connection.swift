import AgentChatProtocol

/// One client connection as the core sees it: a WebSocket of `AgentChatTransport` in the broker, a
/// `RecordingConnection` in unit tests. Loop-bound.
///
/// The transport owns the socket and its outbound queue: `send` queues a frame (a connection whose queue passes
/// `queueLimit` is closed with 4008, slow consumer), `close` sends a close frame after what is queued.
package protocol Connection: AnyObject {
    /// Unique among this process's connections.
    var id: UInt64 { get }
    /// The peer's IP address, for per-address limits.
    var remoteAddress: String { get }
    /// False once a close was decided or the connection is gone.
    var isOpen: Bool { get }
    /// Bytes waiting in the outbound queue.
    var queuedBytes: Int { get }
    /// The queue's byte limit.
    var queueLimit: Int { get }
    func send(_ frame: OutboundFrame)
    func close(_ code: CloseCode, _ reason: String)
    /// Runs `body` once, when the queue has drained to a quarter of its limit or less: how replies paced by the
    /// reader (replays, history) wait for room. Dropped if the connection closes first.
    func whenDrained(_ body: @escaping () -> Void)
    /// Once the connection has ended: why (the close code the broker sent, the peer's close, or neither).
    var closeCause: CloseCause { get }
}

extension Connection {
    package var closeCause: CloseCause { .lost }
}

/// What the transport hands the core: connections opening, their messages, their end, and HTTP requests.
package protocol ConnectionHandler: AnyObject {
    func connectionOpened(_ connection: any Connection)
    func connection(_ connection: any Connection, received message: [UInt8], isBinary: Bool)
    func connectionClosed(_ connection: any Connection)
    /// Answers by calling `respond` exactly once, on the loop thread, now or later.
    func handleHTTP(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void)
}
