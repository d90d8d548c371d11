import AgentChatCrypto
import AgentChatProtocol
import Glibc
import Histogram

/// One agentchat connection (`Wire`, the protocol's codec): `hello` → `auth` (challenge signed with the agent's
/// key) → `welcome`, then, to subscribe, `channel.join` → `channel.subscribe` → `subscribed`. `messages` batches
/// are scanned for each message's ciphertext without parsing the JSON: the first 24 characters of the ciphertext
/// are the harness's header (see `MessageHeader`).
final class AgentChatSession: SessionHandler, ReadyNotifying {
    let context: SessionContext
    let mode: SessionMode
    let identity: SigningKeyPair
    var channel: String?
    private(set) var isReady = false
    var onReady: (() -> Void)?
    /// Replies by `ref`, for the publisher's setup steps.
    var onReply: ((String, ServerFrame) -> Void)?
    var acks = 0
    var errors = 0
    /// The publisher's sends not yet acknowledged (CLOCK_MONOTONIC ns, in send order: one connection's sends are
    /// acknowledged in order), and send → `message.ack` in µs: the broker's path up to Redis and back, without the
    /// fan-out. Nil until a step asks for it (a histogram is some 100 KiB: only the publisher's session has one).
    private var unacknowledgedSentNs: [UInt64] = []
    private var firstUnacknowledged = 0
    var ackLatency: Histogram<UInt64>?
    /// Already a member (rooms are created with their members): subscribe without joining.
    var skipJoin = false
    /// `channel.subscribe`'s `since` (resume: 0 replays the whole history); nil: only new messages.
    var since: Int64?
    /// When `channel.subscribe` was sent (CLOCK_MONOTONIC ns), and the `subscribed` reply's latest offset.
    private(set) var subscribeSentNs: UInt64 = 0
    private(set) var subscribedOffset: Int64?

    init(context: SessionContext, mode: SessionMode, identity: SigningKeyPair, channel: String?) {
        self.context = context
        self.mode = mode
        self.identity = identity
        self.channel = channel
    }

    func opened(_ c: WebSocketConnection) {}

    static func latencyHistogram() -> Histogram<UInt64> {
        Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000, numberOfSignificantValueDigits: .three)
    }

    /// The publisher sent a `message.send` at `sentNs`: its ack's latency is recorded when it comes.
    func sent(at sentNs: UInt64) { unacknowledgedSentNs.append(sentNs) }

    func sendFrame(_ c: WebSocketConnection, _ frame: ClientFrame) {
        c.send(Wire.encode(frame), binary: false)
    }

    private func markReady() {
        if !isReady { isReady = true; context.ready += 1; onReady?() }
    }

    /// Sends `channel.subscribe` (id `s1`) or `channel.join` (id `j1`) for the session's channel.
    private func request(_ c: WebSocketConnection, id: String, _ make: (ChannelID) -> ChannelRequest) {
        guard let channelID = channel.flatMap(ChannelID.init) else {
            return context.fail("agentchat: bad channel id \(channel ?? "nil")")
        }
        if id == "s1" { subscribeSentNs = nowNs() }
        sendFrame(c, .channel(id: id, make(channelID)))
    }

    /// Calls `found` with the harness header at the start of every message's ciphertext in a `messages` batch (the
    /// codec writes keys sorted: the batch starts with "channel", each item with "offset" then "ciphertext").
    /// False when `payload` holds none.
    @inline(__always)
    static func scanHeaders(_ payload: UnsafeRawBufferPointer, _ found: (MessageHeader) -> Void) -> Bool {
        guard payload.count > 64 && payload.starts(with: Wire.messagesFrame.beforeChannel) else { return false }
        let m = Wire.ciphertextStart
        var i = 0
        let end = payload.count - m.count - MessageHeader.textCount
        var any = false
        while i < end {
            if payload[i] == m[0] && payload[i + 1] == m[1] && payload[i + 2] == m[2] && payload[i + 3] == m[3] {
                var ok = true
                for k in 4..<m.count where payload[i + k] != m[k] { ok = false; break }
                if ok, let h = MessageHeader.decode(payload, at: i + m.count) {
                    found(h)
                    any = true
                    // Skip the rest of the ciphertext (base64url: no quote in it) with memchr, which matters for
                    // 16 KiB payloads.
                    let from = i + m.count + MessageHeader.textCount
                    if let q = memchr(payload.baseAddress! + from, Int32(UInt8(ascii: "\"")), payload.count - from) {
                        i = payload.baseAddress!.distance(to: UnsafeRawPointer(q))
                    } else {
                        i = payload.count
                    }
                    continue
                }
            }
            i += 1
        }
        return any
    }

    /// Whether `payload` is a `message.ack` (checked without a full parse: frequent on the publisher).
    @inline(__always)
    static func isAck(_ payload: UnsafeRawBufferPointer) -> Bool {
        // A plain byte loop, not `contains(_:)`: that generic collection search cost the workers a quarter of their
        // CPU in rooms.
        Wire.ackType.withUnsafeBytes { needle in
            guard payload.count < 200, payload.count >= needle.count, let base = payload.baseAddress else { return false }
            let first = needle[0]
            for i in 0...(payload.count - needle.count) where payload[i] == first {
                if memcmp(base + i, needle.baseAddress!, needle.count) == 0 { return true }
            }
            return false
        }
    }

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        // Fast path: a `messages` batch.
        let now = nowNs()
        context.recorder.beginFrame()
        if Self.scanHeaders(payload, { context.recorder.record(connection: c.index, $0, now: now) }) { return }
        if Self.isAck(payload) {
            acks += 1
            if firstUnacknowledged < unacknowledgedSentNs.count {
                _ = ackLatency?.record(max(1, (now - unacknowledgedSentNs[firstUnacknowledged]) / 1000))
                firstUnacknowledged += 1
                if firstUnacknowledged >= 4096, firstUnacknowledged * 2 >= unacknowledgedSentNs.count {
                    unacknowledgedSentNs.removeFirst(firstUnacknowledged)
                    firstUnacknowledged = 0
                }
            }
            return
        }
        guard let frame = Wire.decode(payload) else { return }
        switch frame {
        case .hello(let broker, let challenge, _):
            if context.loginWithTokens, let token = context.tokens[c.index] {
                sendFrame(c, .auth(id: "a1", .token(token)))
            } else {
                sendFrame(c, Wire.login(identity, broker: broker, challenge: challenge))
            }
        case .welcome(_, _, let token, _):
            context.tokens[c.index] = token
            if mode == .subscribe, channel != nil, skipJoin {
                request(c, id: "s1") { .subscribe($0, since: since, historyEpoch: nil) }
            } else if mode == .subscribe, channel != nil {
                request(c, id: "j1") { .join($0) }
            } else {
                markReady()
            }
        case .channel(let ref, _) where ref == "j1":
            request(c, id: "s1") { .subscribe($0, since: since, historyEpoch: nil) }
        case .subscribed(_, _, _, let offset, _):
            subscribedOffset = offset
            markReady()
        case .error(let error, let ref):
            errors += 1
            context.protocolErrors += 1
            if context.firstFailure == nil {
                context.firstFailure = "agentchat error: \(String(decoding: payload, as: UTF8.self))"
            }
            if let ref { onReply?(ref, frame) }
            if ref == "j1" {
                // Already a member (the channel's owner, whose other connection publishes): subscribe anyway.
                errors -= 1
                context.protocolErrors -= 1
                request(c, id: "s1") { .subscribe($0, since: since, historyEpoch: nil) }
            } else if ref == "s1" || ref == "a1" {
                context.fail("agentchat: \(error.code)")
            }
        default:
            if let ref = frame.ref { onReply?(ref, frame) }
        }
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("agentchat: \(reason)") }
}

/// One agent's key pairs, as the coordinator makes and registers them and hands them to workers.
struct AgentIdentity {
    let signing: SigningKeyPair
    let encryption: EncryptionKeyPair

    init() {
        signing = SigningKeyPair()
        encryption = EncryptionKeyPair()
    }

    init(seed: [UInt8]) throws {
        signing = try SigningKeyPair(seed: seed)
        encryption = EncryptionKeyPair()
    }
}
