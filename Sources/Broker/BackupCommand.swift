import AgentChatPersistence
import AgentChatRedis
import ArgumentParser
import Foundation
import Logging

/// `agentchat-broker backup`: a consistent snapshot of everything AgentChat keeps in Redis, taken while the
/// brokers keep serving (docs/ops/backup.md).
public struct BackupCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "agentchat-broker backup",
        abstract: "Write a backup of the AgentChat data in Redis to a file, without stopping traffic.",
        discussion: """
            Each hash tag (a channel with its history, keys, cursors, peeks and ledger; an agent with its indexes) \
            is captured in one atomic step; channels first, then agents, then the untagged keys. A message is in \
            the file if it was acknowledged before its channel was captured. Rate limits, presence and the \
            per-second message counts are left out (they rebuild themselves). The file ends with a BLAKE2b \
            checksum; it is written to FILE.partial and renamed to FILE when complete. See docs/ops/backup.md.
            """)

    @Option(help: "The file to write (replaced if it exists).")
    var out: String
    @Option(help: "Redis the brokers use (env AGENTCHAT_REDIS_URL); default: the embedded one of a running broker in --data-dir.")
    var redisURL: String?
    @Option(help: "A running broker's data directory, whose embedded Redis to read (env AGENTCHAT_DATA_DIR, default ./data).")
    var dataDir: String?

    public init() {}

    /// Takes the backup. (Not `run()`: the executable calls this from its async top level.)
    public func backup() async throws {
        RedisTarget.quietLogs()
        let url = RedisTarget.url(redisURL: redisURL, dataDir: dataDir)
        let endpoint = try RedisEndpoint(url: url)
        let session: RedisSession
        do { session = try await RedisSession.connect(endpoint) } catch { throw ValidationError("\(error)") }
        let started = ContinuousClock.now
        do {
            let summary = try await BackupTaker(session: session, source: endpoint.description).run(to: out)
            await session.close()
            let seconds = (ContinuousClock.now - started) / .seconds(1)
            print("""
                backup written to \(out): \(summary.bytes) bytes, \(summary.groups) groups, \(summary.keys) keys \
                (\(summary.channels) channels, \(summary.agents) agents) in \(String(format: "%.2f", seconds)) s
                """)
        } catch {
            await session.close()
            throw ValidationError("backup failed: \(error)")
        }
    }
}

/// Where the operator tools find Redis: `--redis-url`, else `AGENTCHAT_REDIS_URL`, else the embedded Redis's socket
/// in `--data-dir` (`AGENTCHAT_DATA_DIR`, default `./data`).
enum RedisTarget {
    static func url(redisURL: String?, dataDir: String?) -> String {
        let environment = ProcessInfo.processInfo.environment
        return redisURL ?? environment["AGENTCHAT_REDIS_URL"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "unix://" + dataDirectory(dataDir) + "/redis.sock"
    }

    static func dataDirectory(_ dataDir: String?) -> String {
        let directory = dataDir ?? ProcessInfo.processInfo.environment["AGENTCHAT_DATA_DIR"] ?? "./data"
        return URL(fileURLWithPath: directory).standardizedFileURL.path
    }

    /// Errors only on standard error: the tools' output is their summary.
    static func quietLogs() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
    }

    static func usesURL(_ redisURL: String?) -> Bool {
        redisURL != nil || !(ProcessInfo.processInfo.environment["AGENTCHAT_REDIS_URL"] ?? "").isEmpty
    }
}
