import AgentChatRedis
import Foundation
import Synchronization

/// A throwaway `redis-server` for tests: a fresh temporary directory, a free loopback TCP port, AOF on.
///
/// `kill()` crashes it (SIGKILL), `restart()` brings it back on the same port and directory, `stop()` ends it and
/// removes the directory. Every test that starts one must `stop()` it (deinit stops it too, as a safety net).
public final class RedisServer: Sendable {
    public let directory: String
    public let port: Int
    private let appendFsync: EmbeddedRedis.AppendFsync
    private let server: Mutex<EmbeddedRedis?>

    /// Where clients connect.
    public var endpoint: RedisEndpoint { .tcp(host: "127.0.0.1", port: port) }

    /// Starts a server; throws (with the install hint) when `redis-server` is missing.
    public init(appendFsync: EmbeddedRedis.AppendFsync = .everysec) throws {
        directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-redis-\(UUID().uuidString.prefix(8))").path
        self.appendFsync = appendFsync
        port = try EmbeddedRedis.freeLoopbackPort()
        server = Mutex(nil)
        do {
            try launch()
        } catch {
            try? FileManager.default.removeItem(atPath: directory)
            throw error
        }
    }

    deinit { stop() }

    /// The running server's process id, if any.
    public var pid: Int32? { server.withLock { $0?.pid } }

    /// SIGKILL, as a crash; the data directory stays.
    public func kill() {
        let current = server.withLock { s -> EmbeddedRedis? in defer { s = nil }; return s }
        current?.kill()
    }

    /// Starts the server again on the same port and directory (after `kill()` or `stop(keepingData: true)`).
    public func restart() throws {
        kill()
        try launch()
    }

    /// Stops the server and removes its directory. Idempotent.
    public func stop() {
        let current = server.withLock { s -> EmbeddedRedis? in defer { s = nil }; return s }
        current?.stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private func launch() throws {
        var configuration = EmbeddedRedis.Configuration(
            dataDirectory: directory, listener: .loopbackTCP(port: port), appendFsync: appendFsync)
        configuration.disableSnapshots = true
        let started = try EmbeddedRedis(configuration: configuration)
        server.withLock { $0 = started }
    }
}
