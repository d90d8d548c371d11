import AgentChatProtocol
import Logging

/// Live delivery of channel messages to this broker's subscribers. Loop-bound.
///
/// Where a message goes: `ChannelStoring.append` stores it and publishes it on the channel's feed → every broker
/// with subscribers of the channel receives it on its `ChannelFeed` → `flushAll()` hands each loop turn's items to
/// the feed's `ChannelFeedStateMachine`, and `perform` carries out what it decides: one `messages` frame encoded
/// once and queued on every live subscriber, history reads for subscribers that replay or catch up, waits for a
/// queue to drain, retries.
final class ChannelDelivery {
    private let clock: any BrokerClock
    private let store: any ChannelStoring
    private let bus: any ChannelFeedBus
    private let outbox: Outbox
    private let logger: Logger
    private var feeds: [ChannelID: ChannelFeed] = [:]
    private var dirty: [ChannelFeed] = []
    private var flushTimer: (any BrokerTimer)?

    init(clock: any BrokerClock, store: any ChannelStoring, bus: any ChannelFeedBus, outbox: Outbox, logger: Logger) {
        self.clock = clock
        self.store = store
        self.bus = bus
        self.outbox = outbox
        self.logger = logger
    }

    private var metrics: BrokerMetrics { outbox.metrics }

    /// Channels with subscribers on this broker.
    var feedCount: Int { feeds.count }

    /// Subscribers reading history rather than live, and the messages waiting for them (read and not yet sent, or
    /// live and held until their read reaches the live stream). O(subscribers): for `/metrics`, not the hot path.
    func replayFigures() -> (subscribers: Int, messages: Int) {
        var subscribers = 0
        var messages = 0
        for feed in feeds.values {
            for subscriber in feed.machine.subscribers.values where subscriber.phase != .live {
                subscribers += 1
                messages += subscriber.backlog.count + subscriber.held.count
            }
        }
        return (subscribers, messages)
    }

    /// Sends `session` every message after offset `start`, then live ones. `whenLive` runs once this broker receives
    /// the channel's live stream (at once if it does already), before anything is sent: from then on every event of
    /// the channel reaches `session`, so it is when `channel.subscribe` is answered. (Answering before, an event
    /// published in between was lost: events are not kept in history.)
    func subscribe(_ session: Session, did: DID?, to channel: ChannelID, after start: Int64,
                   whenLive: @escaping () -> Void = {})
    {
        let feed = feeds[channel] ?? makeFeed(channel)
        feed.answers.removeValue(forKey: session.id)?()  // an earlier subscribe of this connection is answered first
        feed.subscribers[session.id] = ChannelFeed.Subscriber(session: session, did: did)
        feed.retryTimers[session.id] = nil
        session.channels.insert(channel)
        if feed.machine.isActive { whenLive() } else { feed.answers[session.id] = whenLive }
        perform(feed.machine.subscribe(session.id, after: start, queue: Self.queue(of: session)), on: feed)
    }

    func unsubscribe(_ session: Session, from channel: ChannelID) {
        session.channels.remove(channel)
        guard let feed = feeds[channel] else { return }
        feed.answers.removeValue(forKey: session.id)?()  // answered before whatever ends the subscription
        feed.subscribers[session.id] = nil
        feed.retryTimers[session.id] = nil
        if feed.machine.unsubscribe(session.id) {
            if let subscription = feed.subscription { bus.unsubscribe(subscription) }
            feeds[channel] = nil
        }
    }

    /// Drops a closed connection's subscriptions.
    func sessionClosed(_ session: Session) {
        for channel in session.channels { unsubscribe(session, from: channel) }
    }

    private func makeFeed(_ channel: ChannelID) -> ChannelFeed {
        let feed = ChannelFeed(id: channel)
        feeds[channel] = feed
        feed.subscription = bus.subscribe(
            channel,
            onActive: { [weak self, weak feed] in
                guard let self, let feed else { return }
                let answers = feed.answers
                feed.answers = [:]
                for id in answers.keys.sorted() { answers[id]?() }
                perform(feed.machine.activated(queues: queues(of: feed)), on: feed)
            },
            handler: { [weak self, weak feed] message in
                guard let self, let feed else { return }
                received(message, on: feed)
            })
        return feed
    }

    private static func queue(of session: Session) -> ChannelFeedStateMachine.Queue {
        .init(queuedBytes: session.queuedBytes, limit: session.queueLimit)
    }

    private func queues(of feed: ChannelFeed) -> (UInt64) -> ChannelFeedStateMachine.Queue {
        { [feed] id in feed.subscribers[id].map { Self.queue(of: $0.session) } ?? .init(queuedBytes: 0, limit: 0) }
    }

    /// Carries out the delivery machine's actions.
    private func perform(_ actions: [ChannelFeedStateMachine.Action], on feed: ChannelFeed) {
        for action in actions {
            switch action {
            case .broadcast(let ids, let items):
                for chunk in ChannelFeed.chunks(items) {
                    let frame = OutboundFrame(MessageItem.batch(channel: feed.id, items: chunk.map(\.bytes)))
                    outbox.broadcast(frame, type: .messages, to: ids.lazy.compactMap { feed.subscribers[$0]?.session })
                    metrics.delivered(chunk.count * ids.count, replay: false)
                }
            case .send(let id, let items):
                guard let session = feed.subscribers[id]?.session else { continue }
                for chunk in ChannelFeed.chunks(items) {
                    outbox.send(OutboundFrame(MessageItem.batch(channel: feed.id, items: chunk.map(\.bytes))),
                                type: .messages, to: session)
                    metrics.delivered(chunk.count, replay: true)
                }
            case .read(let read):
                store.range(feed.id, after: read.after, count: read.count) { [weak self, weak feed] result in
                    guard let self, let feed, let session = feed.subscribers[read.subscriber]?.session else { return }
                    perform(feed.machine.readCompleted(read, items: try? result.get(), queue: Self.queue(of: session)),
                            on: feed)
                }
            case .awaitDrain(let id):
                feed.subscribers[id]?.session.whenDrained { [weak self, weak feed] in
                    guard let self, let feed, let session = feed.subscribers[id]?.session else { return }
                    perform(feed.machine.drained(id, queue: Self.queue(of: session)), on: feed)
                }
            case .retry(let id, let delay):
                metrics.historyReadRetries.increment()
                let timer = feed.retryTimers[id] ?? clock.makeTimer { [weak self, weak feed] in
                    guard let self, let feed, let session = feed.subscribers[id]?.session else { return }
                    perform(feed.machine.retryDue(id, queue: Self.queue(of: session)), on: feed)
                }
                feed.retryTimers[id] = timer
                timer.start(after: delay)
            case .close(let id):
                guard let session = feed.subscribers[id]?.session else { continue }
                logger.warning("history unreadable; closing the subscriber",
                               metadata: ["channel": "\(feed.id)", "connection": "\(id)"])
                session.close(.internalError, "history unavailable; resume from your last offset")
                unsubscribe(session, from: feed.id)
            case .gap:
                metrics.feedGaps.increment()
            }
        }
    }

    private func received(_ message: FeedMessage, on feed: ChannelFeed) {
        switch message {
        case .item(let item):
            if feed.pending.isEmpty { dirty.append(feed) }
            feed.pending.append(item)
            scheduleFlush()
        case .event(let event):
            // Delivered after the items already received; then a member who is gone stops receiving.
            flush(feed)
            outbox.broadcast(OutboundFrame(outbox.codec.encode(event.frame)), type: event.frame.type,
                             to: feed.subscribers.values.map(\.session))
            if event.kind == .memberLeft || event.kind == .memberRemoved {
                for subscriber in feed.subscribers.values where subscriber.did == event.did {
                    unsubscribe(subscriber.session, from: feed.id)
                }
            }
        }
    }

    private func scheduleFlush() {
        if flushTimer == nil { flushTimer = clock.makeTimer { [weak self] in self?.flushAll() } }
        if flushTimer?.isActive == false { flushTimer?.start(after: 0) }
    }

    /// Sends every feed's items of this loop turn.
    private func flushAll() {
        let feeds = dirty
        dirty = []
        for feed in feeds { flush(feed) }
    }

    private func flush(_ feed: ChannelFeed) {
        guard !feed.pending.isEmpty else { return }
        let items = feed.pending
        feed.pending = []
        perform(feed.machine.deliver(items, queues: queues(of: feed)), on: feed)
    }
}
