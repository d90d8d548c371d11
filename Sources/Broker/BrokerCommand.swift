import AgentChatCore
import AgentChatCrypto
import AgentChatLoop
import AgentChatRedis
import AgentChatTransport
import ArgumentParser
import Foundation
import Logging
import Metrics
import Prometheus
import ServiceLifecycle

/// `agentchat-broker`: flags, `AGENTCHAT_*` environment variables, defaults, then the broker until SIGTERM/SIGINT.
public struct BrokerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "agentchat-broker",
        abstract: "AgentChat: a real-time messaging broker for AI agents.",
        discussion: """
            Every option can also be set with the environment variable named beside it; a flag wins over the \
            variable, the variable over the default. Without --redis-url the broker starts its own redis-server \
            in --data-dir and stops it on exit. `agentchat-broker ledger --help`: the peek ledger export; \
            `agentchat-broker backup --help`, `agentchat-broker restore --help`: backup and restore of the data.
            """,
        version: BrokerCommand.version)

    /// The broker's version, in `--version`, heartbeats and the admin page.
    static let version = "0.1.0"
    /// The last warnings and errors of this process, for the admin page.
    static let recentLogLines = RecentLogLines()

    // Each option's help, variable, default and range are described once, in `BrokerSettings`.
    @Option(help: BrokerSettings.host.help) var host: String?
    @Option(help: BrokerSettings.port.help) var port: Int?
    @Option(help: BrokerSettings.processes.help) var processes: String?
    @Option(help: BrokerSettings.tlsCertificate.help) var tlsCert: String?
    @Option(help: BrokerSettings.tlsKey.help) var tlsKey: String?
    @Option(help: BrokerSettings.redisURL.help) var redisURL: String?
    @Option(help: BrokerSettings.redisSentinels.help) var redisSentinels: String?
    @Option(help: BrokerSettings.redisMaster.help) var redisMaster: String?
    @Option(help: BrokerSettings.redisCluster.help) var redisCluster: String?
    @Option(help: BrokerSettings.redisUsername.help) var redisUsername: String?
    @Option(help: BrokerSettings.redisPasswordFile.help) var redisPasswordFile: String?
    @Option(help: BrokerSettings.redisReplicas.help) var redisReplicas: Int?
    @Option(help: BrokerSettings.redisReplicasTimeout.help) var redisReplicasTimeout: Int?
    @Option(help: BrokerSettings.dataDirectory.help) var dataDir: String?
    @Option(help: BrokerSettings.appendFsync.help) var appendfsync: String?
    @Option(help: BrokerSettings.logLevel.help) var logLevel: String?
    @Option(help: BrokerSettings.logFormat.help) var logFormat: String?
    @Option(help: BrokerSettings.maxMessageBytes.help) var maxMessageBytes: Int?
    @Option(help: BrokerSettings.maxQueueBytes.help) var maxQueueBytes: Int?
    @Option(help: BrokerSettings.maxBodyBytes.help) var maxBodyBytes: Int?
    @Option(help: BrokerSettings.framesPerSecond.help) var framesPerSecond: Double?
    @Option(help: BrokerSettings.pingInterval.help) var pingInterval: Int?
    @Option(help: BrokerSettings.pingTimeout.help) var pingTimeout: Int?
    @Option(help: BrokerSettings.receiveBufferBytes.help) var rxBufferBytes: Int?
    @Option(help: BrokerSettings.issuer.help) var issuer: String?
    @Option(help: BrokerSettings.corsOrigins.help) var corsOrigins: String?
    @Option(help: BrokerSettings.registerRate.help) var registerRate: Int?
    @Option(help: BrokerSettings.tokenTTL.help) var tokenTTL: Int?
    @Option(help: BrokerSettings.historyMax.help) var historyMax: Int?
    @Option(help: BrokerSettings.historyMaxAge.help) var historyMaxAge: Int?
    @Option(help: BrokerSettings.onlineGrace.help) var onlineGrace: Double?
    @Option(help: BrokerSettings.indicatorRate.help) var indicatorRate: Double?
    @Option(help: BrokerSettings.viewerConnectionsPerAddress.help) var viewerConnectionsPerAddress: Int?
    @Option(help: BrokerSettings.viewerFramesPerSecond.help) var viewerFramesPerSecond: Double?
    @Option(help: BrokerSettings.stripeSecretKey.help) var stripeSecretKey: String?
    @Option(help: BrokerSettings.stripePublishableKey.help) var stripePublishableKey: String?
    @Option(help: BrokerSettings.stripeWebhookSecrets.help) var stripeWebhookSecret: String?
    @Option(help: BrokerSettings.stripeAPIBase.help) var stripeAPIBase: String?
    @Option(help: BrokerSettings.peekRefusalWindow.help) var peekRefusalWindow: Double?
    @Option(help: BrokerSettings.peekGrantWindow.help) var peekGrantWindow: Double?
    @Option(help: BrokerSettings.peekDuration.help) var peekDuration: Double?
    @Option(help: BrokerSettings.peekPaymentWindow.help) var peekPaymentWindow: Double?
    @Option(help: BrokerSettings.adminToken.help) var adminToken: String?
    @Flag(help: BrokerSettings.rotateSigningKey.help) var rotateSigningKey = false

    public init() {}

    func resolvedConfiguration(environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> BrokerConfiguration
    {
        typealias S = BrokerSettings
        /// A string flag parsed like its variable.
        func parsed<T>(_ flag: String?, _ setting: Setting<T>, flag name: String? = nil) throws -> T? {
            guard let flag else { return nil }
            guard let value = setting.parse(flag) else {
                throw ValidationError("\(name.map { "\($0): " } ?? "")\(flag) is not a valid value")
            }
            return value
        }
        let env = environment
        var c = BrokerConfiguration()
        c.host = try S.host.resolve(host, env)
        c.port = try S.port.resolve(port, env)
        c.processes = try S.processes.resolve(parsed(processes, S.processes, flag: "--processes"), env)
        c.redisURL = try S.redisURL.resolve(redisURL, env)
        c.redisSentinels = try S.redisSentinels.resolve(parsed(redisSentinels, S.redisSentinels,
                                                               flag: "--redis-sentinels"), env)
        c.redisMaster = try S.redisMaster.resolve(redisMaster, env)
        c.redisCluster = try S.redisCluster.resolve(parsed(redisCluster, S.redisCluster, flag: "--redis-cluster"), env)
        c.redisUsername = try S.redisUsername.resolve(redisUsername, env)
        c.redisPasswordFile = try S.redisPasswordFile.resolve(redisPasswordFile, env)
        c.redisReplicas = try S.redisReplicas.resolve(redisReplicas, env)
        c.redisReplicasTimeoutMilliseconds = try S.redisReplicasTimeout.resolve(redisReplicasTimeout, env)
        if c.redisSentinels != nil, c.redisURL != nil {
            throw ValidationError("give --redis-url or --redis-sentinels, not both")
        }
        if c.redisCluster != nil, c.redisURL != nil || c.redisSentinels != nil {
            throw ValidationError("give one of --redis-url, --redis-sentinels and --redis-cluster")
        }
        if c.redisCluster != nil, c.redisReplicas > 0 {
            throw ValidationError("--redis-replicas is not supported with --redis-cluster (WAIT counts one master's replicas)")
        }
        if (c.redisSentinels == nil) != (c.redisMaster == nil) {
            throw ValidationError("--redis-sentinels and --redis-master go together")
        }
        if c.redisUsername != nil, c.redisPasswordFile == nil {
            throw ValidationError("--redis-username needs --redis-password-file")
        }
        switch (try S.tlsCertificate.resolve(tlsCert, env) as String?, try S.tlsKey.resolve(tlsKey, env) as String?) {
        case (nil, nil):
            c.tls = nil
        case (let certificate?, let key?):
            let files = TLSFiles(certificate: certificate, privateKey: key)
            if let problem = files.unreadable() { throw ValidationError(problem) }
            c.tls = files
        case (_?, nil):
            throw ValidationError("--tls-cert needs --tls-key (AGENTCHAT_TLS_KEY) too")
        case (nil, _?):
            throw ValidationError("--tls-key needs --tls-cert (AGENTCHAT_TLS_CERT) too")
        }
        c.dataDirectory = try S.dataDirectory.resolve(dataDir, env)
        c.appendFsync = try S.appendFsync.resolve(parsed(appendfsync, S.appendFsync), env)
        c.logLevel = try S.logLevel.resolve(parsed(logLevel, S.logLevel), env)
        c.logFormat = try S.logFormat.resolve(parsed(logFormat, S.logFormat), env)
        c.limits.maxMessageBytes = try S.maxMessageBytes.resolve(maxMessageBytes, env)
        c.limits.maxOutboundQueueBytes = try S.maxQueueBytes.resolve(maxQueueBytes, env)
        c.limits.maxRequestBodyBytes = try S.maxBodyBytes.resolve(maxBodyBytes, env)
        c.limits.framesPerSecond = try S.framesPerSecond.resolve(framesPerSecond, env)
        c.limits.frameBurst = max(1, c.limits.framesPerSecond * 2)
        c.pingIntervalSeconds = try S.pingInterval.resolve(pingInterval, env)
        c.pingTimeoutSeconds = try S.pingTimeout.resolve(pingTimeout, env)
        c.receiveBufferBytes = try S.receiveBufferBytes.resolve(rxBufferBytes, env)
        c.issuer = try S.issuer.resolve(issuer, env)
        c.corsOrigins = try S.corsOrigins.resolve(parsed(corsOrigins, S.corsOrigins), env)
        c.registrationsPerMinute = try S.registerRate.resolve(registerRate, env)
        c.tokenLifetimeSeconds = try S.tokenTTL.resolve(tokenTTL, env)
        c.historyMaxCount = try S.historyMax.resolve(historyMax, env)
        c.historyMaxAgeSeconds = try S.historyMaxAge.resolve(historyMaxAge, env)
        c.onlineGraceSeconds = try S.onlineGrace.resolve(onlineGrace, env)
        c.indicatorRate = try S.indicatorRate.resolve(indicatorRate, env)
        c.viewerConnectionsPerAddress = try S.viewerConnectionsPerAddress.resolve(viewerConnectionsPerAddress, env)
        c.viewerFramesPerSecond = try S.viewerFramesPerSecond.resolve(viewerFramesPerSecond, env)
        c.rotateSigningKey = try S.rotateSigningKey.resolve(rotateSigningKey ? true : nil, env)
        c.stripeSecretKey = try S.stripeSecretKey.resolve(stripeSecretKey, env)
        c.stripePublishableKey = try S.stripePublishableKey.resolve(stripePublishableKey, env)
        c.stripeWebhookSecrets = try S.stripeWebhookSecrets.resolve(parsed(stripeWebhookSecret, S.stripeWebhookSecrets), env)
        c.stripeAPIBase = try S.stripeAPIBase.resolve(stripeAPIBase, env)
        c.peekRefusalWindowSeconds = try S.peekRefusalWindow.resolve(peekRefusalWindow, env)
        c.peekGrantWindowSeconds = try S.peekGrantWindow.resolve(peekGrantWindow, env)
        c.peekDurationSeconds = try S.peekDuration.resolve(peekDuration, env)
        c.peekPaymentWindowSeconds = try S.peekPaymentWindow.resolve(peekPaymentWindow, env)
        c.adminToken = try S.adminToken.resolve(adminToken, env)
        if c.stripeSecretKey != nil, c.stripeWebhookSecrets.isEmpty {
            throw ValidationError("with a Stripe secret key, set the webhook secret too (AGENTCHAT_STRIPE_WEBHOOK_SECRET)")
        }
        guard c.limits.maxOutboundQueueBytes >= c.limits.maxMessageBytes else {
            throw ValidationError("max queue bytes must be at least max message bytes")
        }
        return c
    }

    /// Runs the broker until SIGTERM or SIGINT. (Not `run()`: the executable calls this from its async top level.)
    /// With `--processes` > 1 this process becomes the `Supervisor` of that many workers, each of which runs this
    /// same function with a `WorkerRole` in its environment.
    public func serve() async throws {
        let environment = ProcessInfo.processInfo.environment
        var configuration = try resolvedConfiguration(environment: environment)
        let worker = WorkerRole(environment: environment)
        let supervises = worker == nil && configuration.processes > 1
        // With several processes every log line says which one wrote it.
        let processMetadata: Logger.Metadata =
            if let worker { ["process": "\(worker.index)", "pid": "\(getpid())"] }
            else if supervises { ["process": "supervisor", "pid": "\(getpid())"] }
            else { [:] }
        let level = configuration.logLevel
        let recent = Self.recentLogLines
        // Every logger also keeps its warnings and errors in `recentLogLines`, for the admin page.
        switch configuration.logFormat {
        case .text:
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                handler.metadata = processMetadata
                return MultiplexLogHandler([handler, RecentLogLines.Handler(label: label, lines: recent)])
            }
        case .json:
            LoggingSystem.bootstrap { label in
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                handler.metadata = processMetadata
                return MultiplexLogHandler([handler, RecentLogLines.Handler(label: label, lines: recent)])
            }
        }
        let logger = Logger(label: "agentchat.broker")
        signal(SIGPIPE, SIG_IGN)
        if let worker {
            guard worker.watchSupervisor() else { throw ValidationError("the supervisor is gone") }
            worker.takeSupervisorsName()
            // The supervisor did the one-time work: it fixed the port, runs the embedded Redis, made the keys.
            configuration.port = worker.port
            configuration.sharesPort = true
            if let url = worker.redisURL { configuration.redisURL = url }
            configuration.rotateSigningKey = false
        }
        LibWebSocketsLog.route(to: Logger(label: "agentchat.lws"))

        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        // Redis answers in well under a millisecond on a LAN: buckets from 100 µs.
        factory.durationHistogramBuckets[BrokerMetrics.redisCommandDurationLabel] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500),
            .milliseconds(5), .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100),
            .milliseconds(250), .milliseconds(1000),
        ]
        MetricsSystem.bootstrap(factory)
        if let worker {
            // Each worker has its own /metrics; this says which one answered a scrape.
            Gauge(label: "agentchat_process", dimensions: [("index", "\(worker.index)"), ("pid", "\(getpid())")])
                .record(1)
        }

        var services: [any Service] = []
        var target: RedisTarget
        var embedded: EmbeddedRedis?
        if let seeds = configuration.redisCluster {
            target = RedisTarget(.cluster(seeds: seeds))
        } else if let sentinels = configuration.redisSentinels, let master = configuration.redisMaster {
            target = RedisTarget(.sentinel(sentinels: sentinels, master: master))
        } else if let url = configuration.redisURL {
            target = try RedisTarget(url: url)
        } else {
            let redis = try EmbeddedRedis(configuration: .init(
                dataDirectory: configuration.dataDirectory,
                appendFsync: configuration.appendFsync == .always ? .always : .everysec))
            target = .direct(redis.endpoint)
            embedded = redis
            services.append(EmbeddedRedisService(redis: redis))
            logger.info("embedded redis started", metadata: ["dataDir": "\(configuration.dataDirectory)"])
        }

        if let file = configuration.redisPasswordFile {
            let password: String
            do {
                password = try String(contentsOfFile: file, encoding: .utf8)
                    .split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first
                    .map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            } catch {
                embedded?.stop()
                throw ValidationError("cannot read --redis-password-file \(file): \(error.localizedDescription)")
            }
            guard !password.isEmpty else {
                embedded?.stop()
                throw ValidationError("--redis-password-file \(file) holds no password")
            }
            target.credentials = RedisCredentials(username: configuration.redisUsername ?? target.credentials?.username,
                                                  password: password)
        }
        logger.info("redis", metadata: ["target": "\(target)"])

        let keyStore: SigningKeyStore
        do {
            try FileManager.default.createDirectory(atPath: configuration.dataDirectory,
                                                    withIntermediateDirectories: true,
                                                    attributes: [.posixPermissions: 0o700])
            keyStore = try SigningKeyStore(directory: configuration.dataDirectory + "/keys",
                                           now: Int64(Date().timeIntervalSince1970 * 1000))
            if configuration.rotateSigningKey {
                _ = try keyStore.rotate(now: Int64(Date().timeIntervalSince1970 * 1000))
                logger.info("rotated the token signing key", metadata: ["kid": "\(keyStore.active.keyID)"])
            }
        } catch {
            embedded?.stop()
            throw error
        }
        let hostForURL = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
        let scheme = configuration.tls == nil ? "http" : "https"
        func announcement(_ port: Int) -> String { "AgentChat broker listening on \(scheme)://\(hostForURL):\(port)\n" }

        if supervises {
            // Bound, never listening: it fixes the port (port 0 picks one here) for every worker, restarted ones too,
            // and gets no connections itself.
            let reservation: (fd: Int32, port: Int)
            do {
                reservation = try SharedListener.bind(host: configuration.host, port: configuration.port)
            } catch {
                embedded?.stop()
                throw error
            }
            defer { close(reservation.fd) }
            let supervisor = Supervisor(
                count: configuration.processes, port: reservation.port,
                arguments: Array(CommandLine.arguments.dropFirst()), environment: environment,
                redisURL: embedded.map { "\($0.endpoint)" }, logger: logger)
            // Each worker reloads its own certificate; the supervisor passes SIGHUP on.
            let hangups = configuration.tls == nil ? nil : Self.onHangup { supervisor.signalWorkers(SIGHUP) }
            defer { hangups?.cancel() }
            services.append(SupervisorService(supervisor: supervisor, announcement: announcement(reservation.port)))
            try await runGroup(services, logger: logger)
            return
        }

        let loop = EventLoop.startThread()
        let settled = configuration
        let settledTarget = target
        let started: (LoopBound<Broker>, Int)
        do {
            started = try await loop.submit {
                let broker = try Broker(loop: loop, configuration: settled, redisTarget: settledTarget,
                                    keyStore: keyStore, logger: logger, registry: registry,
                                    process: worker?.index, recentLogLines: recent)
                let port = try broker.start()
                return (LoopBound(broker, loop: loop), port)
            }
        } catch {
            loop.stop()
            embedded?.stop()
            throw error
        }
        let (broker, port) = started
        let hangups = configuration.tls == nil ? nil : Self.onHangup {
            loop.execute { broker.value.reloadTLS() }
        }
        defer { hangups?.cancel() }
        let announce: @Sendable () -> Void
        if let worker {
            announce = { worker.reportReady(port: port) }
        } else {
            let line = announcement(port)
            announce = { FileHandle.standardOutput.write(Data(line.utf8)) }
        }
        services.append(BrokerService(loop: loop, broker: broker, announce: announce))
        try await runGroup(services, logger: logger)
    }

    /// Calls `action` on each SIGHUP (instead of the default: exit) until the source is cancelled.
    private static func onHangup(_ action: @escaping @Sendable () -> Void) -> any DispatchSourceSignal {
        signal(SIGHUP, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGHUP, queue: .global())
        source.setEventHandler(handler: action)
        source.resume()
        return source
    }

    private func runGroup(_ services: [any Service], logger: Logger) async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: services.map {
                    .init(service: $0, successTerminationBehavior: .gracefullyShutdownGroup)
                },
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger))
        try await group.run()
    }
}

/// Runs until graceful shutdown, then closes every client with 1001 and stops the loop.
struct BrokerService: Service, CustomStringConvertible {
    let loop: EventLoop
    let broker: LoopBound<Broker>
    /// Called once the service group runs, so its signal handlers are in place before anyone who waits for the
    /// announcement (scripts, tests; a worker's supervisor) can send SIGTERM: prints the listening line on stdout,
    /// or, in a worker, reports `ready` to the supervisor.
    let announce: @Sendable () -> Void

    var description: String { "BrokerService" }

    func run() async throws {
        announce()
        try? await gracefulShutdown()
        let broker = self.broker
        try await loop.submitAndWait { (complete: @escaping (Result<Void, any Error>) -> Void) in
            broker.value.shutdown { complete(.success(())) }
        }
        loop.stop()
    }
}

/// The supervisor's one service: starts the workers, prints the listening line once every worker listens, and on
/// graceful shutdown stops them all. A worker that exits before it is ready fails the group.
struct SupervisorService: Service, CustomStringConvertible {
    let supervisor: Supervisor
    let announcement: String

    var description: String { "SupervisorService(processes: \(supervisor.count))" }

    func run() async throws {
        try await supervisor.start()
        // Not when SIGTERM came while the workers were starting: nobody should connect now.
        if !Task.isShuttingDownGracefully { FileHandle.standardOutput.write(Data(announcement.utf8)) }
        try? await gracefulShutdown()
        await supervisor.stop()
    }
}

/// Stops the embedded redis-server when the group shuts down; it is listed first, so it stops last.
struct EmbeddedRedisService: Service, CustomStringConvertible {
    let redis: EmbeddedRedis

    var description: String { "EmbeddedRedisService(pid: \(redis.pid))" }

    func run() async throws {
        try? await gracefulShutdown()
        redis.stop()
    }
}
