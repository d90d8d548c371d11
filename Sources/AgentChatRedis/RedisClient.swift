import AgentChatLoop
import Logging

/// The broker's Redis: one command connection, one pub/sub connection, the Lua scripts, and health.
///
/// Loop-bound. Health: a PING every `pingInterval` on the command connection; `isHealthy` while that connection
/// is connected and the last PONG is younger than `maximumPongAge`.
///
/// With a `.cluster` target the surface is the same and routes (`RedisCluster`): `send` goes to the master of the
/// command's key (`RedisClusterSlot.routingKey`), `scripts.call` to the master of the script's first key,
/// `pubSub.subscribe(…, sharded: true)` to `SSUBSCRIBE` on the channel's master (classic channels stay on one
/// connection), `addConnectHook` runs on every master's (re)connection, `isHealthy` needs every master, and
/// `waitForReplicas` is refused. `connection` is then the control connection (slot-map queries, any node).
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
    public let target: RedisTarget
    public let connection: RedisConnection
    public let pubSub: RedisPubSub
    public let scripts: RedisScripts
    private let configuration: Configuration
    private var pingTimer: LoopTimer?
    private var lastPong: ContinuousClock.Instant?
    /// The last health PING's round trip (for the admin page); nil until one was answered.
    public private(set) var lastPingRoundTrip: Duration?
    /// The completions sharing the `WAIT` on its way, if one is.
    private var waitingForReplicas: [(Result<Int, RedisError>) -> Void]?
    /// Cluster mode's router; nil for one server or Sentinel.
    let cluster: RedisCluster?

    /// Whether this client routes over a Redis Cluster (publish feeds with `SPUBLISH` then).
    public var isCluster: Bool { cluster != nil }

    public convenience init(loop: EventLoop, endpoint: RedisEndpoint, configuration: Configuration = .init(),
                            logger: Logger = Logger(label: "agentchat.redis")) {
        self.init(loop: loop, target: .direct(endpoint), configuration: configuration, logger: logger)
    }

    public init(loop: EventLoop, target: RedisTarget, configuration: Configuration = .init(),
                logger: Logger = Logger(label: "agentchat.redis")) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.target = target
        self.configuration = configuration
        connection = RedisConnection(loop: loop, target: target, configuration: configuration.connection,
                                     logger: logger)
        pubSub = RedisPubSub(loop: loop, target: target, configuration: configuration.connection,
                             logger: logger)
        scripts = RedisScripts(connection: connection, logger: logger)
        if case .cluster = target.location {
            let cluster = RedisCluster(loop: loop, control: connection, credentials: target.credentials,
                                       configuration: configuration.connection, logger: logger)
            self.cluster = cluster
            scripts.cluster = cluster
            pubSub.cluster = cluster
        } else {
            cluster = nil
            connection.addConnectHook { [weak self] in self?.ping() }
        }
        pingTimer = LoopTimer(loop: loop) { [weak self] in self?.ping() }
    }

    deinit {
        pingTimer = nil
    }

    /// Connects both connections and starts the health PINGs. Idempotent.
    public func start() {
        loop.preconditionInEventLoop()
        if let cluster { cluster.start() } else { connection.start() }
        pubSub.start()
        if pingTimer?.isActive == false {
            pingTimer?.start(after: configuration.pingInterval, repeat: configuration.pingInterval)
        }
    }

    /// Closes everything; pending commands complete with `.closed`. Idempotent.
    public func close() {
        loop.preconditionInEventLoop()
        pingTimer?.stop()
        cluster?.close()
        connection.close()
        pubSub.close()
        lastPong = nil
    }

    /// Whether the command connection is up and answered a PING recently.
    public var isHealthy: Bool {
        loop.preconditionInEventLoop()
        if let cluster { return cluster.isHealthy(maximumAge: configuration.maximumPongAge) }
        guard connection.state == .connected, let lastPong else { return false }
        return ContinuousClock.now - lastPong < configuration.maximumPongAge
    }

    /// Sends a command on the command connection; see `RedisConnection.send`.
    public func send(_ arguments: [RedisArgument], completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        if let cluster { return cluster.send(arguments, completion: completion) }
        connection.send(arguments, completion: completion)
    }

    /// Adds a hook run on every (re)connection of the command connection; in cluster mode, of every master's.
    public func addConnectHook(_ hook: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        if let cluster { return cluster.addConnectHook(hook) }
        connection.addConnectHook(hook)
    }

    /// Waits until `replicas` replicas have every write sent so far on the command connection (`WAIT`), for at most
    /// `timeoutMilliseconds`; answers how many have. Calls made while a `WAIT` is on its way share it: their writes'
    /// replies came before its reply, so those writes were sent before it (one connection answers in order).
    /// `WAIT` holds the command connection until it answers; one per batch of replies keeps that short.
    /// Refused in cluster mode (`WAIT` counts the replicas of one master, and writes go to many).
    public func waitForReplicas(_ replicas: Int, timeoutMilliseconds: Int,
                                completion: @escaping (Result<Int, RedisError>) -> Void)
    {
        loop.preconditionInEventLoop()
        if cluster != nil {
            return completion(.failure(.unexpectedReply("WAIT is not supported on a Redis Cluster client")))
        }
        if waitingForReplicas != nil {
            waitingForReplicas!.append(completion)
            return
        }
        waitingForReplicas = [completion]
        connection.send(["WAIT", RedisArgument(replicas), RedisArgument(timeoutMilliseconds)]) { [weak self] result in
            let waiting = self?.waitingForReplicas ?? []
            self?.waitingForReplicas = nil
            let answer: Result<Int, RedisError> = result.flatMap { value in
                value.int.map { .success($0) } ?? .failure(.unexpectedReply("WAIT answered \(value)"))
            }
            for completion in waiting { completion(answer) }
        }
    }

    private func ping() {
        if let cluster { return cluster.ping() }
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
