import AgentChatProtocol
import AgentChatPersistence

/// One channel's live messages on this broker: a Redis pub/sub subscription shared by every local connection
/// subscribed to the channel. Loop-bound, owned by `ChannelService`.
///
/// Ordering and completeness: items arrive from pub/sub in offset order (the append script publishes inside the
/// same atomic step that assigns the offset). Each subscriber tracks the last offset it was sent and only ever
/// receives higher ones, so replay from history, live delivery and the catch-up after a pub/sub reconnect (pub/sub
/// drops what is published while disconnected) can overlap without duplicates or gaps.
final class ChannelFeed {
    /// A connection subscribed to the channel.
    final class Subscriber {
        enum Phase {
            /// Waiting for the feed's pub/sub subscription to be confirmed before reading history.
            case waiting
            /// Reading history; live items are held here until the replay reaches them.
            case replaying(held: [Item])
            case live
        }

        let session: WebSocketSession
        let did: DID
        var phase: Phase = .waiting
        /// The highest offset this connection was sent (or asked to start after).
        var lastOffset: Int64

        init(session: WebSocketSession, did: DID, lastOffset: Int64) {
            self.session = session
            self.did = did
            self.lastOffset = lastOffset
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
    /// While catching up from history after a (re)subscription, live items wait here.
    var catchUpHeld: [Item]?
    var subscribers: [UInt64: Subscriber] = [:]
    /// Live items received in this loop turn, sent in one batch by `ChannelService.flush()`.
    var pending: [Item] = []

    init(id: ChannelID) { self.id = id }

    /// Largest frame a batch grows to before a new one starts.
    static let maxBatchBytes = 60 * 1024

    /// Splits items into batches whose frames stay under `maxBatchBytes`.
    static func chunks(_ items: [Item]) -> [ArraySlice<Item>] {
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
