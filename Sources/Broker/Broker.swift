import AgentChatCrypto
import AgentChatLoop
import AgentChatPersistence
import AgentChatProtocol
import Foundation
import Logging
import Prometheus

/// The broker on one process: the libwebsockets server, the Redis client and the frame handlers between them.
/// Loop-bound: created, used and shut down on the loop thread.
///
/// Where a frame goes: libwebsockets → `WebSocketServer` (reassembly, size cap, UTF-8) → `Broker.session(_:received:)`
/// (rate limit, `FrameCodec.decode`) → a handler → a reply frame queued on the `WebSocketSession`, written from its
/// writeable callback.
final class Broker: WebSocketServerDelegate {
    let loop: EventLoop
    let configuration: BrokerConfiguration
    let logger: Logger
    let server: WebSocketServer
    let redis: RedisClient
    let agents: AgentStore
    private let keyStore: SigningKeyStore
    /// Set by `start()`, once the bound port (and so the default issuer) is known.
    private var authenticator: Authenticator!
    private var channels: ChannelService!
    private let indicatorStore: IndicatorStore
    private let indicators: IndicatorService
    private let presence: PresenceTracker
    private let codec: FrameCodec
    private let metrics: BrokerMetrics
    private let registry: PrometheusCollectorRegistry
    private var router = HTTPRouter()
    private var healthTimer: LoopTimer?

    init(loop: EventLoop, configuration: BrokerConfiguration, redisEndpoint: RedisEndpoint,
         keyStore: SigningKeyStore, logger: Logger, registry: PrometheusCollectorRegistry)
    {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.registry = registry
        metrics = BrokerMetrics()
        codec = FrameCodec(limits: configuration.limits)
        redis = RedisClient(loop: loop, endpoint: redisEndpoint, logger: Logger(label: "agentchat.redis"))
        agents = AgentStore(redis: redis)
        self.keyStore = keyStore
        var channelLimits = ChannelStore.Limits()
        channelLimits.historyMaxCount = configuration.historyMaxCount
        channelLimits.historyMaxAgeMilliseconds = Int64(configuration.historyMaxAgeSeconds) * 1000
        server = WebSocketServer(
            loop: loop,
            configuration: .init(host: configuration.host, port: configuration.port, limits: configuration.limits,
                                 receiveBufferBytes: configuration.receiveBufferBytes,
                                 pingIntervalSeconds: configuration.pingIntervalSeconds,
                                 pingTimeoutSeconds: configuration.pingTimeoutSeconds),
            logger: logger)
        indicatorStore = IndicatorStore(redis: redis)
        indicators = IndicatorService(loop: loop, store: indicatorStore, codec: codec,
                                      updatesPerSecond: configuration.indicatorRate,
                                      maxViewersPerAddress: configuration.viewerConnectionsPerAddress,
                                      logger: Logger(label: "agentchat.indicators"))
        presence = PresenceTracker(loop: loop, store: indicatorStore, graceSeconds: configuration.onlineGraceSeconds)
        channels = ChannelService(loop: loop, store: ChannelStore(redis: redis, limits: channelLimits),
                                  agents: agents, pubsub: redis.pubSub, indicatorStore: indicatorStore, codec: codec,
                                  metrics: metrics, logger: Logger(label: "agentchat.channels"))
        server.delegate = self
        let site = StaticFiles.bundled()
        for path in site.files.keys {
            router.add(.get, path) { _, respond in respond(site.response(for: path)!) }
        }
        router.add(.get, "/health") { [unowned self] _, respond in respond(health()) }
        router.add(.get, "/metrics") { [unowned self] _, respond in respond(metricsPage()) }
        let cors = CORSPolicy(allowedOrigins: Set(configuration.corsOrigins))
        let registration = RegistrationEndpoint(agents: agents, rateLimiter: RateLimiter(redis: redis),
                                                perMinute: configuration.registrationsPerMinute)
        router.add(.post, RegistrationEndpoint.path) { request, respond in
            registration.handle(request) { respond(cors.decorate($0, for: request)) }
        }
        router.add(.options, RegistrationEndpoint.path) { request, respond in
            respond(cors.preflight(request, methods: "POST, OPTIONS"))
        }
    }

    /// Connects to Redis (in the background, retrying) and starts listening. Returns the bound port.
    func start() throws -> Int {
        try server.start()
        let issuer = configuration.issuer ?? "http://\(configuration.host):\(server.boundPort)"
        authenticator = Authenticator(issuer: issuer, tokenLifetimeSeconds: Int64(configuration.tokenLifetimeSeconds),
                                      keyStore: keyStore, redis: redis, agents: agents,
                                      logger: Logger(label: "agentchat.auth"))
        redis.start()
        healthTimer = LoopTimer(loop: loop) { [unowned self] in metrics.redisUp.record(redis.isHealthy ? 1 : 0) }
        healthTimer?.start(after: 0, repeat: 1000)
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(server.boundPort)"])
        return server.boundPort
    }

    /// Closes every client with 1001, stops the server, then closes Redis. Calls `completion` on the loop thread.
    func shutdown(completion: @escaping () -> Void) {
        logger.info("shutting down", metadata: ["connections": "\(server.sessions.count)"])
        healthTimer = nil
        indicators.stop()
        presence.stop()
        server.shutdown(grace: configuration.shutdownGraceSeconds) { [self] in
            redis.close()
            logger.info("stopped")
            completion()
        }
    }

    // MARK: HTTP

    private func health() -> HTTPResponse {
        let now = JSONValue.number(Double(Clock.unixMilliseconds()))
        if redis.isHealthy { return .json(200, ["status": "healthy", "timestamp": now]) }
        return .json(503, ["status": "unhealthy", "timestamp": now, "reason": "redis unreachable"])
    }

    private func metricsPage() -> HTTPResponse {
        HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                     body: registry.emitToBuffer())
    }

    func handleHTTP(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        metrics.httpRequests.increment()
        router.handle(request, respond: respond)
    }

    // MARK: WebSocket

    func sessionOpened(_ session: WebSocketSession) {
        metrics.webSocketOpened.increment()
        metrics.webSocketConnections.record(server.sessions.count)
        logger.debug("session opened", metadata: ["session": "\(session.id)", "peer": "\(session.remoteAddress)"])
        let auth = SessionAuthStateMachine(challenge: authenticator.newChallenge(), now: Clock.unixMilliseconds())
        session.auth = auth
        perform(auth.helloAction, on: session, ref: nil)
    }

    func sessionClosed(_ session: WebSocketSession) {
        channels.sessionClosed(session)
        indicators.sessionClosed(session)
        if let did = session.auth?.authenticatedDID { presence.disconnected(did) }
        metrics.webSocketConnections.record(server.sessions.count)
        logger.debug("session closed", metadata: ["session": "\(session.id)"])
    }

    func session(_ session: WebSocketSession, received message: [UInt8], isBinary: Bool) {
        metrics.framesReceived.increment()
        guard session.frameBudget.take(now: Clock.monotonicSeconds()) else {
            reply(session, .error(ProtocolError(.rateLimited, "too many frames; slow down"), ref: nil))
            return
        }
        let decoded: FrameCodec.Decoded
        if isBinary {
            decoded = .init(frame: .failure(ProtocolError(.binaryNotSupported, "protocol v1 frames are JSON text")),
                            id: nil)
        } else {
            decoded = codec.decode(message)
        }
        let authenticated = session.auth?.authenticatedDID != nil
        if !authenticated {
            // Before login only `auth` and `ping` are served; every other frame, and every refused one, counts
            // towards closing the connection.
            if let type = decoded.type, !ClientFrame.typesBeforeAuthentication.contains(type) {
                return refuseBeforeAuthentication(session, ProtocolError(.notAuthenticated, "authenticate first"),
                                                  ref: decoded.id)
            }
            if case .failure(let error) = decoded.frame {
                return refuseBeforeAuthentication(session, error, ref: decoded.id)
            }
        }
        switch decoded.frame {
        case .success(.ping(let id)):
            reply(session, .pong(ref: id, time: Clock.unixMilliseconds()))
        case .success(.auth(let id, let credentials)):
            authenticate(session, id: id, credentials)
        case .success(.channel(let id, let request)):
            channels.handle(request, id: id, from: session)
        case .success(.viewer(let id, let request)):
            let wasViewer = indicators.isViewer(session)
            guard indicators.handle(request, id: id, from: session) else {
                reply(session, .error(ProtocolError(.rateLimited, "too many viewer connections from this address"),
                                      ref: id))
                session.close(.policyViolation, "too many viewer connections from this address")
                return
            }
            if !wasViewer {
                session.frameBudget = TokenBucket(rate: configuration.viewerFramesPerSecond,
                                                  burst: configuration.viewerFramesPerSecond * 2,
                                                  now: Clock.monotonicSeconds())
            }
        case .failure(let error):
            reply(session, .error(error, ref: decoded.id))
        }
    }

    // MARK: Login

    private func refuseBeforeAuthentication(_ session: WebSocketSession, _ error: ProtocolError, ref: String?) {
        guard let action = session.auth?.refusedBeforeAuthentication(error) else { return }
        perform(action, on: session, ref: ref)
    }

    private func authenticate(_ session: WebSocketSession, id: String?, _ credentials: AuthCredentials) {
        guard let action = session.auth?.authReceived(credentials, now: Clock.unixMilliseconds(),
                                                      nextChallenge: authenticator.newChallenge())
        else { return }
        let finish: (Result<AgentProfile, ProtocolError>) -> Void = { [weak self, weak session] result in
            guard let self, let session, session.isOpen else { return }
            finishAuthentication(session, id: id, result)
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

    private func finishAuthentication(_ session: WebSocketSession, id: String?,
                                      _ result: Result<AgentProfile, ProtocolError>)
    {
        switch result {
        case .success(let profile):
            session.auth?.verified(profile.did)
            presence.connected(profile.did)
            let (token, expiresAt) = authenticator.issueToken(for: profile.did)
            logger.debug("agent authenticated", metadata: ["session": "\(session.id)", "did": "\(profile.did)"])
            reply(session, .welcome(ref: id, agent: profile, token: token, expiresAt: expiresAt))
        case .failure(let error):
            guard let action = session.auth?.verificationFailed(error, now: Clock.unixMilliseconds(),
                                                                nextChallenge: authenticator.newChallenge())
            else { return }
            perform(action, on: session, ref: id)
        }
    }

    private func perform(_ action: SessionAuthStateMachine.Action, on session: WebSocketSession, ref: String?) {
        switch action {
        case .sendHello(let challenge, let expiresAt):
            reply(session, .hello(broker: authenticator.issuer, challenge: challenge, expiresAt: expiresAt))
        case .reject(let error, let hello):
            reply(session, .error(error, ref: ref))
            if let hello {
                reply(session, .hello(broker: authenticator.issuer, challenge: hello.challenge,
                                      expiresAt: hello.expiresAt))
            }
        case .close(let code, let reason):
            session.close(code, reason)
        case .rejectAndClose(let error, let code, let reason):
            reply(session, .error(error, ref: ref))
            session.close(code, reason)
        case .verifySignature, .verifyToken:
            assertionFailure("verification actions are performed by authenticate(_:id:_:)")
        }
    }

    private func reply(_ session: WebSocketSession, _ frame: ServerFrame) {
        if case .error(let error, _) = frame { metrics.frameError(error.code.rawValue) }
        metrics.framesSent.increment()
        session.send(OutboundFrame(codec.encode(frame)))
    }
}
