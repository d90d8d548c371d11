import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// `/metrics` of a real broker on a real Redis, parsed from the exposition format: traffic moves each counter by the
/// amount it caused (docs/ops/metrics.md describes every metric).
@Suite(.serialized) struct MetricsTests {
    @Test func messagesMoveDeliveriesFramesAndStoredByTheRightAmounts() throws {
        let fixture = try BrokerFixture()
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: fixture.port)
        let bob = try RawSession(agent: TestAgent(name: "bob"), port: fixture.port)
        let carol = try RawSession(agent: TestAgent(name: "carol"), port: fixture.port)
        let id = try #require(alice.createChannel(members: [bob.did, carol.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        for session in [alice, bob, carol] {
            #expect(try session.request(["type": "channel.subscribe", "channel": .string(id)])["type"] == "subscribed")
        }
        let before = try Exposition.scrape(port: fixture.port)
        #expect(before.value("agentchat_connections", ["kind": "agent"]) == 3)
        #expect(before.value("agentchat_channel_feeds") == 1)

        let count = 7
        for _ in 0..<count { #expect(try alice.send(id, epoch: 1)["type"] == "message.ack") }
        for session in [alice, bob, carol] { #expect(try session.receiveMessages(count, channel: id).count == count) }
        let after = try Exposition.scrape(port: fixture.port)

        func delta(_ name: String, _ labels: [String: String] = [:]) -> Double {
            after.sum(name, matching: labels) - before.sum(name, matching: labels)
        }
        // Every message to each of the three subscribers: live, or through a catch-up read.
        #expect(delta("agentchat_message_deliveries_total") == Double(count * 3))
        #expect(delta("agentchat_messages_stored_total") == Double(count))
        #expect(delta("agentchat_frames_received_total", ["type": "message.send"]) == Double(count))
        #expect(delta("agentchat_frames_sent_total", ["type": "message.ack"]) == Double(count))
        let batches = delta("agentchat_frames_sent_total", ["type": "messages"])
        #expect(batches >= 3 && batches <= Double(count * 3))
        // Nothing else was received: the sends are every frame since the first scrape.
        #expect(delta("agentchat_frames_received_total") == Double(count))
        #expect(after.value("agentchat_replaying_subscribers") == 0)
        #expect(after.value("agentchat_replay_backlog_messages") == 0)
        #expect(after.value("agentchat_outbound_queue_bytes") == 0)
    }

    @Test func connectionsByKindAndClosesByCode() throws {
        let fixture = try BrokerFixture(["--max-message-bytes", "4096"])
        let agent = try RawSession(agent: TestAgent(), port: fixture.port)
        let viewer = try fixture.connect()
        try viewer.send(text: #"{"type":"directory.list","id":"d"}"#)
        #expect(try JSONParser.parse(viewer.receiveText(timeout: 5))["type"] == "directory")
        let stranger = try fixture.connect()
        let open = try Exposition.scrape(port: fixture.port)
        #expect(open.value("agentchat_connections", ["kind": "agent"]) == 1)
        #expect(open.value("agentchat_connections", ["kind": "viewer"]) == 1)
        #expect(open.value("agentchat_connections", ["kind": "unauthenticated"]) == 1)
        #expect(open.value("agentchat_websocket_connections") == 3)
        // Unauthenticated frames are counted under their type; one the protocol does not know under "other".
        try stranger.send(text: #"{"type":"no.such.type"}"#)
        _ = try stranger.receiveText(timeout: 5)

        // The stranger closes first (peer); the agent sends a message over the limit (the broker closes with 1009);
        // the viewer's socket just goes (lost).
        _ = stranger.close(code: 1000)
        try agent.client.send(text: String(repeating: "x", count: 8192))
        viewer.disconnect()
        let closed = try Exposition.scrape(port: fixture.port, until: { $0.value("agentchat_websocket_connections") == 0 })
        #expect(closed.value("agentchat_websocket_connections") == 0)
        #expect(closed.value("agentchat_websocket_closes_total", ["code": "peer"]) == 1)
        #expect(closed.value("agentchat_websocket_closes_total", ["code": "1009"]) == 1)
        #expect(closed.value("agentchat_websocket_closes_total", ["code": "lost"]) == 1)
        #expect(closed.sum("agentchat_websocket_closes_total") == 3)
        #expect(closed.value("agentchat_frames_received_total", ["type": "other"]) == 1)
        #expect(closed.value("agentchat_frames_received_total", ["type": "directory.list"]) == 1)
        #expect(closed.value("agentchat_frame_errors_total", ["code": "not_authenticated"]) == 1)
        #expect(closed.sum("agentchat_connections") == 0)
    }

    @Test func aSlowConsumerIsOne4008Close() throws {
        let fixture = try BrokerFixture(["--max-queue-bytes", "65536"])
        let alice = try RawSession(agent: TestAgent(), port: fixture.port)
        let slow = try RawSession(agent: TestAgent(), port: fixture.port)
        let id = try #require(alice.createChannel(members: [slow.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        try slow.request(["type": "channel.subscribe", "channel": .string(id)])
        // The slow member stops reading; ~11 KB messages fill its socket buffers, then its 64 KiB queue.
        var sent = 0
        var scrape = try Exposition.scrape(port: fixture.port)
        while scrape.value("agentchat_websocket_closes_total", ["code": "4008"]) == 0, sent < 2000 {
            for _ in 0..<50 { _ = try alice.send(id, epoch: 1, ciphertext: SecureRandom.bytes(8 * 1024)) }
            sent += 50
            scrape = try Exposition.scrape(port: fixture.port)
        }
        scrape = try Exposition.scrape(port: fixture.port, until: { $0.value("agentchat_connections", ["kind": "agent"]) == 1 })
        #expect(scrape.value("agentchat_websocket_closes_total", ["code": "4008"]) == 1)
        #expect(scrape.value("agentchat_connections", ["kind": "agent"]) == 1)
        #expect(scrape.sum("agentchat_websocket_closes_total") == 1)
        #expect(scrape.value("agentchat_messages_stored_total") == Double(sent))
    }

    @Test func redisRoundTripsUpAndReconnects() throws {
        let fixture = try BrokerFixture()
        // The gauge follows the health PING, once a second.
        let first = try Exposition.scrape(port: fixture.port, until: {
            ($0.value("agentchat_redis_command_duration_seconds_count") ?? 0) > 0 && $0.value("agentchat_redis_up") == 1
        })
        #expect(first.value("agentchat_redis_up") == 1)
        #expect(first.types["agentchat_redis_command_duration_seconds"] == "histogram")
        let count = try #require(first.value("agentchat_redis_command_duration_seconds_count"))
        #expect(first.value("agentchat_redis_command_duration_seconds_bucket", ["le": "+Inf"]) == count)
        #expect(first.value("agentchat_redis_reconnects_total", ["connection": "command"]) == 0)
        #expect(first.value("agentchat_redis_reconnects_total", ["connection": "pubsub"]) == 0)

        fixture.redis.kill()
        _ = try fixture.waitForHealth(503)
        let down = try Exposition.scrape(port: fixture.port, until: { $0.value("agentchat_redis_up") == 0 })
        #expect(down.value("agentchat_redis_up") == 0)
        try fixture.redis.restart()
        _ = try fixture.waitForHealth(200, timeout: 30)
        let back = try Exposition.scrape(port: fixture.port, until: {
            $0.value("agentchat_redis_up") == 1
                && $0.value("agentchat_redis_reconnects_total", ["connection": "command"]) == 1
                && $0.value("agentchat_redis_reconnects_total", ["connection": "pubsub"]) == 1
        })
        #expect(back.value("agentchat_redis_up") == 1)
        #expect(back.value("agentchat_redis_reconnects_total", ["connection": "command"]) == 1)
        #expect(back.value("agentchat_redis_reconnects_total", ["connection": "pubsub"]) == 1)
        #expect((back.value("agentchat_redis_command_duration_seconds_count") ?? 0) > count)
    }

    /// Every PromQL expression of deploy/grafana/agentchat-dashboard.json names only metrics a real broker exports
    /// (and PromQL's own functions and keywords), and every panel has one.
    @Test func theGrafanaDashboardAsksOnlyForExportedMetrics() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let data = try Data(contentsOf: root.appendingPathComponent("deploy/grafana/agentchat-dashboard.json"))
        let dashboard = try JSONParser.parse(Array(data))
        #expect(dashboard["templating"]?["list"]?.arrayValue?.contains { $0["type"] == "datasource" } == true)
        let panels = try #require(dashboard["panels"]?.arrayValue)
        var expressions: [String] = []
        for panel in panels where panel["type"] != "row" {
            let targets = panel["targets"]?.arrayValue ?? []
            #expect(!targets.isEmpty, "panel \(panel["title"]?.stringValue ?? "?") has no query")
            #expect(panel["datasource"]?["uid"] == "${datasource}")
            for target in targets { expressions.append(try #require(target["expr"]?.stringValue)) }
        }
        #expect(expressions.count >= 15)

        let fixture = try BrokerFixture()
        let exported = try Exposition.scrape(port: fixture.port).familyNames
        var used: Set<String> = []
        for expression in expressions {
            let names = try PromQL.metricNames(in: expression)
            #expect(!names.isEmpty, "\(expression) names no metric")
            for name in names {
                let family = PromQL.family(of: name, in: exported)
                #expect(family != nil, "\(expression): \(name) is not exported by the broker")
                if let family { used.insert(family) }
            }
        }
        // Every metric the broker exports has a panel (agentchat_process only exists in workers).
        #expect(exported.subtracting(used).sorted() == [])
    }
}

/// Just enough PromQL to find the metric names of an expression: strings, label matchers, ranges, `by (…)`
/// groupings are removed; what remains is functions (followed by `(`), keywords, numbers and metric names.
enum PromQL {
    static let functions: Set<String> = [
        "sum", "rate", "irate", "increase", "histogram_quantile", "max", "min", "avg", "count", "topk", "bottomk",
        "clamp_min", "clamp_max", "abs", "delta", "deriv", "max_over_time", "min_over_time", "avg_over_time",
        "sum_over_time", "label_replace", "vector", "scalar", "time", "round", "changes", "resets", "absent",
    ]
    static let keywords: Set<String> = [
        "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    ]

    enum Failure: Error { case unknownWord(String, in: String) }

    static func metricNames(in expression: String) throws -> Set<String> {
        var text = expression
        for pattern in [#""(\\.|[^"\\])*""#, #"\{[^}]*\}"#, #"\[[^\]]*\]"#,
                        #"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"#] {
            text = text.replacingOccurrences(of: pattern, with: " ", options: .regularExpression)
        }
        var names: Set<String> = []
        let word = try NSRegularExpression(pattern: #"[A-Za-z_:][A-Za-z0-9_:]*(\s*\()?"#)
        for match in word.matches(in: text, range: NSRange(text.startIndex..., in: text)) {
            let token = String(text[Range(match.range, in: text)!])
            if token.hasSuffix("(") {
                let function = token.dropLast().trimmingCharacters(in: .whitespaces)
                guard functions.contains(function) || keywords.contains(function) else {
                    throw Failure.unknownWord(function, in: expression)
                }
                continue
            }
            if keywords.contains(token) || token == "e" || token == "Inf" || token == "NaN" { continue }
            guard token.hasPrefix("agentchat_") else { throw Failure.unknownWord(token, in: expression) }
            names.insert(token)
        }
        return names
    }

    /// The exported family a sample name belongs to (histograms: `_bucket`, `_sum`, `_count`).
    static func family(of name: String, in exported: Set<String>) -> String? {
        if exported.contains(name) { return name }
        for suffix in ["_bucket", "_sum", "_count"] where name.hasSuffix(suffix) {
            let family = String(name.dropLast(suffix.count))
            if exported.contains(family) { return family }
        }
        return nil
    }
}
