import AgentChatCore
import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Logging
import MetricsTestKit

/// An agent for tests: a signing key pair and the registered profile that goes with it.
package struct TestAgent {
    package let keys: SigningKeyPair
    package let profile: AgentProfile
    package var did: DID { profile.did }

    package init(name: String, registeredAt: Int64) {
        keys = SigningKeyPair()
        let encryptionKey = EncryptionKeyPair().publicKey
        let timestamp = registeredAt
        let signed = RegistrationRequest.signedBytes(name: name, signingKey: keys.publicKey,
                                                     encryptionKey: encryptionKey, timestamp: timestamp)
        profile = AgentProfile(name: name, signingKey: keys.publicKey, encryptionKey: encryptionKey,
                               registeredAt: registeredAt,
                               registration: RegistrationSignature(timestamp: timestamp, signature: keys.sign(signed)))
    }

    /// The `auth` credentials answering `challenge` from `broker`.
    package func credentials(broker: String, challenge: String) -> AuthCredentials {
        .signature(did: did, signature: keys.sign(AuthChallenge.signedBytes(broker: broker, challenge: challenge)))
    }
}

/// A `FrameRouter` over in-memory twins of every store, a `ManualClock` and `RecordingConnection`s: the broker's core,
/// deterministic, without processes or sockets. Metrics go to a `TestMetrics` factory of the harness's own.
package final class CoreHarness {
    package let clock: ManualClock
    package let feeds: InMemoryFeedBus
    package let channelStore: InMemoryChannelStore
    package let agents: InMemoryAgentDirectory
    package let indicatorStore: InMemoryIndicatorStore
    package let rateLimiter: InMemoryRateLimiter
    package let signingKeys: InMemorySigningKeyDirectory
    package let peekStore: InMemoryPeekStore
    package let peekNotifier: InMemoryPeekNotifier
    package let sandboxPayments: InMemorySandboxPayments
    /// The sandbox gateway of the harness's router; `secondBroker()` makes others over the same stores.
    package let sandbox: SandboxPaymentGateway
    package let stores: Stores
    private let keyStore: SigningKeyStore
    package let metrics: TestMetrics
    package let router: FrameRouter
    package let configuration: FrameRouter.Configuration
    private let keyDirectory: URL
    private var nextConnectionID: UInt64 = 1
    private var nextRequestID = 1
    private let codec = FrameCodec()

    package init(configuration: FrameRouter.Configuration = FrameRouter.Configuration()) {
        self.configuration = configuration
        clock = ManualClock()
        feeds = InMemoryFeedBus(clock: clock)
        channelStore = InMemoryChannelStore(clock: clock, feeds: feeds, limits: configuration.channelLimits)
        agents = InMemoryAgentDirectory(clock: clock)
        indicatorStore = InMemoryIndicatorStore(clock: clock, channels: channelStore)
        rateLimiter = InMemoryRateLimiter(clock: clock)
        signingKeys = InMemorySigningKeyDirectory(clock: clock)
        peekStore = InMemoryPeekStore(clock: clock)
        peekNotifier = InMemoryPeekNotifier(clock: clock)
        sandboxPayments = InMemorySandboxPayments(clock: clock)
        sandbox = SandboxPaymentGateway(store: sandboxPayments, clock: clock)
        metrics = TestMetrics()
        keyDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-core-\(UUID().uuidString)")
        do {
            keyStore = try SigningKeyStore(directory: keyDirectory.path, now: clock.unixMilliseconds)
        } catch {
            preconditionFailure("could not make a signing key store: \(error)")
        }
        stores = Stores(channels: channelStore, feeds: feeds, agents: agents, indicators: indicatorStore,
                        rateLimits: rateLimiter, signingKeys: signingKeys, peeks: peekStore, peekNotifier: peekNotifier,
                        isHealthy: { [channelStore] in channelStore.isAvailable })
        router = FrameRouter(configuration: configuration, clock: clock, stores: stores, keyStore: keyStore,
                             metrics: BrokerMetrics(factory: metrics), payments: sandbox,
                             logger: Logger(label: "agentchat.test", factory: { _ in SwiftLogNoOpLogHandler() }))
        clock.runUntilIdle()
    }

    /// Another broker on the same stores (its own sandbox gateway over the same sandbox store), as several broker
    /// processes on one Redis.
    package func secondBroker() -> FrameRouter {
        FrameRouter(configuration: configuration, clock: clock, stores: stores, keyStore: keyStore,
                    metrics: BrokerMetrics(factory: metrics),
                    payments: SandboxPaymentGateway(store: sandboxPayments, clock: clock),
                    logger: Logger(label: "agentchat.test", factory: { _ in SwiftLogNoOpLogHandler() }))
    }

    deinit {
        router.stop()
        try? FileManager.default.removeItem(at: keyDirectory)
    }

    /// Every twin fails with `.unavailable` (false), or works again (true).
    package func setStoresAvailable(_ available: Bool) {
        for store in [channelStore, agents, indicatorStore, rateLimiter, signingKeys, feeds, peekStore, peekNotifier,
                      sandboxPayments] as [InMemoryStore] {
            store.setAvailable(available)
        }
    }

    // MARK: Agents

    /// A new agent, registered in the directory twin unless `registered` is false.
    package func makeAgent(_ name: String, registered: Bool = true) -> TestAgent {
        let agent = TestAgent(name: name, registeredAt: clock.unixMilliseconds)
        if registered { agents.insert(agent.profile) }
        return agent
    }

    // MARK: Connections

    /// Opens a connection; the harness reports its end to the router (a turn later) when it closes. Runs until
    /// idle, so its `hello` has been sent.
    package func open(address: String = "192.0.2.1", queueLimit: Int = 1024 * 1024) -> RecordingConnection {
        let connection = RecordingConnection(id: nextConnectionID, remoteAddress: address, queueLimit: queueLimit)
        nextConnectionID += 1
        connection.onClose = { [weak self, unowned connection] in
            self?.clock.enqueue { self?.router.connectionClosed(connection) }
        }
        router.connectionOpened(connection)
        clock.runUntilIdle()
        return connection
    }

    /// The peer goes away; the router hears of it in the next turn (run until idle).
    package func disconnect(_ connection: RecordingConnection) {
        connection.peerClosed()
        clock.runUntilIdle()
    }

    /// Hands the router one client frame, now (without running the loop).
    package func send(_ frame: ClientFrame, on connection: RecordingConnection) {
        router.connection(connection, received: codec.encode(frame), isBinary: false)
    }

    /// Hands the router raw bytes, now.
    package func send(raw bytes: [UInt8], on connection: RecordingConnection, isBinary: Bool = false) {
        router.connection(connection, received: bytes, isBinary: isBinary)
    }

    /// Sends `frame`, runs until idle, and returns the frames the connection got since it last looked.
    @discardableResult
    package func request(_ frame: ClientFrame, on connection: RecordingConnection) -> [ServerFrame] {
        connection.skipFrames()
        send(frame, on: connection)
        clock.runUntilIdle()
        return connection.takeFrames()
    }

    /// A fresh request id.
    package func nextID() -> String {
        defer { nextRequestID += 1 }
        return "r\(nextRequestID)"
    }

    /// The challenge of the last `hello` the connection got.
    package func challenge(on connection: RecordingConnection) -> String? {
        for frame in connection.frames.reversed() {
            if case .hello(_, let challenge, _) = frame { return challenge }
        }
        return nil
    }

    /// Opens a connection and logs `agent` in with a signed challenge; returns it (its frames taken) and the token.
    package func login(_ agent: TestAgent, address: String = "192.0.2.1",
                       queueLimit: Int = 1024 * 1024) -> (connection: RecordingConnection, token: String)
    {
        let connection = open(address: address, queueLimit: queueLimit)
        guard let challenge = challenge(on: connection) else { preconditionFailure("no hello") }
        let replies = request(.auth(id: nextID(), agent.credentials(broker: router.issuer, challenge: challenge)),
                              on: connection)
        guard case .welcome(_, _, let token, _)? = replies.first else {
            preconditionFailure("login of \(agent.profile.name) failed: \(replies)")
        }
        return (connection, token)
    }

    // MARK: Channels

    /// Creates a channel owned by `owner` (logged in on `connection`) with `members`, and publishes keys for its
    /// first epoch, so messages can be sent at once. Returns its id.
    package func createChannel(_ name: String = "test", owner: TestAgent, on connection: RecordingConnection,
                               members: [TestAgent] = [], open: Bool = false) -> ChannelID
    {
        let id = nextID()
        let replies = request(.channel(id: id, .create(name: name, open: open, members: members.map(\.did))),
                              on: connection)
        let created = replies.lazy.compactMap { frame -> ChannelDescription? in
            if case .channel(id, let description) = frame { return description }
            return nil
        }.first
        guard let description = created else {
            preconditionFailure("channel.create failed: \(replies)")
        }
        publishKeys(description.id, epoch: description.epoch, members: [owner] + members, by: owner, on: connection)
        return description.id
    }

    /// Publishes (fake) key envelopes for `epoch` to `members`, signed by `sender`.
    package func publishKeys(_ channel: ChannelID, epoch: Int64, members: [TestAgent], by sender: TestAgent,
                             on connection: RecordingConnection)
    {
        var envelopes: [DID: String] = [:]
        for member in members {
            envelopes[member.did] = Base64URL.encode(SecureRandom.bytes(ChannelKeys.envelopeBytes))
        }
        let signed = ChannelKeys.signedBytes(
            channel: channel, epoch: epoch,
            envelopes: Dictionary(uniqueKeysWithValues: envelopes.map { ($0.key.description, $0.value) }))
        let keys = ChannelKeys(channel: channel, epoch: epoch, envelopes: envelopes,
                               signature: Base64URL.encode(sender.keys.sign(signed)))
        let id = nextID()
        let replies = request(.channel(id: id, .publishKeys(keys)), on: connection)
        guard replies.contains(.ok(ref: id)) else { preconditionFailure("channel.keys failed: \(replies)") }
    }

    /// A `message.send` frame with a dummy (well-formed) ciphertext.
    package func message(_ channel: ChannelID, epoch: Int64 = 1, clientMessageID: String,
                         ciphertextBytes: Int = 32, id: String? = nil) -> ClientFrame
    {
        .channel(id: id ?? nextID(), .send(MessageSend(
            channel: channel, epoch: epoch, clientMessageID: clientMessageID,
            nonce: Base64URL.encode([UInt8](repeating: 7, count: 12)),
            ciphertext: Base64URL.encode([UInt8](repeating: 42, count: ciphertextBytes)),
            signature: Base64URL.encode([UInt8](repeating: 1, count: 64)))))
    }

    /// Sends `count` messages on `connection` in one turn (not run), numbered from `first`.
    package func sendMessages(_ channel: ChannelID, epoch: Int64 = 1, count: Int, from first: Int = 1,
                              on connection: RecordingConnection, ciphertextBytes: Int = 32)
    {
        for n in first..<(first + count) {
            send(message(channel, epoch: epoch, clientMessageID: "m\(n)", ciphertextBytes: ciphertextBytes),
                 on: connection)
        }
    }

    /// Subscribes `connection` to `channel` after `since` and runs until idle; returns the frames it got.
    @discardableResult
    package func subscribe(_ channel: ChannelID, since: Int64? = nil, historyEpoch: String? = nil,
                           on connection: RecordingConnection) -> [ServerFrame]
    {
        request(.channel(id: nextID(), .subscribe(channel, since: since, historyEpoch: historyEpoch)), on: connection)
    }

    // MARK: Metrics

    /// `agentchat_frames_sent_total` so far.
    package var framesSentTotal: Int64 { metrics.counterTotal(label: "agentchat_frames_sent_total") }
}

/// The offsets in the `messages` frames among `frames`, in order (without `history` replies unless asked).
package func deliveredOffsets(_ frames: [ServerFrame], includingReplies: Bool = false) -> [Int64] {
    frames.flatMap { frame -> [Int64] in
        guard case .messages(let ref, _, let messages, _) = frame, includingReplies || ref == nil else { return [] }
        return messages.map(\.offset)
    }
}
