import AgentChatClient
import AgentChatProtocol
import Foundation
import TestSupport
import WebSocketClient

/// Sends `text` with one client message id until a broker acknowledges it, retrying what is refused (a broker or
/// Redis going through a fault) every `pause`, for at most `timeout`: a retry is never stored twice. Answers the
/// receipt and how many tries were refused.
func sendUntilAcknowledged(_ client: AgentChatClient, channel: ChannelID, text: String, clientMessageID: String,
                           timeout: Duration = .seconds(60), pause: Duration = .milliseconds(100)) async throws
    -> (receipt: SendReceipt, refused: Int)
{
    let deadline = ContinuousClock.now + timeout
    var refused = 0
    while true {
        do {
            return (try await client.send(channel: channel, bytes: Array(text.utf8), clientMessageID: clientMessageID),
                    refused)
        } catch {
            refused += 1
            if ContinuousClock.now > deadline { throw error }
            try await Task.sleep(for: pause)
        }
    }
}

/// Real brokers sharing one real Redis: `count` `agentchat-broker` processes started with the same `--issuer`.
/// `stop()` ends every process (deinit too, as a safety net).
final class ChannelCluster: @unchecked Sendable {
    static let issuer = "http://agentchat.cluster.test"

    /// The Redis server the cluster started (not with `redisArguments`).
    var redis: RedisServer {
        guard let ownRedis else { preconditionFailure("this ChannelCluster runs on a Redis given by arguments") }
        return ownRedis
    }
    private let ownRedis: RedisServer?
    private(set) var brokers: [BrokerProcess] = []
    private let lock = NSLock()
    private var clients: [AgentChatClient] = []
    /// Every broker's command-line arguments (for `restartBroker`).
    private let arguments: [String]
    private let logLevel: String

    /// `count` brokers on one Redis: a fresh `redis-server` of their own, or the one `redisArguments` names (e.g.
    /// `--redis-cluster host:port,…`).
    init(brokers count: Int = 2, redisArguments: [String]? = nil, extraArguments: [String] = [],
         logLevel: String = "warning") async throws {
        ownRedis = redisArguments == nil ? try RedisServer() : nil
        let redisArguments = redisArguments ?? ["--redis-url", "redis://127.0.0.1:\(ownRedis!.port)"]
        arguments = redisArguments + ["--issuer", Self.issuer, "--register-rate", "1000"] + extraArguments
        self.logLevel = logLevel
        do {
            for _ in 0..<count {
                brokers.append(try await BrokerProcess.start(extraArguments: arguments, logLevel: logLevel))
            }
        } catch {
            stop()
            throw error
        }
    }

    deinit { stop() }

    func url(_ broker: Int) -> String { brokers[broker].baseURL }

    /// A freshly generated, registered and connected agent on broker `broker`.
    func agent(_ name: String, on broker: Int) async throws -> AgentChatClient {
        try await agent(name, server: url(broker))
    }

    /// A freshly generated, registered and connected agent reaching a broker at `server` (e.g. a proxy in front of
    /// one of the cluster's brokers).
    func agent(_ name: String, server: String) async throws -> AgentChatClient {
        let client = try AgentChatClient(identity: .generate(name: name), server: server,
                                         configuration: testConfiguration())
        lock.withLock { clients.append(client) }
        _ = try await client.register(name: name)
        try await client.connect()
        return client
    }

    /// Kills broker `index` with SIGKILL and starts another in its place (on a new port: `url(index)` changes).
    func restartBroker(_ index: Int) async throws {
        brokers[index].kill()
        brokers[index].stop()
        brokers[index] = try await BrokerProcess.start(extraArguments: arguments, logLevel: logLevel)
    }

    /// Closes the clients it made, stops the brokers and Redis. Idempotent.
    func stop() {
        for broker in brokers { broker.stop() }
        ownRedis?.stop()
    }

    func closeClients() async {
        for client in lock.withLock({ clients }) { await client.close() }
    }

    /// Every key in Redis (SCAN), read according to its type (GET, HGETALL, SMEMBERS, XRANGE, ...), as raw text.
    func dumpRedis() async throws -> (keys: [String], text: String) {
        let port = redis.port
        let keys = try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(port)", "--scan"])
            .split(separator: "\n").map(String.init).filter { !$0.isEmpty }
        guard !keys.isEmpty else { return ([], "") }
        let quoted = keys.map { "\"" + $0.replacingOccurrences(of: "\"", with: "\\\"") + "\"" }
        let types = try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(port)"],
                                      stdin: quoted.map { "TYPE \($0)" }.joined(separator: "\n") + "\n")
            .split(separator: "\n").map(String.init)
        var commands: [String] = []
        for (index, key) in quoted.enumerated() {
            switch index < types.count ? types[index] : "string" {
            case "string": commands.append("GET \(key)")
            case "hash": commands.append("HGETALL \(key)")
            case "set": commands.append("SMEMBERS \(key)")
            case "stream": commands.append("XRANGE \(key) - +")
            case "zset": commands.append("ZRANGE \(key) 0 -1 WITHSCORES")
            case "list": commands.append("LRANGE \(key) 0 -1")
            default: commands.append("DUMP \(key)")
            }
        }
        let text = try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(port)"],
                                     stdin: commands.joined(separator: "\n") + "\n")
        return (keys, text)
    }
}

/// Runs a tool to completion on a dedicated thread; returns stdout (throws with stderr on a non-zero status).
/// With `stdin`, the text is written to a file and fed through the shell (`< file`).
func runTool(_ executable: String, _ arguments: [String], stdin: String? = nil) async throws -> String {
    let directory = try makeTemporaryDirectory()
    defer { try? FileManager.default.removeItem(atPath: directory) }
    return try await DedicatedThread.run {
        let outPath = directory + "/out", errPath = directory + "/err", inPath = directory + "/in"
        _ = FileManager.default.createFile(atPath: outPath, contents: nil)
        _ = FileManager.default.createFile(atPath: errPath, contents: nil)
        _ = FileManager.default.createFile(atPath: inPath, contents: Data((stdin ?? "").utf8))
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        let command = ([executable] + arguments).map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }
            .joined(separator: " ")
        process.arguments = ["-c", command + " < '\(inPath)' > '\(outPath)' 2> '\(errPath)'"]
        try process.run()
        process.waitUntilExit()
        // Lossy: values may hold binary bytes.
        let out = String(decoding: FileManager.default.contents(atPath: outPath) ?? Data(), as: UTF8.self)
        guard process.terminationStatus == 0 else {
            let err = (try? String(contentsOfFile: errPath, encoding: .utf8)) ?? ""
            throw TimedOut(description: "\(arguments) exited \(process.terminationStatus): \(err)")
        }
        return out
    }
}

/// The messages collected from a channel stream so far.
extension Collector where Value == ChannelStreamEvent {
    var messages: [ChannelMessage] { values.compactMap(\.message) }
    var resumes: [ChannelResume] {
        values.compactMap { if case .subscribed(let resume) = $0 { resume } else { nil } }
    }
}
