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
            in --data-dir and stops it on exit.
            """)

    @Option(help: "Address to listen on (env AGENTCHAT_HOST, default 127.0.0.1).")
    var host: String?
    @Option(help: "TCP port for HTTP and WebSocket; 0 picks a free port (env AGENTCHAT_PORT, default 8080).")
    var port: Int?
    @Option(help: ArgumentHelp(
        "Redis to use, redis://host:port or unix:///path (env AGENTCHAT_REDIS_URL).",
        discussion: "Omit it to run an embedded redis-server in the data directory."))
    var redisURL: String?
    @Option(help: "Directory for the embedded Redis's data and the broker's keys (env AGENTCHAT_DATA_DIR, default ./data).")
    var dataDir: String?
    @Option(help: "Embedded Redis AOF fsync policy: everysec or always (env AGENTCHAT_APPENDFSYNC, default everysec).")
    var appendfsync: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (env AGENTCHAT_LOG_LEVEL, default info).")
    var logLevel: String?
    @Option(help: "text or json: one JSON object per line on stderr (env AGENTCHAT_LOG_FORMAT, default text).")
    var logFormat: String?
    @Option(help: "Largest WebSocket message; larger closes with 1009 (env AGENTCHAT_MAX_MESSAGE_BYTES, default 65536).")
    var maxMessageBytes: Int?
    @Option(help: "Bytes queued for one slow client before it is closed with 4008 (env AGENTCHAT_MAX_QUEUE_BYTES, default 1048576).")
    var maxQueueBytes: Int?
    @Option(help: "Largest HTTP request body; larger gets 413 (env AGENTCHAT_MAX_BODY_BYTES, default 65536).")
    var maxBodyBytes: Int?
    @Option(help: "Frames per second one connection may send on average (env AGENTCHAT_FRAMES_PER_SECOND, default 1000).")
    var framesPerSecond: Double?
    @Option(help: "Seconds of silence before the broker pings a client (env AGENTCHAT_PING_INTERVAL, default 30).")
    var pingInterval: Int?
    @Option(help: "Seconds after a ping without any answer before the connection is dropped (env AGENTCHAT_PING_TIMEOUT, default 10).")
    var pingTimeout: Int?
    @Option(help: "Receive buffer per WebSocket connection, bytes (env AGENTCHAT_RX_BUFFER_BYTES, default 1024).")
    var rxBufferBytes: Int?
    @Option(help: "The broker's identity in login challenges and tokens; brokers behind one address share it (env AGENTCHAT_ISSUER, default http://HOST:PORT).")
    var issuer: String?
    @Option(help: "Comma-separated origins allowed to call the REST API from a browser (env AGENTCHAT_CORS_ORIGINS, default none).")
    var corsOrigins: String?
    @Option(help: "Registrations per minute per client address (env AGENTCHAT_REGISTER_RATE, default 10).")
    var registerRate: Int?
    @Option(help: "Session token lifetime in seconds (env AGENTCHAT_TOKEN_TTL, default 900).")
    var tokenTTL: Int?
    @Option(help: "Messages kept per channel (env AGENTCHAT_HISTORY_MAX, default 10000).")
    var historyMax: Int?
    @Option(help: "Seconds a message is kept (env AGENTCHAT_HISTORY_MAX_AGE, default 2592000 = 30 days).")
    var historyMaxAge: Int?
    @Option(help: "Seconds after an agent's last connection closes before it counts as offline (env AGENTCHAT_ONLINE_GRACE, default 15).")
    var onlineGrace: Double?
    @Option(help: "Indicator updates per second per viewer, at most (env AGENTCHAT_INDICATOR_RATE, default 4).")
    var indicatorRate: Double?
    @Option(help: "Viewer connections per client address (env AGENTCHAT_VIEWER_CONNECTIONS_PER_ADDRESS, default 20).")
    var viewerConnectionsPerAddress: Int?
    @Option(help: "Frames per second a viewer may send (env AGENTCHAT_VIEWER_FRAMES_PER_SECOND, default 10).")
    var viewerFramesPerSecond: Double?
    @Flag(help: "Start a new token signing key; tokens signed by the old one stay valid (env AGENTCHAT_ROTATE_SIGNING_KEY=1).")
    var rotateSigningKey = false

    public init() {}

    func resolvedConfiguration(environment: [String: String] = ProcessInfo.processInfo.environment) throws
        -> BrokerConfiguration
    {
        func pick<T>(_ flag: T?, _ name: String, _ parse: (String) -> T?, _ fallback: T) throws -> T {
            if let flag { return flag }
            guard let raw = environment[name] else { return fallback }
            guard let value = parse(raw) else { throw ValidationError("\(name)=\(raw) is not a valid value") }
            return value
        }
        var c = BrokerConfiguration()
        c.host = try pick(host, "AGENTCHAT_HOST", { $0.isEmpty ? nil : $0 }, c.host)
        c.port = try pick(port, "AGENTCHAT_PORT", { Int($0) }, c.port)
        c.redisURL = try pick(redisURL, "AGENTCHAT_REDIS_URL", { $0 }, nil)
        if c.redisURL?.isEmpty == true { c.redisURL = nil }
        c.dataDirectory = try pick(dataDir, "AGENTCHAT_DATA_DIR", { $0.isEmpty ? nil : $0 }, c.dataDirectory)
        let fsync = try pick(appendfsync, "AGENTCHAT_APPENDFSYNC", { $0 }, c.appendFsync.rawValue)
        guard let fsyncValue = BrokerConfiguration.AppendFsync(rawValue: fsync) else {
            throw ValidationError("appendfsync must be everysec or always, not \(fsync)")
        }
        c.appendFsync = fsyncValue
        let level = try pick(logLevel, "AGENTCHAT_LOG_LEVEL", { $0 }, c.logLevel.rawValue)
        guard let levelValue = Logger.Level(rawValue: level.lowercased()) else {
            throw ValidationError("unknown log level \(level)")
        }
        c.logLevel = levelValue
        let format = try pick(logFormat, "AGENTCHAT_LOG_FORMAT", { $0 }, c.logFormat.rawValue)
        guard let formatValue = BrokerConfiguration.LogFormat(rawValue: format) else {
            throw ValidationError("log format must be text or json, not \(format)")
        }
        c.logFormat = formatValue
        c.limits.maxMessageBytes = try pick(maxMessageBytes, "AGENTCHAT_MAX_MESSAGE_BYTES", { Int($0) },
                                            c.limits.maxMessageBytes)
        c.limits.maxOutboundQueueBytes = try pick(maxQueueBytes, "AGENTCHAT_MAX_QUEUE_BYTES", { Int($0) },
                                                  c.limits.maxOutboundQueueBytes)
        c.limits.maxRequestBodyBytes = try pick(maxBodyBytes, "AGENTCHAT_MAX_BODY_BYTES", { Int($0) },
                                                c.limits.maxRequestBodyBytes)
        c.limits.framesPerSecond = try pick(framesPerSecond, "AGENTCHAT_FRAMES_PER_SECOND", { Double($0) },
                                            c.limits.framesPerSecond)
        c.limits.frameBurst = max(1, c.limits.framesPerSecond * 2)
        c.pingIntervalSeconds = try pick(pingInterval, "AGENTCHAT_PING_INTERVAL", { Int($0) }, c.pingIntervalSeconds)
        c.pingTimeoutSeconds = try pick(pingTimeout, "AGENTCHAT_PING_TIMEOUT", { Int($0) }, c.pingTimeoutSeconds)
        c.receiveBufferBytes = try pick(rxBufferBytes, "AGENTCHAT_RX_BUFFER_BYTES", { Int($0) }, c.receiveBufferBytes)

        c.issuer = try pick(issuer, "AGENTCHAT_ISSUER", { $0.isEmpty ? nil : $0 }, nil)
        let origins = try pick(corsOrigins, "AGENTCHAT_CORS_ORIGINS", { $0 }, "")
        c.corsOrigins = origins.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
        c.registrationsPerMinute = try pick(registerRate, "AGENTCHAT_REGISTER_RATE", { Int($0) },
                                            c.registrationsPerMinute)
        c.tokenLifetimeSeconds = try pick(tokenTTL, "AGENTCHAT_TOKEN_TTL", { Int($0) }, c.tokenLifetimeSeconds)
        c.historyMaxCount = try pick(historyMax, "AGENTCHAT_HISTORY_MAX", { Int($0) }, c.historyMaxCount)
        c.historyMaxAgeSeconds = try pick(historyMaxAge, "AGENTCHAT_HISTORY_MAX_AGE", { Int($0) }, c.historyMaxAgeSeconds)
        guard c.historyMaxCount >= 1, c.historyMaxAgeSeconds >= 1 else {
            throw ValidationError("history limits must be positive")
        }
        c.onlineGraceSeconds = try pick(onlineGrace, "AGENTCHAT_ONLINE_GRACE", { Double($0) }, c.onlineGraceSeconds)
        c.indicatorRate = try pick(indicatorRate, "AGENTCHAT_INDICATOR_RATE", { Double($0) }, c.indicatorRate)
        c.viewerConnectionsPerAddress = try pick(viewerConnectionsPerAddress, "AGENTCHAT_VIEWER_CONNECTIONS_PER_ADDRESS",
                                                 { Int($0) }, c.viewerConnectionsPerAddress)
        c.viewerFramesPerSecond = try pick(viewerFramesPerSecond, "AGENTCHAT_VIEWER_FRAMES_PER_SECOND", { Double($0) },
                                           c.viewerFramesPerSecond)
        guard c.onlineGraceSeconds >= 0.5, (0.1...50).contains(c.indicatorRate), c.viewerConnectionsPerAddress >= 1,
            c.viewerFramesPerSecond > 0
        else { throw ValidationError("viewer and indicator settings out of range") }
        c.rotateSigningKey = rotateSigningKey || environment["AGENTCHAT_ROTATE_SIGNING_KEY"] == "1"

        guard (0...65535).contains(c.port) else { throw ValidationError("port must be 0...65535") }
        guard c.limits.maxMessageBytes >= 1024, c.limits.maxMessageBytes <= 16 << 20 else {
            throw ValidationError("max message bytes must be between 1 KiB and 16 MiB")
        }
        guard c.limits.maxOutboundQueueBytes >= c.limits.maxMessageBytes else {
            throw ValidationError("max queue bytes must be at least max message bytes")
        }
        guard c.limits.maxRequestBodyBytes >= 0, c.limits.framesPerSecond > 0 else {
            throw ValidationError("limits must be positive")
        }
        guard c.pingIntervalSeconds >= 1, c.pingTimeoutSeconds >= 1 else {
            throw ValidationError("ping interval and timeout must be at least 1 second")
        }
        guard c.registrationsPerMinute >= 1 else { throw ValidationError("register rate must be at least 1") }
        guard (60...86400).contains(c.tokenLifetimeSeconds) else {
            throw ValidationError("token TTL must be between 60 and 86400 seconds")
        }
        guard (128...65536).contains(c.receiveBufferBytes) else {
            throw ValidationError("rx buffer bytes must be between 128 and 65536")
        }
        return c
    }

    /// Runs the broker until SIGTERM or SIGINT. (Not `run()`: the executable calls this from its async top level.)
    public func serve() async throws {
        let configuration = try resolvedConfiguration()
        let level = configuration.logLevel
        switch configuration.logFormat {
        case .text:
            LoggingSystem.bootstrap { label in
                var handler = StreamLogHandler.standardError(label: label)
                handler.logLevel = level
                return handler
            }
        case .json:
            LoggingSystem.bootstrap { label in
                var handler = JSONLogHandler(label: label)
                handler.logLevel = level
                return handler
            }
        }
        let logger = Logger(label: "agentchat.broker")
        signal(SIGPIPE, SIG_IGN)
        LibWebSocketsLog.route(to: Logger(label: "agentchat.lws"))

        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))

        var services: [any Service] = []
        let endpoint: RedisEndpoint
        var embedded: EmbeddedRedis?
        if let url = configuration.redisURL {
            endpoint = try RedisEndpoint(url: url)
        } else {
            let redis = try EmbeddedRedis(configuration: .init(
                dataDirectory: configuration.dataDirectory,
                appendFsync: configuration.appendFsync == .always ? .always : .everysec))
            endpoint = redis.endpoint
            embedded = redis
            services.append(EmbeddedRedisService(redis: redis))
            logger.info("embedded redis started", metadata: ["dataDir": "\(configuration.dataDirectory)"])
        }

        try FileManager.default.createDirectory(atPath: configuration.dataDirectory, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let keyStore = try SigningKeyStore(directory: configuration.dataDirectory + "/keys",
                                           now: Int64(Date().timeIntervalSince1970 * 1000))
        if configuration.rotateSigningKey {
            _ = try keyStore.rotate(now: Int64(Date().timeIntervalSince1970 * 1000))
            logger.info("rotated the token signing key", metadata: ["kid": "\(keyStore.active.keyID)"])
        }

        let loop = EventLoop.startThread()
        let started: (LoopBound<Broker>, Int)
        do {
            started = try await loop.submit {
                let broker = Broker(loop: loop, configuration: configuration, redisEndpoint: endpoint,
                                    keyStore: keyStore, logger: logger, registry: registry)
                let port = try broker.start()
                return (LoopBound(broker, loop: loop), port)
            }
        } catch {
            loop.stop()
            embedded?.stop()
            throw error
        }
        let (broker, port) = started
        let hostForURL = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
        services.append(BrokerService(loop: loop, broker: broker,
                                      announcement: "AgentChat broker listening on http://\(hostForURL):\(port)\n"))
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
    /// Printed on stdout once the service group runs, so its signal handlers are in place before anyone who
    /// waits for this line (scripts, tests) can send SIGTERM.
    let announcement: String

    var description: String { "BrokerService" }

    func run() async throws {
        FileHandle.standardOutput.write(Data(announcement.utf8))
        try? await gracefulShutdown()
        let broker = self.broker
        try await loop.submitAndWait { (complete: @escaping (Result<Void, any Error>) -> Void) in
            broker.value.shutdown { complete(.success(())) }
        }
        loop.stop()
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
