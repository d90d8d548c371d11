import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// The read-only admin page and `GET /admin/api/status` on real brokers and a real Redis.
@Suite(.serialized) struct AdminTests {
    static let token = "admin-token-for-tests-0123456789"
    static var bearer: [(String, String)] { [("Authorization", "Bearer \(token)")] }

    @Test func withoutATokenTheAdminRoutesDoNotExist() throws {
        let fixture = try BrokerFixture()
        for path in ["/admin", "/admin/admin.js", "/admin/admin.css", "/admin/api/status"] {
            let response = try fixture.get(path, headers: Self.bearer)
            #expect(response.status == 404, "\(path)")
            #expect(try errorCode(response) == "not_found")
        }
        // robots.txt asks crawlers to keep out of /admin whether or not it is on.
        let robots = try fixture.get("/robots.txt")
        #expect(robots.status == 200)
        #expect(robots.bodyText.contains("Disallow: /admin"))
    }

    @Test func thePageIsServedNeverIndexedAndWithAStrictPolicy() throws {
        let fixture = try BrokerFixture(["--admin-token", Self.token])
        let page = try fixture.get("/admin")
        #expect(page.status == 200)
        #expect(page.headers["content-type"] == "text/html; charset=utf-8")
        #expect(page.headers["x-robots-tag"] == "noindex, nofollow")
        #expect(page.headers["cache-control"] == "no-store")
        let policy = try #require(page.headers["content-security-policy"])
        #expect(policy.contains("default-src 'none'") && policy.contains("script-src 'self'")
            && policy.contains("connect-src 'self'") && policy.contains("frame-ancestors 'none'"))
        #expect(!policy.contains("unsafe-inline"))
        #expect(page.bodyText.contains(#"<meta name="robots" content="noindex, nofollow">"#))
        #expect(!page.bodyText.contains("<script>"), "no inline script")
        for asset in ["/admin/admin.js", "/admin/admin.css"] {
            let response = try fixture.get(asset)
            #expect(response.status == 200, "\(asset)")
            #expect(response.headers["x-robots-tag"] == "noindex, nofollow")
        }
        // The page never puts the token in a URL: it sends it in the Authorization header only.
        let script = try fixture.get("/admin/admin.js").bodyText
        #expect(script.contains("Authorization: `Bearer ${token}`"))
        #expect(!script.contains("?token") && !script.contains("localStorage") && !script.contains("sessionStorage"))
    }

    @Test func theStatusNeedsTheTokenInTheAuthorizationHeader() throws {
        let fixture = try BrokerFixture(["--admin-token", Self.token, "--log-level", "debug"])
        let wrong: [[(String, String)]] = [
            [],
            [("Authorization", "Bearer \(Self.token.dropLast())x")],  // same length, last character differs
            [("Authorization", "Bearer \(Self.token)x")],  // the token is a prefix
            [("Authorization", "Bearer \(Self.token.dropLast())")],  // a prefix of the token
            [("Authorization", "Bearer \(Self.token.uppercased())")],
            [("Authorization", "Basic \(Self.token)")],
            [("Authorization", Self.token)],
            [("Authorization", "Bearer")],
        ]
        for headers in wrong {
            let response = try fixture.get(AdminPaths.status, headers: headers)
            #expect(response.status == 401, "\(headers)")
            #expect(try errorCode(response) == "unauthorized")
            #expect(response.headers["www-authenticate"]?.hasPrefix("Bearer") == true)
            #expect(response.headers["x-robots-tag"] == "noindex, nofollow")
        }
        // Never from the query string.
        #expect(try fixture.get(AdminPaths.status + "?token=\(Self.token)").status == 401)
        #expect(try fixture.get(AdminPaths.status, headers: [("Authorization", "bearer  \(Self.token) ")]).status == 200)

        let response = try fixture.get(AdminPaths.status, headers: Self.bearer)
        #expect(response.status == 200)
        #expect(response.headers["content-type"] == "application/json")
        #expect(response.headers["x-robots-tag"] == "noindex, nofollow")
        #expect(response.headers["cache-control"] == "no-store")
        let status = try json(response.bodyText)
        #expect(status.objectValue?.keys.sorted() == ["broker", "brokers", "channels", "connections", "generatedAt",
                                                     "liveWindowSeconds", "rates", "recentErrors", "redis"])
        let brokers = try #require(status["brokers"]?.arrayValue)
        #expect(brokers.count == 1)
        #expect(brokers.first?["address"]?.stringValue == "127.0.0.1:\(fixture.port)")
        #expect(brokers.first?["pid"]?.integerValue == Int64(fixture.broker.pid))
        #expect(brokers.first?["version"]?.stringValue?.isEmpty == false)
        #expect(status["redis"]?["up"] == true)
        #expect(status["redis"]?["version"]?.stringValue?.hasPrefix("7.") == true)
        #expect((status["redis"]?["usedMemoryBytes"]?.integerValue ?? 0) > 0)
        // The token is nowhere in what the broker logged, even at debug level.
        #expect(!fixture.broker.combinedOutput.contains(Self.token))
        #expect(!fixture.broker.combinedOutput.contains(String(Self.token.dropLast())))
    }

    @Test func connectionsChannelsAndRatesAreCounted() throws {
        let fixture = try BrokerFixture(["--admin-token", Self.token])
        let alice = try RawSession(agent: TestAgent(), port: fixture.port)
        let bob = try RawSession(agent: TestAgent(), port: fixture.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        #expect(try alice.request(["type": "channel.listing", "channel": .string(id), "listed": true,
                                   "title": "Listed room"])["type"] == "ok")
        try bob.request(["type": "channel.subscribe", "channel": .string(id)])
        let viewer = try fixture.connect()
        try viewer.send(text: #"{"type":"directory.list","id":"d"}"#)
        _ = try viewer.receiveText(timeout: 5)
        let stranger = try fixture.connect()
        defer { stranger.disconnect() }

        let status = try json(fixture.get(AdminPaths.status, headers: Self.bearer).bodyText)
        #expect(status["connections"] == ["agent": 2, "viewer": 1, "unauthenticated": 1, "total": 4])
        #expect(status["channels"]?["subscribed"] == 1)
        #expect(status["channels"]?["listed"] == 1)
        let own = try #require(status["brokers"]?.arrayValue?.first)
        #expect(own["connections"]?["agent"] == 2)
        #expect(own["totals"]?["framesReceived"]?.integerValue ?? 0 >= 6)
    }

    @Test func twoBrokersOnOneRedisAreBothListed() throws {
        let cluster = try ClusterFixture(["--admin-token", Self.token])
        for broker in [cluster.first, cluster.second] {
            let body = try Self.waitForStatus(port: broker.port) { ($0["brokers"]?.arrayValue?.count ?? 0) == 2 }
            let brokers = try #require(body["brokers"]?.arrayValue)
            #expect(Set(brokers.compactMap { $0["address"]?.stringValue })
                == ["127.0.0.1:\(cluster.first.port)", "127.0.0.1:\(cluster.second.port)"])
            #expect(Set(brokers.compactMap { $0["pid"]?.integerValue })
                == [Int64(cluster.first.pid), Int64(cluster.second.pid)])
            #expect(Set(brokers.compactMap { $0["id"]?.stringValue }).count == 2)
        }
        // A broker that stopped drops off the list once its heartbeat is older than the window.
        cluster.second.stop()
        let alone = try Self.waitForStatus(port: cluster.first.port, timeout: 40) {
            ($0["brokers"]?.arrayValue?.count ?? 0) == 1
        }
        #expect(alone["brokers"]?.arrayValue?.first?["address"]?.stringValue == "127.0.0.1:\(cluster.first.port)")
    }

    @Test func everyWorkerOfProcessesIsListed() throws {
        let fixture = try BrokerFixture(["--processes", "2", "--admin-token", Self.token])
        let status = try Self.waitForStatus(port: fixture.port) { ($0["brokers"]?.arrayValue?.count ?? 0) == 2 }
        let brokers = try #require(status["brokers"]?.arrayValue)
        #expect(Set(brokers.compactMap { $0["process"]?.integerValue }) == [0, 1])
        #expect(Set(brokers.compactMap { $0["address"]?.stringValue }) == ["127.0.0.1:\(fixture.port)"])
        #expect(Set(brokers.compactMap { $0["pid"]?.integerValue }).count == 2)
        // Each worker's /metrics says which worker answered.
        let scrape = try Exposition.scrape(port: fixture.port)
        let process = try #require(scrape.samples.first { $0.name == "agentchat_process" })
        #expect(["0", "1"].contains(process.labels["index"]))
        #expect(brokers.contains { $0["pid"]?.integerValue.map(String.init) == process.labels["pid"] })
    }

    @Test func recentErrorsShowTheBrokersWarningsWithoutSecrets() throws {
        let fixture = try BrokerFixture(["--admin-token", Self.token])
        fixture.redis.kill()
        _ = try fixture.waitForHealth(503)
        let status = try Self.waitForStatus(port: fixture.port) {
            ($0["recentErrors"]?.arrayValue ?? []).contains { $0["message"]?.stringValue?.contains("Redis") == true }
        }
        #expect(status["redis"]?["up"] == false)
        let lines = try #require(status["recentErrors"]?.arrayValue)
        let line = try #require(lines.first { $0["message"]?.stringValue?.contains("lost the Redis connection") == true })
        #expect(line["level"] == "warning")
        #expect(line["logger"] == "agentchat.redis")
        #expect(!String(decoding: JSONWriter.encode(status), as: UTF8.self).contains(Self.token))
        // Without Redis the page still answers, with this broker alone.
        #expect(status["brokers"]?.arrayValue?.count == 1)
        try fixture.redis.restart()
    }

    @Test func aShortTokenIsRefusedAtStart() throws {
        let process = try ChildProcess(executable: BrokerProcess.locateExecutable(),
                                       arguments: ["--port", "0", "--admin-token", "short"])
        #expect(try process.waitForExit(timeout: 30) != 0)
        #expect(process.stderr.contains("AGENTCHAT_ADMIN_TOKEN: must be at least 16 characters"))
        #expect(!process.stdout.contains("listening"))
    }

    static func waitForStatus(port: Int, timeout: Double = 20, until condition: (JSONValue) -> Bool) throws
        -> JSONValue
    {
        let deadline = Date().addingTimeInterval(timeout)
        var last = JSONValue.null
        while Date() < deadline {
            let response = try HTTPProbe.request(port: port, path: AdminPaths.status, headers: bearer)
            last = try JSONParser.parse(response.body)
            if response.status == 200, condition(last) { return last }
            Thread.sleep(forTimeInterval: 0.2)
        }
        throw FixtureError.timeout("status never matched; last: \(last)")
    }
}

enum AdminPaths {
    static let status = "/admin/api/status"
}
