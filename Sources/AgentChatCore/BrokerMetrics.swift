import AgentChatProtocol
import Metrics

/// The broker's Prometheus metrics, through swift-metrics (bootstrapped with swift-prometheus in the command).
/// Metric objects are created once here; updating them is thread-safe and cheap. Every label has a fixed, small set
/// of values (frame types, close codes, outcomes): never a channel id, a DID or an address. Each metric is described
/// in `docs/ops/metrics.md`.
package struct BrokerMetrics {
    package let webSocketConnections: Gauge
    package let webSocketOpened: Counter
    package let httpRequests: Counter
    package let redisUp: Gauge
    package let messagesStored: Counter
    /// Live batches that would have skipped offsets for a subscriber (pub/sub lost items): read from history instead.
    package let feedGaps: Counter
    /// History reads for a replay or catch-up that failed and were retried.
    package let historyReadRetries: Counter
    /// Redis command round trips on the command connection (sent → reply), seconds.
    package let redisCommandDuration: Metrics.Timer
    private let redisReconnects: [String: Counter]
    /// Connections open now by kind, sampled when `/metrics` is read (`FrameRouter.sampleGauges`).
    private let connectionsByKind: [ConnectionKind: Gauge]
    /// Bytes waiting in every connection's outbound queue, and in the fullest one; sampled like the connections.
    package let outboundQueueBytes: Gauge
    package let outboundQueueMaxBytes: Gauge
    /// Subscribers reading history (a replay or a catch-up) rather than live, and the messages read for them and not
    /// yet sent plus the live ones held for them; sampled like the connections.
    package let replayingSubscribers: Gauge
    package let replayBacklogMessages: Gauge
    /// Channels with at least one subscriber on this broker (one Redis pub/sub subscription each); sampled.
    package let channelFeeds: Gauge
    private let framesReceived: [FrameType: Counter]
    private let framesReceivedOther: Counter
    private let framesSent: [FrameType: Counter]
    private let deliveriesLive: Counter
    private let deliveriesReplay: Counter
    private let closes: [UInt16: Counter]
    private let closesPeer: Counter
    private let closesLost: Counter
    private let frameErrors: [String: Counter]
    /// Peeks by outcome: `requested` (created, awaiting payment), `authorized` (paid: the refusal window started),
    /// `granted` (became active), `refused`, `cancelled`, `failed`, `ended` (an active peek expired).
    private let peekOutcomes: [String: Counter]
    /// Cents moved by peeks: `captured`, `released` (the rest of an authorisation after a capture), `cancelled`
    /// (authorisations released without a capture), and how the captured cents were shared: `platform`, `members`.
    private let peekCents: [String: Counter]
    /// Plain running totals of the same events, readable (swift-metrics counters are not): the admin page's rates.
    package let totals = Totals()

    /// What a connection is, for `agentchat_connections{kind}`.
    package enum ConnectionKind: String, CaseIterable, Sendable {
        /// Logged in as an agent.
        case agent
        /// Not logged in, and subscribed to indicators or following a peek.
        case viewer
        /// Neither (yet).
        case unauthenticated
    }

    /// Running totals kept beside the counters. Loop-bound (only the loop thread updates and reads them).
    package final class Totals {
        package var framesReceived = 0
        package var framesSent = 0
        package var messagesStored = 0
        package var deliveries = 0
        package var slowConsumerCloses = 0
        package var redisReconnects = 0
        package init() {}
    }

    /// Peek outcomes, the values of `agentchat_peeks_total{outcome}`.
    package static let peekOutcomeValues = ["requested", "authorized", "granted", "refused", "cancelled", "failed",
                                            "ended"]
    /// The values of `agentchat_peek_cents_total{kind}`.
    package static let peekCentKinds = ["captured", "released", "cancelled", "platform", "members"]
    /// The close codes counted one by one in `agentchat_websocket_closes_total{code}`.
    package static let closeCodes: [CloseCode] = [.normal, .goingAway, .protocolError, .invalidPayload,
                                                  .policyViolation, .messageTooBig, .internalError,
                                                  .authenticationFailed, .slowConsumer]

    /// `factory` is the bootstrapped system's unless given (unit tests give their own).
    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        webSocketConnections = Gauge(label: "agentchat_websocket_connections", factory: factory)
        webSocketOpened = Counter(label: "agentchat_websocket_connections_opened_total", factory: factory)
        httpRequests = Counter(label: "agentchat_http_requests_total", factory: factory)
        redisUp = Gauge(label: "agentchat_redis_up", factory: factory)
        messagesStored = Counter(label: "agentchat_messages_stored_total", factory: factory)
        feedGaps = Counter(label: "agentchat_feed_gaps_total", factory: factory)
        historyReadRetries = Counter(label: "agentchat_history_read_retries_total", factory: factory)
        redisCommandDuration = Metrics.Timer(label: Self.redisCommandDurationLabel, factory: factory)
        redisReconnects = Dictionary(uniqueKeysWithValues: ["command", "pubsub"].map {
            ($0, Counter(label: "agentchat_redis_reconnects_total", dimensions: [("connection", $0)], factory: factory))
        })
        connectionsByKind = Dictionary(uniqueKeysWithValues: ConnectionKind.allCases.map {
            ($0, Gauge(label: "agentchat_connections", dimensions: [("kind", $0.rawValue)], factory: factory))
        })
        outboundQueueBytes = Gauge(label: "agentchat_outbound_queue_bytes", factory: factory)
        outboundQueueMaxBytes = Gauge(label: "agentchat_outbound_queue_max_bytes", factory: factory)
        replayingSubscribers = Gauge(label: "agentchat_replaying_subscribers", factory: factory)
        replayBacklogMessages = Gauge(label: "agentchat_replay_backlog_messages", factory: factory)
        channelFeeds = Gauge(label: "agentchat_channel_feeds", factory: factory)
        framesReceived = Dictionary(uniqueKeysWithValues: FrameType.allCases.filter { $0.direction != .fromBroker }.map {
            ($0, Counter(label: "agentchat_frames_received_total", dimensions: [("type", $0.rawValue)], factory: factory))
        })
        framesReceivedOther = Counter(label: "agentchat_frames_received_total", dimensions: [("type", "other")],
                                      factory: factory)
        framesSent = Dictionary(uniqueKeysWithValues: FrameType.allCases.filter { $0.direction != .fromClient }.map {
            ($0, Counter(label: "agentchat_frames_sent_total", dimensions: [("type", $0.rawValue)], factory: factory))
        })
        deliveriesLive = Counter(label: "agentchat_message_deliveries_total", dimensions: [("mode", "live")],
                                 factory: factory)
        deliveriesReplay = Counter(label: "agentchat_message_deliveries_total", dimensions: [("mode", "replay")],
                                   factory: factory)
        closes = Dictionary(uniqueKeysWithValues: Self.closeCodes.map {
            ($0.rawValue, Counter(label: "agentchat_websocket_closes_total", dimensions: [("code", "\($0.rawValue)")],
                                  factory: factory))
        })
        closesPeer = Counter(label: "agentchat_websocket_closes_total", dimensions: [("code", "peer")], factory: factory)
        closesLost = Counter(label: "agentchat_websocket_closes_total", dimensions: [("code", "lost")], factory: factory)
        frameErrors = Dictionary(uniqueKeysWithValues: ErrorCode.frameErrorCodes.map {
            ($0, Counter(label: "agentchat_frame_errors_total", dimensions: [("code", $0)], factory: factory))
        })
        peekOutcomes = Dictionary(uniqueKeysWithValues: Self.peekOutcomeValues.map {
            ($0, Counter(label: "agentchat_peeks_total", dimensions: [("outcome", $0)], factory: factory))
        })
        peekCents = Dictionary(uniqueKeysWithValues: Self.peekCentKinds.map {
            ($0, Counter(label: "agentchat_peek_cents_total", dimensions: [("kind", $0)], factory: factory))
        })
    }

    /// The histogram's name; the command sets its buckets (Redis answers in well under a millisecond on a LAN).
    package static let redisCommandDurationLabel = "agentchat_redis_command_duration_seconds"

    package func peek(_ outcome: String) { peekOutcomes[outcome]?.increment() }

    package func peekCents(_ kind: String, _ cents: Int64) {
        if cents > 0 { peekCents[kind]?.increment(by: Int(cents)) }
    }

    package func frameError(_ code: String) {
        (frameErrors[code] ?? frameErrors["internal_error"])?.increment()
    }

    /// One frame received; `type` nil when it did not decode to a client frame type (or was refused before).
    package func frameReceived(_ type: FrameType?) {
        totals.framesReceived += 1
        (type.flatMap { framesReceived[$0] } ?? framesReceivedOther).increment()
    }

    /// `count` frames of `type` queued for sending.
    package func framesSent(_ type: FrameType, count: Int = 1) {
        totals.framesSent += count
        framesSent[type]?.increment(by: count)
    }

    package func messageStored() {
        totals.messagesStored += 1
        messagesStored.increment()
    }

    /// Messages queued for subscribers: live (the shared batch) or to a subscriber reading history.
    package func delivered(_ count: Int, replay: Bool) {
        totals.deliveries += count
        (replay ? deliveriesReplay : deliveriesLive).increment(by: count)
    }

    /// A WebSocket connection ended: with the close code the broker sent, or `peer`/`lost` (see `CloseCause`).
    package func closed(_ cause: CloseCause) {
        switch cause {
        case .sent(let code):
            if code == .slowConsumer { totals.slowConsumerCloses += 1 }
            (closes[code.rawValue] ?? closes[CloseCode.internalError.rawValue])?.increment()
        case .peer: closesPeer.increment()
        case .lost: closesLost.increment()
        }
    }

    /// The Redis connection (`command` or `pubsub`) connected again after losing its connection.
    package func redisReconnected(_ connection: String, count: Int = 1) {
        guard count > 0 else { return }
        totals.redisReconnects += count
        redisReconnects[connection]?.increment(by: count)
    }

    package func recordConnections(_ counts: [ConnectionKind: Int]) {
        for (kind, gauge) in connectionsByKind { gauge.record(counts[kind] ?? 0) }
    }
}

/// Why a WebSocket connection ended, for `agentchat_websocket_closes_total{code}`.
package enum CloseCause: Equatable, Sendable {
    /// The broker closed it with this code (its own decision, or a libwebsockets refusal the transport saw).
    case sent(CloseCode)
    /// The client closed it first (a close frame).
    case peer
    /// It ended without a close handshake: the peer vanished, stopped answering pings, or never took the close.
    case lost
}

extension ErrorCode {
    /// The codes an `error` frame can carry, the values of `agentchat_frame_errors_total{code}`.
    package static let frameErrorCodes = [
        "bad_json", "bad_frame", "unknown_type", "missing_field", "invalid_field", "unknown_field",
        "binary_not_supported", "rate_limited", "unavailable", "internal_error", "auth_failed", "challenge_expired",
        "token_invalid", "not_authenticated", "already_authenticated", "not_found", "forbidden", "not_member",
        "unknown_agent", "stale_epoch", "keys_exist", "channel_full", "peek_not_refusable", "peek_not_grantable",
        "payment_unavailable", "bad_signature",
    ]
}
