import AgentChatCore
import AgentChatProtocol

/// Channels, membership, keys and history in memory, by the rules of `ChannelStore`'s Lua scripts: epochs (every
/// membership change and rotation starts one), `keyedEpoch`, invitations, the owner hand-over to the bytewise-smallest
/// remaining member, the 1,000-member cap, dedup by client message id within the window, offsets from 1, trimming by
/// count and age, and the agent → channels index. `append` publishes the stored item on the feed twin in the same
/// step, as the script does.
package final class InMemoryChannelStore: InMemoryStore, ChannelStoring {
    /// One channel's keys, as the scripts keep them.
    package struct StoredChannel {
        package var name: String
        package var owner: DID
        package var open: Bool
        package var createdAt: Int64
        package var historyEpoch: String
        package var epoch: Int64 = 1
        package var keyedEpoch: Int64 = 0
        /// The latest offset (`seq`).
        package var seq: Int64 = 0
        package var lastActivity: Int64?
        package var listed = false
        package var title = ""
        package var topic = ""
        package var members: Set<DID>
        package var invites: Set<DID> = []
        /// Read cursors (`ch:{id}:cursors`): member → last offset read; absent means 0.
        package var cursors: [DID: Int64] = [:]
        package var keys: [Int64: StoredKeys] = [:]
        /// The stream: offset, stored bytes, time (ms).
        package var log: [(offset: Int64, bytes: [UInt8], time: Int64)] = []
        /// Messages per Unix second, and when the hash expires (store time).
        package var rate: [Int64: Int64] = [:]
        package var rateExpiresAt: Int64 = 0
    }

    package let limits: ChannelLimits
    private let feeds: InMemoryFeedBus
    package private(set) var channels: [ChannelID: StoredChannel] = [:]
    /// Dedup keys: channel, sender, client message id → offset and expiry (store time).
    private var dedup: [String: (offset: Int64, expiresAt: Int64)] = [:]
    /// The agent → channels index (`agent:{did}:channels`).
    package private(set) var agentChannels: [DID: Set<ChannelID>] = [:]

    package init(clock: ManualClock, feeds: InMemoryFeedBus, limits: ChannelLimits = ChannelLimits()) {
        self.feeds = feeds
        self.limits = limits
        super.init(clock: clock)
    }

    // MARK: For tests and the other twins

    /// The stored items of a channel, oldest first.
    package func items(_ id: ChannelID) -> [ChannelItem] {
        channels[id]?.log.map { ChannelItem(offset: $0.offset, bytes: $0.bytes) } ?? []
    }

    /// Changes a channel's stored state directly (the indicator twin's listing, test set-ups).
    package func update(_ id: ChannelID, _ body: (inout StoredChannel) -> Void) {
        guard var channel = channels[id] else { return }
        body(&channel)
        channels[id] = channel
    }

    // MARK: ChannelStoring

    package func create(_ id: ChannelID, name: String, owner: DID, open: Bool, members: [DID], historyEpoch: String,
                        now: Int64, completion: @escaping StoreCompletion<Void>)
    {
        perform("create", completion) { [self] in
            guard channels[id] == nil else { return .failure(.refused(.forbidden)) }
            channels[id] = StoredChannel(name: name, owner: owner, open: open, createdAt: now,
                                         historyEpoch: historyEpoch, members: Set([owner] + members))
            index(id, add: [owner] + members)
            return .success(())
        }
    }

    package func invite(_ id: ChannelID, by inviter: DID, _ did: DID, completion: @escaping StoreCompletion<Int64>) {
        perform("invite", completion) { [self] in
            guard var channel = channels[id], channel.members.contains(inviter) else {
                return .failure(.refused(.notFound))
            }
            if !channel.members.contains(did) { channel.invites.insert(did) }
            channels[id] = channel
            return .success(channel.epoch)
        }
    }

    package func join(_ id: ChannelID, _ did: DID,
                      completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    {
        perform("join", completion) { [self] in
            guard var channel = channels[id] else { return .failure(.refused(.notFound)) }
            if channel.members.contains(did) { return .success((channel.epoch, false)) }
            guard channel.open || channel.invites.contains(did) else { return .failure(.refused(.hidden)) }
            guard channel.members.count < ChannelKeys.maxMembers else {
                return .failure(.refused(.full, epoch: channel.epoch))
            }
            channel.invites.remove(did)
            channel.members.insert(did)
            channel.cursors[did] = channel.seq
            channel.epoch += 1
            channels[id] = channel
            index(id, add: [did])
            return .success((channel.epoch, true))
        }
    }

    package func leave(_ id: ChannelID, _ did: DID, completion: @escaping StoreCompletion<Int64>) {
        perform("leave", completion) { [self] in
            guard var channel = channels[id], channel.members.remove(did) != nil else {
                return .failure(.refused(.notFound))
            }
            channel.cursors[did] = nil
            if channel.owner == did, let next = channel.members.min(by: { Self.bytewiseLess($0, $1) }) {
                channel.owner = next
            }
            channel.epoch += 1
            channels[id] = channel
            index(id, remove: did)
            return .success(channel.epoch)
        }
    }

    package func rotate(_ id: ChannelID, by did: DID, completion: @escaping StoreCompletion<Int64>) {
        perform("rotate", completion) { [self] in
            guard var channel = channels[id], channel.members.contains(did) else { return .failure(.refused(.notFound)) }
            channel.epoch += 1
            channels[id] = channel
            return .success(channel.epoch)
        }
    }

    package func remove(_ id: ChannelID, by owner: DID, _ did: DID,
                        completion: @escaping StoreCompletion<(epoch: Int64, changed: Bool)>)
    {
        perform("remove", completion) { [self] in
            guard var channel = channels[id], channel.members.contains(owner) else {
                return .failure(.refused(.notFound))
            }
            guard channel.owner == owner else { return .failure(.refused(.forbidden)) }
            guard did != owner else { return .failure(.refused(.ownerSelf)) }
            channel.invites.remove(did)
            guard channel.members.remove(did) != nil else {
                channels[id] = channel
                return .success((channel.epoch, false))
            }
            channel.cursors[did] = nil
            channel.epoch += 1
            channels[id] = channel
            index(id, remove: did)
            return .success((channel.epoch, true))
        }
    }

    package func publishKeys(_ keys: ChannelKeys, sender: DID, completion: @escaping StoreCompletion<Int64>) {
        perform("publishKeys", completion) { [self] in
            guard var channel = channels[keys.channel], channel.members.contains(sender) else {
                return .failure(.refused(.notFound))
            }
            let epoch = channel.epoch
            guard keys.epoch == epoch else { return .failure(.refused(.staleEpoch, epoch: epoch)) }
            guard channel.keyedEpoch < epoch else { return .failure(.refused(.keysExist, epoch: epoch)) }
            guard keys.envelopes.count == channel.members.count,
                keys.envelopes.keys.allSatisfy(channel.members.contains)
            else { return .failure(.refused(.staleEpoch, epoch: epoch)) }
            channel.keys[epoch] = StoredKeys(
                sender: sender.description, signature: keys.signature,
                envelopes: Dictionary(uniqueKeysWithValues: keys.envelopes.map { ($0.key.description, $0.value) }))
            channel.keyedEpoch = epoch
            channels[keys.channel] = channel
            return .success(epoch)
        }
    }

    package func keys(_ id: ChannelID, epoch: Int64, completion: @escaping StoreCompletion<StoredKeys?>) {
        perform("keys", completion) { [self] in .success(channels[id]?.keys[epoch]) }
    }

    package func append(_ message: MessageSend, sender: DID, suffix: [UInt8], now: Int64,
                        completion: @escaping StoreCompletion<AppendOutcome>)
    {
        perform("append", completion) { [self] in
            let id = message.channel
            guard var channel = channels[id], channel.members.contains(sender) else {
                // A private channel the sender is not in is as if it did not exist.
                return .failure(.refused(channels[id]?.open == true ? .notMember : .notFound))
            }
            guard message.epoch == channel.epoch, channel.keyedEpoch == channel.epoch else {
                return .failure(.refused(.staleEpoch, epoch: channel.epoch))
            }
            let dedupKey = "\(id)\n\(sender)\n\(message.clientMessageID)"
            if let existing = dedup[dedupKey], existing.expiresAt > storeMilliseconds {
                return .success(.duplicate(offset: existing.offset))
            }
            channel.seq += 1
            let offset = channel.seq
            let item = MessageItem.prefix + Array(String(offset).utf8) + suffix
            channel.log.append((offset, item, now))
            if channel.log.count > limits.historyMaxCount {
                channel.log.removeFirst(channel.log.count - limits.historyMaxCount)
            }
            // Age trim: the oldest entries only, at most 100 a call.
            let oldest = now - limits.historyMaxAgeMilliseconds
            var dropped = 0
            while dropped < 100, let first = channel.log.first, first.time < oldest {
                channel.log.removeFirst()
                dropped += 1
            }
            dedup[dedupKey] = (offset, storeMilliseconds + limits.dedupWindowMilliseconds)
            channel.lastActivity = now
            if channel.listed {  // counted for the indicators only while listed
                if channel.rateExpiresAt <= storeMilliseconds { channel.rate = [:] }
                channel.rate[now / 1000, default: 0] += 1
                channel.rateExpiresAt = storeMilliseconds + 120_000
            }
            channels[id] = channel
            feeds.deliver(.item(ChannelItem(offset: offset, bytes: item)), on: id)
            return .success(.stored(offset: offset, listed: channel.listed))
        }
    }

    package func state(_ id: ChannelID, for did: DID, completion: @escaping StoreCompletion<ChannelState>) {
        perform("state", completion) { [self] in
            guard let channel = channels[id], channel.members.contains(did) else { return .failure(.refused(.notFound)) }
            return .success(ChannelState(historyEpoch: channel.historyEpoch, offset: channel.seq,
                                         firstOffset: channel.log.first?.offset ?? 0, epoch: channel.epoch,
                                         keyedEpoch: channel.keyedEpoch))
        }
    }

    package func range(_ id: ChannelID, after: Int64, count: Int, completion: @escaping StoreCompletion<[ChannelItem]>) {
        perform("range", completion) { [self] in
            .success(Array(items(id).filter { $0.offset > after }.prefix(max(count, 0))))
        }
    }

    package func reverseRange(_ id: ChannelID, before: Int64?, count: Int,
                              completion: @escaping StoreCompletion<[ChannelItem]>)
    {
        perform("reverseRange", completion) { [self] in
            let end = before.map { max(0, $0 - 1) } ?? .max
            return .success(Array(items(id).filter { $0.offset <= end }.reversed().prefix(max(count, 0))))
        }
    }

    package func record(_ id: ChannelID, completion: @escaping StoreCompletion<ChannelRecord?>) {
        perform("record", completion) { [self] in
            .success(channels[id].map { channel in
                ChannelRecord(name: channel.name, owner: channel.owner, open: channel.open, epoch: channel.epoch,
                              keyedEpoch: channel.keyedEpoch, offset: channel.seq, historyEpoch: channel.historyEpoch,
                              members: channel.members.sorted { Self.bytewiseLess($0, $1) })
            })
        }
    }

    package func channels(of did: DID, completion: @escaping StoreCompletion<[ChannelID]>) {
        perform("channels", completion) { [self] in
            .success((agentChannels[did] ?? []).sorted { $0.rawValue < $1.rawValue })
        }
    }

    package func setCursor(_ id: ChannelID, for did: DID, to offset: Int64,
                           completion: @escaping StoreCompletion<ReadCursor>)
    {
        perform("setCursor", completion) { [self] in
            guard var channel = channels[id], channel.members.contains(did) else { return .failure(.refused(.notFound)) }
            guard offset <= channel.seq else { return .failure(.refused(.beyondLatest, epoch: channel.seq)) }
            if offset > channel.cursors[did, default: 0] { channel.cursors[did] = offset }
            channels[id] = channel
            return .success(Self.cursor(id, channel, did).withoutName)
        }
    }

    package func cursors(_ ids: [ChannelID], for did: DID, completion: @escaping StoreCompletion<[ReadCursor]>) {
        perform("cursors", completion) { [self] in
            .success(ids.compactMap { id in
                channels[id].flatMap { $0.members.contains(did) ? Self.cursor(id, $0, did) : nil }
            })
        }
    }

    private static func cursor(_ id: ChannelID, _ channel: StoredChannel, _ did: DID) -> ReadCursor {
        ReadCursor(channel: id, name: channel.name, read: channel.cursors[did, default: 0], offset: channel.seq,
                   firstOffset: channel.log.first?.offset ?? 0)
    }

    // MARK: Helpers

    private func index(_ id: ChannelID, add: [DID] = [], remove: DID? = nil) {
        for did in add { agentChannels[did, default: []].insert(id) }
        if let remove { agentChannels[remove]?.remove(id) }
    }

    /// Bytewise order of DIDs, as the leave script compares them.
    package static func bytewiseLess(_ a: DID, _ b: DID) -> Bool {
        a.description.utf8.lexicographicallyPrecedes(b.description.utf8)
    }
}
