import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Glibc
import Histogram

/// Settings shared by every workload.
struct HarnessOptions {
    var target: TargetKind
    var connections: Int
    var workers: Int?
    var server: TargetServer.Options
    var resultsDirectory: String
    var command: String
    var quiet = false
    /// agentchat broadcast: connections per agent (the first of each agent joins, the others only subscribe).
    var connectionsPerAgent = 1
    /// agentchat churn: a reopened connection logs in with the token of its previous welcome instead of a signed
    /// challenge.
    var churnWithTokens = false
    /// agentchat rooms: every member signs each message it sends (default: one signature per member, reused).
    var signEachMessage = false
}

/// One run: the target server, the publisher (broadcast) and the worker processes holding the subscribers.
final class Harness {
    let options: HarnessOptions
    let loop = EventLoop()
    let server: TargetServer
    var workers: [WorkerProcess] = []
    var publisher: Publisher?
    var channel: String?
    let runTag = "lt\(getpid())x\(nowNs() % 1_000_000)"

    init(options: HarnessOptions) throws {
        self.options = options
        server = try TargetServer.start(options.target, options: options.server)
        log("\(options.target.rawValue) pid \(server.brokerPIDs.map(String.init).joined(separator: ",")), helpers \(server.auxPIDs.map(String.init).joined(separator: ",")), listening on \(server.endpoint.host):\(server.endpoint.port)")
    }

    func log(_ s: String) {
        if !options.quiet { FileHandle.standardError.write(Data((s + "\n").utf8)) }
    }

    var workerCount: Int {
        options.workers ?? (options.connections <= 100 ? 1 : max(2, (options.connections + 4999) / 5000))
    }

    /// Starts the workers, each with its share of the connections from its own source address, and waits until
    /// every connection is ready or failed. `withPublisher` also opens the publisher (and the agentchat channel).
    func connect(mode: SessionMode, payloadSize: Int, withPublisher: Bool, roomSize: Int = 0) throws
        -> (ready: Int, failed: Int)
    {
        let n = options.connections
        var seeds: [[UInt8]] = []
        var roomOf: [(channel: String, epoch: Int64)] = []
        if options.target == .agentchat {
            // One agent per subscriber for broadcast (the publisher's connection is a second connection of the
            // first agent, since a channel's keys cover at most 1,000 members); idle connections share up to
            // 1,000 agents.
            let perAgent = max(1, options.connectionsPerAgent)
            let agents = roomSize > 1 ? n + 1 : withPublisher ? (n + perAgent - 1) / perAgent : min(n, 1000)
            log("registering \(agents) agents")
            var identities: [AgentIdentity] = []
            for i in 0..<agents {
                let id = AgentIdentity()
                try Registration.register(id, name: "bench-\(i)", port: server.endpoint.port)
                identities.append(id)
            }
            if roomSize > 1 {
                // The harness's own agent creates every room with its members and publishes each room's keys; it
                // is a member too (the owner) but neither subscribes nor sends.
                let owner = identities.removeLast()
                publisher = try Publisher(loop: loop, server: server, payloadSize: payloadSize, identity: owner)
                for r in 0..<(n / roomSize) {
                    let members = (0..<roomSize).map { identities[r * roomSize + $0].signing.did }
                    let reply = try publisher!.request("c\(r)", .create(name: "room-\(r)", open: false, members: members))
                    guard let id = reply.channelDescription?.id.rawValue else { throw HarnessError("room not created") }
                    try publisher!.publishKeys(channel: id, runTag: runTag)
                    let d = try publisher!.request("e\(r)", .describe(ChannelID(id)!))
                    let epoch = d.channelDescription?.epoch ?? 0
                    for _ in 0..<roomSize { roomOf.append((id, epoch)) }
                }
                log("\(n / roomSize) rooms created, keys published")
            } else if withPublisher {
                publisher = try Publisher(loop: loop, server: server, payloadSize: payloadSize, identity: identities[0])
                let reply = try publisher!.request("c1", .create(name: "bench", open: true, members: []))
                channel = reply.channelDescription?.id.rawValue
            }
            seeds = identities.map { $0.signing.seed.copyBytes() }
            if roomSize > 1 { channel = nil }
        } else if withPublisher {
            publisher = try Publisher(loop: loop, server: server, payloadSize: payloadSize, identity: nil)
        }
        // Connection j belongs to agent j % agents. With several connections per agent (agentchat broadcast), the
        // first wave (one connection per agent) joins and subscribes; the rest only subscribe, once it is ready.
        let agentCount = seeds.count
        let waves: [(start: Int, count: Int, skipJoin: Bool)]
        if options.target == .agentchat, options.connectionsPerAgent > 1, roomSize <= 1, agentCount < n {
            waves = [(0, agentCount, false), (agentCount, n - agentCount, true)]
        } else {
            waves = [(0, n, false)]
        }
        var offset = 0
        var ready = 0, failed = 0
        for wave in waves {
            let share = options.workers ?? (wave.count <= 100 ? 1 : max(2, (wave.count + 4999) / 5000))
            let w = waves.count > 1 ? max(1, (wave.count + 4999) / 5000) : min(max(1, share), max(1, n))
            var started: [WorkerProcess] = []
            for i in 0..<w {
                var count = wave.count / w + (i < wave.count % w ? 1 : 0)
                if roomSize > 1 {
                    // Whole rooms per worker, so that a worker can count what its rooms lost.
                    let rooms = n / roomSize
                    count = (rooms / w + (i < rooms % w ? 1 : 0)) * roomSize
                }
                let e = server.subscriberEndpoint
                let wi = workers.count  // one source address per worker, over all waves
                var args = ["--target", e.target.rawValue, "--host", e.host, "--port", String(e.port), "--path", e.path,
                            "--source", "127.0.0.\(2 + wi)", "--connections", String(count), "--mode", mode.rawValue]
                if let p = e.subprotocol { args += ["--subprotocol", p] }
                if !seeds.isEmpty {
                    let file = server.directory + "/identities-\(wi)"
                    try IdentityFile.write((0..<count).map { j -> String in
                        let seed = Base64URL.encode(seeds[(offset + j) % seeds.count])
                        if roomOf.isEmpty { return seed }
                        let room = roomOf[offset + j]
                        return "\(seed) \(room.channel) \(room.epoch)"
                    }, to: file)
                    args += ["--identities", file]
                }
                if let channel { args += ["--channel", channel] }
                if roomSize > 1 {
                    args += ["--room-size", String(roomSize), "--index-offset", String(offset), "--payload", String(payloadSize)]
                    if options.signEachMessage { args.append("--sign-each-message") }
                }
                if wave.skipJoin { args.append("--skip-join") }
                let wp = try WorkerProcess(arguments: args, connections: count, loop: loop)
                workers.append(wp)
                started.append(wp)
                offset += count
            }
            let (r, f) = try awaitReady(started)
            ready += r
            failed += f
        }
        log("\(ready) connections ready, \(failed) failed, over \(workers.count) worker processes")
        if options.target == .agentchat, withPublisher, roomSize <= 1, let channel {
            try publisher!.publishKeys(channel: channel, runTag: runTag)
        }
        return (ready, failed)
    }

    /// The target's name in results: "agentchat (2 brokers)" for multi-broker runs.
    var targetName: String {
        var name = options.target.rawValue
        if server.brokerPIDs.count > 1 { name += " (\(server.brokerPIDs.count) brokers)" }
        if server.brokerProcesses > 1 { name += " (\(server.brokerProcesses) processes)" }
        return name
    }

    var harnessCPU: Double {
        (ProcStat.cpuSeconds(getpid()) ?? 0) + workers.map(\.cpu).reduce(0, +)
    }

    func reports(step: Int, final: Bool = false) throws -> [WorkerReport] {
        for w in workers { w.send("\(final ? "final" : "report") \(step)") }
        let dec = JSONDecoder()
        return try workers.map { w in
            guard let line = w.nextLine(loop, timeout: 30) else { throw HarnessError("a worker stopped answering") }
            return try dec.decode(WorkerReport.self, from: Data(line.utf8))
        }
    }

    func shutdown() {
        for w in workers { w.stop() }
        workers.removeAll()
        publisher?.connection.shutdown()
        server.stop()
    }

    static func isoNow() -> String {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime]
        return f.string(from: Date())
    }
}

// MARK: - broadcast

struct BroadcastOptions {
    var payload = 256
    var stepSeconds = 2.0
    var startRate = 20.0
    var factor = 1.3
    var maxRate = 5000.0
    var p99LimitMs = 50.0
    var minRatio = 0.95
    var refinements = 2
    var maxSeconds = 240.0
    var extraRates: [Double] = []
    var fractions = true
    /// --fixed-rate: only these steps (msg/s), no ramp, no fractions; the result's workload is "fixed".
    var fixedRates: [Double] = []
}

/// Steps the rate up by `factor` from `startRate` until a step fails (twice: `confirmed` retries), then bisects
/// between the last pass and the first failure `refinements` times; bounded by `maxSeconds` since `started`.
func searchMaximumRate(_ o: BroadcastOptions, since started: UInt64,
                       confirmed: (Double) throws -> StepResult) rethrows
{
    var rate = o.startRate
    var lo = 0.0
    var hi: Double?
    var refinements = 0
    while Double(nowNs() - started) / 1e9 < o.maxSeconds {
        let st = try confirmed(rate)
        if st.passed { lo = max(lo, rate) } else { hi = min(hi ?? rate, rate) }
        if let h = hi {
            if lo == 0 || refinements >= o.refinements || h / lo < 1.06 { break }
            refinements += 1
            rate = (lo + h) / 2
        } else {
            rate *= o.factor
            if rate > o.maxRate { break }
        }
    }
}

extension RunResult {
    /// Records the figures of the best passing step (most deliveries per second) and returns it.
    mutating func recordBest() -> StepResult? {
        let best = steps.filter(\.passed).max { $0.deliveredPerSecond < $1.deliveredPerSecond }
        maxSustainedDeliveriesPerSecond = best?.deliveredPerSecond
        maxSustainedMessagesPerSecond = best?.offeredMessagesPerSecond
        deliveriesPerBrokerCPUSecondAtMax = best?.deliveriesPerBrokerCPUSecond
        harnessCPUShareAtMax = best.map { $0.harnessCPUSeconds / $0.seconds }
        deliveriesPerServerCPUSecondAtMax = best.map {
            Double($0.delivered) / max(0.01, $0.brokerCPUSeconds + $0.auxCPUSeconds)
        }
        return best
    }
}

extension Harness {
    /// Waits for every worker's `ready <connected> <failed> [first failure]` line.
    func awaitReady(_ workers: [WorkerProcess]) throws -> (ready: Int, failed: Int) {
        var ready = 0, failed = 0
        for wp in workers {
            guard let line = wp.nextLine(loop, timeout: 180) else { throw HarnessError("a worker did not report") }
            let parts = line.split(separator: " ", maxSplits: 3)
            guard parts.count >= 3, parts[0] == "ready" else { throw HarnessError("worker said: \(line)") }
            ready += Int(parts[1]) ?? 0
            failed += Int(parts[2]) ?? 0
            if parts.count > 3 && parts[3] != "-" { log("worker: first failure: \(parts[3])") }
        }
        return (ready, failed)
    }

    func runBroadcast(_ o: BroadcastOptions) throws -> RunResult {
        let rss0 = server.brokerRSS
        let (ready, failed) = try connect(mode: .subscribe, payloadSize: o.payload, withPublisher: true)
        var result = RunResult(workload: "broadcast", target: targetName, date: Self.isoNow(),
                               command: options.command, connections: options.connections, payloadBytes: o.payload,
                               harnessProcesses: workers.count + 1)
        result.brokerRSSBaselineBytes = rss0
        if failed > 0 || ready < options.connections {
            result.notes.append("failed connections: \(failed)")
        }
        let subscribers = ready
        var seq: UInt64 = 0
        var stepIndex = 0
        let started = nowNs()
        let hcpu0 = harnessCPU

        func step(rate: Double, phase: String) throws -> StepResult {
            stepIndex += 1
            let k = stepIndex
            let cpu0 = server.brokerCPU, aux0 = server.auxCPU, h0 = harnessCPU
            let redis0 = server.redisCommandCalls()
            publisher?.agent?.ackLatency = AgentChatSession.latencyHistogram()
            let count = max(1, Int(rate * o.stepSeconds))
            let t0 = nowNs()
            var sent = 0
            while sent < count {
                let elapsed = Double(nowNs() - t0) / 1e9
                let due = min(count, Int(elapsed * rate) + 1)
                while sent < due {
                    seq += 1
                    publisher!.publish(MessageHeader(seq: seq, sentNs: nowNs(), step: UInt16(k)))
                    sent += 1
                }
                loop.poll(timeoutMs: 1)
                if let c = publisher?.connection, !c.isOpen { throw HarnessError("publisher connection closed") }
            }
            let sendSeconds = max(Double(nowNs() - t0) / 1e9, Double(count) / rate)
            let expected = UInt64(sent * subscribers)
            var reps: [WorkerReport] = []
            // Drain: wait until everything arrived, or 3 s at most.
            let drainStart = nowNs()
            loop.run(seconds: 0.2) { false }
            while true {
                reps = try reports(step: k)
                let got = reps.map(\.received).reduce(0, +)
                if got >= expected || Double(nowNs() - drainStart) / 1e9 > 3 { break }
                loop.run(seconds: 0.3) { false }
            }
            let brokerCPU = server.brokerCPU - cpu0
            let window = Double(nowNs() - t0) / 1e9
            var hist = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                         numberOfSignificantValueDigits: .three)
            for r in reps { for pair in r.latency { _ = hist.record(pair[0], count: pair[1]) } }
            let delivered = reps.map(\.received).reduce(0, +)
            let dups = reps.map(\.duplicates).reduce(0, +), gaps = reps.map(\.gaps).reduce(0, +)
            let ms = { (p: Double) in Double(hist.valueAtPercentile(p)) / 1000 }
            let lat = Latency(p50: ms(50), p99: ms(99), p999: ms(99.9))
            let ratio = expected == 0 ? 0 : Double(delivered) / Double(expected)
            var st = StepResult(step: k, phase: phase, offeredMessagesPerSecond: rate, seconds: sendSeconds,
                                windowSeconds: window, messagesSent: sent, offeredDeliveries: Int(expected), delivered: delivered,
                                deliveredPerSecond: Double(delivered) / sendSeconds, ratio: ratio, latency: lat,
                                duplicates: dups, gaps: gaps, brokerCPUSeconds: brokerCPU,
                                deliveriesPerBrokerCPUSecond: brokerCPU > 0 ? Double(delivered) / brokerCPU : 0,
                                auxCPUSeconds: server.auxCPU - aux0, harnessCPUSeconds: harnessCPU - h0,
                                passed: ratio >= o.minRatio && lat.p99 <= o.p99LimitMs && dups == 0 && gaps == 0)
            st.count(reports: reps, redis: RedisStats.delta(redis0, server.redisCommandCalls()))
            var ackText = ""
            if let acks = publisher?.agent?.ackLatency, acks.totalCount > 0 {
                let ackMs = { (p: Double) in Double(acks.valueAtPercentile(p)) / 1000 }
                st.ackLatency = Latency(p50: ackMs(50), p99: ackMs(99), p999: ackMs(99.9))
                ackText = String(format: ", ack p50 %.2f p99 %.2f ms", ackMs(50), ackMs(99))
            }
            log(String(format: "step %2d %-5@ %7.1f msg/s → %8.0f deliveries/s ratio %.3f p50 %.2f p99 %.2f p99.9 %.2f ms%@, broker CPU %.0f%%, harness CPU %.0f%%, %@ msgs/frame, %@ Redis cmds/msg %@",
                       k, phase as NSString, rate, st.deliveredPerSecond, ratio, lat.p50, lat.p99, lat.p999,
                       ackText as NSString, brokerCPU / window * 100, st.harnessCPUSeconds / window * 100,
                       Report.f(st.messagesPerFrame, 2) as NSString, Report.f(st.redisCommandsPerMessage, 2) as NSString,
                       (st.passed ? "ok" : "FAIL") as NSString))
            return st
        }

        // Ramp: multiply the rate until a step fails, then bisect between the last pass and the first failure.
        // A step that misses is run once more at the same rate and fails only if it misses again: a shared
        // machine's hiccups (a p99 spike from another process) must not end the ramp.
        func confirmed(rate: Double, phase: String) throws -> StepResult {
            var st = try step(rate: rate, phase: phase)
            result.steps.append(st)
            if !st.passed {
                st = try step(rate: rate, phase: phase + "↻")
                result.steps.append(st)
            }
            return st
        }
        if !o.fixedRates.isEmpty {
            // --fixed-rate: one step at each rate, no ramp (the same work for every target).
            result.workload = "fixed"
            for r in o.fixedRates { result.steps.append(try step(rate: r, phase: "fixed")) }
        } else {
            try searchMaximumRate(o, since: started) { try confirmed(rate: $0, phase: "ramp") }
        }
        let best = o.fixedRates.isEmpty ? result.recordBest() : nil
        result.brokerRSSBytes = server.brokerRSS
        result.brokerRSSPerConnectionBytes = Double(server.brokerRSS - rss0) / Double(max(1, subscribers))
        if let best, o.fractions {
            for (f, name) in [(0.25, "25%"), (0.5, "50%"), (0.75, "75%")] {
                let st = try confirmed(rate: best.offeredMessagesPerSecond * f, phase: name)
                switch name {
                case "25%": result.latencyAt25 = st.latency
                case "50%": result.latencyAt50 = st.latency
                default: result.latencyAt75 = st.latency
                }
            }
        }
        // Fixed rates (e.g. the issue's 280 msg/s = 280k deliveries/s): only where the target sustained them, since
        // an overloaded step would pollute the loss totals.
        for r in o.extraRates where o.fixedRates.isEmpty {
            if let best, r <= best.offeredMessagesPerSecond * 1.05 {
                _ = try confirmed(rate: r, phase: "fixed")
            } else {
                result.notes.append("fixed rate \(r) msg/s skipped: above the maximum sustained")
            }
        }

        // Totals over every step: duplicates, gaps, and what never arrived after the last message.
        loop.run(seconds: 0.5) { false }
        var lost: UInt64 = 0, dups: UInt64 = 0, malformed: UInt64 = 0
        if stepIndex > 0 {
            for k in 1...stepIndex {
                for r in try reports(step: k) { lost += r.gaps; dups += r.duplicates; malformed += r.malformed ?? 0 }
            }
            // What never reached a connection that the server closed (or that never got ready) is counted apart.
            var closedConnections = 0
            var lostOnClosed: UInt64 = 0
            for r in try reports(step: stepIndex, final: true) {
                let closed = Set(r.closedIndices ?? [])
                closedConnections += closed.count
                for (j, last) in (r.lastSeq ?? []).enumerated() {
                    if closed.contains(j) { lostOnClosed += seq - last } else { lost += seq - last }
                }
            }
            if closedConnections > 0 {
                result.closedConnections = closedConnections
                result.lostOnClosedConnections = lostOnClosed
                result.notes.append("\(closedConnections) connections closed (or never ready): \(lostOnClosed) deliveries missing on them, not counted as lost")
            }
        }
        result.lost = lost
        if malformed > 0 { result.notes.append("malformed messages (not a header at the start): \(malformed)") }
        result.duplicated = dups
        result.harnessCPUSeconds = harnessCPU - hcpu0
        if options.target == .agentchat, let p = publisher {
            result.notes.append("acks \(p.acks) of \(seq) sent; error frames \(p.errors)")
        }
        return result
    }
}

// MARK: - idle

extension Harness {
    func runIdle(holdSeconds: Double) throws -> RunResult {
        loop.run(seconds: 0.5) { false }
        let rss0 = server.brokerRSS
        let (ready, failed) = try connect(mode: .idle, payloadSize: 0, withPublisher: false)
        var result = RunResult(workload: "idle", target: options.target.rawValue, date: Self.isoNow(),
                               command: options.command, connections: options.connections, payloadBytes: nil,
                               harnessProcesses: workers.count)
        if failed > 0 || ready < options.connections { result.notes.append("failed \(options.connections - ready)") }
        loop.run(seconds: 2) { false }
        let rss1 = server.brokerRSS
        let cpu0 = server.brokerCPU, h0 = harnessCPU, t0 = nowNs()
        loop.run(seconds: holdSeconds) { false }
        let seconds = Double(nowNs() - t0) / 1e9
        let cpu = server.brokerCPU - cpu0
        // Reports also tell whether connections were dropped while held.
        let reps = try reports(step: 0)
        let dropped = reps.map(\.failed).reduce(0, +) - failed
        if dropped > 0 { result.notes.append("dropped while idle: \(dropped)") }
        result.brokerRSSBaselineBytes = rss0
        result.brokerRSSBytes = rss1
        result.brokerRSSPerConnectionBytes = Double(rss1 - rss0) / Double(max(1, ready))
        result.brokerCPUMicrosecondsPerSecondPerConnection = cpu * 1e6 / seconds / Double(max(1, ready))
        result.harnessCPUSeconds = harnessCPU - h0
        result.notes.append(String(format: "held %.1f s; broker CPU %.3f s", seconds, cpu))
        log(String(format: "idle %@: %d connections, RSS %.2f KiB/connection, CPU %.3f µs/s per connection",
                   options.target.rawValue as NSString, ready, result.brokerRSSPerConnectionBytes! / 1024,
                   result.brokerCPUMicrosecondsPerSecondPerConnection!))
        return result
    }
}

// MARK: - churn

extension Harness {
    /// `churn`: each of the connections is closed as soon as it has logged in and a new one opened in its place,
    /// for `seconds`. Reports sessions per second (connect, WebSocket upgrade, login: agentchat's signed
    /// challenge, NATS CONNECT/PONG, MQTT CONNECT/CONNACK, the mirror's upgrade), broker CPU per session and
    /// the connect → ready latency.
    func runChurn(seconds: Double) throws -> RunResult {
        let (ready, failed) = try connect(mode: .idle, payloadSize: 0, withPublisher: false)
        var result = RunResult(workload: "churn", target: options.target.rawValue, date: Self.isoNow(),
                               command: options.command, connections: options.connections, payloadBytes: nil,
                               harnessProcesses: workers.count)
        if failed > 0 || ready < options.connections { result.notes.append("failed \(options.connections - ready)") }
        let cpu0 = server.brokerCPU, aux0 = server.auxCPU, h0 = harnessCPU, t0 = nowNs()
        if options.target == .agentchat && options.churnWithTokens {
            result.target += " (token login)"
            result.notes.append("reopened connections log in with their last session token")
        }
        for w in workers { w.send(options.churnWithTokens ? "churn \(seconds) token" : "churn \(seconds)") }
        let dec = JSONDecoder()
        let reps = try workers.map { w -> WorkerReport in
            guard let line = w.nextLine(loop, timeout: seconds + 60) else { throw HarnessError("a worker stopped answering") }
            return try dec.decode(WorkerReport.self, from: Data(line.utf8))
        }
        let elapsed = Double(nowNs() - t0) / 1e9
        let cpu = server.brokerCPU - cpu0
        var hist = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                     numberOfSignificantValueDigits: .three)
        for r in reps { for pair in r.latency { _ = hist.record(pair[0], count: pair[1]) } }
        let sessions = reps.map(\.received).reduce(0, +)
        let churnFailed = reps.map(\.failed).reduce(0, +)
        result.sessionsPerSecond = Double(sessions) / elapsed
        result.brokerCPUMicrosecondsPerSession = sessions > 0 ? cpu * 1e6 / Double(sessions) : nil
        let ms = { (p: Double) in Double(hist.valueAtPercentile(p)) / 1000 }
        result.setupLatency = Latency(p50: ms(50), p99: ms(99), p999: ms(99.9))
        result.harnessCPUSeconds = harnessCPU - h0
        result.notes.append(String(format: "%.1f s; broker CPU %.2f s (%.0f%%), helpers %.2f s; failed sessions %d",
                                   elapsed, cpu, cpu / elapsed * 100, server.auxCPU - aux0, churnFailed))
        log(String(format: "churn %@: %.0f sessions/s, %.0f µs broker CPU per session, setup p50 %.2f p99 %.2f ms, harness CPU %.0f%%",
                   options.target.rawValue as NSString, result.sessionsPerSecond!, result.brokerCPUMicrosecondsPerSession ?? 0,
                   ms(50), ms(99), result.harnessCPUSeconds / elapsed * 100))
        return result
    }
}

// MARK: - rooms

extension Harness {
    /// `rooms`: connections/size rooms of `size` members, every member publishing at the same rate to its own room
    /// (NATS subject, MQTT topic, agentchat channel). The per-member rate is stepped up as in broadcast; a delivery
    /// is one message reaching one other member (the sender's own copy, which MQTT and agentchat send back, is not
    /// counted).
    func runRooms(size: Int, _ o: BroadcastOptions) throws -> RunResult {
        guard options.target != .lwsMirror else { throw HarnessError("lws-mirror has one broadcast group: no rooms") }
        let rss0 = server.brokerRSS
        let (ready, failed) = try connect(mode: .subscribe, payloadSize: o.payload, withPublisher: false, roomSize: size)
        var result = RunResult(workload: "rooms", target: targetName, date: Self.isoNow(), command: options.command,
                               connections: options.connections, payloadBytes: o.payload,
                               harnessProcesses: workers.count + 1)
        if failed > 0 || ready < options.connections { result.notes.append("failed connections: \(failed)") }
        if options.target == .agentchat {
            result.notes.append(options.signEachMessage ? "every message signed" : "one signature per member, reused")
        }
        var stepIndex = 0
        let started = nowNs()
        let hcpu0 = harnessCPU

        func step(rate: Double, phase: String) throws -> StepResult {
            stepIndex += 1
            let k = stepIndex
            let cpu0 = server.brokerCPU, aux0 = server.auxCPU, h0 = harnessCPU
            let redis0 = server.redisCommandCalls()
            let t0 = nowNs()
            for w in workers { w.send("publish \(k) \(rate) \(o.stepSeconds)") }
            var sent = 0
            for w in workers {
                guard let line = w.nextLine(loop, timeout: o.stepSeconds + 30), line.hasPrefix("sent ") else {
                    throw HarnessError("a worker did not finish publishing")
                }
                sent += Int(line.dropFirst(5)) ?? 0
            }
            let sendSeconds = max(Double(nowNs() - t0) / 1e9, o.stepSeconds)
            let expected = UInt64(sent * (size - 1))
            var reps: [WorkerReport] = []
            let drainStart = nowNs()
            loop.run(seconds: 0.2) { false }
            while true {
                reps = try reports(step: k)
                if reps.map(\.received).reduce(0, +) >= expected || Double(nowNs() - drainStart) / 1e9 > 3 { break }
                loop.run(seconds: 0.3) { false }
            }
            let brokerCPU = server.brokerCPU - cpu0
            let window = Double(nowNs() - t0) / 1e9
            var hist = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                         numberOfSignificantValueDigits: .three)
            for r in reps { for pair in r.latency { _ = hist.record(pair[0], count: pair[1]) } }
            let delivered = reps.map(\.received).reduce(0, +)
            let dups = reps.map(\.duplicates).reduce(0, +), gaps = reps.map(\.gaps).reduce(0, +)
            let ms = { (p: Double) in Double(hist.valueAtPercentile(p)) / 1000 }
            let lat = Latency(p50: ms(50), p99: ms(99), p999: ms(99.9))
            let ratio = expected == 0 ? 0 : Double(delivered) / Double(expected)
            var st = StepResult(step: k, phase: phase, offeredMessagesPerSecond: Double(sent) / sendSeconds,
                                seconds: sendSeconds, windowSeconds: window, messagesSent: sent,
                                offeredDeliveries: Int(expected),
                                delivered: delivered, deliveredPerSecond: Double(delivered) / sendSeconds, ratio: ratio,
                                latency: lat, duplicates: dups, gaps: gaps, brokerCPUSeconds: brokerCPU,
                                deliveriesPerBrokerCPUSecond: brokerCPU > 0 ? Double(delivered) / brokerCPU : 0,
                                auxCPUSeconds: server.auxCPU - aux0, harnessCPUSeconds: harnessCPU - h0,
                                passed: ratio >= o.minRatio && lat.p99 <= o.p99LimitMs && dups == 0 && gaps == 0)
            st.count(reports: reps, redis: RedisStats.delta(redis0, server.redisCommandCalls()))
            log(String(format: "rooms step %2d %-5@ %5.2f msg/s per member, %7.0f msg/s → %8.0f deliveries/s ratio %.3f p50 %.2f p99 %.2f ms, broker CPU %.0f%%, harness CPU %.0f%% %@",
                       k, phase as NSString, rate, st.offeredMessagesPerSecond, st.deliveredPerSecond, ratio, lat.p50,
                       lat.p99, brokerCPU / window * 100, st.harnessCPUSeconds / window * 100,
                       (st.passed ? "ok" : "FAIL") as NSString))
            return st
        }

        var perMember: [Int: Double] = [:]
        func confirmed(rate: Double, phase: String) throws -> StepResult {
            var st = try step(rate: rate, phase: phase)
            perMember[st.step] = rate
            result.steps.append(st)
            if !st.passed {
                st = try step(rate: rate, phase: phase + "↻")
                perMember[st.step] = rate
                result.steps.append(st)
            }
            return st
        }
        try searchMaximumRate(o, since: started) { try confirmed(rate: $0, phase: "ramp") }
        let best = result.recordBest()
        result.brokerRSSBytes = server.brokerRSS
        result.brokerRSSPerConnectionBytes = Double(server.brokerRSS - rss0) / Double(max(1, ready))
        if let best, o.fractions, let r = perMember[best.step] {
            for (f, name) in [(0.25, "25%"), (0.5, "50%"), (0.75, "75%")] {
                let st = try confirmed(rate: r * f, phase: name)
                switch name {
                case "25%": result.latencyAt25 = st.latency
                case "50%": result.latencyAt50 = st.latency
                default: result.latencyAt75 = st.latency
                }
            }
        }
        var lost: UInt64 = 0, dups: UInt64 = 0
        if stepIndex > 0 {
            for k in 1...stepIndex { for r in try reports(step: k) { dups += r.duplicates } }
            for r in try reports(step: stepIndex, final: true) { lost += r.lost ?? 0 }
        }
        result.lost = lost
        result.duplicated = dups
        result.harnessCPUSeconds = harnessCPU - hcpu0
        result.notes.append("\(options.connections / size) rooms of \(size); rates are per member: \(result.steps.map { String(format: "%.2f", perMember[$0.step] ?? 0) }.joined(separator: ", "))")
        return result
    }
}
