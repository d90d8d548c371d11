import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// One malformed or unsupported request and the answer it must get.
struct BadRequestCase: Sendable, CustomTestStringConvertible {
    let name: String
    let bytes: [UInt8]
    let status: Int
    let code: String

    init(_ name: String, _ text: String, _ status: Int, _ code: String) {
        self.name = name
        bytes = Array(text.utf8)
        self.status = status
        self.code = code
    }

    init(_ name: String, bytes: [UInt8], _ status: Int, _ code: String) {
        self.name = name
        self.bytes = bytes
        self.status = status
        self.code = code
    }

    var testDescription: String { name }

    static let all: [BadRequestCase] = [
        BadRequestCase("two spaces in the request line", "GET  /health HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                       "bad_request"),
        BadRequestCase("a TLS ClientHello", bytes: [0x16, 0x03, 0x01, 0x00, 0xA5, 0x01, 0x00, 0x00, 0xA1, 0x03, 0x03],
                       400, "bad_request"),
        BadRequestCase("unknown method TRACE", "TRACE /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        BadRequestCase("unknown method FOO", "FOO /health HTTP/1.1\r\nHost: x\r\n\r\n", 501, "not_implemented"),
        BadRequestCase("absolute-form target", "GET http://127.0.0.1/health HTTP/1.1\r\nHost: x\r\n\r\n", 400,
                       "bad_request"),
        BadRequestCase("the HTTP/2 connection preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505,
                       "http_version_not_supported"),
        BadRequestCase("Upgrade: foo",
                       "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n", 400,
                       "upgrade_not_supported"),
        BadRequestCase("an 8 KB URI", "GET /\(String(repeating: "a", count: 8192)) HTTP/1.1\r\nHost: x\r\n\r\n",
                       414, "uri_too_long"),
        BadRequestCase("an 8 KB header",
                       "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: \(String(repeating: "b", count: 8192))\r\n\r\n",
                       431, "headers_too_large"),
        BadRequestCase("no HTTP version", "GET /health\r\n\r\n", 400, "bad_request"),
        BadRequestCase("HTTP/9.9", "GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 505, "http_version_not_supported"),
        BadRequestCase("a header line without a colon", "GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
                       400, "bad_request"),
        BadRequestCase("an obs-fold header line", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
                       400, "bad_request"),
        BadRequestCase("a tab-folded header line", "GET /health HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\tfolded\r\n\r\n",
                       400, "bad_request"),
    ]
}

@Suite(.serialized) struct HTTPConformanceTests {
    /// Every case is answered with its status and the JSON error body, then the connection is closed.
    @Test(arguments: BadRequestCase.all)
    func malformedRequestsGetAJSONAnswer(_ request: BadRequestCase) async throws {
        let fixture = try BrokerFixture()
        // Generous: longer than the 10 s idle timeout, so a request left unanswered until then fails here.
        let raw = try await HTTPProbe.rawExchange(port: fixture.port, bytes: request.bytes, timeout: 20)
        let response = try HTTPProbe.parse(raw)
        #expect(response.status == request.status)
        #expect(response.headers["content-type"] == "application/json")
        #expect(try errorCode(response) == request.code)
        #expect(response.headers["connection"]?.lowercased() == "close")
        // The broker is unharmed (health may say 503 for a moment while its Redis connection comes up).
        #expect(try fixture.waitForHealth(200).status == 200)
    }

    @Test func aWebSocketVersionOtherThan13Gets426() throws {
        let fixture = try BrokerFixture()
        for version in ["8", "14"] {
            do {
                _ = try WebSocketClient.connect(port: fixture.port, subprotocols: ["agentchat.v1"],
                                                headers: [("Sec-WebSocket-Version", version)])
                Issue.record("Sec-WebSocket-Version \(version) was accepted")
            } catch let WebSocketError.upgradeRejected(head) {
                #expect(head.status == 426)
                #expect(head.headers["sec-websocket-version"] == "13")
                #expect(try JSONParser.parse(head.body)["error"]?["code"] == "upgrade_required")
            }
        }
        // Version 13 still upgrades.
        let (_, hello) = try fixture.connectReadingHello()
        #expect(hello["type"] == "hello")
    }

    /// A second request on a kept-alive connection must not reach libwebsockets' parser unchecked: every HTTP
    /// answer closes its connection.
    @Test func aSecondRequestOnTheConnectionIsNotServed() throws {
        let fixture = try BrokerFixture()
        _ = try fixture.waitForHealth(200)  // 503 until the broker's Redis connection is up
        let pipelined = "GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/9.9\r\nHost: x\r\n\r\n"
        let raw = try HTTPProbe.rawExchange(port: fixture.port, bytes: Array(pipelined.utf8), timeout: 20)
        let first = try HTTPProbe.parse(raw)
        #expect(first.status == 200)
        #expect(first.headers["connection"]?.lowercased() == "close")
        let text = String(decoding: raw, as: UTF8.self)
        #expect(text.components(separatedBy: "HTTP/1.1 ").count == 2, "more than one answer: \(text)")
    }

    /// A head that arrives in several reads is consumed by the gate and handed to libwebsockets with the bytes.
    @Test func aHeadInPiecesIsServed() throws {
        let fixture = try BrokerFixture()
        let pieces = ["GET /hea", "lth HTTP/1.1\r\nHo", "st: x\r\n", "\r\n"]
        let socket = try BlockingTCPSocket(host: "127.0.0.1", port: fixture.port, timeout: 5)
        defer { socket.close() }
        for piece in pieces {
            try socket.write(Array(piece.utf8), timeout: 5)
            Thread.sleep(forTimeInterval: 0.2)
        }
        var received: [UInt8] = []
        let deadline = Deadline(seconds: 20)
        while let chunk = try? socket.read(deadline: deadline) { received += chunk }
        #expect(try HTTPProbe.parse(received).status == 200)
        // A WebSocket upgrade in pieces is answered 101 and followed by the broker's hello.
        let ws = try BlockingTCPSocket(host: "127.0.0.1", port: fixture.port, timeout: 5)
        defer { ws.close() }
        let upgrade = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            + "Sec-WebSocket-Protocol: agentchat.v1\r\n\r\n"
        let bytes = Array(upgrade.utf8)
        try ws.write(Array(bytes[0..<40]), timeout: 5)
        Thread.sleep(forTimeInterval: 0.2)
        try ws.write(Array(bytes[40...]), timeout: 5)
        var answer: [UInt8] = []
        let until = Deadline(seconds: 20)
        while !String(decoding: answer, as: UTF8.self).contains("\"hello\""),
            let chunk = try? ws.read(deadline: until)
        {
            answer += chunk
        }
        let text = String(decoding: answer, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 101"))
        #expect(text.contains("\"type\":\"hello\""))
    }

    /// A head that never completes is answered 408 once the 10 s allowance has passed.
    @Test func anIncompleteHeadGets408() async throws {
        let fixture = try BrokerFixture()
        // Waits more than 10 s: the async wrapper keeps the cooperative threads free meanwhile.
        let raw = try await HTTPProbe.rawExchange(port: fixture.port,
                                                  bytes: Array("GET /health HTTP/1.1\r\nHost:".utf8), timeout: 30)
        let response = try HTTPProbe.parse(raw)
        #expect(response.status == 408)
        #expect(try errorCode(response) == "request_timeout")
    }

    @Test func wellFormedRequestsStillWork() throws {
        let fixture = try BrokerFixture()
        _ = try fixture.waitForHealth(200)  // 503 until the broker's Redis connection is up
        let split = try HTTPProbe.rawExchange(port: fixture.port,
                                              bytes: Array("GET /health HTTP/1.0\r\nHost: x\r\n\r\n".utf8),
                                              timeout: 20)
        #expect(try HTTPProbe.parse(split).status == 200)
        let query = try fixture.get("/health?a=1&b=%41")
        #expect(query.status == 200)
        let options = try HTTPProbe.request(port: fixture.port, method: "OPTIONS", path: "/api/v1/agents/register")
        #expect(options.status != 400 && options.status != 501)
    }
}

@Suite(.serialized) struct WebSocketConformanceTests {
    static func connected(_ fixture: BrokerFixture) throws -> RawWebSocket {
        let socket = try RawWebSocket(port: fixture.port)
        guard case .frame(let hello) = socket.next(timeout: 5), hello.opcode == .text else {
            throw FixtureError.unexpected("no hello")
        }
        return socket
    }

    /// RFC 6455 §5.1: a server must close the connection on an unmasked client frame (1002).
    @Test(arguments: ["text", "binary", "pong", "text after a masked one"])
    func anUnmaskedFrameClosesWith1002(_ kind: String) throws {
        let fixture = try BrokerFixture()
        let socket = try Self.connected(fixture)
        switch kind {
        case "binary": try socket.send(.binary, [1, 2, 3], masked: false)
        case "pong": try socket.send(.pong, Array("ka".utf8), masked: false)
        case "text after a masked one":
            try socket.sendText(#"{"type":"ping","id":"masked"}"#)
            guard case .frame(let pong) = socket.next(timeout: 5), pong.opcode == .text else {
                Issue.record("no pong")
                return
            }
            try socket.sendText(#"{"type":"ping","id":"unmasked"}"#, masked: false)
        default: try socket.sendText(#"{"type":"ping","id":"unmasked"}"#, masked: false)
        }
        let (code, ended) = socket.awaitClose(timeout: 10)
        #expect(code == 1002)
        #expect(ended)
    }

    /// Control frames carry at most 125 bytes (§5.5); a 64-bit length has its top bit clear (§5.2). libwebsockets'
    /// parser refuses these without a callback; the broker still sends the 1002 close.
    @Test(arguments: ["ping of 126 bytes", "pong of 200 bytes", "64-bit length with the top bit set"])
    func aFrameRefusedByTheParserClosesWith1002(_ violation: String) throws {
        let fixture = try BrokerFixture()
        let socket = try Self.connected(fixture)
        switch violation {
        case "ping of 126 bytes": try socket.send(.ping, [UInt8](repeating: 0x61, count: 126))
        case "pong of 200 bytes": try socket.send(.pong, [UInt8](repeating: 0x61, count: 200))
        default: try socket.socket.write([0x81, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 1, 1, 2, 3, 4], timeout: 5)
        }
        let (code, ended) = socket.awaitClose(timeout: 10)
        #expect(code == 1002)
        #expect(ended)
    }

    /// A close code outside 1000–1003, 1007–1011 and 3000–4999 is invalid (§7.4), and so is a payload of one byte
    /// (§5.5.1): answered with a close frame carrying 1002.
    @Test(arguments: [[0x03, 0xE7], [0x03, 0xEC], [0x03, 0xED], [0x03, 0xEE], [0x03, 0xF7], [0x03, 0xF8],
                      [0x0B, 0xB7], [0x13, 0x88], [0x17, 0x70], [0xFF, 0xFF], [0x13, 0x88, 0x68, 0x69], [0x03]] as [[UInt8]])
    func aCloseWithAnInvalidCodeIsAnsweredWith1002(_ payload: [UInt8]) throws {
        let fixture = try BrokerFixture()
        let socket = try Self.connected(fixture)
        try socket.send(.close, payload)
        let (code, ended) = socket.awaitClose(timeout: 10)
        #expect(code == 1002, "close payload \(payload)")
        #expect(ended)
    }

    /// Valid codes are echoed (§5.5.1), the application's range 4000–4999 included.
    @Test(arguments: [1000, 1001, 1003, 1007, 1011, 3000, 4999])
    func aCloseWithAValidCodeIsEchoed(_ sent: Int) throws {
        let fixture = try BrokerFixture()
        let socket = try Self.connected(fixture)
        try socket.send(.close, [UInt8(sent >> 8), UInt8(sent & 0xFF)])
        let (code, ended) = socket.awaitClose(timeout: 10)
        #expect(code.map(Int.init) == sent)
        #expect(ended)
    }
}
