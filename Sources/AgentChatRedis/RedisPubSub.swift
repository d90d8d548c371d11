import AgentChatLoop
import Logging

/// Redis pub/sub over its own connection in subscribe mode, with local reference counting per channel.
///
/// Loop-bound. Handlers run on the loop thread with a copy of the message bytes. After a reconnect every channel
/// with subscribers is subscribed again by itself; messages published while disconnected are lost (Redis pub/sub
/// is fire-and-forget). Publishing goes through a command connection (`PUBLISH`), not this one.
public final class RedisPubSub {
    public typealias Handler = (_ message: [UInt8]) -> Void

    /// A handle for one `subscribe` call; pass it to `unsubscribe`.
    public struct Subscription: Hashable, Sendable {
        public let channel: [UInt8]
        fileprivate let id: UInt64
    }

    /// The subscribe-mode connection; private so nothing else sends on it or takes its state callback.
    private let connection: RedisConnection
    private var machine = SubscriptionStateMachine<[UInt8]>()
    private var handlers: [[UInt8]: [UInt64: Handler]] = [:]
    private var activationHandlers: [[UInt8]: [UInt64: () -> Void]] = [:]
    private var nextID: UInt64 = 0
    private let logger: Logger

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
                logger: Logger = Logger(label: "agentchat.redis.pubsub")) {
        connection = RedisConnection(loop: loop, target: target, configuration: configuration, logger: logger)
        self.logger = logger
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
    @discardableResult
    public func subscribe(channel: [UInt8], onActive: (() -> Void)? = nil, handler: @escaping Handler)
        -> Subscription
    {
        connection.loop.preconditionInEventLoop()
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
        guard handlers[subscription.channel]?.removeValue(forKey: subscription.id) != nil else { return }
        activationHandlers[subscription.channel]?[subscription.id] = nil
        if handlers[subscription.channel]?.isEmpty == true {
            handlers[subscription.channel] = nil
            activationHandlers[subscription.channel] = nil
        }
        perform(machine.removeSubscriber(from: subscription.channel))
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
        var start = 0
        while start < channels.count {
            let chunk = channels[start..<min(start + 1_000, channels.count)]
            send(["SUBSCRIBE"] + chunk.map { RedisArgument($0) })
            start += chunk.count
        }
    }

    private func handlePush(_ value: RedisValue) {
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
}
