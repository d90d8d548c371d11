import AgentChatRedis
import Foundation
import Synchronization

/// A Python script run as a server for tests: `python3 -c <script> <port> <arguments...>` on a free loopback port,
/// ready once the port accepts connections, stopped by its PID (SIGTERM, then SIGKILL). Its output goes to a log
/// file in a fresh temporary directory, removed by `stop()`. Every test that starts one must `stop()` it (deinit
/// stops it too, as a safety net).
///
/// The interpreter is `$PYTHON` when set, else `python3` from `$PATH` (what `make test` installs packages into), run
/// by its real path so that the PID is Python's own.
public final class PythonServer: Sendable {
    public let port: Int
    public let directory: String
    private let process: Mutex<Process?>

    public var pid: Int32? { process.withLock { $0?.processIdentifier } }

    /// Starts `script`; throws when it exits or does not accept connections within `startupTimeout` seconds.
    public init(name: String, script: String, arguments: [String] = [], startupTimeout: Double = 30) throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-\(name)-\(UUID().uuidString.prefix(8))").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        port = try EmbeddedRedis.freeLoopbackPort()
        process = Mutex(nil)
        let logPath = directory + "/server.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        defer { try? log.close() }

        let python = try Self.interpreter()
        let child = Process()
        child.executableURL = URL(fileURLWithPath: python)
        child.arguments = ["-c", script, String(port)] + arguments
        child.currentDirectoryURL = URL(fileURLWithPath: directory)
        child.standardInput = FileHandle.nullDevice
        child.standardOutput = log
        child.standardError = log
        if let error = EmbeddedRedis.runWithSignalsUnblocked(child) {  // a child of a test thread would ignore SIGTERM
            try? FileManager.default.removeItem(atPath: directory)
            throw PythonServerError("cannot run \(python): \(error)")
        }
        process.withLock { $0 = child }

        let deadline = Date().addingTimeInterval(startupTimeout)
        while !Self.accepts(port: port) {
            if !child.isRunning {
                let tail = logTail()
                stop()
                throw PythonServerError("\(name) exited with status \(child.terminationStatus):\n\(tail)")
            }
            if Date() > deadline {
                let tail = logTail()
                stop()
                throw PythonServerError("\(name) did not accept connections within \(startupTimeout) s:\n\(tail)")
            }
            Thread.sleep(forTimeInterval: 0.05)
        }
    }

    deinit { stop() }

    /// SIGTERM, up to `grace` seconds to exit, then SIGKILL; removes the directory. Idempotent.
    public func stop(grace: Double = 5) {
        if let child = process.withLock({ p -> Process? in defer { p = nil }; return p }), child.isRunning {
            kill(child.processIdentifier, SIGTERM)
            let deadline = Date().addingTimeInterval(grace)
            while child.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            if child.isRunning { kill(child.processIdentifier, SIGKILL) }
            // Not waitUntilExit(): it spins forever on a child Foundation failed to reap.
            let killed = Date().addingTimeInterval(2)
            while child.isRunning, Date() < killed { Thread.sleep(forTimeInterval: 0.01) }
        }
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// The last lines the script wrote.
    public func logTail(lines: Int = 30) -> String {
        guard let text = try? String(contentsOfFile: directory + "/server.log", encoding: .utf8) else { return "" }
        return text.split(separator: "\n", omittingEmptySubsequences: false).suffix(lines).joined(separator: "\n")
    }

    /// The interpreter's own path (`sys.executable`), found once. `python3` on `$PATH` may be a wrapper (pyenv's
    /// shims are bash scripts that start Python as their child), and the server must be the process whose PID
    /// `stop()` signals.
    static func interpreter() throws -> String {
        try resolvedInterpreter.withLock { cached in
            if let cached { return cached }
            let name = ProcessInfo.processInfo.environment["PYTHON"] ?? "python3"
            let probe = Process()
            probe.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            probe.arguments = [name, "-c", "import sys; print(sys.executable)"]
            let output = Pipe()
            probe.standardOutput = output
            probe.standardError = FileHandle.nullDevice
            do { try probe.run() } catch { throw PythonServerError("cannot run \(name): \(error)") }
            let data = output.fileHandleForReading.readDataToEndOfFile()
            let deadline = Date().addingTimeInterval(10)
            while probe.isRunning, Date() < deadline { Thread.sleep(forTimeInterval: 0.01) }
            let path = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            guard path.hasPrefix("/"), FileManager.default.isExecutableFile(atPath: path) else {
                throw PythonServerError("\(name) did not report its executable")
            }
            cached = path
            return path
        }
    }

    private static let resolvedInterpreter = Mutex<String?>(nil)

    /// Whether something accepts TCP connections on 127.0.0.1:`port` now.
    static func accepts(port: Int) -> Bool {
        LoopbackTCP.succeeds(port: port) { connect($0, $1, $2) }
    }
}

public struct PythonServerError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// localstripe (PyPI `localstripe`, installed by `make test`), a stateful fake of Stripe's API, on a free loopback
/// port. Started through its aiohttp application rather than its `localstripe` command, which listens on every
/// address and keeps its objects in the shared file `/tmp/localstripe.pickle`: this one listens on 127.0.0.1 only
/// and keeps them in memory.
public final class LocalStripe: Sendable {
    public let server: PythonServer
    public var baseURL: String { "http://127.0.0.1:\(server.port)" }

    static let script = """
        import sys
        try:
            from aiohttp import web
            from localstripe import resources, server
        except ImportError as e:
            sys.exit('localstripe is not installed (python3 -m pip install localstripe): %s' % e)
        resources.Store.dump_to_disk = lambda self: None
        web.run_app(server.app, host='127.0.0.1', port=int(sys.argv[1]), access_log=None, print=None)
        """

    public init() throws { server = try PythonServer(name: "localstripe", script: Self.script) }

    public func stop() { server.stop() }
}
