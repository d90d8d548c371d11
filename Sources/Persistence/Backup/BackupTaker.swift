import AgentChatRedis
import Foundation

/// Takes a backup of everything AgentChat keeps in Redis while brokers keep running (docs/ops/backup.md).
///
/// 1. `SCAN` every `agentchat:*` key (leaving out what is rebuilt by itself: rate limits, presence, the per-second
///    message counts) and group the names by hash tag.
/// 2. Capture each group with one Lua script (`backup_capture`): in one atomic step it reads the group's keys (the
///    scanned names plus the names a channel or agent always has, so keys created after the scan are not missed),
///    and answers each key's type, TTL and `DUMP` payload, and the Redis time of the step.
/// 3. Write each group as it arrives; the file never holds more than a batch of groups in memory.
///
/// Groups are captured in this order, so that what one group refers to in a later one is there: channels, then
/// agents (every member of a captured channel registered before it), then other tagged keys, then untagged keys
/// (the directory, the peek timers, the ledger index, payment events, sandbox PaymentIntents, signing keys).
package struct BackupTaker {
    package struct Summary: Sendable {
        package var groups = 0, keys = 0, bytes = 0
        package var channels = 0, agents = 0
    }

    package let session: RedisSession
    package let source: String
    /// Groups captured per pipelined batch.
    package var batchSize = 16

    package init(session: RedisSession, source: String) {
        self.session = session
        self.source = source
    }

    /// Keys left out: rebuilt by the brokers on their own, worthless after a restore.
    static func skipped(_ name: String) -> Bool {
        name.hasPrefix("agentchat:ratelimit:") || name.hasPrefix("agentchat:presence:")
            || (name.hasPrefix("agentchat:ch:{") && name.hasSuffix("}:rate"))
    }

    /// The group of a key: its hash tag's prefix (`agentchat:ch:{id}`), or the key itself when it has no tag.
    static func group(of name: String) -> (label: String, kind: GroupKind) {
        guard let open = name.firstIndex(of: "{"),
              let close = name[name.index(after: open)...].firstIndex(of: "}"),
              close > name.index(after: open)
        else { return (name, .untagged) }
        let label = String(name[...close])
        if label.hasPrefix("agentchat:ch:{") { return (label, .channel) }
        if label.hasPrefix("agentchat:agent:{") { return (label, .agent) }
        return (label, .tagged)
    }

    enum GroupKind: Int, Comparable {
        case channel, agent, tagged, untagged
        static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
        var argument: RedisArgument {
            switch self {
            case .channel: "channel"
            case .agent: "agent"
            case .tagged, .untagged: "other"
            }
        }
    }

    /// KEYS: the scanned names of one group. ARGV: kind, label, scan start (ms).
    /// Answers {seconds, microseconds} of TIME, then {name, type, pttl, payload} per existing key.
    static let capture = """
        local seen, names = {}, {}
        local function add(k) if not seen[k] then seen[k] = true; names[#names + 1] = k end end
        for _, k in ipairs(KEYS) do add(k) end
        local p = ARGV[2]
        if ARGV[1] == 'channel' then
          for _, s in ipairs({'', ':members', ':invites', ':cursors', ':log', ':peeks', ':ledger', ':earnings'}) do
            add(p .. s)
          end
          local epoch = tonumber(redis.call('HGET', p, 'epoch') or '0') or 0
          for e = 1, epoch do add(p .. ':keys:' .. e) end
          for _, id in ipairs(redis.call('SMEMBERS', p .. ':peeks')) do add(p .. ':peek:' .. id) end
          for _, entry in ipairs(redis.call('XRANGE', p .. ':ledger', ARGV[3], '+')) do
            local fields = entry[2]
            for i = 1, #fields, 2 do
              if fields[i] == 'peek' then add(p .. ':peek:' .. fields[i + 1]) end
            end
          end
        elseif ARGV[1] == 'agent' then
          for _, s in ipairs({'', ':channels', ':earned-in'}) do add(p .. s) end
        end
        local out = {redis.call('TIME')}
        for _, k in ipairs(names) do
          local t = redis.call('TYPE', k)['ok']
          if t ~= 'none' then
            out[#out + 1] = {k, t, redis.call('PTTL', k), redis.call('DUMP', k)}
          end
        end
        return out
        """

    /// Writes the backup to `path`; on failure nothing is left at `path`.
    package func run(to path: String, progress: (String) -> Void = { _ in }) async throws -> Summary {
        let info = try await session.command(["INFO", "server"]).string ?? ""
        let redisVersion = info.split(whereSeparator: \.isNewline)
            .first { $0.hasPrefix("redis_version:") }.map { String($0.dropFirst("redis_version:".count)) } ?? "unknown"
        let start = try await Self.time(session)
        let sha = try await session.command(["SCRIPT", "LOAD", RedisArgument(Self.capture)]).string ?? ""

        // 1. Scan.
        var groups: [String: (kind: GroupKind, names: [String])] = [:]
        var cursor = "0"
        repeat {
            let reply = try await session.command(["SCAN", RedisArgument(cursor), "MATCH", "agentchat:*", "COUNT", "1000"])
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let names = parts[1].array else {
                throw RedisSessionError("unexpected SCAN reply")
            }
            for value in names {
                guard let name = value.string, !Self.skipped(name) else { continue }
                let (label, kind) = Self.group(of: name)
                groups[label, default: (kind, [])].names.append(name)
            }
            cursor = next
        } while cursor != "0"
        let order = groups.keys.sorted { a, b in
            let ka = groups[a]!.kind, kb = groups[b]!.kind
            return ka != kb ? ka < kb : a < b
        }
        progress("scanned: \(order.count) groups")

        // 2 and 3. Capture and write, a batch at a time.
        let writer = try BackupWriter(path: path,
                                      header: BackupHeader(createdAt: start, source: source, redisVersion: redisVersion))
        var summary = Summary()
        do {
            var index = 0
            while index < order.count {
                let batch = order[index..<min(index + batchSize, order.count)]
                index += batch.count
                let commands: [[RedisArgument]] = batch.map { label in
                    let group = groups[label]!
                    let names = Array(Set(group.names)).sorted()
                    return ["EVALSHA", RedisArgument(sha), RedisArgument(names.count)] + names.map { RedisArgument($0) }
                        + [group.kind.argument, RedisArgument(label), RedisArgument(start)]
                }
                let replies = try await session.pipeline(commands)
                for (label, reply) in zip(batch, replies) {
                    let keys = try Self.keys(from: reply, label: label)
                    guard !keys.keys.isEmpty else { continue }  // gone since the scan
                    try writer.beginGroup(label: label, capturedAt: keys.time, keyCount: keys.keys.count)
                    for key in keys.keys { try writer.add(key) }
                    summary.groups += 1
                    summary.keys += keys.keys.count
                    switch groups[label]!.kind {
                    case .channel: summary.channels += keys.keys.contains { $0.nameText == label } ? 1 : 0
                    case .agent: summary.agents += keys.keys.contains { $0.nameText == label } ? 1 : 0
                    default: break
                    }
                }
            }
            summary.bytes = try writer.finish()
        } catch {
            writer.abandon()
            throw error
        }
        return summary
    }

    static func time(_ session: RedisSession) async throws -> Int64 {
        let parts = try await session.command(["TIME"]).array ?? []
        guard parts.count == 2, let seconds = parts[0].int, let micros = parts[1].int else {
            throw RedisSessionError("unexpected TIME reply")
        }
        return Int64(seconds) * 1000 + Int64(micros) / 1000
    }

    private static func keys(from reply: Result<RedisValue, RedisError>, label: String) throws
        -> (time: Int64, keys: [BackupKey])
    {
        let value: RedisValue
        switch reply {
        case .success(let v): value = v
        case .failure(let error):
            throw RedisSessionError("capturing \(label) failed: \(error.replyMessage ?? "\(error)")")
        }
        guard let items = value.array, let clock = items.first?.array, clock.count == 2,
              let seconds = clock[0].int, let micros = clock[1].int
        else { throw RedisSessionError("capturing \(label): unexpected reply") }
        let time = Int64(seconds) * 1000 + Int64(micros) / 1000
        var keys: [BackupKey] = []
        for item in items.dropFirst() {
            guard let fields = item.array, fields.count == 4, let name = fields[0].bytes, let type = fields[1].string,
                  let pttl = fields[2].int, let payload = fields[3].bytes
            else { throw RedisSessionError("capturing \(label): unexpected reply") }
            keys.append(BackupKey(name: name, type: type, expiresAt: pttl >= 0 ? time + Int64(pttl) : nil,
                                  payload: payload))
        }
        return (time, keys)
    }
}
