import AgentChatCrypto
import AgentChatProtocol
import ArgumentParser
import CLoadTestShims
import Foundation
import Glibc

/// Where a target listens and how its sessions are made: shared by the coordinator and the workers.
struct Endpoint: Codable, Sendable {
    var target: TargetKind
    var host: String
    var port: Int
    var subprotocol: String?
    var path: String
}

enum TargetKind: String, Codable, CaseIterable, ExpressibleByArgument, Sendable {
    case agentchat, nats, mosquitto, lwsMirror = "lws-mirror"
}

/// Opens `count` connections from one source address, at most `maxPending` logging in at once, and makes each
/// a session of the target.
final class ConnectionPool {
    let loop: EventLoop
    let endpoint: Endpoint
    let source: String
    let context: SessionContext
    let mode: SessionMode
    let count: Int
    let maxPending: Int
    let makeHandler: (Int) -> SessionHandler
    private(set) var connections: [WebSocketConnection?]
    private var next = 0
    private var openFailures = 0

    init(loop: EventLoop, endpoint: Endpoint, source: String, mode: SessionMode, count: Int, maxPending: Int = 200,
         context: SessionContext, makeHandler: @escaping (Int) -> SessionHandler)
    {
        self.loop = loop
        self.endpoint = endpoint
        self.source = source
        self.mode = mode
        self.count = count
        self.maxPending = maxPending
        self.context = context
        self.makeHandler = makeHandler
        connections = Array(repeating: nil, count: count)
    }

    var settled: Int { context.ready + context.failed }
    var done: Bool { settled >= count }

    /// Opens more connections while fewer than `maxPending` are between connect and ready.
    func pump() {
        while next < count && next - settled < maxPending {
            let i = next
            next += 1
            open(i)
        }
    }

    private func open(_ i: Int) {
        let h = makeHandler(i)
        (h as? ReadyNotifying)?.onReady = { [unowned self] in if churning { recycleQueue.append(i) } }
        startedAt[i] = nowNs()
        if let c = WebSocketConnection(index: i, source: source, host: endpoint.host, port: endpoint.port,
                                       path: endpoint.path, subprotocol: endpoint.subprotocol, handler: h,
                                       loop: loop)
        {
            connections[i] = c
        } else {
            connections[i] = nil
            context.fail("connect from \(source) failed")
        }
    }

    // MARK: churn

    /// While true, a connection that becomes ready is closed and replaced by a new one.
    private(set) var churning = false
    private var recycleQueue: [Int] = []
    private lazy var startedAt = [UInt64](repeating: 0, count: count)

    /// Closes and reopens every connection as soon as it is ready, for `seconds`; returns the sessions completed
    /// and a histogram of connect → ready times (µs).
    func churn(seconds: Double) -> (sessions: Int, failed: Int, setup: StepStats) {
        var stats = StepStats()
        let failed0 = context.failed
        churning = true
        recycleQueue = Array(0..<count).filter { connections[$0]?.isOpen == true }
        var sessions = 0
        var first = true
        loop.run(seconds: seconds) {
            let queue = recycleQueue
            recycleQueue.removeAll(keepingCapacity: true)
            let now = nowNs()
            for i in queue {
                if !first {
                    _ = stats.latency.record(max(1, (now - startedAt[i]) / 1000))
                    sessions += 1
                }
                connections[i]?.shutdown()
                open(i)
            }
            first = false
            return false
        }
        churning = false
        return (sessions, context.failed - failed0, stats)
    }

    func establish(timeout: Double) -> Bool {
        loop.run(seconds: timeout) {
            pump()
            return done
        }
    }

    func closeAll() { for c in connections { c?.shutdown() } }
}

/// Identities handed to a worker, one per line: a base64url signing seed, and for rooms the connection's channel
/// and key epoch.
enum IdentityFile {
    struct Entry {
        var key: SigningKeyPair
        var channel: String?
        var epoch: Int64?
    }

    static func write(_ lines: [String], to path: String) throws {
        try lines.joined(separator: "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    static func read(_ path: String) throws -> [Entry] {
        try String(contentsOfFile: path, encoding: .utf8).split(separator: "\n").map { line in
            let f = line.split(separator: " ").map(String.init)
            guard let seed = Base64URL.decode(f[0]) else { throw ValidationError("bad identity file") }
            return Entry(key: try SigningKeyPair(seed: seed), channel: f.count > 1 ? f[1] : nil,
                         epoch: f.count > 2 ? Int64(f[2]) : nil)
        }
    }
}

/// What a worker answers to `report K`: the deliveries of rate step K it has seen so far.
struct WorkerReport: Codable {
    var step: Int
    var received: UInt64
    var duplicates: UInt64
    var gaps: UInt64
    var malformed: UInt64?
    /// (latency µs, count) pairs of the step's histogram.
    var latency: [[UInt64]]
    /// Per connection, the last sequence number seen (only in the final report: lost = sent − last).
    var lastSeq: [UInt64]?
    var open: Int
    var failed: Int
    /// rooms, final report: messages sent by this worker's connections and never received by a room member.
    var lost: UInt64?
    var sent: UInt64?
    /// WebSocket messages that carried the step's deliveries (received / frames = items per frame).
    var frames: UInt64?
    /// Final report: indices of connections no longer open (closed by the server or never ready).
    var closedIndices: [Int]?
}

/// `agentchat-loadtest worker`: started by the coordinator, never by hand. Opens its share of the subscriber
/// connections, prints `ready R F` once all are ready (R) or failed (F), then answers commands on stdin:
/// `report K` (one JSON line), `final` (JSON with the per-connection last sequence numbers), `quit`.
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "worker", abstract: "Internal: one harness process.",
                                                    shouldDisplay: false)

    @Option var target: TargetKind
    @Option var host = "127.0.0.1"
    @Option var port: Int
    @Option var path = "/"
    @Option var subprotocol: String?
    @Option var source = "127.0.0.2"
    @Option var connections: Int
    @Option var mode = "subscribe"
    @Option var identities: String?
    @Option var channel: String?
    @Option var connectTimeout: Double = 120
    @Option(help: "rooms: members per room (connections i…i+size−1 share one); 0 for broadcast.") var roomSize = 0
    @Option(help: "rooms: global index of this worker's first connection.") var indexOffset = 0
    @Option var payload = 256
    @Flag(help: "agentchat: the agents are members already (another connection of each joined): subscribe only.")
    var skipJoin = false
    @Option(help: "indicators: the connections are viewers of these channels (comma-separated), or of \"directory\".")
    var viewerChannels: String?
    @Flag(help: "rooms, agentchat: sign every message (default: one well-formed signature per member, reused).")
    var signEachMessage = false

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        _ = lt_raise_nofile()
        Sodium.initialize()
        let loop = EventLoop()
        let endpoint = Endpoint(target: target, host: host, port: port, subprotocol: subprotocol, path: path)
        let sessionMode = SessionMode(rawValue: mode) ?? .subscribe
        let rooms = roomSize > 1
        let context = SessionContext(connections: connections, roomSize: max(1, roomSize))
        let keys = try identities.map { try IdentityFile.read($0) } ?? []
        var handlers = [SessionHandler?](repeating: nil, count: connections)
        let offset = indexOffset, size = roomSize
        let viewing = viewerChannels?.split(separator: ",").map(String.init)
        let book = ViewerBook(count: viewing == nil ? 0 : connections)
        let pool = ConnectionPool(loop: loop, endpoint: endpoint, source: source, mode: sessionMode,
                                  count: connections, context: context) { i in
            let room = (offset + i) / max(1, size)
            let h: SessionHandler
            switch endpoint.target {
            case .nats:
                let n = NATSSession(context: context, mode: sessionMode)
                if rooms { n.subject = "room.\(room)" }
                h = n
            case .mosquitto:
                let m = MQTTSession(context: context, mode: sessionMode)
                if rooms { m.topic = Array("room/\(room)".utf8) }
                h = m
            case .lwsMirror: h = MirrorSession(context: context)
            case .agentchat where viewing != nil:
                h = ViewerSession(context: context, book: book, index: i, channels: viewing!)
            case .agentchat:
                let e = keys[i % keys.count]
                let a = AgentChatSession(context: context, mode: sessionMode, identity: e.key,
                                         channel: e.channel ?? channel)
                a.skipJoin = rooms || skipJoin
                h = a
            }
            handlers[i] = h
            return h
        }
        _ = pool.establish(timeout: connectTimeout)
        print("ready \(context.ready) \(context.failed) \(context.firstFailure ?? "-")")
        fflush(nil)

        var sentBy = [UInt64](repeating: 0, count: connections)
        var templates = [AgentChatSendTemplate?](repeating: nil, count: connections)
        let runTag = "w\(getpid())x\(nowNs() % 1_000_000)"
        func send(_ i: Int, _ h: MessageHeader) {
            guard let c = pool.connections[i], c.isOpen else { return }
            switch handlers[i] {
            case let n as NATSSession: n.publish(c, payload: peerPayload(h, size: payload))
            case let m as MQTTSession: m.publish(c, payload: peerPayload(h, size: payload))
            case let a as AgentChatSession:
                if templates[i] == nil, let ch = keys[i % keys.count].channel, let id = ChannelID(ch),
                   let epoch = keys[i % keys.count].epoch
                {
                    templates[i] = try? AgentChatSendTemplate(channel: id, epoch: epoch, key: SecureRandom.bytes(32),
                                                              signer: a.identity, payloadSize: payload,
                                                              runTag: runTag + "-\(i)",
                                                              signsEachMessage: signEachMessage)
                }
                if let t = templates[i] { c.send(t.frame(h), binary: false) }
            default: break
            }
        }
        /// Sends round-robin over the connections so that each sends `rate` messages per second.
        func publishRooms(step: Int, rate: Double, seconds: Double) -> Int {
            let total = max(1, Int(rate * seconds * Double(connections)))
            let t0 = nowNs()
            var count = 0
            while count < total {
                let due = min(total, Int(Double(nowNs() - t0) / 1e9 * rate * Double(connections)) + 1)
                while count < due {
                    let i = count % connections
                    sentBy[i] += 1
                    let seq = UInt64(i % roomSize) << 48 | sentBy[i]
                    send(i, MessageHeader(seq: seq, sentNs: nowNs(), step: UInt16(step)))
                    count += 1
                }
                loop.poll(timeoutMs: 1)
            }
            return count
        }

        let stdinReader = LineReader(fd: 0)
        loop.add(stdinReader)
        let encoder = JSONEncoder()
        while !stdinReader.closed {
            loop.poll(timeoutMs: 100)
            while let line = stdinReader.takeLine() {
                let parts = line.split(separator: " ")
                switch parts.first {
                case "report", "final":
                    let step = parts.count > 1 ? Int(parts[1]) ?? 0 : 0
                    var roomLost: UInt64?
                    if rooms && parts.first == "final" {
                        // Per receiver, per other member: everything after the last number seen was lost.
                        var lost: UInt64 = 0
                        let last = context.recorder.lastSeq
                        for i in 0..<connections {
                            let base = i - i % roomSize
                            for slot in 0..<roomSize where slot != i % roomSize && base + slot < connections {
                                lost += sentBy[base + slot] - min(sentBy[base + slot], last[i * roomSize + slot])
                            }
                        }
                        roomLost = lost
                    }
                    let s = context.recorder.stats(step: step)
                    var pairs: [[UInt64]] = []
                    for v in s.latency.recordedValues() { pairs.append([v.value, UInt64(v.count)]) }
                    let report = WorkerReport(step: step, received: s.received, duplicates: s.duplicates,
                                              gaps: s.gaps, malformed: s.malformed + context.recorder.malformedTotal,
                                              latency: pairs,
                                              lastSeq: parts.first == "final" ? context.recorder.lastSeq : nil,
                                              open: context.ready - context.failed, failed: context.failed,
                                              lost: roomLost, sent: rooms ? sentBy.reduce(0, +) : nil,
                                              frames: s.frames,
                                              closedIndices: parts.first == "final"
                                                  ? (0..<connections).filter { pool.connections[$0]?.isOpen != true } : nil)
                    let data = try encoder.encode(report)
                    FileHandle.standardOutput.write(data + Data("\n".utf8))
                case "publish":
                    // publish K RATE SECONDS: every connection sends RATE msg/s to its room for SECONDS.
                    guard parts.count >= 4, let k = Int(parts[1]), let rate = Double(parts[2]),
                          let seconds = Double(parts[3])
                    else { break }
                    let n = publishRooms(step: k, rate: rate, seconds: seconds)
                    print("sent \(n)")
                    fflush(nil)
                case "churn":
                    let seconds = parts.count > 1 ? Double(parts[1]) ?? 5 : 5
                    context.loginWithTokens = parts.count > 2 && parts[2] == "token"
                    let r = pool.churn(seconds: seconds)
                    var pairs: [[UInt64]] = []
                    for v in r.setup.latency.recordedValues() { pairs.append([v.value, UInt64(v.count)]) }
                    let report = WorkerReport(step: 0, received: UInt64(r.sessions), duplicates: 0, gaps: 0,
                                              malformed: nil, latency: pairs, lastSeq: nil, open: 0, failed: r.failed)
                    FileHandle.standardOutput.write(try encoder.encode(report) + Data("\n".utf8))
                case "mark":
                    // mark START_NS RATE BASE: count viewers' frames from now; the publishers started at START_NS.
                    book.mark(startNs: parts.count > 1 ? UInt64(parts[1]) ?? 0 : 0,
                              rate: parts.count > 2 ? Double(parts[2]) ?? 0 : 0,
                              base: parts.count > 3 ? Int64(parts[3]) ?? 0 : 0)
                case "vreport":
                    let r = book.report(open: context.ready - context.failed)
                    book.publishRate = 0  // the publishers stop: values are no longer on the schedule
                    FileHandle.standardOutput.write(try encoder.encode(r) + Data("\n".utf8))
                case "vcheck":
                    // vcheck CH=N,…: how many (viewer, channel) last values equal the acknowledged counts.
                    var expected: [String: Int64] = [:]
                    for kv in (parts.count > 1 ? parts[1] : "").split(separator: ",") {
                        let f = kv.split(separator: "=")
                        if f.count == 2, let n = Int64(f[1]) { expected[String(f[0])] = n }
                    }
                    FileHandle.standardOutput.write(try encoder.encode(book.check(expected)) + Data("\n".utf8))
                case "quit":
                    pool.closeAll()
                    return
                default: break
                }
            }
        }
        pool.closeAll()
    }
}
