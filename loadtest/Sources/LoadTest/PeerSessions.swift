import Glibc

/// A handler that says when its connection is logged in (and subscribed, if asked): churn closes it then.
protocol ReadyNotifying: AnyObject {
    var onReady: (() -> Void)? { get set }
}

/// What a connection is for: held idle once logged in, or subscribed to the benchmark channel/topic.
enum SessionMode: String, Sendable { case idle, subscribe }

/// Shared by every session of one process: readiness counts and the delivery recorder.
final class SessionContext {
    let recorder: DeliveryRecorder
    var ready = 0
    var failed = 0
    var firstFailure: String?
    var protocolErrors = 0
    /// agentchat: the session token of each connection's last welcome, by connection index; used to log in when
    /// `loginWithTokens` (churn with token logins).
    var tokens: [Int: String] = [:]
    var loginWithTokens = false
    init(connections: Int, roomSize: Int = 1) {
        recorder = DeliveryRecorder(connections: connections, roomSize: roomSize)
    }

    func fail(_ reason: String) {
        failed += 1
        if firstFailure == nil { firstFailure = reason }
    }
}

/// A byte stream carried in WebSocket messages (NATS and MQTT do not align their packets with frames).
struct StreamBuffer {
    var bytes: [UInt8] = []
    var start = 0
    mutating func append(_ p: UnsafeRawBufferPointer) {
        if start > 0 && start == bytes.count { bytes.removeAll(keepingCapacity: true); start = 0 }
        else if start > 65536 { bytes.removeSubrange(0..<start); start = 0 }
        bytes.append(contentsOf: p)
    }
}

// MARK: - NATS

/// NATS text protocol in binary WebSocket messages: CONNECT, SUB, PUB, PING/PONG, MSG.
final class NATSSession: SessionHandler, ReadyNotifying {
    var subject = "bench"
    let context: SessionContext
    let mode: SessionMode
    let publisher: Bool
    private var stream = StreamBuffer()
    private(set) var isReady = false
    var onReady: (() -> Void)?

    init(context: SessionContext, mode: SessionMode, publisher: Bool = false) {
        self.context = context
        self.mode = mode
        self.publisher = publisher
    }

    func opened(_ c: WebSocketConnection) {
        var s = #"CONNECT {"verbose":false,"pedantic":false,"protocol":1,"name":"loadtest","echo":false}"# + "\r\n"
        if mode == .subscribe && !publisher { s += "SUB \(subject) 1\r\n" }
        s += "PING\r\n"
        c.send(Array(s.utf8), binary: true)
    }

    func publish(_ c: WebSocketConnection, payload: [UInt8]) {
        var frame = Array("PUB \(subject) \(payload.count)\r\n".utf8)
        frame.append(contentsOf: payload)
        frame.append(13); frame.append(10)
        c.send(frame, binary: true)
    }

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        stream.append(payload)
        context.recorder.beginFrame()
        let now = nowNs()
        let used = stream.bytes.withUnsafeBytes { all -> Int in
            var pos = stream.start
            let end = all.count
            while pos < end {
                // Find the end of the control line.
                var nl = pos
                while nl + 1 < end && !(all[nl] == 13 && all[nl + 1] == 10) { nl += 1 }
                if nl + 1 >= end { break }
                let b0 = all[pos]
                if b0 == UInt8(ascii: "M") {
                    // MSG <subject> <sid> [reply] <#bytes>: the size is the last field.
                    var i = nl - 1, size = 0, mul = 1
                    while i > pos && all[i] >= 48 && all[i] <= 57 { size += Int(all[i] - 48) * mul; mul *= 10; i -= 1 }
                    let bodyStart = nl + 2
                    guard bodyStart + size + 2 <= end else { break }
                    if !publisher, let h = MessageHeader.decode(UnsafeRawBufferPointer(rebasing: all[bodyStart..<(bodyStart + size)]), at: 0) {
                        context.recorder.record(connection: c.index, h, now: now)
                    }
                    pos = bodyStart + size + 2
                    continue
                }
                if b0 == UInt8(ascii: "P") && nl - pos == 4 && all[pos + 1] == UInt8(ascii: "I") {
                    c.send(Array("PONG\r\n".utf8), binary: true)
                } else if b0 == UInt8(ascii: "P") && nl - pos == 4 && all[pos + 1] == UInt8(ascii: "O") {
                    if !isReady { isReady = true; context.ready += 1; onReady?() }
                } else if b0 == UInt8(ascii: "-") {
                    context.protocolErrors += 1
                    if context.firstFailure == nil {
                        context.firstFailure = String(decoding: all[pos..<nl], as: UTF8.self)
                    }
                }
                pos = nl + 2
            }
            return pos
        }
        stream.start = used
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("nats: \(reason)") }
}

// MARK: - MQTT 3.1.1

/// MQTT 3.1.1 over the `mqtt` WebSocket subprotocol, QoS 0: CONNECT, SUBSCRIBE, PUBLISH.
final class MQTTSession: SessionHandler, ReadyNotifying {
    var topic = Array("bench".utf8)
    let context: SessionContext
    let mode: SessionMode
    let publisher: Bool
    private var stream = StreamBuffer()
    private(set) var isReady = false
    var onReady: (() -> Void)?

    init(context: SessionContext, mode: SessionMode, publisher: Bool = false) {
        self.context = context
        self.mode = mode
        self.publisher = publisher
    }

    static func remainingLength(_ n: Int) -> [UInt8] {
        var out: [UInt8] = []
        var x = n
        repeat {
            var b = UInt8(x % 128)
            x /= 128
            if x > 0 { b |= 0x80 }
            out.append(b)
        } while x > 0
        return out
    }

    func opened(_ c: WebSocketConnection) {
        let clientID = Array("lt-\(getpid())-\(publisher ? "pub" : String(c.index))".utf8)
        var body: [UInt8] = [0, 4] + Array("MQTT".utf8) + [4, 0x02, 0, 0]  // level 4, clean session, no keep-alive
        body += [UInt8(clientID.count >> 8), UInt8(clientID.count & 0xff)] + clientID
        c.send([0x10] + Self.remainingLength(body.count) + body, binary: true)
    }

    func publish(_ c: WebSocketConnection, payload: [UInt8]) {
        let t = topic
        var packet: [UInt8] = [0x30] + Self.remainingLength(2 + t.count + payload.count)
        packet += [UInt8(t.count >> 8), UInt8(t.count & 0xff)] + t
        packet += payload
        c.send(packet, binary: true)
    }

    private func markReady() {
        if !isReady { isReady = true; context.ready += 1; onReady?() }
    }

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        stream.append(payload)
        context.recorder.beginFrame()
        let now = nowNs()
        var subscribeNow = false
        let used = stream.bytes.withUnsafeBytes { all -> Int in
            var pos = stream.start
            let end = all.count
            while pos + 2 <= end {
                let type = all[pos] >> 4
                var len = 0, mul = 1, i = pos + 1
                var complete = false
                while i < end {
                    len += Int(all[i] & 0x7f) * mul
                    mul *= 128
                    i += 1
                    if all[i - 1] & 0x80 == 0 { complete = true; break }
                }
                guard complete, i + len <= end else { break }
                switch type {
                case 2:  // CONNACK
                    if len >= 2 && all[i + 1] != 0 { context.fail("mqtt: CONNACK \(all[i + 1])") }
                    else if mode == .subscribe && !publisher { subscribeNow = true } else { markReady() }
                case 9: markReady()  // SUBACK
                case 3:  // PUBLISH, QoS 0: topic, then payload
                    let tlen = Int(all[i]) << 8 | Int(all[i + 1])
                    let ps = i + 2 + tlen
                    if !publisher, let h = MessageHeader.decode(UnsafeRawBufferPointer(rebasing: all[ps..<(i + len)]), at: 0) {
                        context.recorder.record(connection: c.index, h, now: now)
                    }
                default: break
                }
                pos = i + len
            }
            return pos
        }
        stream.start = used
        if subscribeNow {
            let t = topic
            let body: [UInt8] = [0, 1, UInt8(t.count >> 8), UInt8(t.count & 0xff)] + t + [0]
            c.send([0x82] + Self.remainingLength(body.count) + body, binary: true)
        }
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("mqtt: \(reason)") }
}

// MARK: - libwebsockets mirror

/// `lws-mirror-protocol` of libwebsockets-test-server: every text message is sent back to every connection of
/// the protocol (the publisher's own copy included, which it ignores).
final class MirrorSession: SessionHandler, ReadyNotifying {
    let context: SessionContext
    let publisher: Bool
    private(set) var isReady = false
    var onReady: (() -> Void)?

    init(context: SessionContext, publisher: Bool = false) {
        self.context = context
        self.publisher = publisher
    }

    func opened(_ c: WebSocketConnection) {
        isReady = true
        context.ready += 1
        onReady?()
    }

    func publish(_ c: WebSocketConnection, payload: [UInt8]) { c.send(payload, binary: false) }

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        guard !publisher, let h = MessageHeader.decode(payload, at: 0) else { return }
        context.recorder.beginFrame()
        context.recorder.record(connection: c.index, h, now: nowNs())
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("lws-mirror: \(reason)") }
}
