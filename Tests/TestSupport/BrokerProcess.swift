#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WebSocketClient

public enum ChildProcessError: Error, Sendable, CustomStringConvertible {
    case notExecutable(String)
    case spawnFailed(String, errno: Int32)
    /// The process did not exit (or the awaited output did not appear) in time; carries the output so far.
    case timeout(String, stdout: String, stderr: String)
    /// The process exited while we waited for something else; carries its status and output.
    case exitedEarly(status: Int32, stdout: String, stderr: String)

    public var description: String {
        switch self {
        case .notExecutable(let p): "not an executable file: \(p)"
        case .spawnFailed(let p, let e): "posix_spawn \(p) failed: \(String(cString: strerror(e)))"
        case .timeout(let what, let out, let err): "timed out waiting for \(what)\n--- stdout ---\n\(out)\n--- stderr ---\n\(err)"
        case .exitedEarly(let s, let out, let err): "process exited with status \(s)\n--- stdout ---\n\(out)\n--- stderr ---\n\(err)"
        }
    }
}

/// A spawned child process with its stdout and stderr collected into buffers by two dedicated threads.
///
/// The child runs in its own process group; signals go to the whole group so helper processes it forks
/// (e.g. a shell script's `sleep`) go too. `stop()` and `deinit` SIGKILL the group and reap the child.
/// Thread-safe.
public final class ChildProcess: @unchecked Sendable {
    public enum Stream: Sendable { case stdout, stderr, either }

    public let pid: pid_t
    public let executable: String
    public let arguments: [String]

    private let condition = NSCondition()
    private var stdoutBytes: [UInt8] = []
    private var stderrBytes: [UInt8] = []
    private var openStreams = 2
    private var rawStatus: Int32?

    /// Spawns `executable` with `arguments`. The environment is the current one plus `environment`
    /// (which overrides), unless `inheritEnvironment` is false. stdin is /dev/null.
    public init(executable: String, arguments: [String] = [], environment: [String: String] = [:],
                inheritEnvironment: Bool = true) throws {
        guard access(executable, X_OK) == 0 else { throw ChildProcessError.notExecutable(executable) }
        self.executable = executable
        self.arguments = arguments

        // pipe2(O_CLOEXEC) is not imported; set FD_CLOEXEC right away and serialize our own spawns so no other
        // child spawned from this process inherits a write end (which would keep our readers from seeing EOF).
        spawnLock.lock()
        defer { spawnLock.unlock() }
        var outPipe: [Int32] = [-1, -1], errPipe: [Int32] = [-1, -1]
        guard pipe(&outPipe) == 0 else { throw ChildProcessError.spawnFailed("pipe", errno: errno) }
        guard pipe(&errPipe) == 0 else {
            close(outPipe[0]); close(outPipe[1])
            throw ChildProcessError.spawnFailed("pipe", errno: errno)
        }
        for fd in outPipe + errPipe { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }

        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_adddup2(&actions, outPipe[1], 1)
        posix_spawn_file_actions_adddup2(&actions, errPipe[1], 2)
        // Close every other inherited descriptor (test sockets, files other threads are writing...).
        if let addCloseFrom = addCloseFromNP { _ = addCloseFrom(&actions, 3) }

        var attr = posix_spawnattr_t()
        posix_spawnattr_init(&attr)
        defer { posix_spawnattr_destroy(&attr) }
        var noSignals = sigset_t()
        sigemptyset(&noSignals)
        posix_spawnattr_setsigmask(&attr, &noSignals)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attr, &defaults)
        posix_spawnattr_setpgroup(&attr, 0)
        posix_spawnattr_setflags(&attr, Int16(POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        var env = inheritEnvironment ? ProcessInfo.processInfo.environment : [:]
        for (k, v) in environment { env[k] = v }
        let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = env.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            for p in argv { free(p) }
            for p in envp { free(p) }
        }
        var childPID: pid_t = 0
        var rc: Int32 = 0
        for attempt in 0..<50 {
            rc = posix_spawn(&childPID, executable, &actions, &attr, argv, envp)
            // ETXTBSY: a just-written executable is still open for writing in some concurrently forked process
            // (the fd lives until that child execs); retry briefly.
            guard rc == ETXTBSY, attempt < 49 else { break }
            usleep(20_000)
        }
        close(outPipe[1]); close(errPipe[1])
        guard rc == 0 else {
            close(outPipe[0]); close(errPipe[0])
            throw ChildProcessError.spawnFailed(executable, errno: rc)
        }
        pid = childPID
        startReader(fd: outPipe[0], isStdout: true)
        startReader(fd: errPipe[0], isStdout: false)
    }

    deinit { stop() }

    private func startReader(fd: Int32, isStdout: Bool) {
        // The thread holds `self` only weakly-free: it captures the process strongly until EOF, which comes at the
        // latest when `stop()` kills the group, so a forgotten process is still cleaned up by `deinit` of its owner.
        let box = ReaderTarget(process: self)
        DedicatedThread.start {
            var buffer = [UInt8](repeating: 0, count: 65536)
            while true {
                let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
                if n < 0 && errno == EINTR { continue }
                guard n > 0 else { break }
                box.process?.append(Array(buffer[0..<n]), isStdout: isStdout)
            }
            close(fd)
            box.process?.streamClosed()
        }
    }

    private func append(_ bytes: [UInt8], isStdout: Bool) {
        condition.lock()
        if isStdout { stdoutBytes += bytes } else { stderrBytes += bytes }
        condition.broadcast()
        condition.unlock()
    }

    private func streamClosed() {
        condition.lock()
        openStreams -= 1
        condition.broadcast()
        condition.unlock()
    }

    // MARK: - Output

    /// Everything the child wrote to stdout so far (lossy UTF-8).
    public var stdout: String { condition.withLock { String(decoding: stdoutBytes, as: UTF8.self) } }
    /// Everything the child wrote to stderr so far (lossy UTF-8).
    public var stderr: String { condition.withLock { String(decoding: stderrBytes, as: UTF8.self) } }
    /// stdout then stderr, for assertions that something appears (or never appears) in any output.
    public var combinedOutput: String { stdout + "\n" + stderr }

    /// Waits until a complete line (newline-terminated) of `stream` satisfies `predicate` and returns it.
    /// Throws `.exitedEarly` if the process exits first, `.timeout` after `timeout` seconds.
    public func waitForLine(in stream: Stream = .stdout, timeout: Double,
                            description: String = "an output line",
                            where predicate: (String) -> Bool) throws -> String {
        let limit = Date(timeIntervalSinceNow: timeout)
        var exitSeenAt: Date?
        condition.lock()
        defer { condition.unlock() }
        while true {
            var sources: [[UInt8]] = []
            if stream != .stderr { sources.append(stdoutBytes) }
            if stream != .stdout { sources.append(stderrBytes) }
            for bytes in sources {
                for line in completeLines(bytes) where predicate(line) { return line }
            }
            reapLocked(blocking: false)
            if rawStatus != nil {
                // Exited. Once both pipes hit EOF everything is read; if a grandchild keeps them open, allow a
                // short grace period for the readers to drain what the child wrote.
                if exitSeenAt == nil { exitSeenAt = Date() }
                if openStreams == 0 || Date().timeIntervalSince(exitSeenAt!) > 0.5 {
                    throw ChildProcessError.exitedEarly(status: Self.decode(rawStatus!), stdout: text(stdoutBytes),
                                                        stderr: text(stderrBytes))
                }
            }
            if Date() >= limit {
                throw ChildProcessError.timeout(description, stdout: text(stdoutBytes), stderr: text(stderrBytes))
            }
            // Wake periodically to notice an exit (no pipe activity signals it).
            _ = condition.wait(until: min(limit, Date(timeIntervalSinceNow: 0.05)))
        }
    }

    /// Waits until `stream` contains `substring`; returns the line containing it.
    @discardableResult
    public func waitForOutput(containing substring: String, in stream: Stream = .either, timeout: Double) throws -> String {
        try waitForLine(in: stream, timeout: timeout, description: "output containing \"\(substring)\"") {
            $0.contains(substring)
        }
    }

    private func completeLines(_ bytes: [UInt8]) -> [String] {
        guard let lastNewline = bytes.lastIndex(of: 10) else { return [] }
        return bytes[..<lastNewline].split(separator: 10, omittingEmptySubsequences: false).map {
            String(decoding: $0.last == 13 ? $0.dropLast() : $0, as: UTF8.self)
        }
    }

    private func text(_ b: [UInt8]) -> String { String(decoding: b, as: UTF8.self) }

    // MARK: - Lifecycle

    /// Sends `signal` to the child's process group.
    public func signal(_ signal: Int32) {
        condition.withLock {
            reapLocked(blocking: false)
            // Once reaped the pid may be reused: never signal it (leftover group members were killed at reap time).
            if rawStatus == nil { _ = sendSignal(-pid, signal) }
        }
    }

    /// Sends SIGTERM (or `signal`) to the child's process group.
    public func terminate(signal sig: Int32 = SIGTERM) { signal(sig) }

    /// SIGKILLs the child's process group.
    public func kill() { signal(SIGKILL) }

    /// Whether the child has not been seen to exit.
    public var isRunning: Bool { condition.withLock { reapLocked(blocking: false); return rawStatus == nil } }

    /// The exit status once exited: the exit code, or 128 + signal number if a signal ended it.
    public var exitStatus: Int32? { condition.withLock { reapLocked(blocking: false); return rawStatus.map(Self.decode) } }

    /// Waits for the child to exit; returns the exit code, or 128 + signal number if a signal ended it. Its output
    /// is then complete (both pipes read to their end), unless a process it left behind keeps them open: then this
    /// waits at most half a second more for them.
    /// Throws `.timeout` (the child keeps running) if it does not exit within `timeout` seconds.
    @discardableResult
    public func waitForExit(timeout: Double) throws -> Int32 {
        let limit = Date(timeIntervalSinceNow: timeout)
        condition.lock()
        defer { condition.unlock() }
        var exitSeenAt: Date?
        while true {
            reapLocked(blocking: false)
            if let status = rawStatus {
                exitSeenAt = exitSeenAt ?? Date()
                if openStreams == 0 || Date().timeIntervalSince(exitSeenAt!) > 0.5 { return Self.decode(status) }
            }
            if Date() >= limit, let status = rawStatus { return Self.decode(status) }
            if Date() >= limit {
                throw ChildProcessError.timeout("exit of \(executable) (pid \(pid))", stdout: text(stdoutBytes),
                                                stderr: text(stderrBytes))
            }
            _ = condition.wait(until: min(limit, Date(timeIntervalSinceNow: 0.02)))
        }
    }

    /// SIGKILLs the process group if the child still runs and reaps it. Idempotent.
    public func stop() {
        condition.lock()
        defer { condition.unlock() }
        reapLocked(blocking: false)
        guard rawStatus == nil else { return }
        // Politely first: a broker stops its embedded redis-server (which lives in a process group of its own) on
        // SIGTERM, and would orphan it on SIGKILL.
        _ = sendSignal(-pid, SIGTERM)
        for _ in 0..<300 {
            reapLocked(blocking: false)
            if rawStatus != nil { return }
            condition.unlock()
            usleep(10_000)
            condition.lock()
        }
        _ = sendSignal(-pid, SIGKILL)
        reapLocked(blocking: true)
    }

    /// Must hold `condition`.
    private func reapLocked(blocking: Bool) {
        guard rawStatus == nil else { return }
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, blocking ? 0 : WNOHANG)
            if r == pid {
                rawStatus = status
                // Kill helpers the child left behind in its group (they would keep the pipes open); the group id
                // cannot have been reused while any of them lives.
                _ = sendSignal(-pid, SIGKILL)
                condition.broadcast()
                return
            }
            if r < 0 && errno == EINTR { continue }
            if r < 0 { rawStatus = -1 } // ECHILD: someone else reaped it; treat as gone.
            return
        }
    }

    private static func decode(_ status: Int32) -> Int32 {
        if status == -1 { return -1 }
        let sig = status & 0x7F
        if sig == 0 { return (status >> 8) & 0xFF }
        return 128 + sig
    }
}

private let spawnLock = NSLock()

/// glibc >= 2.34 `posix_spawn_file_actions_addclosefrom_np`, looked up at run time (Swift does not import it).
private let addCloseFromNP: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32)? = {
    #if canImport(Glibc)
    guard let symbol = dlsym(nil, "posix_spawn_file_actions_addclosefrom_np") else { return nil }
    return unsafeBitCast(symbol, to: (@convention(c) (UnsafeMutablePointer<posix_spawn_file_actions_t>, Int32) -> Int32).self)
    #else
    return nil
    #endif
}()

private final class ReaderTarget: @unchecked Sendable {
    weak var process: ChildProcess?
    init(process: ChildProcess) { self.process = process }
}

public enum BrokerProcessError: Error, Sendable, CustomStringConvertible {
    case executableNotFound([String])
    case startupFailed(String, stdout: String, stderr: String)

    public var description: String {
        switch self {
        case .executableNotFound(let tried):
            "agentchat-broker not found (set AGENTCHAT_BROKER_BIN); tried: \(tried.joined(separator: ", "))"
        case .startupFailed(let why, let out, let err):
            "broker failed to start: \(why)\n--- stdout ---\n\(out)\n--- stderr ---\n\(err)"
        }
    }
}

/// Test fixture: runs `agentchat-broker --host 127.0.0.1 --port 0 --data-dir <dir> --log-level <level> <extra>`,
/// waits for `AgentChat broker listening on http://127.0.0.1:<PORT>` (`https://` when started with `--tls-cert`) on
/// stdout and exposes the port and the collected output. The process is SIGKILLed on `stop()`/`deinit` if still running; a data directory
/// created by the fixture is removed then too.
public final class BrokerProcess: @unchecked Sendable {
    public static let readyMarker = "AgentChat broker listening on http://"
    /// The listening line of a broker serving TLS.
    public static let tlsReadyMarker = "AgentChat broker listening on https://"

    public let process: ChildProcess
    public let host = "127.0.0.1"
    public let port: Int
    public let dataDirectory: String
    private let ownsDataDirectory: Bool
    /// Whether the broker serves TLS (its listening line says `https://`).
    public let isTLS: Bool

    /// `http://127.0.0.1:PORT`, or `https://…` when the broker serves TLS.
    public var baseURL: String { "\(isTLS ? "https" : "http")://\(host):\(port)" }
    public var pid: pid_t { process.pid }
    public var stdout: String { process.stdout }
    public var stderr: String { process.stderr }
    public var combinedOutput: String { process.combinedOutput }

    /// Starts the broker and waits (up to `startupTimeout`) until it reports its port.
    ///
    /// - Parameters:
    ///   - extraArguments: appended after the standard ones, e.g. `["--redis-url", "redis://127.0.0.1:6390"]`.
    ///   - environment: added to (overriding) the inherited environment.
    ///   - dataDirectory: reuse a directory (kept afterwards), e.g. to restart on the same data; nil creates a
    ///     fresh temporary one that is removed on `stop()`.
    ///   - executable: explicit binary; default `BrokerProcess.locateExecutable()`.
    public init(extraArguments: [String] = [], environment: [String: String] = [:], dataDirectory: String? = nil,
                executable: String? = nil, logLevel: String = "debug", startupTimeout: Double = 30) throws {
        let binary = try executable ?? Self.locateExecutable()
        if let dataDirectory {
            self.dataDirectory = dataDirectory
            ownsDataDirectory = false
        } else {
            self.dataDirectory = try Self.makeTemporaryDirectory()
            ownsDataDirectory = true
        }
        let args = ["--host", "127.0.0.1", "--port", "0", "--data-dir", self.dataDirectory, "--log-level", logLevel]
            + extraArguments
        do {
            process = try ChildProcess(executable: binary, arguments: args, environment: environment)
        } catch {
            if ownsDataDirectory { try? FileManager.default.removeItem(atPath: self.dataDirectory) }
            throw error
        }
        do {
            let line = try process.waitForLine(in: .stdout, timeout: startupTimeout,
                                               description: "the broker's listening line") {
                $0.contains(Self.readyMarker) || $0.contains(Self.tlsReadyMarker)
            }
            guard let port = Self.parsePort(fromReadyLine: line) else {
                throw BrokerProcessError.startupFailed("cannot parse a port from: \(line)", stdout: process.stdout,
                                                       stderr: process.stderr)
            }
            self.port = port
            isTLS = line.contains(Self.tlsReadyMarker)
        } catch {
            process.stop()
            if ownsDataDirectory { try? FileManager.default.removeItem(atPath: self.dataDirectory) }
            switch error {
            case ChildProcessError.exitedEarly(let status, let out, let err):
                throw BrokerProcessError.startupFailed("exited with status \(status) before listening", stdout: out, stderr: err)
            case ChildProcessError.timeout(_, let out, let err):
                throw BrokerProcessError.startupFailed("no listening line within \(startupTimeout) s", stdout: out, stderr: err)
            default:
                throw error
            }
        }
    }

    /// Async start on a dedicated thread.
    public static func start(extraArguments: [String] = [], environment: [String: String] = [:],
                             dataDirectory: String? = nil, executable: String? = nil, logLevel: String = "debug",
                             startupTimeout: Double = 30) async throws -> BrokerProcess {
        try await DedicatedThread.run {
            try BrokerProcess(extraArguments: extraArguments, environment: environment, dataDirectory: dataDirectory,
                              executable: executable, logLevel: logLevel, startupTimeout: startupTimeout)
        }
    }

    deinit { stop() }

    /// `AgentChat broker listening on http://127.0.0.1:8080` (or `https://`, possibly with a log prefix) → 8080.
    public static func parsePort(fromReadyLine line: String) -> Int? {
        guard let range = line.range(of: readyMarker) ?? line.range(of: tlsReadyMarker) else { return nil }
        let authority = line[range.upperBound...].prefix { !$0.isWhitespace && $0 != "/" }
        guard let colon = authority.lastIndex(of: ":") else { return nil }
        let digits = authority[authority.index(after: colon)...]
        guard !digits.isEmpty, digits.allSatisfy(\.isASCII), let port = Int(digits), (1...65535).contains(port)
        else { return nil }
        return port
    }

    /// The broker binary: `$AGENTCHAT_BROKER_BIN` if set, else `agentchat-broker` in the directory of the running
    /// test binary (the build products directory) or, for a macOS `.xctest` bundle, beside the bundle.
    public static func locateExecutable(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> String {
        try locateProduct("agentchat-broker", override: "AGENTCHAT_BROKER_BIN", environment: environment)
    }

    /// A product of this package (`name`) beside the running test binary, or the path in `$override` when set.
    public static func locateProduct(_ name: String, override variable: String,
                                     environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> String
    {
        if let override = environment[variable], !override.isEmpty { return override }
        var directories: [URL] = []
        if let exe = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") {
            directories.append(URL(fileURLWithPath: exe).deletingLastPathComponent())
        }
        if let first = CommandLine.arguments.first {
            directories.append(URL(fileURLWithPath: first).standardizedFileURL.deletingLastPathComponent())
        }
        directories.append(Bundle.main.bundleURL)
        directories.append(Bundle.main.bundleURL.deletingLastPathComponent())
        for bundle in Bundle.allBundles where bundle.bundleURL.pathExtension == "xctest" {
            directories.append(bundle.bundleURL.deletingLastPathComponent())
        }
        var tried: [String] = []
        for dir in directories {
            // The test binary may live in X.xctest/Contents/MacOS; walk up a few levels.
            var d = dir
            for _ in 0..<4 {
                let candidate = d.appendingPathComponent(name).path
                if !tried.contains(candidate) {
                    tried.append(candidate)
                    if access(candidate, X_OK) == 0 { return candidate }
                }
                d = d.deletingLastPathComponent()
            }
        }
        throw BrokerProcessError.executableNotFound(tried)
    }

    static func makeTemporaryDirectory() throws -> String {
        var template = Array((NSTemporaryDirectory() + "/agentchat-broker-XXXXXX").utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw ChildProcessError.spawnFailed("mkdtemp", errno: errno)
        }
        return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Sends `signal` (default SIGTERM) to the broker.
    public func terminate(signal: Int32 = SIGTERM) { process.terminate(signal: signal) }

    /// Waits for exit; returns the exit code or 128 + signal. Throws on timeout.
    @discardableResult
    public func waitForExit(timeout: Double) throws -> Int32 { try process.waitForExit(timeout: timeout) }

    /// SIGKILLs the broker.
    public func kill() { process.kill() }

    /// Kills the broker if still running, reaps it, and removes a fixture-created data directory. Idempotent.
    public func stop() {
        process.stop()
        if ownsDataDirectory { try? FileManager.default.removeItem(atPath: dataDirectory) }
    }

    /// Waits until the broker's stdout or stderr contains `substring`.
    @discardableResult
    public func waitForOutput(containing substring: String, timeout: Double) throws -> String {
        try process.waitForOutput(containing: substring, timeout: timeout)
    }
}

private func sendSignal(_ pid: pid_t, _ sig: Int32) -> Int32 {
    #if canImport(Glibc)
    Glibc.kill(pid, sig)
    #else
    Darwin.kill(pid, sig)
    #endif
}
