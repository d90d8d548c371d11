import Metrics

/// The broker's Prometheus metrics, through swift-metrics (bootstrapped with swift-prometheus in the command).
/// Metric objects are created once here; updating them is thread-safe and cheap.
package struct BrokerMetrics {
    package let webSocketConnections: Gauge
    package let webSocketOpened: Counter
    package let framesReceived: Counter
    package let framesSent: Counter
    package let httpRequests: Counter
    package let redisUp: Gauge
    package let messagesStored: Counter
    package let deliveries: Counter
    /// Live batches that would have skipped offsets for a subscriber (pub/sub lost items): read from history instead.
    package let feedGaps: Counter
    /// History reads for a replay or catch-up that failed and were retried.
    package let historyReadRetries: Counter
    private let frameErrors: [String: Counter]
    /// Peeks by outcome: `granted` (became active), `refused`, `cancelled`, `failed`.
    private let peekOutcomes: [String: Counter]
    /// Cents moved by peeks: `captured`, `released` (the rest of an authorisation after a capture), `cancelled`
    /// (authorisations released without a capture).
    private let peekCents: [String: Counter]

    /// `factory` is the bootstrapped system's unless given (unit tests give their own).
    package init(factory: any MetricsFactory = MetricsSystem.factory) {
        webSocketConnections = Gauge(label: "agentchat_websocket_connections", factory: factory)
        webSocketOpened = Counter(label: "agentchat_websocket_connections_opened_total", factory: factory)
        framesReceived = Counter(label: "agentchat_frames_received_total", factory: factory)
        framesSent = Counter(label: "agentchat_frames_sent_total", factory: factory)
        httpRequests = Counter(label: "agentchat_http_requests_total", factory: factory)
        redisUp = Gauge(label: "agentchat_redis_up", factory: factory)
        messagesStored = Counter(label: "agentchat_messages_stored_total", factory: factory)
        deliveries = Counter(label: "agentchat_message_deliveries_total", factory: factory)
        feedGaps = Counter(label: "agentchat_feed_gaps_total", factory: factory)
        historyReadRetries = Counter(label: "agentchat_history_read_retries_total", factory: factory)
        let codes = ["bad_json", "bad_frame", "unknown_type", "missing_field", "invalid_field", "unknown_field",
                     "binary_not_supported", "rate_limited", "unavailable", "internal_error", "auth_failed",
                     "challenge_expired", "token_invalid", "not_authenticated", "already_authenticated",
                     "not_found", "forbidden", "not_member", "unknown_agent", "stale_epoch", "keys_exist", "channel_full",
                     "peek_not_refusable", "peek_not_grantable", "payment_unavailable", "bad_signature"]
        frameErrors = Dictionary(uniqueKeysWithValues: codes.map {
            ($0, Counter(label: "agentchat_frame_errors_total", dimensions: [("code", $0)], factory: factory))
        })
        peekOutcomes = Dictionary(uniqueKeysWithValues: ["granted", "refused", "cancelled", "failed"].map {
            ($0, Counter(label: "agentchat_peeks_total", dimensions: [("outcome", $0)], factory: factory))
        })
        peekCents = Dictionary(uniqueKeysWithValues: ["captured", "released", "cancelled"].map {
            ($0, Counter(label: "agentchat_peek_cents_total", dimensions: [("kind", $0)], factory: factory))
        })
    }

    package func peek(_ outcome: String) { peekOutcomes[outcome]?.increment() }

    package func peekCents(_ kind: String, _ cents: Int64) {
        if cents > 0 { peekCents[kind]?.increment(by: Int(cents)) }
    }

    package func frameError(_ code: String) {
        (frameErrors[code] ?? frameErrors["internal_error"])?.increment()
    }
}
