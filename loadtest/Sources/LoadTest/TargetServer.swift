import CLoadTestShims
import Foundation
import Glibc

/// CPU time and memory of a process, from /proc.
enum ProcStat {
    static let ticksPerSecond = Double(sysconf(Int32(_SC_CLK_TCK)))

    /// utime + stime in seconds; nil when the process is gone.
    static func cpuSeconds(_ pid: Int32) -> Double? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        // After the command: state(0) ppid(1) … utime(11) stime(12).
        guard fields.count > 12, let u = Double(fields[11]), let s = Double(fields[12]) else { return nil }
        return (u + s) / ticksPerSecond
    }

    /// Resident set size in bytes.
    static func rssBytes(_ pid: Int32) -> Int? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            let kb = line.split(separator: " ").compactMap { Int($0) }.first
            return kb.map { $0 * 1024 }
        }
        return nil
    }

    /// Parent PID from /proc/PID/stat, or nil when the process is gone.
    static func parent(_ pid: Int32) -> Int32? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = text.lastIndex(of: ")")
        else { return nil }
        let fields = text[text.index(after: close)...].split(separator: " ")
        return fields.count > 1 ? Int32(fields[1]) : nil
    }

    /// `pid` and every process descended from it (a supervisor's children and theirs), by scanning /proc for
    /// parent PIDs (/proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN and lists one thread's children only).
    static func tree(_ pid: Int32) -> [Int32] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [pid] }
        var children: [Int32: [Int32]] = [:]
        for e in entries {
            guard let p = Int32(e), let pp = parent(p) else { continue }
            children[pp, default: []].append(p)
        }
        var out = [pid], i = 0
        while i < out.count {
            out += children[out[i]] ?? []
            i += 1
        }
        return out
    }
}

/// A server the harness started: the measured process (`pid`), helpers (Redis), and where clients connect.
/// Every process is stopped by its PID (SIGTERM, then SIGKILL after 30 s).
final class TargetServer {
    let kind: TargetKind
    let endpoint: Endpoint
    let pid: Int32
    var auxPIDs: [Int32]
    /// Every broker process (two or more with --brokers: the publisher uses the first, subscribers the last).
    var brokerPIDs: [Int32]
    /// Where subscribers connect: the publisher's server, or the last broker of several.
    var subscriberEndpoint: Endpoint
    let directory: String
    /// agentchat: the port of the broker's redis-server (for `INFO commandstats`).
    var redisPort: Int?
    /// agentchat: broker processes per broker (`--processes N`: a supervisor and N children on one port). With
    /// more than one, CPU and RSS are summed over each broker's process tree.
    var brokerProcesses = 1
    private var processes: [Process]

    private init(kind: TargetKind, endpoint: Endpoint, processes: [Process], measured: Process, directory: String) {
        self.kind = kind
        self.endpoint = endpoint
        self.processes = processes
        self.pid = measured.processIdentifier
        self.auxPIDs = processes.filter { $0 !== measured }.map(\.processIdentifier)
        self.brokerPIDs = [measured.processIdentifier]
        self.subscriberEndpoint = endpoint
        self.directory = directory
    }

    struct Options {
        var configDirectory: String
        var brokerBinary: String
        var brokerArguments: [String] = []
        /// A command the broker runs under (valgrind), looked up in PATH.
        var brokerWrapper: [String] = []
        /// agentchat brokers sharing one Redis (multi-broker).
        var brokerCount = 1
        /// agentchat: `--processes N` for each broker (N > 1 only if its `--help` lists the option).
        var brokerProcesses = 1
    }

    /// Whether `binary --help` lists `--processes` (several broker processes on one port).
    static func brokerSupportsProcesses(_ binary: String) -> Bool {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: binary)
        p.arguments = ["--help"]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        p.standardInput = FileHandle.nullDevice
        guard (try? p.run()) != nil else { return false }
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return String(decoding: data, as: UTF8.self).contains("--processes")
    }

    static func start(_ kind: TargetKind, options: Options) throws -> TargetServer {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent(
            "agentchat-loadtest-\(getpid())-\(kind.rawValue)-\(Int(nowNs() % 1_000_000))").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let log = dir + "/server.log"
        FileManager.default.createFile(atPath: log, contents: nil)
        let logHandle = try FileHandle(forWritingTo: URL(fileURLWithPath: log))

        func launch(_ path: String, _ args: [String], stdout: Any? = nil) throws -> Process {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: path)
            p.arguments = args
            p.standardOutput = stdout ?? logHandle
            p.standardError = logHandle
            p.standardInput = FileHandle.nullDevice
            try p.run()
            lt_register_child(p.processIdentifier)
            return p
        }
        func template(_ name: String, _ values: [String: String]) throws -> String {
            var text = try String(contentsOfFile: options.configDirectory + "/" + name, encoding: .utf8)
            for (k, v) in values { text = text.replacingOccurrences(of: "{{\(k)}}", with: v) }
            let path = dir + "/" + name
            try text.write(toFile: path, atomically: true, encoding: .utf8)
            return path
        }

        switch kind {
        case .nats:
            let ws = Int(lt_free_port()), client = Int(lt_free_port())
            let conf = try template("nats.conf", ["WS_PORT": String(ws), "CLIENT_PORT": String(client)])
            let p = try launch("/usr/sbin/nats-server", ["-c", conf])
            let s = TargetServer(kind: kind, endpoint: Endpoint(target: kind, host: "127.0.0.1", port: ws,
                                                                subprotocol: nil, path: "/"),
                                 processes: [p], measured: p, directory: dir)
            try s.waitListening(ws)
            return s
        case .mosquitto:
            let ws = Int(lt_free_port()), mqtt = Int(lt_free_port())
            let conf = try template("mosquitto.conf", ["WS_PORT": String(ws), "MQTT_PORT": String(mqtt)])
            let p = try launch("/usr/sbin/mosquitto", ["-c", conf])
            let s = TargetServer(kind: kind, endpoint: Endpoint(target: kind, host: "127.0.0.1", port: ws,
                                                                subprotocol: "mqtt", path: "/mqtt"),
                                 processes: [p], measured: p, directory: dir)
            try s.waitListening(ws)
            return s
        case .lwsMirror:
            let ws = Int(lt_free_port())
            let p = try launch("/usr/bin/libwebsockets-test-server", ["--port=\(ws)"])
            let s = TargetServer(kind: kind, endpoint: Endpoint(target: kind, host: "127.0.0.1", port: ws,
                                                                subprotocol: "lws-mirror-protocol", path: "/"),
                                 processes: [p], measured: p, directory: dir)
            try s.waitListening(ws)
            return s
        case .agentchat:
            let redisPort = Int(lt_free_port())
            let redis = try launch("/usr/bin/redis-server", [
                "--port", String(redisPort), "--bind", "127.0.0.1", "--dir", dir, "--save", "",
                "--appendonly", "yes", "--appendfsync", "everysec", "--daemonize", "no",
            ])
            let holder = TargetServer(kind: kind, endpoint: Endpoint(target: kind, host: "127.0.0.1", port: redisPort,
                                                                     subprotocol: nil, path: "/"),
                                      processes: [redis], measured: redis, directory: dir)
            do {
                try holder.waitListening(redisPort)
                var processArguments: [String] = []
                if options.brokerProcesses > 1 {
                    guard brokerSupportsProcesses(options.brokerBinary) else {
                        throw HarnessError("--broker-processes \(options.brokerProcesses): \(options.brokerBinary) --help does not list --processes (this broker build runs one process only)")
                    }
                    processArguments = ["--processes", String(options.brokerProcesses)]
                }
                var brokers: [Process] = []
                var endpoints: [Endpoint] = []
                for b in 0..<max(1, options.brokerCount) {
                    let out = Pipe()
                    let wrapper = options.brokerWrapper
                    let executable = wrapper.isEmpty ? options.brokerBinary : "/usr/bin/env"
                    // Several processes share one port (SO_REUSEPORT): give them a fixed free one rather than 0.
                    let listenPort = options.brokerProcesses > 1 ? String(lt_free_port()) : "0"
                    let broker = try launch(executable, wrapper + (wrapper.isEmpty ? [] : [options.brokerBinary]) + [
                        "--port", listenPort, "--redis-url", "redis://127.0.0.1:\(redisPort)", "--data-dir", dir + "/broker\(b)",
                        "--log-level", "warning", "--issuer", "http://agentchat-loadtest",
                    ] + processArguments + options.brokerArguments, stdout: out)
                    holder.processes.append(broker)
                    brokers.append(broker)
                    let port = try readBrokerPort(out.fileHandleForReading.fileDescriptor,
                                                  timeout: wrapper.isEmpty ? 30 : 180)
                    // The broker logs to stdout: keep copying it into server.log, or a full pipe (64 KiB of
                    // warnings) would stop the broker mid-run.
                    copyInBackground(out.fileHandleForReading, to: log)
                    endpoints.append(Endpoint(target: kind, host: "127.0.0.1", port: port, subprotocol: Wire.subprotocol,
                                              path: "/"))
                }
                let server = TargetServer(kind: kind, endpoint: endpoints[0], processes: [redis] + brokers,
                                          measured: brokers[0], directory: dir)
                server.subscriberEndpoint = endpoints.last!
                server.brokerPIDs = brokers.map(\.processIdentifier)
                server.auxPIDs = [redis.processIdentifier]
                server.redisPort = redisPort
                server.brokerProcesses = max(1, options.brokerProcesses)
                return server
            } catch {
                holder.stop(keepDirectory: true)
                throw error
            }
        }
    }

    /// Reads the broker's stdout until `AgentChat broker listening on http://127.0.0.1:PORT`.
    /// Copies what `source` delivers into the file at `path` (appending) on a thread of its own, until end of file.
    private static func copyInBackground(_ source: FileHandle, to path: String) {
        let fd = dup(source.fileDescriptor)
        let out = open(path, O_WRONLY | O_APPEND)
        Thread.detachNewThread {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                _ = buffer.withUnsafeBytes { write(out, $0.baseAddress, n) }
            }
            close(fd)
            close(out)
        }
    }

    private static func readBrokerPort(_ fd: Int32, timeout: Double) throws -> Int {
        let loop = EventLoop()
        let reader = LineReader(fd: dup(fd))
        loop.add(reader)
        var port: Int?
        loop.run(seconds: timeout) {
            while let line = reader.takeLine() {
                if let r = line.range(of: "listening on http://127.0.0.1:") {
                    port = Int(line[r.upperBound...].prefix { $0.isNumber })
                }
            }
            return port != nil || reader.closed
        }
        loop.remove(reader)
        guard let port else { throw HarnessError("the broker did not print its port (see its log)") }
        return port
    }

    /// Whether something accepts TCP connections on 127.0.0.1:`port` now (one blocking loopback connect).
    static func isListening(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = loopbackAddress(port: port)
        return withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
    }

    private func waitListening(_ port: Int) throws {
        let deadline = nowNs() + 10_000_000_000
        while nowNs() < deadline {
            if Self.isListening(port) { return }
            if processes.contains(where: { !$0.isRunning }) { break }
            usleep(50_000)
        }
        stop(keepDirectory: true)
        throw HarnessError("\(kind.rawValue) did not listen on \(port); log: \(directory)/server.log")
    }

    /// Stops every process by PID: SIGTERM, then SIGKILL after 30 s (valgrind needs the time to write its profile).
    func stop(keepDirectory: Bool = false) {
        for p in processes.reversed() where p.isRunning {
            kill(p.processIdentifier, SIGTERM)
            let deadline = nowNs() + 30_000_000_000
            while p.isRunning && nowNs() < deadline { usleep(20_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() }
            lt_unregister_child(p.processIdentifier)
            // An agentchat broker (or its Redis) that crashed or ended with an error says so, with its log's place.
            // (The peers' own ways of ending on SIGTERM, nats-server's status 1 and the mirror's uncaught signal,
            // are not reported.)
            if kind == .agentchat, p.terminationReason == .uncaughtSignal || p.terminationStatus != 0 {
                let how = p.terminationReason == .uncaughtSignal ? "signal \(p.terminationStatus)" : "status \(p.terminationStatus)"
                FileHandle.standardError.write(Data("warning: \(kind.rawValue) process \(p.processIdentifier) (\(p.executableURL?.lastPathComponent ?? "?")) ended with \(how); log: \(directory)/server.log\n".utf8))
            }
        }
        let stopped = !processes.isEmpty
        processes.removeAll()
        // The temporary directory (configuration, Redis data, logs) goes too, unless LOADTEST_KEEP=1.
        if stopped && !keepDirectory && ProcessInfo.processInfo.environment["LOADTEST_KEEP"] != "1" {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    /// Every broker process: with --processes N, each broker's whole tree (supervisor and children).
    var brokerProcessIDs: [Int32] { brokerProcesses > 1 ? brokerPIDs.flatMap(ProcStat.tree) : brokerPIDs }
    var brokerCPU: Double { brokerProcessIDs.compactMap(ProcStat.cpuSeconds).reduce(0, +) }
    var auxCPU: Double { auxPIDs.compactMap(ProcStat.cpuSeconds).reduce(0, +) }
    var brokerRSS: Int { brokerProcessIDs.compactMap(ProcStat.rssBytes).reduce(0, +) }

    /// Redis's calls per command now (agentchat), nil for the peers.
    func redisCommandCalls() -> [String: UInt64]? { redisPort.flatMap(RedisStats.commandCalls) }
}

struct HarnessError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// 127.0.0.1:`port` as a socket address.
func loopbackAddress(port: Int) -> sockaddr_in {
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = UInt32(0x7f00_0001).bigEndian
    return address
}
