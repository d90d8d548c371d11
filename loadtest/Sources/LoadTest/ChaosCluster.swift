import CLoadTestShims
import Foundation
import Glibc

/// The servers of the chaos suite: one redis-server (AOF, `appendfsync always`) and several brokers on it, each
/// on a fixed loopback port chosen at start (below the ephemeral range), so that a process killed with SIGKILL
/// can be started again on the same port and the same data directory. Every process is stopped by its PID.
final class ChaosCluster {
    /// One server process that the suite kills and restarts.
    final class Member {
        let name: String
        let executable: String
        let arguments: [String]
        let port: Int
        private let log: FileHandle
        private(set) var process: Process?
        /// Starts, the first included.
        private(set) var starts = 0

        init(name: String, executable: String, arguments: [String], port: Int, logPath: String) throws {
            self.name = name
            self.executable = executable
            self.arguments = arguments
            self.port = port
            _ = FileManager.default.createFile(atPath: logPath, contents: nil)
            log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        }

        var pid: Int32 { process?.processIdentifier ?? 0 }
        var isRunning: Bool { process?.isRunning ?? false }
        var isListening: Bool { isRunning && TargetServer.isListening(port) }

        func start() throws {
            precondition(process == nil, "\(name) is running")
            log.seekToEndOfFile()
            log.write(Data("---- start \(starts + 1) at \(Date())\n".utf8))
            let p = Process()
            p.executableURL = URL(fileURLWithPath: executable)
            p.arguments = arguments
            p.standardOutput = log
            p.standardError = log
            p.standardInput = FileHandle.nullDevice
            try p.run()
            lt_register_child(p.processIdentifier)
            process = p
            starts += 1
        }

        /// SIGKILL, and reaps it.
        func kill9() {
            guard let p = process else { return }
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            lt_unregister_child(p.processIdentifier)
            process = nil
        }

        /// SIGTERM, then SIGKILL after 10 s.
        func stop() {
            guard let p = process else { return }
            if p.isRunning {
                kill(p.processIdentifier, SIGTERM)
                let deadline = nowNs() + 10_000_000_000
                while p.isRunning && nowNs() < deadline { usleep(20_000) }
                if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            }
            p.waitUntilExit()
            lt_unregister_child(p.processIdentifier)
            process = nil
        }

        /// Waits (blocking) until the port accepts connections.
        func waitListening(timeout: Double = 30) throws {
            let deadline = nowNs() + UInt64(timeout * 1e9)
            while nowNs() < deadline {
                if TargetServer.isListening(port) { return }
                if !isRunning { throw HarnessError("\(name) exited; see its log") }
                usleep(20_000)
            }
            throw HarnessError("\(name) did not listen on \(port) within \(timeout) s")
        }
    }

    let directory: String
    let redis: Member
    let brokers: [Member]

    /// Creates the directories and chooses the ports; `start()` launches.
    init(brokerBinary: String, brokerCount: Int, brokerArguments: [String], logLevel: String = "warning") throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(
            "agentchat-chaos-\(getpid())-\(nowNs() % 1_000_000)").path
        try FileManager.default.createDirectory(atPath: directory + "/redis", withIntermediateDirectories: true)
        let redisPort = try Self.fixedPort()
        redis = try Member(name: "redis", executable: "/usr/bin/redis-server", arguments: [
            "--port", String(redisPort), "--bind", "127.0.0.1", "--dir", directory + "/redis", "--save", "",
            "--appendonly", "yes", "--appendfsync", "always", "--daemonize", "no",
        ], port: redisPort, logPath: directory + "/redis.log")
        var brokers: [Member] = []
        for b in 1...max(1, brokerCount) {
            let port = try Self.fixedPort()
            brokers.append(try Member(name: "broker\(b)", executable: brokerBinary, arguments: [
                "--port", String(port), "--redis-url", "redis://127.0.0.1:\(redisPort)",
                "--data-dir", directory + "/broker\(b)", "--log-level", logLevel, "--issuer", "http://agentchat-chaos",
            ] + brokerArguments, port: port, logPath: directory + "/broker\(b).log"))
        }
        self.brokers = brokers
    }

    /// A free port on 127.0.0.1 below the kernel's ephemeral range: while its process is down between a kill and
    /// the restart, no outgoing connection (of this suite or of anything else on the machine) can be given it.
    static func fixedPort() throws -> Int {
        let range = (try? String(contentsOfFile: "/proc/sys/net/ipv4/ip_local_port_range", encoding: .utf8))?
            .split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).compactMap { Int($0) } ?? []
        let top = min(range.first ?? 32768, 65536) - 1
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<200 {
            let port = Int.random(in: 20_000...max(20_001, top), using: &rng)
            let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            var a = loopbackAddress(port: port)
            let ok = withUnsafePointer(to: &a) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
                }
            }
            close(fd)
            if ok && !TargetServer.isListening(port) { return port }
        }
        throw HarnessError("no free port below the ephemeral range")
    }

    func start() throws {
        try redis.start()
        try redis.waitListening()
        for b in brokers {
            try b.start()
            try b.waitListening()
        }
    }

    /// Stops everything (brokers first) and removes the directory unless `keep` or LOADTEST_KEEP=1.
    func stop(keep: Bool) {
        for b in brokers.reversed() { b.stop() }
        redis.stop()
        if !keep && ProcessInfo.processInfo.environment["LOADTEST_KEEP"] != "1" {
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    func endpoint(_ broker: Int) -> Endpoint {
        Endpoint(target: .agentchat, host: "127.0.0.1", port: brokers[broker].port, subprotocol: Wire.subprotocol,
                 path: "/")
    }
}
