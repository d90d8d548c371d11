import CHiredis
import Foundation
import Synchronization

/// A `redis-server` child process with a generated configuration, for tests and single-machine deployments.
///
/// Not loop-bound: every method may be called from any thread (they block). `init` returns once the server
/// answers PING; `stop()` ends it (SIGTERM, then SIGKILL after a grace period).
public final class EmbeddedRedis: Sendable {
    /// How the server listens.
    public enum Listener: Sendable, Hashable {
        /// `<dataDirectory>/redis.sock` with `port 0`; falls back to a free loopback TCP port when the socket path
        /// would exceed 100 bytes (the limit of `sun_path` is 108).
        case unixSocket
        /// `bind 127.0.0.1` on `port`, or on a free port when nil.
        case loopbackTCP(port: Int?)
    }

    /// The `appendfsync` policy.
    public enum AppendFsync: String, Sendable {
        case everysec
        case always
    }

    public struct Configuration: Sendable {
        /// Created if missing. Holds redis.conf, redis.log, the AOF directory and the socket.
        public var dataDirectory: String
        public var listener: Listener = .unixSocket
        public var appendFsync: AppendFsync = .everysec
        /// Adds `save ""` (no RDB snapshots; the AOF alone persists).
        public var disableSnapshots = true
        /// Directories searched for `redis-server`; nil means `$PATH`, then /usr/bin and /usr/sbin.
        public var searchPath: [String]?
        /// How long to wait for the server to answer PING.
        public var startupTimeout: Duration = .seconds(10)

        public init(dataDirectory: String, listener: Listener = .unixSocket, appendFsync: AppendFsync = .everysec) {
            self.dataDirectory = dataDirectory
            self.listener = listener
            self.appendFsync = appendFsync
        }
    }

    public let configuration: Configuration
    /// Where the server listens.
    public let endpoint: RedisEndpoint
    /// The absolute data directory.
    public let dataDirectory: String
    /// The server's process id.
    public let pid: Int32
    private let process: Mutex<Process?>

    /// Starts the server and waits until it answers PING.
    public init(configuration: Configuration) throws(EmbeddedRedisError) {
        self.configuration = configuration
        let executable = try EmbeddedRedis.locateServer(searchPath: configuration.searchPath)
        let directory = URL(fileURLWithPath: configuration.dataDirectory).standardizedFileURL.path
        dataDirectory = directory
        do {
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        } catch {
            throw EmbeddedRedisError(.startFailed("cannot create \(directory): \(error)"))
        }

        // A broker killed with SIGKILL leaves its redis-server running on this directory; two servers writing one
        // AOF would corrupt it, so a survivor is stopped (cleanly: it flushes its AOF) before a new one starts.
        EmbeddedRedis.stopSurvivor(pidFile: directory + "/redis.pid")

        var lines = [
            "daemonize no",
            "dir \(quoted(directory))",
            "pidfile \(quoted(directory + "/redis.pid"))",
            "appendonly yes",
            "appendfsync \(configuration.appendFsync.rawValue)",
            "protected-mode yes",
            "logfile \(quoted(directory + "/redis.log"))",
        ]
        if configuration.disableSnapshots { lines.append("save \"\"") }
        let socketPath = directory + "/redis.sock"
        var tcpPort: Int?
        switch configuration.listener {
        case .unixSocket where socketPath.utf8.count <= 100:
            tcpPort = nil
        case .unixSocket:
            tcpPort = try EmbeddedRedis.freeLoopbackPort()
        case .loopbackTCP(let port):
            if let port { tcpPort = port } else { tcpPort = try EmbeddedRedis.freeLoopbackPort() }
        }
        if let tcpPort {
            lines += ["port \(tcpPort)", "bind 127.0.0.1"]
            endpoint = .tcp(host: "127.0.0.1", port: tcpPort)
        } else {
            lines += ["port 0", "unixsocket \(quoted(socketPath))", "unixsocketperm 700"]
            endpoint = .unix(path: socketPath)
        }
        let configPath = directory + "/redis.conf"
        do {
            try (lines.joined(separator: "\n") + "\n").write(toFile: configPath, atomically: true, encoding: .utf8)
        } catch {
            throw EmbeddedRedisError(.startFailed("cannot write \(configPath): \(error)"))
        }

        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = [configPath]
        process.standardInput = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        if let error = EmbeddedRedis.runWithSignalsUnblocked(process) {
            throw EmbeddedRedisError(.startFailed("cannot run \(executable): \(error)"))
        }
        pid = process.processIdentifier
        self.process = Mutex(process)

        let deadline = ContinuousClock.now + configuration.startupTimeout
        // Ready when *our* child answers: another server already on the port would answer a bare PING.
        while EmbeddedRedis.serverProcessID(endpoint) != pid {
            if !process.isRunning {
                self.process.withLock { $0 = nil }
                throw EmbeddedRedisError(.startFailed(
                    "redis-server exited with status \(process.terminationStatus); log tail:\n\(logTail())"))
            }
            if ContinuousClock.now >= deadline {
                stop()
                throw EmbeddedRedisError(.startFailed(
                    "redis-server did not answer within \(configuration.startupTimeout); log tail:\n\(logTail())"))
            }
            Thread.sleep(forTimeInterval: 0.02)
        }
    }

    deinit { stop() }

    /// Stops a `redis-server` left running by an earlier process on the same data directory, if any.
    static func stopSurvivor(pidFile: String) {
        guard let text = try? String(contentsOfFile: pidFile, encoding: .utf8),
            let pid = Int32(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 1,
            let cmdline = try? String(contentsOfFile: "/proc/\(pid)/cmdline", encoding: .utf8),
            cmdline.contains("redis-server")
        else { return }
        Foundation.kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(10)
        while Foundation.kill(pid, 0) == 0, ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.02) }
        if Foundation.kill(pid, 0) == 0 { Foundation.kill(pid, SIGKILL) }
    }

    /// Whether the child is still running.
    public var isRunning: Bool { process.withLock { $0?.isRunning ?? false } }

    /// SIGTERM, up to `grace` to exit (Redis flushes the AOF), then SIGKILL. Idempotent.
    public func stop(grace: Duration = .seconds(5)) {
        guard let process = process.withLock({ p -> Process? in defer { p = nil }; return p }) else { return }
        guard process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGTERM)
        let deadline = ContinuousClock.now + grace
        while process.isRunning, ContinuousClock.now < deadline { Thread.sleep(forTimeInterval: 0.01) }
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// SIGKILL now, as a crash would; waits for the child to be gone. Idempotent.
    public func kill() {
        guard let process = process.withLock({ p -> Process? in defer { p = nil }; return p }) else { return }
        guard process.isRunning else { return }
        Foundation.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// The last `lines` lines of the server's log.
    public func logTail(lines: Int = 20) -> String {
        guard let text = try? String(contentsOfFile: dataDirectory + "/redis.log", encoding: .utf8) else {
            return "(no log)"
        }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// Finds `redis-server` in `searchPath` (default: `$PATH`, /usr/bin, /usr/sbin).
    public static func locateServer(searchPath: [String]? = nil) throws(EmbeddedRedisError) -> String {
        let directories = searchPath ?? {
            let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
            return path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/sbin"]
        }()
        for directory in directories where !directory.isEmpty {
            let candidate = directory + "/redis-server"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        throw EmbeddedRedisError(.serverNotFound(directories))
    }

    /// A loopback TCP port free at the time of the call.
    public static func freeLoopbackPort() throws(EmbeddedRedisError) -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw EmbeddedRedisError(.startFailed("socket() failed: errno \(errno)")) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = 0
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { sockaddrPointer in
                bind(fd, sockaddrPointer, length) == 0 && getsockname(fd, sockaddrPointer, &length) == 0
            }
        }
        guard bound else { throw EmbeddedRedisError(.startFailed("cannot bind a loopback port: errno \(errno)")) }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    /// Starts `process` from a fresh thread whose signal mask is empty.
    ///
    /// `Process.run()` spawns the child from the calling thread and the child inherits that thread's signal mask.
    /// Swift concurrency and Dispatch worker threads block almost every signal, and redis-server does not unblock
    /// them, so a server started from a test or an async context would ignore SIGTERM (observed: `SigBlk` had
    /// SIGTERM set and `stop()` always fell through to SIGKILL after the grace period).
    public static func runWithSignalsUnblocked(_ process: Process) -> (any Error)? {
        let outcome = Mutex<(any Error)?>(nil)
        let done = DispatchSemaphore(value: 0)
        let thread = Thread {
            var empty = sigset_t()
            sigemptyset(&empty)
            pthread_sigmask(SIG_SETMASK, &empty, nil)
            do { try process.run() } catch { outcome.withLock { $0 = error } }
            done.signal()
        }
        thread.start()
        done.wait()
        return outcome.withLock { $0 }
    }

    /// The `process_id` a server at `endpoint` reports in `INFO server`: one blocking connect with a short timeout.
    static func serverProcessID(_ endpoint: RedisEndpoint) -> Int32? {
        let timeout = timeval(tv_sec: 0, tv_usec: 200_000)
        let context: UnsafeMutablePointer<redisContext>? = switch endpoint {
        case .tcp(let host, let port): redisConnectWithTimeout(host, Int32(port), timeout)
        case .unix(let path): redisConnectUnixWithTimeout(path, timeout)
        }
        guard let context else { return nil }
        defer { redisFree(context) }
        guard context.pointee.err == 0 else { return nil }
        redisSetTimeout(context, timeout)
        let reply = "INFO".withCString { info in
            "server".withCString { section -> UnsafeMutableRawPointer? in
                var argv: [UnsafePointer<CChar>?] = [info, section]
                var lengths = [4, 6]
                return redisCommandArgv(context, 2, &argv, &lengths)
            }
        }
        guard let reply else { return nil }
        defer { freeReplyObject(reply) }
        // A server still loading its AOF answers with an error here: not ready yet.
        guard case .bulk(let bytes) = RedisValue(reply: reply.assumingMemoryBound(to: redisReply.self)) else {
            return nil
        }
        for line in String(decoding: bytes, as: UTF8.self).split(whereSeparator: \.isNewline)
        where line.hasPrefix("process_id:") {
            return Int32(line.dropFirst("process_id:".count))
        }
        return nil
    }
}

/// Quotes a value for redis.conf.
private func quoted(_ value: String) -> String {
    "\"" + value.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

/// Why an embedded Redis could not start.
public struct EmbeddedRedisError: Error, Sendable, CustomStringConvertible {
    enum Code: Sendable {
        case serverNotFound([String])
        case startFailed(String)
    }

    let code: Code
    init(_ code: Code) { self.code = code }

    /// Whether `redis-server` was not found.
    public var isServerNotFound: Bool {
        if case .serverNotFound = code { return true }
        return false
    }

    public var description: String {
        switch code {
        case .serverNotFound(let directories):
            "redis-server not found (searched \(directories.joined(separator: ":"))); "
                + "install it with `apt-get install redis-server`"
        case .startFailed(let message):
            "cannot start redis-server: \(message)"
        }
    }
}
