import AgentChatLoop
import Logging

/// The broker's Redis: one command connection, one pub/sub connection, the Lua scripts, and health.
///
/// Loop-bound. Health: a PING every `pingInterval` on the command connection; `isHealthy` while that connection
/// is connected and the last PONG is younger than `maximumPongAge`.
public final class RedisClient {
    public struct Configuration: Sendable {
        public var connection = RedisConnection.Configuration()
        /// Milliseconds between health PINGs.
        public var pingInterval: UInt64 = 1_000
        /// How old the last PONG may be for the client to count as healthy.
        public var maximumPongAge: Duration = .seconds(3)
        public init() {}
    }

    public let loop: EventLoop
    public let endpoint: RedisEndpoint
    public let connection: RedisConnection
    public let pubSub: RedisPubSub
    public let scripts: RedisScripts
    private let configuration: Configuration
    private var pingTimer: LoopTimer?
    private var lastPong: ContinuousClock.Instant?
    /// The last health PING's round trip (for the admin page); nil until one was answered.
    public private(set) var lastPingRoundTrip: Duration?

    public init(loop: EventLoop, endpoint: RedisEndpoint, configuration: Configuration = .init(),
                logger: Logger = Logger(label: "agentchat.redis")) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.endpoint = endpoint
        self.configuration = configuration
        connection = RedisConnection(loop: loop, endpoint: endpoint, configuration: configuration.connection,
                                     logger: logger)
        pubSub = RedisPubSub(loop: loop, endpoint: endpoint, configuration: configuration.connection,
                             logger: logger)
        scripts = RedisScripts(connection: connection, logger: logger)
        connection.addConnectHook { [weak self] in self?.ping() }
        pingTimer = LoopTimer(loop: loop) { [weak self] in self?.ping() }
    }

    deinit {
        pingTimer = nil
    }

    /// Connects both connections and starts the health PINGs. Idempotent.
    public func start() {
        loop.preconditionInEventLoop()
        connection.start()
        pubSub.start()
        if pingTimer?.isActive == false {
            pingTimer?.start(after: configuration.pingInterval, repeat: configuration.pingInterval)
        }
    }

    /// Closes everything; pending commands complete with `.closed`. Idempotent.
    public func close() {
        loop.preconditionInEventLoop()
        pingTimer?.stop()
        connection.close()
        pubSub.close()
        lastPong = nil
    }

    /// Whether the command connection is up and answered a PING recently.
    public var isHealthy: Bool {
        loop.preconditionInEventLoop()
        guard connection.state == .connected, let lastPong else { return false }
        return ContinuousClock.now - lastPong < configuration.maximumPongAge
    }

    /// Sends a command on the command connection; see `RedisConnection.send`.
    public func send(_ arguments: [RedisArgument], completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        connection.send(arguments, completion: completion)
    }

    private func ping() {
        guard connection.state == .connected else {
            lastPong = nil
            return
        }
        let sent = ContinuousClock.now
        connection.send(["PING"]) { [weak self] result in
            if case .success(.status("PONG")) = result {
                self?.lastPong = .now
                self?.lastPingRoundTrip = .now - sent
            }
        }
    }
}
