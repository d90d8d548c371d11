#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Testing
import TestSupport
@testable import WebSocketClient

/// An executable shell script named `agentchat-broker` in a fresh temporary directory, removed on deinit.
private final class Script {
    let path: String
    private let directory: URL

    init(_ body: String) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("ac-fixture-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        path = directory.appendingPathComponent("agentchat-broker").path
        try ("#!/bin/sh\n" + body).write(toFile: path, atomically: true, encoding: .utf8)
        chmod(path, 0o755)
    }

    deinit { try? FileManager.default.removeItem(at: directory) }
}

/// A stand-in broker: logs its arguments, announces a port, then waits for SIGTERM and exits 0.
private let standInBroker = """
    echo "argv: $*"
    echo "env: $AGENTCHAT_TEST_VALUE"
    trap 'echo "got TERM"; exit 0' TERM
    echo "starting" >&2
    echo "[info] AgentChat broker listening on http://127.0.0.1:45678"
    sleep 60 &
    wait $!
    """

@Suite struct BrokerProcessFixtureTests {
    @Test func startsParsesPortPassesArgumentsAndStopsOnSIGTERM() throws {
        let script = try Script(standInBroker)
        let broker = try BrokerProcess(extraArguments: ["--redis-url", "redis://127.0.0.1:6390"],
                                       environment: ["AGENTCHAT_TEST_VALUE": "s3cret"], executable: script.path)
        #expect(broker.port == 45678)
        #expect(broker.baseURL == "http://127.0.0.1:45678")
        let dataDir = broker.dataDirectory
        #expect(FileManager.default.fileExists(atPath: dataDir))
        #expect(broker.stdout.contains("argv: --host 127.0.0.1 --port 0 --data-dir \(dataDir) --log-level debug --redis-url redis://127.0.0.1:6390"))
        #expect(broker.stdout.contains("env: s3cret"))
        try broker.waitForOutput(containing: "starting", timeout: 5)
        #expect(broker.stderr == "starting\n")
        #expect(broker.process.isRunning)
        broker.terminate()
        #expect(try broker.waitForExit(timeout: 10) == 0)
        try broker.waitForOutput(containing: "got TERM", timeout: 5)
        broker.stop()
        #expect(!FileManager.default.fileExists(atPath: dataDir))
    }

    @Test func killReportsTheSignalAndWaitForExitTimesOut() throws {
        let standIn = try Script(standInBroker)
        let broker = try BrokerProcess(executable: standIn.path)
        #expect(throws: ChildProcessError.self) { try broker.waitForExit(timeout: 0.3) }
        #expect(broker.process.isRunning, "exited before the kill: \(String(describing: broker.process.exitStatus)); \(broker.combinedOutput)")
        broker.kill()
        let status = try broker.waitForExit(timeout: 10)
        // A failure here once in CI (cause unknown): the message says which status came instead (-1 = reaped by
        // someone else, 128+15 = a SIGTERM meant for another process) and what the script printed.
        #expect(status == 128 + SIGKILL, "status \(status); \(broker.combinedOutput)")
    }

    @Test func keepsAGivenDataDirectory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("ac-data-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let standIn = try Script(standInBroker)
        do {
            let broker = try BrokerProcess(dataDirectory: dir, executable: standIn.path)
            #expect(broker.stdout.contains("--data-dir \(dir) "))
            broker.stop()
        }
        #expect(FileManager.default.fileExists(atPath: dir))
    }

    @Test func earlyExitFailsWithTheCollectedOutput() throws {
        let script = try Script("""
            echo "loading config"
            echo "fatal: bad --redis-url" >&2
            exit 3
            """)
        do {
            _ = try BrokerProcess(executable: script.path, startupTimeout: 10)
            Issue.record("started")
        } catch BrokerProcessError.startupFailed(let why, let out, let err) {
            #expect(why.contains("status 3"))
            #expect(out.contains("loading config"))
            #expect(err.contains("fatal: bad --redis-url"))
        }
    }

    @Test func startupTimeoutFailsAndKillsTheProcess() throws {
        let script = try Script("echo \"pid $$\"\nexec sleep 60\n")
        do {
            _ = try BrokerProcess(executable: script.path, startupTimeout: 0.5)
            Issue.record("started")
        } catch BrokerProcessError.startupFailed(let why, let out, _) {
            #expect(why.contains("no listening line"))
            let pid = try #require(out.split(separator: " ").last.flatMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
            #expect(kill(pid, 0) == -1 && errno == ESRCH, "stand-in still running")
        }
    }

    @Test func asyncStartAndDeinitKillsTheProcessGroup() async throws {
        let script = try Script("""
            echo "AgentChat broker listening on http://127.0.0.1:5"
            sleep 60 &
            echo "child $!"
            wait
            """)
        var broker: BrokerProcess? = try await BrokerProcess.start(executable: script.path)
        #expect(broker?.port == 5)
        let line = try broker!.waitForOutput(containing: "child ", timeout: 5)
        let child = try #require(Int32(line.dropFirst("child ".count)))
        let pid = broker!.pid
        broker = nil
        #expect(kill(pid, 0) == -1, "broker still running")
        // The grandchild was in the same process group; it is gone (or a zombie being reaped by init) soon.
        let deadline = Deadline(seconds: 5)
        while kill(child, 0) == 0 && !deadline.hasPassed { usleep(10_000) }
        #expect(kill(child, 0) == -1, "grandchild sleep survived")
    }

    @Test func missingExecutableIsReported() {
        #expect(throws: ChildProcessError.self) {
            _ = try BrokerProcess(executable: "/nonexistent/agentchat-broker")
        }
    }

    @Test func locatesTheExecutable() throws {
        #expect(try BrokerProcess.locateExecutable(environment: ["AGENTCHAT_BROKER_BIN": "/opt/x/broker"]) == "/opt/x/broker")
        // Without the variable it looks beside the test binary (the build products directory).
        do {
            let found = try BrokerProcess.locateExecutable(environment: [:])
            #expect(found.hasSuffix("/agentchat-broker"))
        } catch BrokerProcessError.executableNotFound(let tried) {
            let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            let dir = URL(fileURLWithPath: exe).deletingLastPathComponent().path
            #expect(tried.first == dir + "/agentchat-broker", "\(tried)")
        }
    }

    @Test(arguments: [
        ("AgentChat broker listening on http://127.0.0.1:8080", 8080),
        ("2025-01-01T00:00:00Z info AgentChat broker listening on http://127.0.0.1:54321 (pid 7)", 54321),
        ("AgentChat broker listening on http://127.0.0.1:8080/", 8080),
        ("AgentChat broker listening on http://[::1]:9000", 9000),
    ])
    func parsesReadyLines(line: String, port: Int) {
        #expect(BrokerProcess.parsePort(fromReadyLine: line) == port)
    }

    @Test(arguments: ["AgentChat broker listening on http://127.0.0.1:", "AgentChat broker listening on http://127.0.0.1:99999",
                      "listening on http://127.0.0.1:80", "AgentChat broker listening on http://127.0.0.1:8o"])
    func rejectsBadReadyLines(line: String) {
        #expect(BrokerProcess.parsePort(fromReadyLine: line) == nil)
    }
}

@Suite struct HTTPProbeTests {
    @Test func sendsExactlyTheBytesAskedAndParsesContentLength() throws {
        let server = try ScriptedServer { peer in
            let (line, headers) = try peer.readRequestHead()
            guard line == "POST /v1/x HTTP/1.1", headers["content-length"] == "-5", headers["x-a"] == "1",
                  headers["host"] == nil, headers["connection"] == nil
            else { throw ScriptError("\(line) \(headers)") }
            guard try peer.readBytes(3) == Array("abc".utf8) else { throw ScriptError("body") }
            try peer.write("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"error\":\"x\"}")
            try peer.waitForEOF()
        }
        let response = try HTTPProbe.request(port: server.port, method: "POST", path: "/v1/x",
                                             headers: [("Content-Length", "-5"), ("X-A", "1")],
                                             body: Array("abc".utf8), addDefaultHeaders: false)
        #expect(response.status == 400)
        #expect(response.headers["content-type"] == "application/json")
        #expect(response.bodyText == #"{"error":"x"}"#)
        try server.join()
    }

    @Test func addsDefaultHeadersOnlyWhenAbsent() throws {
        let server = try ScriptedServer { peer in
            let (_, headers) = try peer.readRequestHead()
            guard headers["host"]?.hasPrefix("127.0.0.1:") == true, headers["connection"] == "close",
                  headers["content-length"] == "2", headers["upgrade"] == "h2c"
            else { throw ScriptError("\(headers)") }
            _ = try peer.readBytes(2)
            try peer.write("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\nX-T: 1\r\n\r\n")
            try peer.waitForEOF()
        }
        let response = try HTTPProbe.request(port: server.port, method: "PUT", path: "/",
                                             headers: [("Upgrade", "h2c")], body: [1, 2])
        #expect(response.status == 200)
        #expect(response.bodyText == "Wikipedia ")
        try server.join()
    }

    @Test func closeDelimitedBody() async throws {
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.0 503 Service Unavailable\r\nRetry-After: 1\r\n\r\nbusy, retry")
        }
        let response = try await HTTPProbe.request(port: server.port, path: "/healthz")
        #expect(response.status == 503)
        #expect(response.headers["retry-after"] == "1")
        #expect(response.bodyText == "busy, retry")
        try server.join()
    }

    @Test func serverClosingMidUploadStillYieldsItsResponse() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.1 413 Payload Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            peer.socket.shutdownWrite()
        }
        let response = try HTTPProbe.request(port: server.port, method: "POST", path: "/upload",
                                             body: [UInt8](repeating: 0x41, count: 8 << 20), timeout: 10)
        #expect(response.status == 413)
        #expect(response.body.isEmpty)
        try server.join()
    }

    @Test func incompleteResponseIsAnError() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.1 200 OK\r\nContent-")
        }
        #expect(throws: HTTPProbeError.self) { _ = try HTTPProbe.request(port: server.port, timeout: 5) }
        try server.join()
    }

    @Test func rawExchangeReturnsEverythingUntilCloseOrTimeout() async throws {
        let server = try ScriptedServer { peer in
            guard try peer.readBytes(9) == Array("PRI * ...".utf8) else { throw ScriptError("bytes") }
            try peer.write("HTTP/1.1 400 Bad Request\r\n\r\n")
        }
        let bytes = try await HTTPProbe.rawExchange(port: server.port, bytes: Array("PRI * ...".utf8))
        #expect(String(decoding: bytes, as: UTF8.self) == "HTTP/1.1 400 Bad Request\r\n\r\n")
        #expect(try HTTPProbe.parse(bytes).status == 400)
        try server.join()

        let silent = try ScriptedServer { peer in
            _ = try peer.readBytes(1)
            try peer.write([0x68, 0x69])
            try peer.waitForEOF(timeout: 5)
        }
        #expect(try await HTTPProbe.rawExchange(port: silent.port, bytes: [0], timeout: 0.5) == [0x68, 0x69])
        try silent.join()
    }
}
