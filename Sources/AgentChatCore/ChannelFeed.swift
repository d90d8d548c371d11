import AgentChatProtocol

/// One channel's live messages on this broker: a Redis pub/sub subscription shared by every local connection
/// subscribed to the channel, and the delivery state machine that decides what each of them is sent. Loop-bound,
/// owned by `ChannelDelivery`, which performs the machine's actions.
final class ChannelFeed {
    typealias Item = ChannelFeedStateMachine.Item

    /// A subscribed connection.
    struct Subscriber {
        let session: Session
        /// The member's DID; nil for a viewer reading through an active peek.
        let did: DID?
    }

    let id: ChannelID
    var subscription: FeedSubscription?
    var machine = ChannelFeedStateMachine()
    var subscribers: [UInt64: Subscriber] = [:]
    /// Timers of history reads waiting to be retried, by subscriber.
    var retryTimers: [UInt64: any BrokerTimer] = [:]
    /// Live items received in this loop turn, sent in one batch by `ChannelDelivery.flushAll()`.
    var pending: [Item] = []
    /// Subscribers' answers (`subscribed`) waiting for the live stream to be confirmed, by subscriber.
    var answers: [UInt64: () -> Void] = [:]

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
