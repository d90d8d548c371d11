import AgentChatProtocol
import Foundation
import Glibc
import Histogram

// MARK: - viewer sessions (worker side)

/// What every viewer of one worker process has seen: `indicators` frames per viewer since the last `mark`, the
/// largest number of frames one viewer got within one second (per whole second since `mark`), the last `messages`
/// value per channel and, while the publishers run at a known schedule, how old each `messages` value was.
final class ViewerBook {
    var frames: [Int]
    var bucket: [Int]
    var inBucket: [Int]
    var maxInBucket: [Int]
    var lastMessages: [[String: Int64]]
    var markNs: UInt64 = 0
    /// Publishing schedule (start, messages per second per channel) for the age of a `messages` value; 0: unknown.
    var publishStartNs: UInt64 = 0
    var publishRate = 0.0
    /// Each channel's `messages` count when the schedule started (what earlier phases published).
    var publishBase: Int64 = 0
    var ages = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                 numberOfSignificantValueDigits: .three)
    var updatesWithoutRef = 0

    init(count: Int) {
        frames = Array(repeating: 0, count: count)
        bucket = Array(repeating: -1, count: count)
        inBucket = Array(repeating: 0, count: count)
        maxInBucket = Array(repeating: 0, count: count)
        lastMessages = Array(repeating: [:], count: count)
    }

    func mark(startNs: UInt64, rate: Double, base: Int64) {
        for i in frames.indices { frames[i] = 0; bucket[i] = -1; inBucket[i] = 0; maxInBucket[i] = 0 }
        markNs = nowNs()
        publishStartNs = startNs
        publishRate = rate
        publishBase = base
        ages = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                 numberOfSignificantValueDigits: .three)
    }

    func update(viewer i: Int, channels: [ChannelIndicators], snapshot: Bool) {
        let now = nowNs()
        if !snapshot && markNs > 0 {
            frames[i] += 1
            let b = Int((now - markNs) / 1_000_000_000)
            if b != bucket[i] { bucket[i] = b; inBucket[i] = 0 }
            inBucket[i] += 1
            maxInBucket[i] = max(maxInBucket[i], inBucket[i])
        }
        for c in channels where c.listed {
            let id = c.id.rawValue, m = c.messages
            lastMessages[i][id] = m
            if !snapshot && publishRate > 0 && now > publishStartNs {
                // The publisher sends one message per channel at start, then `rate` a second: it reached count m
                // at start + (m − base − 1) / rate; the value's age is now − that.
                let at = Double(publishStartNs) + Double(m - publishBase - 1) / publishRate * 1e9
                let age = max(1, (Double(now) - at) / 1000)
                _ = ages.record(UInt64(min(age, 119_000_000)))
            }
        }
    }
}

/// An unauthenticated agentchat connection acting as a viewer: on `hello` it sends `indicators.subscribe`
/// (channels, or the directory); ready on the snapshot (the `indicators` frame with `ref`).
final class ViewerSession: SessionHandler {
    let context: SessionContext
    let book: ViewerBook
    let index: Int
    let channels: [String]
    private var isReady = false

    init(context: SessionContext, book: ViewerBook, index: Int, channels: [String]) {
        self.context = context
        self.book = book
        self.index = index
        self.channels = channels
    }

    func opened(_ c: WebSocketConnection) {}

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        guard let frame = Wire.decode(payload) else { return }
        switch frame {
        case .hello:
            guard let subscribe = Wire.viewerSubscribe(channels) else {
                return context.fail("viewer: bad channel ids \(channels)")
            }
            c.send(Wire.encode(subscribe), binary: false)
        case .indicators(let ref, let indicators):
            let snapshot = ref == "s1"
            book.update(viewer: index, channels: indicators, snapshot: snapshot)
            if snapshot && !isReady { isReady = true; context.ready += 1 }
        case .error(let error, let ref):
            context.protocolErrors += 1
            if context.firstFailure == nil {
                context.firstFailure = "viewer error: \(String(decoding: payload, as: UTF8.self))"
            }
            if ref == "s1" { context.fail("viewer: \(error.code)") }
        default: break
        }
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("viewer: \(reason)") }
}

/// A worker's answer to `vreport`: its viewers' `indicators` frames since `mark`.
struct ViewerReport: Codable {
    var viewers: Int
    var open: Int
    var frames: Int
    var seconds: Double
    var minFrames: Int
    var maxFrames: Int
    var maxFramesInOneSecond: Int
    /// (age µs, count) pairs: how old each `messages` value was when it arrived.
    var ages: [[UInt64]]
}

/// A worker's answer to `vcheck ch=N,…`: its viewers' last `messages` value per channel against the publishers'
/// acknowledged counts.
struct ViewerCheck: Codable {
    var viewers: Int
    var pairs: Int
    var fresh: Int
    var maxBehind: Int64
}

extension ViewerBook {
    func report(open: Int) -> ViewerReport {
        var pairs: [[UInt64]] = []
        for v in ages.recordedValues() { pairs.append([v.value, UInt64(v.count)]) }
        return ViewerReport(viewers: frames.count, open: open, frames: frames.reduce(0, +),
                            seconds: Double(nowNs() - markNs) / 1e9, minFrames: frames.min() ?? 0,
                            maxFrames: frames.max() ?? 0, maxFramesInOneSecond: maxInBucket.max() ?? 0, ages: pairs)
    }

    func check(_ expected: [String: Int64]) -> ViewerCheck {
        var pairs = 0, fresh = 0
        var behind: Int64 = 0
        for last in lastMessages {
            for (ch, n) in expected {
                pairs += 1
                let seen = last[ch] ?? -1
                if seen == n { fresh += 1 }
                behind = max(behind, n - seen)
            }
        }
        return ViewerCheck(viewers: lastMessages.count, pairs: pairs, fresh: fresh, maxBehind: behind)
    }
}

// MARK: - the workload (coordinator side)

struct IndicatorsOptions {
    var channels = 10
    var channelRate = 200.0
    var holdSeconds = 20.0
    var directory = false
    var indicatorRate = 4.0
    var payload = 256
}

/// What an `indicators` run measured (in `RunResult.indicators`).
struct IndicatorsResult: Codable {
    var channels: Int
    var messagesPerSecondPerChannel: Double
    var viewers: Int
    var viewersReady: Int
    var subscription: String
    var holdSeconds: Double
    var indicatorRate: Double
    var framesPerViewerPerSecond: Double
    var maxFramesPerViewerPerSecond: Double
    var minFramesPerViewerPerSecond: Double
    var maxFramesInOneSecond: Int
    var coalescingHeld: Bool
    /// Age of the `messages` value a viewer received (now − when the publishers reached that count), ms.
    var messagesAge: Latency
    var publishedBaseline: Int
    var publishedWithViewers: Int
    var acknowledged: Int
    var freshPairs: Int
    var checkedPairs: Int
    var maxBehind: Int64
    var brokerCPUBaselineSeconds: Double
    var brokerCPUWithViewersSeconds: Double
    var brokerCPUMicrosecondsPerMessage: Double
    var brokerCPUMicrosecondsPerSecondPerViewer: Double
    var brokerRSSPerViewerBytes: Double
    var redisCPUWithViewersSeconds: Double
    var harnessCPUShare: Double
}

extension Harness {
    /// `indicators`: K listed channels, each with its own publisher agent (in the coordinator) sending at a fixed
    /// rate; first `hold` seconds with no viewers (broker CPU per published message), then V viewers subscribed to
    /// every channel (or the directory) for another `hold` seconds (broker CPU and RSS per viewer, frames per
    /// viewer per second, age of the `messages` counter); then the publishers stop, every message is
    /// acknowledged, two indicator ticks pass and every viewer's last `messages` value must equal the acknowledged
    /// count of its channel.
    func runIndicators(_ o: IndicatorsOptions) throws -> RunResult {
        guard options.target == .agentchat else {
            throw HarnessError("indicators: agentchat only (the peers have no public indicators)")
        }
        let port = server.endpoint.port
        var pubs: [Publisher] = []
        var channelIDs: [String] = []
        log("registering \(o.channels) publisher agents, creating and listing \(o.channels) channels")
        for k in 0..<o.channels {
            let id = AgentIdentity()
            try Registration.register(id, name: "bench-pub-\(k)", port: port)
            let p = try Publisher(loop: loop, server: server, payloadSize: o.payload, identity: id)
            let reply = try p.request("c1", .create(name: "busy-\(k)", open: false, members: []))
            guard let channelID = reply.channelDescription?.id else { throw HarnessError("channel not created") }
            let ch = channelID.rawValue
            _ = try p.request("l1", .listing(channelID, listed: true, title: "Busy \(k)", topic: "load test"))
            try p.publishKeys(channel: ch, runTag: runTag + "p\(k)")
            pubs.append(p)
            channelIDs.append(ch)
        }
        var seqs = [UInt64](repeating: 0, count: o.channels)
        let rate = o.channelRate

        /// Every publisher sends `rate` messages per second for `seconds`; returns the messages sent.
        func publish(seconds: Double, step: Int, during: () -> Void = {}) throws -> Int {
            let per = Int(rate * seconds)
            let t0 = nowNs()
            var sent = 0
            var done = 0
            while done < per {
                let due = min(per, Int(Double(nowNs() - t0) / 1e9 * rate) + 1)
                while done < due {
                    for (k, p) in pubs.enumerated() {
                        seqs[k] += 1
                        p.publish(MessageHeader(seq: seqs[k], sentNs: nowNs(), step: UInt16(step)))
                        sent += 1
                    }
                    done += 1
                }
                loop.poll(timeoutMs: 1)
                during()
                if pubs.contains(where: { !$0.connection.isOpen }) { throw HarnessError("a publisher connection closed") }
            }
            return sent
        }
        func waitAcks() -> Int {
            loop.run(seconds: 15) { zip(pubs, seqs).allSatisfy { $0.acks >= Int($1) } }
            return pubs.map(\.acks).reduce(0, +)
        }

        // Phase 1: publishers only.
        log(String(format: "phase 1: %d channels × %.0f msg/s for %.0f s, no viewers", o.channels, rate, o.holdSeconds))
        let c1 = server.brokerCPU
        let t1 = nowNs()
        let sent1 = try publish(seconds: o.holdSeconds, step: 1)
        _ = waitAcks()
        let cpuBase = server.brokerCPU - c1
        let base1 = Double(nowNs() - t1) / 1e9
        let rss0 = server.brokerRSS

        // Viewers, spread over worker processes, one source address each.
        let n = options.connections
        let w = min(workerCount, max(1, n))
        let subscription = o.directory ? "directory" : channelIDs.joined(separator: ",")
        for i in 0..<w {
            let count = n / w + (i < n % w ? 1 : 0)
            let e = server.endpoint
            let args = ["--target", e.target.rawValue, "--host", e.host, "--port", String(e.port), "--path", e.path,
                        "--source", "127.0.0.\(2 + i)", "--connections", String(count), "--mode", "idle",
                        "--subprotocol", e.subprotocol ?? Wire.subprotocol, "--viewer-channels", subscription]
            workers.append(try WorkerProcess(arguments: args, connections: count, loop: loop))
        }
        // The viewers connect while the publishers are quiet.
        let (ready, failed) = try awaitReady(workers)
        log("\(ready) viewers ready, \(failed) failed, over \(workers.count) worker processes")

        // Phase 2: the same publishing with the viewers watching.
        log(String(format: "phase 2: %d channels × %.0f msg/s for %.0f s, %d viewers", o.channels, rate, o.holdSeconds, ready))
        let start = nowNs()
        for wp in workers { wp.send("mark \(start) \(rate) \(seqs[0])") }
        let c2 = server.brokerCPU, a2 = server.auxCPU, h2 = harnessCPU
        let sent2 = try publish(seconds: o.holdSeconds, step: 2)
        let window = Double(nowNs() - start) / 1e9
        let cpuViewers = server.brokerCPU - c2
        let auxViewers = server.auxCPU - a2
        let harness = harnessCPU - h2
        let rss1 = server.brokerRSS
        let dec = JSONDecoder()
        for wp in workers { wp.send("vreport") }
        let reps = try workers.map { wp -> ViewerReport in
            guard let line = wp.nextLine(loop, timeout: 30) else { throw HarnessError("a worker stopped answering") }
            return try dec.decode(ViewerReport.self, from: Data(line.utf8))
        }

        // At rest: every message acknowledged, two ticks, then every viewer's last value against the count.
        let acked = waitAcks()
        loop.run(seconds: 2 / o.indicatorRate + 0.3) { false }
        let expected = zip(channelIDs, pubs).map { "\($0)=\($1.acks)" }.joined(separator: ",")
        for wp in workers { wp.send("vcheck \(expected)") }
        let checks = try workers.map { wp -> ViewerCheck in
            guard let line = wp.nextLine(loop, timeout: 30) else { throw HarnessError("a worker stopped answering") }
            return try dec.decode(ViewerCheck.self, from: Data(line.utf8))
        }

        var hist = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                     numberOfSignificantValueDigits: .three)
        for r in reps { for pair in r.ages { _ = hist.record(pair[0], count: pair[1]) } }
        let ms = { (p: Double) in Double(hist.valueAtPercentile(p)) / 1000 }
        let frames = reps.map(\.frames).reduce(0, +)
        let secs = reps.map(\.seconds).max() ?? window
        let viewers = max(1, reps.map(\.viewers).reduce(0, +))
        let perViewer = Double(frames) / Double(viewers) / secs
        let maxPer = Double(reps.map(\.maxFrames).max() ?? 0) / secs
        let minPer = Double(reps.map(\.minFrames).min() ?? 0) / secs
        let maxOne = reps.map(\.maxFramesInOneSecond).max() ?? 0
        // Slack: one frame a second (a tick that falls on either side of a second's boundary).
        let held = maxPer <= o.indicatorRate * 1.05 && Double(maxOne) <= o.indicatorRate + 1
        let perMsg = (cpuBase / Double(max(1, sent1))) * 1e6
        let extra = cpuViewers - cpuBase * (window / base1)
        let ind = IndicatorsResult(
            channels: o.channels, messagesPerSecondPerChannel: rate, viewers: n, viewersReady: ready,
            subscription: o.directory ? "directory" : "\(o.channels) channels", holdSeconds: o.holdSeconds,
            indicatorRate: o.indicatorRate, framesPerViewerPerSecond: perViewer, maxFramesPerViewerPerSecond: maxPer,
            minFramesPerViewerPerSecond: minPer, maxFramesInOneSecond: maxOne, coalescingHeld: held,
            messagesAge: Latency(p50: ms(50), p99: ms(99), p999: ms(99.9)),
            publishedBaseline: sent1, publishedWithViewers: sent2, acknowledged: acked,
            freshPairs: checks.map(\.fresh).reduce(0, +), checkedPairs: checks.map(\.pairs).reduce(0, +),
            maxBehind: checks.map(\.maxBehind).max() ?? 0,
            brokerCPUBaselineSeconds: cpuBase, brokerCPUWithViewersSeconds: cpuViewers,
            brokerCPUMicrosecondsPerMessage: perMsg,
            brokerCPUMicrosecondsPerSecondPerViewer: extra / window / Double(max(1, ready)) * 1e6,
            brokerRSSPerViewerBytes: Double(rss1 - rss0) / Double(max(1, ready)),
            redisCPUWithViewersSeconds: auxViewers, harnessCPUShare: harness / window)
        var result = RunResult(workload: "indicators", target: targetName, date: Self.isoNow(), command: options.command,
                               connections: n, payloadBytes: o.payload, harnessProcesses: workers.count + 1)
        result.indicators = ind
        result.brokerRSSBaselineBytes = rss0
        result.brokerRSSBytes = rss1
        result.brokerRSSPerConnectionBytes = ind.brokerRSSPerViewerBytes
        result.harnessCPUSeconds = harness
        if failed > 0 || ready < n { result.notes.append("failed viewers: \(failed)") }
        let errors = pubs.map(\.errors).reduce(0, +)
        if errors > 0 { result.notes.append("publisher errors: \(errors)") }
        result.notes.append(String(format: "phase 1 (no viewers) %.1f s, broker CPU %.2f s; phase 2 %.1f s, broker CPU %.2f s, Redis %.2f s",
                                   base1, cpuBase, window, cpuViewers, auxViewers))
        log(String(format: "indicators: %.2f frames/s per viewer (max %.2f, most in one second %d; limit %.0f) %@; messages age p50 %.0f p99 %.0f ms; at rest %d/%d fresh (max behind %d)",
                   perViewer, maxPer, maxOne, o.indicatorRate, (held ? "ok" : "OVER") as NSString, ms(50), ms(99),
                   ind.freshPairs, ind.checkedPairs, ind.maxBehind))
        return result
    }
}

extension Report {
    static func indicatorsTable(_ runs: [RunResult]) -> String {
        var s = "| target | channels × msg/s | viewers (ready) | subscribed to | indicator frames per viewer per s (max; most in 1 s) | limit | messages age p50 / p99 ms | fresh at rest | broker CPU per message | broker CPU per viewer | broker RSS per viewer | harness CPU |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for r in runs {
            guard let i = r.indicators else { continue }
            s += "| \(r.target) | \(i.channels) × \(f(i.messagesPerSecondPerChannel, 0)) | \(i.viewers) (\(i.viewersReady)) | \(i.subscription) | \(f(i.framesPerViewerPerSecond, 2)) (\(f(i.maxFramesPerViewerPerSecond, 2)); \(i.maxFramesInOneSecond)) \(i.coalescingHeld ? "ok" : "OVER") | \(f(i.indicatorRate, 0))/s | \(f(i.messagesAge.p50, 0)) / \(f(i.messagesAge.p99, 0)) | \(i.freshPairs)/\(i.checkedPairs) | \(f(i.brokerCPUMicrosecondsPerMessage, 1)) µs | \(f(i.brokerCPUMicrosecondsPerSecondPerViewer, 1)) µs/s | \(f(i.brokerRSSPerViewerBytes / 1024, 1)) KiB | \(f(i.harnessCPUShare * 100, 0))% of a core |\n"
        }
        return s
    }
}
