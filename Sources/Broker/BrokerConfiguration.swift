import AgentChatProtocol
import AgentChatRedis
import AgentChatTransport
import Logging

/// Everything the broker is configured with, resolved from flags, `AGENTCHAT_*` variables and the defaults in
/// `BrokerSettings`, where each setting is described.
struct BrokerConfiguration: Sendable {
    enum AppendFsync: String, Sendable, CaseIterable {
        case everysec, always
    }

    enum LogFormat: String, Sendable, CaseIterable {
        case text, json
    }

    typealias S = BrokerSettings

    var host = S.host.defaultValue!
    var port = S.port.defaultValue!
    /// Processes serving `port`; more than 1 runs a supervisor (`Supervisor`) and that many workers.
    var processes = S.processes.defaultValue!
    /// Set in a worker of a supervisor: listen with `SO_REUSEPORT` beside the other workers.
    var sharesPort = false
    /// Serve TLS with these files (`--tls-cert`, `--tls-key`); nil: plain HTTP.
    var tls: TLSFiles?
    /// Where Redis is; nil starts an embedded `redis-server` in `dataDirectory`.
    var redisURL: String?
    /// Sentinel mode (instead of `redisURL`): the sentinels and the master's name.
    var redisSentinels: [RedisEndpoint]?
    var redisMaster: String?
    /// Cluster mode (instead of `redisURL` and the sentinels): nodes to read the slot map from.
    var redisCluster: [RedisEndpoint]?
    var redisUsername: String?
    /// A file whose first line is the Redis password.
    var redisPasswordFile: String?
    /// Replicas a message must reach (`WAIT`) before it is acknowledged; 0: the master alone.
    var redisReplicas = S.redisReplicas.defaultValue!
    var redisReplicasTimeoutMilliseconds = S.redisReplicasTimeout.defaultValue!
    var dataDirectory = S.dataDirectory.defaultValue!
    var appendFsync = S.appendFsync.defaultValue!
    var logLevel = S.logLevel.defaultValue!
    var logFormat = S.logFormat.defaultValue!
    var limits = Limits()
    var receiveBufferBytes = S.receiveBufferBytes.defaultValue!
    var pingIntervalSeconds = S.pingInterval.defaultValue!
    var pingTimeoutSeconds = S.pingTimeout.defaultValue!
    /// The broker's identity in challenges and tokens (`iss`); nil means `http://<host>:<bound port>`. Every
    /// broker behind one address must share it.
    var issuer: String?
    var corsOrigins = S.corsOrigins.defaultValue!
    var registrationsPerMinute = S.registerRate.defaultValue!
    var tokenLifetimeSeconds = S.tokenTTL.defaultValue!
    var rotateSigningKey = S.rotateSigningKey.defaultValue!
    var historyMaxCount = S.historyMax.defaultValue!
    var historyMaxAgeSeconds = S.historyMaxAge.defaultValue!
    var onlineGraceSeconds = S.onlineGrace.defaultValue!
    var indicatorRate = S.indicatorRate.defaultValue!
    var viewerConnectionsPerAddress = S.viewerConnectionsPerAddress.defaultValue!
    var viewerFramesPerSecond = S.viewerFramesPerSecond.defaultValue!
    var stripeSecretKey: String?
    var stripePublishableKey: String?
    var stripeWebhookSecrets = S.stripeWebhookSecrets.defaultValue!
    var stripeAPIBase = S.stripeAPIBase.defaultValue!
    var peekRefusalWindowSeconds = S.peekRefusalWindow.defaultValue!
    var peekGrantWindowSeconds = S.peekGrantWindow.defaultValue!
    var peekDurationSeconds = S.peekDuration.defaultValue!
    var peekPaymentWindowSeconds = S.peekPaymentWindow.defaultValue!
    /// The admin page's token; nil: `/admin` is off.
    var adminToken: String?
    /// How often this process writes its heartbeat for the admin page (tests shorten it).
    var heartbeatMilliseconds: UInt64 = 5_000
    /// Seconds to wait for WebSocket clients to take their 1001 close before the server stops anyway.
    var shutdownGraceSeconds = 3.0
}
