import AgentChatLoop
import AgentChatPersistence
import AgentChatProtocol

/// One channel's live messages on this broker: a Redis pub/sub subscription shared by every local connection
/// subscribed to the channel. Loop-bound, owned by `ChannelService`.
///
/// Ordering and completeness: items arrive from pub/sub in offset order (the append script publishes inside the
/// same atomic step that assigns the offset), and offsets are consecutive. Each subscriber tracks the last offset
/// it was sent and only ever receives the next one, so replay from history, live delivery and the catch-up after
/// a pub/sub reconnect (pub/sub drops what is published while disconnected) can overlap without duplicates or
/// gaps. Whenever live items cannot be handed on without a gap — the subscription was (re)confirmed, a live item
/// skips offsets, or the items held during a replay overflowed — the subscriber goes back to reading history.
final class ChannelFeed {
    /// A connection subscribed to the channel.
    final class Subscriber {
        enum Phase {
            /// Waiting for the feed's pub/sub subscription to be confirmed before reading history.
            case waiting
            /// Reading history (a replay or a catch-up); live items are held until the reads reach them.
            case reading
            case live
        }

        let session: WebSocketSession
        let did: DID
        var phase: Phase = .waiting
        /// The highest offset this connection was sent (or asked to start after).
        var lastOffset: Int64

        // While `.reading`:
        /// Live items received since `holdGeneration` began, in offset order.
        var held: [Item] = []
        var heldBytes = 0
        /// Bumped whenever `held` may miss a live item (overflow, pub/sub re-confirmation): a history read counts
        /// as reaching the live stream only if no bump happened between its start and its answer.
        var holdGeneration = 0
        /// Items read from history and not yet queued, for lack of queue space.
        var backlog: [Item] = []
        /// Whether a history read is in flight (or waiting to be retried).
        var reading = false
        /// Whether the last history read answered fewer items than asked, in the current hold generation: the
        /// history is read to its end and `held` covers everything after it.
        var reachedEnd = false
        /// Consecutive failed history reads.
        var failedReads = 0
        /// Bytes per stored item, as last seen (sizes the next read).
        var itemBytesEstimate = 4 * 1024
        /// Whether this subscriber waits for its connection's queue to drain.
        var awaitingDrain = false
        var retryTimer: LoopTimer?

        init(session: WebSocketSession, did: DID, lastOffset: Int64) {
            self.session = session
            self.did = did
            self.lastOffset = lastOffset
        }

        /// Starts (or restarts) reading history from `lastOffset`, holding live items from now on.
        func startReading() {
            phase = .reading
            held = []
            heldBytes = 0
            holdGeneration += 1
            reachedEnd = false
        }

        /// Holds a live item while reading; on overflow the held items are dropped (history has them) and the
        /// reads go on until they reach the live stream again.
        func hold(_ items: some Collection<Item>, limit: Int) {
            for item in items where item.offset > (held.last?.offset ?? lastOffset) {
                held.append(item)
                heldBytes += item.bytes.count
            }
            if heldBytes > limit {
                held = []
                heldBytes = 0
                holdGeneration += 1
                reachedEnd = false
            }
        }
    }

    struct Item {
        let offset: Int64
        let bytes: [UInt8]
    }

    let id: ChannelID
    var subscription: RedisPubSub.Subscription?
    /// Whether the pub/sub subscription is confirmed on the current Redis connection.
    var isActive = false
    var subscribers: [UInt64: Subscriber] = [:]
    /// Live items received in this loop turn, sent in one batch by `ChannelService.flush()`.
    var pending: [Item] = []

    init(id: ChannelID) { self.id = id }

    /// Largest frame a batch grows to before a new one starts.
    static let maxBatchBytes = 60 * 1024

    /// Splits items into batches whose frames stay under `maxBatchBytes`.
    static func chunks(_ items: some RandomAccessCollection<Item>) -> [ArraySlice<Item>] {
        let items = Array(items)
        var result: [ArraySlice<Item>] = []
        var start = 0
        var size = 0
        for (index, item) in items.enumerated() {
            if index > start, size + item.bytes.count > maxBatchBytes {
                result.append(items[start..<index])
                start = index
                size = 0
            }
            size += item.bytes.count + 1
        }
        if start < items.count { result.append(items[start...]) }
        return result
    }
}
