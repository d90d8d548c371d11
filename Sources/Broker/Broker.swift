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
    private let codec: FrameCodec
    private let metrics: BrokerMetrics
    private let registry: PrometheusCollectorRegistry
    private var router = HTTPRouter()
    private var healthTimer: LoopTimer?

    init(loop: EventLoop, configuration: BrokerConfiguration, redisEndpoint: RedisEndpoint, logger: Logger,
         registry: PrometheusCollectorRegistry)
    {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        self.registry = registry
        metrics = BrokerMetrics()
        codec = FrameCodec(limits: configuration.limits)
        redis = RedisClient(loop: loop, endpoint: redisEndpoint, logger: Logger(label: "agentchat.redis"))
        server = WebSocketServer(
            loop: loop,
            configuration: .init(host: configuration.host, port: configuration.port, limits: configuration.limits,
                                 receiveBufferBytes: configuration.receiveBufferBytes,
                                 pingIntervalSeconds: configuration.pingIntervalSeconds,
                                 pingTimeoutSeconds: configuration.pingTimeoutSeconds),
            logger: logger)
        server.delegate = self
        router.add(.get, "/health") { [unowned self] _, respond in respond(health()) }
        router.add(.get, "/metrics") { [unowned self] _, respond in respond(metricsPage()) }
    }

    /// Connects to Redis (in the background, retrying) and starts listening. Returns the bound port.
    func start() throws -> Int {
        redis.start()
        try server.start()
        healthTimer = LoopTimer(loop: loop) { [unowned self] in metrics.redisUp.record(redis.isHealthy ? 1 : 0) }
        healthTimer?.start(after: 0, repeat: 1000)
        logger.info("listening", metadata: ["host": "\(configuration.host)", "port": "\(server.boundPort)"])
        return server.boundPort
    }

    /// Closes every client with 1001, stops the server, then closes Redis. Calls `completion` on the loop thread.
    func shutdown(completion: @escaping () -> Void) {
        logger.info("shutting down", metadata: ["connections": "\(server.sessions.count)"])
        healthTimer = nil
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
    }

    func sessionClosed(_ session: WebSocketSession) {
        metrics.webSocketConnections.record(server.sessions.count)
        logger.debug("session closed", metadata: ["session": "\(session.id)"])
    }

    func session(_ session: WebSocketSession, received message: [UInt8], isBinary: Bool) {
        metrics.framesReceived.increment()
        guard session.frameBudget.take(now: Clock.monotonicSeconds()) else {
            reply(session, .error(ProtocolError(.rateLimited, "too many frames; slow down"), ref: nil))
            return
        }
        guard !isBinary else {
            reply(session, .error(ProtocolError(.binaryNotSupported, "protocol v1 frames are JSON text"), ref: nil))
            return
        }
        let decoded = codec.decode(message)
        switch decoded.frame {
        case .success(.ping(let id)):
            reply(session, .pong(ref: id, time: Clock.unixMilliseconds()))
        case .failure(let error):
            reply(session, .error(error, ref: decoded.id))
        }
    }

    private func reply(_ session: WebSocketSession, _ frame: ServerFrame) {
        if case .error(let error, _) = frame { metrics.frameError(error.code.rawValue) }
        metrics.framesSent.increment()
        session.send(OutboundFrame(codec.encode(frame)))
    }
}
