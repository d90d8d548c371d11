import AgentChatCore
import AgentChatProtocol

/// Listed channels, indicators and presence in memory, by the rules of `IndicatorStore`'s scripts. It reads and
/// writes the channel twin's records, as the scripts read the channel's hash; presence keys expire on the store's
/// clock (the `ManualClock`'s monotonic time).
package final class InMemoryIndicatorStore: InMemoryStore, IndicatorStoring {
    private let channels: InMemoryChannelStore
    /// The directory sorted set: channel → score (ms of last activity).
    package private(set) var directoryScores: [ChannelID: Int64] = [:]
    /// Presence keys: agent → expiry (store time).
    private var presence: [DID: Int64] = [:]

    package init(clock: ManualClock, channels: InMemoryChannelStore) {
        self.channels = channels
        super.init(clock: clock)
    }

    /// Whether the agent's presence key exists now.
    package func isPresent(_ did: DID) -> Bool { presence[did].map { $0 > storeMilliseconds } ?? false }

    package func setListing(_ id: ChannelID, owner: DID, listed: Bool, title: String, topic: String, now: Int64,
                            completion: @escaping StoreCompletion<Void>)
    {
        perform("setListing", completion) { [self] in
            guard let channel = channels.channels[id], channel.members.contains(owner) else {
                return .failure(.refused(.notFound))
            }
            guard channel.owner == owner else { return .failure(.refused(.forbidden)) }
            let storeTime = storeMilliseconds
            channels.update(id) {
                if listed, !$0.listed {
                    // Counted only while listed: the last two minutes of history, afresh.
                    $0.rate = [:]
                    for entry in $0.log where entry.time >= now - 120_000 { $0.rate[entry.time / 1000, default: 0] += 1 }
                    $0.rateExpiresAt = storeTime + 120_000
                }
                $0.listed = listed
                $0.title = title
                $0.topic = topic
            }
            if listed {
                directoryScores[id] = channel.lastActivity ?? channel.createdAt
            } else {
                directoryScores[id] = nil
            }
            return .success(())
        }
    }

    package func touch(_ id: ChannelID, at time: Int64) {
        performUnacknowledged("touch") { [self] in
            if directoryScores[id] != nil { directoryScores[id] = time }  // ZADD XX
        }
    }

    package func directory(cursor: Int, limit: Int, completion: @escaping StoreCompletion<[ChannelID]>) {
        perform("directory", completion) { [self] in
            // ZREVRANGE: highest score first, equal scores in reverse member order.
            let sorted = directoryScores.sorted { a, b in
                a.value != b.value ? a.value > b.value : a.key.rawValue > b.key.rawValue
            }.map(\.key)
            guard cursor >= 0, limit > 0, cursor < sorted.count else { return .success([]) }
            return .success(Array(sorted[cursor..<min(sorted.count, cursor + limit)]))
        }
    }

    package func indicators(_ id: ChannelID, now: Int64, completion: @escaping StoreCompletion<ChannelIndicators?>) {
        perform("indicators", completion) { [self] in
            guard let channel = channels.channels[id], channel.listed else { return .success(nil) }
            let second = now / 1000
            let rate = channel.rateExpiresAt > storeMilliseconds ? channel.rate : [:]
            let recent = rate.filter { $0.key > second - 60 }.values.reduce(0, +)
            let online = channel.members.filter(isPresent).count
            return .success(ChannelIndicators(
                id: id, listed: true, title: channel.title, topic: channel.topic, members: Int64(channel.members.count),
                online: Int64(online), messages: channel.seq, messagesLastMinute: recent,
                lastActivity: channel.lastActivity ?? 0))
        }
    }

    package func markPresent(_ dids: [DID], milliseconds: Int64) {
        performUnacknowledged("markPresent") { [self] in
            for did in dids { presence[did] = storeMilliseconds + milliseconds }
        }
    }

    package func expirePresence(_ did: DID, after milliseconds: Int64) {
        performUnacknowledged("expirePresence") { [self] in
            guard isPresent(did) else { return }  // PEXPIRE on a missing key does nothing
            presence[did] = storeMilliseconds + milliseconds
        }
    }
}

/// Registered agents in memory: a profile is created only if no agent has its DID.
package final class InMemoryAgentDirectory: InMemoryStore, AgentDirectory {
    package private(set) var profiles: [DID: AgentProfile] = [:]

    package override init(clock: ManualClock) { super.init(clock: clock) }

    /// Stores a profile at once (test set-up).
    package func insert(_ profile: AgentProfile) { profiles[profile.did] = profiles[profile.did] ?? profile }

    package func register(_ profile: AgentProfile, completion: @escaping StoreCompletion<RegisterOutcome>) {
        perform("register", completion) { [self] in
            guard profiles[profile.did] == nil else { return .success(.exists) }
            profiles[profile.did] = profile
            return .success(.created)
        }
    }

    package func profile(_ did: DID, completion: @escaping StoreCompletion<AgentProfile?>) {
        perform("profile", completion) { [self] in .success(profiles[did]) }
    }
}

/// Token buckets in memory, by the rules of `RateLimiter`'s script, on the store's clock.
package final class InMemoryRateLimiter: InMemoryStore, RateLimiting {
    private var buckets: [String: (tokens: Double, time: Int64, expiresAt: Int64)] = [:]

    package override init(clock: ManualClock) { super.init(clock: clock) }

    package func take(_ name: String, client: String, perMinute: Int, burst: Int,
                      completion: @escaping StoreCompletion<RateDecision>)
    {
        perform("take", completion) { [self] in
            let key = "\(name)\n\(client)"
            let now = storeMilliseconds
            let rate = Double(perMinute)
            let state = buckets[key].flatMap { $0.expiresAt > now ? $0 : nil }
            var tokens = min(Double(burst), (state?.tokens ?? Double(burst))
                             + Double(max(0, now - (state?.time ?? now))) * rate / 60_000)
            var decision = RateDecision.allowed
            if tokens >= 1 {
                tokens -= 1
            } else {
                decision = .limited(retryAfterMilliseconds: Int64(((1 - tokens) * 60_000 / rate).rounded(.up)))
            }
            let ttl = Int64((Double(burst) * 60_000 / rate).rounded(.up)) + 1000
            buckets[key] = (tokens, now, now + ttl)
            return .success(decision)
        }
    }
}

/// Session-token verification keys in memory. Connect hooks run when the twin first "connects" (the turn after
/// the hook is added) and every time it becomes available again; `forgetAll()` loses what was published, like a
/// Redis restart without persistence.
package final class InMemorySigningKeyDirectory: InMemoryStore, SigningKeyDirectoring {
    package private(set) var keys: [String: [UInt8]] = [:]
    private var hooks: [() -> Void] = []

    package override init(clock: ManualClock) { super.init(clock: clock) }

    package func publish(_ keys: [String: [UInt8]], completion: @escaping StoreCompletion<Void>) {
        perform("publish", completion) { [self] in
            self.keys.merge(keys) { _, new in new }
            return .success(())
        }
    }

    package func publicKey(kid: String, completion: @escaping StoreCompletion<[UInt8]?>) {
        perform("publicKey", completion) { [self] in .success(keys[kid]) }
    }

    package func whenConnected(_ hook: @escaping () -> Void) {
        hooks.append(hook)
        clock.enqueue { [self] in if isAvailable { hook() } }
    }

    /// Loses every published key.
    package func forgetAll() { keys = [:] }

    override func reconnected() {
        for hook in hooks { clock.enqueue(hook) }
    }
}
