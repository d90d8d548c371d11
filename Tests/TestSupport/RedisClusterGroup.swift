import AgentChatRedis
import Foundation

/// A Redis Cluster of three masters on loopback, real `redis-server --cluster-enabled yes` processes joined with
/// `redis-cli --cluster create`; waits until every node says `cluster_state:ok`. Replicas are added on demand
/// (`addReplica`). `stop()` ends them all and removes their directory.
public final class RedisClusterGroup: @unchecked Sendable {
    public let directory: String
    public private(set) var ports: [Int]
    private var servers: [Int: ChildProcess] = [:]
    private let lock = NSLock()

    /// `--redis-cluster` for these nodes.
    public var clusterArgument: String { ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") }
    public var endpoints: [RedisEndpoint] { ports.map { .tcp(host: "127.0.0.1", port: $0) } }

    /// `password`: `requirepass` and `masterauth` on every node (and `-a` for `redis-cli`).
    private let password: String?

    public init(masters: Int = 3, password: String? = nil) throws {
        self.password = password
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-cluster-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        ports = []
        do {
            for _ in 0..<masters { ports.append(try startNode()) }
            let create = try run(["redis-cli", "--no-auth-warning"] + (password.map { ["-a", $0] } ?? [])
                + ["--cluster", "create"] + ports.map { "127.0.0.1:\($0)" }
                + ["--cluster-replicas", "0", "--cluster-yes"])
            guard create.contains("All 16384 slots covered") else {
                throw RedisClusterGroupError.failed("redis-cli --cluster create: \(create.suffix(400))")
            }
            try waitUntil("cluster_state:ok on every node", timeout: 30) {
                self.ports.allSatisfy { ((try? self.cli($0, ["CLUSTER", "INFO"])) ?? "").contains("cluster_state:ok") }
                    && self.ports.allSatisfy { self.slotCount(of: $0) > 0 }
            }
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    /// The node id of the master on `port`.
    public func nodeID(_ port: Int) throws -> String {
        try cli(port, ["CLUSTER", "MYID"])
    }

    /// The port of the master that serves `slot`, as the node on `port` (default: the first) sees it.
    public func owner(of slot: Int, askingPort port: Int? = nil) -> Int? {
        guard let nodes = try? cli(port ?? ports[0], ["CLUSTER", "NODES"]) else { return nil }
        for line in nodes.split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count > 8, fields[2].contains("master"),
                let address = fields[1].split(separator: "@").first,
                let nodePort = address.split(separator: ":").last.flatMap({ Int($0) })
            else { continue }
            for field in fields.dropFirst(8) where !field.hasPrefix("[") {
                let bounds = field.split(separator: "-").compactMap { Int($0) }
                if bounds.count == 2 ? (bounds[0]...bounds[1]).contains(slot) : bounds.first == slot { return nodePort }
            }
        }
        return nil
    }

    /// How many slots the master on `port` serves (`CLUSTER NODES`).
    public func slotCount(of port: Int) -> Int {
        guard let nodes = try? cli(port, ["CLUSTER", "NODES"]) else { return 0 }
        for line in nodes.split(separator: "\n") where line.contains("myself") {
            var count = 0
            for field in line.split(separator: " ").dropFirst(8) where !field.hasPrefix("[") {
                let bounds = field.split(separator: "-").compactMap { Int($0) }
                count += bounds.count == 2 ? bounds[1] - bounds[0] + 1 : 1
            }
            return count
        }
        return 0
    }

    /// Moves one slot from the master on `from` to the master on `to` the way `redis-cli --cluster reshard` does:
    /// `IMPORTING`/`MIGRATING`, `MIGRATE` of every key, then `SETSLOT … NODE` on both. `beforeNode` runs after the
    /// keys moved and before the slot is handed over (an `ASK` window: the source answers `ASK` for missing keys).
    public func moveSlot(_ slot: Int, from: Int, to: Int, beforeNode: (() throws -> Void)? = nil) throws {
        let fromID = try nodeID(from), toID = try nodeID(to)
        _ = try cli(to, ["CLUSTER", "SETSLOT", "\(slot)", "IMPORTING", fromID])
        _ = try cli(from, ["CLUSTER", "SETSLOT", "\(slot)", "MIGRATING", toID])
        while true {
            let keys = try cli(from, ["CLUSTER", "GETKEYSINSLOT", "\(slot)", "100"])
                .split(separator: "\n").map(String.init).filter { !$0.isEmpty }
            if keys.isEmpty { break }
            _ = try cli(from, ["MIGRATE", "127.0.0.1", "\(to)", "", "0", "5000"]
                + (password.map { ["AUTH", $0] } ?? []) + ["KEYS"] + keys)
        }
        try beforeNode?()
        _ = try cli(to, ["CLUSTER", "SETSLOT", "\(slot)", "NODE", toID])
        _ = try cli(from, ["CLUSTER", "SETSLOT", "\(slot)", "NODE", toID])
        for port in ports where port != from && port != to {
            _ = try cli(port, ["CLUSTER", "SETSLOT", "\(slot)", "NODE", toID])
        }
    }

    /// Starts one more node and joins it as a replica of the master on `masterPort` (`redis-cli --cluster add-node
    /// --cluster-slave`); waits until its link to the master is up. Answers its port.
    public func addReplica(of masterPort: Int) throws -> Int {
        let port = try startNode()
        let added = try run(["redis-cli", "--no-auth-warning"] + (password.map { ["-a", $0] } ?? [])
            + ["--cluster", "add-node", "127.0.0.1:\(port)", "127.0.0.1:\(masterPort)", "--cluster-slave",
               "--cluster-master-id", try nodeID(masterPort)])
        guard added.contains("New node added correctly") else {
            throw RedisClusterGroupError.failed("redis-cli --cluster add-node: \(added.suffix(400))")
        }
        try waitUntil("the replica on \(port) linked to \(masterPort)", timeout: 30) {
            ((try? self.cli(port, ["INFO", "replication"])) ?? "").contains("master_link_status:up")
        }
        return port
    }

    /// SIGKILLs the node on `port` (a crash: no shutdown, no failover handshake).
    public func kill(_ port: Int) {
        lock.withLock { servers[port] }?.kill()
    }

    /// Waits until the node on `port` is a master (`ROLE`), e.g. a replica promoted by a failover.
    public func waitUntilMaster(_ port: Int, timeout: Double) throws {
        try waitUntil("the node on \(port) to become a master", timeout: timeout) {
            ((try? self.cli(port, ["ROLE"])) ?? "").hasPrefix("master")
        }
    }

    /// `redis-cli --cluster reshard`: moves `slots` slots from `from` to `to`; its output.
    @discardableResult
    public func reshard(from: Int, to: Int, slots: Int) throws -> String {
        try run(["redis-cli", "--no-auth-warning"] + (password.map { ["-a", $0] } ?? [])
            + ["--cluster", "reshard", "127.0.0.1:\(ports[0])", "--cluster-from", try nodeID(from),
               "--cluster-to", try nodeID(to), "--cluster-slots", "\(slots)", "--cluster-yes"])
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
    public func cli(_ port: Int, _ arguments: [String]) throws -> String {
        try run(["redis-cli", "-p", "\(port)", "--raw", "--no-auth-warning"] + (password.map { ["-a", $0] } ?? [])
            + arguments)
    }

    private func run(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Starts a node on a free port whose cluster bus port (port + 10000) is free too; answers the port.
    ///
    /// A port found free can be taken before redis-server binds it (other tests pick ports the same way, and the bus
    /// port lies in the kernel's range for outgoing connections): redis-server then exits at once, and the node is
    /// started again on another port. Ready means the server's own "Ready to accept connections" line, so a slow
    /// start on a loaded machine waits for it rather than for a fixed number of pings.
    private func startNode() throws -> Int {
        var lastFailure = ""
        for _ in 0..<8 {
            let port = try EmbeddedRedis.freeLoopbackPort()
            guard port < 55_000, !lock.withLock({ servers[port] != nil }), Self.isFree(port + 10_000) else { continue }
            do {
                try startServer(port)
                return port
            } catch ChildProcessError.exitedEarly(let status, let out, let err) {
                lastFailure = "redis-server on \(port) exited (\(status)): \((out + err).suffix(300))"
                lock.withLock { _ = servers.removeValue(forKey: port) }
            }
        }
        throw RedisClusterGroupError.failed("cannot start a cluster node: \(lastFailure)")
    }

    /// Whether a loopback TCP port can be bound right now.
    private static func isFree(_ port: Int) -> Bool {
        LoopbackTCP.succeeds(port: port) { bind($0, $1, $2) }
    }

    private func startServer(_ port: Int) throws {
        let dir = directory + "/\(port)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let file = dir + "/redis.conf"
        let lines = ["port \(port)", "bind 127.0.0.1", "dir \(dir)", "save \"\"", "appendonly yes",
                     "cluster-enabled yes", "cluster-config-file nodes.conf", "cluster-node-timeout 5000"]
            + (password.map { ["requirepass \($0)", "masterauth \($0)"] } ?? [])
        try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let server = try ChildProcess(executable: "/usr/bin/env", arguments: ["redis-server", file])
        lock.withLock { servers[port] = server }
        try server.waitForOutput(containing: "Ready to accept connections", in: .stdout, timeout: 60)
    }

    private func waitUntil(_ what: String, timeout: Double, _ condition: () -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if condition() { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw RedisClusterGroupError.failed("timed out waiting for \(what)")
    }
}

public enum RedisClusterGroupError: Error, CustomStringConvertible {
    case failed(String)
    public var description: String {
        switch self {
        case .failed(let what): what
        }
    }
}
