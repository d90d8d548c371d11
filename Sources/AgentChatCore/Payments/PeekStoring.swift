import AgentChatProtocol

/// Names one peek: its channel (the hash tag of everything about it) and its id.
package struct PeekKey: Hashable, Sendable, CustomStringConvertible {
    package let channel: ChannelID
    package let id: String

    package init(channel: ChannelID, id: String) {
        self.channel = channel
        self.id = id
    }

    /// `<channel>/<id>`: how the timer set names it.
    package var description: String { "\(channel.rawValue)/\(id)" }

    package init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1)
        guard parts.count == 2, let channel = ChannelID(String(parts[0])), Self.isValidID(parts[1]) else { return nil }
        self.init(channel: channel, id: String(parts[1]))
    }

    /// Peek ids are `pk_` and 22 base64url characters.
    package static func isValidID(_ id: some StringProtocol) -> Bool {
        guard id.hasPrefix("pk_"), id.utf8.count == 25, let bytes = Base64URL.decode(String(id.dropFirst(3))) else {
            return false
        }
        return bytes.count == 16
    }
}

/// A peek as stored, with what only the broker sees: the hash of the viewer's token and the grant.
package struct StoredPeek: Equatable, Sendable {
    package var record: PeekRecord
    /// SHA-256 of the token the viewer was given, to re-attach after a reconnect.
    package var tokenHash: [UInt8]
    /// The member's grant (JSON, as sent), once there is one.
    package var grant: [UInt8]?

    package init(record: PeekRecord, tokenHash: [UInt8], grant: [UInt8]? = nil) {
        self.record = record
        self.tokenHash = tokenHash
        self.grant = grant
    }
}

/// Money moved by a transition, written to the ledger in the same atomic step as the transition.
package enum PeekSettlement: Equatable, Sendable {
    /// A capture: `split.amount` captured and shared, `releasedCents` of the authorisation released.
    case capture(split: RevenueSplit, releasedCents: Int64, paymentIntent: String)
    /// The authorisation (if any) released without a capture.
    case cancellation(releasedCents: Int64, paymentIntent: String)
}

/// One ledger entry. `kind`: `capture`, `release`, `cancel`, `share`. Shares name the member, or `platform`.
package struct LedgerEntry: Equatable, Sendable {
    package var id: String
    package var channel: ChannelID
    package var peek: String
    package var kind: String
    package var cents: Int64
    package var party: String?
    package var paymentIntent: String
    package var time: Int64

    package init(id: String, channel: ChannelID, peek: String, kind: String, cents: Int64, party: String?,
                 paymentIntent: String, time: Int64)
    {
        self.id = id
        self.channel = channel
        self.peek = peek
        self.kind = kind
        self.cents = cents
        self.party = party
        self.paymentIntent = paymentIntent
        self.time = time
    }
}

/// Peeks, their timers and the ledger.
package protocol PeekStoring: AnyObject {
    /// Stores a new peek (fails with `.refused(.keysExist)` if the id exists).
    func create(_ peek: StoredPeek, completion: @escaping StoreCompletion<Void>)
    func load(_ key: PeekKey, completion: @escaping StoreCompletion<StoredPeek?>)
    /// Writes `peek` only if the stored version is `expectedVersion`, with `settlement`'s ledger entries, the
    /// channel's peek counters and the set of open peeks, in one atomic step. False when the version had moved.
    func update(_ peek: PeekRecord, expectedVersion: Int64, settlement: PeekSettlement?, now: Int64,
                completion: @escaping StoreCompletion<Bool>)
    /// Keeps the first grant; false if there was one already.
    func storeGrant(_ key: PeekKey, grant: [UInt8], completion: @escaping StoreCompletion<Bool>)
    /// Sets the peek's timer (replacing an earlier one).
    func schedule(_ key: PeekKey, at time: Int64)
    func unschedule(_ key: PeekKey)
    /// Takes up to `limit` timers due at `now`, each for `leaseMilliseconds`: a broker that dies holding one leaves
    /// it due again when the lease runs out. Exactly one caller gets each.
    func claimDue(now: Int64, leaseMilliseconds: Int64, limit: Int, completion: @escaping StoreCompletion<[PeekKey]>)
    /// Peeks of these channels that are not final.
    func openPeeks(in channels: [ChannelID], completion: @escaping StoreCompletion<[PeekRecord]>)
    /// True the first time an event id is seen (remembered `ttlSeconds`), false after.
    func firstDelivery(ofEvent id: String, ttlSeconds: Int64, completion: @escaping StoreCompletion<Bool>)
    /// An agent's balance (the sum of its shares) and its latest ledger entries, newest first.
    func earnings(of did: DID, limit: Int, completion: @escaping StoreCompletion<(balance: Int64, entries: [LedgerEntry])>)
    /// Every ledger entry, channel by channel, oldest first within a channel.
    func ledger(completion: @escaping StoreCompletion<[LedgerEntry]>)
}
