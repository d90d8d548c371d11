import AgentChatLoop
import Logging

/// The cluster half of `RedisClient`: a slot map, one command connection (with its scripts) and one sharded pub/sub
/// connection per master, and the routing of every command, script call and sharded subscription to the master of
/// its slot. Loop-bound; created by `RedisClient` for a `.cluster` target.
///
/// - The map comes from `CLUSTER SLOTS`, asked on the client's control connection (which tries the seed addresses
///   in turn) when it connects, every `refreshInterval`, and after any `MOVED`, lost node or moved subscription.
///   Masters that appear get connections (created on demand, with `RedisConnection`'s reconnect behaviour); masters
///   that leave the map are closed.
/// - `MOVED`: the slot is recorded at its new master and the command retried there. `ASK`: `ASKING` and the command
///   on the named node, once, without touching the map. `TRYAGAIN` (a multi-key command while its slot migrates),
///   and a master whose connection is still being made: retried after 10 ms doubling to 200 ms, at most
///   `maximumAttempts` times in all. `CLUSTERDOWN`, and a slot without a master, fail the command.
/// - Sharded pub/sub: a channel is `SSUBSCRIBE`d on its slot's master. When Redis moves the slot it ends the
///   subscription (`sunsubscribe`); the channel is subscribed again on the new master, whose confirmation runs the
///   channel's `onActive` handlers again (catch-up from history, as after a reconnect).
final class RedisCluster {
    /// One master: its command connection, its scripts, its sharded pub/sub connection.
    final class Node {
        let endpoint: RedisEndpoint
        let connection: RedisConnection
        let scripts: RedisScripts
        let pubSub: RedisPubSub
        var lastPong: ContinuousClock.Instant?

        init(endpoint: RedisEndpoint, connection: RedisConnection, scripts: RedisScripts, pubSub: RedisPubSub) {
            self.endpoint = endpoint
            self.connection = connection
            self.scripts = scripts
            self.pubSub = pubSub
        }
    }

    /// A sharded channel's local subscribers and where it is subscribed now.
    private struct ShardedChannel {
        var handlers: [UInt64: RedisPubSub.Handler] = [:]
        var activationHandlers: [UInt64: () -> Void] = [:]
        var node: RedisEndpoint?
        var subscription: RedisPubSub.Subscription?
    }

    static let maximumAttempts = 12
    /// Milliseconds between periodic map refreshes.
    static let refreshInterval: UInt64 = 5_000

    let loop: EventLoop
    private let credentials: RedisCredentials?
    private let configuration: RedisConnection.Configuration
    private let logger: Logger
    /// The control connection: slot-map queries only (any node answers them).
    private let control: RedisConnection
    private(set) var map = RedisClusterMap()
    private var mapLoaded = false
    private(set) var nodes: [RedisEndpoint: Node] = [:]
    private var scripts: [RedisScript] = []
    private var connectHooks: [() -> Void] = []
    private var sharded: [[UInt8]: ShardedChannel] = [:]
    private var nextID: UInt64 = 0
    private var refreshing = false
    private var refreshAgain = false
    private var refreshTimer: LoopTimer?
    private var retryTimer: LoopTimer?
    private var retries: [(due: ContinuousClock.Instant, work: () -> Void)] = []
    private var closed = false

    /// How many `MOVED`, `ASK` and `TRYAGAIN` replies were followed, and how many sharded subscriptions moved; for
    /// tests and logs.
    private(set) var movedCount = 0
    private(set) var askCount = 0
    private(set) var tryAgainCount = 0
    private(set) var subscriptionMoves = 0

    init(loop: EventLoop, control: RedisConnection, credentials: RedisCredentials?,
         configuration: RedisConnection.Configuration, logger: Logger)
    {
        self.loop = loop
        self.control = control
        self.credentials = credentials
        self.configuration = configuration
        self.logger = logger
        control.addConnectHook { [weak self] in self?.refresh() }
        refreshTimer = LoopTimer(loop: loop) { [weak self] in self?.refresh() }
        retryTimer = LoopTimer(loop: loop) { [weak self] in self?.runDueRetries() }
    }

    func start() {
        control.start()
        refreshTimer?.start(after: Self.refreshInterval, repeat: Self.refreshInterval)
    }

    func close() {
        closed = true
        refreshTimer?.stop()
        retryTimer?.stop()
        control.close()
        for node in nodes.values {
            node.connection.close()
            node.pubSub.close()
        }
        let pending = retries
        retries = []
        for retry in pending { retry.work() }  // each fails with .closed: `closed` is set
    }

    // MARK: - Health

    /// Whether the map covers every slot and every master is connected and answered a PING within `maximumAge`.
    func isHealthy(maximumAge: Duration) -> Bool {
        guard mapLoaded, map.coversEverySlot, !map.masters.isEmpty else { return false }
        let now = ContinuousClock.now
        return map.masters.filter { map.slotCount(of: $0) > 0 }.allSatisfy { endpoint in
            guard let node = nodes[endpoint], node.connection.state == .connected, let pong = node.lastPong else {
                return false
            }
            return now - pong < maximumAge
        }
    }

    func ping() {
        for node in nodes.values {
            guard node.connection.state == .connected else {
                node.lastPong = nil
                continue
            }
            node.connection.send(["PING"]) { [weak node] result in
                if case .success(.status("PONG")) = result { node?.lastPong = .now }
            }
        }
    }

    // MARK: - Registration

    func register(_ script: RedisScript) {
        scripts.removeAll { $0.name == script.name }
        scripts.append(script)
        for node in nodes.values { node.scripts.register(script) }
    }

    func addConnectHook(_ hook: @escaping () -> Void) {
        connectHooks.append(hook)
    }

    // MARK: - Commands

    /// Sends `command` to the master of its key's slot (any connected master for a keyless command).
    func send(_ command: [RedisArgument], completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        let slot = RedisClusterSlot.of(command: command)
        dispatch(slot: slot, attempt: 1, ask: nil, completion: completion) { node, asking, done in
            if asking { node.connection.send(["ASKING"]) { _ in } }
            node.connection.send(command, completion: done)
        }
    }

    /// Runs script `name` on the master of its first key's slot. Every key must share that slot (the stores give
    /// all keys of one script the same hash tag); checked in debug builds.
    func call(_ name: String, keys: [RedisArgument], arguments: [RedisArgument],
              completion: @escaping (Result<RedisValue, RedisError>) -> Void)
    {
        let slot = keys.first.map { RedisClusterSlot.of($0.bytes) }
        assert(keys.allSatisfy { RedisClusterSlot.of($0.bytes) == slot }, "script '\(name)' has keys in two slots")
        dispatch(slot: slot, attempt: 1, ask: nil, completion: completion) { node, asking, done in
            if asking { node.connection.send(["ASKING"]) { _ in } }
            node.scripts.call(name, keys: keys, arguments: arguments, completion: done)
        }
    }

    private func dispatch(slot: Int?, attempt: Int, ask: RedisEndpoint?,
                          completion: @escaping (Result<RedisValue, RedisError>) -> Void,
                          operation: @escaping (Node, Bool, @escaping (Result<RedisValue, RedisError>) -> Void) -> Void)
    {
        guard !closed else { return completion(.failure(.closed)) }
        let endpoint: RedisEndpoint?
        if let ask {
            endpoint = ask
        } else if let slot {
            endpoint = map.master(of: slot)
        } else {
            endpoint = map.masters.first { nodes[$0]?.connection.state == .connected }
        }
        guard let endpoint, let node = nodes[endpoint] ?? (ask != nil ? node(at: endpoint) : nil) else {
            if !mapLoaded, attempt < Self.maximumAttempts {
                return retry(attempt: attempt) { [weak self] in
                    self?.dispatch(slot: slot, attempt: attempt + 1, ask: ask, completion: completion,
                                   operation: operation) ?? completion(.failure(.closed))
                }
            }
            return completion(.failure(mapLoaded ? .replyError("CLUSTERDOWN no master serves the slot")
                                                  : .notConnected))
        }
        if node.connection.state == .connecting, attempt < Self.maximumAttempts {
            // A master just added to the map (or reconnecting): give it a moment rather than fail at once.
            return retry(attempt: attempt) { [weak self] in
                self?.dispatch(slot: slot, attempt: attempt + 1, ask: ask, completion: completion,
                               operation: operation) ?? completion(.failure(.closed))
            }
        }
        operation(node, ask != nil) { [weak self] result in
            guard let self, case .failure(let error) = result, let message = error.replyMessage,
                let reply = RedisClusterReply(message), attempt < Self.maximumAttempts
            else {
                if case .failure(.notConnected) = result { self?.refreshSoon() }
                return completion(result)
            }
            switch reply {
            case .moved(let movedSlot, let target):
                self.movedCount += 1
                self.map.assign(movedSlot...movedSlot, to: target)
                _ = self.node(at: target)
                self.refreshSoon()
                self.dispatch(slot: slot, attempt: attempt + 1, ask: nil, completion: completion, operation: operation)
            case .ask(_, let target):
                self.askCount += 1
                self.dispatch(slot: slot, attempt: attempt + 1, ask: target, completion: completion,
                              operation: operation)
            case .tryAgain:
                self.tryAgainCount += 1
                self.retry(attempt: attempt) { [weak self] in
                    self?.dispatch(slot: slot, attempt: attempt + 1, ask: nil, completion: completion,
                                   operation: operation) ?? completion(.failure(.closed))
                }
            case .down:
                self.refreshSoon()
                completion(result)
            }
        }
    }

    private func retry(attempt: Int, _ work: @escaping () -> Void) {
        let delay = min(200, 10 << min(attempt - 1, 5))
        retries.append((.now + .milliseconds(delay), work))
        if retryTimer?.isActive == false { retryTimer?.start(after: 5, repeat: 5) }
    }

    private func runDueRetries() {
        let now = ContinuousClock.now
        let due = retries.filter { $0.due <= now }
        retries.removeAll { $0.due <= now }
        if retries.isEmpty { retryTimer?.stop() }
        for retry in due { retry.work() }
    }

    // MARK: - Nodes and the map

    /// The node at `endpoint`, created (and started) when new.
    @discardableResult
    private func node(at endpoint: RedisEndpoint) -> Node {
        if let node = nodes[endpoint] { return node }
        var nodeLogger = logger
        nodeLogger[metadataKey: "node"] = "\(endpoint)"
        let target = RedisTarget(.direct(endpoint), credentials: credentials)
        let connection = RedisConnection(loop: loop, target: target, configuration: configuration, logger: nodeLogger)
        let scripts = RedisScripts(connection: connection, logger: nodeLogger)
        let pubSub = RedisPubSub(loop: loop, target: target, configuration: configuration, logger: nodeLogger,
                                 kind: .sharded)
        let node = Node(endpoint: endpoint, connection: connection, scripts: scripts, pubSub: pubSub)
        for script in self.scripts { scripts.register(script) }
        connection.addConnectHook { [weak self, weak node] in
            guard let self, let node else { return }
            node.connection.send(["PING"]) { [weak node] result in
                if case .success(.status("PONG")) = result { node?.lastPong = .now }
            }
            for hook in self.connectHooks { hook() }
        }
        connection.onStateChange = { [weak self] state in
            if state == .disconnected { self?.refreshSoon() }
        }
        pubSub.onStateChange = { [weak self] state in
            // Also how a sharded subscription sent to the wrong master ends (see `RedisPubSub.forget`).
            if state == .disconnected { self?.refreshSoon() }
        }
        pubSub.onSubscriptionLost = { [weak self, weak node] channel, error in
            guard let self, let node else { return }
            self.subscriptionLost(channel, error: error, on: node.endpoint)
        }
        nodes[endpoint] = node
        logger.info("Redis Cluster master added", metadata: ["node": "\(endpoint)"])
        connection.start()
        pubSub.start()
        return node
    }

    private func refreshSoon() {
        guard !closed else { return }
        if refreshing { refreshAgain = true } else { refresh() }
    }

    /// Asks for `CLUSTER SLOTS` (on the control connection, or any connected master) and applies the answer.
    func refresh(completion: (() -> Void)? = nil) {
        guard !closed else { return }
        let asker = control.state == .connected ? control
            : nodes.values.first { $0.connection.state == .connected }?.connection
        guard let asker else {
            completion?()
            return
        }
        refreshing = true
        asker.send(["CLUSTER", "SLOTS"]) { [weak self] result in
            guard let self else { return }
            self.refreshing = false
            switch result {
            case .success(let reply):
                if let map = RedisClusterMap(clusterSlots: reply) {
                    self.apply(map)
                } else {
                    self.logger.error("CLUSTER SLOTS answered an unexpected reply")
                }
            case .failure(let error):
                self.logger.warning("cannot read the cluster's slot map", metadata: ["error": "\(error)"])
            }
            completion?()
            if self.refreshAgain {
                self.refreshAgain = false
                self.retry(attempt: 3) { [weak self] in self?.refreshSoon() }
            }
        }
    }

    private func apply(_ newMap: RedisClusterMap) {
        guard !closed else { return }
        let firstLoad = !mapLoaded
        if newMap != map || firstLoad {
            logger.info("Redis Cluster slot map", metadata: [
                "masters": "\(newMap.masters.map { "\($0) (\(newMap.slotCount(of: $0)) slots)" }.joined(separator: ", "))",
            ])
        }
        map = newMap
        mapLoaded = true
        for endpoint in map.masters where map.slotCount(of: endpoint) > 0 { node(at: endpoint) }
        for (endpoint, node) in nodes where map.slotCount(of: endpoint) == 0 {
            logger.info("Redis Cluster master left the map; closing it", metadata: ["node": "\(endpoint)"])
            nodes[endpoint] = nil
            node.connection.close()
            node.pubSub.close()
            for (channel, entry) in sharded where entry.node == endpoint {
                sharded[channel]?.node = nil
                sharded[channel]?.subscription = nil
            }
        }
        placeShardedChannels()
    }

    // MARK: - Sharded pub/sub

    func subscribeSharded(channel: [UInt8], onActive: (() -> Void)?, handler: @escaping RedisPubSub.Handler)
        -> UInt64
    {
        nextID += 1
        sharded[channel, default: ShardedChannel()].handlers[nextID] = handler
        if let onActive { sharded[channel]?.activationHandlers[nextID] = onActive }
        if sharded[channel]?.subscription == nil { place(channel) }
        return nextID
    }

    func unsubscribeSharded(channel: [UInt8], id: UInt64) {
        guard sharded[channel]?.handlers.removeValue(forKey: id) != nil else { return }
        sharded[channel]?.activationHandlers[id] = nil
        guard sharded[channel]?.handlers.isEmpty == true, let entry = sharded.removeValue(forKey: channel) else { return }
        if let endpoint = entry.node, let subscription = entry.subscription {
            nodes[endpoint]?.pubSub.unsubscribe(subscription)
        }
    }

    /// Whether the channel's current master confirmed its subscription.
    func isShardedActive(channel: [UInt8]) -> Bool {
        guard let endpoint = sharded[channel]?.node else { return false }
        return nodes[endpoint]?.pubSub.isActive(channel: channel) ?? false
    }

    private func placeShardedChannels() {
        for channel in sharded.keys {
            let owner = map.master(of: RedisClusterSlot.of(channel))
            if sharded[channel]?.node != owner || sharded[channel]?.subscription == nil { place(channel) }
        }
    }

    /// Subscribes `channel` on its slot's master, leaving the master it was on.
    private func place(_ channel: [UInt8]) {
        guard var entry = sharded[channel] else { return }
        if let old = entry.node, let subscription = entry.subscription {
            nodes[old]?.pubSub.forget(subscription)
            subscriptionMoves += 1
        }
        entry.node = nil
        entry.subscription = nil
        if let owner = map.master(of: RedisClusterSlot.of(channel)) {
            let node = node(at: owner)
            entry.node = owner
            entry.subscription = node.pubSub.subscribe(channel: channel, onActive: { [weak self] in
                guard let self else { return }
                for id in self.sharded[channel]?.activationHandlers.keys.sorted() ?? [] {
                    self.sharded[channel]?.activationHandlers[id]?()
                }
            }, handler: { [weak self] payload in
                guard let self else { return }
                for id in self.sharded[channel]?.handlers.keys.sorted() ?? [] {
                    self.sharded[channel]?.handlers[id]?(payload)
                }
            })
        }
        sharded[channel] = entry
    }

    /// The master at `endpoint` ended `channel`'s subscription (its slot moved), or refused a subscription command
    /// (`error`; a `MOVED` names the slot's new master): read the map again and subscribe where the slot lives now.
    private func subscriptionLost(_ channel: [UInt8], error: String?, on endpoint: RedisEndpoint) {
        if let error, case .moved(let slot, let target)? = RedisClusterReply(error) {
            map.assign(slot...slot, to: target)
            for (name, entry) in sharded where entry.node == endpoint && RedisClusterSlot.of(name) == slot {
                if let subscription = entry.subscription { nodes[endpoint]?.pubSub.forget(subscription) }
                sharded[name]?.subscription = nil
                sharded[name]?.node = nil
            }
            placeShardedChannels()
        }
        if !channel.isEmpty, sharded[channel]?.node == endpoint {
            logger.info("sharded subscription ended by the server (slot moved?); subscribing again",
                        metadata: ["node": "\(endpoint)"])
            if let subscription = sharded[channel]?.subscription { nodes[endpoint]?.pubSub.forget(subscription) }
            sharded[channel]?.subscription = nil
            sharded[channel]?.node = nil
            subscriptionMoves += 1
        }
        refresh { [weak self] in self?.placeShardedChannels() }
    }
}
