import AgentChatProtocol
import AgentChatRedis
import ArgumentParser
import Foundation
import Glibc
import Logging

/// One setting of the broker, described once: its variable, default, what it means and which values it takes.
/// `--help` is written from it (`help`) and so is the value (`resolve`): a flag wins over the variable, the
/// variable over the default.
struct Setting<Value: Sendable>: Sendable {
    /// `AGENTCHAT_…`.
    let variable: String
    let summary: String
    /// Nil: no default (the setting is optional).
    let defaultValue: Value?
    /// How `--help` shows the default.
    let defaultText: String
    let parse: @Sendable (String) -> Value?
    /// Nil when the value is allowed; otherwise why not.
    let check: @Sendable (Value) -> String?

    init(_ variable: String, _ summary: String, default defaultValue: Value?, shown defaultText: String? = nil,
         parse: @escaping @Sendable (String) -> Value?, check: @escaping @Sendable (Value) -> String? = { _ in nil })
    {
        self.variable = variable
        self.summary = summary
        self.defaultValue = defaultValue
        self.defaultText = defaultText ?? defaultValue.map { "\($0)" } ?? "none"
        self.parse = parse
        self.check = check
    }

    var help: ArgumentHelp { ArgumentHelp("\(summary) (env \(variable), default \(defaultText)).") }

    /// The flag's value, else the variable's, else the default; checked.
    func resolve(_ flag: Value?, _ environment: [String: String]) throws -> Value? {
        var value = flag
        if value == nil, let raw = environment[variable] {
            guard let parsed = parse(raw) else { throw ValidationError("\(variable)=\(raw) is not a valid value") }
            value = parsed
        }
        guard let value = value ?? defaultValue else { return nil }
        if let problem = check(value) { throw ValidationError("\(variable): \(problem)") }
        return value
    }

    /// For settings with a default.
    func resolve(_ flag: Value?, _ environment: [String: String]) throws -> Value {
        let value: Value? = try resolve(flag, environment)
        return value!
    }
}

extension Setting where Value == Int {
    init(_ variable: String, _ summary: String, default defaultValue: Int, shown: String? = nil,
         range: ClosedRange<Int>)
    {
        self.init(variable, summary, default: defaultValue, shown: shown, parse: { Int($0) },
                  check: { range.contains($0) ? nil : "must be \(range.lowerBound)...\(range.upperBound)" })
    }
}

extension Setting where Value == Double {
    init(_ variable: String, _ summary: String, default defaultValue: Double, range: ClosedRange<Double>) {
        self.init(variable, summary, default: defaultValue, shown: Self.text(defaultValue), parse: { Double($0) },
                  check: { range.contains($0) ? nil : "must be \(Self.text(range.lowerBound))...\(Self.text(range.upperBound))" })
    }

    private static func text(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }
}

extension Setting where Value == String {
    /// A string that may not be empty (an empty variable counts as unset).
    init(_ variable: String, _ summary: String, default defaultValue: String?, shown: String? = nil) {
        self.init(variable, summary, default: defaultValue, shown: shown, parse: { $0.isEmpty ? nil : $0 })
    }
}

extension Setting where Value: RawRepresentable & CaseIterable, Value.RawValue == String {
    init(_ variable: String, _ summary: String, default defaultValue: Value) {
        self.init(variable, summary, default: defaultValue, shown: defaultValue.rawValue,
                  parse: { Value(rawValue: $0.lowercased()) })
    }
}

/// Every setting of `agentchat-broker`.
enum BrokerSettings {
    static let host = Setting<String>("AGENTCHAT_HOST", "Address to listen on", default: "127.0.0.1")
    static let port = Setting<Int>("AGENTCHAT_PORT", "TCP port for HTTP and WebSocket; 0 picks a free port",
                                   default: 8080, range: 0...65535)
    static let processes = Setting<Int>(
        "AGENTCHAT_PROCESSES",
        "Broker processes serving the one port (SO_REUSEPORT) under a supervisor; auto: one per online CPU",
        default: 1, parse: { $0 == "auto" ? onlineProcessors : Int($0) },
        check: { (1...256).contains($0) ? nil : "must be 1...256 or auto" })
    static let tlsCertificate = Setting<String>(
        "AGENTCHAT_TLS_CERT",
        "PEM certificate chain to serve https:// and wss:// with, leaf first (with --tls-key; SIGHUP reloads both)",
        default: nil, shown: "none: plain http")
    static let tlsKey = Setting<String>(
        "AGENTCHAT_TLS_KEY", "PEM private key of --tls-cert", default: nil)
    static let redisURL = Setting<String>(
        "AGENTCHAT_REDIS_URL",
        "Redis to use, redis://host:port or unix:///path; without it the broker runs an embedded redis-server in the data directory",
        default: nil)
    /// `host:port,host:port,…`; nil when empty or any address is malformed.
    @Sendable static func redisAddresses(_ text: String) -> [RedisEndpoint]? {
        let parts = text.split(separator: ",", omittingEmptySubsequences: false)
            .map { $0.trimmingCharacters(in: .whitespaces) }
        guard !parts.isEmpty, !parts.contains(where: \.isEmpty) else { return nil }
        var endpoints: [RedisEndpoint] = []
        for part in parts {
            guard let endpoint = try? RedisEndpoint(hostPort: part) else { return nil }
            endpoints.append(endpoint)
        }
        return endpoints
    }

    static let redisSentinels = Setting<[RedisEndpoint]>(
        "AGENTCHAT_REDIS_SENTINELS",
        "Redis Sentinel addresses, host:port,…, instead of --redis-url: the broker asks them for the master of "
            + "--redis-master on every (re)connection, and so follows failovers",
        default: nil,
        parse: redisAddresses)
    static let redisCluster = Setting<[RedisEndpoint]>(
        "AGENTCHAT_REDIS_CLUSTER",
        "Redis Cluster node addresses, host:port,…, instead of --redis-url and --redis-sentinels: the broker reads "
            + "the slot map from any of them and sends each command to its slot's master",
        default: nil,
        parse: redisAddresses)
    static let redisMaster = Setting<String>(
        "AGENTCHAT_REDIS_MASTER", "The master's name in Sentinel (with --redis-sentinels)", default: nil)
    static let redisUsername = Setting<String>(
        "AGENTCHAT_REDIS_USERNAME", "Redis ACL user to log in as (with --redis-password-file)", default: nil)
    static let redisPasswordFile = Setting<String>(
        "AGENTCHAT_REDIS_PASSWORD_FILE",
        "File whose first line is the Redis password, sent with AUTH on every connection and never logged (a "
            + "password may also come in the URL: redis://user:password@host, best through AGENTCHAT_REDIS_URL)",
        default: nil)
    static let redisReplicas = Setting<Int>(
        "AGENTCHAT_REDIS_REPLICAS",
        "Acknowledge a message only once this many replicas have it (Redis WAIT); 0: once the master has it",
        default: 0, range: 0...16)
    static let redisReplicasTimeout = Setting<Int>(
        "AGENTCHAT_REDIS_REPLICAS_TIMEOUT",
        "Milliseconds to wait for --redis-replicas; past it the send is refused with unavailable, to be retried "
            + "with the same clientMessageId",
        default: 1000, range: 1...60_000)
    static let dataDirectory = Setting<String>(
        "AGENTCHAT_DATA_DIR", "Directory for the embedded Redis's data and the broker's keys", default: "./data")
    static let appendFsync = Setting<BrokerConfiguration.AppendFsync>(
        "AGENTCHAT_APPENDFSYNC", "Embedded Redis AOF fsync policy: everysec or always", default: .everysec)
    static let logLevel = Setting<Logger.Level>(
        "AGENTCHAT_LOG_LEVEL", "trace, debug, info, notice, warning, error or critical", default: .info)
    static let logFormat = Setting<BrokerConfiguration.LogFormat>(
        "AGENTCHAT_LOG_FORMAT", "text, or json: one JSON object per line on stderr", default: .text)
    static let maxMessageBytes = Setting<Int>(
        "AGENTCHAT_MAX_MESSAGE_BYTES", "Largest WebSocket message; larger closes with 1009",
        default: Limits().maxMessageBytes, range: 1024...(16 << 20))
    static let maxQueueBytes = Setting<Int>(
        "AGENTCHAT_MAX_QUEUE_BYTES",
        "Bytes queued for one slow client before it is closed with 4008; at least the largest message",
        default: Limits().maxOutboundQueueBytes, range: 1024...(1 << 30))
    static let maxBodyBytes = Setting<Int>(
        "AGENTCHAT_MAX_BODY_BYTES", "Largest HTTP request body; larger gets 413",
        default: Limits().maxRequestBodyBytes, range: 0...(16 << 20))
    static let framesPerSecond = Setting<Double>(
        "AGENTCHAT_FRAMES_PER_SECOND", "Frames per second one connection may send on average (bursts of twice that)",
        default: Limits().framesPerSecond, range: 0.1...1_000_000)
    static let pingInterval = Setting<Int>(
        "AGENTCHAT_PING_INTERVAL", "Seconds of silence before the broker pings a client", default: 30,
        range: 1...86400)
    static let pingTimeout = Setting<Int>(
        "AGENTCHAT_PING_TIMEOUT", "Seconds after a ping without any answer before the connection is dropped",
        default: 10, range: 1...86400)
    static let receiveBufferBytes = Setting<Int>(
        "AGENTCHAT_RX_BUFFER_BYTES",
        "Receive buffer per WebSocket connection, bytes (a larger message arrives in pieces and is reassembled)",
        default: 1024,
        range: 128...65536)
    static let issuer = Setting<String>(
        "AGENTCHAT_ISSUER", "The broker's identity in login challenges and tokens; brokers behind one address share it",
        default: nil, shown: "http://HOST:PORT")
    static let corsOrigins = Setting<[String]>(
        "AGENTCHAT_CORS_ORIGINS", "Comma-separated origins allowed to call the REST API from a browser", default: [],
        shown: "none",
        parse: { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } })
    static let registerRate = Setting<Int>(
        "AGENTCHAT_REGISTER_RATE", "Registrations per minute per client address", default: 10, range: 1...1_000_000)
    static let tokenTTL = Setting<Int>(
        "AGENTCHAT_TOKEN_TTL", "Session token lifetime in seconds", default: 900, range: 60...86400)
    static let historyMax = Setting<Int>(
        "AGENTCHAT_HISTORY_MAX", "Messages kept per channel", default: 10_000, range: 1...100_000_000)
    static let historyMaxAge = Setting<Int>(
        "AGENTCHAT_HISTORY_MAX_AGE", "Seconds a message is kept", default: 30 * 24 * 3600,
        shown: "2592000 = 30 days", range: 1...(100 * 365 * 24 * 3600))
    static let onlineGrace = Setting<Double>(
        "AGENTCHAT_ONLINE_GRACE", "Seconds after an agent's last connection closes before it counts as offline",
        default: 15, range: 0.5...86400)
    static let indicatorRate = Setting<Double>(
        "AGENTCHAT_INDICATOR_RATE", "Indicator updates per second per viewer, at most", default: 4, range: 0.1...50)
    static let viewerConnectionsPerAddress = Setting<Int>(
        "AGENTCHAT_VIEWER_CONNECTIONS_PER_ADDRESS", "Viewer connections per client address", default: 20,
        range: 1...1_000_000)
    static let viewerFramesPerSecond = Setting<Double>(
        "AGENTCHAT_VIEWER_FRAMES_PER_SECOND", "Frames per second a viewer may send", default: 10,
        range: 0.1...1_000_000)
    static let stripeSecretKey = Setting<String>(
        "AGENTCHAT_STRIPE_SECRET_KEY",
        "Stripe secret key (sk_…); without it peeks are paid in the local sandbox. Prefer the variable: flags show in ps",
        default: nil, shown: "none: sandbox")
    static let stripePublishableKey = Setting<String>(
        "AGENTCHAT_STRIPE_PUBLISHABLE_KEY", "Stripe publishable key (pk_…) for the viewer page's Payment Element",
        default: nil)
    static let stripeWebhookSecrets = Setting<[String]>(
        "AGENTCHAT_STRIPE_WEBHOOK_SECRET",
        "Stripe webhook signing secret(s), whsec_…, comma-separated (two during a rotation)", default: [],
        shown: "none",
        parse: { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } })
    static let stripeAPIBase = Setting<String>(
        "AGENTCHAT_STRIPE_API_BASE", "Stripe API base URL", default: "https://api.stripe.com")
    static let peekRefusalWindow = Setting<Double>(
        "AGENTCHAT_PEEK_REFUSAL_WINDOW", "Seconds a channel's agents have to refuse a paid peek", default: 60,
        range: 0.1...3600)
    static let peekGrantWindow = Setting<Double>(
        "AGENTCHAT_PEEK_GRANT_WINDOW",
        "Seconds to wait for a member's grant after the refusal window; then the payment is cancelled", default: 300,
        range: 0.1...86400)
    static let peekDuration = Setting<Double>(
        "AGENTCHAT_PEEK_DURATION", "Seconds an active peek lasts", default: 600, range: 1...86400)
    static let peekPaymentWindow = Setting<Double>(
        "AGENTCHAT_PEEK_PAYMENT_WINDOW", "Seconds a viewer has to authorise a peek's payment", default: 900,
        range: 1...86400)
    static let adminToken = Setting<String>(
        "AGENTCHAT_ADMIN_TOKEN",
        "Token of the read-only admin page /admin (the page sends it as Authorization: Bearer), at least 16 characters; without it /admin answers 404. Prefer the variable: flags show in ps",
        default: nil, shown: "none: /admin off", parse: { $0.isEmpty ? nil : $0 },
        check: { token in
            guard token.utf8.count >= 16 else { return "must be at least 16 characters" }
            guard token.utf8.count <= 512 else { return "must be at most 512 characters" }
            guard token.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7F }) else {
                return "must be printable ASCII without spaces"
            }
            return nil
        })
    static let rotateSigningKey = Setting<Bool>(
        "AGENTCHAT_ROTATE_SIGNING_KEY",
        "Start a new token signing key; tokens signed by the old one stay valid (variable: 1)", default: false,
        parse: { $0 == "1" ? true : $0 == "0" || $0.isEmpty ? false : nil })

    /// What `--processes auto` resolves to: the online CPUs, at most 256.
    static var onlineProcessors: Int { min(256, max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN)))) }
}
