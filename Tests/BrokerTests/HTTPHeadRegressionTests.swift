import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// Request heads an independent prober found mishandled, against a real broker over real sockets: header names
/// libwebsockets 4.1 cannot parse, long `Content-Length` values, malformed WebSocket upgrades, and `Allow` on 405.
@Suite(.serialized) struct HTTPHeadRegressionTests {
    /// Sends each head on its own connection, all at once, and parses each answer. 20 s is a safety net only: longer
    /// than the broker's 10 s allowance for a head, so a head left unanswered fails here rather than hangs.
    static func answers(_ port: Int, _ heads: [String]) async throws -> [Result<TestSupport.HTTPResponse, Error>] {
        try await withThrowingTaskGroup(of: (Int, Result<TestSupport.HTTPResponse, Error>).self) { group in
            for (index, head) in heads.enumerated() {
                group.addTask {
                    let raw = try await HTTPProbe.rawExchange(port: port, bytes: Array(head.utf8), timeout: 20)
                    return (index, Result { try HTTPProbe.parse(raw) })
                }
            }
            var results = [Result<TestSupport.HTTPResponse, Error>?](repeating: nil, count: heads.count)
            for try await (index, result) in group { results[index] = result }
            return results.map { $0! }
        }
    }

    /// Reads the answer to a WebSocket upgrade up to the broker's `hello` (or the connection's end).
    static func upgradeAnswer(_ port: Int, _ head: String) throws -> String {
        let socket = try BlockingTCPSocket(host: "127.0.0.1", port: port, timeout: 5)
        defer { socket.close() }
        try socket.write(Array(head.utf8), timeout: 5)
        var answer: [UInt8] = []
        let deadline = Deadline(seconds: 20)
        while !String(decoding: answer, as: UTF8.self).contains("\"hello\""),
            let chunk = try? socket.read(deadline: deadline)
        {
            answer += chunk
        }
        return String(decoding: answer, as: UTF8.self)
    }

    static let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        + "Sec-WebSocket-Protocol: agentchat.v1\r\n"
    static let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

    // MARK: A1: header names libwebsockets 4.1 loses the colon of

    /// A field whose name is the beginning of one libwebsockets knows (`X` of `X-Forwarded-For`, `A` of `Accept`)
    /// made libwebsockets read on past its line: as the last field, the head never ended and the client got
    /// nothing, not even a 408; before another field, it hid that field.
    @Test func headerNamesLibwebsocketsCannotParseAreServed() async throws {
        let fixture = try BrokerFixture()
        let fields = ["X: a", "A: 1", "x:a", "Accept: */*\r\nX: 1", "T: 1", "Ho: 1", "Content: 1", "Head: 1",
                      "Sec-WebSocket-Ke: 1", "Put: 1", "Delete-Me: 1", "X: 1\r\nY: 2", "Xy: a", "X-1: a"]
        let heads = fields.map { "GET /health HTTP/1.1\r\nHost: 127.0.0.1:\(fixture.port)\r\n\($0)\r\n\r\n" }
        for (field, result) in zip(fields, try await Self.answers(fixture.port, heads)) {
            #expect((try? result.get())?.status == 200, "\(field.debugDescription): \(result)")
        }
    }

    /// Such a field before the fields that matter hides nothing: a WebSocket upgrade still upgrades (its key was
    /// hidden). On a request with a body it is refused with 400 (libwebsockets 4.1 would not read the body of a head
    /// handed over without it); before, it hid the `Content-Length` or `Content-Type` after it.
    @Test func aFieldLibwebsocketsCannotParseHidesNothingElse() async throws {
        let fixture = try BrokerFixture()
        let text = try Self.upgradeAnswer(
            fixture.port, "GET / HTTP/1.1\r\nHost: x\r\nA: 1\r\n\(Self.upgrade)X: 2\r\n\(Self.key)C: 3\r\n\r\n")
        #expect(text.hasPrefix("HTTP/1.1 101"), "\(text.prefix(200))")
        #expect(text.contains("\"type\":\"hello\""))

        let body = String(decoding: JSONWriter.encode(TestAgent().registrationBody()), as: UTF8.self)
        let heads = ["C: 1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)",
                     "Content-Type: application/json\r\nX: 1\r\nContent-Length: \(body.utf8.count)"]
            .map { "POST /api/v1/agents/register HTTP/1.1\r\nHost: x\r\n\($0)\r\n\r\n\(body)" }
        for (head, result) in zip(heads, try await Self.answers(fixture.port, heads)) {
            let response = try? result.get()
            #expect(response?.status == 400, "\(head.prefix(80).debugDescription): \(result)")
            #expect(response.flatMap { try? errorCode($0) } == "bad_request")
        }
        // The same registration without the field registers.
        let plain = try TestAgent.post(port: fixture.port, body: JSONWriter.encode(TestAgent().registrationBody()))
        #expect(plain.status == 201, "\(plain.bodyText)")
    }

    // MARK: A5: Content-Length

    /// Any run of digits is a length: leading zeros are fine, and a number too large to hold is over the cap
    /// (413), not malformed.
    @Test func longContentLengthsAreReadAsNumbers() async throws {
        let fixture = try BrokerFixture()
        func post(_ length: String, _ body: String) -> String {
            "POST /api/v1/agents/register HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + "Content-Length: \(length)\r\n\r\n\(body)"
        }
        let cases: [(String, String, Int, String)] = [
            ("1000000000000000000", "", 413, "body_too_large"),  // 19 digits
            ("99999999999999999999999999", "", 413, "body_too_large"),  // over Int64
            ("000000000000000000000065537", "", 413, "body_too_large"),
            ("0000000000000000002", "{}", 400, "missing_field"),  // 19 digits, 2: the body is read
            ("02", "{}", 400, "missing_field"),
            ("2", "{}", 400, "missing_field"),
            ("-1", "", 400, "bad_content_length"),
            ("+2", "{}", 400, "bad_content_length"),
            ("0x2", "{}", 400, "bad_content_length"),
        ]
        let results = try await Self.answers(fixture.port, cases.map { post($0.0, $0.1) })
        for (c, result) in zip(cases, results) {
            let response = try? result.get()
            #expect(response?.status == c.2, "Content-Length \(c.0): \(result)")
            #expect(response.flatMap { try? errorCode($0) } == c.3, "Content-Length \(c.0)")
        }
    }

    // MARK: B11: malformed WebSocket upgrades

    /// An upgrade that is not GET, not HTTP/1.1, without `Connection: Upgrade`, or without one valid
    /// `Sec-WebSocket-Key` is answered `400 bad_upgrade` with the JSON body; libwebsockets upgraded some and closed
    /// the others without a word.
    @Test func malformedUpgradesGet400BadUpgrade() async throws {
        let fixture = try BrokerFixture()
        let protocolAndVersion = "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: agentchat.v1\r\n"
        let cases: [(String, String)] = [
            ("no Sec-WebSocket-Key", "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)\r\n"),
            ("no Connection",
             "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\(protocolAndVersion)\(Self.key)\r\n"),
            ("Connection: keep-alive",
             "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\(protocolAndVersion)"
                + "\(Self.key)\r\n"),
            ("POST", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\(Self.upgrade)\(Self.key)\r\n"),
            ("HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\(Self.upgrade)\(Self.key)\r\n"),
            ("Sec-WebSocket-Key: abc", "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)Sec-WebSocket-Key: abc\r\n\r\n"),
            ("a key of 15 bytes",
             "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n\r\n"),
            ("a key of 17 bytes",
             "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n"),
            ("two keys", "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)\(Self.key)\(Self.key)\r\n"),
        ]
        let results = try await Self.answers(fixture.port, cases.map(\.1))
        for (c, result) in zip(cases, results) {
            let response = try? result.get()
            #expect(response?.status == 400, "\(c.0): \(result)")
            #expect(response.flatMap { try? errorCode($0) } == "bad_upgrade", "\(c.0)")
            #expect(response?.headers["content-type"] == "application/json", "\(c.0)")
            #expect(response?.headers["connection"]?.lowercased() == "close", "\(c.0)")
        }
        // The rules that were there stay: h2c, another version, no subprotocol.
        let kept = try await Self.answers(fixture.port, [
            "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\n"
                + "\(Self.key)\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                + "\(Self.key)\r\n",
        ]).map { try? $0.get() }
        #expect(kept[0]?.status == 400 && kept[0].flatMap { try? errorCode($0) } == "upgrade_not_supported")
        #expect(kept[1]?.status == 426 && kept[1].flatMap { try? errorCode($0) } == "upgrade_required")
        #expect(kept[2]?.status == 400 && kept[2].flatMap { try? errorCode($0) } == "subprotocol_required")
    }

    /// Well-formed upgrades, spelled in the ways RFC 6455 and RFC 9110 allow, still upgrade.
    @Test func wellFormedUpgradesStillUpgrade() throws {
        let fixture = try BrokerFixture()
        let heads = [
            "GET / HTTP/1.1\r\nHost: x\r\n\(Self.upgrade)\(Self.key)\r\n",
            "GET /any/path HTTP/1.1\r\nHost: x\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
                + "sec-websocket-version: 13\r\nsec-websocket-protocol: agentchat.v1\r\n"
                + "sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n"
                + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: agentchat.v1\r\n\(Self.key)\r\n",
        ]
        for head in heads {
            let text = try Self.upgradeAnswer(fixture.port, head)
            #expect(text.hasPrefix("HTTP/1.1 101"), "\(head.debugDescription): \(text.prefix(200))")
            #expect(text.contains("\"type\":\"hello\""))
        }
    }

    // MARK: Allow

    /// HEAD is served wherever GET is, so a 405 there lists it in `Allow`.
    @Test func allowListsHEADWhereHEADIsServed() throws {
        let fixture = try BrokerFixture()
        let onHealth = try HTTPProbe.request(port: fixture.port, method: "DELETE", path: "/health")
        #expect(onHealth.status == 405)
        #expect(onHealth.headers["allow"] == "GET, HEAD")
        #expect(try HTTPProbe.request(port: fixture.port, method: "HEAD", path: "/health").status == 200)
        let onPage = try HTTPProbe.request(port: fixture.port, method: "POST", path: "/app.js",
                                           headers: [("Content-Length", "0")])
        #expect(onPage.status == 405)
        #expect(onPage.headers["allow"] == "GET, HEAD")
        let onRegister = try HTTPProbe.request(port: fixture.port, method: "HEAD", path: "/api/v1/agents/register")
        #expect(onRegister.status == 405)
        #expect(onRegister.headers["allow"] == "OPTIONS, POST")
    }
}

/// A request head that arrives in several pieces, followed by a body: the gate used to take the pieces from the
/// socket and hand them to libwebsockets with the connection (`lws_adopt_socket_readbuf`), after which libwebsockets
/// 4.1.6 looped on the body and the whole broker stopped answering (found by a helper probing the gate).
@Suite(.serialized) struct HTTPHeadInPiecesTests {
    @Test(arguments: ["body after the head", "body with the last piece", "no body"])
    func aHeadInPiecesIsServedAndTheBrokerGoesOn(_ variant: String) throws {
        let fixture = try BrokerFixture()
        let socket = try BlockingTCPSocket(host: "127.0.0.1", port: fixture.port, timeout: 5)
        defer { socket.close() }
        let body = variant == "no body" ? "" : "{}"
        let method = variant == "no body" ? "GET /health" : "POST /api/v1/agents/register"
        let first = "\(method) HTTP/1.1\r\nHost: 127.0.0.1:\(fixture.port)\r\n"
        let second = (body.isEmpty ? "" : "Content-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n")
            + "\r\n" + (variant == "body with the last piece" ? body : "")
        try socket.write(Array(first.utf8), timeout: 5)
        Thread.sleep(forTimeInterval: 0.3)
        try socket.write(Array(second.utf8), timeout: 5)
        if variant == "body after the head" {
            Thread.sleep(forTimeInterval: 0.3)
            try socket.write(Array(body.utf8), timeout: 5)
        }
        var answer: [UInt8] = []
        let deadline = Deadline(seconds: 15)
        while let chunk = try? socket.read(deadline: deadline) { answer += chunk }
        let response = try HTTPProbe.parse(answer)
        #expect(response.status == (body.isEmpty ? 200 : 400), "\(String(decoding: answer, as: UTF8.self))")
        // The broker still answers everyone else.
        #expect(try fixture.get("/health").status == 200)
    }
}
