import AgentChatPersistence
import AgentChatRedis
import ArgumentParser
import Foundation

/// `agentchat-broker restore`: loads a backup file into an empty Redis, then checks the invariants and rebuilds
/// the indexes that span hash tags (docs/ops/backup.md).
public struct RestoreCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "agentchat-broker restore",
        abstract: "Load a backup file into an empty Redis, check it and print a summary.",
        discussion: """
            The whole file is read and its checksum verified before anything is written; a truncated or altered \
            file is refused. The target Redis must hold no keys, unless --force (then the backup's keys replace \
            keys of the same name; other keys stay). With no Redis option the Redis of --data-dir is started for \
            the restore and stopped after it (no broker may be running on that directory); start the broker on \
            it afterwards. Exit status 0: restored and every invariant holds; 1: refused or failed; 2: restored \
            but an invariant does not hold (listed).
            """)

    @Option(name: .customLong("in"), help: "The backup file to read.")
    var input: String
    @OptionGroup var redis: RedisToolOptions
    @Flag(help: "Restore into a Redis that holds keys (the backup's keys replace existing ones of the same name).")
    var force = false

    public init() {}

    /// Restores; the exit status to end with. (Not `run()`: the executable calls this from its async top level.)
    public func restore() async throws -> Int32 {
        RedisToolOptions.quietLogs()
        let restorer = BackupRestorer(path: input)
        let contents: BackupRestorer.Contents
        do { contents = try restorer.verify() } catch { throw ValidationError("refused: \(error)") }
        print("""
            verified \(input): \(contents.bytes) bytes, \(contents.groups) groups, \(contents.keys) keys, taken \
            \(Self.date(contents.header.createdAt)) from \(contents.header.source) (Redis \(contents.header.redisVersion))
            """)

        var embedded: EmbeddedRedis?
        let target: RedisTarget
        switch try redis.resolve() {
        case .target(let given):
            target = given
        case .embedded(let directory):
            if let probe = try? await RedisSession.connect(RedisToolOptions.socket(in: directory), timeout: 500) {
                await probe.close()
                throw ValidationError("""
                    a Redis is running on \(directory) (a broker?); stop the broker first, or give the Redis to use
                    """)
            }
            do {
                let started = try EmbeddedRedis(configuration: .init(dataDirectory: directory))
                embedded = started
                target = .direct(started.endpoint)
            } catch {
                throw ValidationError("cannot start the embedded Redis in \(directory): \(error)")
            }
        }
        defer { embedded?.stop() }

        let session: RedisSession
        do { session = try await RedisSession.connect(target) } catch { throw ValidationError("\(error)") }
        let started = ContinuousClock.now
        let report: BackupRestorer.Report
        do {
            report = try await restorer.restore(into: session, force: force)
            await session.close()
        } catch {
            await session.close()
            throw ValidationError("restore failed: \(error)")
        }
        let seconds = (ContinuousClock.now - started) / .seconds(1)
        print("""
            restored \(report.restored) keys into \(target) in \(String(format: "%.2f", seconds)) s \
            (\(report.expired) left out: expired)
            agents: \(report.agents)
            channels: \(report.channels) (\(report.channelsWithoutMembers) without members)
            messages: \(report.messages)
            ledger entries: \(report.ledgerEntries)
            """)
        for repair in report.repairs { print("repaired: \(repair)") }
        guard report.problems.isEmpty else {
            for problem in report.problems { print("INVARIANT BROKEN: \(problem)") }
            return 2
        }
        print("invariants: ok")
        return 0
    }

    static func date(_ milliseconds: Int64) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
    }
}
