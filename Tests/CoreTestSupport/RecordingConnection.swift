import AgentChatCore
import AgentChatProtocol

/// A `Connection` that records what the core sends it, with the transport's queue rules: frames wait in an outbound
/// queue, a frame that would take the queue past `queueLimit` empties it and closes the connection with 4008, and
/// `whenDrained` handlers run once the queue is at a quarter of its limit or less.
///
/// By default the peer reads at once (`readsImmediately`): every frame is written as it is sent and the queue stays
/// empty. A slow reader keeps its frames queued until the test calls `read(bytes:)` or `readAll()`.
package final class RecordingConnection: Connection {
    package let id: UInt64
    package var remoteAddress: String
    package var queueLimit: Int
    /// Whether frames are written as soon as they are sent (the queue stays empty).
    package var readsImmediately: Bool
    package private(set) var isOpen = true
    /// Every frame the core sent, in order (including ones still queued).
    package private(set) var sentFrames: [OutboundFrame] = []
    /// The closes the core asked for, in order (the first one counts).
    package private(set) var closes: [(code: CloseCode, reason: String)] = []
    /// Called once, when the connection is first closed (the harness reports the end to the router).
    package var onClose: (() -> Void)?
    private var queue: [OutboundFrame] = []
    private var drainHandlers: [() -> Void] = []
    /// How many of `sentFrames` `takeFrames()` has returned.
    private var taken = 0
    private let codec = FrameCodec()

    package init(id: UInt64, remoteAddress: String = "192.0.2.1", queueLimit: Int = 1024 * 1024,
                 readsImmediately: Bool = true)
    {
        self.id = id
        self.remoteAddress = remoteAddress
        self.queueLimit = queueLimit
        self.readsImmediately = readsImmediately
    }

    // MARK: Connection

    package var queuedBytes: Int { queue.reduce(0) { $0 + $1.count } }

    package func send(_ frame: OutboundFrame) {
        guard isOpen else { return }
        if queuedBytes + frame.count > queueLimit {
            queue.removeAll()
            close(.slowConsumer, "outbound queue full; reconnect and resume from your last offset")
            return
        }
        sentFrames.append(frame)
        if !readsImmediately { queue.append(frame) }
    }

    package func close(_ code: CloseCode, _ reason: String) {
        guard isOpen else { return }
        isOpen = false
        closes.append((code, reason))
        drainHandlers = []
        onClose?()
    }

    package func whenDrained(_ body: @escaping () -> Void) {
        guard isOpen else { return }
        drainHandlers.append(body)
    }

    // MARK: The peer

    /// The peer went away (or the transport dropped it): no close code is recorded. The harness then reports the
    /// end to the router.
    package func peerClosed() {
        guard isOpen else { return }
        isOpen = false
        queue.removeAll()
        drainHandlers = []
        onClose?()
    }

    /// Handlers waiting for the queue to drain.
    package var pendingDrainHandlers: Int { drainHandlers.count }

    /// The peer reads `bytes` worth of queued frames (whole frames, oldest first); fires the drain handlers if the
    /// queue is then at a quarter of its limit or less.
    package func read(bytes: Int) {
        var budget = bytes
        while let first = queue.first, budget > 0 {
            budget -= first.count
            queue.removeFirst()
        }
        fireDrainHandlersIfDrained()
    }

    /// The peer reads everything queued.
    package func readAll() {
        queue.removeAll()
        fireDrainHandlersIfDrained()
    }

    /// Runs the drain handlers now if the queue is at a quarter of its limit or less.
    package func fireDrainHandlersIfDrained() {
        guard isOpen, !drainHandlers.isEmpty, queuedBytes <= queueLimit / 4 else { return }
        let handlers = drainHandlers
        drainHandlers = []
        for handler in handlers { handler() }
    }

    // MARK: What was sent

    /// The raw bytes of every frame sent.
    package var sentBytes: [[UInt8]] { sentFrames.map(\.bytes) }

    /// Every frame sent, decoded with the client's codec (a frame that does not decode fails the caller).
    package var frames: [ServerFrame] { sentFrames.map(decode) }

    /// The frames sent since the last call (all of them the first time).
    package func takeFrames() -> [ServerFrame] {
        let new = sentFrames[taken...].map(decode)
        taken = sentFrames.count
        return new
    }

    /// Forgets what `takeFrames()` would return.
    package func skipFrames() { taken = sentFrames.count }

    /// The first close, if any.
    package var closeCode: CloseCode? { closes.first?.code }

    private func decode(_ frame: OutboundFrame) -> ServerFrame {
        do {
            return try codec.decodeServerFrame(frame.bytes)
        } catch {
            preconditionFailure("the core sent a frame the client cannot decode (\(error)): "
                                + String(decoding: frame.bytes, as: UTF8.self))
        }
    }
}

extension ServerFrame {
    /// The frame's offsets, when it is a `messages` frame.
    package var messageOffsets: [Int64]? {
        if case .messages(_, _, let messages, _) = self { return messages.map(\.offset) }
        return nil
    }

    /// The error code, when it is an `error` frame.
    package var errorCode: ErrorCode? {
        if case .error(let error, _) = self { return error.code }
        return nil
    }

    /// `hello`, `welcome`, `messages`… as on the wire.
    package var typeName: String { type.rawValue }
}
