import AgentChatCrypto
import AgentChatProtocol
import CLoadTestShims
import Foundation
import Glibc

/// SplitMix64: a small seeded generator, so that a chaos run's fault plan is reproducible from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Timers and jitter for the chaos clients, all on one `EventLoop` and one thread.
final class ChaosScheduler {
    let loop: EventLoop
    var rng: SplitMix64
    private var timers: [(at: UInt64, action: () -> Void)] = []
    /// When sending started: notes say how long after it they were made (to match them with the faults).
    var startNs = nowNs()
    var elapsed: String { String(format: "%.2f s", Double(Int64(nowNs()) - Int64(startNs)) / 1e9) }

    init(loop: EventLoop, seed: UInt64) {
        self.loop = loop
        rng = SplitMix64(seed: seed)
    }

    func after(_ seconds: Double, _ action: @escaping () -> Void) {
        timers.append((nowNs() + UInt64(max(0, seconds) * 1e9), action))
    }

    /// `base` × a random factor in 0.5…1.5.
    func jitter(_ base: Double) -> Double { base * Double.random(in: 0.5...1.5, using: &rng) }

    private func fireDue() {
        let now = nowNs()
        guard timers.contains(where: { $0.at <= now }) else { return }
        let due = timers.filter { $0.at <= now }
        timers.removeAll { $0.at <= now }
        for t in due { t.action() }
    }

    /// Runs the loop, the timers and `tick` until `done()` or `seconds` pass; returns whether `done()` became true.
    @discardableResult
    func run(seconds: Double, tick: () throws -> Void = {}, until done: () -> Bool) rethrows -> Bool {
        let deadline = nowNs() + UInt64(max(0, seconds) * 1e9)
        while !done() {
            if nowNs() >= deadline { return false }
            loop.poll(timeoutMs: 5)
            fireDue()
            try tick()
        }
        return true
    }
}

/// What the senders of one channel were acknowledged: offset ↔ clientMessageId, both ways. Two different answers
/// for the same message, or one offset for two messages, are kept as evidence.
final class ChaosLedger {
    let index: Int
    let channel: String
    /// Messages the senders of this channel send in all.
    var expected = 0
    private(set) var offsetOf: [String: Int64] = [:]
    private(set) var messageAt: [Int64: String] = [:]
    private(set) var conflicts: [String] = []
    private(set) var duplicateAcks = 0
    /// offset → (seconds after the start of sending, whether that first ack said `duplicate`): evidence for a lost
    /// offset (a first ack that is a duplicate means the message was stored before a fault and its ack lost).
    private(set) var firstAck: [Int64: (at: String, duplicate: Bool)] = [:]

    init(index: Int, channel: String) {
        self.index = index
        self.channel = channel
    }

    func acknowledge(offset: Int64, clientMessageID: String, duplicate: Bool, at: String) {
        if firstAck[offset] == nil { firstAck[offset] = (at, duplicate) }
        if duplicate { duplicateAcks += 1 }
        if let o = offsetOf[clientMessageID], o != offset {
            conflicts.append("\(clientMessageID) acknowledged with offset \(o), then \(offset)")
            return
        }
        if let m = messageAt[offset], m != clientMessageID {
            conflicts.append("offset \(offset) acknowledged for \(m) and for \(clientMessageID)")
            return
        }
        offsetOf[clientMessageID] = offset
        messageAt[offset] = clientMessageID
    }

    /// Distinct offsets acknowledged.
    var acknowledged: Int { messageAt.count }
    var maxOffset: Int64 { messageAt.keys.max() ?? 0 }
    /// Offsets in 1…max never acknowledged.
    var holes: [Int64] { maxOffset < 1 ? [] : (1...maxOffset).filter { messageAt[$0] == nil } }
}

/// The offsets and clientMessageIds in a `messages` frame, read without parsing the JSON: the codec writes it as
/// `{"channel":"ch_…","messages":[{"offset":N,…,"id":"<clientMessageId>",…},…],…}` (keys sorted; every other
/// value is base64url, a number or a DID, so neither marker can occur inside a value). Nil for other frames. The
/// markers come from `Wire` (the codec's output); `self-check` runs this on the golden frames.
enum MessagesFrame {
    private static let prefix = Wire.messagesFrame.beforeChannel
    private static let list = Wire.messagesFrame.afterChannel
    private static let item = Wire.itemStart
    private static let id = Wire.clientMessageIDStart

    static func find(_ p: UnsafeRawBufferPointer, _ needle: [UInt8], from: Int, to end: Int) -> Int? {
        guard from < end else { return nil }
        let i = needle.withUnsafeBytes { n in lt_find(p.baseAddress! + from, end - from, n.baseAddress!, n.count) }
        return i < 0 ? nil : from + i
    }

    /// Whether a `messages` frame answers a request (`ref`, written last but for `type`).
    static func hasRef(_ p: UnsafeRawBufferPointer) -> Bool {
        find(p, Wire.refStart, from: max(0, p.count - 64), to: p.count) != nil
    }

    static func scan(_ p: UnsafeRawBufferPointer) -> [(offset: Int64, id: String)]? {
        guard p.count > prefix.count + list.count, p.starts(with: prefix),
              let start = find(p, list, from: prefix.count, to: min(p.count, 80))
        else { return nil }
        var out: [(Int64, String)] = []
        var pos = start + list.count
        while let i = find(p, item, from: pos, to: p.count) {
            var j = i + item.count
            var offset: Int64 = 0
            while j < p.count, p[j] >= 48, p[j] <= 57 { offset = offset * 10 + Int64(p[j] - 48); j += 1 }
            guard let k = find(p, id, from: j, to: p.count) else { break }
            var e = k + id.count
            while e < p.count, p[e] != UInt8(ascii: "\"") { e += 1 }
            out.append((offset, String(decoding: UnsafeRawBufferPointer(rebasing: p[(k + id.count)..<e]), as: UTF8.self)))
            pos = e
        }
        return out
    }
}

/// One agent's connection to its broker, kept up: challenge login on every (re)connection, reconnection with
/// exponential backoff and jitter (50 ms doubling to 1 s) whenever it closes or cannot connect.
class ChaosAgent: SessionHandler {
    let name: String
    let index: Int
    let identity: SigningKeyPair
    let endpoint: Endpoint
    let scheduler: ChaosScheduler
    private(set) var connection: WebSocketConnection?
    private(set) var loggedIn = false
    private var failedAttempts = 0
    private var stopped = false
    /// Logins (the first included) and connections lost.
    private(set) var logins = 0
    private(set) var disconnects = 0
    private(set) var errorCodes: [String: Int] = [:]
    /// Evidence: the first notes of anything wrong (more are counted, not kept).
    private(set) var notes: [String] = []
    private(set) var notesDropped = 0

    init(name: String, index: Int, identity: SigningKeyPair, endpoint: Endpoint, scheduler: ChaosScheduler) {
        self.name = name
        self.index = index
        self.identity = identity
        self.endpoint = endpoint
        self.scheduler = scheduler
    }

    func note(_ s: String) {
        if notes.count < 12 { notes.append(s) } else { notesDropped += 1 }
    }

    func connect() {
        guard !stopped, connection == nil else { return }
        if let c = WebSocketConnection(index: index, source: "127.0.0.1", host: endpoint.host, port: endpoint.port,
                                       path: endpoint.path, subprotocol: endpoint.subprotocol, handler: self,
                                       loop: scheduler.loop)
        {
            connection = c
        } else {
            reconnectLater()
        }
    }

    private func reconnectLater() {
        failedAttempts += 1
        let delay = min(1.0, 0.05 * Double(1 << min(failedAttempts - 1, 5)))
        scheduler.after(scheduler.jitter(delay)) { [weak self] in self?.connect() }
    }

    func stop() {
        stopped = true
        connection?.shutdown()
        connection = nil
        loggedIn = false
    }

    func send(_ frame: ClientFrame) { connection?.send(Wire.encode(frame), binary: false) }

    // Subclass hooks.
    func didLogIn() {}
    func didDisconnect() {}
    func didReceive(_ frame: ServerFrame) {}
    /// A `messages` frame, already scanned.
    func didReceiveMessages(_ items: [(offset: Int64, id: String)], ref: Bool) {}

    // MARK: SessionHandler

    func opened(_ c: WebSocketConnection) {}

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        guard c === connection else { return }
        if let items = MessagesFrame.scan(payload) {
            return didReceiveMessages(items, ref: MessagesFrame.hasRef(payload))
        }
        guard let frame = Wire.decode(payload) else {
            return note("unreadable frame: \(String(decoding: payload.prefix(120), as: UTF8.self))")
        }
        switch frame {
        case .hello(let broker, let challenge, _):
            send(Wire.login(identity, broker: broker, challenge: challenge))
        case .welcome:
            loggedIn = true
            failedAttempts = 0
            logins += 1
            didLogIn()
        case .error(let error, let ref):
            errorCodes[error.code.rawValue, default: 0] += 1
            // A refused login (e.g. `unavailable` while Redis is down): start again on a new connection, later.
            if ref == "a1" { return c.fail("login refused") }
            didReceive(frame)
        default:
            didReceive(frame)
        }
    }

    func closed(_ c: WebSocketConnection, reason: String) {
        guard c === connection else { return }
        connection = nil
        if loggedIn { disconnects += 1 }
        loggedIn = false
        didDisconnect()
        if !stopped { reconnectLater() }
    }
}

/// Sends `total` numbered messages to one channel at `rate` per second, at most `window` unacknowledged at once.
/// A message not acknowledged (error frame, connection lost, or no answer within 10 s) is sent again, the same
/// frame with the same clientMessageId, until it is acknowledged.
final class ChaosSender: ChaosAgent {
    let ledger: ChaosLedger
    let template: AgentChatSendTemplate
    let total: Int
    let rate: Double
    let window: Int
    private var startNs: UInt64 = 0
    private var sending = false
    /// New messages sent at least once: 1…introduced.
    private var introduced = 0
    private var retry: [UInt64] = []
    /// seq → when it was last sent.
    private var inFlight: [UInt64: UInt64] = [:]
    private var offsets: [UInt64: Int64] = [:]
    private(set) var frames = 0
    private(set) var resends = 0
    private(set) var timeouts = 0

    init(name: String, index: Int, identity: SigningKeyPair, endpoint: Endpoint, scheduler: ChaosScheduler,
         ledger: ChaosLedger, template: AgentChatSendTemplate, total: Int, rate: Double, window: Int)
    {
        self.ledger = ledger
        self.template = template
        self.total = total
        self.rate = rate
        self.window = window
        super.init(name: name, index: index, identity: identity, endpoint: endpoint, scheduler: scheduler)
    }

    var acknowledged: Int { offsets.count }
    var isDone: Bool { offsets.count == total }

    func begin() {
        sending = true
        startNs = nowNs()
        connect()
    }

    private func header(_ seq: UInt64) -> MessageHeader {
        // No send time: every retry is byte for byte the same message (same nonce, ciphertext and signature).
        MessageHeader(seq: seq, sentNs: 0, step: UInt16(index))
    }

    /// Sends what the window and the rate allow; resends what timed out. Called on every loop tick.
    func pump() {
        guard sending, loggedIn, let c = connection, c.isOpen else { return }
        let now = nowNs()
        for (seq, at) in inFlight where now - at > 10_000_000_000 {
            timeouts += 1
            inFlight[seq] = now
            frames += 1
            c.send(template.frame(header(seq), requestID: "m\(seq)"), binary: false)
        }
        let allowed = min(total, Int(Double(now - startNs) / 1e9 * rate) + 1)
        while inFlight.count < window {
            let seq: UInt64
            if !retry.isEmpty {
                seq = retry.removeFirst()
                if offsets[seq] != nil || inFlight[seq] != nil { continue }
                resends += 1
            } else if introduced < allowed {
                introduced += 1
                seq = UInt64(introduced)
            } else {
                break
            }
            inFlight[seq] = now
            frames += 1
            c.send(template.frame(header(seq), requestID: "m\(seq)"), binary: false)
        }
    }

    override func didLogIn() { pump() }

    override func didDisconnect() {
        retry.append(contentsOf: inFlight.keys.sorted())
        inFlight.removeAll()
    }

    override func didReceive(_ frame: ServerFrame) {
        guard let ref = frame.ref, ref.hasPrefix("m"), let seq = UInt64(ref.dropFirst()) else { return }
        inFlight[seq] = nil
        if case .messageAck(_, _, let offset, let duplicate) = frame {
            ledger.acknowledge(offset: offset, clientMessageID: template.clientMessageID(header(seq)),
                               duplicate: duplicate, at: scheduler.elapsed)
            if offsets[seq] == nil { offsets[seq] = offset }
        } else if offsets[seq] == nil {
            // Refused (`unavailable` while Redis is down, …): the same message again, a little later.
            scheduler.after(scheduler.jitter(0.2)) { [weak self] in self?.retry.append(seq) }
        }
        pump()
    }
}

/// Subscribes to one channel and keeps the subscription across reconnects: each new connection subscribes with
/// `since` = the highest offset received and the `historyEpoch` it was given. Checks every delivery: a repeated
/// offset is a duplicate; within one subscription stream (one `subscribed` to the end of its connection) every
/// message must be the previous offset + 1, the first one `since` + 1, or it is a gap.
final class ChaosSubscriber: ChaosAgent {
    let ledger: ChaosLedger
    let broker: Int
    private(set) var lastOffset: Int64 = 0
    private(set) var historyEpoch: String?
    /// offset → clientMessageId of its first delivery.
    private(set) var received: [Int64: String] = [:]
    private(set) var duplicates = 0
    private(set) var gaps = 0
    private(set) var streams = 0
    private(set) var notRecovered = 0
    private(set) var historyEpochChanges = 0
    private(set) var subscribeErrors = 0
    /// The last offset of the current stream; nil while not subscribed.
    private var streamLast: Int64?

    init(name: String, index: Int, identity: SigningKeyPair, endpoint: Endpoint, scheduler: ChaosScheduler,
         ledger: ChaosLedger, broker: Int)
    {
        self.ledger = ledger
        self.broker = broker
        super.init(name: name, index: index, identity: identity, endpoint: endpoint, scheduler: scheduler)
    }

    private func subscribe() {
        guard let channel = ChannelID(ledger.channel) else { return note("bad channel id \(ledger.channel)") }
        send(.channel(id: "sub", .subscribe(channel, since: lastOffset, historyEpoch: historyEpoch)))
    }

    override func didLogIn() { subscribe() }
    override func didDisconnect() { streamLast = nil }

    override func didReceive(_ frame: ServerFrame) {
        switch frame {
        case .subscribed(_, _, let given, let latest, let recovered):
            streams += 1
            if let historyEpoch, given != historyEpoch {
                historyEpochChanges += 1
                note("stream \(streams): historyEpoch changed from \(historyEpoch) to \(given)")
            }
            historyEpoch = given
            if !recovered {
                notRecovered += 1
                note("stream \(streams) at \(scheduler.elapsed): subscribed since \(lastOffset) answered recovered=false (latest \(latest))")
            }
            streamLast = lastOffset
        case .error(_, let ref) where ref == "sub":
            // `unavailable` while Redis is down: subscribe again on this connection, a little later.
            subscribeErrors += 1
            let c = connection
            scheduler.after(scheduler.jitter(0.3)) { [weak self] in
                guard let self, let c, c === self.connection, self.loggedIn, self.streamLast == nil else { return }
                self.subscribe()
            }
        case .error(let error, _):
            note("error: \(error.code) \(error.message)")
        default:
            break
        }
    }

    override func didReceiveMessages(_ items: [(offset: Int64, id: String)], ref: Bool) {
        guard !ref else { return note("unexpected history reply") }
        for (offset, id) in items {
            if let last = streamLast {
                if offset != last + 1 {
                    gaps += 1
                    note("gap in stream \(streams) at \(scheduler.elapsed): \(last) → \(offset)")
                }
            } else {
                gaps += 1
                note("offset \(offset) outside any subscription stream")
            }
            if received[offset] != nil {
                duplicates += 1
                note("duplicate offset \(offset) in stream \(streams) at \(scheduler.elapsed)")
            } else {
                received[offset] = id
            }
            streamLast = offset
            lastOffset = max(lastOffset, offset)
        }
    }
}

/// Reads a channel's whole history (`history` with `after`, pages of 500), for the check after the run.
final class ChaosHistoryReader: ChaosAgent {
    let channel: String
    private(set) var items: [(offset: Int64, id: String)] = []
    private(set) var finished = false
    private var requested = false

    init(name: String, identity: SigningKeyPair, endpoint: Endpoint, scheduler: ChaosScheduler, channel: String) {
        self.channel = channel
        super.init(name: name, index: 9999, identity: identity, endpoint: endpoint, scheduler: scheduler)
    }

    private func request() {
        requested = true
        guard let channelID = ChannelID(channel) else { return note("bad channel id \(channel)") }
        send(.channel(id: "h", .history(channelID, before: nil, after: items.last?.offset ?? 0, limit: 500)))
    }

    override func didLogIn() { request() }
    override func didDisconnect() { requested = false }

    override func didReceive(_ frame: ServerFrame) {
        if case .error(let error, let ref) = frame, ref == "h" {
            note("history refused: \(error.code)")
            scheduler.after(0.5) { [weak self] in if self?.loggedIn == true { self?.request() } }
        }
    }

    override func didReceiveMessages(_ page: [(offset: Int64, id: String)], ref: Bool) {
        guard ref else { return }
        items.append(contentsOf: page)
        // A page may be cut short by size (it then carries `next`): read on until a page comes back empty.
        if page.isEmpty { finished = true } else { request() }
    }
}
