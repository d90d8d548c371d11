import AgentChatClient
import Foundation
import TestSupport
import WebSocketClient
#if canImport(Glibc)
import Glibc
#endif

/// The URL of a real broker to run the end-to-end suite against (`AGENTCHAT_TEST_SERVER`), if set.
let realBrokerURL: String? = {
    let value = ProcessInfo.processInfo.environment["AGENTCHAT_TEST_SERVER"]
    return value?.isEmpty == false ? value : nil
}()

/// A fresh temporary directory; removed by `removeTemporaryDirectory`.
func makeTemporaryDirectory() throws -> String {
    var template = Array((NSTemporaryDirectory() + "/agentchat-client-XXXXXX").utf8CString)
    guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
        throw WebSocketError.system(operation: "mkdtemp", errno: errno)
    }
    return String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

func fileMode(_ path: String) -> UInt32 {
    var info = stat()
    guard stat(path, &info) == 0 else { return 0 }
    return UInt32(info.st_mode & 0o777)
}

struct TimedOut: Error, CustomStringConvertible {
    let description: String
}

/// Polls `condition` every 20 ms until it holds, or throws after `timeout` seconds.
func waitUntil(_ what: String, timeout: Double = 10, _ condition: () async -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(timeout)
    while ContinuousClock.now < deadline {
        if await condition() { return }
        try await Task.sleep(for: .milliseconds(20))
    }
    throw TimedOut(description: "timed out waiting for \(what)")
}

/// Client settings for tests: fast reconnection.
func testConfiguration() -> AgentChatClient.Configuration {
    var configuration = AgentChatClient.Configuration()
    configuration.backoff = ReconnectBackoff(initialDelay: 0.05, maxDelay: 0.2)
    configuration.requestTimeout = 5
    configuration.connectTimeout = 5
    return configuration
}

/// Collects every value of a stream in the background.
final class Collector<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var _values: [Value] = []
    private var task: Task<Void, Never>?

    init(_ stream: AsyncStream<Value>) {
        task = Task { [weak self] in
            for await value in stream { self?.append(value) }
        }
    }

    private func append(_ value: Value) { lock.withLock { _values.append(value) } }
    var values: [Value] { lock.withLock { _values } }
    func cancel() { task?.cancel() }
}

/// The `agentchat` binary next to the test bundle (`AGENTCHAT_CLI_BIN` overrides), built by
/// `swift build --product agentchat`.
func locateCLI() throws -> String {
    try BrokerProcess.locateProduct("agentchat", override: "AGENTCHAT_CLI_BIN")
}

struct CLIResult: Sendable {
    let status: Int32
    let stdout: String
    let stderr: String
}

/// Runs the `agentchat` binary on a dedicated thread (never blocking the concurrency pool).
func runCLI(_ arguments: [String], environment: [String: String] = [:]) async throws -> CLIResult {
    let binary = try locateCLI()
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await DedicatedThread.run {
        let outPath = directory + "/out", errPath = directory + "/err"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        var env = ProcessInfo.processInfo.environment
        env.removeValue(forKey: "AGENTCHAT_SERVER")
        env.removeValue(forKey: "AGENTCHAT_IDENTITY")
        env.removeValue(forKey: "AGENTCHAT_CA_FILE")
        for (key, value) in environment { env[key] = value }
        process.environment = env
        process.standardOutput = FileHandle(forWritingAtPath: outPath)
        process.standardError = FileHandle(forWritingAtPath: errPath)
        try process.run()
        process.waitUntilExit()
        return CLIResult(status: process.terminationStatus,
                         stdout: (try? String(contentsOfFile: outPath, encoding: .utf8)) ?? "",
                         stderr: (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? "")
    }
}
