import AgentChatLoop
import CHiredisShims
import CHiredis
import Logging

/// One hiredis async connection on the event loop, reconnecting by itself until `close()`.
///
/// Loop-bound: create, use and release it on the loop thread (entry points check). Commands sent while not
/// connected fail at once with `.notConnected`; nothing is queued. Commands sent in one loop turn leave in one write
/// (hiredis appends them to one output buffer), so pipelining needs nothing special.
///
/// Reentrancy: completions and hooks run on the loop thread, possibly synchronously inside `send` (when it fails
/// fast) or inside hiredis' read handler; they may call `send` and `close` freely.
public final class RedisConnection {
    /// Connection state, reported through `onStateChange`.
    public enum State: Sendable, Hashable {
        case connecting
        case connected
        case disconnected
    }

    /// Timings; all in milliseconds.
    public struct Configuration: Sendable {
        /// A connect attempt that has not completed after this long is abandoned.
        public var connectTimeout: UInt64 = 2_000
        /// First reconnect delay; doubles per failed attempt up to `maximumReconnectDelay`, then jittered.
        public var initialReconnectDelay: UInt64 = 50
        public var maximumReconnectDelay: UInt64 = 2_000
        public init() {}
    }

    public let loop: EventLoop
    /// Which server, and how to log in.
    public let target: RedisTarget
    /// The server of the current (or last) connection: the target's endpoint, or the master the sentinels named.
    public private(set) var endpoint: RedisEndpoint
    public let configuration: Configuration
    private var logger: Logger
    /// Sentinel mode: asks the sentinels for the master before every connection.
    private var resolver: SentinelResolver?
    private var resolving = false
    /// Connections the server refused after connecting (credentials, not the master), for the reconnect backoff;
    /// reset once a connection passes its checks.
    private var refusedAttempts = 0

    /// The current state; `.disconnected` before `start()` and after `close()`.
    public private(set) var state: State = .disconnected
    /// Called on the loop thread after every state change (after connect hooks on connect).
    public var onStateChange: ((State) -> Void)?

    /// Run, in order, every time a connection is established, before `onStateChange(.connected)`: load scripts,
    /// re-subscribe, and so on. Commands they send go before anything sent later.
    private var connectHooks: [() -> Void] = []
    /// Receives every reply to a subscription command (SUBSCRIBE, UNSUBSCRIBE and the messages that follow).
    var onPush: ((RedisValue) -> Void)?
    /// Metrics: called with every command's round trip (sent → reply or failure). Nil costs nothing.
    public var roundTripObserver: ((Duration) -> Void)?
    /// Metrics: how many times a connection was established; every one after the first is a reconnection.
    public private(set) var connectCount = 0

    /// The live hiredis context, or nil. Owned by hiredis once attached: freed by hiredis after the connect-failure
    /// and disconnect callbacks (where this alias is cleared), or by us with `redisAsyncFree` on timeout/close.
    /// Its `data` slot holds this object *unretained*: this object frees or forgets the context before it dies.
    private var context: UnsafeMutablePointer<redisAsyncContext>?
    /// A context `close()` asked to free while inside hiredis' connect callback, where hiredis 0.14.1 does not defer
    /// a free (the caller would use freed memory); freed on the next loop turn unless hiredis freed it first.
    private var pendingFree: UnsafeMutablePointer<redisAsyncContext>?
    private var insideConnectCallback = false

    private var connectTimer: LoopTimer?
    private var reconnectTimer: LoopTimer?
    private var failedAttempts = 0
    private var started = false
    private(set) var isClosed = false
    private var hasBeenConnected = false

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
        var logger = logger
        switch target.location {
        case .direct(let endpoint):
            self.endpoint = endpoint
            logger[metadataKey: "redis"] = "\(endpoint)"
        case .sentinel(let sentinels, let master):
            self.endpoint = sentinels[0]
            logger[metadataKey: "redis"] = "master \(master)"
            resolver = SentinelResolver(loop: loop, sentinels: sentinels, master: master,
                                        timeout: configuration.connectTimeout, logger: logger)
        case .cluster(let seeds):
            // The control connection of a cluster client: any node will do; tries the seeds in turn.
            self.endpoint = seeds[0]
            logger[metadataKey: "redis"] = "cluster"
        }
        self.logger = logger
        connectTimer = LoopTimer(loop: loop) { [weak self] in self?.connectTimedOut() }
        reconnectTimer = LoopTimer(loop: loop) { [weak self] in self?.connect() }
    }

    deinit {
        connectTimer = nil
        reconnectTimer = nil
        if let context {
            context.pointee.data = nil
            redisAsyncFree(context)
        }
        if let pendingFree {
            pendingFree.pointee.data = nil
            redisAsyncFree(pendingFree)
        }
    }

    /// Adds a hook run on every (re)connection, before the state change is reported.
    public func addConnectHook(_ hook: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        connectHooks.append(hook)
    }

    /// Starts connecting; retries forever with backoff until `close()`. Idempotent.
    public func start() {
        loop.preconditionInEventLoop()
        guard !started, !isClosed else { return }
        started = true
        connect()
    }

    /// Closes the connection and stops reconnecting. Pending commands complete with `.closed`. Idempotent.
    public func close() {
        loop.preconditionInEventLoop()
        guard !isClosed else { return }
        isClosed = true
        connectTimer?.stop()
        reconnectTimer?.stop()
        resolver?.cancel()
        resolving = false
        if let ac = context {
            context = nil
            if insideConnectCallback {
                pendingFree = ac
                let bound = LoopBound(self, loop: loop)
                loop.execute { bound.value.freePending() }
            } else {
                ac.pointee.data = nil
                redisAsyncFree(ac)  // inside a reply callback hiredis defers the free itself
            }
        }
        setState(.disconnected)
    }

    private func freePending() {
        guard let ac = pendingFree else { return }
        pendingFree = nil
        ac.pointee.data = nil
        redisAsyncFree(ac)
    }

    /// Sends one command. `completion` runs exactly once on the loop thread: with the reply, with
    /// `.replyError(message)` for a top-level error reply, `.notConnected` at once when not connected,
    /// `.connectionLost` when the connection drops first, or `.closed` when `close()` comes first.
    public func send(_ arguments: [RedisArgument], completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        loop.preconditionInEventLoop()
        precondition(!arguments.isEmpty, "a Redis command needs at least its name")
        guard state == .connected, let ac = context else {
            completion(.failure(isClosed ? .closed : .notConnected))
            return
        }
        var completion = completion
        if let observe = roundTripObserver {
            let sent = ContinuousClock.now
            let reply = completion
            completion = { result in
                observe(ContinuousClock.now - sent)
                reply(result)
            }
        }
        // privdata: retained here, released exactly once in `redisConnectionReply` (hiredis calls it with a NULL
        // reply when the context goes away), or just below when hiredis refuses the command.
        let privdata = Unmanaged.passRetained(ReplyBox(completion)).toOpaque()
        let status = RedisConnection.withArgv(arguments) { argc, argv, lengths in
            redisAsyncCommandArgv(ac, redisConnectionReply, privdata, argc, argv, lengths)
        }
        if status != REDIS_OK {
            Unmanaged<ReplyBox>.fromOpaque(privdata).release()
            completion(.failure(.notConnected))  // hiredis is disconnecting; its disconnect callback follows
        }
    }

    /// Variadic convenience for `send(_:completion:)`.
    public func send(_ arguments: RedisArgument..., completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        send(arguments, completion: completion)
    }

    /// Sends a subscription command whose replies go to `onPush`, for as long as hiredis keeps the callback.
    /// privdata is NULL: the callback finds this object through `ac->data`, which is cleared when we let go.
    func sendSubscriptionCommand(_ arguments: [RedisArgument]) -> Bool {
        loop.preconditionInEventLoop()
        guard state == .connected, let ac = context else { return false }
        let status = RedisConnection.withArgv(arguments) { argc, argv, lengths in
            redisAsyncCommandArgv(ac, redisConnectionPush, nil, argc, argv, lengths)
        }
        return status == REDIS_OK
    }

    // MARK: - Connecting

    private func connect() {
        guard !isClosed, context == nil, !resolving else { return }
        setState(.connecting)
        if case .cluster(let seeds) = target.location {
            return open(seeds[(failedAttempts + refusedAttempts) % seeds.count])
        }
        guard let resolver, case .sentinel(_, let master) = target.location else { return open(endpoint) }
        resolving = true
        resolver.resolve { [weak self] found in
            guard let self, self.resolving else { return }
            self.resolving = false
            guard let found else {
                return self.connectFailed(reason: "no sentinel named a master for '\(master)'")
            }
            if found != self.endpoint { self.logger.info("the sentinels name the master", metadata: ["at": "\(found)"]) }
            self.endpoint = found
            self.open(found)
        }
    }

    private func open(_ endpoint: RedisEndpoint) {
        self.endpoint = endpoint
        let ac: UnsafeMutablePointer<redisAsyncContext>?
        switch endpoint {
        case .tcp(let host, let port): ac = redisAsyncConnect(host, Int32(port))
        case .unix(let path): ac = redisAsyncConnectUnix(path)
        }
        guard let ac else {
            connectFailed(reason: "out of memory")
            return
        }
        if ac.pointee.err != 0 {
            let reason = ac.pointee.errstr.map { String(cString: $0) } ?? "error \(ac.pointee.err)"
            redisAsyncFree(ac)
            connectFailed(reason: reason)
            return
        }
        guard agentchat_redis_attach_uv(ac, loop.uvLoop) == 0 else {
            redisAsyncFree(ac)
            connectFailed(reason: "cannot attach to the event loop")
            return
        }
        ac.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        context = ac
        redisAsyncSetDisconnectCallback(ac, redisConnectionDisconnected)
        redisAsyncSetConnectCallback(ac, redisConnectionConnected)  // arms the first write event: attach first
        connectTimer?.start(after: configuration.connectTimeout)
    }

    private func connectTimedOut() {
        guard let ac = context, state == .connecting else { return }
        context = nil
        ac.pointee.data = nil
        redisAsyncFree(ac)  // not connected yet: hiredis calls neither the connect nor the disconnect callback
        connectFailed(reason: "connect timed out after \(configuration.connectTimeout) ms")
    }

    fileprivate func handleConnect(_ ac: UnsafePointer<redisAsyncContext>, status: Int32) {
        connectTimer?.stop()
        guard status == REDIS_OK else {
            // hiredis frees the context right after this callback returns.
            let reason = ac.pointee.errstr.map { String(cString: $0) } ?? "error \(ac.pointee.err)"
            UnsafeMutablePointer(mutating: ac).pointee.data = nil
            context = nil
            connectFailed(reason: reason)
            return
        }
        failedAttempts = 0
        hasBeenConnected = true
        connectCount += 1
        logger.info("connected to Redis", metadata: ["at": "\(endpoint)"])
        insideConnectCallback = true
        state = .connected
        checkServer()
        for hook in connectHooks {
            hook()
            if isClosed { break }
        }
        insideConnectCallback = false
        if !isClosed { onStateChange?(.connected) }
    }

    /// Sent first on every connection, before the connect hooks' commands (one pipeline): `AUTH` when the target has
    /// credentials, and in Sentinel mode `ROLE`, since a sentinel may name a master that has just been demoted. A
    /// refusal drops the connection, and it is tried again with backoff (through the sentinels).
    private func checkServer() {
        var pending = 0
        let passed = { [weak self] in
            pending -= 1
            if pending == 0 { self?.refusedAttempts = 0 }
        }
        if let credentials = target.credentials {
            pending += 1
            send(credentials.authCommand) { [weak self] result in
                switch result {
                case .success: passed()
                case .failure(let error):
                    // A reply error is a refusal; anything else means the connection went away (it reconnects).
                    if let message = error.replyMessage { self?.refuse("Redis refused the credentials", detail: message) }
                }
            }
        }
        if case .sentinel = target.location {
            pending += 1
            send(["ROLE"]) { [weak self] result in
                guard let self else { return }
                switch result {
                case .success(.array(let parts)) where parts.first?.string == "master": passed()
                case .success(let other):
                    self.refuse("the server the sentinels named is not the master",
                                detail: "ROLE: \(other.array?.first?.string ?? "?")")
                case .failure(let error):
                    if let message = error.replyMessage { self.refuse("ROLE failed", detail: message) }
                }
            }
        }
    }

    /// Drops a connection the server refused to serve as asked; it reconnects with backoff.
    private func refuse(_ reason: String, detail: String) {
        refusedAttempts += 1
        logger.error("\(reason); reconnecting", metadata: ["reply": "\(detail)", "at": "\(endpoint)"])
        drop()
    }

    /// The server answered `READONLY`: it is a replica now (a failover demoted it). Reconnect to the master.
    fileprivate func wroteToReplica() {
        guard context != nil else { return }
        logger.warning("the server is read-only (a replica after a failover?); reconnecting", metadata: ["at": "\(endpoint)"])
        refusedAttempts += 1
        drop()
    }

    /// Closes the live connection; hiredis reports the disconnect, which schedules a reconnect. Pending commands fail
    /// with `.connectionLost`.
    private func drop() {
        guard let ac = context, !isClosed else { return }
        redisAsyncDisconnect(ac)
    }

    fileprivate func handleDisconnect(_ ac: UnsafePointer<redisAsyncContext>, status: Int32) {
        // hiredis frees the context right after this callback returns.
        UnsafeMutablePointer(mutating: ac).pointee.data = nil
        if pendingFree == UnsafeMutablePointer(mutating: ac) { pendingFree = nil; return }
        context = nil
        guard !isClosed else { return }
        let reason = ac.pointee.errstr.map { String(cString: $0) } ?? "closed"
        logger.warning("lost the Redis connection", metadata: ["reason": "\(reason)"])
        setState(.disconnected)
        scheduleReconnect()
    }

    fileprivate func handlePush(_ value: RedisValue) {
        guard !isClosed else { return }
        onPush?(value)
    }

    private func connectFailed(reason: String) {
        failedAttempts += 1
        if failedAttempts == 1 {
            logger.warning("cannot connect to Redis; retrying", metadata: ["reason": "\(reason)"])
        } else {
            logger.debug("cannot connect to Redis", metadata: ["reason": "\(reason)", "attempt": "\(failedAttempts)"])
        }
        setState(.disconnected)
        scheduleReconnect()
    }

    private func scheduleReconnect() {
        guard !isClosed else { return }
        let exponent = min(max(failedAttempts, refusedAttempts), 20)
        let base = min(configuration.maximumReconnectDelay, configuration.initialReconnectDelay << UInt64(exponent))
        let delay = base / 2 + UInt64.random(in: 0...max(base / 2, 1))  // jitter: spread reconnecting brokers
        reconnectTimer?.start(after: delay)
    }

    private func setState(_ newState: State) {
        guard state != newState else { return }
        state = newState
        onStateChange?(newState)
    }

    /// Lays the arguments out in one buffer and hands hiredis pointers into it; hiredis copies them before returning.
    private static func withArgv<R>(
        _ arguments: [RedisArgument],
        _ body: (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>, UnsafePointer<Int>) -> R
    ) -> R {
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(1) { $0 + $1.bytes.count })
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        for argument in arguments {
            flat.append(contentsOf: argument.bytes)
            lengths.append(argument.bytes.count)
        }
        flat.append(0)  // never empty, so the base address exists
        return flat.withUnsafeBytes { raw in
            let base = raw.baseAddress!.assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = []
            pointers.reserveCapacity(arguments.count)
            var offset = 0
            for length in lengths {
                pointers.append(base + offset)
                offset += length
            }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { body(Int32(arguments.count), argv.baseAddress!, $0.baseAddress!) }
            }
        }
    }
}

/// Holds one command's completion across the C boundary (see the privdata rule in `send`).
private final class ReplyBox {
    let completion: (Result<RedisValue, RedisError>) -> Void
    init(_ completion: @escaping (Result<RedisValue, RedisError>) -> Void) { self.completion = completion }
}

private func redisConnectionReply(_ ac: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?,
                                  _ privdata: UnsafeMutableRawPointer?) {
    guard let privdata else { return }
    let box = Unmanaged<ReplyBox>.fromOpaque(privdata).takeRetainedValue()
    guard let reply else {
        // NULL reply: the context is going away. `data` is cleared only when we freed it ourselves.
        box.completion(.failure(ac?.pointee.data == nil ? .closed : .connectionLost))
        return
    }
    let value = RedisValue(reply: reply.assumingMemoryBound(to: redisReply.self))
    if case .error(let message) = value {
        box.completion(.failure(.replyError(message)))
        if message.hasPrefix("READONLY"), let data = ac?.pointee.data {
            Unmanaged<RedisConnection>.fromOpaque(data).takeUnretainedValue().wroteToReplica()
        }
    } else {
        box.completion(.success(value))
    }
}

private func redisConnectionPush(_ ac: UnsafeMutablePointer<redisAsyncContext>?, _ reply: UnsafeMutableRawPointer?,
                                 _ privdata: UnsafeMutableRawPointer?) {
    guard let reply, let data = ac?.pointee.data else { return }
    let value = RedisValue(reply: reply.assumingMemoryBound(to: redisReply.self))
    Unmanaged<RedisConnection>.fromOpaque(data).takeUnretainedValue().handlePush(value)
}

private func redisConnectionConnected(_ ac: UnsafePointer<redisAsyncContext>?, _ status: Int32) {
    guard let ac, let data = ac.pointee.data else { return }
    Unmanaged<RedisConnection>.fromOpaque(data).takeUnretainedValue().handleConnect(ac, status: status)
}

private func redisConnectionDisconnected(_ ac: UnsafePointer<redisAsyncContext>?, _ status: Int32) {
    guard let ac, let data = ac.pointee.data else { return }
    Unmanaged<RedisConnection>.fromOpaque(data).takeUnretainedValue().handleDisconnect(ac, status: status)
}
