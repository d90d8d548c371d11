import AgentChatCrypto
import AgentChatProtocol
import Logging

/// The operator's view: this broker's heartbeat into the shared store (always, so that every broker is listed), and,
/// when an admin token is configured, `GET /admin/api/status` for the read-only admin page (`/admin`). Loop-bound.
///
/// The token travels only in `Authorization: Bearer …`, is compared in constant time (SHA-256 of both sides, then
/// `sodium_memcmp`), and is never logged. Without a token the admin routes do not exist (404).
package final class AdminService {
    package static let pagePath = "/admin"
    package static let statusPath = "/admin/api/status"
    /// Every admin response says so; the page's HTML says it too (`<meta name="robots">`).
    package static let robotsHeader = ("X-Robots-Tag", "noindex, nofollow")

    package struct Configuration: Sendable {
        /// Nil: the admin page and its API are off (404).
        package var token: String?
        package var identity: BrokerIdentity
        package var heartbeatMilliseconds: UInt64 = 5_000
        /// Heartbeats older than this are not listed.
        package var liveWindowMilliseconds: Int64 = 15_000

        package init(token: String?, identity: BrokerIdentity) {
            self.token = token
            self.identity = identity
        }
    }

    /// This process's own figures, read when needed.
    package struct LocalFigures: Sendable {
        package var connections: [BrokerMetrics.ConnectionKind: Int]
        package var channelFeeds: Int

        package init(connections: [BrokerMetrics.ConnectionKind: Int], channelFeeds: Int) {
            self.connections = connections
            self.channelFeeds = channelFeeds
        }
    }

    private let configuration: Configuration
    private let tokenDigest: [UInt8]?
    private let clock: any BrokerClock
    private let store: (any OperationsStoring)?
    private let metrics: BrokerMetrics
    private let local: () -> LocalFigures
    private let storeHealth: () -> StoreHealth
    private let recentErrors: () -> [RecentLogLine]
    private let logger: Logger
    private var timer: (any BrokerTimer)?
    /// The totals at the previous heartbeat, for its rates.
    private var previous: (time: Int64, framesReceived: Int, framesSent: Int, messagesStored: Int, deliveries: Int)?
    private var rates: [String: JSONValue] = [:]

    package init(configuration: Configuration, clock: any BrokerClock, store: (any OperationsStoring)?,
                 metrics: BrokerMetrics, local: @escaping () -> LocalFigures,
                 storeHealth: @escaping () -> StoreHealth, recentErrors: @escaping () -> [RecentLogLine],
                 logger: Logger)
    {
        self.configuration = configuration
        tokenDigest = configuration.token.map { Hash.sha256(Array($0.utf8)) }
        self.clock = clock
        self.store = store
        self.metrics = metrics
        self.local = local
        self.storeHealth = storeHealth
        self.recentErrors = recentErrors
        self.logger = logger
        guard store != nil else { return }
        timer = clock.makeTimer { [unowned self] in beat() }
        timer?.start(after: 0, repeat: configuration.heartbeatMilliseconds)
    }

    package var isEnabled: Bool { tokenDigest != nil }

    /// Stops the heartbeat and removes this broker from the list.
    package func stop() {
        guard timer != nil else { return }
        timer = nil
        store?.forget(id: configuration.identity.id)
    }

    // MARK: Heartbeat

    private func beat() {
        guard let store else { return }
        let record = JSONWriter.encode(heartbeat())
        store.heartbeat(id: configuration.identity.id, record: record, now: clock.unixMilliseconds,
                        ttlMilliseconds: configuration.liveWindowMilliseconds * 4) { _ in }
    }

    /// This broker now: identity, connections, channel feeds, totals and the rates since the previous heartbeat.
    private func heartbeat() -> JSONValue {
        let now = clock.unixMilliseconds
        let totals = metrics.totals
        if let previous, now > previous.time {
            let seconds = Double(now - previous.time) / 1000
            func rate(_ value: Int, _ before: Int) -> JSONValue { .number(Double(max(0, value - before)) / seconds) }
            rates = [
                "framesReceived": rate(totals.framesReceived, previous.framesReceived),
                "framesSent": rate(totals.framesSent, previous.framesSent),
                "messagesStored": rate(totals.messagesStored, previous.messagesStored),
                "deliveries": rate(totals.deliveries, previous.deliveries),
            ]
        }
        if previous == nil || now - previous!.time >= Int64(configuration.heartbeatMilliseconds) / 2 {
            previous = (now, totals.framesReceived, totals.framesSent, totals.messagesStored, totals.deliveries)
        }
        let identity = configuration.identity
        let figures = local()
        var connections: [String: JSONValue] = [:]
        for kind in BrokerMetrics.ConnectionKind.allCases {
            connections[kind.rawValue] = .number(Double(figures.connections[kind] ?? 0))
        }
        connections["total"] = .number(Double(figures.connections.values.reduce(0, +)))
        return [
            "id": .string(identity.id),
            "address": .string(identity.address),
            "version": .string(identity.version),
            "pid": .number(Double(identity.pid)),
            "process": identity.process.map { .number(Double($0)) } ?? .null,
            "startedAt": .number(Double(identity.startedAt)),
            "seenAt": .number(Double(now)),
            "connections": .object(connections),
            "channelFeeds": .number(Double(figures.channelFeeds)),
            "redisUp": .bool(storeHealth().up),
            "totals": [
                "framesReceived": .number(Double(totals.framesReceived)),
                "framesSent": .number(Double(totals.framesSent)),
                "messagesStored": .number(Double(totals.messagesStored)),
                "deliveries": .number(Double(totals.deliveries)),
                "slowConsumerCloses": .number(Double(totals.slowConsumerCloses)),
            ],
            "rates": .object(rates),
        ]
    }

    // MARK: HTTP

    /// `true` when `request` carries the admin token as `Authorization: Bearer <token>`; constant time.
    package func isAuthorized(_ request: HTTPRequest) -> Bool {
        guard let tokenDigest, let header = request.headers["authorization"] else { return false }
        let parts = header.split(separator: " ", maxSplits: 1, omittingEmptySubsequences: true)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return false }
        let presented = parts[1].drop { $0 == " " || $0 == "\t" }.reversed().drop { $0 == " " || $0 == "\t" }.reversed()
        return constantTimeEquals(Hash.sha256(Array(String(presented).utf8)), tokenDigest)
    }

    /// Adds the admin headers (never indexed, never cached) to a response of an admin route.
    package static func decorate(_ response: HTTPResponse) -> HTTPResponse {
        var response = response
        response.extraHeaders.append(robotsHeader)
        response.cacheControl = "no-store"
        return response
    }

    /// `GET /admin/api/status`: 401 without the token, else every live broker, connections, channels, rates, Redis
    /// and the recent warnings and errors of this process.
    package func status(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        guard isAuthorized(request) else {
            var response = HTTPResponse.error(401, .unauthorized, "send the admin token as Authorization: Bearer")
            response.extraHeaders.append(("WWW-Authenticate", "Bearer realm=\"agentchat-admin\""))
            return respond(Self.decorate(response))
        }
        let now = clock.unixMilliseconds
        let own = heartbeat()
        guard let store else { return respond(Self.decorate(.json(200, document([own], nil, nil, now: now)))) }
        var beats: [JSONValue]?
        var listed: Int?
        var info: [String: String]?
        var pending = 3
        let finish = { [self] in
            pending -= 1
            guard pending == 0 else { return }
            // This broker's entry is the fresh one; the others as they last wrote.
            var brokers = (beats ?? []).filter { $0["id"]?.stringValue != configuration.identity.id }
            brokers.append(own)
            respond(Self.decorate(.json(200, document(brokers, listed, info, now: now))))
        }
        store.heartbeats(since: now - configuration.liveWindowMilliseconds) { result in
            beats = (try? result.get())?.compactMap { try? JSONParser.parse($0) }
            finish()
        }
        store.listedChannelCount { result in
            listed = try? result.get()
            finish()
        }
        store.serverInfo { result in
            info = try? result.get()
            finish()
        }
    }

    private func document(_ brokers: [JSONValue], _ listed: Int?, _ info: [String: String]?, now: Int64) -> JSONValue {
        let sorted = brokers.sorted {
            ($0["address"]?.stringValue ?? "", $0["pid"].flatMap(Self.number) ?? 0)
                < ($1["address"]?.stringValue ?? "", $1["pid"].flatMap(Self.number) ?? 0)
        }
        func sum(_ path: [String]) -> JSONValue {
            .number(sorted.reduce(0) { total, broker in
                var value: JSONValue? = broker
                for key in path { value = value?[key] }
                return total + (value.flatMap(Self.number) ?? 0)
            })
        }
        var connections: [String: JSONValue] = [:]
        for key in BrokerMetrics.ConnectionKind.allCases.map(\.rawValue) + ["total"] {
            connections[key] = sum(["connections", key])
        }
        let health = storeHealth()
        var redis: [String: JSONValue] = [
            "up": .bool(health.up),
            "latencyMilliseconds": health.latencyMilliseconds.map { .number($0) } ?? .null,
            "reconnects": .number(Double(health.reconnects)),
        ]
        let fields: [(String, String, Bool)] = [
            ("version", "redis_version", false), ("usedMemoryBytes", "used_memory", true),
            ("usedMemoryHuman", "used_memory_human", false), ("maxMemoryBytes", "maxmemory", true),
            ("connectedClients", "connected_clients", true), ("uptimeSeconds", "uptime_in_seconds", true),
            ("role", "role", false),
        ]
        for (name, key, numeric) in fields {
            guard let value = info?[key] else { redis[name] = .null; continue }
            redis[name] = numeric ? (Double(value).map { .number($0) } ?? .null) : .string(value)
        }
        return [
            "generatedAt": .number(Double(now)),
            "liveWindowSeconds": .number(Double(configuration.liveWindowMilliseconds) / 1000),
            "broker": .string(configuration.identity.id),
            "brokers": .array(sorted),
            "connections": .object(connections),
            "channels": [
                "listed": listed.map { .number(Double($0)) } ?? .null,
                "subscribed": sum(["channelFeeds"]),
            ],
            "rates": [
                "messagesStored": sum(["rates", "messagesStored"]),
                "deliveries": sum(["rates", "deliveries"]),
                "framesReceived": sum(["rates", "framesReceived"]),
                "framesSent": sum(["rates", "framesSent"]),
            ],
            "redis": .object(redis),
            "recentErrors": .array(recentErrors().map {
                ["time": .number(Double($0.time)), "level": .string($0.level), "logger": .string($0.logger),
                 "message": .string($0.message)]
            }),
        ]
    }

    private static func number(_ value: JSONValue) -> Double? {
        if case .number(let number) = value { return number }
        return nil
    }
}
