import AgentChatCore
import AgentChatProtocol

/// The channel feeds in memory, with Redis pub/sub's guarantees and failures: messages reach the subscriptions that
/// are confirmed when they are published, in order, at most once, in a later turn; `onActive` runs when a
/// subscription is confirmed. `dropConnection()` loses the pub/sub connection: what is in flight and whatever is
/// published until `reconnect()` is lost; `reconnect()` confirms every subscription again (`onActive` once more),
/// as the Redis client resubscribes.
///
/// `publish(_:)` (an event) goes over the command connection, so it fails silently while the twin is unavailable
/// (`setAvailable(false)`); `InMemoryChannelStore.append` publishes its items through `deliver(_:on:)`.
package final class InMemoryFeedBus: InMemoryStore, ChannelFeedBus {
    private final class Subscription {
        let channel: ChannelID
        let onActive: () -> Void
        let handler: (FeedMessage) -> Void
        /// Confirmed on the current pub/sub connection: the server delivers to it.
        var confirmed = false
        init(channel: ChannelID, onActive: @escaping () -> Void, handler: @escaping (FeedMessage) -> Void) {
            self.channel = channel
            self.onActive = onActive
            self.handler = handler
        }
    }

    private var subscriptions: [FeedSubscription: Subscription] = [:]
    private var nextID: UInt64 = 1
    /// Whether the pub/sub connection is up.
    package private(set) var isConnected = true
    /// Bumped on every drop: deliveries queued on an older connection are lost.
    private var connectionGeneration = 0
    /// Messages delivered to some subscription, and messages published while nobody (confirmed) listened.
    package private(set) var delivered = 0
    package private(set) var lost = 0
    /// Messages still to lose, whoever listens (`loseNextMessages`).
    private var toLose = 0

    package override init(clock: ManualClock) { super.init(clock: clock) }

    // MARK: ChannelFeedBus

    package func subscribe(_ channel: ChannelID, onActive: @escaping () -> Void,
                           handler: @escaping (FeedMessage) -> Void) -> FeedSubscription
    {
        let id = FeedSubscription(channel: channel, id: nextID)
        nextID += 1
        let subscription = Subscription(channel: channel, onActive: onActive, handler: handler)
        subscriptions[id] = subscription
        if isConnected { confirmLater(id, generation: connectionGeneration) }
        return id
    }

    package func unsubscribe(_ subscription: FeedSubscription) {
        subscriptions[subscription] = nil
    }

    package func publish(_ event: ChannelEvent) {
        performUnacknowledged("publish") { [self] in deliver(.event(event), on: event.channel) }
    }

    // MARK: The server side

    /// Publishes `message` on `channel` now (called from inside a store operation, like `PUBLISH` in a script): every
    /// subscription confirmed at this moment receives it in a later turn, unless the connection drops first.
    package func deliver(_ message: FeedMessage, on channel: ChannelID) {
        let targets = subscriptions.filter { $0.key.channel == channel && $0.value.confirmed }.map(\.key)
            .sorted { $0.id < $1.id }
        guard isConnected, !targets.isEmpty, toLose == 0 else {
            toLose = max(0, toLose - 1)
            lost += 1
            return
        }
        let generation = connectionGeneration
        clock.enqueue { [self] in
            guard generation == connectionGeneration else {
                lost += 1
                return
            }
            for id in targets {
                guard let subscription = subscriptions[id], subscription.confirmed else { continue }
                delivered += 1
                subscription.handler(message)
            }
        }
    }

    // MARK: Faults

    /// The next `count` messages published are lost on the way, without the connection dropping (what a subscriber
    /// sees when messages go missing in the live stream).
    package func loseNextMessages(_ count: Int) { toLose += count }

    /// The pub/sub connection drops: nothing in flight or published from now on reaches a subscriber.
    package func dropConnection() {
        guard isConnected else { return }
        isConnected = false
        connectionGeneration += 1
        for subscription in subscriptions.values { subscription.confirmed = false }
    }

    /// The pub/sub connection is back: every subscription is confirmed again, in a later turn, and its `onActive`
    /// runs.
    package func reconnect() {
        guard !isConnected else { return }
        isConnected = true
        for id in subscriptions.keys.sorted(by: { $0.id < $1.id }) { confirmLater(id, generation: connectionGeneration) }
    }

    /// Subscriptions of `channel` (any state).
    package func subscriptionCount(_ channel: ChannelID) -> Int {
        subscriptions.keys.filter { $0.channel == channel }.count
    }

    /// Turns between a subscription and its confirmation (as the first, by default). More lets a command's reply
    /// (e.g. `channel.subscribe`'s state read) arrive before the live stream is confirmed, as it may from Redis.
    package var confirmTurns = 1

    private func confirmLater(_ id: FeedSubscription, generation: Int) {
        clock.enqueue(afterTurns: confirmTurns) { [self] in
            guard generation == connectionGeneration, let subscription = subscriptions[id] else { return }
            subscription.confirmed = true
            subscription.onActive()
        }
    }
}
