import AgentChatCore
import AgentChatProtocol
import AgentChatRedis

/// Peeks, their timers and the ledger in Redis. Loop-bound.
///
/// A peek's hash, its channel's ledger stream, the channel's per-party earnings and its set of open peeks share the
/// channel's hash tag, so a transition and its ledger entries are one atomic script (`peek_update`), guarded by the
/// peek's version. Timers are one sorted set (`agentchat:peek-timers`, member `<channel>/<peek>`, score the due time
/// in ms), written beside the transition: a timer that fires for a peek whose deadline moved is rescheduled by the
/// service, so a lost or extra timer write never loses or repeats a step.
package final class PeekStore: PeekStoring {
    private let redis: RedisClient

    package init(redis: RedisClient) {
        self.redis = redis
        for script in [Self.create, Self.update, Self.claim, Self.grant] { redis.scripts.register(script) }
    }

    // MARK: Keys

    static func peek(_ key: PeekKey) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)ch:{\(key.channel)}:peek:\(key.id)") }
    static func open(_ channel: ChannelID) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)ch:{\(channel)}:peeks") }
    static func ledger(_ channel: ChannelID) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)ch:{\(channel)}:ledger") }
    static func earnings(_ channel: ChannelID) -> RedisArgument {
        RedisArgument("\(RedisKeys.prefix)ch:{\(channel)}:earnings")
    }
    /// Set: channels where the agent has ledger entries.
    static func earnedIn(_ did: DID) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)agent:{\(did)}:earned-in") }
    /// Set: every channel with a ledger (for the export).
    static let ledgerChannels = RedisArgument("\(RedisKeys.prefix)ledger-channels")
    static let timers = RedisArgument("\(RedisKeys.prefix)peek-timers")
    static func event(_ id: String) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)payment-event:\(id)") }

    // MARK: Scripts

    /// KEYS: peek, open set. ARGV: id, then field/value pairs.
    static let create = RedisScript(name: "peek_create", source: """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
        redis.call('SADD', KEYS[2], ARGV[1])
        return 1
        """)

    /// KEYS: peek, ledger, earnings, open set, channel meta. ARGV: expected version, id, now, settlement kind
    /// ('' | 'capture' | 'cancel'), payment intent, captured, released, number of field pairs N, N field/value pairs
    /// (an empty value deletes the field), then party/cents pairs of the shares.
    /// Counters on the channel (the indicators' `peeks` and `peeksActive`) follow the phase into and out of `active`.
    static let update = RedisScript(name: "peek_update", source: """
        local current = redis.call('HMGET', KEYS[1], 'version', 'phase')
        if not current[1] then return -1 end
        if current[1] ~= ARGV[1] then return 0 end
        local n = tonumber(ARGV[8])
        local phase = current[2]
        for i = 9, 8 + 2 * n, 2 do
          if ARGV[i + 1] == '' then redis.call('HDEL', KEYS[1], ARGV[i])
          else redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
          if ARGV[i] == 'phase' then phase = ARGV[i + 1] end
        end
        if current[2] ~= 'active' and phase == 'active' then
          redis.call('HINCRBY', KEYS[5], 'peeks', 1)
          redis.call('HINCRBY', KEYS[5], 'peeksActive', 1)
        elseif current[2] == 'active' and phase ~= 'active' then
          redis.call('HINCRBY', KEYS[5], 'peeksActive', -1)
        end
        if phase == 'refused' or phase == 'ended' or phase == 'cancelled' or phase == 'failed' then
          redis.call('SREM', KEYS[4], ARGV[2])
        end
        local kind = ARGV[4]
        if kind == 'capture' then
          redis.call('XADD', KEYS[2], '*', 'kind', 'capture', 'peek', ARGV[2], 'cents', ARGV[6], 'pi', ARGV[5], 'ts', ARGV[3])
          if tonumber(ARGV[7]) > 0 then
            redis.call('XADD', KEYS[2], '*', 'kind', 'release', 'peek', ARGV[2], 'cents', ARGV[7], 'pi', ARGV[5], 'ts', ARGV[3])
          end
          for i = 9 + 2 * n, #ARGV, 2 do
            redis.call('XADD', KEYS[2], '*', 'kind', 'share', 'peek', ARGV[2], 'cents', ARGV[i + 1], 'party', ARGV[i],
                       'pi', ARGV[5], 'ts', ARGV[3])
            redis.call('HINCRBY', KEYS[3], ARGV[i], tonumber(ARGV[i + 1]))
          end
        elseif kind == 'cancel' then
          redis.call('XADD', KEYS[2], '*', 'kind', 'cancel', 'peek', ARGV[2], 'cents', ARGV[7], 'pi', ARGV[5], 'ts', ARGV[3])
        end
        return 1
        """)

    /// KEYS: timers. ARGV: now, lease, limit. Due members, each pushed `lease` into the future.
    static let claim = RedisScript(name: "peek_claim", source: """
        local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
        for _, member in ipairs(due) do
          redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), member)
        end
        return due
        """)

    /// KEYS: peek. ARGV: grant. The first grant is kept.
    static let grant = RedisScript(name: "peek_grant", source: """
        if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
        return redis.call('HSETNX', KEYS[1], 'grant', ARGV[1])
        """)

    // MARK: Operations

    package func create(_ peek: StoredPeek, completion: @escaping StoreCompletion<Void>) {
        let key = PeekKey(channel: peek.record.channel, id: peek.record.id)
        var arguments: [RedisArgument] = [RedisArgument(peek.record.id)]
        for (field, value) in Self.fields(of: peek.record) where !value.isEmpty {
            arguments += [RedisArgument(field), RedisArgument(value)]
        }
        arguments += ["tokenHash", RedisArgument(peek.tokenHash)]
        redis.scripts.call(Self.create.name, keys: [Self.peek(key), Self.open(key.channel)], arguments: arguments) {
            result in
            completion(result.unavailableOnFailure.flatMap { $0.int == 1 ? .success(()) : .failure(.refused(.keysExist)) })
        }
    }

    package func load(_ key: PeekKey, completion: @escaping StoreCompletion<StoredPeek?>) {
        redis.send(["HGETALL", Self.peek(key)]) { result in
            completion(result.unavailableOnFailure.map { value in Self.storedPeek(value, channel: key.channel) })
        }
    }

    package func update(_ peek: PeekRecord, expectedVersion: Int64, settlement: PeekSettlement?, now: Int64,
                        completion: @escaping StoreCompletion<Bool>)
    {
        let key = PeekKey(channel: peek.channel, id: peek.id)
        var kind = "", paymentIntent = peek.paymentIntent, captured: Int64 = 0, released: Int64 = 0
        var shares: [(String, Int64)] = []
        switch settlement {
        case .capture(let split, let releasedCents, let intent)?:
            kind = "capture"
            paymentIntent = intent
            captured = split.amount
            released = releasedCents
            shares = [("platform", split.platform)] + split.shares.map { ($0.did.description, $0.cents) }
            // Indexes first (idempotent): a crash after them and before the script leaves an empty entry, never a
            // ledger entry that the export or an agent's earnings would miss.
            redis.send(["SADD", Self.ledgerChannels, RedisArgument(peek.channel.rawValue)]) { _ in }
            for share in split.shares {
                redis.send(["SADD", Self.earnedIn(share.did), RedisArgument(peek.channel.rawValue)]) { _ in }
            }
        case .cancellation(let releasedCents, let intent)?:
            kind = "cancel"
            paymentIntent = intent
            released = releasedCents
            redis.send(["SADD", Self.ledgerChannels, RedisArgument(peek.channel.rawValue)]) { _ in }
        case nil:
            break
        }
        let fields = Self.fields(of: peek)
        var arguments: [RedisArgument] = [RedisArgument(expectedVersion), RedisArgument(peek.id), RedisArgument(now),
                                          RedisArgument(kind), RedisArgument(paymentIntent), RedisArgument(captured),
                                          RedisArgument(released), RedisArgument(fields.count)]
        for (field, value) in fields { arguments += [RedisArgument(field), RedisArgument(value)] }
        for (party, cents) in shares { arguments += [RedisArgument(party), RedisArgument(cents)] }
        redis.scripts.call(Self.update.name,
                           keys: [Self.peek(key), Self.ledger(key.channel), Self.earnings(key.channel),
                                  Self.open(key.channel), RedisKeys.channel(key.channel)],
                           arguments: arguments) { result in
            completion(result.unavailableOnFailure.flatMap { value in
                switch value.int {
                case 1: .success(true)
                case 0: .success(false)
                default: .failure(.refused(.notFound))
                }
            })
        }
    }

    package func storeGrant(_ key: PeekKey, grant: [UInt8], completion: @escaping StoreCompletion<Bool>) {
        redis.scripts.call(Self.grant.name, keys: [Self.peek(key)], arguments: [RedisArgument(grant)]) { result in
            completion(result.unavailableOnFailure.flatMap { value in
                switch value.int {
                case 1: .success(true)
                case 0: .success(false)
                default: .failure(.refused(.notFound))
                }
            })
        }
    }

    package func schedule(_ key: PeekKey, at time: Int64) {
        redis.send(["ZADD", Self.timers, RedisArgument(time), RedisArgument(key.description)]) { _ in }
    }

    package func unschedule(_ key: PeekKey) {
        redis.send(["ZREM", Self.timers, RedisArgument(key.description)]) { _ in }
    }

    package func claimDue(now: Int64, leaseMilliseconds: Int64, limit: Int,
                          completion: @escaping StoreCompletion<[PeekKey]>)
    {
        redis.scripts.call(Self.claim.name, keys: [Self.timers],
                           arguments: [RedisArgument(now), RedisArgument(leaseMilliseconds), RedisArgument(limit)]) {
            result in
            completion(result.unavailableOnFailure.map { value in
                (value.array ?? []).compactMap { $0.bytes }.compactMap { PeekKey(String(decoding: $0, as: UTF8.self)) }
            })
        }
    }

    package func openPeeks(in channels: [ChannelID], completion: @escaping StoreCompletion<[PeekRecord]>) {
        guard !channels.isEmpty else { return completion(.success([])) }
        var found: [PeekRecord] = []
        var remaining = channels.count
        var failed = false
        let finish = {
            remaining -= 1
            guard remaining == 0 else { return }
            completion(failed ? .failure(.unavailable) : .success(found.sorted { $0.createdAt < $1.createdAt }))
        }
        for channel in channels {
            redis.send(["SMEMBERS", Self.open(channel)]) { [self] result in
                guard case .success(let value) = result else {
                    failed = true
                    return finish()
                }
                let ids = (value.array ?? []).compactMap { $0.bytes }.map { String(decoding: $0, as: UTF8.self) }
                    .filter(PeekKey.isValidID)
                guard !ids.isEmpty else { return finish() }
                var pending = ids.count
                for id in ids {
                    load(PeekKey(channel: channel, id: id)) { result in
                        switch result {
                        case .success(let peek?) where !peek.record.phase.isFinal: found.append(peek.record)
                        case .success: break
                        case .failure: failed = true
                        }
                        pending -= 1
                        if pending == 0 { finish() }
                    }
                }
            }
        }
    }

    package func firstDelivery(ofEvent id: String, ttlSeconds: Int64, completion: @escaping StoreCompletion<Bool>) {
        redis.send(["SET", Self.event(id), "1", "NX", "EX", RedisArgument(ttlSeconds)]) { result in
            completion(result.unavailableOnFailure.map { !$0.isNull })
        }
    }

    package func earnings(of did: DID, limit: Int,
                          completion: @escaping StoreCompletion<(balance: Int64, entries: [LedgerEntry])>)
    {
        redis.send(["SMEMBERS", Self.earnedIn(did)]) { [self] result in
            guard case .success(let value) = result else { return completion(.failure(.unavailable)) }
            let channels = (value.array ?? []).compactMap { $0.bytes }
                .compactMap { ChannelID(String(decoding: $0, as: UTF8.self)) }
            guard !channels.isEmpty else { return completion(.success((0, []))) }
            var balance: Int64 = 0
            var entries: [LedgerEntry] = []
            var remaining = channels.count * 2
            var failed = false
            let finish = {
                remaining -= 1
                guard remaining == 0 else { return }
                if failed { return completion(.failure(.unavailable)) }
                let newest = entries.sorted { ($0.time, $0.id) > ($1.time, $1.id) }
                completion(.success((balance, Array(newest.prefix(limit)))))
            }
            for channel in channels {
                redis.send(["HGET", Self.earnings(channel), RedisArgument(did.description)]) { result in
                    switch result {
                    case .success(let value): balance += Int64(value.int ?? 0)
                    case .failure: failed = true
                    }
                    finish()
                }
                // The latest entries of the channel; the agent's shares among them.
                redis.send(["XREVRANGE", Self.ledger(channel), "+", "-", "COUNT", RedisArgument(max(100, limit * 8))]) {
                    result in
                    switch result {
                    case .success(let value):
                        entries += Self.entries(value, channel: channel).filter { $0.party == did.description }
                    case .failure: failed = true
                    }
                    finish()
                }
            }
        }
    }

    package func ledger(completion: @escaping StoreCompletion<[LedgerEntry]>) {
        redis.send(["SMEMBERS", Self.ledgerChannels]) { [self] result in
            guard case .success(let value) = result else { return completion(.failure(.unavailable)) }
            let channels = (value.array ?? []).compactMap { $0.bytes }
                .compactMap { ChannelID(String(decoding: $0, as: UTF8.self)) }.sorted { $0.rawValue < $1.rawValue }
            var all: [ChannelID: [LedgerEntry]] = [:]
            var remaining = channels.count
            var failed = false
            guard remaining > 0 else { return completion(.success([])) }
            for channel in channels {
                redis.send(["XRANGE", Self.ledger(channel), "-", "+"]) { result in
                    switch result {
                    case .success(let value): all[channel] = Self.entries(value, channel: channel)
                    case .failure: failed = true
                    }
                    remaining -= 1
                    if remaining == 0 {
                        completion(failed ? .failure(.unavailable) : .success(channels.flatMap { all[$0] ?? [] }))
                    }
                }
            }
        }
    }

    // MARK: Encoding

    /// The record's hash fields; an empty value means absent.
    static func fields(of peek: PeekRecord) -> [(String, String)] {
        [("id", peek.id), ("channel", peek.channel.rawValue), ("viewerKey", peek.viewerKey),
         ("pi", peek.paymentIntent), ("phase", peek.phase.rawValue), ("version", String(peek.version)),
         ("createdAt", String(peek.createdAt)), ("deadline", peek.deadline.map(String.init) ?? ""),
         ("refusedBy", peek.refusedBy?.description ?? ""), ("grantedBy", peek.grantedBy?.description ?? ""),
         ("captureCents", String(peek.captureCents)), ("attempts", String(peek.attempts)),
         ("activeUntil", peek.activeUntil.map(String.init) ?? ""), ("reason", peek.reason ?? "")]
    }

    static func storedPeek(_ value: RedisValue, channel: ChannelID) -> StoredPeek? {
        let items = value.array ?? []
        guard !items.isEmpty else { return nil }
        var raw: [String: [UInt8]] = [:]
        var index = 0
        while index + 1 < items.count {
            if let key = items[index].bytes, let value = items[index + 1].bytes {
                raw[String(decoding: key, as: UTF8.self)] = value
            }
            index += 2
        }
        let text: (String) -> String? = { raw[$0].map { String(decoding: $0, as: UTF8.self) } }
        let int: (String) -> Int64? = { text($0).flatMap { Int64($0) } }
        guard let id = text("id"), let viewerKey = text("viewerKey"), let paymentIntent = text("pi"),
            let phase = text("phase").flatMap(PeekPhase.init(rawValue:)), let version = int("version"),
            let createdAt = int("createdAt")
        else { return nil }
        var record = PeekRecord(id: id, channel: channel, viewerKey: viewerKey, paymentIntent: paymentIntent,
                                createdAt: createdAt, terms: PeekTerms())
        record.phase = phase
        record.version = version
        record.deadline = int("deadline")
        record.refusedBy = text("refusedBy").flatMap(DID.init(parsing:))
        record.grantedBy = text("grantedBy").flatMap(DID.init(parsing:))
        record.captureCents = int("captureCents") ?? 0
        record.attempts = Int(int("attempts") ?? 0)
        record.activeUntil = int("activeUntil")
        record.reason = text("reason")
        return StoredPeek(record: record, tokenHash: raw["tokenHash"] ?? [], grant: raw["grant"])
    }

    static func entries(_ value: RedisValue, channel: ChannelID) -> [LedgerEntry] {
        (value.array ?? []).compactMap { entry in
            guard let parts = entry.array, parts.count == 2, let id = parts[0].string else { return nil }
            let fields = parts[1].stringPairs
            guard let kind = fields["kind"], let peek = fields["peek"], let cents = fields["cents"].flatMap({ Int64($0) })
            else { return nil }
            return LedgerEntry(id: id, channel: channel, peek: peek, kind: kind, cents: cents, party: fields["party"],
                               paymentIntent: fields["pi"] ?? "", time: fields["ts"].flatMap { Int64($0) } ?? 0)
        }
    }
}
