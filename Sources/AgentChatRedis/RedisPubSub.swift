import AgentChatLoop
import Logging

/// Redis pub/sub over its own connection in subscribe mode, with local reference counting per channel.
///
/// Loop-bound. Handlers run on the loop thread with a copy of the message bytes. After a reconnect every channel
/// with subscribers is subscribed again by itself; messages published while disconnected are lost (Redis pub/sub
/// is fire-and-forget). Publishing goes through a command connection (`PUBLISH`), not this one.
///
/// In a Redis Cluster the client's `pubSub` keeps classic channels on one connection (a classic `PUBLISH` reaches
/// every node) and hands channels subscribed with `sharded: true` to the cluster router, which subscribes each on
/// its slot's master with a `.sharded` instance of this class.
public final class RedisPubSub {
    public typealias Handler = (_ message: [UInt8]) -> Void

    /// Classic `SUBSCRIBE`, or sharded `SSUBSCRIBE` (one master of a cluster, every channel in its slots).
    ///
    /// hiredis 0.14.1 knows nothing of sharded pub/sub: it routes a push to a callback only by the name of a
    /// channel it saw in a classic `SUBSCRIBE`, and asserts when a push finds no callback outside subscribe mode.
    /// So a sharded connection first subscribes a classic anchor channel (keeping hiredis in subscribe mode for as
    /// long as it lives) and sends a classic `SUBSCRIBE` of each channel before its `SSUBSCRIBE`; nothing is ever
    /// published on those classic names, and every callback is the same function, which routes by the reply.
    public enum Kind: Sendable {
        case classic
        case sharded
    }

    /// A handle for one `subscribe` call; pass it to `unsubscribe`.
    public struct Subscription: Hashable, Sendable {
        public let channel: [UInt8]
        fileprivate let id: UInt64
        /// Held by the cluster router (sharded channel of a `.cluster` client).
        fileprivate var routed = false
    }

    /// The channel a sharded connection subscribes first (see `Kind`).
    static let shardedAnchor: [UInt8] = Array("agentchat-internal:sharded-connection".utf8)

    /// The subscribe-mode connection; private so nothing else sends on it or takes its state callback.
    private let connection: RedisConnection
    private var machine = SubscriptionStateMachine<[UInt8]>()
    private var handlers: [[UInt8]: [UInt64: Handler]] = [:]
    private var activationHandlers: [[UInt8]: [UInt64: () -> Void]] = [:]
    private var nextID: UInt64 = 0
    private let logger: Logger
    private let kind: Kind
    /// Set by `RedisClient` in cluster mode: sharded subscriptions go there.
    weak var cluster: RedisCluster?
    /// Sharded: the server ended a subscription it was not asked to end (its slot moved to another master; the
    /// channel), or refused a subscription command (the error text, with an empty channel).
    var onSubscriptionLost: ((_ channel: [UInt8], _ error: String?) -> Void)?

    /// Metrics: how many times the subscribe connection was established (see `RedisConnection.connectCount`).
    public var connectCount: Int { connection.connectCount }

    /// The state of the subscribe connection.
    public var state: RedisConnection.State { connection.state }

    /// Called on every state change of the subscribe connection.
    public var onStateChange: ((RedisConnection.State) -> Void)?

    public convenience init(loop: EventLoop, endpoint: RedisEndpoint,
                            configuration: RedisConnection.Configuration = .init(),
                            logger: Logger = Logger(label: "agentchat.redis.pubsub")) {
        self.init(loop: loop, target: .direct(endpoint), configuration: configuration, logger: logger)
    }

    public init(loop: EventLoop, target: RedisTarget, configuration: RedisConnection.Configuration = .init(),
                logger: Logger = Logger(label: "agentchat.redis.pubsub"), kind: Kind = .classic) {
        connection = RedisConnection(loop: loop, target: target, configuration: configuration, logger: logger)
        self.logger = logger
        self.kind = kind
        connection.addConnectHook { [weak self] in self?.resubscribe() }
        connection.onPush = { [weak self] value in self?.handlePush(value) }
        connection.onStateChange = { [weak self] state in
            guard let self else { return }
            if state != .connected { self.machine.disconnected() }
            self.onStateChange?(state)
        }
    }

    /// Starts connecting (and reconnecting). Idempotent.
    public func start() { connection.start() }

    /// Closes the connection; handlers stay registered but receive nothing more.
    public func close() {
        connection.close()
    }

    /// Calls `handler` with every message published on `channel` from the moment the server confirms the
    /// subscription (see `isActive`).
    ///
    /// `onActive` runs each time the server confirms the subscription: the first time, and again after every
    /// reconnect (messages published while disconnected are lost; this is the moment to catch up from a store).
    ///
    /// `sharded`: the channel is published with `SPUBLISH` in a Redis Cluster; on a cluster client it is subscribed
    /// with `SSUBSCRIBE` on its slot's master (and `onActive` runs again after the slot moves). Ignored otherwise.
    @discardableResult
    public func subscribe(channel: [UInt8], sharded: Bool = false, onActive: (() -> Void)? = nil,
                          handler: @escaping Handler) -> Subscription
    {
        connection.loop.preconditionInEventLoop()
        if sharded, let cluster {
            let id = cluster.subscribeSharded(channel: channel, onActive: onActive, handler: handler)
            return Subscription(channel: channel, id: id, routed: true)
        }
        nextID += 1
        handlers[channel, default: [:]][nextID] = handler
        if let onActive { activationHandlers[channel, default: [:]][nextID] = onActive }
        perform(machine.addSubscriber(to: channel))
        return Subscription(channel: channel, id: nextID)
    }

    @discardableResult
    public func subscribe(channel: String, handler: @escaping Handler) -> Subscription {
        subscribe(channel: Array(channel.utf8), handler: handler)
    }

    /// Removes one subscription; the last one of a channel unsubscribes it on the server. Idempotent.
    public func unsubscribe(_ subscription: Subscription) {
        connection.loop.preconditionInEventLoop()
        if subscription.routed {
            cluster?.unsubscribeSharded(channel: subscription.channel, id: subscription.id)
            return
        }
        guard handlers[subscription.channel]?.removeValue(forKey: subscription.id) != nil else { return }
        activationHandlers[subscription.channel]?[subscription.id] = nil
        if handlers[subscription.channel]?.isEmpty == true {
            handlers[subscription.channel] = nil
            activationHandlers[subscription.channel] = nil
        }
        perform(machine.removeSubscriber(from: subscription.channel))
    }

    /// Sharded: drops a subscription whose slot has moved away (the server ended it, or will) without sending
    /// `SUNSUBSCRIBE`: a master that no longer serves the slot answers it with `MOVED`, and hiredis 0.14.1 drops a
    /// subscribe-mode connection on an error reply no callback waits for. Only the classic routing name is
    /// unsubscribed; a sharded subscription the old master still holds ends when the slot leaves it.
    func forget(_ subscription: Subscription) {
        connection.loop.preconditionInEventLoop()
        guard handlers[subscription.channel]?.removeValue(forKey: subscription.id) != nil else { return }
        activationHandlers[subscription.channel]?[subscription.id] = nil
        if handlers[subscription.channel]?.isEmpty == true {
            handlers[subscription.channel] = nil
            activationHandlers[subscription.channel] = nil
        }
        if case .unsubscribe(let channel) = machine.removeSubscriber(from: subscription.channel) {
            send(["UNSUBSCRIBE", RedisArgument(channel)])
        }
    }

    /// Whether the server has confirmed the subscription of `channel` on the current connection.
    public func isActive(channel: [UInt8]) -> Bool {
        connection.loop.preconditionInEventLoop()
        return machine.isActive(channel)
    }

    public func isActive(channel: String) -> Bool { isActive(channel: Array(channel.utf8)) }

    private func perform(_ action: SubscriptionStateMachine<[UInt8]>.Action) {
        switch action {
        case .none: break
        case .subscribe(let channel) where kind == .sharded:
            send(["SUBSCRIBE", RedisArgument(channel)])
            send(["SSUBSCRIBE", RedisArgument(channel)])
        case .unsubscribe(let channel) where kind == .sharded:
            send(["SUNSUBSCRIBE", RedisArgument(channel)])
            send(["UNSUBSCRIBE", RedisArgument(channel)])
        case .subscribe(let channel): send(["SUBSCRIBE", RedisArgument(channel)])
        case .unsubscribe(let channel): send(["UNSUBSCRIBE", RedisArgument(channel)])
        }
    }

    private func send(_ arguments: [RedisArgument]) {
        // A refusal means the connection is going down; the reconnect re-subscribes from the state machine.
        if !connection.sendSubscriptionCommand(arguments) {
            logger.debug("subscription command not sent: connection going down")
        }
    }

    private func resubscribe() {
        let channels = machine.connected()
        if kind == .sharded {
            send(["SUBSCRIBE", RedisArgument(Self.shardedAnchor)])
            for channel in channels {
                send(["SUBSCRIBE", RedisArgument(channel)])
                send(["SSUBSCRIBE", RedisArgument(channel)])  // one per channel: the channels may be in several slots
            }
            return
        }
        var start = 0
        while start < channels.count {
            let chunk = channels[start..<min(start + 1_000, channels.count)]
            send(["SUBSCRIBE"] + chunk.map { RedisArgument($0) })
            start += chunk.count
        }
    }

    private func handlePush(_ value: RedisValue) {
        if kind == .sharded { return handleShardedPush(value) }
        // hiredis 0.14.1 may hand us a reply meant for another channel's callback; route by the reply itself.
        guard let parts = value.array, parts.count >= 3, let kind = parts[0].string, let channel = parts[1].bytes
        else { return }
        switch kind.lowercased() {
        case "message":
            guard let payload = parts[2].bytes, let ids = handlers[channel]?.keys.sorted() else { return }
            for id in ids {
                // A handler may unsubscribe others; look each one up again.
                handlers[channel]?[id]?(payload)
            }
        case "subscribe":
            machine.subscribeConfirmed(channel)
            for id in activationHandlers[channel]?.keys.sorted() ?? [] { activationHandlers[channel]?[id]?() }
        case "unsubscribe":
            machine.unsubscribeConfirmed(channel)
        default:
            break
        }
    }

    private func handleShardedPush(_ value: RedisValue) {
        if case .error(let message) = value {
            logger.info("sharded subscription command refused", metadata: ["reply": "\(message)"])
            onSubscriptionLost?([], message)
            return
        }
        guard let parts = value.array, parts.count >= 3, let kind = parts[0].string, let channel = parts[1].bytes
        else { return }
        switch kind.lowercased() {
        case "smessage":
            guard let payload = parts[2].bytes, let ids = handlers[channel]?.keys.sorted() else { return }
            for id in ids { handlers[channel]?[id]?(payload) }
        case "ssubscribe":
            machine.subscribeConfirmed(channel)
            for id in activationHandlers[channel]?.keys.sorted() ?? [] { activationHandlers[channel]?[id]?() }
        case "sunsubscribe":
            // With subscribers left, the server ended it by itself: the slot moved to another master (Redis 7
            // ends the sharded subscriptions of a slot it gives away). The router's one subscriber per channel
            // means an unsubscribe we sent leaves none.
            machine.unsubscribeConfirmed(channel)
            if machine.subscriberCount(of: channel) > 0 { onSubscriptionLost?(channel, nil) }
        default:
            break  // the classic subscribe/unsubscribe replies of the anchor and the routing names
        }
    }
}
