import AgentChatCrypto
import ArgumentParser
import CLoadTestShims
import Foundation
import Glibc

/// `agentchat-loadtest`: measures the AgentChat broker and its peers with the same client on the same machine.
struct LoadTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentchat-loadtest",
        abstract: "Load tests for the AgentChat broker and its peers (nats-server, mosquitto, the libwebsockets mirror).",
        discussion: """
            Every server is started by the harness on loopback and stopped by PID afterwards; every run is bounded \
            in count and time. Results are printed as tables and written as JSON under --results.
            """,
        subcommands: [RunCommand.self, SmokeCommand.self, SelfCheckCommand.self, ChaosCommand.self, ReportCommand.self,
                      CompareCommand.self, WorkerCommand.self])
}

struct CommonOptions: ParsableArguments {
    @Option(help: "agentchat-broker to test (default: ../.build/release/agentchat-broker, then ./.build/…).")
    var brokerBinary: String?
    @Option(help: "Where nats.conf and mosquitto.conf are (default: the loadtest/config directory).")
    var configDir: String?
    @Option(help: "Directory for JSON results.")
    var results = "results"
    @Option(help: "Harness processes for the subscribers (default: 1 up to 100 connections, else 2 per 10,000).")
    var workers: Int?
    @Option(help: "agentchat brokers on one Redis (multi-broker: the publisher on the first, subscribers on the last).")
    var brokers = 1
    @Option(help: "Command prefix for the agentchat broker, e.g. \"valgrind --tool=callgrind\" for a profile.")
    var brokerWrapper: String?
    @Option(help: """
        A second agentchat-broker (an older build), measured as target agentchat-baseline beside agentchat \
        (default: $AGENTCHAT_BASELINE_BROKER).
        """)
    var baselineBroker: String?
    @Option(help: """
        agentchat: broker processes (the broker's --processes N: a supervisor and N children on one port, \
        SO_REUSEPORT); CPU and RSS are summed over the process tree. N > 1 needs a broker whose --help lists it.
        """)
    var brokerProcesses = 1

    var loadtestDirectory: String { Self.loadtestDirectory }

    static var loadtestDirectory: String {
        // …/loadtest/.build/<triple>/<config>/agentchat-loadtest → …/loadtest
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        var dir = exe.deletingLastPathComponent()
        for _ in 0..<4 where dir.lastPathComponent != "loadtest" && dir.path != "/" {
            dir = dir.deletingLastPathComponent()
        }
        return dir.lastPathComponent == "loadtest" ? dir.path : FileManager.default.currentDirectoryPath
    }

    /// The broker binary of the build under test, or with `baseline` the one of agentchat-baseline.
    func brokerPath(baseline: Bool = false) throws -> String {
        guard baseline else {
            return brokerBinary ?? [loadtestDirectory + "/../.build/release/agentchat-broker",
                                    "./.build/release/agentchat-broker"]
                .first { FileManager.default.isExecutableFile(atPath: $0) } ?? "agentchat-broker"
        }
        let env = ProcessInfo.processInfo.environment["AGENTCHAT_BASELINE_BROKER"].flatMap { $0.isEmpty ? nil : $0 }
        guard let path = baselineBroker ?? env else {
            throw ValidationError("target agentchat-baseline needs --baseline-broker PATH (or AGENTCHAT_BASELINE_BROKER)")
        }
        guard FileManager.default.isExecutableFile(atPath: path) else {
            throw ValidationError("baseline broker \(path): not an executable file")
        }
        return path
    }

    func serverOptions(extra: [String], baseline: Bool = false) throws -> TargetServer.Options {
        let base = loadtestDirectory
        let broker = try brokerPath(baseline: baseline)
        return TargetServer.Options(configDirectory: configDir ?? base + "/config", brokerBinary: broker,
                                    brokerArguments: extra,
                                    brokerWrapper: brokerWrapper?.split(separator: " ").map(String.init) ?? [],
                                    brokerCount: brokers, brokerProcesses: brokerProcesses)
    }
}

/// A target named on the command line: a kind of server and, for agentchat, which broker binary serves it: the build
/// under test (`agentchat`) or the one at --baseline-broker (`agentchat-baseline`), started in exactly the same way
/// (same flags, its own redis-server with the same settings). Results carry this name.
struct TargetChoice: ExpressibleByArgument, Equatable, Sendable {
    static let baselineName = "agentchat-baseline"
    var kind: TargetKind
    var isBaseline = false

    init(_ kind: TargetKind) { self.kind = kind }

    init?(argument: String) {
        if argument == Self.baselineName {
            kind = .agentchat
            isBaseline = true
        } else if let k = TargetKind(rawValue: argument) {
            kind = k
        } else {
            return nil
        }
    }

    var name: String { isBaseline ? Self.baselineName : kind.rawValue }
    static var allValueStrings: [String] { TargetKind.allCases.map(\.rawValue) + [baselineName] }

    /// The harness names results by kind ("agentchat", "agentchat (2 brokers)"): this target's name in its place.
    func resultName(_ harnessName: String) -> String {
        guard isBaseline, harnessName.hasPrefix(kind.rawValue) else { return harnessName }
        return name + harnessName.dropFirst(kind.rawValue.count)
    }
}

/// Broker flags for load tests: registration and frame rates that do not throttle the harness, and a message
/// size that fits a `channel.keys` frame with 1,001 envelopes.
let brokerBenchArguments = ["--register-rate", "1000000", "--frames-per-second", "1000000",
                            "--max-message-bytes", "1048576", "--max-queue-bytes", "16777216"]

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "run", abstract: "Run a workload against targets.")

    @OptionGroup var common: CommonOptions
    @Option(help: "broadcast, idle, churn, rooms or indicators.") var workload = "broadcast"
    @Option(help: "rooms: members per room.") var roomSize = 10
    @Flag(help: """
        rooms, agentchat: every member signs each message it sends (default: one well-formed signature per member, \
        reused; the broker never checks signatures, recipients do).
        """)
    var signEachMessage = false
    @Option(help: """
        Targets (repeat the option; default: all four), run one after the other in the order given; \
        agentchat-baseline is the broker at --baseline-broker.
        """)
    var target: [TargetChoice] = []
    @Option(help: "Subscribers (broadcast) or connections (idle).") var connections = 1000
    @Option(help: "Payload bytes (broadcast).") var payload = 256
    @Option(help: "Seconds per rate step.") var stepSeconds = 2.0
    @Option(help: "First rate, messages per second.") var startRate = 20.0
    @Option(help: "Rate multiplier between steps.") var factor = 1.3
    @Option(help: "Highest rate tried, messages per second.") var maxRate = 5000.0
    @Option(help: "p99 latency limit, ms.") var p99Limit = 50.0
    @Option(help: "Also measure at this rate, messages per second (repeatable).") var extraRate: [Double] = []
    @Option(help: "Seconds to hold idle connections while measuring CPU, or to churn.") var hold = 20.0
    @Option(help: "Upper bound on the ramp's duration, seconds.") var maxSeconds = 240.0
    @Flag(help: "Skip the steps at 25/50/75% of the maximum.") var noFractions = false
    @Option(help: "indicators: listed channels, each with its own publisher.") var channels = 10
    @Option(help: "indicators: messages per second each channel's publisher sends.") var channelRate = 200.0
    @Option(help: "indicators: the broker's --indicator-rate (updates per second per viewer).") var indicatorRate = 4.0
    @Flag(help: "indicators: viewers subscribe to the directory instead of the channels.") var directory = false
    @Option(help: """
        broadcast: publish at exactly this rate (messages/s) for --step-seconds, no ramp (repeatable: one step \
        each); results are workload "fixed".
        """)
    var fixedRate: [Double] = []
    @Option(help: """
        broadcast, agentchat: connections per agent (the first joins, the others only subscribe), e.g. 10 for \
        1 → 10,000 over 1,000 agents.
        """)
    var connectionsPerAgent = 1
    @Option(help: """
        churn, agentchat: how a reopened connection logs in: signature (a signed challenge, every time) or token \
        (the session token of its previous welcome).
        """)
    var churnLogin = "signature"
    @Option(help: "resume: messages published before the subscriber resumes from offset 0.") var backlog = 10_000
    @Option(help: "resume: subscribers resuming one after the other (medians reported).") var tries = 5

    func validate() throws {
        if target.contains(where: \.isBaseline) { _ = try common.brokerPath(baseline: true) }
        if common.brokerProcesses < 1 { throw ValidationError("--broker-processes must be at least 1") }
        if !["signature", "token"].contains(churnLogin) { throw ValidationError("--churn-login: signature or token") }
        if common.brokerProcesses > 1, target.isEmpty || target.contains(where: { $0.kind == .agentchat }) {
            let broker = try common.brokerPath()
            guard TargetServer.brokerSupportsProcesses(broker) else {
                throw ValidationError("--broker-processes \(common.brokerProcesses): \(broker) --help does not list --processes; this broker build runs one process only")
            }
        }
        if connectionsPerAgent < 1 { throw ValidationError("--connections-per-agent must be at least 1") }
        if connectionsPerAgent > 1, (connections + connectionsPerAgent - 1) / connectionsPerAgent > 1000 {
            throw ValidationError("--connections-per-agent: at most 1,000 agents (a channel.keys frame's limit)")
        }
    }

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        lt_install_cleanup_handler()
        _ = lt_raise_nofile()
        Sodium.initialize()
        // indicators: agentchat only (the peers have nothing like public indicators).
        let agentchatOnly = workload == "indicators" || workload == "resume"
        let targets = target.isEmpty ? (agentchatOnly ? [.agentchat] : TargetKind.allCases).map(TargetChoice.init)
            : target
        if workload == "resume", targets.contains(where: { $0.kind != .agentchat }) {
            throw ValidationError("resume: agentchat only; core NATS, MQTT QoS 0 and the mirror keep no history to resume from")
        }
        if workload == "indicators", targets.contains(where: { $0.kind != .agentchat }) {
            throw ValidationError("indicators: agentchat only; nats, mosquitto and lws-mirror have no equivalent")
        }
        var brokerArguments = brokerBenchArguments
        if workload == "indicators" {
            // Viewers come from a few source addresses (one per worker): lift the per-address viewer limit.
            brokerArguments += ["--viewer-connections-per-address", "1000000", "--indicator-rate", String(indicatorRate)]
        }
        if workload == "resume" {
            // History keeps 10,000 messages per channel by default: room for the whole backlog.
            brokerArguments += ["--history-max", String(max(10_000, backlog))]
        }
        var runs: [RunResult] = []
        // With a baseline, every agentchat result names its broker binary (both builds are in one run).
        let comparing = targets.contains(where: \.isBaseline)
        for t in targets {
            let server = try common.serverOptions(extra: brokerArguments, baseline: t.isBaseline)
            var options = HarnessOptions(target: t.kind, connections: workload == "resume" ? 1 : connections,
                                         workers: common.workers, server: server,
                                         resultsDirectory: common.results,
                                         command: CommandLine.arguments.dropFirst().joined(separator: " "))
            options.connectionsPerAgent = connectionsPerAgent
            options.churnWithTokens = churnLogin == "token"
            options.signEachMessage = signEachMessage
            if t.kind != .agentchat { options.server.brokerProcesses = 1 }
            let binary = t.kind == .agentchat && comparing ? " (\(server.brokerBinary))" : ""
            FileHandle.standardError.write(Data("== \(workload) \(t.name)\(binary), \(workload == "resume" ? "backlog \(backlog)" : "\(connections) connections")\n".utf8))
            let h = try Harness(options: options)
            do {
                var r: RunResult
                if workload == "resume" {
                    var o = ResumeOptions()
                    o.backlog = backlog; o.tries = tries; o.payload = payload
                    r = try h.runResume(o)
                } else if workload == "indicators" {
                    var o = IndicatorsOptions()
                    o.channels = channels; o.channelRate = channelRate; o.holdSeconds = hold; o.directory = directory
                    o.indicatorRate = indicatorRate; o.payload = payload
                    r = try h.runIndicators(o)
                } else if workload == "idle" {
                    r = try h.runIdle(holdSeconds: hold)
                } else if workload == "churn" {
                    r = try h.runChurn(seconds: hold)
                } else if workload == "rooms" {
                    var o = BroadcastOptions()
                    o.payload = payload; o.stepSeconds = stepSeconds; o.startRate = startRate; o.factor = factor
                    o.maxRate = maxRate; o.p99LimitMs = p99Limit; o.maxSeconds = maxSeconds; o.fractions = !noFractions
                    r = try h.runRooms(size: roomSize, o)
                    print(Report.stepTable(r))
                } else {
                    var o = BroadcastOptions()
                    o.payload = payload; o.stepSeconds = stepSeconds; o.startRate = startRate; o.factor = factor
                    o.maxRate = maxRate; o.p99LimitMs = p99Limit; o.extraRates = extraRate; o.maxSeconds = maxSeconds
                    o.fractions = !noFractions
                    o.fixedRates = fixedRate
                    r = try h.runBroadcast(o)
                    if t.kind == .agentchat && connectionsPerAgent > 1 { r.connectionsPerAgent = connectionsPerAgent }
                    print(Report.stepTable(r))
                }
                h.shutdown()
                if h.server.brokerProcesses > 1 { r.brokerProcesses = h.server.brokerProcesses }
                r.target = t.resultName(r.target)
                if !binary.isEmpty { r.notes.append("broker binary: \(server.brokerBinary)") }
                let path = try Report.save(r, directory: common.results)
                FileHandle.standardError.write(Data("wrote \(path)\n".utf8))
                runs.append(r)
            } catch {
                h.shutdown()
                throw error
            }
        }
        if workload == "resume" {
            print(Report.resumeTable(runs))
        } else if !fixedRate.isEmpty && workload == "broadcast" {
            print(Report.fixedTable(runs))
        } else if workload == "indicators" {
            print(Report.indicatorsTable(runs))
        } else if workload == "idle" {
            print(Report.idleTable(runs))
        } else if workload == "churn" {
            print(Report.churnTable(runs))
        } else if workload == "rooms" {
            print(Report.broadcastTable(runs))
        } else {
            print(Report.broadcastTable(runs))
            let svg = common.results + "/broadcast-\(connections)x\(payload).svg"
            try Report.svg(runs, title: "broadcast 1→\(connections), \(payload) B: p99 latency against deliveries/s")
                .write(toFile: svg, atomically: true, encoding: .utf8)
        }
    }
}

/// `smoke`: the self-check, then a few seconds, a handful of agentchat connections; fails unless every message
/// arrived exactly once.
struct SmokeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "smoke",
                                                    abstract: "Self-check, then a short agentchat broadcast asserting zero loss and zero duplicates.")
    @OptionGroup var common: CommonOptions
    @Option var connections = 5
    @Option(help: "The golden frames for the self-check (default: Tests/Golden next to loadtest/).")
    var golden: String?

    func run() throws {
        signal(SIGPIPE, SIG_IGN)
        lt_install_cleanup_handler()
        Sodium.initialize()
        let goldenDirectory = golden ?? SelfCheck.defaultGoldenDirectory
        print("smoke: self-check: \(try SelfCheck.run(golden: goldenDirectory)) checks against \(goldenDirectory): ok")
        let options = HarnessOptions(target: .agentchat, connections: connections, workers: common.workers ?? 1,
                                     server: try common.serverOptions(extra: brokerBenchArguments),
                                     resultsDirectory: common.results, command: "smoke")
        let h = try Harness(options: options)
        let r: RunResult
        do {
            var o = BroadcastOptions()
            // Three 1 s steps, 50, 100 and 200 messages/s: no ramp to a limit, only the loss and duplicate checks.
            o.stepSeconds = 1; o.startRate = 50; o.factor = 2; o.maxRate = 250; o.fractions = false
            o.p99LimitMs = 10_000
            r = try h.runBroadcast(o)
            h.shutdown()
        } catch {
            h.shutdown()
            throw error
        }
        print(Report.stepTable(r))
        let sent = r.steps.map(\.messagesSent).reduce(0, +)
        let delivered = r.steps.map(\.delivered).reduce(0, +)
        let expected = UInt64(sent * connections)
        // lost counts every message a subscriber never got, read at the very end (so a slow CI machine has time).
        let ok = sent > 0 && r.lost == 0 && r.duplicated == 0 && r.notes.allSatisfy { !$0.hasPrefix("failed") }
        print("smoke: \(sent) messages to \(connections) subscribers, \(delivered) of \(expected) delivered, lost \(r.lost), duplicated \(r.duplicated)")
        print(ok ? "smoke: ok" : "smoke: FAILED")
        if !ok { throw ExitCode(1) }
    }
}

/// `report`: the side-by-side tables (Markdown) and the chart (SVG) from the newest JSON result of each
/// workload and target.
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "report", abstract: "Markdown tables and SVG from results.")
    @Option var results = "results"
    @Option(help: "Markdown output.") var markdown: String
    @Option(help: "SVG output (broadcast chart).") var svg: String
    @Option(help: "How the SVG is referenced from the Markdown.") var svgLink: String?

    func run() throws {
        let files = try FileManager.default.contentsOfDirectory(atPath: results).filter { $0.hasSuffix(".json") }.sorted()
        var all: [String: [RunResult]] = [:]
        let dec = JSONDecoder()
        for f in files {
            let r = try dec.decode(RunResult.self, from: Data(contentsOf: URL(fileURLWithPath: results + "/" + f)))
            // Fixed-rate runs: one row per configuration (subscribers, payload, rate) and target.
            let key = r.workload == "fixed"
                ? "fixed/\(r.target)/\(r.connections)/\(r.payloadBytes ?? 0)/\(Int(r.steps.last?.offeredMessagesPerSecond ?? 0))"
                : "\(r.workload)/\(r.target)"
            all[key, default: []].append(r)
        }
        // The median run of each workload and target: by max sustained deliveries/s, or RSS per connection.
        var newest: [String: RunResult] = [:]
        var repeats: [String: Int] = [:]
        for (key, rs) in all {
            // Fixed rates: the run of median p99; resume: of median time to the whole backlog.
            func rank(_ r: RunResult) -> Double {
                if r.workload == "fixed" { return r.steps.last?.latency.p99 ?? 0 }
                if let x = r.resume { return x.allMs ?? .infinity }
                return r.maxSustainedDeliveriesPerSecond ?? r.sessionsPerSecond ?? r.brokerRSSPerConnectionBytes ?? 0
            }
            let sorted = rs.sorted { rank($0) < rank($1) }
            newest[key] = sorted[sorted.count / 2]
            repeats[key] = rs.count
        }
        let order = TargetKind.allCases.map(\.rawValue).flatMap { $0 == "agentchat" ? [$0, TargetChoice.baselineName] : [$0] }
        func runs(_ w: String) -> [RunResult] {
            newest.values.filter { $0.workload == w }.sorted {
                (order.firstIndex(of: $0.target) ?? 9) < (order.firstIndex(of: $1.target) ?? 9)
            }
        }
        var md = ""
        let b = runs("broadcast")
        if !b.isEmpty {
            let n = b[0].connections, p = b[0].payloadBytes ?? 0
            md += "### broadcast: 1 publisher → \(n) subscribers, \(p)-byte payloads\n\n"
            md += Report.broadcastTable(b) + "\n"
            md += "Each row is the median of \(b.map { repeats["broadcast/\($0.target)"] ?? 1 }.map(String.init).joined(separator: "/")) run(s) (by max sustained deliveries/s), in the order of the rows.\n\n"
            md += "![p99 latency against deliveries per second](\(svgLink ?? svg))\n\n"
            try Report.svg(b, title: "broadcast 1→\(n), \(p) B: p99 latency against deliveries/s")
                .write(toFile: svg, atomically: true, encoding: .utf8)
            for r in b {
                md += "<details><summary>\(r.target): every step (\(r.date))</summary>\n\n" + Report.stepTable(r)
                if !r.notes.isEmpty { md += "\nNotes: " + r.notes.joined(separator: "; ") + "\n" }
                md += "\n</details>\n\n"
            }
        }
        let i = runs("idle")
        if !i.isEmpty {
            md += "### idle: \(i[0].connections) connections held\n\n" + Report.idleTable(i) + "\n"
        }
        let rm = runs("rooms")
        if !rm.isEmpty {
            md += "\n### rooms: \(rm[0].connections / 10) rooms of 10 members, every member publishing \(rm[0].payloadBytes ?? 0)-byte messages\n\n"
            md += "Rates are per member; a delivery is a message reaching one other member.\n\n"
            md += Report.broadcastTable(rm) + "\n"
        }
        let c = runs("churn")
        if !c.isEmpty {
            md += "\n### churn: \(c[0].connections) connections closed and reopened as soon as each has logged in\n\n"
            md += Report.churnTable(c) + "\n"
        }
        let fx = newest.filter { $0.key.hasPrefix("fixed/") }.map(\.value).sorted {
            ($0.connections, $0.payloadBytes ?? 0, -($0.steps.last?.offeredMessagesPerSecond ?? 0),
             order.firstIndex(of: $0.target.components(separatedBy: " (")[0]) ?? 9, $0.target)
                < ($1.connections, $1.payloadBytes ?? 0, -($1.steps.last?.offeredMessagesPerSecond ?? 0),
                   order.firstIndex(of: $1.target.components(separatedBy: " (")[0]) ?? 9, $1.target)
        }
        if !fx.isEmpty {
            md += "\n### fixed rates: broadcast at one offered rate (payloads, fan-out)\n\n"
            md += "One step at exactly the rate for every target (the same work): latency, broker CPU, messages per "
            md += "WebSocket frame received by the subscribers, Redis commands per message sent (agentchat).\n\n"
            md += Report.fixedTable(fx) + "\n"
            let counts = fx.map { r -> String in
                let key = "fixed/\(r.target)/\(r.connections)/\(r.payloadBytes ?? 0)/\(Int(r.steps.last?.offeredMessagesPerSecond ?? 0))"
                return String(all[key]?.count ?? 1)
            }
            md += "Each row is the median of \(counts.joined(separator: "/")) run(s) (by p99), in the order of the rows.\n"
        }
        let rs = runs("resume")
        if !rs.isEmpty {
            md += "\n### resume: a subscriber catching up on a backlog from offset 0 (agentchat only)\n\n"
            md += Report.resumeTable(rs) + "\n"
            md += "Times are medians over the tries of a run; the row is the run of median time to the whole backlog, of \(rs.map { String(all["resume/\($0.target)"]?.count ?? 1) }.joined(separator: "/")) run(s).\n"
        }
        let ind = runs("indicators")
        if !ind.isEmpty {
            md += "\n### indicators: listed channels kept busy while viewers watch them (agentchat only)\n\n"
            md += Report.indicatorsTable(ind) + "\n"
        }
        try md.write(toFile: markdown, atomically: true, encoding: .utf8)
    }
}

LoadTest.main()
