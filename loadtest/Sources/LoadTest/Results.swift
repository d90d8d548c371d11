import Foundation

/// Latency percentiles, milliseconds.
struct Latency: Codable {
    var p50: Double
    var p99: Double
    var p999: Double
}

/// One rate step of a broadcast run.
struct StepResult: Codable {
    var step: Int
    /// "ramp", or "25%", "50%", "75%" for the runs at a fraction of the maximum.
    var phase: String
    var offeredMessagesPerSecond: Double
    var seconds: Double
    /// Sending plus draining: the window the CPU figures were read over (absent in older results).
    var windowSeconds: Double?
    var messagesSent: Int
    var offeredDeliveries: Int
    var delivered: UInt64
    var deliveredPerSecond: Double
    var ratio: Double
    var latency: Latency
    var duplicates: UInt64
    var gaps: UInt64
    var brokerCPUSeconds: Double
    var deliveriesPerBrokerCPUSecond: Double
    var auxCPUSeconds: Double
    var harnessCPUSeconds: Double
    var passed: Bool
    /// WebSocket messages the subscribers received with this step's deliveries, and deliveries per such message
    /// (agentchat batches several messages in one `messages` frame; NATS several MSGs per WebSocket message).
    var frames: UInt64?
    var messagesPerFrame: Double?
    /// agentchat: Redis commands run over the step (`INFO commandstats` before and after, the harness's own INFO
    /// excluded; commands inside the broker's scripts included), per message sent, and per command.
    var redisCommands: UInt64?
    var redisCommandsPerMessage: Double?
    var redisCommandCounts: [String: UInt64]?
    /// agentchat broadcast: the publisher's send → `message.ack` (the path to Redis and back, without the fan-out).
    var ackLatency: Latency?

    /// Fills the counters from the workers' reports and the Redis command deltas.
    mutating func count(reports: [WorkerReport], redis: [String: UInt64]?) {
        let f = reports.compactMap(\.frames).reduce(0, +)
        frames = f
        messagesPerFrame = f > 0 ? Double(delivered) / Double(f) : nil
        if let redis {
            let total = redis.values.reduce(0, +)
            redisCommands = total
            redisCommandsPerMessage = messagesSent > 0 ? Double(total) / Double(messagesSent) : nil
            redisCommandCounts = redis
        }
    }
}

/// `resume`: a backlog published to a channel, then subscribers resuming from before it (agentchat only).
struct ResumeResult: Codable {
    struct Try: Codable {
        /// From `channel.subscribe` sent to the first message of the backlog, and to the last.
        var firstMs: Double?
        var allMs: Double?
        var received: UInt64
        var lost: UInt64
        var duplicated: UInt64
        /// Offsets skipped forward (a jump in the sequence): out of order or missing.
        var gaps: UInt64
        var frames: UInt64
        var messagesPerFrame: Double?
        var brokerCPUSeconds: Double
        var redisCommands: UInt64?
    }
    var backlog: Int
    var payloadBytes: Int
    /// Publishing the backlog: seconds, messages per second, broker CPU per message, Redis commands per message.
    var publishSeconds: Double
    var publishMessagesPerSecond: Double
    var publishBrokerCPUMicrosecondsPerMessage: Double
    var publishRedisCommandsPerMessage: Double?
    var tries: [Try]
    /// Medians over the tries.
    var firstMs: Double?
    var allMs: Double?
    var messagesPerFrame: Double?
    var redisCommandsPerMessage: Double?
    var brokerCPUMillisecondsPerReplay: Double?
}

func median(_ xs: [Double]) -> Double? {
    guard !xs.isEmpty else { return nil }
    let s = xs.sorted()
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Everything one run measured; written as JSON to loadtest/results/.
struct RunResult: Codable {
    var workload: String
    var target: String
    var date: String
    var command: String
    var connections: Int
    var payloadBytes: Int?
    var harnessProcesses: Int
    var steps: [StepResult] = []
    // broadcast
    var maxSustainedDeliveriesPerSecond: Double?
    var maxSustainedMessagesPerSecond: Double?
    var deliveriesPerBrokerCPUSecondAtMax: Double?
    /// Broker plus helpers (Redis for agentchat).
    var deliveriesPerServerCPUSecondAtMax: Double?
    var latencyAt25: Latency?
    var latencyAt50: Latency?
    var latencyAt75: Latency?
    var lost: UInt64 = 0
    var duplicated: UInt64 = 0
    /// broadcast: subscriber connections not open at the end (closed by the server, or never ready), and what
    /// they missed (not in `lost`, which counts the connections that stayed open).
    var closedConnections: Int?
    var lostOnClosedConnections: UInt64?
    // idle and broadcast
    var brokerRSSBaselineBytes: Int?
    var brokerRSSBytes: Int?
    var brokerRSSPerConnectionBytes: Double?
    var brokerCPUMicrosecondsPerSecondPerConnection: Double?
    // churn
    var sessionsPerSecond: Double?
    var brokerCPUMicrosecondsPerSession: Double?
    var setupLatency: Latency?
    var harnessCPUSeconds: Double = 0
    var harnessCPUShareAtMax: Double?
    // indicators
    var indicators: IndicatorsResult?
    // resume
    var resume: ResumeResult?
    /// agentchat: broker processes per broker (--broker-processes); nil for one.
    var brokerProcesses: Int?
    /// Connections per agent (agentchat, --connections-per-agent); nil for one.
    var connectionsPerAgent: Int?
    var notes: [String] = []
}

enum Report {
    static func f(_ x: Double?, _ digits: Int = 1) -> String {
        guard let x, x.isFinite else { return "—" }
        return String(format: "%.\(digits)f", x)
    }

    static func k(_ x: Double?) -> String {
        guard let x, x.isFinite else { return "—" }
        if x >= 10_000 { return String(format: "%.0fk", x / 1000) }
        if x >= 1000 { return String(format: "%.1fk", x / 1000) }
        return String(format: "%.0f", x)
    }

    static func lat(_ l: Latency?) -> String {
        guard let l else { return "—" }
        return "\(f(l.p50)) / \(f(l.p99)) / \(f(l.p999))"
    }

    /// The per-step table printed during and after a broadcast run.
    static func stepTable(_ r: RunResult) -> String {
        var s = "| step | phase | msg/s offered | deliveries/s | delivered/offered | p50 / p99 / p99.9 ms | deliveries per broker CPU-s | broker CPU (send + drain) | harness CPU | messages per frame | Redis commands per message | dup | gaps | ok |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for st in r.steps {
            s += "| \(st.step) | \(st.phase) | \(f(st.offeredMessagesPerSecond, 0)) | \(k(st.deliveredPerSecond)) | \(f(st.ratio, 3)) | \(lat(st.latency)) | \(k(st.deliveriesPerBrokerCPUSecond)) | \(f(st.brokerCPUSeconds / (st.windowSeconds ?? st.seconds) * 100, 0))% | \(f(st.harnessCPUSeconds / (st.windowSeconds ?? st.seconds) * 100, 0))% | \(f(st.messagesPerFrame, 2)) | \(f(st.redisCommandsPerMessage, 2)) | \(st.duplicates) | \(st.gaps) | \(st.passed ? "yes" : "no") |\n"
        }
        return s
    }

    /// Side-by-side broadcast table, one row per target.
    static func broadcastTable(_ runs: [RunResult]) -> String {
        let fixedRate = runs.compactMap { r in r.steps.last { $0.phase.hasPrefix("fixed") }.map { $0.offeredMessagesPerSecond * Double(r.connections) } }.first
        var s = "| target | max sustained deliveries/s | deliveries per broker CPU-second | with Redis | p50 / p99 / p99.9 ms at 25% | at 50% | at 75% | at \(fixedRate.map { k($0) } ?? "a fixed rate")/s | broker RSS per connection | lost | duplicated | harness CPU at max |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for r in runs {
            let rss = r.brokerRSSPerConnectionBytes.map { String(format: "%.1f KiB", $0 / 1024) } ?? "—"
            let fixed = r.steps.last { $0.phase.hasPrefix("fixed") }
            let withAux = r.target.hasPrefix("agentchat") ? k(r.deliveriesPerServerCPUSecondAtMax) : "—"
            s += "| \(r.target) | \(k(r.maxSustainedDeliveriesPerSecond)) | \(k(r.deliveriesPerBrokerCPUSecondAtMax)) | \(withAux) | \(lat(r.latencyAt25)) | \(lat(r.latencyAt50)) | \(lat(r.latencyAt75)) | \(fixed.map { lat($0.latency) } ?? "—") | \(rss) | \(r.lost)\(closed(r)) | \(r.duplicated) | \(r.harnessCPUShareAtMax.map { f($0 * 100, 0) + "% of a core" } ?? "—") |\n"
        }
        return s
    }

    /// Fixed-rate runs (--fixed-rate), one row per run: the one step's figures (the last step if several).
    static func fixedTable(_ runs: [RunResult]) -> String {
        var s = "| target | subscribers | payload | msg/s | deliveries/s | delivered/offered | p50 / p99 / p99.9 ms | broker CPU | deliveries per broker CPU-s | Redis CPU | messages per frame | Redis commands per message | lost | duplicated |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for r in runs {
            guard let st = r.steps.last else { continue }
            let window = st.windowSeconds ?? st.seconds
            let agents = r.connectionsPerAgent.map { " (\(r.connections / max(1, $0)) agents × \($0))" } ?? ""
            let redisCPU = r.target.hasPrefix("agentchat") ? f(st.auxCPUSeconds / window * 100, 0) + "%" : "—"
            s += "| \(r.target) | \(r.connections)\(agents) | \(bytes(r.payloadBytes)) | \(f(st.offeredMessagesPerSecond, 0)) | \(k(st.deliveredPerSecond)) | \(f(st.ratio, 3)) | \(lat(st.latency)) | \(f(st.brokerCPUSeconds / window * 100, 0))% of a core | \(k(st.deliveriesPerBrokerCPUSecond)) | \(redisCPU) | \(f(st.messagesPerFrame, 2)) | \(f(st.redisCommandsPerMessage, 2)) | \(r.lost)\(closed(r)) | \(r.duplicated) |\n"
        }
        return s
    }

    /// " (+N on K closed connections)" when subscribers were closed or never ready.
    static func closed(_ r: RunResult) -> String {
        guard let n = r.closedConnections, n > 0 else { return "" }
        return " (+\(r.lostOnClosedConnections ?? 0) on \(n) closed connections)"
    }

    static func bytes(_ n: Int?) -> String {
        guard let n else { return "—" }
        return n >= 1024 && n % 1024 == 0 ? "\(n / 1024) KiB" : "\(n) B"
    }

    static func resumeTable(_ runs: [RunResult]) -> String {
        var s = "| target | backlog | payload | publish msg/s | Redis commands per message published | subscribe → first message ms | subscribe → all ms | messages per frame | Redis commands per message replayed | broker CPU per replay | lost | duplicated | gaps | tries |\n"
        s += "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n"
        for r in runs {
            guard let x = r.resume else { continue }
            let lost = x.tries.map(\.lost).reduce(0, +), dup = x.tries.map(\.duplicated).reduce(0, +)
            let gaps = x.tries.map(\.gaps).reduce(0, +)
            s += "| \(r.target) | \(x.backlog) | \(bytes(x.payloadBytes)) | \(k(x.publishMessagesPerSecond)) | \(f(x.publishRedisCommandsPerMessage, 2)) | \(f(x.firstMs)) | \(f(x.allMs)) | \(f(x.messagesPerFrame, 1)) | \(f(x.redisCommandsPerMessage, 3)) | \(f(x.brokerCPUMillisecondsPerReplay, 0)) ms | \(lost) | \(dup) | \(gaps) | \(x.tries.count) |\n"
        }
        return s
    }

    static func idleTable(_ runs: [RunResult]) -> String {
        var s = "| target | connections | broker RSS per connection | broker CPU per idle connection | failed |\n"
        s += "| --- | --- | --- | --- | --- |\n"
        for r in runs {
            let rss = r.brokerRSSPerConnectionBytes.map { String(format: "%.2f KiB", $0 / 1024) } ?? "—"
            let cpu = r.brokerCPUMicrosecondsPerSecondPerConnection.map { String(format: "%.3f µs/s", $0) } ?? "—"
            s += "| \(r.target) | \(r.connections) | \(rss) | \(cpu) | \(r.notes.first { $0.hasPrefix("failed") } ?? "0") |\n"
        }
        return s
    }

    static func churnTable(_ runs: [RunResult]) -> String {
        var s = "| target | concurrent | sessions/s | broker CPU per session | connect → ready p50 / p99 / p99.9 ms | notes |\n"
        s += "| --- | --- | --- | --- | --- | --- |\n"
        for r in runs {
            s += "| \(r.target) | \(r.connections) | \(k(r.sessionsPerSecond)) | \(f(r.brokerCPUMicrosecondsPerSession, 0)) µs | \(lat(r.setupLatency)) | \(r.notes.joined(separator: "; ")) |\n"
        }
        return s
    }

    /// p99 latency against delivered deliveries/s for every broadcast run: one polyline per target.
    static func svg(_ runs: [RunResult], title: String) -> String {
        let w = 760.0, h = 420.0, left = 70.0, right = 170.0, top = 40.0, bottom = 50.0
        let colors = ["#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd"]
        let points = runs.map { r in
            r.steps.filter { $0.delivered > 0 }.map { ($0.deliveredPerSecond, $0.latency.p99) }.sorted { $0.0 < $1.0 }
        }
        let maxX = max(1, points.flatMap { $0.map(\.0) }.max() ?? 1) * 1.05
        let ymax = 100.0
        func x(_ v: Double) -> Double { left + (w - left - right) * v / maxX }
        func y(_ v: Double) -> Double {  // log scale 0.1 … 100 ms
            let lv = log10(min(max(v, 0.1), ymax))
            return top + (h - top - bottom) * (1 - (lv + 1) / 3)
        }
        var s = ##"<svg xmlns="http://www.w3.org/2000/svg" width="\##(Int(w))" height="\##(Int(h))" font-family="sans-serif" font-size="12">"##
        s += ##"<rect width="100%" height="100%" fill="white"/>"##
        s += ##"<text x="\##(Int(w / 2))" y="22" text-anchor="middle" font-size="14">\##(title)</text>"##
        for t in [0.1, 1, 10, 100] {
            s += ##"<line x1="\##(left)" x2="\##(w - right)" y1="\##(y(t))" y2="\##(y(t))" stroke="#ddd"/>"##
            s += ##"<text x="\##(left - 6)" y="\##(y(t) + 4)" text-anchor="end">\##(t < 1 ? "0.1" : String(Int(t))) ms</text>"##
        }
        let tick = pow(10, floor(log10(maxX))) / (maxX / pow(10, floor(log10(maxX))) < 3 ? 2 : 1)
        var t = 0.0
        while t <= maxX {
            s += ##"<line x1="\##(x(t))" x2="\##(x(t))" y1="\##(top)" y2="\##(h - bottom)" stroke="#eee"/>"##
            s += ##"<text x="\##(x(t))" y="\##(h - bottom + 16)" text-anchor="middle">\##(k(t))</text>"##
            t += tick
        }
        s += ##"<line x1="\##(left)" x2="\##(w - right)" y1="\##(y(50))" y2="\##(y(50))" stroke="#999" stroke-dasharray="4 3"/>"##
        s += ##"<text x="\##(w - right - 4)" y="\##(y(50) - 4)" text-anchor="end" fill="#666">50 ms limit</text>"##
        s += ##"<text x="\##(Int((left + w - right) / 2))" y="\##(Int(h - 12))" text-anchor="middle">deliveries per second</text>"##
        s += ##"<text transform="translate(16,\##(Int(h / 2))) rotate(-90)" text-anchor="middle">p99 latency (log)</text>"##
        for (i, r) in runs.enumerated() {
            let c = colors[i % colors.count]
            let pts = points[i].map { "\(Int(x($0.0))),\(Int(y($0.1)))" }.joined(separator: " ")
            s += ##"<polyline fill="none" stroke="\##(c)" stroke-width="2" points="\##(pts)"/>"##
            for p in points[i] { s += ##"<circle cx="\##(Int(x(p.0)))" cy="\##(Int(y(p.1)))" r="2.5" fill="\##(c)"/>"## }
            let ly = top + 20 + Double(i) * 20
            s += ##"<line x1="\##(w - right + 12)" x2="\##(w - right + 32)" y1="\##(ly)" y2="\##(ly)" stroke="\##(c)" stroke-width="3"/>"##
            s += ##"<text x="\##(w - right + 38)" y="\##(ly + 4)">\##(r.target)</text>"##
        }
        s += "</svg>\n"
        return s
    }

    static func save(_ r: RunResult, directory: String) throws -> String {
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let stamp = r.date.replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
        let name = String(r.target.map { $0.isLetter || $0.isNumber || $0 == "-" ? $0 : "-" })
        let path = "\(directory)/\(r.workload)-\(name)-\(stamp).json"
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys]
        try enc.encode(r).write(to: URL(fileURLWithPath: path))
        return path
    }
}
