import AgentChatRedis
import Foundation

/// Loads a backup file into Redis (docs/ops/backup.md): verifies the whole file first (structure and checksum),
/// refuses a Redis that holds keys unless forced, `RESTORE`s every key (with `REPLACE` only when forced; keys whose
/// expiry has passed are left out), then checks the invariants and rebuilds the indexes that span hash tags.
package struct BackupRestorer {
    /// What a verified file holds.
    package struct Contents: Sendable {
        package var header: BackupHeader
        package var groups = 0, keys = 0, bytes = 0
    }

    /// What a restore did and found.
    package struct Report: Sendable {
        package var restored = 0, expired = 0
        package var agents = 0, channels = 0, messages = 0, ledgerEntries = 0
        package var channelsWithoutMembers = 0
        /// Index entries rebuilt: agent channel sets, ledger indexes, directory entries, peek timers.
        package var repairs: [String] = []
        /// Invariants that do not hold (the restore is then reported as failed).
        package var problems: [String] = []
    }

    package let path: String

    package init(path: String) { self.path = path }

    /// Reads the whole file, checking every record and the checksum; nothing is written anywhere.
    package func verify() throws -> Contents {
        let reader = try BackupReader(path: path)
        var contents = Contents(header: reader.header, bytes: reader.fileSize)
        while let record = try reader.next() {
            if case .end(let groups, let keys) = record {
                contents.groups = groups
                contents.keys = keys
            }
        }
        return contents
    }

    /// Restores into the Redis of `session`. Call `verify()` first.
    package func restore(into session: RedisSession, force: Bool) async throws -> Report {
        let size = try await session.command(["DBSIZE"]).int ?? 0
        if size > 0 && !force {
            throw RedisSessionError("""
                the target Redis (\(session.target)) holds \(size) keys; restore needs an empty one \
                (or --force to overwrite the keys the backup holds, keeping the others)
                """)
        }
        var report = Report()
        var channels: [String] = []  // channel ids with a meta hash
        var agents: [String] = []
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let reader = try BackupReader(path: path)
        var batch: [[RedisArgument]] = [], batchNames: [String] = [], batchBytes = 0
        func flush() async throws {
            let replies = try await session.pipeline(batch)
            for (name, reply) in zip(batchNames, replies) {
                if case .failure(let error) = reply {
                    let why = error.replyMessage ?? "\(error)"
                    throw RedisSessionError(why.hasPrefix("BUSYKEY")
                        ? "key \(name) appeared in Redis during the restore (is a broker running against it?)"
                        : "RESTORE \(name) failed: \(why)")
                }
            }
            report.restored += batch.count
            batch = []
            batchNames = []
            batchBytes = 0
        }
        while let record = try reader.next() {
            guard case .key(let key) = record else { continue }
            let name = key.nameText
            if let expiresAt = key.expiresAt, expiresAt <= now + 1 {
                report.expired += 1
                continue
            }
            if let id = Self.tagged(name, prefix: "agentchat:ch:{") { channels.append(id) }
            if let did = Self.tagged(name, prefix: "agentchat:agent:{") { agents.append(did) }
            var command: [RedisArgument] = ["RESTORE", RedisArgument(key.name), RedisArgument(key.expiresAt ?? 0),
                                            RedisArgument(key.payload)]
            if force { command.append("REPLACE") }
            if key.expiresAt != nil { command.append("ABSTTL") }
            batch.append(command)
            batchNames.append(name)
            batchBytes += key.payload.count
            if batch.count >= 256 || batchBytes >= 8 << 20 { try await flush() }
        }
        if !batch.isEmpty { try await flush() }
        report.agents = agents.count
        report.channels = channels.count
        try await check(session, channels: channels, agents: agents, report: &report)
        return report
    }

    /// `prefix{id}` exactly (a channel's meta hash, an agent's profile) → id.
    static func tagged(_ name: String, prefix: String) -> String? {
        guard name.hasPrefix(prefix), name.hasSuffix("}") else { return nil }
        let id = name.dropFirst(prefix.count).dropLast()
        return id.contains("}") || id.contains("{") || id.isEmpty ? nil : String(id)
    }

    // MARK: Invariants

    private struct ChannelState {
        var id: String
        var seq: Int, listed: Bool, lastActivity: Int
        var members: Set<String>
        var lastOffset: Int, messages: Int
        var ledger: [[String: String]]
        var earnings: [String: Int]
        var openPeeks: [String]
    }

    private func check(_ session: RedisSession, channels: [String], agents: [String], report: inout Report)
        async throws
    {
        let agentSet = Set(agents)
        var expectedIndex: [String: Set<String>] = [:]
        var ledgerChannels: [String] = []
        var earnedIn: [String: Set<String>] = [:]
        var listed: [String: Int] = [:]
        var openPeeks: [String] = []  // timer members "<channel>/<peek>"

        for start in stride(from: 0, to: channels.count, by: 64) {
            let ids = channels[start..<min(start + 64, channels.count)]
            var commands: [[RedisArgument]] = []
            for id in ids {
                let p = "agentchat:ch:{\(id)}"
                commands += [
                    ["HMGET", RedisArgument(p), "seq", "listed", "lastActivity", "createdAt"],
                    ["SMEMBERS", RedisArgument(p + ":members")],
                    ["XREVRANGE", RedisArgument(p + ":log"), "+", "-", "COUNT", "1"],
                    ["XLEN", RedisArgument(p + ":log")],
                    ["XRANGE", RedisArgument(p + ":ledger"), "-", "+"],
                    ["HGETALL", RedisArgument(p + ":earnings")],
                    ["SMEMBERS", RedisArgument(p + ":peeks")],
                ]
            }
            let replies = try await session.pipeline(commands).map { result -> RedisValue in
                switch result {
                case .success(let value): value
                case .failure(let error): .error(error.replyMessage ?? "\(error)")
                }
            }
            for (n, id) in ids.enumerated() {
                let r = Array(replies[(n * 7)..<(n * 7 + 7)])
                let meta = r[0].array ?? []
                let seq = meta.first?.int ?? 0
                let members = Set((r[1].array ?? []).compactMap(\.string))
                let lastID = r[2].array?.first?.array?.first?.string ?? "0-0"
                let lastOffset = Int(lastID.split(separator: "-").last ?? "0") ?? 0
                report.messages += r[3].int ?? 0
                let ledger = (r[4].array ?? []).map { entry -> [String: String] in
                    let fields = entry.array?.dropFirst().first?.array?.compactMap(\.string) ?? []
                    var dict: [String: String] = [:]
                    for i in stride(from: 0, to: fields.count - 1, by: 2) { dict[fields[i]] = fields[i + 1] }
                    return dict
                }
                report.ledgerEntries += ledger.count
                var earnings: [String: Int] = [:]
                let pairs = r[5].array?.compactMap(\.string) ?? []
                for i in stride(from: 0, to: pairs.count - 1, by: 2) { earnings[pairs[i]] = Int(pairs[i + 1]) ?? 0 }

                if members.isEmpty { report.channelsWithoutMembers += 1 }
                if lastOffset > seq {
                    report.problems.append("channel \(id): history reaches offset \(lastOffset) but seq is \(seq)")
                }
                for did in members {
                    expectedIndex[did, default: []].insert(id)
                    if !agentSet.contains(did) {
                        report.problems.append("channel \(id): member \(did) has no agent profile")
                    }
                }
                // The ledger balances: each capture's shares sum to it; the earnings are the sums of the shares.
                var captured: [String: Int] = [:], shared: [String: Int] = [:], sums: [String: Int] = [:]
                for entry in ledger {
                    let key = (entry["peek"] ?? "") + "/" + (entry["pi"] ?? "")
                    let cents = Int(entry["cents"] ?? "") ?? 0
                    switch entry["kind"] {
                    case "capture": captured[key, default: 0] += cents
                    case "share":
                        shared[key, default: 0] += cents
                        if let party = entry["party"] {
                            sums[party, default: 0] += cents
                            if party != "platform" { earnedIn[party, default: []].insert(id) }
                        }
                    default: break
                    }
                }
                for (key, cents) in captured where shared[key, default: 0] != cents {
                    report.problems.append("channel \(id): capture \(key) of \(cents) cents has shares summing to \(shared[key, default: 0])")
                }
                if sums != earnings {
                    report.problems.append("channel \(id): earnings \(earnings) differ from the ledger's shares \(sums)")
                }
                if !ledger.isEmpty { ledgerChannels.append(id) }
                if meta.count > 1, meta[1].string == "1" {
                    listed[id] = meta[2].int ?? meta[3].int ?? 0
                }
                openPeeks += (r[6].array ?? []).compactMap(\.string).map { "\(id)/\($0)" }
            }
        }

        // Member sets whose channel has no meta hash.
        let channelSet = Set(channels)
        var cursor = "0"
        repeat {
            let reply = try await session.command(["SCAN", RedisArgument(cursor), "MATCH", "agentchat:ch:{*}:members",
                                                   "COUNT", "1000"])
            let parts = reply.array ?? []
            cursor = parts.first?.string ?? "0"
            for name in (parts.dropFirst().first?.array ?? []).compactMap(\.string) {
                let id = String(name.dropFirst("agentchat:ch:{".count).dropLast("}:members".count))
                if !channelSet.contains(id) { report.problems.append("members of channel \(id) without its meta hash") }
            }
        } while cursor != "0"

        try await repairAgentIndex(session, expected: expectedIndex, agents: agents, report: &report)
        try await repairSets(session, ledgerChannels: ledgerChannels, earnedIn: earnedIn, report: &report)
        try await repairDirectory(session, listed: listed, report: &report)
        try await repairTimers(session, openPeeks: openPeeks, report: &report)
    }

    /// `agentchat:agent:{did}:channels` is an index of the member sets (the truth): made equal to them.
    private func repairAgentIndex(_ session: RedisSession, expected: [String: Set<String>], agents: [String],
                                  report: inout Report) async throws
    {
        let dids = Array(Set(agents).union(expected.keys)).sorted()
        var fixed = 0
        for start in stride(from: 0, to: dids.count, by: 256) {
            let slice = Array(dids[start..<min(start + 256, dids.count)])
            let replies = try await session.pipeline(slice.map { ["SMEMBERS", RedisArgument("agentchat:agent:{\($0)}:channels")] })
            var commands: [[RedisArgument]] = []
            for (did, reply) in zip(slice, replies) {
                let actual = Set(((try? reply.get())?.array ?? []).compactMap(\.string))
                let want = expected[did] ?? []
                let key = RedisArgument("agentchat:agent:{\(did)}:channels")
                let missing = want.subtracting(actual), extra = actual.subtracting(want)
                if !missing.isEmpty { commands.append(["SADD", key] + missing.sorted().map { RedisArgument($0) }) }
                if !extra.isEmpty { commands.append(["SREM", key] + extra.sorted().map { RedisArgument($0) }) }
                fixed += missing.count + extra.count
            }
            try await Self.run(session, commands)
        }
        if fixed > 0 { report.repairs.append("agent channel index: \(fixed) entries made to match the member sets") }
    }

    /// The ledger's indexes (written before the ledger, so a backup may hold more than needed, never less; added
    /// where missing).
    private func repairSets(_ session: RedisSession, ledgerChannels: [String], earnedIn: [String: Set<String>],
                            report: inout Report) async throws
    {
        var commands: [[RedisArgument]] = []
        if !ledgerChannels.isEmpty {
            commands.append(["SADD", "agentchat:ledger-channels"] + ledgerChannels.map { RedisArgument($0) })
        }
        for (did, ids) in earnedIn.sorted(by: { $0.key < $1.key }) {
            commands.append(["SADD", RedisArgument("agentchat:agent:{\(did)}:earned-in")] + ids.sorted().map { RedisArgument($0) })
        }
        let added = try await Self.run(session, commands).reduce(0) { $0 + ($1.int ?? 0) }
        if added > 0 { report.repairs.append("ledger indexes: \(added) entries added") }
    }

    /// The directory lists exactly the listed channels.
    private func repairDirectory(_ session: RedisSession, listed: [String: Int], report: inout Report) async throws {
        let current = try await session.command(["ZRANGE", "agentchat:directory", "0", "-1"]).array?.compactMap(\.string) ?? []
        var commands: [[RedisArgument]] = []
        let stale = Set(current).subtracting(listed.keys)
        if !stale.isEmpty { commands.append(["ZREM", "agentchat:directory"] + stale.sorted().map { RedisArgument($0) }) }
        let missing = Set(listed.keys).subtracting(current)
        for id in missing.sorted() {
            commands.append(["ZADD", "agentchat:directory", RedisArgument(listed[id]!), RedisArgument(id)])
        }
        try await Self.run(session, commands)
        if !stale.isEmpty || !missing.isEmpty {
            report.repairs.append("directory: \(missing.count) listed channels added, \(stale.count) unlisted removed")
        }
    }

    /// Every open peek has a timer (one due now: the broker that claims it re-reads the peek and puts the timer
    /// back at the peek's own deadline if that is later).
    private func repairTimers(_ session: RedisSession, openPeeks: [String], report: inout Report) async throws {
        guard !openPeeks.isEmpty else { return }
        let scores = try await session.pipeline(openPeeks.map { ["ZSCORE", "agentchat:peek-timers", RedisArgument($0)] })
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        let missing = zip(openPeeks, scores).filter { ((try? $0.1.get()) ?? .null).isNull }.map(\.0)
        try await Self.run(session, missing.map { ["ZADD", "agentchat:peek-timers", RedisArgument(now), RedisArgument($0)] })
        if !missing.isEmpty { report.repairs.append("peek timers: \(missing.count) open peeks given a timer") }
    }

    @discardableResult
    private static func run(_ session: RedisSession, _ commands: [[RedisArgument]]) async throws -> [RedisValue] {
        try await session.pipeline(commands).map { result in
            switch result {
            case .success(let value): return value
            case .failure(let error): throw RedisSessionError("repair failed: \(error.replyMessage ?? "\(error)")")
            }
        }
    }
}
