import ArgumentParser
import Foundation

/// `compare`: two agentchat brokers side by side (`make bench-compare`, scripts/bench-compare.sh): for broadcast
/// and rooms, the median of every figure over the runs of each target, the runs themselves and the ratio new/old.
///
/// Figures at the maximum sustained rate come from the ramp runs in --results (the best passing step, as in `run`);
/// figures at a fixed rate from the `fixed` steps of those runs (broadcast --extra-rate) and from the runs in
/// --results/fixed, which are one fixed rate each (the last step: rooms with --start-rate = --max-rate).
struct CompareCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Old and new agentchat broker side by side: medians, every run, and the ratio new/old.")

    @Option(help: "Directory of the runs' JSON results (and fixed/ for single fixed-rate runs).") var results: String
    @Option(help: "Markdown output.") var markdown: String
    @Option(help: "JSON output: every figure's median, runs and ratio.") var json: String?
    @Option(help: "Target name of the new build.") var new = "agentchat"
    @Option(help: "Target name of the old build.") var old = TargetChoice.baselineName
    @Option(help: "Column heading of the new build.") var newLabel = "new"
    @Option(help: "Column heading of the old build.") var oldLabel = "old"

    /// One figure of one run; nil when the run did not reach it (e.g. a fixed rate above its maximum).
    struct Figure {
        var name: String
        /// How to show a value.
        var format: (Double) -> String
        var value: (RunResult) -> Double?
        /// Instead of the median and the ratio (e.g. "2 of 3" for a yes/no figure).
        var summary: (([Double]) -> String)? = nil
    }

    struct Row: Codable {
        var workload: String
        var figure: String
        var old: [Double]
        var new: [Double]
        var oldMedian: Double?
        var newMedian: Double?
        var ratio: Double?
    }

    struct Summary: Codable {
        var date: String
        var old: String
        var new: String
        var oldLabel: String
        var newLabel: String
        var runs: [String: Int]
        var lost: [String: UInt64]
        var duplicated: [String: UInt64]
        var rows: [Row]
    }

    func run() throws {
        let dec = JSONDecoder()
        func load(_ dir: String) throws -> [RunResult] {
            guard let names = try? FileManager.default.contentsOfDirectory(atPath: dir) else { return [] }
            return try names.filter { $0.hasSuffix(".json") }.sorted().compactMap { name in
                let data = try Data(contentsOf: URL(fileURLWithPath: dir + "/" + name))
                guard let r = try? dec.decode(RunResult.self, from: data) else {
                    FileHandle.standardError.write(Data("compare: \(dir)/\(name) is not a run's result; skipped\n".utf8))
                    return nil
                }
                return r
            }
        }
        let ramps = try load(results).filter { $0.target == new || $0.target == old }
        let fixedRuns = try load(results + "/fixed").filter { $0.target == new || $0.target == old }
        guard !ramps.isEmpty || !fixedRuns.isEmpty else {
            throw ValidationError("no \(new) or \(old) results in \(results)")
        }

        var md = ""
        var rows: [Row] = []
        var runCounts: [String: Int] = [:], lost: [String: UInt64] = [:], duplicated: [String: UInt64] = [:]
        for workload in ["broadcast", "rooms"] {
            let rs = ramps.filter { $0.workload == workload }
            let fs = fixedRuns.filter { $0.workload == workload }
            guard let any = (rs + fs).first else { continue }
            for (r, kind) in rs.map({ ($0, workload) }) + fs.map({ ($0, workload + "-fixed") }) {
                runCounts["\(kind)/\(r.target)", default: 0] += 1
                lost["\(workload)/\(r.target)", default: 0] += r.lost
                duplicated["\(workload)/\(r.target)", default: 0] += r.duplicated
            }
            var figures: [(Figure, [RunResult])] = []
            if !rs.isEmpty {
                figures += Self.atMaximum.map { ($0, rs) }
            }
            // Fixed rates: the `fixed` steps of the ramp runs (one group per rate), and the single-rate runs (one
            // group per rate asked for: rooms runs report the rate they achieved, sent / seconds).
            let rampRates = Set(rs.flatMap { r in r.steps.filter { $0.phase.hasPrefix("fixed") }.map(\.offeredMessagesPerSecond) })
            for rate in rampRates.sorted() {
                let step = { (r: RunResult) in r.steps.last { $0.phase.hasPrefix("fixed") && $0.offeredMessagesPerSecond == rate } }
                figures += Self.atStep("at \(Report.k(rate)) msg/s", step).map { ($0, rs) }
            }
            let fixedRates = Set(fs.compactMap(Self.askedRate))
            for rate in fixedRates.sorted() {
                let runs = fs.filter { Self.askedRate($0) == rate }
                let label = workload == "rooms"
                    ? "at \(Report.f(rate, rate < 10 ? 1 : 0)) msg/s per member (\(Report.k(rate * Double(any.connections))) msg/s)"
                    : "at \(Report.k(rate)) msg/s (\(Report.k(rate * Double(any.connections))) deliveries/s)"
                figures += Self.atStep(label, Self.fixedStep).map { ($0, runs) }
            }

            let title = workload == "broadcast"
                ? "broadcast: 1 publisher → \(any.connections) subscribers, \(any.payloadBytes ?? 0)-byte payloads"
                : "rooms: \(any.connections / 10) rooms of 10 members, every member publishing \(any.payloadBytes ?? 0)-byte messages"
            md += "### \(title)\n\n"
            md += "| figure | \(oldLabel) | \(newLabel) | new/old | \(oldLabel): every run | \(newLabel): every run |\n"
            md += "| --- | --- | --- | --- | --- | --- |\n"
            for (figure, runs) in figures {
                let o = runs.filter { $0.target == old }.compactMap(figure.value)
                let n = runs.filter { $0.target == new }.compactMap(figure.value)
                let mo = Self.median(o), mn = Self.median(n)
                let ratio = figure.summary != nil ? nil : mo.flatMap { o in mn.map { o > 0 ? $0 / o : .nan } }
                rows.append(Row(workload: workload, figure: figure.name, old: o, new: n, oldMedian: mo, newMedian: mn,
                                ratio: ratio))
                let all = { (v: [Double]) in v.isEmpty ? "—" : v.map(figure.format).joined(separator: ", ") }
                let show = { (v: [Double], m: Double?) in figure.summary.map { $0(v) } ?? m.map(figure.format) ?? "—" }
                md += "| \(figure.name) | \(show(o, mo)) | \(show(n, mn)) | \(Report.f(ratio, 3)) | \(all(o)) | \(all(n)) |\n"
            }
            let count = { (t: String) in
                [workload, workload + "-fixed"].compactMap { runCounts["\($0)/\(t)"] }.map(String.init).joined(separator: " + ")
            }
            md += "\nMedians of \(count(old)) (\(oldLabel)) and \(count(new)) (\(newLabel)) run(s)"
            md += fs.isEmpty || rs.isEmpty ? ", " : " (ramps + single-rate runs), "
            md += "each figure on its own; "
            md += "lost / duplicated over all runs: \(oldLabel) \(lost["\(workload)/\(old)"] ?? 0) / \(duplicated["\(workload)/\(old)"] ?? 0), "
            md += "\(newLabel) \(lost["\(workload)/\(new)"] ?? 0) / \(duplicated["\(workload)/\(new)"] ?? 0).\n\n"
            let failedNotes = (rs + fs).flatMap { r in r.notes.filter { $0.hasPrefix("failed") || $0.contains("skipped") }.map { "\(r.target): \($0)" } }
            if !failedNotes.isEmpty { md += "Notes: " + Array(Set(failedNotes)).sorted().joined(separator: "; ") + ".\n\n" }
        }
        try md.write(toFile: markdown, atomically: true, encoding: .utf8)
        if let json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            enc.nonConformingFloatEncodingStrategy = .convertToString(positiveInfinity: "inf", negativeInfinity: "-inf", nan: "nan")
            let s = Summary(date: Harness.isoNow(), old: old, new: new, oldLabel: oldLabel, newLabel: newLabel,
                            runs: runCounts, lost: lost, duplicated: duplicated, rows: rows)
            try enc.encode(s).write(to: URL(fileURLWithPath: json))
        }
        print(md, terminator: "")
    }

    /// The step of a single-rate run: the last that passed, else the first (a retry that failed too ran behind the
    /// first one's backlog).
    static func fixedStep(_ r: RunResult) -> StepResult? { r.steps.last(where: \.passed) ?? r.steps.first }

    /// The rate a single-rate run was asked for (its --start-rate; per member for rooms).
    static func askedRate(_ r: RunResult) -> Double? {
        let words = r.command.split(separator: " ")
        guard let i = words.firstIndex(of: "--start-rate"), i + 1 < words.count else { return nil }
        return Double(words[i + 1])
    }

    static func median(_ v: [Double]) -> Double? {
        let s = v.filter(\.isFinite).sorted()
        guard !s.isEmpty else { return nil }
        return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
    }

    static func ms(_ x: Double) -> String { Report.f(x, 1) + " ms" }
    /// CPU-seconds per second of the step's window (sending plus draining), as a share of one core.
    static func percent(_ x: Double) -> String { Report.f(x * 100, 0) + "% of a core" }

    static func best(_ r: RunResult) -> StepResult? {
        r.steps.filter(\.passed).max { $0.deliveredPerSecond < $1.deliveredPerSecond }
    }

    /// At the maximum sustained rate (the best passing step of the ramp, as `run` reports it).
    static var atMaximum: [Figure] {
        [
            Figure(name: "max sustained deliveries/s", format: Report.k) { $0.maxSustainedDeliveriesPerSecond },
            Figure(name: "p50 at max", format: ms) { best($0)?.latency.p50 },
            Figure(name: "p99 at max", format: ms) { best($0)?.latency.p99 },
            Figure(name: "deliveries per broker CPU-s at max", format: Report.k) { $0.deliveriesPerBrokerCPUSecondAtMax },
            Figure(name: "deliveries per broker+Redis CPU-s at max", format: Report.k) {
                $0.deliveriesPerServerCPUSecondAtMax
            },
        ]
    }

    /// At one fixed offered rate: the same work for both builds, so CPU per delivery compares directly.
    static func atStep(_ label: String, _ anyStep: @escaping (RunResult) -> StepResult?) -> [Figure] {
        // Latency and CPU per delivery only where something was delivered.
        let step = { (r: RunResult) in anyStep(r).flatMap { $0.delivered > 0 ? $0 : nil } }
        return [
            Figure(name: "sustained \(label)",
                   format: { $0 > 0 ? "yes" : "no" }, value: { anyStep($0).map { $0.passed ? 1 : 0 } },
                   summary: { v in "\(v.filter { $0 > 0 }.count) of \(v.count)" }),
            Figure(name: "deliveries/s \(label)", format: Report.k) { anyStep($0)?.deliveredPerSecond },
            Figure(name: "delivered/offered \(label)", format: { Report.f($0, 3) }) { anyStep($0)?.ratio },
            Figure(name: "p50 \(label)", format: ms) { step($0)?.latency.p50 },
            Figure(name: "p99 \(label)", format: ms) { step($0)?.latency.p99 },
            Figure(name: "deliveries per broker CPU-s \(label)", format: Report.k) {
                step($0).flatMap { $0.brokerCPUSeconds > 0 ? Double($0.delivered) / $0.brokerCPUSeconds : nil }
            },
            Figure(name: "deliveries per broker+Redis CPU-s \(label)", format: Report.k) {
                step($0).flatMap { s in
                    s.brokerCPUSeconds + s.auxCPUSeconds > 0 ? Double(s.delivered) / (s.brokerCPUSeconds + s.auxCPUSeconds) : nil
                }
            },
            Figure(name: "broker CPU \(label)", format: percent) {
                anyStep($0).map { $0.brokerCPUSeconds / ($0.windowSeconds ?? $0.seconds) }
            },
            Figure(name: "broker+Redis CPU \(label)", format: percent) {
                anyStep($0).map { ($0.brokerCPUSeconds + $0.auxCPUSeconds) / ($0.windowSeconds ?? $0.seconds) }
            },
        ]
    }
}
