import AgentChatProtocol
import Logging

/// Everything the broker is configured with, resolved from flags, `AGENTCHAT_*` variables and defaults.
struct BrokerConfiguration: Sendable {
    enum AppendFsync: String, Sendable, CaseIterable {
        case everysec, always
    }

    enum LogFormat: String, Sendable, CaseIterable {
        case text, json
    }

    var host = "127.0.0.1"
    var port = 8080
    /// Where Redis is; nil starts an embedded `redis-server` in `dataDirectory`.
    var redisURL: String?
    var dataDirectory = "./data"
    var appendFsync = AppendFsync.everysec
    var logLevel = Logger.Level.info
    var logFormat = LogFormat.text
    var limits = Limits()
    var receiveBufferBytes = 1024
    var pingIntervalSeconds = 30
    var pingTimeoutSeconds = 10
    /// The broker's identity in challenges and tokens (`iss`); nil means `http://<host>:<bound port>`. Every
    /// broker behind one address must share it.
    var issuer: String?
    /// Origins allowed to call the REST API from a browser.
    var corsOrigins: [String] = []
    /// Registrations per minute per client address (also the burst).
    var registrationsPerMinute = 10
    /// Session token lifetime.
    var tokenLifetimeSeconds = 900
    /// Start a new signing key at startup (the previous one keeps verifying the tokens it signed).
    var rotateSigningKey = false
    /// Messages kept per channel.
    var historyMaxCount = 10_000
    /// Seconds a message is kept.
    var historyMaxAgeSeconds = 30 * 24 * 3600
    /// Seconds after its last connection closes before an agent counts as offline.
    var onlineGraceSeconds = 15.0
    /// Indicator frames per second per viewer, at most.
    var indicatorRate = 4.0
    /// Viewer connections per client address on one broker.
    var viewerConnectionsPerAddress = 20
    /// Frames per second a viewer may send.
    var viewerFramesPerSecond = 10.0
    /// Seconds to wait for WebSocket clients to take their 1001 close before the server stops anyway.
    var shutdownGraceSeconds = 3.0
}
