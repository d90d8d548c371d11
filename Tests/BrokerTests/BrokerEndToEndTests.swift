import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// A broker process on a throwaway Redis, both real, on loopback. Each test gets its own pair.
final class BrokerFixture {
    let redis: RedisServer
    let broker: BrokerProcess

    init(_ extraArguments: [String] = []) throws {
        redis = try RedisServer()
        do {
            broker = try BrokerProcess(
                extraArguments: ["--redis-url", "redis://127.0.0.1:\(redis.port)"] + extraArguments)
        } catch {
            redis.stop()
            throw error
        }
        // Ready means serving: /health answers 200 once the broker's Redis connection is up, which on a busy machine
        // can come a moment after the listening line (tests that check the broker is "unharmed" by /health failed
        // on that in CI).
        do {
            _ = try waitForHealth(200, timeout: 30)
        } catch {
            broker.stop()
            redis.stop()
            throw error
        }
    }

    deinit {
        broker.stop()
        redis.stop()
    }

    var port: Int { broker.port }

    /// One command through `redis-cli --raw` against the fixture's Redis; its output, trimmed.
    func redisCommand(_ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["redis-cli", "-p", "\(redis.port)", "--raw"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    func get(_ path: String, headers: [(String, String)] = []) throws -> TestSupport.HTTPResponse {
        try HTTPProbe.request(port: port, method: "GET", path: path, headers: headers)
    }

    /// Connects and reads the broker's `hello`.
    func connect(subprotocols: [String] = ["agentchat.v1"]) throws -> WebSocketClient {
        try connectReadingHello(subprotocols: subprotocols).client
    }

    func connectReadingHello(subprotocols: [String] = ["agentchat.v1"]) throws -> (client: WebSocketClient,
                                                                                   hello: JSONValue)
    {
        let client = try WebSocketClient.connect(port: port, subprotocols: subprotocols)
        let hello = try JSONParser.parse(client.receiveText(timeout: 5))
        guard hello["type"] == "hello" else { throw FixtureError.unexpected("first frame: \(hello)") }
        return (client, hello)
    }

    /// A registered agent, logged in on a new connection.
    func loggedIn(_ agent: TestAgent = TestAgent()) throws -> (agent: TestAgent, client: WebSocketClient) {
        _ = try agent.register(port: port)
        let (client, hello) = try connectReadingHello()
        let welcome = try agent.login(client, hello: hello)
        guard welcome["type"] == "welcome" else { throw FixtureError.unexpected("login: \(welcome)") }
        return (agent, client)
    }

    /// Polls `/health` until it answers `status`, or fails after `timeout` seconds.
    func waitForHealth(_ status: Int, timeout: Double = 20) throws -> TestSupport.HTTPResponse {
        let deadline = Date().addingTimeInterval(timeout)
        var last: TestSupport.HTTPResponse?
        while Date() < deadline {
            last = try? get("/health")
            if let last, last.status == status { return last }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw FixtureError.timeout("health never answered \(status); last: \(last?.bodyText ?? "nothing")")
    }
}

enum FixtureError: Error { case timeout(String), unexpected(String) }

func json(_ text: String) throws -> JSONValue { try JSONParser.parse(text) }

func errorCode(_ response: TestSupport.HTTPResponse) throws -> String? {
    try JSONParser.parse(response.body)["error"]?["code"]?.stringValue
}

@Suite(.serialized) struct BrokerHTTPTests {
    @Test func healthAnswersTheSeedShape() throws {
        let fixture = try BrokerFixture()
        let response = try fixture.waitForHealth(200)
        #expect(response.headers["content-type"] == "application/json")
        let body = try json(response.bodyText)
        #expect(body.objectValue?.keys.sorted() == ["status", "timestamp"])
        #expect(body["status"] == "healthy")
        let timestamp = try #require(body["timestamp"]?.integerValue)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        #expect(abs(now - timestamp) < 60_000)
        #expect(response.bodyText == #"{"status":"healthy","timestamp":\#(timestamp)}"#)
    }

    @Test func headIsGetWithoutTheBody() throws {
        let fixture = try BrokerFixture()
        let head = try HTTPProbe.request(port: fixture.port, method: "HEAD", path: "/health")
        #expect(head.status == 200 || head.status == 503)
        #expect(head.body.isEmpty)
        #expect(Int(head.headers["content-length"] ?? "") ?? 0 > 20)
    }

    /// A response to HEAD never has a body, errors included (RFC 9110 §9.3.2): its headers end the response.
    @Test func headGetsNoBodyOnErrorsEither() throws {
        let fixture = try BrokerFixture()
        for (path, status) in [("/no/such/thing", 404), ("/api/v1/agents/register", 405)] {
            let raw = try HTTPProbe.rawExchange(port: fixture.port, bytes: Array(
                "HEAD \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8))
            let text = String(decoding: raw, as: UTF8.self)
            #expect(text.hasPrefix("HTTP/1.1 \(status) "), "\(text)")
            let parts = text.components(separatedBy: "\r\n\r\n")
            #expect(parts.count == 2 && parts[1].isEmpty, "HEAD \(path) got a body: \(text)")
            if status == 405 { #expect(text.contains("Allow: OPTIONS, POST\r\n")) }
        }
    }

    @Test func unknownPathsAndMethodsGetJSONErrors() throws {
        let fixture = try BrokerFixture()
        let missing = try fixture.get("/no/such/thing")
        #expect(missing.status == 404)
        #expect(try errorCode(missing) == "not_found")
        let wrongMethod = try HTTPProbe.request(port: fixture.port, method: "DELETE", path: "/health")
        #expect(wrongMethod.status == 405)
        #expect(try errorCode(wrongMethod) == "method_not_allowed")
    }

    @Test func requestBodiesAreCapped() throws {
        let fixture = try BrokerFixture(["--max-body-bytes", "1024"])
        let big = try HTTPProbe.request(port: fixture.port, method: "POST", path: "/api/v1/agents/register",
                                        headers: [("Content-Type", "application/json")],
                                        body: [UInt8](repeating: 0x41, count: 4096))
        #expect(big.status == 413)
        #expect(try errorCode(big) == "body_too_large")
        // An announced length over the cap is refused before any body is sent.
        let announced = try HTTPProbe.rawExchange(
            port: fixture.port,
            bytes: Array("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n".utf8))
        #expect(try HTTPProbe.parse(announced).status == 413)
    }

    @Test(arguments: ["-5", "12abc", " ", "1e3", "99999999999999999999999"])
    func malformedContentLengthIsRefused(value: String) throws {
        let fixture = try BrokerFixture()
        let raw = try HTTPProbe.rawExchange(
            port: fixture.port,
            bytes: Array("POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: \(value)\r\n\r\nabc".utf8))
        let response = try HTTPProbe.parse(raw)
        #expect([400, 411, 413].contains(response.status))
        #expect(try ["bad_content_length", "body_too_large"].contains(errorCode(response)))
        // The broker is unharmed.
        #expect(try fixture.get("/health").status == 200)
    }

    @Test func chunkedBodiesAndMissingLengthsAreRefused() throws {
        let fixture = try BrokerFixture()
        let chunked = try HTTPProbe.parse(HTTPProbe.rawExchange(
            port: fixture.port,
            bytes: Array("POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n".utf8)))
        #expect(chunked.status == 400)
        #expect(try errorCode(chunked) == "unsupported_transfer_encoding")
        let noLength = try HTTPProbe.parse(HTTPProbe.rawExchange(
            port: fixture.port, bytes: Array("POST /health HTTP/1.1\r\nHost: x\r\n\r\n".utf8)))
        #expect(noLength.status == 411)
    }

    @Test func h2cUpgradeIsRefused() throws {
        let fixture = try BrokerFixture()
        let request = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            + "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        let raw = try HTTPProbe.rawExchange(port: fixture.port, bytes: Array(request.utf8))
        let text = String(decoding: raw, as: UTF8.self)
        #expect(!text.contains("101"))
        let response = try HTTPProbe.parse(raw)
        #expect(response.status == 400)
        #expect(try errorCode(response) == "upgrade_not_supported")
        // HTTP/2 prior knowledge is not spoken either: the preface gets no HTTP/2 SETTINGS frame back.
        let preface = try HTTPProbe.rawExchange(
            port: fixture.port, bytes: Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8), timeout: 2)
        #expect(preface.first != 0x00)
        #expect(try fixture.get("/health").status == 200)
    }

    @Test func metricsArePrometheusText() throws {
        let fixture = try BrokerFixture()
        _ = try fixture.waitForHealth(200)
        let metrics = try fixture.get("/metrics")
        #expect(metrics.status == 200)
        #expect(metrics.headers["content-type"]?.hasPrefix("text/plain") == true)
        #expect(metrics.bodyText.contains("agentchat_websocket_connections"))
        #expect(metrics.bodyText.contains("agentchat_redis_up"))
    }
}

@Suite(.serialized) struct BrokerWebSocketTests {
    @Test func upgradeNeedsTheSubprotocol() throws {
        let fixture = try BrokerFixture()
        for offered in [[], ["chat.v0"]] {
            do {
                _ = try fixture.connect(subprotocols: offered)
                Issue.record("upgrade offering \(offered) was accepted")
            } catch let WebSocketError.upgradeRejected(head) {
                #expect(head.status == 400)
                #expect(try JSONParser.parse(head.body)["error"]?["code"] == "subprotocol_required")
            }
        }
        let (client, hello) = try fixture.connectReadingHello(subprotocols: ["chat.v0", "agentchat.v1"])
        #expect(client.negotiatedSubprotocol == "agentchat.v1")
        #expect(hello["broker"] == .string("http://127.0.0.1:\(fixture.port)"))
    }

    @Test func pingIsAnsweredWithPong() throws {
        let fixture = try BrokerFixture()
        let client = try fixture.connect()
        try client.send(text: #"{"type":"ping","id":"r-1"}"#)
        let pong = try json(client.receiveText(timeout: 5))
        #expect(pong["type"] == "pong")
        #expect(pong["ref"] == "r-1")
        #expect(pong["time"]?.integerValue != nil)
    }

    @Test func badFramesGetErrorsAndTheConnectionLivesOn() throws {
        let fixture = try BrokerFixture()
        let (_, client) = try fixture.loggedIn()
        let cases: [(String, String)] = [
            ("{nope", "bad_json"),
            (#"["ping"]"#, "bad_frame"),
            (#"{"id":"x1"}"#, "bad_frame"),
            (#"{"type":"teleport","id":"x2"}"#, "unknown_type"),
            (#"{"type":"ping","id":42}"#, "invalid_field"),
            (#"{"type":"ping","surprise":true}"#, "unknown_field"),
            // 33 levels (the frame's object and 32 arrays), the innermost empty: deeper than PROTOCOL's 32.
            (#"{"type":"ping","id":"d","x":"# + String(repeating: "[", count: 32) + String(repeating: "]", count: 32)
                + "}", "bad_json"),
        ]
        for (frame, code) in cases {
            try client.send(text: frame)
            let reply = try json(client.receiveText(timeout: 5))
            #expect(reply["type"] == "error", "for \(frame)")
            #expect(reply["code"]?.stringValue == code, "for \(frame)")
        }
        try client.send(binary: [1, 2, 3])
        #expect(try json(client.receiveText(timeout: 5))["code"] == "binary_not_supported")
        try client.send(text: #"{"type":"ping","id":"still-here"}"#)
        #expect(try json(client.receiveText(timeout: 5))["ref"] == "still-here")
    }

    @Test func fragmentedMessagesAreReassembled() throws {
        let fixture = try BrokerFixture()
        let client = try fixture.connect()
        let text = Array(#"{"type":"ping","id":"fragmented"}"#.utf8)
        try client.sendFrame(opcode: .text, payload: Array(text[0..<5]), fin: false)
        try client.sendFrame(opcode: .continuation, payload: Array(text[5..<20]), fin: false)
        try client.sendFrame(opcode: .continuation, payload: Array(text[20...]), fin: true)
        #expect(try json(client.receiveText(timeout: 5))["ref"] == "fragmented")
        // A large message that arrives in many reads: padded with spaces to 60 KiB, under the 64 KiB default.
        let padded = #"{"type":"ping","id":"large"}"# + String(repeating: " ", count: 60 * 1024)
        try client.send(text: padded)
        #expect(try json(client.receiveText(timeout: 5))["ref"] == "large")
    }

    @Test func oversizeMessagesCloseWith1009() throws {
        let fixture = try BrokerFixture(["--max-message-bytes", "4096"])
        let client = try fixture.connect()
        try client.send(text: #"{"type":"ping","id":"x"}"# + String(repeating: " ", count: 5000))
        let message = try client.receive(timeout: 5)
        guard case .close(let code, _) = message else {
            Issue.record("expected a close, got \(message)")
            return
        }
        #expect(code == 1009)
        // Also when the excess arrives only in a later fragment.
        let second = try fixture.connect()
        try second.sendFrame(opcode: .text, payload: [UInt8](repeating: 0x20, count: 3000), fin: false)
        try second.sendFrame(opcode: .continuation, payload: [UInt8](repeating: 0x20, count: 3000), fin: true)
        guard case .close(let secondCode, _) = try second.receive(timeout: 5) else {
            Issue.record("expected a close")
            return
        }
        #expect(secondCode == 1009)
        #expect(try fixture.get("/health").status == 200)
    }

    @Test func invalidUTF8ClosesWith1007() throws {
        let fixture = try BrokerFixture()
        let client = try fixture.connect()
        try client.sendFrame(opcode: .text, payload: [0x7B, 0xC3, 0x28, 0x7D])
        guard case .close(let code, _) = try client.receive(timeout: 5) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 1007)
    }

    @Test func silentClientsAreDroppedAndAnsweringClientsKept() throws {
        let fixture = try BrokerFixture(["--ping-interval", "1", "--ping-timeout", "1"])
        let silent = try fixture.connect()
        silent.autoReplyToPings = false
        let lively = try fixture.connect()
        // The silent client sees pings but never answers; within a few seconds the broker hangs up on it. The
        // lively one keeps receiving (which answers pings) and must survive the same time.
        var sawPing = false
        var dropped = false
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline, !dropped {
            do {
                if case .ping = try silent.receive(timeout: 0.25) { sawPing = true }
            } catch WebSocketError.timeout {
            } catch {
                dropped = true
            }
            do { _ = try lively.receive(timeout: 0.25) } catch WebSocketError.timeout {}
        }
        #expect(sawPing)
        #expect(dropped)
        try lively.send(text: #"{"type":"ping","id":"alive"}"#)
        #expect(try json(lively.receiveText(timeout: 5))["ref"] == "alive")
    }

    @Test func gracefulShutdownClosesClientsWith1001() throws {
        let fixture = try BrokerFixture()
        let client = try fixture.connect()
        try client.send(text: #"{"type":"ping"}"#)
        _ = try client.receiveText(timeout: 5)
        fixture.broker.terminate(signal: SIGTERM)
        guard case .close(let code, _) = try client.receive(timeout: 10) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 1001)
        #expect(try fixture.broker.waitForExit(timeout: 15) == 0)
        // Redis given with --redis-url is not the broker's to stop.
        #expect(fixture.redis.pid.map { kill($0, 0) == 0 } == true)
    }
}

@Suite(.serialized) struct BrokerRedisTests {
    @Test func healthFollowsRedisDownAndUp() throws {
        let fixture = try BrokerFixture()
        _ = try fixture.waitForHealth(200)
        fixture.redis.kill()
        let down = try fixture.waitForHealth(503)
        #expect(try json(down.bodyText)["status"] == "unhealthy")
        // WebSocket work that does not need Redis goes on.
        let client = try fixture.connect()
        try client.send(text: #"{"type":"ping","id":"r"}"#)
        #expect(try json(client.receiveText(timeout: 5))["ref"] == "r")
        try fixture.redis.restart()
        _ = try fixture.waitForHealth(200)
    }

    @Test func embeddedRedisStartsWithTheBrokerAndStopsAfterIt() throws {
        let broker = try BrokerProcess()
        defer { broker.stop() }
        let deadline = Date().addingTimeInterval(20)
        var healthy = false
        while Date() < deadline, !healthy {
            healthy = (try? HTTPProbe.request(port: broker.port, path: "/health").status) == 200
            if !healthy { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(healthy)
        let redisPID = try #require(Self.redisServerPID(dataDirectory: broker.dataDirectory))
        let config = try String(contentsOfFile: broker.dataDirectory + "/redis.conf", encoding: .utf8)
        #expect(config.contains("appendonly yes"))
        #expect(config.contains("appendfsync everysec"))
        let client = try WebSocketClient.connect(port: broker.port, subprotocols: ["agentchat.v1"])
        #expect(try json(client.receiveText(timeout: 5))["type"] == "hello")
        broker.terminate(signal: SIGINT)
        guard case .close(let code, _) = try client.receive(timeout: 10) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 1001)
        #expect(try broker.waitForExit(timeout: 20) == 0)
        #expect(kill(redisPID, 0) != 0, "the embedded redis-server outlived the broker")
        // Redis was asked to stop (it logs the request) rather than killed.
        let log = try String(contentsOfFile: broker.dataDirectory + "/redis.log", encoding: .utf8)
        #expect(log.contains("ready to exit, bye bye"))
    }

    @Test func aKilledBrokerLosesNothingAcknowledgedAndRestartsOnItsData() throws {
        let directory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-kill-\(UUID().uuidString.prefix(6))").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var broker = try BrokerProcess(dataDirectory: directory)
        let alice = try RawSession(agent: TestAgent(), port: broker.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        var acknowledged: [Int64] = []
        for _ in 0..<50 { acknowledged += [try #require(alice.send(id, epoch: 1)["offset"]?.integerValue)] }
        let survivor = try #require(Self.redisServerPID(dataDirectory: directory))
        broker.kill()
        _ = try broker.waitForExit(timeout: 10)
        // Its redis-server outlives it; the next broker on the same directory stops that one and starts its own.
        #expect(kill(survivor, 0) == 0)
        broker = try BrokerProcess(dataDirectory: directory)
        defer { broker.stop() }
        #expect(kill(survivor, 0) != 0)
        let again = try RawSession(agent: alice.agent, port: broker.port, register: false)
        let history = try again.request(["type": "history", "channel": .string(id), "after": 0, "limit": 100])
        #expect(history["messages"]?.arrayValue?.compactMap { $0["offset"]?.integerValue } == acknowledged)
    }

    /// The pid of a `redis-server` whose command line or working files point into `dataDirectory`.
    static func redisServerPID(dataDirectory: String) -> Int32? {
        let dataDirectory = URL(fileURLWithPath: dataDirectory).standardizedFileURL.path
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return nil }
        for entry in entries {
            guard let pid = Int32(entry),
                let cmdline = try? String(contentsOfFile: "/proc/\(entry)/cmdline", encoding: .utf8),
                cmdline.contains("redis-server"), cmdline.contains(dataDirectory)
            else { continue }
            return pid
        }
        return nil
    }
}
