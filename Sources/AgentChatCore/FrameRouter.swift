import AgentChatCrypto
import AgentChatProtocol
import Logging

/// The core of the broker: takes connections and HTTP requests from the transport, decodes frames, logs agents
/// in, and hands requests to the services. Loop-bound: created, used and stopped on the loop thread.
///
/// Where a frame goes: transport (reassembly, size cap, UTF-8) → `connection(_:received:isBinary:)` (frame budget,
/// `FrameCodec.decode`, login gate) → `ChannelService` or `IndicatorService` → a store → a reply through `Outbox`
/// (the one send path, which counts) → the connection's queue, written by the transport.
package final class FrameRouter: ConnectionHandler {
    package struct Configuration: Sendable {
        package var limits = Limits()
        /// The broker's identity in challenges and tokens (`iss`).
        package var issuer = "http://127.0.0.1:8080"
        package var tokenLifetimeSeconds = 900
        package var corsOrigins: [String] = []
        package var registrationsPerMinute = 10
        package var channelLimits = ChannelLimits()
        package var onlineGraceSeconds = 15.0
        package var indicatorRate = 4.0
        package var viewerConnectionsPerAddress = 20
        package var viewerFramesPerSecond = 10.0
        /// Peek prices and windows.
        package var peekTerms = PeekTerms()
        /// Stripe webhook signing secrets (`whsec_…`); the sandbox adds its own.
        package var webhookSecrets: [String] = []

        package init() {}
    }

    private let configuration: Configuration
    private let clock: any BrokerClock
    private let stores: Stores
    private let logger: Logger
    private let codec: FrameCodec
    private let outbox: Outbox
    private let metrics: BrokerMetrics
    private let authenticator: Authenticator
    private let channels: ChannelService
    private let indicators: IndicatorService
    private let presence: PresenceTracker
    /// Nil when the stores have no peek store or no gateway is configured: peek requests answer `unavailable`.
    private let peeks: PeekService?
    private var router = HTTPRouter()
    private var sessions: [UInt64: Session] = [:]
    private var healthTimer: (any BrokerTimer)?
    /// The heartbeat and, with a token, the admin page's API; nil when not configured (unit tests).
    private var admin: AdminService?

    /// What the admin side is given: its configuration (token, identity), its page's files (served only with a
    /// token), and the figures only the composition root can read.
    package struct Admin {
        package var configuration: AdminService.Configuration
        package var files: [String: HTTPResponse] = [:]
        package var storeHealth: () -> StoreHealth
        package var recentErrors: () -> [RecentLogLine] = { [] }

        package init(configuration: AdminService.Configuration, files: [String: HTTPResponse] = [:],
                     storeHealth: @escaping () -> StoreHealth, recentErrors: @escaping () -> [RecentLogLine] = { [] })
        {
            self.configuration = configuration
            self.files = files
            self.storeHealth = storeHealth
            self.recentErrors = recentErrors
        }
    }

    /// `staticFiles` are served at their paths (GET and HEAD); `metricsPage` answers `/metrics` (after the sampled
    /// gauges are brought up to date); `admin` adds the heartbeat and, with a token, `/admin`.
    package init(configuration: Configuration, clock: any BrokerClock, stores: Stores, keyStore: SigningKeyStore,
                 metrics: BrokerMetrics, payments: (any PaymentGateway)? = nil,
                 staticFiles: [String: HTTPResponse] = [:],
                 metricsPage: @escaping () -> HTTPResponse = { .error(404, .notFound, "no metrics here") },
                 admin: Admin? = nil,
                 logger: Logger)
    {
        self.configuration = configuration
        self.clock = clock
        self.stores = stores
        self.logger = logger
        self.metrics = metrics
        codec = FrameCodec(limits: configuration.limits)
        outbox = Outbox(codec: codec, metrics: metrics)
        authenticator = Authenticator(issuer: configuration.issuer,
                                      tokenLifetimeSeconds: Int64(configuration.tokenLifetimeSeconds),
                                      keyStore: keyStore, directory: stores.signingKeys, agents: stores.agents,
                                      clock: clock, logger: Logger(label: "agentchat.auth"))
        indicators = IndicatorService(clock: clock, store: stores.indicators, outbox: outbox,
                                      updatesPerSecond: configuration.indicatorRate,
                                      maxViewersPerAddress: configuration.viewerConnectionsPerAddress,
                                      logger: Logger(label: "agentchat.indicators"))
        presence = PresenceTracker(clock: clock, store: stores.indicators,
                                   graceSeconds: configuration.onlineGraceSeconds)
        channels = ChannelService(clock: clock, stores: stores, outbox: outbox,
                                  logger: Logger(label: "agentchat.channels"))
        if let payments, let peekStore = stores.peeks, let notifier = stores.peekNotifier {
            var peekConfiguration = PeekService.Configuration()
            peekConfiguration.terms = configuration.peekTerms
            peekConfiguration.webhookSecrets = configuration.webhookSecrets
            if let sandbox = payments as? SandboxPaymentGateway {
                peekConfiguration.webhookSecrets.append(sandbox.webhookSecret)
            }
            peeks = PeekService(configuration: peekConfiguration, clock: clock, store: peekStore, notifier: notifier,
                                gateway: payments, stores: stores, delivery: channels.delivery, outbox: outbox,
                                logger: Logger(label: "agentchat.peeks"))
        } else {
            peeks = nil
        }

        for (path, response) in staticFiles {
            router.add(.get, path) { _, respond in respond(response) }
        }
        router.add(.get, "/health") { [unowned self] _, respond in respond(health()) }
        router.add(.get, "/metrics") { [unowned self] _, respond in
            sampleGauges()
            respond(metricsPage())
        }
        router.add(.get, "/robots.txt") { _, respond in
            respond(HTTPResponse(status: 200, contentType: "text/plain; charset=utf-8",
                                 body: Array("User-agent: *\nDisallow: /admin\n".utf8), cacheControl: "public, max-age=3600"))
        }
        if let admin {
            let service = AdminService(
                configuration: admin.configuration, clock: clock, store: stores.operations, metrics: metrics,
                local: { [unowned self] in localFigures() }, storeHealth: admin.storeHealth,
                recentErrors: admin.recentErrors, logger: Logger(label: "agentchat.admin"))
            self.admin = service
            if service.isEnabled {
                // The page and its files need no token (they hold no data); the status API does.
                for (path, response) in admin.files {
                    router.add(.get, path) { _, respond in respond(AdminService.decorate(response)) }
                }
                router.add(.get, AdminService.statusPath) { [unowned self] request, respond in
                    self.admin?.status(request, respond: respond)
                }
            }
        }
        let cors = CORSPolicy(allowedOrigins: Set(configuration.corsOrigins))
        let registration = RegistrationEndpoint(agents: stores.agents, rateLimiter: stores.rateLimits, clock: clock,
                                                perMinute: configuration.registrationsPerMinute)
        router.add(.post, RegistrationEndpoint.path) { request, respond in
            registration.handle(request) { respond(cors.decorate($0, for: request)) }
        }
        router.add(.options, RegistrationEndpoint.path) { request, respond in
            respond(cors.preflight(request, methods: "POST, OPTIONS"))
        }
        if let peeks {
            router.add(.post, PeekService.webhookPath) { request, respond in peeks.webhook(request, respond: respond) }
            // The sandbox's webhooks go through the same endpoint, signature check included.
            (payments as? SandboxPaymentGateway)?.deliver = { [unowned self] request in
                handleHTTP(request) { [logger] response in
                    if response.status != 200 {
                        logger.warning("sandbox webhook refused", metadata: ["status": "\(response.status)"])
                    }
                }
            }
        }
        let storeHealth = admin?.storeHealth
        var counted = (command: 0, pubSub: 0)
        healthTimer = clock.makeTimer {
            metrics.redisUp.record(stores.isHealthy() ? 1 : 0)
            guard let health = storeHealth?() else { return }
            // The connections count their reconnections; the counters get what is new since the last tick.
            metrics.redisReconnected("command", count: health.commandReconnects - counted.command)
            metrics.redisReconnected("pubsub", count: health.pubSubReconnects - counted.pubSub)
            counted = (max(counted.command, health.commandReconnects), max(counted.pubSub, health.pubSubReconnects))
        }
        healthTimer?.start(after: 0, repeat: 1000)
    }

    /// The issuer agents sign their login challenges for.
    package var issuer: String { authenticator.issuer }

    /// Connections open now.
    package var connectionCount: Int { sessions.count }

    /// Stops the timers (indicators, presence, health); connections are closed by the transport.
    package func stop() {
        healthTimer = nil
        admin?.stop()
        indicators.stop()
        presence.stop()
        peeks?.stop()
    }

    // MARK: HTTP

    /// This process's connections by kind and its channel feeds.
    private func localFigures() -> AdminService.LocalFigures {
        var counts: [BrokerMetrics.ConnectionKind: Int] = [:]
        for session in sessions.values { counts[kind(of: session), default: 0] += 1 }
        return AdminService.LocalFigures(connections: counts, channelFeeds: channels.delivery.feedCount)
    }

    private func kind(of session: Session) -> BrokerMetrics.ConnectionKind {
        if session.authenticatedDID != nil { return .agent }
        if indicators.isViewer(session) || !session.peeks.isEmpty { return .viewer }
        return .unauthenticated
    }

    /// Brings the gauges that are sampled rather than kept up to date (connections by kind, queue bytes, replays,
    /// channel feeds) to their values now; run before every `/metrics` answer.
    package func sampleGauges() {
        var counts: [BrokerMetrics.ConnectionKind: Int] = [:]
        var queued = 0
        var largest = 0
        for session in sessions.values {
            counts[kind(of: session), default: 0] += 1
            let bytes = session.queuedBytes
            queued += bytes
            largest = max(largest, bytes)
        }
        metrics.recordConnections(counts)
        metrics.outboundQueueBytes.record(queued)
        metrics.outboundQueueMaxBytes.record(largest)
        let replay = channels.delivery.replayFigures()
        metrics.replayingSubscribers.record(replay.subscribers)
        metrics.replayBacklogMessages.record(replay.messages)
        metrics.channelFeeds.record(channels.delivery.feedCount)
    }

    private func health() -> HTTPResponse {
        let now = JSONValue.number(Double(clock.unixMilliseconds))
        if stores.isHealthy() { return .json(200, ["status": "healthy", "timestamp": now]) }
        return .json(503, ["status": "unhealthy", "timestamp": now, "reason": "redis unreachable"])
    }

    package func handleHTTP(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        metrics.httpRequests.increment()
        router.handle(request, respond: respond)
    }

    // MARK: WebSocket

    package func connectionOpened(_ connection: any Connection) {
        let limits = configuration.limits
        let session = Session(
            connection: connection,
            auth: SessionAuthStateMachine(challenge: authenticator.newChallenge(), now: clock.unixMilliseconds),
            frameBudget: TokenBucket(rate: limits.framesPerSecond, burst: limits.frameBurst,
                                     now: clock.monotonicSeconds))
        sessions[connection.id] = session
        metrics.webSocketOpened.increment()
        metrics.webSocketConnections.record(sessions.count)
        logger.debug("session opened", metadata: ["session": "\(session.id)", "peer": "\(session.remoteAddress)"])
        perform(session.auth.helloAction, on: session, ref: nil)
    }

    package func connectionClosed(_ connection: any Connection) {
        guard let session = sessions.removeValue(forKey: connection.id) else { return }
        channels.sessionClosed(session)
        indicators.sessionClosed(session)
        peeks?.sessionClosed(session)
        if let did = session.authenticatedDID { presence.disconnected(did) }
        metrics.webSocketConnections.record(sessions.count)
        metrics.closed(connection.closeCause)
        logger.debug("session closed", metadata: ["session": "\(session.id)"])
    }

    package func connection(_ connection: any Connection, received message: [UInt8], isBinary: Bool) {
        guard let session = sessions[connection.id] else { return }
        guard session.frameBudget.take(now: clock.monotonicSeconds) else {
            metrics.frameReceived(nil)
            // Dropped unread; its id, when readable, is the error's ref as for every refusal.
            outbox.fail(session, ProtocolError(.rateLimited, "too many frames; slow down"),
                        ref: isBinary ? nil : codec.readableID(message))
            return
        }
        let decoded: FrameCodec.Decoded
        if isBinary {
            decoded = .init(frame: .failure(ProtocolError(.binaryNotSupported, "protocol v1 frames are JSON text")),
                            id: nil)
        } else {
            decoded = codec.decode(message)
        }
        metrics.frameReceived(decoded.type.flatMap(FrameType.init(rawValue:)))
        if session.authenticatedDID == nil {
            // Before login only `auth` and `ping` are served; every other frame, and every refused one, counts
            // towards closing the connection.
            if let type = decoded.type, FrameType(rawValue: type).map(FrameType.beforeAuthentication.contains) != true {
                return refuseBeforeAuthentication(session, ProtocolError(.notAuthenticated, "authenticate first"),
                                                  ref: decoded.id)
            }
            if case .failure(let error) = decoded.frame {
                return refuseBeforeAuthentication(session, error, ref: decoded.id)
            }
        }
        switch decoded.frame {
        case .success(.ping(let id)):
            outbox.send(.pong(ref: id, time: clock.unixMilliseconds), to: session)
        case .success(.auth(let id, let credentials)):
            authenticate(session, id: id, credentials)
        case .success(.channel(let id, let request)):
            channels.handle(request, id: id, from: session)
        case .success(.viewer(let id, let request)):
            let wasViewer = indicators.isViewer(session)
            guard indicators.handle(request, id: id, from: session) else {
                outbox.fail(session, ProtocolError(.rateLimited, "too many viewer connections from this address"),
                            ref: id)
                session.close(.policyViolation, "too many viewer connections from this address")
                return
            }
            if !wasViewer {
                session.frameBudget = TokenBucket(rate: configuration.viewerFramesPerSecond,
                                                  burst: configuration.viewerFramesPerSecond * 2,
                                                  now: clock.monotonicSeconds)
            }
        case .success(.peek(let id, let request)):
            guard let peeks else {
                return outbox.fail(session, ProtocolError(.paymentUnavailable, "peeks are not enabled here"), ref: id)
            }
            if !request.isViewerRequest, session.authenticatedDID == nil {
                return refuseBeforeAuthentication(session, ProtocolError(.notAuthenticated, "authenticate first"),
                                                  ref: id)
            }
            peeks.handle(request, id: id, from: session)
        case .failure(let error):
            outbox.fail(session, error, ref: decoded.id)
        }
    }

    // MARK: Login

    private func refuseBeforeAuthentication(_ session: Session, _ error: ProtocolError, ref: String?) {
        perform(session.auth.refusedBeforeAuthentication(error), on: session, ref: ref)
    }

    private func authenticate(_ session: Session, id: String?, _ credentials: AuthCredentials) {
        let action = session.auth.authReceived(credentials, now: clock.unixMilliseconds,
                                               nextChallenge: authenticator.newChallenge())
        var presentedToken: String?
        if case .verifyToken(let token) = action { presentedToken = token }
        // The session is held until the answer (one Redis round trip), not referenced weakly: a weak reference
        // gives the object a side table for its whole life, 48 bytes of every idle connection (docs/BENCHMARKS.md).
        let finish: (Result<AgentProfile, ProtocolError>) -> Void = { [weak self] result in
            guard let self, session.isOpen else { return }
            finishAuthentication(session, id: id, presentedToken: presentedToken, result)
        }
        switch action {
        case .verifySignature(let did, let signature, let challenge):
            authenticator.verifySignature(did: did, signature: signature, challenge: challenge, completion: finish)
        case .verifyToken(let token):
            authenticator.verifyToken(token, completion: finish)
        default:
            perform(action, on: session, ref: id)
        }
    }

    private func finishAuthentication(_ session: Session, id: String?, presentedToken: String?,
                                      _ result: Result<AgentProfile, ProtocolError>)
    {
        switch result {
        case .success(let profile):
            let did = presence.connected(profile.did)
            session.auth.verified(did)
            peeks?.agentAuthenticated(session, did: did)
            let (token, expiresAt) = presentedToken.map { authenticator.sessionToken(for: profile.did, presented: $0) }
                ?? authenticator.issueToken(for: profile.did)
            logger.debug("agent authenticated", metadata: ["session": "\(session.id)", "did": "\(profile.did)"])
            outbox.send(.welcome(ref: id, agent: profile, token: token, expiresAt: expiresAt), to: session)
        case .failure(let error):
            let action = session.auth.verificationFailed(error, now: clock.unixMilliseconds,
                                                         nextChallenge: authenticator.newChallenge())
            perform(action, on: session, ref: id)
        }
    }

    private func perform(_ action: SessionAuthStateMachine.Action?, on session: Session, ref: String?) {
        guard let action else { return }
        switch action {
        case .sendHello(let challenge, let expiresAt):
            outbox.send(.hello(broker: authenticator.issuer, challenge: challenge, expiresAt: expiresAt), to: session)
        case .reject(let error, let hello):
            outbox.fail(session, error, ref: ref)
            if let hello {
                outbox.send(.hello(broker: authenticator.issuer, challenge: hello.challenge,
                                   expiresAt: hello.expiresAt), to: session)
            }
        case .close(let code, let reason):
            session.close(code, reason)
        case .rejectAndClose(let error, let code, let reason):
            outbox.fail(session, error, ref: ref)
            session.close(code, reason)
        case .verifySignature, .verifyToken:
            assertionFailure("verification actions are performed by authenticate(_:id:_:)")
        }
    }
}
