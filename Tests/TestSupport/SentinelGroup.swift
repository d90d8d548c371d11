import AgentChatRedis
import Foundation

/// A Sentinel-monitored Redis group on loopback, all real `redis-server` processes: a master, two replicas (so that
/// after a failover the new master still has one) and three sentinels (quorum 2, master down after 1 s). `stop()` ends them all and removes their directory.
public final class SentinelGroup: @unchecked Sendable {
    public static let masterName = "agentchat"

    public let directory: String
    public let masterPort: Int
    public let replicaPorts: [Int]
    public let sentinelPorts: [Int]
    private var servers: [Int: ChildProcess] = [:]
    private let lock = NSLock()

    /// `--redis-sentinels` for these sentinels.
    public var sentinelsArgument: String { sentinelPorts.map { "127.0.0.1:\($0)" }.joined(separator: ",") }

    /// Starts the group and waits until every sentinel sees the master, the replica and the other sentinels.
    /// `password`: `requirepass` and `masterauth` on both servers (the sentinels log in with it too).
    public init(password: String? = nil) throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-sentinel-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        masterPort = try EmbeddedRedis.freeLoopbackPort()
        replicaPorts = try (0..<2).map { _ in try EmbeddedRedis.freeLoopbackPort() }
        sentinelPorts = try (0..<3).map { _ in try EmbeddedRedis.freeLoopbackPort() }
        do {
            let auth = password.map { ["requirepass \($0)", "masterauth \($0)"] } ?? []
            try startServer(masterPort, config: auth)
            for port in replicaPorts {
                try startServer(port, config: auth + ["replicaof 127.0.0.1 \(masterPort)"])
            }
            for port in sentinelPorts {
                try startServer(port, sentinel: true, config: [
                    "sentinel monitor \(Self.masterName) 127.0.0.1 \(masterPort) 2",
                    "sentinel down-after-milliseconds \(Self.masterName) 1000",
                    "sentinel failover-timeout \(Self.masterName) 5000",
                    "sentinel parallel-syncs \(Self.masterName) 1",
                ] + (password.map { ["sentinel auth-pass \(Self.masterName) \($0)"] } ?? []))
            }
            try waitUntil("the sentinels know each other and the replica", timeout: 30) {
                sentinelPorts.allSatisfy { port in
                    let info = (try? self.cli(port, ["SENTINEL", "MASTER", Self.masterName])) ?? ""
                    return info.contains("num-other-sentinels\n2") && info.contains("num-slaves\n2")
                }
            }
            try waitUntil("the replicas in sync", timeout: 30) {
                replicaPorts.allSatisfy { port in
                    let info = (try? self.cli(port, ["INFO", "replication"], password: password)) ?? ""
                    return info.contains("master_link_status:up")
                }
            }
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    /// SIGKILLs the server on `port` (a crash).
    public func kill(_ port: Int) {
        let server = lock.withLock { servers.removeValue(forKey: port) }
        server?.kill()
        server?.stop()
    }

    /// Starts the server on `port` again (after `kill`), as a replica of the master on `masterPort`: an old master
    /// coming back after a failover, with the data it had (resynchronised from the new master).
    public func restartAsReplica(_ port: Int, of masterPort: Int, password: String? = nil) throws {
        let auth = password.map { ["requirepass \($0)", "masterauth \($0)"] } ?? []
        try startServer(port, config: auth + ["replicaof 127.0.0.1 \(masterPort)"])
    }

    /// The port of the master the sentinels name now.
    public func currentMasterPort() throws -> Int? {
        for port in sentinelPorts {
            let reply = try? cli(port, ["SENTINEL", "get-master-addr-by-name", Self.masterName])
            if let line = reply?.split(separator: "\n").last, let value = Int(line) { return value }
        }
        return nil
    }

    /// Stops every process and removes the directory. Idempotent.
    public func stop() {
        let all = lock.withLock { () -> [ChildProcess] in
            defer { servers = [:] }
            return Array(servers.values)
        }
        for server in all { server.stop() }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// `redis-cli -p port --raw` with `arguments`; its output.
    public func cli(_ port: Int, _ arguments: [String], password: String? = nil) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["redis-cli", "-p", "\(port)", "--raw", "--no-auth-warning"]
            + (password.map { ["-a", $0] } ?? []) + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    private func startServer(_ port: Int, sentinel: Bool = false, config: [String]) throws {
        let dir = directory + "/\(port)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + (sentinel ? "/sentinel.conf" : "/redis.conf")
        let lines = ["port \(port)", "bind 127.0.0.1", "dir \(dir)", "save \"\""]
            + (sentinel ? [] : ["appendonly yes", "appendfsync always"]) + config
        try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let server = try ChildProcess(executable: "/usr/bin/env",
                                      arguments: ["redis-server", file] + (sentinel ? ["--sentinel"] : []))
        lock.withLock { servers[port] = server }
        try waitUntil("redis-server on \(port)", timeout: 30) { (try? self.cli(port, ["PING"])) != nil
            && (try? self.cli(port, ["PING"]))?.isEmpty == false }
    }

    private func waitUntil(_ what: String, timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw SentinelGroupError.timeout(what)
    }
}

public enum SentinelGroupError: Error, CustomStringConvertible {
    case timeout(String)
    public var description: String {
        switch self {
        case .timeout(let what): "timed out waiting for \(what)"
        }
    }
}
