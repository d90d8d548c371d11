import AgentChatCore
import AgentChatCrypto
import AgentChatLoop
import AgentChatPayments
import AgentChatPersistence
import AgentChatProtocol
import AgentChatRedis
import AgentChatTransport
import Glibc
import Logging
import Prometheus

/// The broker on one process, wired: the libwebsockets server (`AgentChatTransport`), the Redis client and stores
/// (`AgentChatRedis`, `AgentChatPersistence`) and the core between them (`AgentChatCore.FrameRouter`), all on one
/// loop. Loop-bound: created, used and shut down on the loop thread.
final class Broker {
    let loop: EventLoop
    let configuration: BrokerConfiguration
    let logger: Logger
    let server: WebSocketServer
    let redis: RedisClient
    private let clock: LoopClock
    private let stores: Stores
    private let keyStore: SigningKeyStore
    private let registry: PrometheusCollectorRegistry
    private let metrics = BrokerMetrics()
    private let payments: any PaymentGateway
    /// The outbound HTTPS client Stripe is called through (nil with the sandbox).
    private let httpClient: HTTPClient?
    /// Made by `start()`, once the bound port (and so the default issuer) is known.
    private var router: FrameRouter?
    /// The worker's index under `--processes`; nil for a single process.
    private let process: Int?
    private let recentLogLines: RecentLogLines?

    init(loop: EventLoop, configuration: BrokerConfiguration, redisTarget: RedisTarget,
         keyStore: SigningKeyStore, logger: Logger, registry: PrometheusCollectorRegistry, process: Int? = nil,
         recentLogLines: RecentLogLines? = nil) throws
    {
        self.process = process
        self.recentLogLines = recentLogLines
        loop.preconditionInEventLoop()
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.keyStore = keyStore
        self.registry = registry
        clock = LoopClock(loop: loop)
        redis = RedisClient(loop: loop, target: redisTarget, logger: Logger(label: "agentchat.redis"))
        var channelLimits = ChannelLimits()
        channelLimits.historyMaxCount = configuration.historyMaxCount
        channelLimits.historyMaxAgeMilliseconds = Int64(configuration.historyMaxAgeSeconds) * 1000
        let replication = ChannelStore.Replication(replicas: configuration.redisReplicas,
                                                   timeoutMilliseconds: configuration.redisReplicasTimeoutMilliseconds)
        stores = Stores(channels: ChannelStore(redis: redis, limits: channelLimits, replication: replication),
                        feeds: ChannelFeeds(redis: redis),
                        agents: AgentStore(redis: redis), indicators: IndicatorStore(redis: redis),
                        rateLimits: RateLimiter(redis: redis), signingKeys: SigningKeyDirectory(redis: redis),
                        peeks: PeekStore(redis: redis), peekNotifier: PeekNotices(redis: redis),
                        operations: OperationsStore(redis: redis),
                        isHealthy: { [redis] in redis.isHealthy })
        redis.connection.roundTripObserver = { [metrics] in
            metrics.redisCommandDuration.recordNanoseconds($0.components.seconds * 1_000_000_000
                + $0.components.attoseconds / 1_000_000_000)
        }
        // Stripe when a secret key is configured; otherwise peeks are paid in the sandbox.
        if let secretKey = configuration.stripeSecretKey {
            let client = HTTPClient(loop: loop, logger: Logger(label: "agentchat.http-client"))
            httpClient = client
            payments = try StripeGateway(
                client: client,
                configuration: .init(secretKey: secretKey, publishableKey: configuration.stripePublishableKey,
                                     baseURL: configuration.stripeAPIBase),
                logger: Logger(label: "agentchat.stripe"))
        } else {
            httpClient = nil
            payments = SandboxPaymentGateway(store: SandboxPayments(redis: redis), clock: clock)
        }
        server = WebSocketServer(
            loop: loop,
            configuration: .init(host: configuration.host, port: configuration.port, limits: configuration.limits,
                                 receiveBufferBytes: configuration.receiveBufferBytes,
                                 pingIntervalSeconds: configuration.pingIntervalSeconds,
                                 pingTimeoutSeconds: configuration.pingTimeoutSeconds,
                                 sharesPort: configuration.sharesPort, tls: configuration.tls),
            logger: logger)
    }

    /// Starts listening and connects to Redis (in the background, retrying). Returns the bound port.
    func start() throws -> Int {
        try server.start()
        try httpClient?.start()
        var core = FrameRouter.Configuration()
        core.limits = configuration.limits
        core.issuer = configuration.issuer
            ?? "\(configuration.tls == nil ? "http" : "https")://\(configuration.host):\(server.boundPort)"
        core.tokenLifetimeSeconds = configuration.tokenLifetimeSeconds
        core.corsOrigins = configuration.corsOrigins
        core.registrationsPerMinute = configuration.registrationsPerMinute
        core.onlineGraceSeconds = configuration.onlineGraceSeconds
        core.indicatorRate = configuration.indicatorRate
        core.viewerConnectionsPerAddress = configuration.viewerConnectionsPerAddress
        core.viewerFramesPerSecond = configuration.viewerFramesPerSecond
        core.peekTerms.refusalWindowMilliseconds = Int64(configuration.peekRefusalWindowSeconds * 1000)
        core.peekTerms.grantWindowMilliseconds = Int64(configuration.peekGrantWindowSeconds * 1000)
        core.peekTerms.durationMilliseconds = Int64(configuration.peekDurationSeconds * 1000)
        core.peekTerms.paymentWindowMilliseconds = Int64(configuration.peekPaymentWindowSeconds * 1000)
        core.webhookSecrets = configuration.stripeWebhookSecrets
        var site = StaticFiles.bundled()
        if configuration.stripeSecretKey != nil, configuration.stripePublishableKey != nil {
            site.policy = StaticFiles.stripeContentSecurityPolicy
        }
        let identity = BrokerIdentity(
            id: Base64URL.encode(SecureRandom.bytes(9)), address: "\(configuration.host):\(server.boundPort)",
            version: BrokerCommand.version, pid: Int(getpid()), process: process, startedAt: clock.unixMilliseconds)
        var adminConfiguration = AdminService.Configuration(token: configuration.adminToken, identity: identity)
        adminConfiguration.heartbeatMilliseconds = configuration.heartbeatMilliseconds
        let admin = FrameRouter.Admin(
            configuration: adminConfiguration, files: StaticFiles.admin().responses,
            storeHealth: { [redis] in
                StoreHealth(up: redis.isHealthy,
                            latencyMilliseconds: redis.lastPingRoundTrip.map {
                                Double($0.components.seconds) * 1000 + Double($0.components.attoseconds) / 1e15
                            },
                            commandReconnects: max(0, redis.connection.connectCount - 1),
                            pubSubReconnects: max(0, redis.pubSub.connectCount - 1))
            },
            recentErrors: { [recentLogLines] in recentLogLines?.snapshot ?? [] })
        let router = FrameRouter(
            configuration: core, clock: clock, stores: stores, keyStore: keyStore, metrics: metrics, payments: payments,
            staticFiles: site.responses,
            metricsPage: { [registry] in
                HTTPResponse(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8",
                             body: registry.emitToBuffer())
            },
            admin: admin,
            logger: logger)
        self.router = router
        server.handler = router
        redis.start()
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(server.boundPort)"])
        return server.boundPort
    }

    /// Loads the TLS certificate and key again (SIGHUP) for new connections; on failure the current ones stay and
    /// the error is logged.
    func reloadTLS() {
        guard let files = configuration.tls else { return }
        do {
            try server.reloadTLS(files)
            logger.info("reloaded the TLS certificate", metadata: ["certificate": "\(files.certificate)"])
        } catch {
            logger.error("TLS reload failed; keeping the current certificate", metadata: ["error": "\(error)"])
        }
    }

    /// Closes every client with 1001, stops the server, then closes Redis. Calls `completion` on the loop thread.
    func shutdown(completion: @escaping () -> Void) {
        logger.info("shutting down", metadata: ["connections": "\(server.connectionCount)"])
        router?.stop()
        server.shutdown(grace: configuration.shutdownGraceSeconds) { [self] in
            let finish = { [self] in
                redis.close()
                logger.info("stopped")
                completion()
            }
            if let httpClient { httpClient.shutdown(completion: finish) } else { finish() }
        }
    }
}

/// The core's clock on the broker's loop: system time, libuv timers.
final class LoopClock: BrokerClock {
    private let loop: EventLoop

    init(loop: EventLoop) { self.loop = loop }

    var unixMilliseconds: Int64 { SystemTime.unixMilliseconds() }
    var monotonicSeconds: Double { SystemTime.monotonicSeconds() }

    func makeTimer(_ callback: @escaping () -> Void) -> any BrokerTimer { Timer(LoopTimer(loop: loop, callback)) }

    private final class Timer: BrokerTimer {
        let timer: LoopTimer
        init(_ timer: LoopTimer) { self.timer = timer }
        func start(after milliseconds: UInt64, repeat: UInt64) { timer.start(after: milliseconds, repeat: `repeat`) }
        func stop() { timer.stop() }
        var isActive: Bool { timer.isActive }
    }
}
