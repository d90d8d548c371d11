import AgentChatProtocol

// What the core needs from the store, as protocols. `AgentChatPersistence` implements them over Redis; the unit
// tests' in-memory twins (`CoreTestSupport`) implement them in memory. Every implementation is loop-bound: it is
// called on the broker's loop thread and calls its completions there, later (never from inside the call).

/// Why a store operation did not happen. The one mapping to protocol errors is `ProtocolError.init(_:)` below.
package enum StoreFailure: Error, Equatable, Sendable {
    /// The store did not answer (down, restarting, reconnecting); nothing changed and the request may be retried.
    case unavailable
    /// The store refused: the rules of the channel forbid it. `epoch` is the channel's epoch where it matters.
    case refused(ChannelRefusal, epoch: Int64? = nil)
    /// The message is stored on the master but did not reach `replicas` replicas in time; a retry with the same
    /// client message id is answered with its offset once they have it.
    case notReplicated(replicas: Int)
}

/// Why a channel operation was refused. The raw values are the statuses the Redis scripts answer.
package enum ChannelRefusal: String, Error, Sendable {
    case notFound = "not_found"
    case forbidden
    case hidden
    case notMember = "not_member"
    case staleEpoch = "stale_epoch"
    case keysExist = "keys_exist"
    /// The channel has `ChannelKeys.maxMembers` members.
    case full
    /// A read cursor past the channel's latest offset (carried in the failure's `epoch` slot).
    case beyondLatest = "beyond_latest"
    /// The owner asked to remove itself (it leaves with `channel.leave`, which passes the ownership on).
    case ownerSelf = "owner_self"
}

extension ProtocolError {
    /// The error a client is sent when the store refused or failed.
    package init(_ failure: StoreFailure) {
        switch failure {
        case .unavailable:
            self.init(.unavailable, "the store is unreachable; retry")
        case .notReplicated(let replicas):
            self.init(.unavailable, "not yet on \(replicas) Redis replica\(replicas == 1 ? "" : "s"); retry with the same clientMessageId")
        case .refused(let refusal, let epoch):
            switch refusal {
            case .notFound, .hidden: self.init(.notFound, "no such channel")
            case .forbidden: self.init(.forbidden, "only the owner may do this")
            case .notMember: self.init(.notMember, "not a member of this channel")
            case .staleEpoch: self.init(.staleEpoch, "the current epoch is \(epoch ?? 0) and needs published keys")
            case .keysExist: self.init(.keysExist, "keys for epoch \(epoch ?? 0) exist; fetch them")
            case .full: self.init(.channelFull, "the channel has \(ChannelKeys.maxMembers) members")
            case .beyondLatest: self.init(.invalidField, "\"offset\" is past the channel's latest offset \(epoch ?? 0)")
            case .ownerSelf: self.init(.invalidField, "\"did\" is the owner: the owner leaves with channel.leave")
            }
        }
    }
}

package typealias StoreResult<Value> = Result<Value, StoreFailure>
package typealias StoreCompletion<Value> = (StoreResult<Value>) -> Void

/// One stored message: its offset and the exact bytes delivered to clients (`MessageItem`).
package struct ChannelItem: Equatable, Sendable {
    package let offset: Int64
    package let bytes: [UInt8]

    package init(offset: Int64, bytes: [UInt8]) {
        self.offset = offset
        self.bytes = bytes
    }

    /// The item held in stored bytes, if they are one (they start with `{"offset":`).
    package init?(bytes: [UInt8]) {
        guard let offset = MessageItem.offset(of: bytes) else { return nil }
        self.init(offset: offset, bytes: bytes)
    }
}

/// A channel's offsets and epochs, as a member sees them.
package struct ChannelState: Equatable, Sendable {
    package var historyEpoch: String
    /// Latest offset.
    package var offset: Int64
    /// First offset still in history (0 when history is empty).
    package var firstOffset: Int64
    package var epoch: Int64
    package var keyedEpoch: Int64

    package init(historyEpoch: String, offset: Int64, firstOffset: Int64, epoch: Int64, keyedEpoch: Int64) {
        self.historyEpoch = historyEpoch
        self.offset = offset
        self.firstOffset = firstOffset
        self.epoch = epoch
        self.keyedEpoch = keyedEpoch
    }
}

/// A channel's stored description, before member profiles are joined in.
package struct ChannelRecord: Equatable, Sendable {
    package var name: String
    package var owner: DID
    package var open: Bool
    package var epoch: Int64
    package var keyedEpoch: Int64
    /// Latest offset.
    package var offset: Int64
    package var historyEpoch: String
    package var members: [DID]

    package init(name: String, owner: DID, open: Bool, epoch: Int64, keyedEpoch: Int64, offset: Int64,
                 historyEpoch: String, members: [DID])
    {
        self.name = name
        self.owner = owner
        self.open = open
        self.epoch = epoch
        self.keyedEpoch = keyedEpoch
        self.offset = offset
        self.historyEpoch = historyEpoch
        self.members = members
    }
}

/// The envelopes of one epoch as stored: who published them, their signature, recipient DID → envelope.
package struct StoredKeys: Equatable, Sendable {
    package var sender: String
    package var signature: String
    package var envelopes: [String: String]

    package init(sender: String, signature: String, envelopes: [String: String]) {
        self.sender = sender
        self.signature = signature
        self.envelopes = envelopes
    }
}

package enum AppendOutcome: Equatable, Sendable {
    case stored(offset: Int64, listed: Bool)
    case duplicate(offset: Int64)
}

/// Channel retention and dedup settings.
package struct ChannelLimits: Equatable, Sendable {
    package var historyMaxCount = 10_000
    package var historyMaxAgeMilliseconds: Int64 = 30 * 24 * 3600 * 1000
    package var dedupWindowMilliseconds: Int64 = 5 * 60 * 1000
    package init() {}
}

/// Channels, membership, key envelopes and message history. Each operation is atomic.
package protocol ChannelStoring: AnyObject {
    func create(_ id: ChannelID, name: String, owner: DID, open: Bool, members: [DID], historyEpoch: String,
                now: Int64, completion: @escaping StoreCompletion<Void>)
    /// The epoch.
    func invite(_ id: ChannelID, by inviter: DID, _ did: DID, completion: @escaping StoreCompletion<Int64>)
    /// The epoch, and whether membership changed (false when already a member).
    func join(_ id: ChannelID, _ did: DID, completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    /// The epoch. The owner leaving hands the channel to the bytewise-smallest remaining member.
    func leave(_ id: ChannelID, _ did: DID, completion: @escaping StoreCompletion<Int64>)
    /// Starts a new epoch (members only); the new epoch.
    func rotate(_ id: ChannelID, by did: DID, completion: @escaping StoreCompletion<Int64>)
    /// Removes `did` (owner only); the epoch, and whether a member was removed (false for a mere invitation).
    func remove(_ id: ChannelID, by owner: DID, _ did: DID,
                completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    /// The epoch the keys were published for.
    func publishKeys(_ keys: ChannelKeys, sender: DID, completion: @escaping StoreCompletion<Int64>)
    /// The envelopes of one epoch; nil when none were published.
    func keys(_ id: ChannelID, epoch: Int64, completion: @escaping StoreCompletion<StoredKeys?>)
    /// Stores a message (membership, epoch, dedup, offset, trim) and publishes it on the channel's feed, in one step.
    /// `suffix` is `MessageItem.suffix(...)`.
    func append(_ message: MessageSend, sender: DID, suffix: [UInt8], now: Int64,
                completion: @escaping StoreCompletion<AppendOutcome>)
    /// The channel's offsets and epochs, if `did` is a member.
    func state(_ id: ChannelID, for did: DID, completion: @escaping StoreCompletion<ChannelState>)
    /// Stored items with offsets after `after` (oldest first), at most `count`.
    func range(_ id: ChannelID, after: Int64, count: Int, completion: @escaping StoreCompletion<[ChannelItem]>)
    /// Stored items before `before` (or the newest), newest first, at most `count`.
    func reverseRange(_ id: ChannelID, before: Int64?, count: Int,
                      completion: @escaping StoreCompletion<[ChannelItem]>)
    /// The channel's description and members; nil when it does not exist.
    func record(_ id: ChannelID, completion: @escaping StoreCompletion<ChannelRecord?>)
    /// The channels `did` belongs to, sorted by id.
    func channels(of did: DID, completion: @escaping StoreCompletion<[ChannelID]>)
    /// Moves `did`'s read cursor in a channel forward to `offset` (never back; past the latest offset is refused
    /// with `beyondLatest`), and answers the cursor as it now stands. Joining starts the cursor at the latest
    /// offset; leaving or being removed deletes it.
    func setCursor(_ id: ChannelID, for did: DID, to offset: Int64, completion: @escaping StoreCompletion<ReadCursor>)
    /// `did`'s read cursors (with channel names) in the channels of `ids` it is a member of, in the order given;
    /// the others are left out.
    func cursors(_ ids: [ChannelID], for did: DID, completion: @escaping StoreCompletion<[ReadCursor]>)
}

/// What arrives on a channel's feed: stored messages (in offset order) and membership/key events.
package enum FeedMessage: Equatable, Sendable {
    case item(ChannelItem)
    case event(ChannelEvent)
}

/// A `channel.event`: something happened to a channel's membership or keys.
package struct ChannelEvent: Equatable, Sendable {
    package enum Kind: String, Sendable {
        case memberInvited = "member_invited"
        case memberJoined = "member_joined"
        case memberLeft = "member_left"
        case memberRemoved = "member_removed"
        case keysPublished = "keys_published"
        case epochRotated = "epoch_rotated"
    }

    package var channel: ChannelID
    package var kind: Kind
    package var did: DID
    package var epoch: Int64

    package init(channel: ChannelID, kind: Kind, did: DID, epoch: Int64) {
        self.channel = channel
        self.kind = kind
        self.did = did
        self.epoch = epoch
    }

    /// The frame subscribers are sent.
    package var frame: ServerFrame { .channelEvent(channel: channel, event: kind.rawValue, did: did, epoch: epoch) }
}

/// A subscription to one channel's feed.
package struct FeedSubscription: Hashable, Sendable {
    package let channel: ChannelID
    package let id: UInt64

    package init(channel: ChannelID, id: UInt64) {
        self.channel = channel
        self.id = id
    }
}

/// Every broker's live stream of a channel: the messages `ChannelStoring.append` publishes and the events below.
/// Delivery is at most once and in order while subscribed; `onActive` runs each time the subscription is confirmed
/// (again after a reconnect, when whatever was published in between is lost and must be read from history).
package protocol ChannelFeedBus: AnyObject {
    func subscribe(_ channel: ChannelID, onActive: @escaping () -> Void,
                   handler: @escaping (FeedMessage) -> Void) -> FeedSubscription
    func unsubscribe(_ subscription: FeedSubscription)
    func publish(_ event: ChannelEvent)
}

package enum RegisterOutcome: Equatable, Sendable {
    case created
    /// The key was registered before; nothing changed.
    case exists
}

/// Registered agents.
package protocol AgentDirectory: AnyObject {
    /// Creates the profile only if no agent has this DID.
    func register(_ profile: AgentProfile, completion: @escaping StoreCompletion<RegisterOutcome>)
    func profile(_ did: DID, completion: @escaping StoreCompletion<AgentProfile?>)
}

/// Listed channels, their public indicators, and agent presence.
package protocol IndicatorStoring: AnyObject {
    /// Lists or unlists a channel (owner only) and updates the directory. Messages are counted for the indicators
    /// only while a channel is listed, so listing it counts the messages of the two minutes before `now` afresh.
    func setListing(_ id: ChannelID, owner: DID, listed: Bool, title: String, topic: String, now: Int64,
                    completion: @escaping StoreCompletion<Void>)
    /// Moves a listed channel up the directory after activity.
    func touch(_ id: ChannelID, at time: Int64)
    /// Listed channels, most recently active first.
    func directory(cursor: Int, limit: Int, completion: @escaping StoreCompletion<[ChannelID]>)
    /// The indicators of a channel; nil when it is not listed (or does not exist).
    func indicators(_ id: ChannelID, now: Int64, completion: @escaping StoreCompletion<ChannelIndicators?>)
    /// Marks agents present for `milliseconds` (refreshed while they stay connected).
    func markPresent(_ dids: [DID], milliseconds: Int64)
    /// Lets an agent's presence run out after `milliseconds` (its last connection here closed).
    func expirePresence(_ did: DID, after milliseconds: Int64)
}

package enum RateDecision: Equatable, Sendable {
    case allowed
    /// Over the limit; a token is back after this many milliseconds.
    case limited(retryAfterMilliseconds: Int64)
}

/// Token buckets shared by every broker.
package protocol RateLimiting: AnyObject {
    /// Takes one token from bucket `name` of `client`, refilled at `perMinute` up to `burst`.
    func take(_ name: String, client: String, perMinute: Int, burst: Int,
              completion: @escaping StoreCompletion<RateDecision>)
}

/// Session-token verification keys shared by every broker (public keys only).
package protocol SigningKeyDirectoring: AnyObject {
    /// Publishes `keys` (kid → Ed25519 public key).
    func publish(_ keys: [String: [UInt8]], completion: @escaping StoreCompletion<Void>)
    /// The public key published under `kid`, or nil.
    func publicKey(kid: String, completion: @escaping StoreCompletion<[UInt8]?>)
    /// Runs `hook` after every (re)connection to the store, which may have lost what was published.
    func whenConnected(_ hook: @escaping () -> Void)
}

/// The stores the core runs on, in one place for the composition root and the tests.
package struct Stores {
    package var channels: any ChannelStoring
    package var feeds: any ChannelFeedBus
    package var agents: any AgentDirectory
    package var indicators: any IndicatorStoring
    package var rateLimits: any RateLimiting
    package var signingKeys: any SigningKeyDirectoring
    /// Whether the store answers (for `/health` and the `agentchat_redis_up` gauge).
    package var isHealthy: () -> Bool
    /// Peeks and their ledger, and the notices of their changes between brokers; without them peeks are off.
    package var peeks: (any PeekStoring)?
    package var peekNotifier: (any PeekNotifier)?
    /// Heartbeats of every broker and the store's own figures, for the admin page; nil: no heartbeat.
    package var operations: (any OperationsStoring)?

    package init(channels: any ChannelStoring, feeds: any ChannelFeedBus, agents: any AgentDirectory,
                 indicators: any IndicatorStoring, rateLimits: any RateLimiting,
                 signingKeys: any SigningKeyDirectoring, peeks: (any PeekStoring)? = nil,
                 peekNotifier: (any PeekNotifier)? = nil, operations: (any OperationsStoring)? = nil,
                 isHealthy: @escaping () -> Bool)
    {
        self.operations = operations
        self.peeks = peeks
        self.peekNotifier = peekNotifier
        self.channels = channels
        self.feeds = feeds
        self.agents = agents
        self.indicators = indicators
        self.rateLimits = rateLimits
        self.signingKeys = signingKeys
        self.isHealthy = isHealthy
    }
}
