import AgentChatCore
import AgentChatProtocol

/// The twin of `PeekStore` (Persistence): versioned peeks, timers with leases, the ledger per channel, event ids.
/// The indicator counters (`peeks`, `peeksActive`) are counted here too.
package final class InMemoryPeekStore: InMemoryStore, PeekStoring {
    package private(set) var peeks: [PeekKey: StoredPeek] = [:]
    /// Due time by peek.
    package private(set) var timers: [PeekKey: Int64] = [:]
    package private(set) var ledgerEntries: [ChannelID: [LedgerEntry]] = [:]
    package private(set) var earnedIn: [String: Set<ChannelID>] = [:]
    package private(set) var granted: [ChannelID: Int64] = [:]
    package private(set) var active: [ChannelID: Int64] = [:]
    private var events: Set<String> = []
    private var nextEntry = 1

    package override init(clock: ManualClock) { super.init(clock: clock) }

    package func create(_ peek: StoredPeek, completion: @escaping StoreCompletion<Void>) {
        perform("peek.create", completion) { [self] in
            let key = PeekKey(channel: peek.record.channel, id: peek.record.id)
            guard peeks[key] == nil else { return .failure(.refused(.keysExist)) }
            peeks[key] = peek
            return .success(())
        }
    }

    package func load(_ key: PeekKey, completion: @escaping StoreCompletion<StoredPeek?>) {
        perform("peek.load", completion) { [self] in .success(peeks[key]) }
    }

    package func update(_ peek: PeekRecord, expectedVersion: Int64, settlement: PeekSettlement?, now: Int64,
                        completion: @escaping StoreCompletion<Bool>)
    {
        perform("peek.update", completion) { [self] in
            let key = PeekKey(channel: peek.channel, id: peek.id)
            guard var stored = peeks[key] else { return .failure(.refused(.notFound)) }
            guard stored.record.version == expectedVersion else { return .success(false) }
            let before = stored.record.phase
            stored.record = peek
            peeks[key] = stored
            if before != .active && peek.phase == .active {
                granted[peek.channel, default: 0] += 1
                active[peek.channel, default: 0] += 1
            } else if before == .active && peek.phase != .active {
                active[peek.channel, default: 0] -= 1
            }
            func entry(_ kind: String, _ cents: Int64, _ party: String? = nil, _ intent: String) {
                ledgerEntries[peek.channel, default: []].append(
                    LedgerEntry(id: "0-\(nextEntry)", channel: peek.channel, peek: peek.id, kind: kind, cents: cents,
                                party: party, paymentIntent: intent, time: now))
                nextEntry += 1
            }
            switch settlement {
            case .capture(let split, let released, let intent)?:
                entry("capture", split.amount, nil, intent)
                if released > 0 { entry("release", released, nil, intent) }
                entry("share", split.platform, "platform", intent)
                for share in split.shares {
                    entry("share", share.cents, share.did.description, intent)
                    earnedIn[share.did.description, default: []].insert(peek.channel)
                }
            case .cancellation(let released, let intent)?:
                entry("cancel", released, nil, intent)
            case nil:
                break
            }
            return .success(true)
        }
    }

    package func storeGrant(_ key: PeekKey, grant: [UInt8], completion: @escaping StoreCompletion<Bool>) {
        perform("peek.grant", completion) { [self] in
            guard var stored = peeks[key] else { return .failure(.refused(.notFound)) }
            guard stored.grant == nil else { return .success(false) }
            stored.grant = grant
            peeks[key] = stored
            return .success(true)
        }
    }

    package func schedule(_ key: PeekKey, at time: Int64) {
        performUnacknowledged("peek.schedule") { [self] in timers[key] = time }
    }

    package func unschedule(_ key: PeekKey) {
        performUnacknowledged("peek.unschedule") { [self] in timers[key] = nil }
    }

    package func claimDue(now: Int64, leaseMilliseconds: Int64, limit: Int,
                          completion: @escaping StoreCompletion<[PeekKey]>)
    {
        perform("peek.claim", completion) { [self] in
            let due = timers.filter { $0.value <= now }.sorted { ($0.value, $0.key.description) < ($1.value, $1.key.description) }
                .prefix(limit).map(\.key)
            for key in due { timers[key] = now + leaseMilliseconds }
            return .success(Array(due))
        }
    }

    package func openPeeks(in channels: [ChannelID], completion: @escaping StoreCompletion<[PeekRecord]>) {
        perform("peek.open", completion) { [self] in
            let wanted = Set(channels)
            return .success(peeks.values.map(\.record).filter { wanted.contains($0.channel) && !$0.phase.isFinal }
                .sorted { $0.createdAt < $1.createdAt })
        }
    }

    package func firstDelivery(ofEvent id: String, ttlSeconds: Int64, completion: @escaping StoreCompletion<Bool>) {
        perform("peek.event", completion) { [self] in .success(events.insert(id).inserted) }
    }

    package func earnings(of did: DID, limit: Int,
                          completion: @escaping StoreCompletion<(balance: Int64, entries: [LedgerEntry])>)
    {
        perform("peek.earnings", completion) { [self] in
            let mine = (earnedIn[did.description] ?? []).flatMap { ledgerEntries[$0] ?? [] }
                .filter { $0.party == did.description }
            let balance = mine.reduce(0) { $0 + $1.cents }
            return .success((balance, Array(mine.sorted { ($0.time, $0.id) > ($1.time, $1.id) }.prefix(limit))))
        }
    }

    package func ledger(completion: @escaping StoreCompletion<[LedgerEntry]>) {
        perform("peek.ledger", completion) { [self] in
            .success(ledgerEntries.keys.sorted { $0.rawValue < $1.rawValue }.flatMap { ledgerEntries[$0] ?? [] })
        }
    }

    /// Every ledger entry, for assertions.
    package var allEntries: [LedgerEntry] { ledgerEntries.values.flatMap { $0 } }
}

/// The twin of `PeekNotices`: every listener (one per broker) hears every publish, a turn later.
package final class InMemoryPeekNotifier: InMemoryStore, PeekNotifier {
    private var handlers: [(PeekKey) -> Void] = []

    package override init(clock: ManualClock) { super.init(clock: clock) }

    package func listen(_ handler: @escaping (PeekKey) -> Void) { handlers.append(handler) }

    package func publish(_ key: PeekKey) {
        performUnacknowledged("peek.publish") { [self] in
            for handler in handlers { clock.enqueue { handler(key) } }
        }
    }
}

/// The twin of `SandboxPayments`.
package final class InMemorySandboxPayments: InMemoryStore, SandboxPaymentStoring {
    package private(set) var intents: [String: PaymentIntent] = [:]

    package override init(clock: ManualClock) { super.init(clock: clock) }

    package func save(_ intent: PaymentIntent, completion: @escaping StoreCompletion<Void>) {
        perform("sandbox.save", completion) { [self] in
            intents[intent.id] = intent
            return .success(())
        }
    }

    package func load(_ id: String, completion: @escaping StoreCompletion<PaymentIntent?>) {
        perform("sandbox.load", completion) { [self] in .success(intents[id]) }
    }
}
