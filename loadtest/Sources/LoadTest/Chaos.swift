import AgentChatCrypto
import AgentChatProtocol
import ArgumentParser
import CLoadTestShims
import Foundation
import Glibc

/// A fault the chaos suite injects: SIGKILL of a broker, of both, or of Redis, each restarted on the same port
/// and data after a pause.
enum ChaosFault: String, CaseIterable, ExpressibleByArgument {
    case broker1, broker2, both, redis

    var label: String {
        switch self {
        case .broker1: "kill -9 broker 1"
        case .broker2: "kill -9 broker 2"
        case .both: "kill -9 both brokers"
        case .redis: "kill -9 redis"
        }
    }
}

/// The faults of one run, from the seed: `perKind` of each kind in a shuffled order, one in each equal slot of
/// [`from`, `to`) seconds (at a random point of the slot's first half), each with its downtime before the
/// restart (brokers 0.2–1.5 s, Redis 0.8–1.2 s: "about a second").
struct ChaosPlan {
    struct Fault {
        var at: Double
        var kind: ChaosFault
        var downtime: Double
    }

    var faults: [Fault] = []

    init(seed: UInt64, kinds: [ChaosFault], perKind: Int, from: Double, to: Double) {
        var rng = SplitMix64(seed: seed ^ 0xC4A0_5EED)
        var order: [ChaosFault] = []
        for _ in 0..<perKind { order += kinds }
        order.shuffle(using: &rng)
        let slot = order.isEmpty ? 0 : (to - from) / Double(order.count)
        for (i, kind) in order.enumerated() {
            let at = from + Double(i) * slot + Double.random(in: 0..<0.5, using: &rng) * slot
            let downtime = kind == .redis ? Double.random(in: 0.8...1.2, using: &rng)
                : Double.random(in: 0.2...1.5, using: &rng)
            faults.append(Fault(at: at, kind: kind, downtime: downtime))
        }
    }
}

/// Carries out a `ChaosPlan` from the run's event loop: kill, wait the downtime, restart on the same port and
/// data, wait until the port accepts connections, then the next fault (never two at once).
final class ChaosFaultRunner {
    enum State {
        case idle
        case down(ChaosPlan.Fault, restartAt: UInt64)
        case restarting(ChaosPlan.Fault, since: UInt64, lastProbe: UInt64)
    }

    let cluster: ChaosCluster
    let plan: ChaosPlan
    private(set) var next = 0
    private(set) var state = State.idle
    private(set) var counts: [ChaosFault: Int] = [:]
    private(set) var log: [String] = []

    init(cluster: ChaosCluster, plan: ChaosPlan) {
        self.cluster = cluster
        self.plan = plan
    }

    var isDone: Bool {
        if case .idle = state { return next == plan.faults.count }
        return false
    }

    private func members(_ kind: ChaosFault) -> [ChaosCluster.Member] {
        switch kind {
        case .broker1: [cluster.brokers[0]]
        case .broker2: [cluster.brokers[1]]
        case .both: cluster.brokers
        case .redis: [cluster.redis]
        }
    }

    /// `elapsed`: seconds since sending started.
    func tick(elapsed: Double) throws {
        let now = nowNs()
        switch state {
        case .idle:
            guard next < plan.faults.count, elapsed >= plan.faults[next].at else { return }
            let f = plan.faults[next]
            next += 1
            let pids = members(f.kind).map { "\($0.name) pid \($0.pid)" }.joined(separator: ", ")
            for m in members(f.kind) { m.kill9() }
            counts[f.kind, default: 0] += 1
            log.append(String(format: "%7.2f s  %@ (%@), restart after %.2f s", elapsed, f.kind.label as NSString,
                              pids as NSString, f.downtime))
            FileHandle.standardError.write(Data("chaos: \(log.last!)\n".utf8))
            state = .down(f, restartAt: now + UInt64(f.downtime * 1e9))
        case .down(let f, let restartAt):
            guard now >= restartAt else { return }
            for m in members(f.kind) { try m.start() }
            state = .restarting(f, since: now, lastProbe: 0)
        case .restarting(let f, let since, let lastProbe):
            guard now - lastProbe >= 50_000_000 else { return }
            let ms = members(f.kind)
            if let dead = ms.first(where: { !$0.isRunning }) {
                throw HarnessError("\(dead.name) exited after its restart; see \(cluster.directory)/\(dead.name).log")
            }
            if ms.allSatisfy({ TargetServer.isListening($0.port) }) {
                log[log.count - 1] += String(format: "; listening again %.2f s after the restart", Double(now - since) / 1e9)
                state = .idle
            } else if now - since > 30_000_000_000 {
                throw HarnessError("\(f.kind.label): not listening 30 s after the restart; see \(cluster.directory)")
            } else {
                state = .restarting(f, since: since, lastProbe: now)
            }
        }
    }
}

/// `chaos`: numbered messages through two brokers on one Redis while brokers and Redis are killed with SIGKILL;
/// fails unless every subscriber got every acknowledged message exactly once and without gaps.
struct ChaosCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chaos",
        abstract: "Kill -9 brokers and Redis under traffic; exit 1 on any lost, duplicated or out-of-sequence message.",
        discussion: """
            Starts one redis-server (AOF, appendfsync always) and two agentchat brokers on it, on loopback ports of \
            its own. Senders (on both brokers) retry each message with the same clientMessageId until it is \
            acknowledged; subscribers (on both brokers) resume with since and historyEpoch after every reconnect. \
            Faults follow a plan drawn from --seed. See docs/RELIABILITY.md.
            """)

    @Option(help: "agentchat-broker to test (default: ../.build/debug/agentchat-broker, then release).")
    var brokerBinary: String?
    @Option(help: "Seed of the fault plan (default: random, printed).") var seed: UInt64?
    @Option(help: "Messages in all, over every channel and sender.") var messages = 30_000
    @Option(help: "Seconds over which the senders spread the messages (the faults fall in this window).")
    var seconds = 180.0
    @Option(help: "Faults of each kind.") var faults = 3
    @Option(help: "Kinds of fault, comma-separated: broker1, broker2, both, redis.")
    var kinds = "broker1,broker2,both,redis"
    @Option(help: "Channels.") var channels = 2
    @Option(help: "Senders per channel (alternately on broker 1 and broker 2).") var senders = 2
    @Option(help: "Subscribers per channel on each broker.") var subscribers = 2
    @Option(help: "Unacknowledged messages a sender may have at once.") var window = 32
    @Option(help: "Seconds to wait, after the last acknowledgement and the last fault, for deliveries to finish.")
    var settle = 30.0
    @Option(help: "Upper bound on the whole run, seconds.") var maxSeconds = 600.0
    @Option(help: "The brokers' --log-level (their logs are in the run's directory).") var brokerLogLevel = "warning"
    @Flag(help: "Keep the temporary directory (Redis data, broker logs) even when the run passes.") var keep = false

    static func loadAverage() -> String {
        (try? String(contentsOfFile: "/proc/loadavg", encoding: .utf8))?.split(separator: " ").prefix(3)
            .joined(separator: " ") ?? "?"
    }

    func validate() throws {
        guard messages > 0, seconds > 0, faults >= 0, channels > 0, senders > 0, subscribers > 0, window > 0 else {
            throw ValidationError("counts and durations must be positive")
        }
        for k in kinds.split(separator: ",") where ChaosFault(rawValue: String(k)) == nil {
            throw ValidationError("unknown fault kind \(k)")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        lt_install_cleanup_handler()
        _ = lt_raise_nofile()
        Sodium.initialize()
        let seed = seed ?? (UInt64(Date().timeIntervalSince1970 * 1000) ^ UInt64(getpid()) << 40) % 1_000_000_007
        let started = nowNs()
        let load0 = Self.loadAverage()
        let base = CommonOptions.loadtestDirectory
        let broker = brokerBinary ?? [base + "/../.build/debug/agentchat-broker", base + "/../.build/release/agentchat-broker"]
            .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "agentchat-broker"
        let faultKinds = kinds.split(separator: ",").compactMap { ChaosFault(rawValue: String($0)) }
        print("chaos: seed \(seed) (rerun with --seed \(seed)); \(messages) messages over \(seconds) s, \(channels) channel(s), \(senders) sender(s) and \(subscribers * 2) subscriber(s) per channel, \(faults) fault(s) of each kind (\(faultKinds.map(\.rawValue).joined(separator: ","))); broker \(broker); load average \(load0)")
        let cluster = try ChaosCluster(brokerBinary: broker, brokerCount: 2,
                                       brokerArguments: brokerBenchArguments + ["--history-max", "10000000"],
                                       logLevel: brokerLogLevel)
        var passed = false
        do {
            try cluster.start()
            print("chaos: redis pid \(cluster.redis.pid) port \(cluster.redis.port); brokers \(cluster.brokers.map { "pid \($0.pid) port \($0.port)" }.joined(separator: ", ")); data and logs in \(cluster.directory)")
            passed = try runSuite(cluster, seed: seed, kinds: faultKinds, started: started, load0: load0)
        } catch {
            cluster.stop(keep: true)
            print("chaos: ERROR \(error); data and logs kept in \(cluster.directory)")
            throw ExitCode(2)
        }
        cluster.stop(keep: keep || !passed)
        if !passed {
            print("chaos: data and logs kept in \(cluster.directory)")
            throw ExitCode(1)
        }
    }

    private func runSuite(_ cluster: ChaosCluster, seed: UInt64, kinds: [ChaosFault], started: UInt64,
                          load0: String) throws -> Bool
    {
        let loop = EventLoop()
        let scheduler = ChaosScheduler(loop: loop, seed: seed)
        func log(_ s: String) { FileHandle.standardError.write(Data("chaos: \(s)\n".utf8)) }

        // Agents: the owner (creates the channels and publishes their keys), the senders, the subscribers.
        let owner = AgentIdentity()
        let senderIDs = (0..<(channels * senders)).map { _ in AgentIdentity() }
        let subscriberIDs = (0..<(channels * subscribers * 2)).map { _ in AgentIdentity() }
        for (i, id) in ([owner] + senderIDs + subscriberIDs).enumerated() {
            try Registration.register(id, name: "chaos-\(i)", port: cluster.brokers[0].port)
        }
        let setup = try Publisher(loop: loop, endpoint: cluster.endpoint(0), payloadSize: 64, identity: owner)
        var ledgers: [ChaosLedger] = []
        var keys: [(epoch: Int64, key: [UInt8])] = []
        for c in 0..<channels {
            let members = senderIDs[(c * senders)..<((c + 1) * senders)].map(\.signing.did)
                + subscriberIDs[(c * subscribers * 2)..<((c + 1) * subscribers * 2)].map(\.signing.did)
            let reply = try setup.request("c\(c)", .create(name: "chaos-\(c)", open: false, members: members))
            guard let id = reply.channelDescription?.id.rawValue else { throw HarnessError("channel not created") }
            keys.append(try setup.publishKeys(channel: id, runTag: "owner"))
            ledgers.append(ChaosLedger(index: c, channel: id))
        }
        setup.connection.shutdown()

        // Subscribers first, all subscribed before anything is sent.
        var subs: [ChaosSubscriber] = []
        for c in 0..<channels {
            for b in 0..<2 {
                for k in 0..<subscribers {
                    let i = subs.count
                    subs.append(ChaosSubscriber(name: "ch\(c + 1) broker\(b + 1) sub\(k + 1)", index: i,
                                                identity: subscriberIDs[c * subscribers * 2 + b * subscribers + k].signing,
                                                endpoint: cluster.endpoint(b), scheduler: scheduler,
                                                ledger: ledgers[c], broker: b))
                }
            }
        }
        for s in subs { s.connect() }
        guard try scheduler.run(seconds: 30, until: { subs.allSatisfy { $0.streams > 0 } }) else {
            throw HarnessError("subscribers not subscribed within 30 s")
        }

        var sends: [ChaosSender] = []
        for c in 0..<channels {
            guard let channelID = ChannelID(ledgers[c].channel) else { throw HarnessError("bad channel id") }
            for s in 0..<senders {
                let i = c * senders + s
                let total = messages / (channels * senders) + (i < messages % (channels * senders) ? 1 : 0)
                let identity = senderIDs[i].signing
                let template = try AgentChatSendTemplate(channel: channelID, epoch: keys[c].epoch, key: keys[c].key,
                                                         signer: identity, payloadSize: 64, runTag: "c\(c + 1)s\(s + 1)")
                ledgers[c].expected += total
                sends.append(ChaosSender(name: "ch\(c + 1) broker\(s % 2 + 1) sender\(s + 1)", index: 1000 + i,
                                         identity: identity, endpoint: cluster.endpoint(s % 2), scheduler: scheduler,
                                         ledger: ledgers[c], template: template, total: total,
                                         rate: Double(total) / seconds, window: window))
            }
        }

        let plan = ChaosPlan(seed: seed, kinds: kinds, perKind: faults, from: min(2, seconds * 0.1),
                             to: seconds * 0.9)
        log("fault plan: " + plan.faults.map { String(format: "%.1fs %@", $0.at, $0.kind.rawValue as NSString) }
            .joined(separator: ", "))
        let runner = ChaosFaultRunner(cluster: cluster, plan: plan)
        let t0 = nowNs()
        scheduler.startNs = t0
        for s in sends { s.begin() }
        var lastProgress = t0
        // Within --max-seconds: sending, then settling, then at least 5 s for the history check.
        let budget = maxSeconds - Double(t0 - started) / 1e9 - settle - 5
        let sentAll = try scheduler.run(seconds: budget, tick: {
            let now = nowNs()
            try runner.tick(elapsed: Double(now - t0) / 1e9)
            for s in sends { s.pump() }
            if now - lastProgress > 10_000_000_000 {
                lastProgress = now
                let acked = sends.map(\.acknowledged).reduce(0, +)
                let behind = subs.map { Int($0.ledger.maxOffset - $0.lastOffset) }.max() ?? 0
                log(String(format: "%6.1f s: %d of %d acknowledged, faults %d of %d, furthest subscriber %d behind",
                           Double(now - t0) / 1e9, acked, messages, runner.next, plan.faults.count, behind))
            }
        }, until: { runner.isDone && sends.allSatisfy(\.isDone) })
        let sendSeconds = Double(nowNs() - t0) / 1e9
        if !sentAll { log("not every message was acknowledged within the time limit") }

        // Settle: every subscriber should reach everything acknowledged.
        let settleStart = nowNs()
        try scheduler.run(seconds: settle, until: {
            subs.allSatisfy { $0.received.count >= $0.ledger.acknowledged }
        })
        let settleSeconds = Double(nowNs() - settleStart) / 1e9

        // History: what Redis kept, read from broker 1 by a fresh connection of the owner.
        var readers: [ChaosHistoryReader] = []
        for l in ledgers {
            let r = ChaosHistoryReader(name: "history \(l.index + 1)", identity: owner.signing, endpoint: cluster.endpoint(0),
                                       scheduler: scheduler, channel: l.channel)
            r.connect()
            readers.append(r)
        }
        let historyRead = try scheduler.run(seconds: max(5, maxSeconds - Double(nowNs() - started) / 1e9),
                                            until: { readers.allSatisfy(\.finished) })
        for a in (subs as [ChaosAgent]) + (sends as [ChaosAgent]) + (readers as [ChaosAgent]) { a.stop() }
        let totalSeconds = Double(nowNs() - started) / 1e9

        // Report.
        var ok = sentAll && historyRead
        var out = "\n## chaos run, seed \(seed)\n\n"
        out += "| subscriber | acknowledged | delivered | lost | duplicated | gaps | streams | not recovered | subscribe errors |\n"
        out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        var evidence: [String] = []
        var totals = (acknowledged: 0, delivered: 0, lost: 0, duplicated: 0, gaps: 0)
        for s in subs {
            let acked = s.ledger.messageAt
            let lost = acked.keys.filter { s.received[$0] == nil }.sorted()
            let unacked = s.received.keys.filter { acked[$0] == nil }.sorted()
            let wrong = s.received.filter { acked[$0.key] != nil && acked[$0.key] != $0.value }.keys.sorted()
            out += "| \(s.name) | \(acked.count) | \(s.received.count) | \(lost.count) | \(s.duplicates) | \(s.gaps) | \(s.streams) | \(s.notRecovered) | \(s.subscribeErrors) |\n"
            totals.acknowledged += acked.count
            totals.delivered += s.received.count
            totals.lost += lost.count
            totals.duplicated += s.duplicates
            totals.gaps += s.gaps
            if !lost.isEmpty || s.duplicates > 0 || s.gaps > 0 || !unacked.isEmpty || !wrong.isEmpty { ok = false }
            var e: [String] = []
            if !lost.isEmpty {
                let first = lost.prefix(5).map { o -> String in
                    guard let a = s.ledger.firstAck[o] else { return "\(o)" }
                    return "\(o) first acknowledged at \(a.at)\(a.duplicate ? " as a duplicate" : "")"
                }
                e.append("lost offsets \(Self.ranges(lost)) [\(first.joined(separator: ", "))\(lost.count > 5 ? ", …" : "")]")
            }
            if !unacked.isEmpty { e.append("delivered but never acknowledged: \(Self.ranges(unacked))") }
            if !wrong.isEmpty { e.append("delivered with another clientMessageId than acknowledged: \(Self.ranges(wrong))") }
            e += s.notes
            if s.notesDropped > 0 { e.append("… \(s.notesDropped) more notes") }
            if !e.isEmpty { evidence.append("\(s.name) (\(s.logins) logins): " + e.joined(separator: "; ")) }
        }
        out += "| **total** | \(totals.acknowledged) | \(totals.delivered) | \(totals.lost) | \(totals.duplicated) | \(totals.gaps) | | | |\n\n"

        out += "| channel | messages | acknowledged offsets | highest | holes | conflicting acks | duplicate acks | in history | history check |\n"
        out += "| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for (l, r) in zip(ledgers, readers) {
            let holes = l.holes
            var historyProblems: [String] = []
            var expectedOffset: Int64 = 1
            let first = r.items.first?.offset ?? 1
            expectedOffset = first
            for item in r.items {
                if item.offset != expectedOffset { historyProblems.append("\(expectedOffset - 1) → \(item.offset)") }
                if let m = l.messageAt[item.offset], m != item.id {
                    historyProblems.append("offset \(item.offset) holds \(item.id), acknowledged for \(m)")
                }
                expectedOffset = item.offset + 1
            }
            if first != 1 { historyProblems.insert("history starts at \(first)", at: 0) }
            if let last = r.items.last?.offset, last != l.maxOffset {
                historyProblems.append("history ends at \(last), acknowledged up to \(l.maxOffset)")
            }
            let distinct = Set(l.offsetOf.keys).count
            if !holes.isEmpty || !l.conflicts.isEmpty || !historyProblems.isEmpty || distinct != l.expected { ok = false }
            out += "| \(l.index + 1) | \(distinct) of \(l.expected) | \(l.acknowledged) | \(l.maxOffset) | \(holes.count) | \(l.conflicts.count) | \(l.duplicateAcks) | \(r.items.count) | \(historyProblems.isEmpty && r.finished ? "1…\(l.maxOffset) in order, ids match" : "FAILED") |\n"
            if !holes.isEmpty { evidence.append("channel \(l.index + 1): offsets never acknowledged \(Self.ranges(holes))") }
            if !l.conflicts.isEmpty { evidence.append("channel \(l.index + 1): " + l.conflicts.prefix(10).joined(separator: "; ")) }
            if !historyProblems.isEmpty {
                evidence.append("channel \(l.index + 1) history: " + historyProblems.prefix(10).joined(separator: "; "))
            }
        }

        out += "\n| sender | messages | acknowledged | frames sent | resent after an error or reconnect | resent after 10 s without answer | logins | error codes |\n"
        out += "| --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for s in sends {
            let codes = s.errorCodes.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ")
            out += "| \(s.name) | \(s.total) | \(s.acknowledged) | \(s.frames) | \(s.resends) | \(s.timeouts) | \(s.logins) | \(codes.isEmpty ? "—" : codes) |\n"
            if !s.notes.isEmpty { evidence.append("\(s.name): " + s.notes.joined(separator: "; ")) }
        }

        out += "\nFaults (\(ChaosFault.allCases.map { "\($0.label): \(runner.counts[$0] ?? 0)" }.joined(separator: ", "))):\n\n"
        for line in runner.log { out += "    \(line)\n" }
        out += String(format: "\nSending %.1f s, settling %.1f s, whole run %.1f s (including setup and the history check). ",
                      sendSeconds, settleSeconds, totalSeconds)
        out += "Load average (1/5/15 min) before: \(load0); after: \(Self.loadAverage()); \(ProcessInfo.processInfo.activeProcessorCount) cores.\n"
        if !sentAll { out += "\nNot every message was acknowledged in time (senders: \(sends.map { "\($0.acknowledged)/\($0.total)" }.joined(separator: " "))).\n" }
        if !historyRead { out += "\nThe history check did not finish.\n" }
        if !evidence.isEmpty {
            out += "\nEvidence:\n\n" + evidence.map { "- \($0)" }.joined(separator: "\n") + "\n"
        }
        print(out)
        print("chaos: seed \(seed): acknowledged \(totals.acknowledged), delivered \(totals.delivered), lost \(totals.lost), duplicated \(totals.duplicated), gaps \(totals.gaps) — \(ok ? "ok" : "FAILED")")
        return ok
    }

    /// "3, 7…12, 40" for a sorted list of offsets (at most 20 ranges shown).
    static func ranges(_ xs: [Int64]) -> String {
        var parts: [String] = []
        var i = 0
        while i < xs.count {
            var j = i
            while j + 1 < xs.count && xs[j + 1] == xs[j] + 1 { j += 1 }
            parts.append(i == j ? "\(xs[i])" : "\(xs[i])…\(xs[j])")
            i = j + 1
        }
        let shown = parts.prefix(20).joined(separator: ", ")
        return "\(xs.count) (\(shown)\(parts.count > 20 ? ", … \(parts.count - 20) more ranges" : ""))"
    }
}
