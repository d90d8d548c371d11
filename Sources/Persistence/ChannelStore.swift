import AgentChatCore
import AgentChatProtocol
import AgentChatRedis

/// Channels, membership, key envelopes and message history in Redis. Loop-bound.
///
/// Each step that must be atomic is one Lua script over keys of one channel (one hash tag), so the layout works on
/// a Redis Cluster. Scripts answer `{status, value…}`; statuses other than `ok` become a `ChannelRefusal`, and a
/// Redis failure `StoreFailure.unavailable`.
package final class ChannelStore: ChannelStoring {
    /// How many replicas a message must reach before it is acknowledged (`WAIT`), and for how long to wait.
    package struct Replication: Sendable {
        package var replicas: Int
        package var timeoutMilliseconds: Int
        package init(replicas: Int = 0, timeoutMilliseconds: Int = 1000) {
            self.replicas = replicas
            self.timeoutMilliseconds = timeoutMilliseconds
        }
    }

    private let redis: RedisClient
    package let limits: ChannelLimits
    package let replication: Replication

    package init(redis: RedisClient, limits: ChannelLimits = ChannelLimits(), replication: Replication = Replication()) {
        self.redis = redis
        self.limits = limits
        self.replication = replication
        for script in [Self.create, Self.invite, Self.join, Self.leave, Self.remove, Self.rotate, Self.publishKeys,
                       redis.isCluster ? Self.shardedAppend : Self.append, Self.state, Self.cursor]
        {
            redis.scripts.register(script)
        }
    }

    // MARK: Scripts

    static let create = RedisScript(name: "channel_create", source: """
        if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
        redis.call('HSET', KEYS[1], 'name', ARGV[1], 'owner', ARGV[2], 'open', ARGV[3], 'createdAt', ARGV[4],
                   'historyEpoch', ARGV[5], 'epoch', 1, 'keyedEpoch', 0, 'seq', 0)
        for i = 6, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
        return {'ok', 1}
        """)

    static let invite = RedisScript(name: "channel_invite", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        if redis.call('SISMEMBER', KEYS[2], ARGV[2]) == 0 then redis.call('SADD', KEYS[3], ARGV[2]) end
        return {'ok', tonumber(redis.call('HGET', KEYS[1], 'epoch'))}
        """)

    static let join = RedisScript(name: "channel_join", source: """
        if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
        local epoch = tonumber(redis.call('HGET', KEYS[1], 'epoch'))
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 1 then return {'ok', epoch, 0} end
        if redis.call('HGET', KEYS[1], 'open') ~= '1' and redis.call('SISMEMBER', KEYS[3], ARGV[1]) == 0 then
          return {'hidden'}
        end
        if redis.call('SCARD', KEYS[2]) >= tonumber(ARGV[2]) then return {'full', epoch} end
        redis.call('SREM', KEYS[3], ARGV[1])
        redis.call('SADD', KEYS[2], ARGV[1])
        redis.call('HSET', KEYS[4], ARGV[1], redis.call('HGET', KEYS[1], 'seq') or 0)
        return {'ok', redis.call('HINCRBY', KEYS[1], 'epoch', 1), 1}
        """)

    /// When the owner leaves, the remaining member whose DID sorts first (bytewise) becomes the owner.
    static let leave = RedisScript(name: "channel_leave", source: """
        if redis.call('SREM', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        redis.call('HDEL', KEYS[3], ARGV[1])
        if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
          local members = redis.call('SMEMBERS', KEYS[2])
          if #members > 0 then
            local function before(a, b)  -- bytewise, whatever the server's collation locale
              for i = 1, math.min(#a, #b) do
                local x, y = string.byte(a, i), string.byte(b, i)
                if x ~= y then return x < y end
              end
              return #a < #b
            end
            local owner = members[1]
            for i = 2, #members do if before(members[i], owner) then owner = members[i] end end
            redis.call('HSET', KEYS[1], 'owner', owner)
          end
        end
        return {'ok', redis.call('HINCRBY', KEYS[1], 'epoch', 1)}
        """)

    /// A new epoch for the same members. ARGV: did.
    static let rotate = RedisScript(name: "channel_rotate", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        return {'ok', redis.call('HINCRBY', KEYS[1], 'epoch', 1)}
        """)

    static let remove = RedisScript(name: "channel_remove", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        if redis.call('HGET', KEYS[1], 'owner') ~= ARGV[1] then return {'forbidden'} end
        if ARGV[2] == ARGV[1] then return {'owner_self'} end
        redis.call('SREM', KEYS[3], ARGV[2])
        if redis.call('SREM', KEYS[2], ARGV[2]) == 0 then
          return {'ok', tonumber(redis.call('HGET', KEYS[1], 'epoch')), 0}
        end
        redis.call('HDEL', KEYS[4], ARGV[2])
        return {'ok', redis.call('HINCRBY', KEYS[1], 'epoch', 1), 1}
        """)

    /// ARGV: sender, epoch, signature, then recipient/envelope pairs. Envelopes must cover exactly the members.
    static let publishKeys = RedisScript(name: "channel_keys", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        local meta = redis.call('HMGET', KEYS[1], 'epoch', 'keyedEpoch')
        local epoch = tonumber(meta[1])
        if tonumber(ARGV[2]) ~= epoch then return {'stale_epoch', epoch} end
        if tonumber(meta[2]) >= epoch then return {'keys_exist', epoch} end
        if (#ARGV - 3) / 2 ~= redis.call('SCARD', KEYS[2]) then return {'stale_epoch', epoch} end
        for i = 4, #ARGV, 2 do
          if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then return {'stale_epoch', epoch} end
        end
        redis.call('HSET', KEYS[3], '_sender', ARGV[1], '_signature', ARGV[3])
        for i = 4, #ARGV, 2 do redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1]) end
        redis.call('HSET', KEYS[1], 'keyedEpoch', epoch)
        return {'ok', epoch}
        """)

    /// KEYS: meta, members, log, dedup, rate. ARGV: sender, epoch, item prefix, item suffix, now, max count,
    /// oldest allowed ms, dedup window ms, feed channel. Stores, trims, remembers the client id, counts activity
    /// (listed channels only: the count feeds the public indicators), publishes. Answers the offset and whether the
    /// channel is listed.
    ///
    /// The hot path (every message), measured in instructions under callgrind (docs/BENCHMARKS.md): one `HMGET` of
    /// the meta hash; epochs compared as the decimal strings both sides write; the offset formatted once; the
    /// dedup check and its write in one `SET … NX GET` (undone if the `XADD` fails, so a retry is never told
    /// "duplicate" of an offset that was not stored); `seq` and `lastActivity` written by one `HSET` after the entry
    /// is in the log (a failed `XADD` leaves no gap). The meta field `oldestAt` is a lower bound on the time of the
    /// oldest kept entry (entries only ever leave from the front), so the log is looked at for the age trim only
    /// once that bound is older than the limit; the activity counter's expiry is set once per second.
    static let append = appendScript(publish: "PUBLISH")

    /// `append` for a Redis Cluster, under the same name: the item goes out with `SPUBLISH` (the feed is a sharded
    /// channel in the channel's slot, which Redis allows a script to publish to).
    static let shardedAppend = appendScript(publish: "SPUBLISH")

    /// The append script, publishing the item with `publish` (`PUBLISH` or `SPUBLISH`).
    private static func appendScript(publish: String) -> RedisScript {
        RedisScript(name: "channel_append", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then
          if redis.call('HGET', KEYS[1], 'open') == '1' then return {'not_member'} end
          return {'not_found'}
        end
        local meta = redis.call('HMGET', KEYS[1], 'epoch', 'keyedEpoch', 'listed', 'oldestAt', 'seq')
        if ARGV[2] ~= meta[1] or meta[2] ~= meta[1] then return {'stale_epoch', tonumber(meta[1])} end
        local offset = tostring((tonumber(meta[5]) or 0) + 1)
        local existing = redis.call('SET', KEYS[4], offset, 'NX', 'GET', 'PX', ARGV[8])
        if existing then return {'duplicate', tonumber(existing)} end
        local item = ARGV[3] .. offset .. ARGV[4]
        local added = redis.pcall('XADD', KEYS[3], 'MAXLEN', ARGV[6], '0-' .. offset, 'm', item, 't', ARGV[5])
        if type(added) == 'table' and added.err then
          redis.call('DEL', KEYS[4])
          return added
        end
        local oldestAt = tonumber(meta[4])
        if oldestAt == nil or oldestAt < tonumber(ARGV[7]) then
          -- Age trim: drop at most 100 entries a call, then remember the time of the oldest one kept.
          local oldest = tonumber(ARGV[7])
          oldestAt = tonumber(ARGV[5])
          for _ = 1, 100 do
            local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
            if first == nil then break end
            oldestAt = tonumber(first[2][4])
            if oldestAt >= oldest then break end
            redis.call('XDEL', KEYS[3], first[1])
          end
          redis.call('HSET', KEYS[1], 'seq', offset, 'lastActivity', ARGV[5], 'oldestAt', oldestAt)
        else
          redis.call('HSET', KEYS[1], 'seq', offset, 'lastActivity', ARGV[5])
        end
        local listed = meta[3] == '1'
        if listed and redis.call('HINCRBY', KEYS[5], math.floor(tonumber(ARGV[5]) / 1000), 1) == 1 then
          redis.call('PEXPIRE', KEYS[5], 120000)
        end
        redis.call('\(publish)', ARGV[9], item)
        return {'ok', tonumber(offset), listed and 1 or 0}
        """)
    }

    /// KEYS: meta, members, log. ARGV: did. Membership, epochs, latest and first retained offsets.
    static let state = RedisScript(name: "channel_state", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        local meta = redis.call('HMGET', KEYS[1], 'historyEpoch', 'seq', 'epoch', 'keyedEpoch')
        local first = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)
        local firstOffset = 0
        if #first > 0 then firstOffset = tonumber(string.sub(first[1][1], 3)) end
        return {'ok', meta[1], tonumber(meta[2]), firstOffset, tonumber(meta[3]), tonumber(meta[4])}
        """)

    /// KEYS: meta, members, cursors, log. ARGV: did, the offset to move the cursor to (empty: only read it).
    /// Answers the cursor (never past the latest offset), the latest offset, the first retained offset (0 when
    /// history is empty) and the channel's name.
    static let cursor = RedisScript(name: "channel_cursor", source: """
        if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return {'not_found'} end
        local meta = redis.call('HMGET', KEYS[1], 'seq', 'name')
        local seq = tonumber(meta[1]) or 0
        local read = tonumber(redis.call('HGET', KEYS[3], ARGV[1])) or 0
        if ARGV[2] ~= '' then
          local offset = tonumber(ARGV[2])
          if offset > seq then return {'beyond_latest', seq} end
          if offset > read then
            redis.call('HSET', KEYS[3], ARGV[1], offset)
            read = offset
          end
        end
        local first = redis.call('XRANGE', KEYS[4], '-', '+', 'COUNT', 1)
        local firstOffset = 0
        if #first > 0 then firstOffset = tonumber(string.sub(first[1][1], 3)) end
        return {'ok', math.min(read, seq), seq, firstOffset, meta[2] or ''}
        """)

    // MARK: Operations

    package func create(_ id: ChannelID, name: String, owner: DID, open: Bool, members: [DID], historyEpoch: String,
                        now: Int64, completion: @escaping StoreCompletion<Void>)
    {
        var arguments: [RedisArgument] = [RedisArgument(name), RedisArgument(owner.description), open ? "1" : "0",
                                          RedisArgument(now), RedisArgument(historyEpoch)]
        arguments += ([owner] + members).map { RedisArgument($0.description) }
        run(Self.create, keys: [RedisKeys.channel(id), RedisKeys.members(id)], arguments: arguments) { result in
            completion(result.flatMap { reply in
                reply.status == "ok" ? .success(()) : .failure(.refused(.forbidden, epoch: nil))
            })
        }
        indexMembership(id, add: [owner] + members)
    }

    package func invite(_ id: ChannelID, by inviter: DID, _ did: DID, completion: @escaping StoreCompletion<Int64>)
    {
        run(Self.invite, keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.invites(id)],
            arguments: [RedisArgument(inviter.description), RedisArgument(did.description)]) { result in
            completion(result.flatMap { $0.epochResult })
        }
    }

    /// Joins; the epoch, and whether membership changed (false when already a member).
    package func join(_ id: ChannelID, _ did: DID,
                      completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    {
        run(Self.join,
            keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.invites(id), RedisKeys.cursors(id)],
            arguments: [RedisArgument(did.description), RedisArgument(ChannelKeys.maxMembers)]) { [weak self] result in
            let outcome = result.flatMap { reply in reply.epochResult.map { (epoch: $0, changed: reply.flag) } }
            if case .success((_, true)) = outcome { self?.indexMembership(id, add: [did]) }
            completion(outcome)
        }
    }

    package func leave(_ id: ChannelID, _ did: DID, completion: @escaping StoreCompletion<Int64>) {
        run(Self.leave, keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.cursors(id)],
            arguments: [RedisArgument(did.description)]) { [weak self] result in
            let outcome = result.flatMap { $0.epochResult }
            if case .success = outcome { self?.indexMembership(id, remove: did) }
            completion(outcome)
        }
    }

    /// Starts a new epoch (members only); the new epoch.
    package func rotate(_ id: ChannelID, by did: DID, completion: @escaping StoreCompletion<Int64>) {
        run(Self.rotate, keys: [RedisKeys.channel(id), RedisKeys.members(id)],
            arguments: [RedisArgument(did.description)]) { result in
            completion(result.flatMap { $0.epochResult })
        }
    }

    /// Removes `did` (owner only); the epoch, and whether a member was removed (false for a mere invitation).
    package func remove(_ id: ChannelID, by owner: DID, _ did: DID,
                        completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    {
        run(Self.remove,
            keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.invites(id), RedisKeys.cursors(id)],
            arguments: [RedisArgument(owner.description), RedisArgument(did.description)]) { [weak self] result in
            let outcome = result.flatMap { reply in reply.epochResult.map { (epoch: $0, changed: reply.flag) } }
            if case .success((_, true)) = outcome { self?.indexMembership(id, remove: did) }
            completion(outcome)
        }
    }

    package func publishKeys(_ keys: ChannelKeys, sender: DID, completion: @escaping StoreCompletion<Int64>) {
        var arguments: [RedisArgument] = [RedisArgument(sender.description), RedisArgument(keys.epoch),
                                          RedisArgument(keys.signature)]
        for (did, envelope) in keys.envelopes {
            arguments.append(RedisArgument(did.description))
            arguments.append(RedisArgument(envelope))
        }
        run(Self.publishKeys,
            keys: [RedisKeys.channel(keys.channel), RedisKeys.members(keys.channel),
                   RedisKeys.keys(keys.channel, epoch: keys.epoch)],
            arguments: arguments) { result in completion(result.flatMap { $0.epochResult }) }
    }

    /// The envelopes of one epoch: sender, signature, recipient → envelope. Nil when none were published.
    package func keys(_ id: ChannelID, epoch: Int64, completion: @escaping StoreCompletion<StoredKeys?>) {
        redis.send(["HGETALL", RedisKeys.keys(id, epoch: epoch)]) { result in
            completion(result.unavailableOnFailure.map { value in
                var fields = value.stringPairs
                guard let sender = fields.removeValue(forKey: "_sender"),
                    let signature = fields.removeValue(forKey: "_signature")
                else { return nil }
                return StoredKeys(sender: sender, signature: signature, envelopes: fields)
            })
        }
    }

    /// Stores a message and publishes it, in one step. `suffix` is `MessageItem.suffix(...)`.
    package func append(_ message: MessageSend, sender: DID, suffix: [UInt8], now: Int64,
                        completion: @escaping StoreCompletion<AppendOutcome>)
    {
        let id = message.channel
        run(Self.append,
            keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.log(id),
                   RedisKeys.dedup(id, sender: sender, clientMessageID: message.clientMessageID), RedisKeys.rate(id)],
            arguments: [RedisArgument(sender.description), RedisArgument(message.epoch),
                        RedisArgument(MessageItem.prefix), RedisArgument(suffix), RedisArgument(now),
                        RedisArgument(limits.historyMaxCount), RedisArgument(now - limits.historyMaxAgeMilliseconds),
                        RedisArgument(limits.dedupWindowMilliseconds), RedisKeys.feed(id)]
        ) { [redis, replication] result in
            let outcome: StoreResult<AppendOutcome> = result.flatMap { reply in
                switch reply.status {
                case "ok":
                    reply.int(1).map { .success(.stored(offset: $0, listed: reply.flag)) } ?? .failure(.unavailable)
                case "duplicate":
                    reply.int(1).map { .success(.duplicate(offset: $0)) } ?? .failure(.unavailable)
                default: .failure(reply.refusal)
                }
            }
            // With replicas to reach, a duplicate waits too: its first append may not have reached them.
            guard replication.replicas > 0, case .success = outcome else { return completion(outcome) }
            redis.waitForReplicas(replication.replicas, timeoutMilliseconds: replication.timeoutMilliseconds) {
                acknowledged in
                switch acknowledged {
                case .success(let count) where count >= replication.replicas: completion(outcome)
                case .success: completion(.failure(.notReplicated(replicas: replication.replicas)))
                case .failure: completion(.failure(.unavailable))
                }
            }
        }
    }

    /// The channel's offsets and epochs, if `did` is a member.
    package func state(_ id: ChannelID, for did: DID, completion: @escaping StoreCompletion<ChannelState>) {
        run(Self.state, keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.log(id)],
            arguments: [RedisArgument(did.description)]) { result in
            completion(result.flatMap { reply in
                guard reply.status == "ok" else { return .failure(reply.refusal) }
                guard let historyEpoch = reply.string(1), let offset = reply.int(2), let first = reply.int(3),
                    let epoch = reply.int(4), let keyed = reply.int(5)
                else { return .failure(.unavailable) }
                return .success(ChannelState(historyEpoch: historyEpoch, offset: offset, firstOffset: first, epoch: epoch,
                                      keyedEpoch: keyed))
            })
        }
    }

    /// Stored items with offsets after `after` (oldest first), at most `count`.
    package func range(_ id: ChannelID, after: Int64, count: Int, completion: @escaping StoreCompletion<[ChannelItem]>) {
        redis.send(["XRANGE", RedisKeys.log(id), RedisArgument("0-\(after + 1)"), "+", "COUNT", RedisArgument(count)]) {
            result in
            completion(result.unavailableOnFailure.map(Self.items))
        }
    }

    /// Stored items before `before` (or the newest), newest first, at most `count`.
    package func reverseRange(_ id: ChannelID, before: Int64?, count: Int,
                              completion: @escaping StoreCompletion<[ChannelItem]>)
    {
        let end: RedisArgument = before.map { RedisArgument("0-\(max(0, $0 - 1))") } ?? "+"
        redis.send(["XREVRANGE", RedisKeys.log(id), end, "-", "COUNT", RedisArgument(count)]) { result in
            completion(result.unavailableOnFailure.map(Self.items))
        }
    }

    /// Channel metadata and members, for a description. Nil when the channel does not exist. The field names are
    /// the ones the scripts above write.
    package func record(_ id: ChannelID, completion: @escaping StoreCompletion<ChannelRecord?>) {
        var meta: RedisValue?
        redis.send(["HGETALL", RedisKeys.channel(id)]) { result in
            if case .success(let value) = result { meta = value }
        }
        redis.send(["SMEMBERS", RedisKeys.members(id)]) { result in
            completion(result.unavailableOnFailure.map { membersValue in
                guard let fields = meta?.stringPairs, !fields.isEmpty,
                    let owner = fields["owner"].flatMap(DID.init(parsing:))
                else { return nil }
                let members = (membersValue.array ?? []).compactMap { $0.bytes }
                    .compactMap { DID(parsing: String(decoding: $0, as: UTF8.self)) }
                let int: (String) -> Int64 = { fields[$0].flatMap { Int64($0) } ?? 0 }
                return ChannelRecord(name: fields["name"] ?? "", owner: owner, open: fields["open"] == "1",
                                     epoch: int("epoch"), keyedEpoch: int("keyedEpoch"), offset: int("seq"),
                                     historyEpoch: fields["historyEpoch"] ?? "", members: members)
            })
        }
    }

    /// The channels in an agent's index.
    package func channels(of did: DID, completion: @escaping StoreCompletion<[ChannelID]>) {
        redis.send(["SMEMBERS", RedisKeys.agentChannels(did)]) { result in
            completion(result.unavailableOnFailure.map { value in
                (value.array ?? []).compactMap { $0.bytes }.compactMap { ChannelID(String(decoding: $0, as: UTF8.self)) }
                    .sorted { $0.rawValue < $1.rawValue }
            })
        }
    }

    package func setCursor(_ id: ChannelID, for did: DID, to offset: Int64,
                           completion: @escaping StoreCompletion<ReadCursor>)
    {
        cursor(id, for: did, to: offset) { completion($0.map { $0.withoutName }) }
    }

    package func cursors(_ ids: [ChannelID], for did: DID, completion: @escaping StoreCompletion<[ReadCursor]>) {
        guard !ids.isEmpty else { return completion(.success([])) }
        var found: [ChannelID: ReadCursor] = [:]
        var failed = false
        var remaining = ids.count
        for id in ids {
            cursor(id, for: did, to: nil) { result in
                switch result {
                case .success(let cursor): found[id] = cursor
                case .failure(.refused): break  // left meanwhile
                case .failure: failed = true
                }
                remaining -= 1
                guard remaining == 0 else { return }
                completion(failed ? .failure(.unavailable) : .success(ids.compactMap { found[$0] }))
            }
        }
    }

    private func cursor(_ id: ChannelID, for did: DID, to offset: Int64?,
                        completion: @escaping StoreCompletion<ReadCursor>)
    {
        run(Self.cursor,
            keys: [RedisKeys.channel(id), RedisKeys.members(id), RedisKeys.cursors(id), RedisKeys.log(id)],
            arguments: [RedisArgument(did.description), offset.map { RedisArgument($0) } ?? ""]) { result in
            completion(result.flatMap { reply in
                guard reply.status == "ok" else { return .failure(reply.refusal) }
                guard let read = reply.int(1), let latest = reply.int(2), let first = reply.int(3),
                    let name = reply.string(4)
                else { return .failure(.unavailable) }
                return .success(ReadCursor(channel: id, name: name, read: read, offset: latest, firstOffset: first))
            })
        }
    }

    // MARK: Helpers

    private func indexMembership(_ id: ChannelID, add: [DID] = [], remove: DID? = nil) {
        for did in add { redis.send(["SADD", RedisKeys.agentChannels(did), RedisArgument(id.rawValue)]) { _ in } }
        if let remove { redis.send(["SREM", RedisKeys.agentChannels(remove), RedisArgument(id.rawValue)]) { _ in } }
    }

    private func run(_ script: RedisScript, keys: [RedisArgument], arguments: [RedisArgument],
                     completion: @escaping StoreCompletion<ScriptReply>)
    {
        redis.scripts.call(script.name, keys: keys, arguments: arguments) { result in
            completion(result.unavailableOnFailure.map(ScriptReply.init))
        }
    }

    private static func items(_ value: RedisValue) -> [ChannelItem] {
        (value.array ?? []).compactMap { entry in
            // [id, [field, value, field, value]]; the item is the value of "m".
            guard let parts = entry.array, parts.count == 2, let fields = parts[1].array else { return nil }
            var index = 0
            while index + 1 < fields.count {
                if fields[index].bytes == Array("m".utf8) { return fields[index + 1].bytes.flatMap(ChannelItem.init(bytes:)) }
                index += 2
            }
            return nil
        }
    }
}

/// A script's `{status, value…}` answer.
struct ScriptReply {
    let values: [RedisValue]
    init(_ value: RedisValue) { values = value.array ?? [] }

    var status: String { values.first.flatMap { $0.bytes.map { String(decoding: $0, as: UTF8.self) } ?? $0.string } ?? "" }
    func int(_ index: Int) -> Int64? {
        guard index < values.count else { return nil }
        if let int = values[index].int { return Int64(int) }
        return values[index].bytes.flatMap { Int64(String(decoding: $0, as: UTF8.self)) }
    }
    func string(_ index: Int) -> String? {
        guard index < values.count else { return nil }
        return values[index].bytes.map { String(decoding: $0, as: UTF8.self) } ?? values[index].string
    }
    var flag: Bool { int(2) == 1 }

    var refusal: StoreFailure {
        .refused(ChannelRefusal(rawValue: status) ?? .notFound, epoch: int(1))
    }

    var epochResult: StoreResult<Int64> {
        guard status == "ok" else { return .failure(refusal) }
        return int(1).map { .success($0) } ?? .failure(.unavailable)
    }
}

extension Result where Failure == RedisError {
    /// A Redis failure as the core sees it: the store is unavailable (and the request changed nothing).
    var unavailableOnFailure: StoreResult<Success> { mapError { _ in StoreFailure.unavailable } }
}
