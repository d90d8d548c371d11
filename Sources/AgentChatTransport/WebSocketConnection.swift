import AgentChatCore
import AgentChatProtocol
import CLibWebSockets
import CLibWebSocketsShims
import Glibc

/// One WebSocket connection speaking `agentchat.v1`: transport state only (the core keeps login and
/// subscriptions in its `Session`). Loop-bound.
///
/// Writes happen only from the writeable callback: `send` queues a frame and asks libwebsockets for a writeable
/// callback; `close` records a close code and does the same, and the writeable callback performs it.
final class WebSocketConnection: Connection {
    /// The id stored in the connection's per-session data; the server's table maps it back to this object.
    let id: UInt64
    /// The libwebsockets connection; owned by libwebsockets, valid until the CLOSED callback sets it to nil.
    private(set) var wsi: OpaquePointer?
    var assembler: InboundAssembler
    private(set) var queue: OutboundQueue
    private(set) var pendingClose: (code: CloseCode, reason: String)?
    /// When the broker decided to close (monotonic seconds). A peer that stopped reading never takes the close
    /// frame, so the keep-alive sweep drops the connection once the close grace has passed since then.
    private(set) var closeDecidedAt: Double?
    /// `drop()` has shut the socket down; libwebsockets closes the connection when it sees that.
    private(set) var isDropped = false
    /// The peer sent a close frame (libwebsockets answers it).
    var peerSentClose = false
    /// Keep-alive (see `WebSocketServer.sweepKeepAlive`): when the peer was last heard from, and when the
    /// unanswered ping went out.
    var lastHeard: Double
    var pingSentAt: Double?
    private var pingDue = false
    let remoteAddress: String

    init(id: UInt64, wsi: OpaquePointer, limits: Limits, remoteAddress: String) {
        self.id = id
        self.wsi = wsi
        self.remoteAddress = remoteAddress
        assembler = InboundAssembler(maxBytes: limits.maxMessageBytes)
        queue = OutboundQueue(maxBytes: limits.maxOutboundQueueBytes)
        lastHeard = SystemTime.monotonicSeconds()
    }

    var isOpen: Bool { wsi != nil && pendingClose == nil }

    /// Bytes waiting in the outbound queue.
    var queuedBytes: Int { queue.queuedBytes }
    /// The queue's byte limit: passing it closes the connection with 4008.
    var queueLimit: Int { queue.maxBytes }

    /// Runs `body` once, from a writeable callback, when the queue has drained to a quarter of its limit or less:
    /// how replies that are paced by the reader (replays, history) wait for room. Call it only while frames are
    /// queued (an empty queue has room now). Dropped if the connection closes first.
    func whenDrained(_ body: @escaping () -> Void) {
        drainHandlers.append(body)
        if let wsi, !queue.isEmpty { lws_callback_on_writable(wsi) }
    }

    private var drainHandlers: [() -> Void] = []

    /// Queues one frame. A connection whose queue passes its byte limit is closed with 4008 (slow consumer).
    func send(_ frame: OutboundFrame) {
        guard let wsi, pendingClose == nil else { return }
        let wasEmpty = queue.isEmpty
        switch queue.enqueue(frame) {
        case .queued:
            if wasEmpty { lws_callback_on_writable(wsi) }
        case .overflow:
            queue.removeAll()
            close(.slowConsumer, "outbound queue full; reconnect and resume from your last offset")
        }
    }

    /// Sends a WebSocket ping from the next writeable callback.
    func ping(now: Double) {
        guard let wsi, pendingClose == nil, !pingDue else { return }
        pingDue = true
        pingSentAt = now
        lws_callback_on_writable(wsi)
    }

    /// Drops the connection without a close handshake (the peer stopped answering, or never took the close).
    /// Shutting the socket down makes libwebsockets see the end of the stream and close it; its own timers, armed
    /// from outside its callbacks, do not fire on a foreign loop. A zero linger time makes that close a reset, so
    /// whatever is still queued in the kernel for a peer that stopped reading is freed at once.
    func drop() {
        guard let wsi, !isDropped else { return }
        isDropped = true
        let fd = lws_get_socket_fd(wsi)
        guard fd >= 0 else { return }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        _ = setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        shutdown(fd, Int32(SHUT_RDWR))
    }

    /// Closes the connection with `code` once the frames already queued are written.
    func close(_ code: CloseCode, _ reason: String) {
        guard let wsi, pendingClose == nil else { return }
        pendingClose = (code, reason)
        closeDecidedAt = SystemTime.monotonicSeconds()
        lws_callback_on_writable(wsi)
    }

    /// The writeable callback: performs a pending close, or writes queued frames until the socket would block.
    /// Returns the value for libwebsockets (-1 closes the connection).
    func writeable() -> Int32 {
        guard let wsi else { return -1 }
        if pingDue {
            pingDue = false
            // A payload, because libwebsockets 4.1 does not report an empty pong (LWS_CALLBACK_RECEIVE_PONG).
            let ping = OutboundFrame(Array("ka".utf8))
            if lws_write(wsi, ping.payload, ping.count, lwsWritePing) < 0 { return -1 }
            if lws_send_pipe_choked(wsi) != 0 {
                lws_callback_on_writable(wsi)
                return 0
            }
        }
        while let frame = queue.dequeue() {
            let mode = frame.isBinary ? lwsWriteBinary : lwsWriteText
            if lws_write(wsi, frame.payload, frame.count, mode) < 0 { return -1 }
            if lws_send_pipe_choked(wsi) != 0 { break }
        }
        if !drainHandlers.isEmpty, pendingClose == nil, queue.queuedBytes <= queue.maxBytes / 4 {
            let handlers = drainHandlers
            drainHandlers = []
            for handler in handlers { handler() }
        }
        if !queue.isEmpty {
            lws_callback_on_writable(wsi)
            return 0
        }
        if let pendingClose {
            if lws_send_pipe_choked(wsi) != 0 {
                lws_callback_on_writable(wsi)
                return 0
            }
            // lws_close_reason() followed by -1 sends no close frame from this callback in libwebsockets 4.1.6
            // (the connection is dropped), so the close frame is written here and the connection then closed.
            let code = pendingClose.code.rawValue
            let payload = [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(pendingClose.reason.utf8.prefix(120))
            let frame = OutboundFrame(payload)
            _ = lws_write(wsi, frame.payload, frame.count, lwsWriteClose)
            return -1
        }
        return 0
    }

    /// Called from the CLOSED callback: the connection is gone.
    func detach() {
        wsi = nil
        queue.removeAll()
        drainHandlers = []
    }
}

// `lws_write()` modes, from the C shim (see agentchat_lws_shims.h).
private let lwsWriteText = agentchat_lws_write_text()
private let lwsWriteBinary = agentchat_lws_write_binary()
private let lwsWritePing = agentchat_lws_write_ping()
private let lwsWriteClose = agentchat_lws_write_close()
