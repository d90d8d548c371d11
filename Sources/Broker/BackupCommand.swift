import AgentChatPersistence
import AgentChatRedis
import ArgumentParser
import Foundation

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
    @OptionGroup var redis: RedisToolOptions

    public init() {}

    /// Takes the backup. (Not `run()`: the executable calls this from its async top level.)
    public func backup() async throws {
        RedisToolOptions.quietLogs()
        let target: RedisTarget
        switch try redis.resolve() {
        case .target(let given): target = given
        case .embedded(let directory): target = RedisToolOptions.socket(in: directory)  // a running broker's
        }
        let session: RedisSession
        do { session = try await RedisSession.connect(target) } catch { throw ValidationError("\(error)") }
        let started = ContinuousClock.now
        do {
            let summary = try await BackupTaker(session: session, source: target.description).run(to: out)
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
