import AgentChatCrypto
import AgentChatLoop
import AgentChatPersistence
import AgentChatProtocol
import Logging

/// Channel, key and message requests, and live delivery. Loop-bound.
///
/// Where a message goes: `message.send` → `ChannelStore.append` (one Lua step: membership and epoch checks, dedup,
/// offset, history, trim, PUBLISH of the stored item) → every broker with subscribers of the channel receives the
/// item on its `ChannelFeed` → `flush()` hands each loop turn's items to the feed's `ChannelFeedStateMachine`, and
/// `perform` carries out what it decides: one `messages` frame encoded once and queued on every live subscriber,
/// history reads for subscribers that replay or catch up, waits for a queue to drain, retries.
final class ChannelService {
    private let loop: EventLoop
    private let store: ChannelStore
    private let agents: AgentStore
    private let pubsub: RedisPubSub
    private let indicatorStore: IndicatorStore
    private let codec: FrameCodec
    private let metrics: BrokerMetrics
    private let logger: Logger
    private var feeds: [ChannelID: ChannelFeed] = [:]
    private var dirty: [ChannelFeed] = []
    private var flushTimer: LoopTimer?


    init(loop: EventLoop, store: ChannelStore, agents: AgentStore, pubsub: RedisPubSub, indicatorStore: IndicatorStore,
         codec: FrameCodec, metrics: BrokerMetrics, logger: Logger)
    {
        self.indicatorStore = indicatorStore
        self.loop = loop
        self.store = store
        self.agents = agents
        self.pubsub = pubsub
        self.codec = codec
        self.metrics = metrics
        self.logger = logger
    }

    // MARK: Requests

    func handle(_ request: ChannelRequest, id: String?, from session: WebSocketSession) {
        guard let did = session.auth?.authenticatedDID else { return }
        let reply: (ServerFrame) -> Void = { [weak self, weak session] frame in
            guard let self, let session else { return }
            send(frame, to: session)
        }
        let fail: (ErrorCode, String) -> Void = { code, message in reply(.error(ProtocolError(code, message), ref: id)) }
        let storeFailure: (ChannelStore.Failure) -> Void = { failure in
            switch failure {
            case .store: fail(.unavailable, "the store is unreachable; retry")
            case .refused(let refusal, let epoch):
                switch refusal {
                case .notFound, .hidden: fail(.channelNotFound, "no such channel")
                case .forbidden: fail(.forbidden, "only the owner may do this")
                case .notMember: fail(.notMember, "not a member of this channel")
                case .staleEpoch: fail(.staleEpoch, "the current epoch is \(epoch ?? 0) and needs published keys")
                case .keysExist: fail(.keysExist, "keys for epoch \(epoch ?? 0) exist; fetch them")
                case .full: fail(.channelFull, "the channel has \(ChannelKeys.maxMembers) members")
                }
            }
        }

        switch request {
        case .create(let name, let open, let members):
            let others = members.filter { $0 != did }
            requireRegistered(others, fail: fail) { [self] in
                let channel = ChannelID(randomBytes: SecureRandom.bytes(16))
                let historyEpoch = Base64URL.encode(SecureRandom.bytes(12))
                store.create(channel, name: name, owner: did, open: open, members: others, historyEpoch: historyEpoch,
                             now: Clock.unixMilliseconds()) { [self] result in
                    switch result {
                    case .success: describe(channel, for: did, ref: id, reply: reply, fail: fail)
                    case .failure(let failure): storeFailure(failure)
                    }
                }
            }
        case .invite(let channel, let invitee):
            requireRegistered([invitee], fail: fail) { [self] in
                store.invite(channel, by: did, invitee) { [self] result in
                    switch result {
                    case .success(let epoch):
                        publishEvent(channel, "member_invited", invitee, epoch)
                        reply(.ok(ref: id))
                    case .failure(let failure): storeFailure(failure)
                    }
                }
            }
        case .join(let channel):
            store.join(channel, did) { [self] result in
                switch result {
                case .success((let epoch, let changed)):
                    if changed { publishEvent(channel, "member_joined", did, epoch) }
                    describe(channel, for: did, ref: id, reply: reply, fail: fail)
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .leave(let channel):
            store.leave(channel, did) { [self, weak session] result in
                switch result {
                case .success(let epoch):
                    // This connection stops at once; the agent's others when the event reaches their brokers.
                    if let session { unsubscribe(session, from: channel) }
                    publishEvent(channel, "member_left", did, epoch)
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .remove(let channel, let member):
            store.remove(channel, by: did, member) { [self] result in
                switch result {
                case .success((let epoch, let changed)):
                    if changed { publishEvent(channel, "member_removed", member, epoch) }
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .list(let after, let limit):
            store.channels(of: did) { [self, weak session] result in
                switch result {
                case .failure: fail(.unavailable, "the store is unreachable; retry")
                case .success(let ids):
                    let rest = ids.filter { after == nil || $0.rawValue > after!.rawValue }
                    let page = Array(rest.prefix(limit))
                    describeAll(page, for: did) { [self] descriptions in
                        guard let session else { return }
                        sendPaced(channelsPage(descriptions, ref: id, more: rest.count > page.count,
                                               last: page.last, budget: session.queueLimit / 2), to: session)
                    }
                }
            }
        case .describe(let channel):
            describe(channel, for: did, ref: id, reply: reply, fail: fail)
        case .rotate(let channel):
            store.rotate(channel, by: did) { [self] result in
                switch result {
                case .success(let epoch):
                    publishEvent(channel, "epoch_rotated", did, epoch)
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .publishKeys(let keys):
            let envelopes = Dictionary(uniqueKeysWithValues: keys.envelopes.map { ($0.key.description, $0.value) })
            let signed = ChannelKeys.signedBytes(channel: keys.channel, epoch: keys.epoch, envelopes: envelopes)
            guard let signature = Base64URL.decode(keys.signature),
                SigningKeyPair.verify(signature: signature, message: signed, publicKey: did.signingKey)
            else { return fail(.invalidField, "\"signature\" does not verify with the sender's key") }
            store.publishKeys(keys, sender: did) { [self] result in
                switch result {
                case .success(let epoch):
                    publishEvent(keys.channel, "keys_published", did, epoch)
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .getKeys(let channel, let epoch):
            store.state(channel, for: did) { [self] result in
                switch result {
                case .failure(let failure): return storeFailure(failure)
                case .success: break
                }
                store.keys(channel, epoch: epoch) { result in
                    switch result {
                    case .failure: fail(.unavailable, "the store is unreachable; retry")
                    case .success(let keys?):
                        guard keys.envelopes[did.description] != nil, let sender = DID(parsing: keys.sender) else {
                            return fail(.channelNotFound, "no keys for you in epoch \(epoch)")
                        }
                        reply(.keys(ref: id, channel: channel, epoch: epoch, sender: sender, signature: keys.signature,
                                    envelopes: keys.envelopes))
                    case .success(nil): fail(.channelNotFound, "no keys published for epoch \(epoch)")
                    }
                }
            }
        case .send(let message):
            let now = Clock.unixMilliseconds()
            let suffix = MessageItem.suffix(message, sender: did, timestamp: now)
            store.append(message, sender: did, suffix: suffix, now: now) { [self] result in
                switch result {
                case .success(.stored(let offset, let listed)):
                    metrics.messagesStored.increment()
                    if listed { indicatorStore.touch(message.channel, at: now) }
                    reply(.messageAck(ref: id, channel: message.channel, offset: offset, duplicate: false))
                case .success(.duplicate(let offset)):
                    reply(.messageAck(ref: id, channel: message.channel, offset: offset, duplicate: true))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .subscribe(let channel, let since, let historyEpoch):
            store.state(channel, for: did) { [self, weak session] result in
                guard let session, session.isOpen else { return }
                switch result {
                case .failure(let failure): storeFailure(failure)
                case .success(let state):
                    let (start, recovered) = Self.resumePoint(state: state, since: since, historyEpoch: historyEpoch)
                    reply(.subscribed(ref: id, channel: channel, historyEpoch: state.historyEpoch,
                                      offset: state.offset, recovered: recovered))
                    subscribe(session, did: did, to: channel, after: start)
                }
            }
        case .unsubscribe(let channel):
            unsubscribe(session, from: channel)
            reply(.ok(ref: id))
        case .listing(let channel, let listed, let title, let topic):
            indicatorStore.setListing(channel, owner: did, listed: listed, title: title, topic: topic) { result in
                switch result {
                case .success: reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .history(let channel, let before, let after, let limit):
            store.state(channel, for: did) { [self, weak session] result in
                guard let session else { return }
                if case .failure(let failure) = result { return storeFailure(failure) }
                let deliver: (Result<[[UInt8]], RedisError>) -> Void = { [weak self] items in
                    switch items {
                    case .failure: fail(.unavailable, "the store is unreachable; retry")
                    case .success(let items):
                        self?.sendPaced(Self.historyPage(items, channel: channel, ref: id,
                                                         budget: session.queueLimit / 2), to: session)
                    }
                }
                if let after {
                    store.range(channel, after: after, count: limit, completion: deliver)
                } else {
                    store.reverseRange(channel, before: before, count: limit, completion: deliver)
                }
            }
        }
    }

    /// A `history` reply holding as many of `items` (in the order read) as fit in `budget` bytes, at least one;
    /// when some are left out it carries `next`, the offset to page on from in the same direction.
    static func historyPage(_ items: [[UInt8]], channel: ChannelID, ref: String?, budget: Int) -> OutboundFrame {
        var size = 128 + channel.rawValue.utf8.count + (ref?.utf8.count ?? 0)
        var kept = 0
        for item in items {
            if kept > 0, size + item.count + 1 > budget { break }
            size += item.count + 1
            kept += 1
        }
        let next = kept < items.count ? MessageItem.offset(of: items[kept - 1]) : nil
        return OutboundFrame(MessageItem.batch(channel: channel, items: items[..<kept], ref: ref, next: next))
    }

    /// A `channels` reply with as many descriptions as fit in `budget` bytes (at least one), and `next` when more
    /// may follow: cut here, or `more` ids after `last`.
    private func channelsPage(_ descriptions: [ChannelDescription], ref: String?, more: Bool, last: ChannelID?,
                              budget: Int) -> OutboundFrame
    {
        var kept = descriptions.count
        var bytes = codec.encode(.channels(ref: ref, descriptions, next: more ? last : nil))
        while bytes.count > budget, kept > 1 {
            kept = max(1, min(kept - 1, kept * budget / bytes.count))
            bytes = codec.encode(.channels(ref: ref, Array(descriptions.prefix(kept)), next: descriptions[kept - 1].id))
        }
        return OutboundFrame(bytes)
    }

    /// Queues a reply to the connection's own request once it fits in the queue, so that asking never makes a
    /// reader a slow consumer (4008).
    private func sendPaced(_ frame: OutboundFrame, to session: WebSocketSession) {
        guard session.isOpen else { return }
        if session.queuedBytes > 0, session.queuedBytes + frame.count > session.queueLimit {
            session.whenDrained { [weak self, weak session] in
                guard let self, let session else { return }
                sendPaced(frame, to: session)
            }
            return
        }
        metrics.framesSent.increment()
        session.send(frame)
    }

    /// Where a resuming subscriber starts (the offset after which it is sent messages) and whether that covers
    /// everything it missed.
    static func resumePoint(state: ChannelStore.State, since: Int64?, historyEpoch: String?) -> (Int64, Bool) {
        guard let since else { return (state.offset, true) }
        if let historyEpoch, historyEpoch != state.historyEpoch {
            return (max(0, state.firstOffset - 1), false)  // a different history: everything retained, not recovered
        }
        if since >= state.offset { return (state.offset, since == state.offset) }
        if state.firstOffset == 0 { return (state.offset, false) }  // everything after `since` was trimmed
        return (max(since, state.firstOffset - 1), state.firstOffset <= since + 1)
    }

    private func requireRegistered(_ dids: [DID], fail: @escaping (ErrorCode, String) -> Void,
                                   then next: @escaping () -> Void)
    {
        guard !dids.isEmpty else { return next() }
        var remaining = dids.count
        var missing: DID?
        var storeDown = false
        for did in dids {
            agents.profile(did) { result in
                switch result {
                case .success(nil): missing = missing ?? did
                case .failure: storeDown = true
                case .success: break
                }
                remaining -= 1
                guard remaining == 0 else { return }
                if storeDown { return fail(.unavailable, "the store is unreachable; retry") }
                if let missing { return fail(.unknownAgent, "\(missing) is not registered") }
                next()
            }
        }
    }

    private func describe(_ channel: ChannelID, for did: DID, ref: String?, reply: @escaping (ServerFrame) -> Void,
                          fail: @escaping (ErrorCode, String) -> Void)
    {
        describeAll([channel], for: did) { descriptions in
            guard let description = descriptions.first else { return fail(.channelNotFound, "no such channel") }
            reply(.channel(ref: ref, description))
        }
    }

    /// Descriptions of the channels `did` is a member of, in the order given; others are left out.
    private func describeAll(_ ids: [ChannelID], for did: DID, completion: @escaping ([ChannelDescription]) -> Void) {
        guard !ids.isEmpty else { return completion([]) }
        var results: [ChannelID: ChannelDescription] = [:]
        var remaining = ids.count
        let finish = {
            remaining -= 1
            if remaining == 0 { completion(ids.compactMap { results[$0] }) }
        }
        for channel in ids {
            store.metadata(channel) { [self] result in
                guard case .success(let meta?) = result, meta.members.contains(did),
                    let owner = meta.fields["owner"].flatMap(DID.init(parsing:))
                else { return finish() }
                var profiles: [DID: AgentProfile] = [:]
                var pendingProfiles = meta.members.count
                for member in meta.members {
                    agents.profile(member) { profile in
                        if case .success(let profile?) = profile { profiles[member] = profile }
                        pendingProfiles -= 1
                        guard pendingProfiles == 0 else { return }
                        let members = meta.members.sorted { $0.description < $1.description }.compactMap { did in
                            profiles[did].map {
                                ChannelDescription.Member(did: did, name: $0.name, encryptionKey: $0.encryptionKey,
                                                          registration: $0.registration)
                            }
                        }
                        let int: (String) -> Int64 = { meta.fields[$0].flatMap { Int64($0) } ?? 0 }
                        results[channel] = ChannelDescription(
                            id: channel, name: meta.fields["name"] ?? "", owner: owner, open: meta.fields["open"] == "1",
                            epoch: int("epoch"), keyedEpoch: int("keyedEpoch"), offset: int("seq"),
                            historyEpoch: meta.fields["historyEpoch"] ?? "", members: members)
                        finish()
                    }
                }
            }
        }
    }

    private func publishEvent(_ channel: ChannelID, _ event: String, _ did: DID, _ epoch: Int64) {
        store.publishEvent(channel, frame: codec.encode(.channelEvent(channel: channel, event: event, did: did,
                                                                      epoch: epoch)))
    }

    private func send(_ frame: ServerFrame, to session: WebSocketSession) {
        if case .error(let error, _) = frame { metrics.frameError(error.code.rawValue) }
        metrics.framesSent.increment()
        session.send(OutboundFrame(codec.encode(frame)))
    }

    // MARK: Live delivery

    private func subscribe(_ session: WebSocketSession, did: DID, to channel: ChannelID, after start: Int64) {
        let feed = feeds[channel] ?? makeFeed(channel)
        feed.subscribers[session.id] = ChannelFeed.Subscriber(session: session, did: did)
        feed.retryTimers[session.id] = nil
        session.channels.insert(channel)
        perform(feed.machine.subscribe(session.id, after: start, queue: Self.queue(of: session)), on: feed)
    }

    private func makeFeed(_ channel: ChannelID) -> ChannelFeed {
        let feed = ChannelFeed(id: channel)
        feeds[channel] = feed
        feed.subscription = pubsub.subscribe(
            channel: RedisKeys.feed(channel).bytes,
            onActive: { [weak self, weak feed] in
                guard let self, let feed else { return }
                perform(feed.machine.activated(queues: queues(of: feed)), on: feed)
            },
            handler: { [weak self, weak feed] bytes in
                guard let self, let feed else { return }
                received(bytes, on: feed)
            })
        return feed
    }

    func unsubscribe(_ session: WebSocketSession, from channel: ChannelID) {
        session.channels.remove(channel)
        guard let feed = feeds[channel] else { return }
        feed.subscribers[session.id] = nil
        feed.retryTimers[session.id] = nil
        if feed.machine.unsubscribe(session.id) {
            if let subscription = feed.subscription { pubsub.unsubscribe(subscription) }
            feeds[channel] = nil
        }
    }

    /// Drops a closed connection's subscriptions.
    func sessionClosed(_ session: WebSocketSession) {
        for channel in session.channels { unsubscribe(session, from: channel) }
    }

    private static func queue(of session: WebSocketSession) -> ChannelFeedStateMachine.Queue {
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
                    for id in ids { feed.subscribers[id]?.session.send(frame) }
                    metrics.deliveries.increment(by: chunk.count * ids.count)
                }
            case .send(let id, let items):
                guard let session = feed.subscribers[id]?.session else { continue }
                for chunk in ChannelFeed.chunks(items) {
                    session.send(OutboundFrame(MessageItem.batch(channel: feed.id, items: chunk.map(\.bytes))))
                    metrics.deliveries.increment(by: chunk.count)
                }
            case .read(let read):
                store.range(feed.id, after: read.after, count: read.count) { [weak self, weak feed] result in
                    guard let self, let feed, let session = feed.subscribers[read.subscriber]?.session else { return }
                    let items = try? result.get().compactMap(Self.item)
                    perform(feed.machine.readCompleted(read, items: items, queue: Self.queue(of: session)), on: feed)
                }
            case .awaitDrain(let id):
                feed.subscribers[id]?.session.whenDrained { [weak self, weak feed] in
                    guard let self, let feed, let session = feed.subscribers[id]?.session else { return }
                    perform(feed.machine.drained(id, queue: Self.queue(of: session)), on: feed)
                }
            case .retry(let id, let delay):
                metrics.historyReadRetries.increment()
                let timer = feed.retryTimers[id] ?? LoopTimer(loop: loop) { [weak self, weak feed] in
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

    private static func item(_ bytes: [UInt8]) -> ChannelFeed.Item? {
        MessageItem.offset(of: bytes).map { ChannelFeed.Item(offset: $0, bytes: bytes) }
    }

    private func received(_ bytes: [UInt8], on feed: ChannelFeed) {
        if let item = Self.item(bytes) {
            if feed.pending.isEmpty { dirty.append(feed) }
            feed.pending.append(item)
            scheduleFlush()
            return
        }
        // A channel.event frame: deliver after the items already received, then drop a member who is gone.
        flush(feed)
        guard let event = try? JSONParser.parse(bytes) else { return }
        let frame = OutboundFrame(bytes)
        for subscriber in feed.subscribers.values { subscriber.session.send(frame) }
        if let name = event["event"]?.stringValue, name == "member_left" || name == "member_removed",
            let did = event["did"]?.stringValue.flatMap(DID.init(parsing:))
        {
            for subscriber in feed.subscribers.values where subscriber.did == did {
                unsubscribe(subscriber.session, from: feed.id)
            }
        }
    }

    private func scheduleFlush() {
        if flushTimer == nil { flushTimer = LoopTimer(loop: loop) { [weak self] in self?.flushAll() } }
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
