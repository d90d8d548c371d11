import AgentChatCrypto
import AgentChatProtocol
import Logging

/// Channel, key and message requests. Loop-bound.
///
/// Each request is checked and carried out by the store in one atomic step; what changed membership or keys is
/// published as a `channel.event` on the channel's feed, and subscriptions are handed to `ChannelDelivery`.
final class ChannelService {
    private let clock: any BrokerClock
    private let store: any ChannelStoring
    private let agents: any AgentDirectory
    private let bus: any ChannelFeedBus
    private let indicatorStore: any IndicatorStoring
    private let outbox: Outbox
    let delivery: ChannelDelivery

    init(clock: any BrokerClock, stores: Stores, outbox: Outbox, logger: Logger) {
        self.clock = clock
        store = stores.channels
        agents = stores.agents
        bus = stores.feeds
        indicatorStore = stores.indicators
        self.outbox = outbox
        delivery = ChannelDelivery(clock: clock, store: stores.channels, bus: stores.feeds, outbox: outbox,
                                   logger: logger)
    }

    private var codec: FrameCodec { outbox.codec }
    private var metrics: BrokerMetrics { outbox.metrics }

    /// Drops a closed connection's subscriptions.
    func sessionClosed(_ session: Session) { delivery.sessionClosed(session) }

    // MARK: Requests

    func handle(_ request: ChannelRequest, id: String?, from session: Session) {
        guard let did = session.authenticatedDID else { return }
        let reply: (ServerFrame) -> Void = { [outbox, weak session] frame in
            guard let session else { return }
            outbox.send(frame, to: session)
        }
        let refuse: (ProtocolError) -> Void = { error in reply(.error(error, ref: id)) }
        let fail: (ErrorCode, String) -> Void = { code, message in refuse(ProtocolError(code, message)) }
        let storeFailure: (StoreFailure) -> Void = { failure in refuse(ProtocolError(failure)) }

        switch request {
        case .create(let name, let open, let members):
            let others = members.filter { $0 != did }
            requireRegistered(others, refuse: refuse) { [self] in
                let channel = ChannelID(randomBytes: SecureRandom.bytes(16))
                let historyEpoch = Base64URL.encode(SecureRandom.bytes(12))
                store.create(channel, name: name, owner: did, open: open, members: others, historyEpoch: historyEpoch,
                             now: clock.unixMilliseconds) { [self] result in
                    switch result {
                    case .success: describe(channel, for: did, ref: id, reply: reply, fail: fail)
                    case .failure(let failure): storeFailure(failure)
                    }
                }
            }
        case .invite(let channel, let invitee):
            requireRegistered([invitee], refuse: refuse) { [self] in
                store.invite(channel, by: did, invitee) { [self] result in
                    switch result {
                    case .success(let epoch):
                        publishEvent(channel, .memberInvited, invitee, epoch)
                        reply(.ok(ref: id))
                    case .failure(let failure): storeFailure(failure)
                    }
                }
            }
        case .join(let channel):
            store.join(channel, did) { [self] result in
                switch result {
                case .success((let epoch, let changed)):
                    if changed { publishEvent(channel, .memberJoined, did, epoch) }
                    describe(channel, for: did, ref: id, reply: reply, fail: fail)
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .leave(let channel):
            store.leave(channel, did) { [self, weak session] result in
                switch result {
                case .success(let epoch):
                    // This connection stops at once; the agent's others when the event reaches their brokers.
                    if let session { delivery.unsubscribe(session, from: channel) }
                    publishEvent(channel, .memberLeft, did, epoch)
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .remove(let channel, let member):
            store.remove(channel, by: did, member) { [self] result in
                switch result {
                case .success((let epoch, let changed)):
                    if changed { publishEvent(channel, .memberRemoved, member, epoch) }
                    reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .list(let after, let limit):
            channelPage(of: did, after: after, limit: limit, failed: storeFailure) { [self, weak session] page, more in
                describeAll(page, for: did) { [self] descriptions, failed in
                    guard let session else { return }
                    if failed { return storeFailure(.unavailable) }
                    outbox.sendPaced(fittedPage(descriptions, id: \.id, more: more ? page.last : nil,
                                                budget: session.queueLimit / 2) { .channels(ref: id, $0, next: $1) },
                                     type: .channels, to: session)
                }
            }
        case .setCursor(let channel, let offset):
            store.setCursor(channel, for: did, to: offset) { result in
                switch result {
                case .success(let cursor): reply(.cursor(ref: id, cursor))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .unread(let after, let limit):
            channelPage(of: did, after: after, limit: limit, failed: storeFailure) { [self, weak session] page, more in
                store.cursors(page, for: did) { [self] result in
                    guard let session else { return }
                    switch result {
                    case .failure(let failure): storeFailure(failure)
                    case .success(let cursors):
                        outbox.sendPaced(fittedPage(cursors, id: \.channel, more: more ? page.last : nil,
                                                    budget: session.queueLimit / 2) { .unread(ref: id, $0, next: $1) },
                                         type: .unread, to: session)
                    }
                }
            }
        case .describe(let channel):
            describe(channel, for: did, ref: id, reply: reply, fail: fail)
        case .rotate(let channel):
            store.rotate(channel, by: did) { [self] result in
                switch result {
                case .success(let epoch):
                    publishEvent(channel, .epochRotated, did, epoch)
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
                    publishEvent(keys.channel, .keysPublished, did, epoch)
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
                    case .failure(let failure): storeFailure(failure)
                    case .success(let keys?):
                        guard keys.envelopes[did.description] != nil, let sender = DID(parsing: keys.sender) else {
                            return fail(.notFound, "no keys for you in epoch \(epoch)")
                        }
                        reply(.keys(ref: id, channel: channel, epoch: epoch, sender: sender, signature: keys.signature,
                                    envelopes: keys.envelopes))
                    case .success(nil): fail(.notFound, "no keys published for epoch \(epoch)")
                    }
                }
            }
        case .send(let message):
            let now = clock.unixMilliseconds
            let suffix = MessageItem.suffix(message, sender: did, timestamp: now)
            store.append(message, sender: did, suffix: suffix, now: now) { [self] result in
                switch result {
                case .success(.stored(let offset, let listed)):
                    metrics.messageStored()
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
                    delivery.subscribe(session, did: did, to: channel, after: start) { [weak session] in
                        guard session?.isOpen == true else { return }
                        reply(.subscribed(ref: id, channel: channel, historyEpoch: state.historyEpoch,
                                          offset: state.offset, recovered: recovered))
                    }
                }
            }
        case .unsubscribe(let channel):
            delivery.unsubscribe(session, from: channel)
            reply(.ok(ref: id))
        case .listing(let channel, let listed, let title, let topic):
            indicatorStore.setListing(channel, owner: did, listed: listed, title: title, topic: topic,
                                      now: clock.unixMilliseconds) { result in
                switch result {
                case .success: reply(.ok(ref: id))
                case .failure(let failure): storeFailure(failure)
                }
            }
        case .history(let channel, let before, let after, let limit):
            store.state(channel, for: did) { [self, weak session] result in
                guard let session else { return }
                if case .failure(let failure) = result { return storeFailure(failure) }
                let deliver: StoreCompletion<[ChannelItem]> = { [outbox] items in
                    switch items {
                    case .failure(let failure): storeFailure(failure)
                    case .success(let items):
                        outbox.sendPaced(Self.historyPage(items, channel: channel, ref: id,
                                                          budget: session.queueLimit / 2), type: .messages, to: session)
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
    static func historyPage(_ items: [ChannelItem], channel: ChannelID, ref: String?, budget: Int) -> OutboundFrame {
        var size = 128 + channel.rawValue.utf8.count + (ref?.utf8.count ?? 0)
        var kept = 0
        for item in items {
            if kept > 0, size + item.bytes.count + 1 > budget { break }
            size += item.bytes.count + 1
            kept += 1
        }
        let next = kept < items.count ? items[kept - 1].offset : nil
        return OutboundFrame(MessageItem.batch(channel: channel, items: items[..<kept].lazy.map(\.bytes), ref: ref,
                                               next: next))
    }

    /// The ids of `did`'s channels after `after` (in id order), at most `limit`, and whether more follow.
    private func channelPage(of did: DID, after: ChannelID?, limit: Int, failed: @escaping (StoreFailure) -> Void,
                             then next: @escaping (_ page: [ChannelID], _ more: Bool) -> Void)
    {
        store.channels(of: did) { result in
            switch result {
            case .failure(let failure): failed(failure)
            case .success(let ids):
                let rest = ids.filter { after == nil || $0.rawValue > after!.rawValue }
                next(Array(rest.prefix(limit)), rest.count > limit)
            }
        }
    }

    /// A reply over the agent's channels (`channels`, `unread`) with as many entries as fit in `budget` bytes (at
    /// least one), and `next` when more may follow: the id of the last entry kept when cut here, else `more`.
    private func fittedPage<Entry>(_ entries: [Entry], id: (Entry) -> ChannelID, more: ChannelID?, budget: Int,
                                   frame: ([Entry], ChannelID?) -> ServerFrame) -> OutboundFrame
    {
        var kept = entries.count
        var bytes = codec.encode(frame(entries, more))
        while bytes.count > budget, kept > 1 {
            kept = max(1, min(kept - 1, kept * budget / bytes.count))
            bytes = codec.encode(frame(Array(entries.prefix(kept)), id(entries[kept - 1])))
        }
        return OutboundFrame(bytes)
    }

    /// Where a resuming subscriber starts (the offset after which it is sent messages) and whether that covers
    /// everything it missed.
    static func resumePoint(state: ChannelState, since: Int64?, historyEpoch: String?) -> (Int64, Bool) {
        guard let since else { return (state.offset, true) }
        if let historyEpoch, historyEpoch != state.historyEpoch {
            return (max(0, state.firstOffset - 1), false)  // a different history: everything retained, not recovered
        }
        if since >= state.offset { return (state.offset, since == state.offset) }
        if state.firstOffset == 0 { return (state.offset, false) }  // everything after `since` was trimmed
        return (max(since, state.firstOffset - 1), state.firstOffset <= since + 1)
    }

    private func requireRegistered(_ dids: [DID], refuse: @escaping (ProtocolError) -> Void,
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
                if storeDown { return refuse(ProtocolError(StoreFailure.unavailable)) }
                if let missing { return refuse(ProtocolError(.unknownAgent, "\(missing) is not registered")) }
                next()
            }
        }
    }

    private func describe(_ channel: ChannelID, for did: DID, ref: String?, reply: @escaping (ServerFrame) -> Void,
                          fail: @escaping (ErrorCode, String) -> Void)
    {
        describeAll([channel], for: did) { descriptions, failed in
            if failed { return fail(.unavailable, ProtocolError(StoreFailure.unavailable).message) }
            guard let description = descriptions.first else { return fail(.notFound, "no such channel") }
            reply(.channel(ref: ref, description))
        }
    }

    /// Descriptions of the channels `did` is a member of, in the order given; others are left out. `failed`: some
    /// lookup failed (the store did not answer), so channels or members may be missing.
    private func describeAll(_ ids: [ChannelID], for did: DID,
                             completion: @escaping (_ descriptions: [ChannelDescription], _ failed: Bool) -> Void)
    {
        guard !ids.isEmpty else { return completion([], false) }
        var results: [ChannelID: ChannelDescription] = [:]
        var failed = false
        var remaining = ids.count
        let finish = {
            remaining -= 1
            if remaining == 0 { completion(ids.compactMap { results[$0] }, failed) }
        }
        for channel in ids {
            store.record(channel) { [self] result in
                if case .failure = result { failed = true }
                guard case .success(let meta?) = result, meta.members.contains(did) else { return finish() }
                var profiles: [DID: AgentProfile] = [:]
                var pendingProfiles = meta.members.count
                for member in meta.members {
                    agents.profile(member) { profile in
                        switch profile {
                        case .success(let profile?): profiles[member] = profile
                        case .success(nil): break
                        case .failure: failed = true
                        }
                        pendingProfiles -= 1
                        guard pendingProfiles == 0 else { return }
                        let members = meta.members.sorted { $0.description < $1.description }.compactMap { did in
                            profiles[did].map {
                                ChannelDescription.Member(did: did, name: $0.name, encryptionKey: $0.encryptionKey,
                                                          registration: $0.registration)
                            }
                        }
                        results[channel] = ChannelDescription(
                            id: channel, name: meta.name, owner: meta.owner, open: meta.open, epoch: meta.epoch,
                            keyedEpoch: meta.keyedEpoch, offset: meta.offset, historyEpoch: meta.historyEpoch,
                            members: members)
                        finish()
                    }
                }
            }
        }
    }

    private func publishEvent(_ channel: ChannelID, _ kind: ChannelEvent.Kind, _ did: DID, _ epoch: Int64) {
        bus.publish(ChannelEvent(channel: channel, kind: kind, did: did, epoch: epoch))
    }
}
