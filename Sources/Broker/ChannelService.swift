import AgentChatCrypto
import AgentChatLoop
import AgentChatPersistence
import AgentChatProtocol
import Logging

/// Channel, key and message requests, and live delivery. Loop-bound.
///
/// Where a message goes: `message.send` → `ChannelStore.append` (one Lua step: membership and epoch checks, dedup,
/// offset, history, trim, PUBLISH of the stored item) → every broker with subscribers of the channel receives the
/// item on its `ChannelFeed` → `flush()` sends each loop turn's items as one `messages` frame, encoded once and
/// queued on every live subscriber.
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

    /// Messages replayed per history read.
    static let replayPage = 500

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
        case .list:
            store.channels(of: did) { [self] result in
                switch result {
                case .failure: fail(.unavailable, "the store is unreachable; retry")
                case .success(let ids): describeAll(ids, for: did) { reply(.channels(ref: id, $0)) }
                }
            }
        case .describe(let channel):
            describe(channel, for: did, ref: id, reply: reply, fail: fail)
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
                let deliver: (Result<[[UInt8]], RedisError>) -> Void = { items in
                    switch items {
                    case .failure: fail(.unavailable, "the store is unreachable; retry")
                    case .success(let items):
                        session.send(OutboundFrame(MessageItem.batch(channel: channel, items: items, ref: id)))
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
        let subscriber = ChannelFeed.Subscriber(session: session, did: did, lastOffset: start)
        feed.subscribers[session.id] = subscriber
        session.channels.insert(channel)
        if feed.isActive { replay(subscriber, in: feed) }
    }

    private func makeFeed(_ channel: ChannelID) -> ChannelFeed {
        let feed = ChannelFeed(id: channel)
        feeds[channel] = feed
        feed.subscription = pubsub.subscribe(
            channel: RedisKeys.feed(channel).bytes,
            onActive: { [weak self, weak feed] in
                guard let self, let feed else { return }
                activated(feed)
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
        if feed.subscribers.isEmpty {
            if let subscription = feed.subscription { pubsub.unsubscribe(subscription) }
            feeds[channel] = nil
        }
    }

    /// Drops a closed connection's subscriptions.
    func sessionClosed(_ session: WebSocketSession) {
        for channel in session.channels { unsubscribe(session, from: channel) }
    }

    /// The pub/sub subscription is confirmed (first time, or after a reconnect, when live items may have been
    /// lost): catch live subscribers up from history, and start the replays that waited for this.
    private func activated(_ feed: ChannelFeed) {
        let wasActive = feed.isActive
        feed.isActive = true
        let live = feed.subscribers.values.filter { if case .live = $0.phase { true } else { false } }
        if let from = live.map(\.lastOffset).min(), wasActive || feed.catchUpHeld == nil {
            feed.catchUpHeld = []
            catchUp(feed, after: from)
        }
        for subscriber in feed.subscribers.values {
            if case .waiting = subscriber.phase { replay(subscriber, in: feed) }
        }
    }

    private func catchUp(_ feed: ChannelFeed, after offset: Int64) {
        store.range(feed.id, after: offset, count: Self.replayPage) { [weak self, weak feed] result in
            guard let self, let feed else { return }
            let items = (try? result.get())?.compactMap(Self.item) ?? []
            if !items.isEmpty { deliver(items, on: feed) }
            if items.count == Self.replayPage, let last = items.last {
                return catchUp(feed, after: last.offset)
            }
            let held = feed.catchUpHeld ?? []
            feed.catchUpHeld = nil
            if !held.isEmpty { deliver(held, on: feed) }
        }
    }

    private func replay(_ subscriber: ChannelFeed.Subscriber, in feed: ChannelFeed) {
        if case .replaying = subscriber.phase { return }
        subscriber.phase = .replaying(held: [])
        replayPage(subscriber, in: feed)
    }

    private func replayPage(_ subscriber: ChannelFeed.Subscriber, in feed: ChannelFeed) {
        store.range(feed.id, after: subscriber.lastOffset, count: Self.replayPage) {
            [weak self, weak feed, weak subscriber] result in
            guard let self, let feed, let subscriber, feed.subscribers[subscriber.session.id] === subscriber else {
                return
            }
            guard case .success(let raw) = result else {
                subscriber.session.close(.internalError, "history unavailable; resume from your last offset")
                return
            }
            let items = raw.compactMap(Self.item)
            send(items, in: feed, to: subscriber)
            if items.count == Self.replayPage { return replayPage(subscriber, in: feed) }
            guard case .replaying(let held) = subscriber.phase else { return }
            subscriber.phase = .live
            send(held, in: feed, to: subscriber)
        }
    }

    private static func item(_ bytes: [UInt8]) -> ChannelFeed.Item? {
        MessageItem.offset(of: bytes).map { ChannelFeed.Item(offset: $0, bytes: bytes) }
    }

    private func received(_ bytes: [UInt8], on feed: ChannelFeed) {
        if let item = Self.item(bytes) {
            if feed.catchUpHeld != nil {
                feed.catchUpHeld?.append(item)
                return
            }
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
        deliver(items, on: feed)
    }

    /// Hands items (in offset order) to every subscriber: one shared frame per batch for subscribers that need all
    /// of it, a frame of their own for the rare one that has part of it already.
    private func deliver(_ items: [ChannelFeed.Item], on feed: ChannelFeed) {
        for chunk in ChannelFeed.chunks(items) {
            guard let first = chunk.first, let last = chunk.last else { continue }
            var shared: OutboundFrame?
            for subscriber in feed.subscribers.values {
                switch subscriber.phase {
                case .waiting:
                    continue
                case .replaying(var held):
                    held.append(contentsOf: chunk)
                    subscriber.phase = .replaying(held: held)
                case .live:
                    guard last.offset > subscriber.lastOffset else { continue }
                    if first.offset > subscriber.lastOffset {
                        let frame = shared ?? OutboundFrame(MessageItem.batch(channel: feed.id, items: chunk.map(\.bytes)))
                        shared = frame
                        subscriber.session.send(frame)
                        subscriber.lastOffset = last.offset
                        metrics.deliveries.increment(by: chunk.count)
                    } else {
                        send(Array(chunk), in: feed, to: subscriber)
                    }
                }
            }
        }
    }

    /// Sends the items after the subscriber's last offset in frames of its own.
    private func send(_ items: [ChannelFeed.Item], in feed: ChannelFeed, to subscriber: ChannelFeed.Subscriber) {
        let fresh = items.filter { $0.offset > subscriber.lastOffset }
        for chunk in ChannelFeed.chunks(fresh) {
            subscriber.session.send(OutboundFrame(MessageItem.batch(channel: feed.id, items: chunk.map(\.bytes))))
            metrics.deliveries.increment(by: chunk.count)
        }
        if let last = fresh.last { subscriber.lastOffset = last.offset }
    }
}
