import AgentChatProtocol

/// What the admin page reads from the shared store: every broker process's heartbeat, the listed channels, and the
/// store's own health. Implemented over Redis by `OperationsStore` (`Sources/Persistence`).
package protocol OperationsStoring: AnyObject {
    /// Records this broker's heartbeat (a JSON object), seen at `now`, kept `ttlMilliseconds`.
    func heartbeat(id: String, record: [UInt8], now: Int64, ttlMilliseconds: Int64,
                   completion: @escaping StoreCompletion<Void>)
    /// Removes a stopping broker's heartbeat, so that it leaves the list at once.
    func forget(id: String)
    /// The heartbeats seen at `since` or later (JSON objects, as recorded).
    func heartbeats(since: Int64, completion: @escaping StoreCompletion<[[UInt8]]>)
    /// How many channels are listed in the public directory.
    func listedChannelCount(completion: @escaping StoreCompletion<Int>)
    /// The store server's own figures (Redis `INFO`: `used_memory`, `redis_version`, …), by name.
    func serverInfo(completion: @escaping StoreCompletion<[String: String]>)
}

/// Who this broker process is, in its heartbeat.
package struct BrokerIdentity: Sendable, Equatable {
    /// Random, new at every start.
    package var id: String
    /// Where it listens (`host:port`).
    package var address: String
    package var version: String
    package var pid: Int
    /// The worker's index under `--processes`; nil for a single process.
    package var process: Int?
    /// Unix milliseconds.
    package var startedAt: Int64

    package init(id: String, address: String, version: String, pid: Int, process: Int?, startedAt: Int64) {
        self.id = id
        self.address = address
        self.version = version
        self.pid = pid
        self.process = process
        self.startedAt = startedAt
    }
}

/// Redis as the broker's own connections see it, for the admin page and `agentchat_redis_reconnects_total`.
package struct StoreHealth: Sendable, Equatable {
    package var up: Bool
    /// The last health PING's round trip, milliseconds.
    package var latencyMilliseconds: Double?
    /// Reconnections of the command connection and of the pub/sub connection since the start.
    package var commandReconnects: Int
    package var pubSubReconnects: Int

    package var reconnects: Int { commandReconnects + pubSubReconnects }

    package init(up: Bool, latencyMilliseconds: Double? = nil, commandReconnects: Int = 0, pubSubReconnects: Int = 0) {
        self.up = up
        self.latencyMilliseconds = latencyMilliseconds
        self.commandReconnects = commandReconnects
        self.pubSubReconnects = pubSubReconnects
    }
}

/// One warning or error line the broker logged, kept for the admin page (`RecentLogLines` in the broker target).
package struct RecentLogLine: Sendable, Equatable {
    /// Unix milliseconds.
    package var time: Int64
    package var level: String
    package var logger: String
    package var message: String

    package init(time: Int64, level: String, logger: String, message: String) {
        self.time = time
        self.level = level
        self.logger = logger
        self.message = message
    }
}
