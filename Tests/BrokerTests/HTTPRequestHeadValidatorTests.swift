import AgentChatProtocol
import Testing

/// The fields of a well-formed WebSocket upgrade but its key.
private let upgrade = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
private let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"

@Suite struct HTTPRequestHeadValidatorTests {
    let validator = HTTPRequestHeadValidator()

    func verdict(_ text: String) -> HTTPRequestHeadValidator.Verdict { validator.evaluate(Array(text.utf8)) }

    func refusal(_ text: String) -> (Int, String)? {
        guard case .refused(let r) = verdict(text) else { return nil }
        return (r.status, r.code.rawValue)
    }

    @Test func aPlainRequestIsAccepted() throws {
        let text = "GET /health?x=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nX-Empty:\r\nAccept:  */* \r\n\r\nbody"
        guard case .accepted(let head) = verdict(text) else {
            Issue.record("refused: \(verdict(text))")
            return
        }
        #expect(head.method == "GET" && head.target == "/health?x=1" && head.version == "HTTP/1.1")
        #expect(head.fields == [.init("Host", "127.0.0.1:8080"), .init("X-Empty", ""), .init("Accept", "*/*")])
        #expect(head.byteCount == text.utf8.count - 4)
        #expect(head.value(of: "accept") == "*/*")
    }

    @Test func aWebSocketUpgradeIsAccepted() {
        let text = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        guard case .accepted = verdict(text) else {
            Issue.record("refused: \(verdict(text))")
            return
        }
    }

    @Test(arguments: [
        ("GET  /health HTTP/1.1\r\n\r\n", 400, "bad_request"),
        (" GET /health HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("\r\nGET /health HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /health\r\n\r\n", 400, "bad_request"),
        ("GET /health \r\n\r\n", 400, "bad_request"),
        ("GET /health HTTP/1\r\n\r\n", 400, "bad_request"),
        ("GET /health HTTP/1.1 \r\n\r\n", 400, "bad_request"),
        ("GET /health HTTP/1.1\n\r\n", 400, "bad_request"),
        ("GET /health HTTP/9.9\r\n\r\n", 505, "http_version_not_supported"),
        ("GET /health HTTP/2.0\r\n\r\n", 505, "http_version_not_supported"),
        ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "http_version_not_supported"),
        ("TRACE / HTTP/1.1\r\n\r\n", 501, "not_implemented"),
        ("CONNECT x:443 HTTP/1.1\r\n\r\n", 501, "not_implemented"),
        ("get / HTTP/1.1\r\n\r\n", 501, "not_implemented"),
        ("GET http://x/health HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("OPTIONS * HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /a%zz HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /a%0 HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /a%00b HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /a\u{7F} HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /é HTTP/1.1\r\n\r\n", 400, "bad_request"),
        ("GET /\(String(repeating: "a&", count: 40)) HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        ("GET /\(String(repeating: "a", count: 3000)) HTTP/1.1\r\n\r\n", 414, "uri_too_long"),
        ("GET / HTTP/1.1\r\nX: \(String(repeating: "b", count: 5000))\r\n\r\n", 431, "headers_too_large"),
        ("GET / HTTP/1.1\r\n\(String(repeating: "X: y\r\n", count: 49))\r\n", 431, "headers_too_large"),
        ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nName : v\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\n: v\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nNa(me: v\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\r\n\tfolded\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\u{0}2\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\r2\r\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\n\r\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nA: 1\r\n\n", 400, "bad_request"),
        ("GET / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 400, "upgrade_not_supported"),
        ("GET / HTTP/1.1\r\nUpgrade: foo\r\n\r\n", 400, "upgrade_not_supported"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket, h2c\r\n\r\n", 400, "upgrade_not_supported"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\r\n", 426, "upgrade_required"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n", 426, "upgrade_required"),
        ("GET / HTTP/1.1\r\n\(upgrade)\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\(key)\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nSec-WebSocket-Version: 13\r\n\(key)\r\n",
         400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgraded\r\nSec-WebSocket-Version: 13\r\n\(key)\r\n",
         400, "bad_upgrade"),
        ("POST / HTTP/1.1\r\n\(upgrade)\(key)\r\n", 400, "bad_upgrade"),
        ("HEAD / HTTP/1.1\r\n\(upgrade)\(key)\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.0\r\n\(upgrade)\(key)\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: abc\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key:\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAA\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ-_\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j_Q==\r\n\r\n", 400, "bad_upgrade"),
        ("GET / HTTP/1.1\r\n\(upgrade)\(key)\(key)\r\n", 400, "bad_upgrade"),
        ("POST / HTTP/1.1\r\nUpgrade: h2c\r\n\r\n", 400, "upgrade_not_supported"),
    ])
    func refusals(_ text: String, _ status: Int, _ code: String) {
        let answer = refusal(text)
        #expect(answer?.0 == status, "\(text.debugDescription.prefix(80)): \(verdict(text))")
        #expect(answer?.1 == code)
    }

    /// RFC 6455 §4.2.1 allows these spellings: any case, `upgrade` among other `Connection` tokens or fields, any
    /// 16 bytes as the key.
    @Test(arguments: [
        "GET / HTTP/1.1\r\nupgrade: WebSocket\r\nconnection: keep-alive, UPGRADE\r\nsec-websocket-version: 13\r\n"
            + "sec-websocket-key: AQIDBAUGBwgJCgsMDQ4PEA==\r\n\r\n",
        "GET /x?y=1 HTTP/1.1\r\nUpgrade: websocket\r\nConnection: keep-alive\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key:  +/+/+/+/+/+/+/+/+/+/+w== \r\n\r\n",
        "GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n",
    ])
    func wellFormedUpgradesAreAccepted(_ text: String) {
        guard case .accepted = verdict(text) else {
            Issue.record("refused: \(verdict(text))")
            return
        }
    }

    @Test(arguments: [
        ("0", HTTPRequestHeadValidator.ContentLength.bytes(0)),
        ("65536", .bytes(65536)),
        ("0000000000000000002", .bytes(2)),
        ("000000000000000000000000000000000000000000000000007", .bytes(7)),
        ("1000000000000000000", .bytes(1_000_000_000_000_000_000)),
        ("9223372036854775807", .bytes(Int.max)),
        ("9223372036854775808", .tooLarge),
        ("99999999999999999999999999999", .tooLarge),
        ("", .malformed),
        ("-1", .malformed),
        ("+1", .malformed),
        (" 1", .malformed),
        ("1 ", .malformed),
        ("1,1", .malformed),
        ("1 1", .malformed),
        ("0x10", .malformed),
        ("1e3", .malformed),
        ("١", .malformed),
    ])
    func contentLengthIsAnyRunOfDigits(_ text: String, _ expected: HTTPRequestHeadValidator.ContentLength) {
        #expect(HTTPRequestHeadValidator.contentLength(text) == expected, "\(text.debugDescription)")
    }

    /// Names that are the beginning of a header name libwebsockets 4.1 knows, or start with one of its four
    /// colon-less entries, are the ones it misreads.
    @Test func theNamesLibwebsocketsMisreads() {
        let misread = ["X", "x", "A", "T", "C", "H", "Ho", "Hos", "Content", "Content-", "Accept-", "Head", "Get",
                       "Post", "Http", "Http2", "Sec-WebSocket-Ke", "Pu", "Ur", "Put", "Puts", "PATCH", "Delete-Me",
                       "Uri-args", "X-Forwarded", "Proxy", "Connect"]
        for name in misread {
            #expect(HTTPRequestHeadValidator.libwebsocketsMisreads(fieldName: name), "\(name)")
        }
        let read = ["Host", "HOST", "Accept", "Te", "Xy", "X-1", "B", "Z", "Sec-WebSocket-Key", "Sec-WebSocket-Key1",
                    "Content-Type", "Stripe-Signature", "X-Forwarded-For", "User-Agent", "Origin", "Authorization",
                    "If-Match", "Hostname", "Accepts", "Utz", "Rangez"]
        for name in read {
            #expect(!HTTPRequestHeadValidator.libwebsocketsMisreads(fieldName: name), "\(name)")
        }
    }

    func handOver(_ text: String) -> HTTPRequestHeadValidator.HandOver? {
        let bytes = Array(text.utf8)
        guard case .accepted(let head) = validator.evaluate(bytes) else { return nil }
        #expect(head.fieldLines.count == head.fields.count)
        return validator.libwebsocketsHandOver(bytes, head: head)
    }

    /// libwebsockets gets the head without the fields it would misread, and everything after the head as sent; a
    /// request with a body and such a field is refused.
    @Test func libwebsocketsGetsTheHeadWithoutTheFieldsItMisreads() throws {
        let text = "GET /health HTTP/1.1\r\nX: 1\r\nHost: h\r\nA:2\r\nXy: 3\r\nContent: 4\r\n\r\nmore"
        #expect(handOver(text) == .copy(Array("GET /health HTTP/1.1\r\nHost: h\r\nXy: 3\r\n\r\nmore".utf8)))
        #expect(handOver("GET /health HTTP/1.1\r\nHost: h\r\nXy: 3\r\n\r\n") == .asIs)
        #expect(handOver("POST /x HTTP/1.1\r\nX: 1\r\nContent-Length: 0\r\n\r\n")
            == .copy(Array("POST /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n".utf8)))
        guard case .refused(let refusal) = handOver("POST /x HTTP/1.1\r\nX: 1\r\nContent-Length: 2\r\n\r\n{}") else {
            Issue.record("not refused")
            return
        }
        #expect(refusal.status == 400 && refusal.code == .badRequest)
        #expect(refusal.message.contains("X"))
    }

    @Test func the426NamesTheVersion() {
        guard case .refused(let r) = verdict("GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\r\n")
        else {
            Issue.record("not refused")
            return
        }
        #expect(r.fields == [.init("Sec-WebSocket-Version", "13")])
    }

    @Test(arguments: ["", "G", "GET", "GET ", "GET /he", "GET /health ", "GET /health HTTP/1.", "GET /health HTTP/1.1",
                      "GET /health HTTP/1.1\r", "GET /health HTTP/1.1\r\n", "GET /health HTTP/1.1\r\nHo",
                      "GET /health HTTP/1.1\r\nHost: x", "GET /health HTTP/1.1\r\nHost: x\r\n\r"])
    func prefixesOfAGoodHeadNeedMore(_ text: String) {
        #expect(verdict(text) == .incomplete)
    }

    /// However the bytes are split into reads, a prefix is either "need more" or the verdict of the whole head.
    @Test func theVerdictDoesNotDependOnHowTheBytesArrive() {
        let heads = [
            "GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /health HTTP/9.9\r\nHost: x\r\nA: 1\r\n folded\r\n\r\n",
            "FOO /x HTTP/1.1\r\n\r\n",
            "GETTINGVERYLONGMETHOD /x HTTP/1.1\r\n\r\n",
            "GET /\(String(repeating: "a", count: 2100)) HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \(String(repeating: "b", count: 4100))\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n\r\n",
            "GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            "POST / HTTP/1.1\r\n\(upgrade)\(key)\r\n",
            "GET / HTTP/1.1\r\n\(upgrade)Sec-WebSocket-Key: abc\r\n\r\n",
        ]
        for head in heads {
            let bytes = Array(head.utf8)
            let whole = validator.evaluate(bytes)
            #expect(whole != .incomplete)
            for n in 0..<bytes.count {
                let part = validator.evaluate(Array(bytes[0..<n]))
                #expect(part == .incomplete || part == whole, "prefix \(n) of \(head.prefix(40).debugDescription)")
            }
        }
    }

    @Test func arbitraryBytesNeverCrashIt() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let count = Int.random(in: 0...300, using: &generator)
            // Bytes that matter to the grammar (CR, LF, space, tab, colon, G, /, H, %, 0) and, a fifth of the time,
            // any byte.
            let alphabet: [UInt8] = [0x0D, 0x0A, 0x20, 0x09, 0x3A, 0x47, 0x2F, 0x48, 0x25, 0x30]
            let bytes = (0..<count).map { _ in
                Int.random(in: 0..<5, using: &generator) == 0
                    ? UInt8.random(in: 0...255, using: &generator) : alphabet.randomElement(using: &generator)!
            }
            _ = validator.evaluate(bytes)
            _ = validator.evaluate(Array(("GET / HTTP/1.1\r\n".utf8)) + bytes)
        }
    }
}
