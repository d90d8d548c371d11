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
    /// A close code libwebsockets sends for the broker (1009, 1002: `lws_close_reason`), for `closeCause`.
    var refusedWith: CloseCode?

    /// Why the connection ended: the code the broker sent (its own close, or libwebsockets' refusal), the peer's
    /// close, or neither (dropped: silent peer, or a close never taken).
    var closeCause: CloseCause {
        if let pendingClose { return .sent(pendingClose.code) }
        if let refusedWith { return .sent(refusedWith) }
        if peerSentClose { return .peer }
        return .lost
    }
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
        gatherBytes = min(Self.maxGatherBytes, limits.maxMessageBytes + 4096)
        lastHeard = SystemTime.monotonicSeconds()
    }

    var isOpen: Bool { wsi != nil && pendingClose == nil }

    /// Bytes waiting in the outbound queue.
    var queuedBytes: Int { queue.queuedBytes }
    /// The queue's byte limit: passing it closes the connection with 4008.
    var queueLimit: Int { queue.maxBytes }

    /// Runs `body` once, from a writeable callback, when the queue has drained to a quarter of its limit or less:
    /// how replies that are paced by the reader (replays, history) wait for room. Dropped if the connection closes
    /// first.
    func whenDrained(_ body: @escaping () -> Void) {
        drainHandlers.append(body)
        if let wsi { lws_callback_on_writable(wsi) }
    }

    private var drainHandlers: [() -> Void] = []

    /// Sends one frame: at once when nothing is waiting to be written (one `send()` and no writeable round trip —
    /// which would cost two `epoll_ctl` calls and a loop turn per frame), else after the frames already queued. A
    /// connection whose queue passes its byte limit is closed with 4008 (slow consumer).
    ///
    /// A direct write the kernel does not take in full is kept by libwebsockets (its partial buffer, at most one
    /// frame) and finished from the writeable callback it arranges; every later frame queues behind it.
    func send(_ frame: OutboundFrame) {
        guard let wsi, pendingClose == nil else { return }
        if queue.isEmpty, !pingDue, !writeFailed, lws_partial_buffered(wsi) == 0 {
            if Self.write(frame, to: wsi) < 0 {
                writeFailed = true
                lws_callback_on_writable(wsi)
            }
            return
        }
        let wasEmpty = queue.isEmpty
        switch queue.enqueue(frame) {
        case .queued:
            if wasEmpty { lws_callback_on_writable(wsi) }
        case .overflow:
            queue.removeAll()
            close(.slowConsumer, "outbound queue full; reconnect and resume from your last offset")
        }
    }

    /// A direct write failed (the socket is unusable): the next writeable callback closes the connection.
    private var writeFailed = false

    private static func write(_ frame: OutboundFrame, to wsi: OpaquePointer) -> Int32 {
        lws_write(wsi, frame.payload, frame.count, frame.isBinary ? lwsWriteBinary : lwsWriteText)
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
        guard let wsi, !writeFailed else { return -1 }
        if pingDue {
            pingDue = false
            // A payload, because libwebsockets 4.1 does not report an empty pong (LWS_CALLBACK_RECEIVE_PONG).
            let ping = OutboundFrame(Array("ka".utf8))
            if lws_write(wsi, ping.payload, ping.count, lwsWritePing) < 0 { return -1 }
        }
        // Until the kernel stops taking bytes (libwebsockets then keeps the rest and calls back when it can send
        // again). Several queued frames go out in one `send()`.
        while !queue.isEmpty, lws_partial_buffered(wsi) == 0 {
            if queue.frames.count > 1 {
                if writeGathered(to: wsi) < 0 { return -1 }
            } else if let frame = queue.dequeue(), Self.write(frame, to: wsi) < 0 {
                return -1
            }
        }
        if !drainHandlers.isEmpty, pendingClose == nil, queue.queuedBytes <= queue.maxBytes / 4 {
            let handlers = drainHandlers
            drainHandlers = []
            for handler in handlers { handler() }
        }
        if !queue.isEmpty || lws_partial_buffered(wsi) != 0 {
            lws_callback_on_writable(wsi)
            return 0
        }
        if let pendingClose {
            if lws_partial_buffered(wsi) != 0 {
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

    /// Writes the first queued frames, up to `gatherBytes`, with one `send()`: each framed here as libwebsockets
    /// frames a server message (FIN, opcode, unmasked length), the whole written raw.
    private func writeGathered(to wsi: OpaquePointer) -> Int32 {
        var frames: [OutboundFrame] = []
        var total = 0
        while let next = queue.frames.first, frames.isEmpty || total + next.count + 10 <= gatherBytes {
            frames.append(queue.dequeue()!)
            total += WebSocketFrameHeader.size(payload: next.count) + next.count
        }
        let headroom = OutboundFrame.headroom
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: headroom + total, alignment: 16)
        defer { buffer.deallocate() }
        var at = headroom
        for frame in frames {
            at += WebSocketFrameHeader.write(payload: frame.count, binary: frame.isBinary, to: buffer.baseAddress! + at)
            (buffer.baseAddress! + at).copyMemory(from: frame.payload, byteCount: frame.count)
            at += frame.count
        }
        let start = (buffer.baseAddress! + headroom).assumingMemoryBound(to: UInt8.self)
        return lws_write(wsi, start, total, lwsWriteRaw) < 0 ? -1 : 0
    }

    /// Most bytes gathered into one write: what libwebsockets passes to one `send()` (the protocol's
    /// `tx_packet_size`, set by `WebSocketServer`), so that none of it is copied into its partial buffer up front.
    private let gatherBytes: Int
    static let maxGatherBytes = 256 * 1024

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
/// Bytes passed to the socket as they are (`LWS_WRITE_RAW`, which is `LWS_WRITE_HTTP`).
private let lwsWriteRaw = LWS_WRITE_HTTP

/// The header of an unmasked server-to-client WebSocket frame carrying one whole message (RFC 6455 §5.2).
enum WebSocketFrameHeader {
    static func size(payload count: Int) -> Int { count < 126 ? 2 : count < 65_536 ? 4 : 10 }

    /// Writes the header for a `count`-byte text or binary message at `to`; returns its size.
    static func write(payload count: Int, binary: Bool, to: UnsafeMutableRawPointer) -> Int {
        let bytes = to.assumingMemoryBound(to: UInt8.self)
        bytes[0] = 0x80 | (binary ? 0x2 : 0x1)
        switch count {
        case ..<126:
            bytes[1] = UInt8(count)
            return 2
        case ..<65_536:
            bytes[1] = 126
            bytes[2] = UInt8(count >> 8)
            bytes[3] = UInt8(count & 0xFF)
            return 4
        default:
            bytes[1] = 127
            for i in 0..<8 { bytes[2 + i] = UInt8((UInt64(count) >> (8 * UInt64(7 - i))) & 0xFF) }
            return 10
        }
    }
}
