import AgentChatProtocol

/// The live-delivery rules of one channel on one broker, without I/O: which subscriber reads history, which one is
/// sent what, when to wait for a queue to drain, when to retry a read. `ChannelDelivery` feeds it events (a
/// subscription, the pub/sub subscription confirmed, live items, a finished read, a drained queue, a due retry) and
/// performs the actions it returns.
///
/// Ordering and completeness: offsets are consecutive, items arrive from pub/sub in offset order, and each
/// subscriber is only ever handed the offset after the last one it was sent. A subscriber is in one of three
/// phases: *waiting* for the pub/sub subscription; *reading* history (a replay or a catch-up) while live items are
/// held for it; *live*. It goes (back) to reading whenever live items cannot be handed on without a gap: the
/// subscription was (re)confirmed (Redis drops what is published while a subscriber is disconnected), a live batch
/// skips offsets, or the held items overflowed. A read answers fewer items than asked, in a hold generation that
/// lost nothing since the read was issued, means history and the held items together reach the live stream: the
/// subscriber goes live. A failed read is retried with backoff, never skipped.
struct ChannelFeedStateMachine {
    typealias SubscriberID = UInt64

    typealias Item = ChannelItem

    /// A connection's outbound queue, as the caller sees it when it hands the machine an event.
    struct Queue: Equatable {
        var queuedBytes: Int
        var limit: Int
    }

    /// A history read to perform: stored items with offsets after `after`, at most `count`.
    struct Read: Equatable {
        let subscriber: SubscriberID
        let after: Int64
        let count: Int
        /// Identifies the read, so that an answer for a subscriber that was replaced is ignored.
        let ticket: Int
    }

    enum Action: Equatable {
        case read(Read)
        /// Queue these items for one subscriber, in frames of its own.
        case send(SubscriberID, [Item])
        /// Queue these items as one frame shared by every listed subscriber.
        case broadcast([SubscriberID], [Item])
        /// Call `drained` once the subscriber's queue has drained.
        case awaitDrain(SubscriberID)
        /// Call `retryDue` after the delay.
        case retry(SubscriberID, afterMilliseconds: UInt64)
        /// History stayed unreadable: close the subscriber's connection so that it resumes elsewhere.
        case close(SubscriberID)
        /// A live batch would have skipped offsets for this subscriber; it reads history instead.
        case gap(SubscriberID)
    }

    enum Phase: Equatable {
        case waiting, reading, live
    }

    struct Subscriber: Equatable {
        var phase = Phase.waiting
        /// The highest offset this subscriber was sent (or asked to start after).
        var lastOffset: Int64
        /// While reading: live items received in the current hold generation, in offset order.
        var held: [Item] = []
        var heldBytes = 0
        /// Bumped whenever `held` may miss a live item.
        var holdGeneration = 0
        /// Items read and not yet sent, for lack of queue space.
        var backlog: [Item] = []
        /// The read in flight, with the hold generation it was issued in.
        var pendingRead: (read: Read, generation: Int)?
        var retryPending = false
        /// A read reached the end of history in the current hold generation.
        var reachedEnd = false
        var failedReads = 0
        /// Bytes per stored item, as last read (sizes the next read).
        var itemBytesEstimate = 4 * 1024
        var awaitingDrain = false

        init(lastOffset: Int64) { self.lastOffset = lastOffset }

        static func == (a: Subscriber, b: Subscriber) -> Bool {
            a.phase == b.phase && a.lastOffset == b.lastOffset && a.held == b.held
                && a.holdGeneration == b.holdGeneration && a.backlog == b.backlog
                && a.pendingRead?.read == b.pendingRead?.read && a.retryPending == b.retryPending
                && a.reachedEnd == b.reachedEnd && a.failedReads == b.failedReads
        }
    }

    /// Most items asked for per read.
    static let maxReadCount = 500
    /// Retries of a failed read: the first delay, doubling up to the longest, and how many before giving up.
    static let retryMilliseconds: UInt64 = 50
    static let maxRetryMilliseconds: UInt64 = 2_000
    static let maxFailedReads = 20
    /// Bytes a frame adds around its items (type, channel id, brackets), counted when pacing.
    static let frameOverhead = 96

    private(set) var subscribers: [SubscriberID: Subscriber] = [:]
    /// Whether the pub/sub subscription is confirmed on the current Redis connection.
    private(set) var isActive = false
    private var nextTicket = 0

    // MARK: Events

    /// A connection subscribes, to be sent everything after `offset`. Replaces an earlier subscription of the same
    /// connection (answers for the old one are ignored).
    mutating func subscribe(_ id: SubscriberID, after offset: Int64, queue: Queue) -> [Action] {
        subscribers[id] = Subscriber(lastOffset: offset)
        guard isActive else { return [] }
        return startReading(id, queue: queue)
    }

    /// Forgets a subscriber. Returns whether none is left.
    mutating func unsubscribe(_ id: SubscriberID) -> Bool {
        subscribers[id] = nil
        return subscribers.isEmpty
    }

    /// The pub/sub subscription was confirmed (first time or after a reconnect): everyone reads history from its
    /// last offset until it meets the live stream again.
    mutating func activated(queues: (SubscriberID) -> Queue) -> [Action] {
        isActive = true
        var actions: [Action] = []
        for id in subscribers.keys.sorted() { actions += startReading(id, queue: queues(id)) }
        return actions
    }

    /// Live items, in offset order (one loop turn's worth). The hot path: subscribers are updated in place.
    mutating func deliver(_ items: [Item], queues: (SubscriberID) -> Queue) -> [Action] {
        guard let first = items.first, let last = items.last else { return [] }
        var shared: [SubscriberID] = []
        var partial: [Action] = []
        var skipped: [SubscriberID] = []
        // Walks the indices by hand: `subscribers.indices` holds a reference to the dictionary's storage, which made
        // the first write below copy the whole dictionary (every subscriber) on every delivery.
        var index = subscribers.startIndex
        while index != subscribers.endIndex {
            defer { subscribers.formIndex(after: &index) }
            let id = subscribers.keys[index]
            switch subscribers.values[index].phase {
            case .waiting:
                continue
            case .reading:
                Self.hold(items, in: &subscribers.values[index], limit: queues(id).limit / 4)
            case .live:
                let lastOffset = subscribers.values[index].lastOffset
                guard last.offset > lastOffset else { continue }
                if first.offset == lastOffset + 1 {
                    shared.append(id)
                    subscribers.values[index].lastOffset = last.offset
                } else if first.offset <= lastOffset {
                    partial.append(.send(id, items.filter { $0.offset > lastOffset }))
                    subscribers.values[index].lastOffset = last.offset
                } else {
                    skipped.append(id)
                }
            }
        }
        var actions: [Action] = shared.isEmpty ? [] : [.broadcast(shared, items)]
        actions += partial
        for id in skipped {
            actions.append(.gap(id))
            actions += startReading(id, queue: queues(id))
            Self.hold(items, in: &subscribers[id]!, limit: queues(id).limit / 4)
        }
        return actions
    }

    /// A read finished: its items (oldest first), or nil when it failed.
    mutating func readCompleted(_ read: Read, items: [Item]?, queue: Queue) -> [Action] {
        guard var subscriber = subscribers[read.subscriber], let pending = subscriber.pendingRead,
            pending.read == read
        else { return [] }
        subscriber.pendingRead = nil
        guard let items else {
            subscriber.failedReads += 1
            guard subscriber.failedReads <= Self.maxFailedReads else {
                subscribers[read.subscriber] = nil
                return [.close(read.subscriber)]
            }
            subscriber.retryPending = true
            subscribers[read.subscriber] = subscriber
            let delay = min(Self.maxRetryMilliseconds, Self.retryMilliseconds << UInt64(subscriber.failedReads - 1))
            return [.retry(read.subscriber, afterMilliseconds: delay)]
        }
        subscriber.failedReads = 0
        if !items.isEmpty {
            subscriber.itemBytesEstimate = max(64, items.reduce(0) { $0 + $1.bytes.count } / items.count)
        }
        subscriber.backlog = items.filter { $0.offset > subscriber.lastOffset }
        if items.count < read.count, pending.generation == subscriber.holdGeneration { subscriber.reachedEnd = true }
        subscribers[read.subscriber] = subscriber
        return pump(read.subscriber, queue: queue)
    }

    /// The subscriber's queue drained (after `awaitDrain`).
    mutating func drained(_ id: SubscriberID, queue: Queue) -> [Action] {
        guard subscribers[id]?.awaitingDrain == true else { return [] }
        subscribers[id]?.awaitingDrain = false
        return pump(id, queue: queue)
    }

    /// A retry's delay passed (after `retry`).
    mutating func retryDue(_ id: SubscriberID, queue: Queue) -> [Action] {
        guard subscribers[id]?.retryPending == true else { return [] }
        subscribers[id]?.retryPending = false
        return pump(id, queue: queue)
    }

    // MARK: Rules

    private mutating func startReading(_ id: SubscriberID, queue: Queue) -> [Action] {
        guard var subscriber = subscribers[id] else { return [] }
        subscriber.phase = .reading
        subscriber.held = []
        subscriber.heldBytes = 0
        subscriber.holdGeneration += 1
        subscriber.reachedEnd = false
        subscribers[id] = subscriber
        return pump(id, queue: queue)
    }

    /// Holds live items for a reading subscriber; on overflow they are dropped (history has them) and the hold
    /// generation moves on, so that only a later read can reach the live stream.
    private static func hold(_ items: [Item], in subscriber: inout Subscriber, limit: Int) {
        for item in items where item.offset > (subscriber.held.last?.offset ?? subscriber.lastOffset) {
            subscriber.held.append(item)
            subscriber.heldBytes += item.bytes.count
        }
        if subscriber.heldBytes > limit {
            subscriber.held = []
            subscriber.heldBytes = 0
            subscriber.holdGeneration += 1
            subscriber.reachedEnd = false
        }
    }

    /// Moves a reading subscriber on: sends its backlog while its queue is at most half full, reads the next
    /// page, or goes live once the reads reached the live stream.
    private mutating func pump(_ id: SubscriberID, queue: Queue) -> [Action] {
        guard var subscriber = subscribers[id], subscriber.phase == .reading, !subscriber.awaitingDrain else {
            return []
        }
        var actions: [Action] = []
        var queued = queue.queuedBytes
        let frameCap = min(ChannelFeed.maxBatchBytes, queue.limit / 2)
        while !subscriber.backlog.isEmpty {
            var count = 0
            var bytes = Self.frameOverhead
            for item in subscriber.backlog {
                if count > 0, bytes + item.bytes.count + 1 > frameCap { break }
                bytes += item.bytes.count + 1
                count += 1
            }
            if queued > 0, queued + bytes > queue.limit / 2 {
                subscriber.awaitingDrain = true
                subscribers[id] = subscriber
                actions.append(.awaitDrain(id))
                return actions
            }
            let batch = Array(subscriber.backlog.prefix(count))
            subscriber.backlog.removeFirst(count)
            subscriber.lastOffset = batch.last!.offset
            queued += bytes
            actions.append(.send(id, batch))
        }
        guard subscriber.pendingRead == nil, !subscriber.retryPending else {
            subscribers[id] = subscriber
            return actions
        }
        if subscriber.reachedEnd {
            let held = subscriber.held.filter { $0.offset > subscriber.lastOffset }
            subscriber.phase = .live
            subscriber.held = []
            subscriber.heldBytes = 0
            if let last = held.last {
                subscriber.lastOffset = last.offset
                actions.append(.send(id, held))
            }
            subscribers[id] = subscriber
            return actions
        }
        let space = max(queue.limit / 2 - queued, 0)
        let count = min(Self.maxReadCount, max(1, space / max(subscriber.itemBytesEstimate, 1)))
        nextTicket += 1
        let read = Read(subscriber: id, after: subscriber.lastOffset, count: count, ticket: nextTicket)
        subscriber.pendingRead = (read, subscriber.holdGeneration)
        subscribers[id] = subscriber
        actions.append(.read(read))
        return actions
    }
}
