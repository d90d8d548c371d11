import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Synchronization
import Testing
import TestSupport
import WebSocketClient
@testable import AgentChatClient

/// `agentchat-broker backup` and `restore` against real brokers, real Redis servers and the Swift SDK: a backup
/// taken while agents keep sending restores into a fresh Redis where a fresh broker serves every channel's whole
/// history, signed and without a gap; damaged files and a non-empty Redis are refused.
@Suite(.serialized) struct BackupRestoreTests {
    /// One acknowledged message: where it went, what it said, and whether it was acknowledged before the backup
    /// process was started (those must all be in the backup).
    struct Sent: Sendable {
        let channel: ChannelID, offset: Int64, text: String, phase: Phase, attempt: Int
        /// Acknowledged before the last backup attempt started (so it must be in the file restored).
        var beforeBackup: Bool { phase == .before }
    }

    /// `between`: after a backup attempt that may be taken again, so neither before the last one nor during it.
    enum Phase: Int { case before, during, between, after }

    /// The senders' shared state: the phase of the test, which backup attempt runs, and every acknowledged message.
    final class Traffic: Sendable {
        /// `attempt * 4 + phase`, so that a sender reads both in one load.
        private let state = Atomic<Int>(Phase.before.rawValue)
        private let log = Mutex<[Sent]>([])
        var now: (phase: Phase, attempt: Int) {
            let value = state.load(ordering: .acquiring)
            return (Phase(rawValue: value % 4)!, value / 4)
        }
        func set(_ phase: Phase, attempt: Int) { state.store(attempt * 4 + phase.rawValue, ordering: .releasing) }
        func record(_ sent: Sent) { log.withLock { $0.append(sent) } }
        var sent: [Sent] { log.withLock { $0 } }
    }

    /// Runs `agentchat-broker <arguments>` to completion: exit status, stdout, stderr.
    static func tool(_ arguments: [String]) async throws -> (status: Int32, out: String, err: String) {
        let binary = try BrokerProcess.locateExecutable()
        return try await DedicatedThread.run {
            let process = try ChildProcess(executable: binary, arguments: arguments)
            let status = try process.waitForExit(timeout: 120)
            return (status, process.stdout, process.stderr)
        }
    }

    static func dbsize(_ redis: RedisServer) async throws -> Int {
        Int(try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(redis.port)", "DBSIZE"])
            .trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
    }

    static func ledger(_ redis: RedisServer) async throws -> [String] {
        let result = try await tool(["ledger", "--redis-url", "redis://127.0.0.1:\(redis.port)"])
        #expect(result.status == 0, "\(result.err)")
        return result.out.split(separator: "\n").map(String.init).sorted()
    }

    @Test func aBackupTakenUnderTrafficRestoresEveryChannelWithoutGapsAndTheLedgerBalances() async throws {
        let cluster = try await ChannelCluster(brokers: 2, extraArguments: PeekSDKTests.refusable)
        defer { cluster.stop() }
        var configuration = testConfiguration()
        configuration.peekPolicy = .refuse
        var agents: [AgentChatClient] = []
        for (index, name) in ["alice", "bob", "carol"].enumerated() {
            let client = try AgentChatClient(identity: .generate(name: name), server: cluster.url(index % 2),
                                             configuration: configuration)
            _ = try await client.register(name: name)
            try await client.connect()
            agents.append(client)
        }
        let (alice, bob, carol) = (agents[0], agents[1], agents[2])
        let dids = agents.map(\.identity.did)
        let c1 = try await alice.createChannel(name: "one", members: [dids[1]]).id
        let c2 = try await bob.createChannel(name: "two", members: [dids[2]]).id
        let c3 = try await carol.createChannel(name: "three", members: [dids[0], dids[1]]).id
        try await alice.setListing(channel: c1, listed: true, title: "One", topic: "backup")
        let plan: [(AgentChatClient, ChannelID)] = [(alice, c1), (bob, c1), (bob, c2), (carol, c2), (alice, c3),
                                                    (bob, c3), (carol, c3)]

        // A paid peek on c1, refused at once: $1.00 captured, 30/70 split, in c1's ledger.
        let viewer = try await PeekViewer(port: cluster.brokers[1].port)
        _ = try await viewer.requestAndPay(c1)
        let (refused, _) = try await viewer.until("refused")
        #expect(refused["capturedCents"] == 100)
        let ledgerBefore = try await Self.ledger(cluster.redis)
        #expect(ledgerBefore.count >= 3, "\(ledgerBefore)")  // capture and two shares at least

        // Every sender keeps sending until told to stop; each ack is recorded with the phase it came back in.
        let traffic = Traffic()
        let senders = plan.enumerated().map { index, pair in
            let (client, channel) = pair
            return Task {
                var n = 0
                while true {
                    n += 1
                    let text = "m\(index)-\(n)"
                    let receipt = try await client.send(channel: channel, text: text)
                    let now = traffic.now
                    traffic.record(Sent(channel: channel, offset: receipt.offset, text: text, phase: now.phase,
                                        attempt: now.attempt))
                    if now.phase == .after && n >= 5 { break }
                }
            }
        }
        try await waitUntil("some traffic", timeout: 30) { traffic.sent.count >= 60 }

        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/agentchat.backup"
        // A backup is quick; on a loaded machine one may finish between two acknowledgements. Then it is taken
        // again (into the same file) until one overlaps traffic: the file restored below is the last one.
        var backup: (status: Int32, out: String, err: String) = (-1, "", "")
        var attempt = 0
        repeat {
            attempt += 1
            traffic.set(.during, attempt: attempt)
            backup = try await Self.tool(["backup", "--out", file, "--redis-url", "redis://127.0.0.1:\(cluster.redis.port)"])
            traffic.set(.between, attempt: attempt)
            if traffic.sent.contains(where: { $0.phase == .during && $0.attempt == attempt }) || attempt == 5 { break }
        } while true
        traffic.set(.after, attempt: attempt)
        #expect(backup.status == 0, "\(backup.out)\n\(backup.err)")
        #expect(backup.out.contains("backup written to \(file)"), "\(backup.out)")
        for sender in senders { try await sender.value }
        let acks = traffic.sent
        #expect(acks.contains { $0.phase == .during && $0.attempt == attempt },
                "no message was acknowledged while backup \(attempt) ran")
        #expect(!FileManager.default.fileExists(atPath: file + ".partial"))

        // Restore into a fresh Redis, then serve it with a fresh broker.
        let target = try RedisServer()
        defer { target.stop() }
        let restore = try await Self.tool(["restore", "--in", file, "--redis-url", "redis://127.0.0.1:\(target.port)"])
        #expect(restore.status == 0, "\(restore.out)\n\(restore.err)")
        #expect(restore.out.contains("agents: 3"), "\(restore.out)")
        #expect(restore.out.contains("channels: 3"), "\(restore.out)")
        #expect(restore.out.contains("invariants: ok"), "\(restore.out)")
        #expect(try await Self.ledger(target) == ledgerBefore)

        let broker = try await BrokerProcess.start(
            extraArguments: ["--redis-url", "redis://127.0.0.1:\(target.port)", "--issuer", ChannelCluster.issuer],
            logLevel: "warning")
        defer { broker.stop() }
        let readers = [(agents[0].identity, c1), (agents[2].identity, c2), (agents[1].identity, c3)]
        var restoredOffsets: [ChannelID: Int64] = [:]
        for (identity, channel) in readers {
            let reader = try AgentChatClient(identity: identity, server: broker.baseURL, configuration: testConfiguration())
            try await reader.connect()
            var history: [ChannelMessage] = []
            while true {
                let page = try await reader.history(channel: channel, limit: 500, after: history.last?.offset ?? 0)
                if page.isEmpty { break }
                history += page
            }
            // Offsets 1...N with no gap, every signature verified and every ciphertext opened by the SDK.
            #expect(history.map(\.offset) == Array(1...Int64(history.count)), "\(channel)")
            #expect(history.allSatisfy { $0.failure == nil && $0.plaintext != nil })
            let mine = acks.filter { $0.channel == channel }
            let texts = Dictionary(uniqueKeysWithValues: mine.map { ($0.offset, $0.text) })
            for message in history {
                #expect(texts[message.offset] == message.text, "offset \(message.offset) of \(channel)")
            }
            // Everything acknowledged before the backup started is there; the channel was captured at one offset.
            let required = mine.filter(\.beforeBackup).map(\.offset).max() ?? 0
            #expect(Int64(history.count) >= required)
            #expect(Int64(history.count) <= mine.map(\.offset).max() ?? 0)
            restoredOffsets[channel] = Int64(history.count)
            // The next message continues the sequence.
            let next = try await reader.send(channel: channel, text: "after restore")
            #expect(next.offset == Int64(history.count) + 1)
            await reader.close()
        }
        #expect(restoredOffsets.count == 3)
        for agent in agents { await agent.close() }
    }

    @Test func damagedFilesAndANonEmptyRedisAreRefused() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let channel = try await alice.createChannel(name: "small").id
        for n in 1...20 { try await alice.send(channel: channel, text: "message \(n)") }
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/good.backup"
        let backup = try await Self.tool(["backup", "--out", file, "--redis-url", "redis://127.0.0.1:\(cluster.redis.port)"])
        #expect(backup.status == 0, "\(backup.err)")
        let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: file)))

        let target = try RedisServer()
        defer { target.stop() }
        let url = "redis://127.0.0.1:\(target.port)"

        // Cut short anywhere: refused before anything is written.
        for cut in [bytes.count - 1, bytes.count - 33, bytes.count / 2, 30] {
            let truncated = directory + "/truncated-\(cut).backup"
            try Data(bytes.prefix(cut)).write(to: URL(fileURLWithPath: truncated))
            let result = try await Self.tool(["restore", "--in", truncated, "--redis-url", url])
            #expect(result.status != 0)
            #expect(result.err.contains("refused:") && result.err.contains("ends early"), "\(cut): \(result.err)")
            #expect(try await Self.dbsize(target) == 0)
        }
        // One bit flipped, in the header, a payload, the end record or the checksum: refused.
        for position in [20, bytes.count / 2, bytes.count - 40, bytes.count - 1] {
            var flipped = bytes
            flipped[position] ^= 0x10
            let altered = directory + "/flipped-\(position).backup"
            try Data(flipped).write(to: URL(fileURLWithPath: altered))
            let result = try await Self.tool(["restore", "--in", altered, "--redis-url", url])
            #expect(result.status != 0)
            #expect(result.err.contains("refused:"), "\(position): \(result.err)")
            #expect(try await Self.dbsize(target) == 0)
        }
        // Something else entirely.
        let notABackup = directory + "/not.backup"
        try Data("hello".utf8).write(to: URL(fileURLWithPath: notABackup))
        let wrong = try await Self.tool(["restore", "--in", notABackup, "--redis-url", url])
        #expect(wrong.status != 0 && wrong.err.contains("refused:"), "\(wrong.err)")

        // A Redis holding keys: refused without --force, nothing written; with --force, restored beside them.
        _ = try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(target.port)", "SET", "unrelated", "1"])
        let refused = try await Self.tool(["restore", "--in", file, "--redis-url", url])
        #expect(refused.status != 0)
        #expect(refused.err.contains("keys; restore needs an empty one") && refused.err.contains("--force"),
                "\(refused.err)")
        #expect(try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(target.port)", "--scan", "--pattern",
                                                   "agentchat:ch:*"]).isEmpty)
        let forced = try await Self.tool(["restore", "--in", file, "--redis-url", url, "--force"])
        #expect(forced.status == 0, "\(forced.out)\n\(forced.err)")
        #expect(forced.out.contains("messages: 20") && forced.out.contains("invariants: ok"), "\(forced.out)")
        #expect(try await Self.dbsize(target) > 1)
        // Twice with --force: the same keys replaced, still consistent.
        let again = try await Self.tool(["restore", "--in", file, "--redis-url", url, "--force"])
        #expect(again.status == 0 && again.out.contains("messages: 20"), "\(again.out)\n\(again.err)")
        await alice.close()
    }

    /// The broker's Redis options: restored into, and backed up from, the master of a Sentinel group that requires
    /// a password (`--redis-sentinels`, `--redis-master`, `--redis-password-file`).
    @Test func throughSentinelWithAPasswordFile() async throws {
        let cluster = try await ChannelCluster(brokers: 1)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let channel = try await alice.createChannel(name: "sentinel").id
        for n in 1...10 { try await alice.send(channel: channel, text: "message \(n)") }
        await alice.close()
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let first = directory + "/first.backup", second = directory + "/second.backup"
        #expect(try await Self.tool(["backup", "--out", first, "--redis-url", "redis://127.0.0.1:\(cluster.redis.port)"])
            .status == 0)

        let group = try SentinelGroup(password: "backup-pw")
        defer { group.stop() }
        let passwordFile = directory + "/password"
        try Data("backup-pw\n".utf8).write(to: URL(fileURLWithPath: passwordFile))
        let sentinel = ["--redis-sentinels", group.sentinelsArgument, "--redis-master", SentinelGroup.masterName]
        let noPassword = try await Self.tool(["restore", "--in", first] + sentinel)
        #expect(noPassword.status != 0 && noPassword.err.contains("NOAUTH"), "\(noPassword.err)")
        let restored = try await Self.tool(["restore", "--in", first] + sentinel + ["--redis-password-file", passwordFile])
        #expect(restored.status == 0, "\(restored.out)\n\(restored.err)")
        #expect(restored.out.contains("messages: 10") && restored.out.contains("invariants: ok"), "\(restored.out)")
        #expect(!restored.out.contains("backup-pw") && !restored.err.contains("backup-pw"))
        // The ledger export reads through the sentinels too (no peeks here: no lines, exit 0); without the password
        // it fails.
        let ledger = try await Self.tool(["ledger"] + sentinel + ["--redis-password-file", passwordFile])
        #expect(ledger.status == 0 && ledger.out.isEmpty, "\(ledger.out)\n\(ledger.err)")
        #expect(try await Self.tool(["ledger"] + sentinel).status != 0)

        let backup = try await Self.tool(["backup", "--out", second] + sentinel + ["--redis-password-file", passwordFile])
        #expect(backup.status == 0, "\(backup.err)")
        let target = try RedisServer()
        defer { target.stop() }
        let again = try await Self.tool(["restore", "--in", second, "--redis-url", "redis://127.0.0.1:\(target.port)"])
        #expect(again.status == 0 && again.out.contains("messages: 10"), "\(again.out)\n\(again.err)")
    }

    /// What spans hash tags is rebuilt on restore: an agent's channel index that drifted from the member set, a
    /// listed channel missing from the directory, and an open peek whose timer the backup did not hold — without
    /// that timer the restored peek would stay pending for ever; with it, a broker on the restored Redis moves it
    /// on, the member's SDK grants, and the capture's shares balance.
    @Test func restoreRebuildsTheIndexesAndTimersThatSpanHashTags() async throws {
        let cluster = try await ChannelCluster(brokers: 1, extraArguments: [
            "--peek-refusal-window", "3", "--peek-grant-window", "10", "--peek-duration", "2"])
        defer { cluster.stop() }
        let identity = AgentIdentity.generate(name: "alice")
        let alice = try AgentChatClient(identity: identity, server: cluster.url(0), configuration: testConfiguration())
        _ = try await alice.register(name: "alice")
        try await alice.connect()
        let channel = try await alice.createChannel(name: "drifted").id
        try await alice.setListing(channel: channel, listed: true, title: "Drifted", topic: "backup")
        for n in 1...3 { try await alice.send(channel: channel, text: "message \(n)") }
        await alice.close()  // offline: nobody refuses or grants on the source
        let viewer = try await PeekViewer(port: cluster.brokers[0].port)
        let (peek, paid) = try await viewer.requestAndPay(channel)
        #expect(paid["phase"] == "pending")
        let port = "\(cluster.redis.port)"
        func cli(_ arguments: String...) async throws -> String {
            try await runTool("/usr/bin/env", ["redis-cli", "-p", port] + arguments)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
        // The drift: index entry, directory entry and timer gone.
        #expect(try await cli("ZREM", "agentchat:peek-timers", "\(channel.rawValue)/\(peek)") == "1")
        #expect(try await cli("SREM", "agentchat:agent:{\(identity.did)}:channels", channel.rawValue) == "1")
        #expect(try await cli("ZREM", "agentchat:directory", channel.rawValue) == "1")
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/drift.backup"
        #expect(try await Self.tool(["backup", "--out", file, "--redis-url", "redis://127.0.0.1:\(port)"]).status == 0)
        cluster.stop()

        let target = try RedisServer()
        defer { target.stop() }
        let restore = try await Self.tool(["restore", "--in", file, "--redis-url", "redis://127.0.0.1:\(target.port)"])
        #expect(restore.status == 0, "\(restore.out)\n\(restore.err)")
        #expect(restore.out.contains("repaired: agent channel index: 1 entries"), "\(restore.out)")
        #expect(restore.out.contains("repaired: directory: 1 listed channels added"), "\(restore.out)")
        #expect(restore.out.contains("repaired: peek timers: 1 open peeks given a timer"), "\(restore.out)")
        #expect(restore.out.contains("invariants: ok"), "\(restore.out)")

        let broker = try await BrokerProcess.start(
            extraArguments: ["--redis-url", "redis://127.0.0.1:\(target.port)", "--issuer", ChannelCluster.issuer,
                             "--peek-refusal-window", "3", "--peek-grant-window", "10", "--peek-duration", "2"],
            logLevel: "warning")
        defer { broker.stop() }
        let back = try AgentChatClient(identity: identity, server: broker.baseURL, configuration: testConfiguration())
        try await back.connect()
        #expect(try await back.listChannels().map(\.id) == [channel])
        // The timer fires on the new broker; the SDK (policy grant) grants; the $5.00 is captured.
        let phaseKey = "agentchat:ch:{\(channel.rawValue)}:peek:\(peek)"
        try await waitUntil("the restored peek to be granted and captured", timeout: 30) {
            let phase = (try? await runTool("/usr/bin/env", ["redis-cli", "-p", "\(target.port)", "HGET", phaseKey,
                                                             "phase"]))?.trimmingCharacters(in: .whitespacesAndNewlines)
            return phase == "active" || phase == "ended"
        }
        let ledger = try await Self.ledger(target).compactMap { line -> JSONValue? in try? JSONParser.parse(line) }
        let captured = ledger.filter { $0["kind"] == "capture" }.compactMap { $0["cents"]?.integerValue }
        let shares = ledger.filter { $0["kind"] == "share" }.compactMap { $0["cents"]?.integerValue }
        #expect(captured == [500])
        #expect(shares.reduce(0, +) == 500)
        await back.close()
    }
}

