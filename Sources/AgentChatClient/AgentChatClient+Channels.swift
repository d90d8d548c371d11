import AgentChatCrypto
import AgentChatProtocol
import Foundation

/// A channel key's place in the cache.
struct EpochKeyID: Hashable, Sendable {
    let channel: ChannelID
    let epoch: Int64
}

/// What a subscription's worker receives, in the order the broker sent it.
enum SubscriptionInbound: Sendable {
    case items([StoredMessage])
    case event(ChannelStreamEvent)
    case end(AgentChatError?)
}

/// One live subscription: resume point and the worker's inbox.
struct ChannelSubscription: Sendable {
    let token: Int
    /// The highest offset received from the broker (queued for the worker); nil before the first `subscribed`.
    var lastReceived: Int64?
    var historyEpoch: String?
    /// The `since` of the latest subscribe request.
    var requestedSince: Int64?
    var isReconnect = false
    /// The next item may skip offsets: the broker said it could not recover everything (`recovered: false`).
    var acceptsJump = false
    /// A gap was seen and a new `channel.subscribe` is on its way: items are dropped until its `subscribed`.
    var repairing = false
    let inbox: AsyncStream<SubscriptionInbound>.Continuation
}

/// The actor's channel state (all of it isolated to the ``AgentChatClient`` actor).
struct ChannelClientState: Sendable {
    /// Channel keys per (channel, epoch), in memory only.
    var keys: [EpochKeyID: [UInt8]] = [:]
    /// The epoch this client last sent in (or keyed), per channel: the send fast path.
    var sendEpoch: [ChannelID: Int64] = [:]
    var subscriptions: [ChannelID: ChannelSubscription] = [:]
    var statistics = ChannelStatistics()
    var nextToken = 0
}

extension AgentChatClient {
    /// How many times ``send(channel:bytes:clientMessageID:)`` tries before giving up.
    static let maxSendAttempts = 6
    /// How many times key publication is retried when membership changes underneath it.
    static let maxKeyingAttempts = 5

    /// What the SDK did on its own: keys published and fetched, stale-epoch retries, resubscriptions.
    public var channelStatistics: ChannelStatistics { channelState.statistics }

    // MARK: - Membership

    /// Creates a channel owned by this agent (`channel.create`) and publishes the first epoch's keys.
    ///
    /// - Throws: `unknown_agent` for a member that is not registered, `invalid_field`, `not_connected`, ...;
    ///   ``AgentChatError/memberKeyUnverified`` when a member's encryption key does not verify against its
    ///   registration signature: the channel exists then (``AgentChatError/channel``), but no key was sealed.
    public func createChannel(name: String, open: Bool = false, members: [DID] = []) async throws(AgentChatError)
        -> ChannelDescription
    {
        let description = try Self.channelDescription(in: try await call(.create(name: name, open: open,
                                                                                  members: members)))
        try await prepareKeys(description.id)
        return description
    }

    /// Invites `did` (any member may invite). The invitee becomes a member with ``join(channel:)``.
    public func invite(channel: ChannelID, did: DID) async throws(AgentChatError) {
        _ = try await call(.invite(channel, did))
    }

    /// Joins an open channel, or one this agent was invited to; publishes the new epoch's keys.
    /// Throws ``AgentChatError/memberKeyUnverified`` (after joining) when a member's key does not verify.
    @discardableResult
    public func join(channel: ChannelID) async throws(AgentChatError) -> ChannelDescription {
        let description = try Self.channelDescription(in: try await call(.join(channel)))
        try await prepareKeys(channel)
        return description
    }

    /// Leaves the channel; ends its subscription.
    public func leave(channel: ChannelID) async throws(AgentChatError) {
        _ = try await call(.leave(channel))
        channelState.sendEpoch[channel] = nil
        endSubscription(channel, with: .server("not_member", "left the channel"))
    }

    /// Lists the channel publicly (owner only): viewers see its title, topic and activity, never its content.
    /// `listed: false` hides it again.
    public func setListing(channel: ChannelID, listed: Bool, title: String = "", topic: String = "")
        async throws(AgentChatError)
    {
        _ = try await call(.listing(channel, listed: listed, title: title, topic: topic))
    }

    /// Starts a new key epoch for the same members (`channel.rotate`) and, unless `keying` is false, publishes its
    /// keys: after a key may have leaked, or when this agent cannot open its envelope of the current epoch (the
    /// SDK then rotates by itself). Throws ``AgentChatError/memberKeyUnverified`` (after rotating) when a member's
    /// key does not verify.
    public func rotate(channel: ChannelID, keying: Bool = true) async throws(AgentChatError) {
        _ = try await call(.rotate(channel))
        channelState.sendEpoch[channel] = nil
        if keying { try await prepareKeys(channel) }
    }

    /// Removes a member (owner only); publishes the new epoch's keys, without the removed member.
    /// Throws ``AgentChatError/memberKeyUnverified`` (after removing) when a remaining member's key does not verify.
    public func remove(channel: ChannelID, did: DID) async throws(AgentChatError) {
        _ = try await call(.remove(channel, did))
        try await prepareKeys(channel)
    }

    /// The channels this agent is a member of (every page of `channel.list`).
    public func listChannels() async throws(AgentChatError) -> [ChannelDescription] {
        var descriptions: [ChannelDescription] = []
        var after: ChannelID?
        repeat {
            let reply = try await call(.list(after: after, limit: 100))
            guard case .channels(_, let page, let next) = reply else {
                throw .protocolViolation("expected channels, got \(reply.type.rawValue)")
            }
            descriptions.append(contentsOf: page)
            guard next == nil || next != after else { throw .protocolViolation("channel.list did not move on") }
            after = next
        } while after != nil
        return descriptions
    }

    /// Moves this agent's read cursor in `channel` forward to `offset` (the last offset it has read), for every
    /// connection of the agent; a lower offset leaves it where it is. Answers the cursor as it now stands.
    /// Throws `invalid_field` for an offset past the channel's latest.
    @discardableResult
    public func setReadCursor(channel: ChannelID, offset: Int64) async throws(AgentChatError) -> ReadCursor {
        let reply = try await call(.setCursor(channel, offset: offset))
        guard case .cursor(_, let cursor) = reply else {
            throw .protocolViolation("expected cursor, got \(reply.type.rawValue)")
        }
        return cursor
    }

    /// This agent's read cursor and unread count in each of its channels, in channel-id order (every page of
    /// `unread.list`).
    public func unreadCounts() async throws(AgentChatError) -> [ReadCursor] {
        var cursors: [ReadCursor] = []
        var after: ChannelID?
        repeat {
            let reply = try await call(.unread(after: after, limit: 100))
            guard case .unread(_, let page, let next) = reply else {
                throw .protocolViolation("expected unread, got \(reply.type.rawValue)")
            }
            cursors.append(contentsOf: page)
            guard next == nil || next != after else { throw .protocolViolation("unread.list did not move on") }
            after = next
        } while after != nil
        return cursors
    }

    /// The channel's description: members (with their encryption keys), epochs, latest offset.
    public func describe(channel: ChannelID) async throws(AgentChatError) -> ChannelDescription {
        try Self.channelDescription(in: try await call(.describe(channel)))
    }

    // MARK: - Sending

    /// Encrypts `text` under the channel's current epoch key (making and publishing one if needed), signs it and
    /// sends it. Retries by itself after `stale_epoch` (re-keying) and after a dropped connection, with the same
    /// `clientMessageId`, so a retry is never stored twice.
    @discardableResult
    public func send(channel: ChannelID, text: String) async throws(AgentChatError) -> SendReceipt {
        try await send(channel: channel, bytes: Array(text.utf8))
    }

    /// Like ``send(channel:text:)`` for bytes; `clientMessageID` (1–64 characters) defaults to 16 random bytes in
    /// base64url.
    @discardableResult
    public func send(channel: ChannelID, bytes: [UInt8], clientMessageID: String? = nil) async throws(AgentChatError)
        -> SendReceipt
    {
        let messageID = clientMessageID ?? Base64URL.encode(SecureRandom.bytes(16))
        guard !messageID.isEmpty, messageID.utf8.count <= MessageSend.maxClientMessageIDBytes else {
            throw .invalidArgument("a clientMessageId has 1 to \(MessageSend.maxClientMessageIDBytes) bytes")
        }
        guard bytes.count + AES256GCM.tagLength <= MessageSend.maxCiphertextBytes else {
            throw .invalidArgument("a message holds at most \(MessageSend.maxCiphertextBytes - AES256GCM.tagLength) bytes")
        }
        var refresh = false
        var lastError = AgentChatError.notConnected
        for attempt in 0..<Self.maxSendAttempts {
            do throws(AgentChatError) {
                if attempt > 0 { try await waitForConnection() }
                let (epoch, key) = try await sendingKey(channel, refresh: refresh)
                refresh = false
                let message = try sealMessage(bytes, channel: channel, epoch: epoch, key: key,
                                              clientMessageID: messageID)
                let ack = try await call(.send(message))
                guard case .messageAck(_, _, let offset, let duplicate) = ack else {
                    throw .protocolViolation("expected message.ack, got \(ack.type.rawValue)")
                }
                return SendReceipt(channel: channel, offset: offset, duplicate: duplicate,
                                   clientMessageID: messageID, epoch: epoch)
            } catch {
                lastError = error
                if error.code == "stale_epoch" {
                    channelState.statistics.staleEpochRetries += 1
                    channelState.sendEpoch[channel] = nil
                    refresh = true
                    continue
                }
                let transient = error.category == .network || error.code == AgentChatError.Codes.notConnected
                    || error.code == "unavailable"
                if transient && configuration.autoReconnect { continue }
                throw error
            }
        }
        throw lastError
    }

    private func sealMessage(_ plaintext: [UInt8], channel: ChannelID, epoch: Int64, key: [UInt8],
                             clientMessageID: String) throws(AgentChatError) -> MessageSend
    {
        let nonce = SecureRandom.bytes(AES256GCM.nonceLength)
        let associatedData = MessageSend.associatedData(channel: channel, epoch: epoch, sender: identity.did,
                                                        clientMessageID: clientMessageID)
        let sealed: [UInt8]
        do {
            sealed = try AES256GCM.seal(plaintext, key: key, nonce: nonce, associatedData: associatedData)
        } catch {
            throw AgentChatError(code: "crypto_error", category: .invalidArgument, message: "encryption failed: \(error)")
        }
        let nonceText = Base64URL.encode(nonce)
        let ciphertext = Base64URL.encode(sealed)
        let signature = identity.sign(MessageSend.signedBytes(channel: channel, epoch: epoch,
                                                              clientMessageID: clientMessageID, nonce: nonceText,
                                                              ciphertext: ciphertext))
        return MessageSend(channel: channel, epoch: epoch, clientMessageID: clientMessageID, nonce: nonceText,
                           ciphertext: ciphertext, signature: Base64URL.encode(signature))
    }

    /// Waits (up to the request and connect timeouts) for a reconnection in progress.
    func waitForConnection() async throws(AgentChatError) {
        let deadline = ContinuousClock.now + .seconds(configuration.requestTimeout + configuration.connectTimeout)
        while true {
            switch state {
            case .connected: return
            case .closed: throw .closed
            case .failed(let error): throw error
            case .disconnected: throw .notConnected
            case .connecting, .authenticating, .reconnecting: break
            }
            if ContinuousClock.now >= deadline {
                throw AgentChatError(code: AgentChatError.Codes.timeout, category: .network,
                                     message: "not reconnected in time")
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
    }

    // MARK: - Keys

    /// Makes sure the channel's current epoch has keys and this client holds them. Best effort, except that a
    /// member whose key does not verify is an error: the caller must learn that nothing was sealed.
    func prepareKeys(_ channel: ChannelID) async throws(AgentChatError) {
        do {
            _ = try await sendingKey(channel, refresh: true)
        } catch where error.code == AgentChatError.Codes.memberKeyUnverified {
            throw error
        } catch {}
    }

    /// The current epoch and its key: cached, fetched (`channel.keys.get`) or made and published (`channel.keys`).
    func sendingKey(_ channel: ChannelID, refresh: Bool) async throws(AgentChatError) -> (Int64, [UInt8]) {
        if !refresh, let epoch = channelState.sendEpoch[channel],
            let key = channelState.keys[EpochKeyID(channel: channel, epoch: epoch)]
        {
            return (epoch, key)
        }
        var lastError = AgentChatError.server("stale_epoch", "membership kept changing while keying")
        for _ in 0..<Self.maxKeyingAttempts {
            let description = try await describe(channel: channel)
            let members = Set(description.members.map(\.did))
            if description.keyedEpoch >= description.epoch {
                do throws(AgentChatError) {
                    let key = try await epochKey(channel, epoch: description.epoch, currentMembers: members)
                    channelState.sendEpoch[channel] = description.epoch
                    return (description.epoch, key)
                } catch where error.code == AgentChatError.Codes.keyVerificationFailed {
                    // The current key set cannot be used by this agent: start a new epoch and key it afresh.
                    lastError = error
                    try await rotate(channel: channel, keying: false)
                    continue
                }
            }
            do throws(AgentChatError) {
                let key = try await publishKeys(description)
                return (description.epoch, key)
            } catch where error.code == "keys_exist" {
                let key = try await epochKey(channel, epoch: description.epoch, currentMembers: members)
                channelState.sendEpoch[channel] = description.epoch
                return (description.epoch, key)
            } catch where error.code == "stale_epoch" {
                lastError = error
                continue
            }
        }
        throw lastError
    }

    /// Makes a random key for the description's epoch, seals it for every member, signs and publishes it.
    ///
    /// Every member's encryption key must first verify against its registration self-signature (the broker could
    /// otherwise substitute a key of its own); one that does not stops the whole set, since the envelopes must
    /// cover exactly the members: nothing is sealed, nothing is sent.
    private func publishKeys(_ description: ChannelDescription) async throws(AgentChatError) -> [UInt8] {
        for member in description.members {
            let check = member.verifyRegistration()
            guard check == .valid else {
                throw .memberKeyUnverified(member.did, channel: description.id, epoch: description.epoch, check)
            }
        }
        let key = SecureRandom.bytes(AES256GCM.keyLength)
        var envelopes: [DID: String] = [:]
        for member in description.members {
            guard let sealed = try? EncryptionKeyPair.sealForRecipient(key, recipientPublicKey: member.encryptionKey)
            else { throw .protocolViolation("cannot seal a key for \(member.did)") }
            envelopes[member.did] = Base64URL.encode(sealed)
        }
        guard envelopes[identity.did] != nil else {
            throw .server("not_member", "this agent is not a member of \(description.id)")
        }
        let signed = ChannelKeys.signedBytes(channel: description.id, epoch: description.epoch,
                                             envelopes: Dictionary(uniqueKeysWithValues: envelopes.map {
                                                 ($0.key.description, $0.value)
                                             }))
        _ = try await call(.publishKeys(ChannelKeys(channel: description.id, epoch: description.epoch,
                                                    envelopes: envelopes,
                                                    signature: Base64URL.encode(identity.sign(signed)))))
        channelState.keys[EpochKeyID(channel: description.id, epoch: description.epoch)] = key
        channelState.sendEpoch[description.id] = description.epoch
        channelState.statistics.keysPublished += 1
        return key
    }

    /// The key of one epoch: from the cache, or fetched with `channel.keys.get`, verified and opened.
    ///
    /// Verification: the key set's signature (over `ChannelKeys.signedBytes`) verifies with the sender's DID; the
    /// sender is among the epoch's recipients (the broker accepts a set only when it covers exactly the members,
    /// so the sender was a member then); for the current epoch, the sender is a current member.
    func epochKey(_ channel: ChannelID, epoch: Int64, currentMembers: Set<DID>? = nil) async throws(AgentChatError)
        -> [UInt8]
    {
        if let key = channelState.keys[EpochKeyID(channel: channel, epoch: epoch)] { return key }
        let reply = try await call(.getKeys(channel, epoch: epoch))
        let key = try Self.openKeySet(reply, channel: channel, epoch: epoch, recipient: identity,
                                      currentMembers: currentMembers)
        channelState.keys[EpochKeyID(channel: channel, epoch: epoch)] = key
        channelState.statistics.keysFetched += 1
        return key
    }

    static func openKeySet(_ reply: ServerFrame, channel: ChannelID, epoch: Int64, recipient: AgentIdentity,
                           currentMembers: Set<DID>?) throws(AgentChatError) -> [UInt8]
    {
        func refuse(_ why: String) -> AgentChatError {
            AgentChatError(code: AgentChatError.Codes.keyVerificationFailed, category: .protocolViolation,
                           message: "keys for \(channel) epoch \(epoch): \(why)")
        }
        guard case .keys(_, let replyChannel, let replyEpoch, let sender, let signatureText, let envelopes) = reply,
            replyChannel == channel, replyEpoch == epoch
        else { throw refuse("the answer is not the requested key set") }
        guard let signature = Base64URL.decode(signatureText) else { throw refuse("the signature is not base64url") }
        let signed = ChannelKeys.signedBytes(channel: channel, epoch: epoch, envelopes: envelopes)
        guard SigningKeyPair.verify(signature: signature, message: signed, publicKey: sender.signingKey) else {
            throw refuse("the signature does not verify with the sender's key")
        }
        guard envelopes[sender.description] != nil else { throw refuse("the sender was not a member of the epoch") }
        if let currentMembers, !currentMembers.contains(sender) {
            throw refuse("the sender is not a member")
        }
        guard let mine = envelopes[recipient.did.description].flatMap(Base64URL.decode) else {
            throw .server("not_found", "no envelope for this agent")
        }
        guard let key = try? recipient.encryptionKeyPair.openSealed(mine), key.count == AES256GCM.keyLength else {
            throw refuse("this agent's envelope does not open")
        }
        return key
    }

    // MARK: - Receiving

    /// Subscribes to the channel: the stream delivers `.subscribed` (with `recovered`), then every message after
    /// `since` (default: only new ones) in offset order, decrypted and verified, then live messages. After a
    /// reconnection the SDK resubscribes from the last offset received by itself (another `.subscribed` element;
    /// `recovered: false` there means messages were lost). Offsets are delivered at most once. A stream that skips
    /// an offset unannounced is treated as a gap: the SDK subscribes again from the last offset received (another
    /// `.subscribed` element) and counts it in ``ChannelStatistics/gapsRepaired``.
    ///
    /// Ending the stream (cancelling its consumer) unsubscribes. A second subscription to the same channel ends
    /// the first.
    public func subscribe(channel: ChannelID, since: Int64? = nil, historyEpoch: String? = nil)
        async throws(AgentChatError) -> AsyncStream<ChannelStreamEvent>
    {
        guard case .connected = state else { throw .notConnected }
        endSubscription(channel, with: nil)
        let (inboxStream, inbox) = AsyncStream.makeStream(of: SubscriptionInbound.self, bufferingPolicy: .unbounded)
        let (output, outputContinuation) = AsyncStream.makeStream(of: ChannelStreamEvent.self,
                                                                  bufferingPolicy: .unbounded)
        channelState.nextToken += 1
        let token = channelState.nextToken
        channelState.subscriptions[channel] = ChannelSubscription(
            token: token, lastReceived: since, historyEpoch: historyEpoch, requestedSince: since, inbox: inbox)
        let worker = Task { [weak self] in
            for await inbound in inboxStream {
                switch inbound {
                case .items(let items):
                    for item in items {
                        guard let self else { break }
                        outputContinuation.yield(.message(await self.openMessage(item, channel: channel)))
                    }
                case .event(let event):
                    outputContinuation.yield(event)
                case .end(let error):
                    if let error { outputContinuation.yield(.ended(error)) }
                    outputContinuation.finish()
                    return
                }
            }
            outputContinuation.finish()
        }
        outputContinuation.onTermination = { [weak self] _ in
            worker.cancel()
            Task { await self?.subscriptionTerminated(channel, token: token) }
        }
        do {
            _ = try await call(.subscribe(channel, since: since, historyEpoch: historyEpoch))
        } catch {
            if channelState.subscriptions[channel]?.token == token { channelState.subscriptions[channel] = nil }
            inbox.finish()
            outputContinuation.finish()
            throw error
        }
        return output
    }

    /// Stops the channel's subscription (`channel.unsubscribe`); its stream finishes.
    public func unsubscribe(channel: ChannelID) async {
        guard channelState.subscriptions[channel] != nil else { return }
        endSubscription(channel, with: nil)
        if case .connected = state {
            _ = try? await call(.unsubscribe(channel))
        }
    }

    /// Stored messages, decrypted and verified, oldest first: the newest `limit` (1–500) before `before` (default:
    /// the end), or with `after` the first `limit` after that offset. Keys of older epochs are fetched as needed.
    /// Pages the broker cuts short by size (`next`) are followed until `limit` messages arrived.
    public func history(channel: ChannelID, limit: Int = 100, before: Int64? = nil, after: Int64? = nil)
        async throws(AgentChatError) -> [ChannelMessage]
    {
        var messages: [ChannelMessage] = []
        var before = before
        var after = after
        while messages.count < limit {
            let reply = try await call(.history(channel, before: before, after: after, limit: limit - messages.count))
            guard case .messages(_, _, let items, let next) = reply else {
                throw .protocolViolation("expected messages, got \(reply.type.rawValue)")
            }
            for item in items { messages.append(await openMessage(item, channel: channel)) }
            guard let next, !items.isEmpty else { break }
            if after != nil { after = next } else { before = next }
        }
        return messages.sorted { $0.offset < $1.offset }
    }

    /// Verifies and decrypts one stored item. Never throws: failures are ``ChannelMessage/failure``.
    func openMessage(_ item: StoredMessage, channel: ChannelID) async -> ChannelMessage {
        let offset = item.offset
        let sender = item.sender.description
        let epoch = item.epoch
        let timestamp = item.timestamp
        let messageID = item.clientMessageID
        let did = item.sender
        let nonceText = item.nonce
        let ciphertextText = item.ciphertext
        func failed(_ failure: ChannelMessageFailure) -> ChannelMessage {
            ChannelMessage(channel: channel, offset: offset, sender: sender, epoch: epoch, timestamp: timestamp,
                           clientMessageID: messageID, plaintext: nil, failure: failure)
        }
        // The codec read every field (a stored item missing one makes its whole frame unreadable); the values
        // are still the broker's word.
        guard offset > 0, epoch > 0, !messageID.isEmpty, let nonce = Base64URL.decode(nonceText),
            nonce.count == AES256GCM.nonceLength, let ciphertext = Base64URL.decode(ciphertextText),
            let signature = Base64URL.decode(item.signature)
        else { return failed(.malformed("missing or invalid fields")) }
        let signed = MessageSend.signedBytes(channel: channel, epoch: epoch, clientMessageID: messageID,
                                             nonce: nonceText, ciphertext: ciphertextText)
        guard SigningKeyPair.verify(signature: signature, message: signed, publicKey: did.signingKey) else {
            return failed(.badSignature)
        }
        var key: [UInt8]?
        var keyError = AgentChatError.notConnected
        for _ in 0..<3 {
            do throws(AgentChatError) {
                key = try await epochKey(channel, epoch: epoch)
                break
            } catch {
                keyError = error
                let transient = error.category == .network || error.code == AgentChatError.Codes.notConnected
                guard transient, configuration.autoReconnect, (try? await waitForConnection()) != nil else { break }
            }
        }
        guard let key else { return failed(.keyUnavailable(keyError.code)) }
        let associatedData = MessageSend.associatedData(channel: channel, epoch: epoch, sender: did,
                                                        clientMessageID: messageID)
        guard let plaintext = try? AES256GCM.open(ciphertext, key: key, nonce: nonce, associatedData: associatedData)
        else { return failed(.decryptionFailed) }
        return ChannelMessage(channel: channel, offset: offset, sender: sender, epoch: epoch, timestamp: timestamp,
                              clientMessageID: messageID, plaintext: plaintext, failure: nil)
    }

    // MARK: - Frames (called by the actor's frame handler, in frame order)

    /// A `subscribed` answer: records the history epoch and the resume point before any `messages` that follow.
    func applySubscribed(channel: ChannelID, historyEpoch: String, latest: Int64, recovered: Bool) {
        guard var subscription = channelState.subscriptions[channel] else { return }
        if let old = subscription.historyEpoch, old != historyEpoch {
            subscription.lastReceived = 0  // the history restarted: its offsets start again
        }
        if subscription.lastReceived == nil { subscription.lastReceived = latest }
        subscription.historyEpoch = historyEpoch
        subscription.acceptsJump = !recovered
        subscription.repairing = false
        channelState.subscriptions[channel] = subscription
        subscription.inbox.yield(.event(.subscribed(ChannelResume(
            channel: channel, since: subscription.requestedSince, latestOffset: latest, historyEpoch: historyEpoch,
            recovered: recovered, isReconnect: subscription.isReconnect))))
    }

    /// `messages` (live or replayed) and `channel.event` frames.
    func routeChannelFrame(_ frame: ServerFrame) {
        switch frame {
        case .messages(_, let channel, let items, _):
            guard var subscription = channelState.subscriptions[channel], !subscription.repairing else { return }
            var last = subscription.lastReceived ?? -1
            var fresh: [StoredMessage] = []
            var gap = false
            for item in items {
                let offset = item.offset
                guard offset > last else { continue }
                // Offsets are consecutive: a jump means the stream lost messages, unless the broker announced it.
                if last >= 0, offset != last + 1, !subscription.acceptsJump {
                    gap = true
                    break
                }
                subscription.acceptsJump = false
                fresh.append(item)
                last = offset
            }
            if !fresh.isEmpty { subscription.lastReceived = last }
            if gap { subscription.repairing = true }
            channelState.subscriptions[channel] = subscription
            if !fresh.isEmpty { subscription.inbox.yield(.items(fresh)) }
            if gap { Task { await self.repairGap(channel, token: subscription.token) } }
        case .channelEvent(let channel, let event, let member, let epoch):
            let did = member.description
            let membershipChange = ["member_joined", "member_left", "member_removed", "epoch_rotated"].contains(event)
            if membershipChange { channelState.sendEpoch[channel] = nil }
            channelState.subscriptions[channel]?.inbox.yield(.event(.membership(
                ChannelMembershipEvent(channel: channel, event: event, did: did, epoch: epoch))))
            if member == identity.did && (event == "member_left" || event == "member_removed") {
                endSubscription(channel, with: .server("not_member", "\(event == "member_left" ? "left" : "removed from") the channel"))
            } else if membershipChange {
                // A new epoch: key it now (the first member to try publishes; the others fetch).
                Task { try? await self.prepareKeys(channel) }
            }
        default:
            return
        }
    }

    /// After a reconnection: subscribes again to every channel, from the last offset received.
    func resubscribeAll(generation: Int) async {
        for (channel, subscription) in channelState.subscriptions {
            guard connectionGeneration == generation else { return }
            channelState.statistics.resubscriptions += 1
            guard await resubscribe(channel, token: subscription.token) else { return }
        }
    }

    /// Subscribes again from the last offset received after the stream skipped offsets: the broker replays the
    /// missing messages (or says `recovered: false` when its history no longer has them).
    func repairGap(_ channel: ChannelID, token: Int) async {
        guard channelState.subscriptions[channel]?.repairing == true, case .connected = state else { return }
        channelState.statistics.gapsRepaired += 1
        await resubscribe(channel, token: token)
    }

    /// Sends `channel.subscribe` from the subscription's last offset received. False when the connection dropped
    /// (the next reconnection resubscribes); a refusal ends the subscription with the broker's error.
    @discardableResult
    private func resubscribe(_ channel: ChannelID, token: Int) async -> Bool {
        guard var current = channelState.subscriptions[channel], current.token == token else { return true }
        current.requestedSince = current.lastReceived
        current.isReconnect = true
        channelState.subscriptions[channel] = current
        do throws(AgentChatError) {
            _ = try await call(.subscribe(channel, since: current.lastReceived, historyEpoch: current.historyEpoch))
        } catch where error.category == .server {
            if channelState.subscriptions[channel]?.token == token { endSubscription(channel, with: error) }
        } catch {
            return false
        }
        return true
    }

    func endSubscription(_ channel: ChannelID, with error: AgentChatError?) {
        guard let subscription = channelState.subscriptions.removeValue(forKey: channel) else { return }
        subscription.inbox.yield(.end(error))
        subscription.inbox.finish()
    }

    func endAllSubscriptions(with error: AgentChatError) {
        for channel in Array(channelState.subscriptions.keys) { endSubscription(channel, with: error) }
    }

    private func subscriptionTerminated(_ channel: ChannelID, token: Int) {
        guard let subscription = channelState.subscriptions[channel], subscription.token == token else { return }
        channelState.subscriptions[channel] = nil
        subscription.inbox.finish()
        if case .connected = state {
            try? send(.channel(id: nil, .unsubscribe(channel)))
        }
    }

    // MARK: - Helpers

    private func call(_ request: ChannelRequest) async throws(AgentChatError) -> ServerFrame {
        try await self.request(.channel(id: nil, request))
    }

    private static func channelDescription(in reply: ServerFrame) throws(AgentChatError) -> ChannelDescription {
        guard case .channel(_, let description) = reply else {
            throw .protocolViolation("expected a channel description, got \(reply.type.rawValue)")
        }
        return description
    }
}
