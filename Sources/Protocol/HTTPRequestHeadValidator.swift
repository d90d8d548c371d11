/// Checks the head of an HTTP/1.1 request (request line and header fields, up to the empty line) before anything
/// else parses it. Pure: no I/O, no C; fed the bytes received so far, it answers "need more", "acceptable" or the
/// refusal to send.
///
/// The broker runs it on the first bytes of every connection, so every malformed request gets a JSON error instead
/// of libwebsockets' bare 403 or silence, and so only heads libwebsockets 4.1 parses without trouble reach it (the
/// limits below stay inside its header table). The verdict does not depend on how the bytes were split into reads:
/// a refusal decided on a prefix is the one the whole head would get.
///
/// What is refused (status, code):
/// - request line not `METHOD SP /path SP HTTP/x.y CRLF`, no version, a target with spaces, controls, bytes over
///   0x7E, bad `%` escapes or `%00`, a target not starting with `/` (absolute or asterisk form): 400 `bad_request`
/// - a method other than GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS: 501 `not_implemented`
/// - a version other than HTTP/1.1 and HTTP/1.0 (the HTTP/2 preface `PRI * HTTP/2.0` included): 505
///   `http_version_not_supported`
/// - a target over `maxTargetBytes`: 414 `uri_too_long`
/// - a head over `maxHeadBytes`, or more than `maxHeaderFields` fields: 431 `headers_too_large`
/// - a header line starting with space or tab (obs-fold), without a colon, with whitespace before the colon, a
///   name that is not a token, a control character in a value, a bare CR or LF: 400 `bad_request`
/// - an `Upgrade` other than `websocket` (`h2c`, anything else): 400 `upgrade_not_supported`
/// - a WebSocket upgrade without `Sec-WebSocket-Version: 13`: 426 `upgrade_required`, with `Sec-WebSocket-Version: 13`
/// - then a WebSocket upgrade (`Upgrade: websocket`) that is not `GET`, not HTTP/1.1, has no `upgrade` token in
///   `Connection`, or not exactly one `Sec-WebSocket-Key` holding 16 bytes in base64 (RFC 6455 §4.2.1): 400
///   `bad_upgrade`
public struct HTTPRequestHeadValidator: Sendable {
    public struct Limits: Sendable, Equatable {
        /// Longest request target (the path and query), bytes.
        public var maxTargetBytes = 2048
        /// Longest head, from the first byte to the empty line included.
        public var maxHeadBytes = 4096
        /// Most header fields.
        public var maxHeaderFields = 48
        /// Most `&`/`;`-separated query parameters (libwebsockets keeps each in a fixed table).
        public var maxQueryParameters = 32

        public init() {}
    }

    public struct Field: Sendable, Equatable {
        public var name: String
        public var value: String

        public init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    /// A head that passed: what the request line said, its fields, and how many bytes it took.
    public struct Head: Sendable, Equatable {
        public var method: String
        public var target: String
        public var version: String
        public var fields: [Field]
        /// Where each field's line (its CRLF included) is in the bytes, in the order of `fields`.
        public var fieldLines: [Range<Int>] = []
        /// Bytes from the start of the request to the end of the empty line.
        public var byteCount: Int

        /// The value of the first field named `name` (case-insensitive).
        public func value(of name: String) -> String? {
            let lowered = name.lowercased()
            return fields.first { $0.name.lowercased() == lowered }?.value
        }
    }

    /// The answer to a refused head.
    public struct Refusal: Sendable, Equatable, Error {
        public var status: Int
        public var code: ErrorCode
        public var message: String
        /// Header fields the answer must carry (e.g. `Sec-WebSocket-Version: 13` with 426).
        public var fields: [Field]

        public init(_ status: Int, _ code: ErrorCode, _ message: String, fields: [Field] = []) {
            self.status = status
            self.code = code
            self.message = message
            self.fields = fields
        }
    }

    public enum Verdict: Sendable, Equatable {
        /// The bytes so far are a valid beginning; more are needed.
        case incomplete
        case accepted(Head)
        case refused(Refusal)
    }

    public static let methods: Set<String> = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    /// Longer than any method in `methods`; a longer method is refused before the rest of its line arrives.
    static let maxMethodBytes = 16

    public let limits: Limits

    public init(limits: Limits = Limits()) {
        self.limits = limits
    }

    /// Judges the bytes received so far on a connection (they start at the request line).
    public func evaluate(_ bytes: [UInt8]) -> Verdict {
        // Only the first maxHeadBytes bytes are ever looked at, so the verdict is the same however they arrived.
        let end = min(bytes.count, limits.maxHeadBytes)
        do {
            guard let line = try requestLine(bytes, end) else {
                return bytes.count >= limits.maxHeadBytes ? .refused(tooLarge) : .incomplete
            }
            var fields: [Field] = []
            var fieldLines: [Range<Int>] = []
            var i = line.next
            while true {
                guard i < end else {
                    return bytes.count >= limits.maxHeadBytes ? .refused(tooLarge) : .incomplete
                }
                if bytes[i] == cr {
                    guard i + 1 < end else {
                        return bytes.count >= limits.maxHeadBytes ? .refused(tooLarge) : .incomplete
                    }
                    guard bytes[i + 1] == lf else { throw Self.bad("a bare CR in the request head") }
                    let head = Head(method: line.method, target: line.target, version: line.version, fields: fields,
                                    fieldLines: fieldLines, byteCount: i + 2)
                    try checkUpgrade(head)
                    return .accepted(head)
                }
                guard let (field, next) = try headerField(bytes, from: i, end) else {
                    return bytes.count >= limits.maxHeadBytes ? .refused(tooLarge) : .incomplete
                }
                fields.append(field)
                fieldLines.append(i..<next)
                guard fields.count <= limits.maxHeaderFields else {
                    throw Refusal(431, .headersTooLarge, "more than \(limits.maxHeaderFields) header fields")
                }
                i = next
            }
        } catch let refusal as Refusal {
            return .refused(refusal)
        } catch {
            return .refused(Self.bad("malformed request head"))
        }
    }

    // MARK: Request line

    private struct RequestLine {
        var method: String
        var target: String
        var version: String
        /// Index of the first byte after its CRLF.
        var next: Int
    }

    /// The request line, nil while incomplete; throws the refusal as soon as a prefix decides it.
    private func requestLine(_ b: [UInt8], _ end: Int) throws -> RequestLine? {
        // Method: a token, at most maxMethodBytes, ended by one space.
        var i = 0
        while i < end, b[i] != space {
            guard isTokenByte(b[i]) else {
                throw Self.bad("malformed request line; expected METHOD SP /path SP HTTP/1.1")
            }
            i += 1
            if i > Self.maxMethodBytes { throw Self.unknownMethod }
        }
        guard i < end else { return nil }
        guard i > 0 else { throw Self.bad("malformed request line; expected METHOD SP /path SP HTTP/1.1") }
        let method = String(decoding: b[0..<i], as: UTF8.self)
        // Target: visible ASCII, ended by one space; a line end here means there is no HTTP version.
        let targetStart = i + 1
        i = targetStart
        while i < end, b[i] != space {
            if b[i] == cr || b[i] == lf { throw Self.bad("the request line has no HTTP version") }
            guard b[i] > 0x20, b[i] < 0x7F else {
                throw Self.bad("the request target may hold only visible ASCII characters")
            }
            i += 1
            if i - targetStart > limits.maxTargetBytes {
                throw Refusal(414, .uriTooLong, "request targets are limited to \(limits.maxTargetBytes) bytes")
            }
        }
        guard i < end else { return nil }
        guard i > targetStart else { throw Self.bad("malformed request line; expected METHOD SP /path SP HTTP/1.1") }
        let target = String(decoding: b[targetStart..<i], as: UTF8.self)
        // Version: exactly HTTP/DIGIT.DIGIT, then CRLF.
        let versionStart = i + 1
        let pattern = Array("HTTP/0.0".utf8)
        i = versionStart
        while i < end, i - versionStart < pattern.count {
            let expected = pattern[i - versionStart]
            let ok = expected == UInt8(ascii: "0") ? isDigit(b[i]) : b[i] == expected
            guard ok else { throw Self.bad("malformed HTTP version; expected HTTP/1.1") }
            i += 1
        }
        guard i + 1 < end else { return nil }
        guard b[i] == cr, b[i + 1] == lf else { throw Self.bad("malformed HTTP version; expected HTTP/1.1") }
        let version = String(decoding: b[versionStart..<i], as: UTF8.self)
        try checkRequestLine(method: method, target: target, version: version)
        return RequestLine(method: method, target: target, version: version, next: i + 2)
    }

    private func checkRequestLine(method: String, target: String, version: String) throws {
        guard version == "HTTP/1.1" || version == "HTTP/1.0" else {
            throw Refusal(505, .httpVersionNotSupported, "this broker serves HTTP/1.1 only, not \(version)")
        }
        guard Self.methods.contains(method) else { throw Self.unknownMethod }
        guard target.utf8.first == UInt8(ascii: "/") else {
            throw Self.bad("the request target must be a path starting with /")
        }
        let t = Array(target.utf8)
        var parameters = 0
        var i = 0
        while i < t.count {
            switch t[i] {
            case UInt8(ascii: "%"):
                guard i + 2 < t.count, isHexDigit(t[i + 1]), isHexDigit(t[i + 2]) else {
                    throw Self.bad("a % in the request target must be followed by two hexadecimal digits")
                }
                guard !(t[i + 1] == UInt8(ascii: "0") && t[i + 2] == UInt8(ascii: "0")) else {
                    throw Self.bad("the request target may not encode a NUL byte")
                }
                i += 3
                continue
            case UInt8(ascii: "&"), UInt8(ascii: ";"):
                parameters += 1
            default:
                break
            }
            i += 1
        }
        guard parameters < limits.maxQueryParameters else {
            throw Refusal(414, .uriTooLong, "request targets are limited to \(limits.maxQueryParameters) parameters")
        }
    }

    // MARK: Header fields

    /// One `name: value CRLF` line starting at `start`; nil while incomplete.
    private func headerField(_ b: [UInt8], from start: Int, _ end: Int) throws -> (Field, Int)? {
        if b[start] == space || b[start] == tab {
            throw Self.bad("header lines may not start with whitespace (obsolete line folding)")
        }
        if b[start] == lf { throw Self.bad("a bare LF in the request head; lines end with CRLF") }
        var i = start
        while i < end, b[i] != colon {
            if b[i] == cr || b[i] == lf { throw Self.bad("a header line without a colon") }
            if b[i] == space || b[i] == tab { throw Self.bad("whitespace between a header name and its colon") }
            guard isTokenByte(b[i]) else { throw Self.bad("a header name that is not a token") }
            i += 1
        }
        guard i < end else { return nil }
        guard i > start else { throw Self.bad("a header line without a name") }
        let name = String(decoding: b[start..<i], as: UTF8.self)
        let valueStart = i + 1
        i = valueStart
        while i < end, b[i] != cr {
            let c = b[i]
            if c == lf { throw Self.bad("a bare LF in the request head; lines end with CRLF") }
            guard c == tab || c >= 0x20, c != 0x7F else { throw Self.bad("a control character in a header value") }
            i += 1
        }
        guard i + 1 < end else { return nil }
        guard b[i + 1] == lf else { throw Self.bad("a bare CR in the request head") }
        var value = b[valueStart..<i]
        while let first = value.first, first == space || first == tab { value = value.dropFirst() }
        while let last = value.last, last == space || last == tab { value = value.dropLast() }
        return (Field(name, String(decoding: value, as: UTF8.self)), i + 2)
    }

    // MARK: Upgrades

    private func checkUpgrade(_ head: Head) throws {
        let upgrades = head.fields.filter { $0.name.lowercased() == "upgrade" }
        guard !upgrades.isEmpty else { return }
        let protocols = upgrades.flatMap { $0.value.split(separator: ",") }
            .map { $0.trimmingSpaceAndTab().lowercased() }
        guard protocols == ["websocket"] else {
            throw Refusal(400, .upgradeNotSupported,
                          "this broker serves HTTP/1.1 and WebSocket only; Upgrade must be websocket")
        }
        guard head.value(of: "Sec-WebSocket-Version") == "13" else {
            throw Refusal(426, .upgradeRequired, "WebSocket upgrades must use Sec-WebSocket-Version 13",
                          fields: [Field("Sec-WebSocket-Version", "13")])
        }
        // RFC 6455 §4.2.1; libwebsockets 4.1 would upgrade some of these and drop the others without an answer.
        guard head.method == "GET" else { throw Self.badUpgrade("WebSocket upgrades must use GET") }
        guard head.version == "HTTP/1.1" else { throw Self.badUpgrade("WebSocket upgrades must use HTTP/1.1") }
        let connection = head.fields.filter { $0.name.lowercased() == "connection" }
            .flatMap { $0.value.split(separator: ",") }.map { $0.trimmingSpaceAndTab().lowercased() }
        guard connection.contains("upgrade") else {
            throw Self.badUpgrade("WebSocket upgrades must carry Connection: Upgrade")
        }
        let keys = head.fields.filter { $0.name.lowercased() == "sec-websocket-key" }
        guard keys.count == 1, Self.isWebSocketKey(keys[0].value) else {
            throw Self.badUpgrade("WebSocket upgrades must carry one Sec-WebSocket-Key: 16 bytes in base64")
        }
    }

    /// Whether `value` is the base64 (RFC 4648 §4, padded) of exactly 16 bytes: 22 characters of the alphabet, the
    /// last carrying no bits past the 128th, then `==`.
    static func isWebSocketKey(_ value: String) -> Bool {
        let b = Array(value.utf8)
        guard b.count == 24, b[22] == UInt8(ascii: "="), b[23] == UInt8(ascii: "=") else { return false }
        guard b[0..<22].allSatisfy(isBase64Byte) else { return false }
        // The 22nd character holds the last 2 bits of the 16th byte and 4 bits that must be zero: A, Q, g or w.
        return [UInt8(ascii: "A"), UInt8(ascii: "Q"), UInt8(ascii: "g"), UInt8(ascii: "w")].contains(b[21])
    }

    // MARK: Content-Length

    /// What a `Content-Length` value says.
    public enum ContentLength: Sendable, Equatable {
        /// A length in bytes.
        case bytes(Int)
        /// Digits only, but a number too large to hold (any body cap is far below it).
        case tooLarge
        /// Not a run of decimal digits (empty, a sign, spaces, a list, anything else).
        case malformed
    }

    /// Reads a `Content-Length` value: any non-empty run of ASCII digits is a length, leading zeros included
    /// (RFC 9110 §8.6); a number over `Int.max` is `.tooLarge`.
    public static func contentLength(_ text: String) -> ContentLength {
        guard !text.utf8.isEmpty else { return .malformed }
        var value = 0
        var overflowed = false
        for c in text.utf8 {
            guard isDigit(c) else { return .malformed }
            guard !overflowed else { continue }
            let (times10, o1) = value.multipliedReportingOverflow(by: 10)
            let (sum, o2) = times10.addingReportingOverflow(Int(c - 0x30))
            if o1 || o2 { overflowed = true } else { value = sum }
        }
        return overflowed ? .tooLarge : .bytes(value)
    }

    // MARK: Refusals and bytes

    static func bad(_ message: String) -> Refusal { Refusal(400, .badRequest, message) }
    static func badUpgrade(_ message: String) -> Refusal { Refusal(400, .badUpgrade, message) }
    static let unknownMethod = Refusal(501, .notImplemented,
                                       "supported methods: DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT")
    private var tooLarge: Refusal {
        Refusal(431, .headersTooLarge, "request heads are limited to \(limits.maxHeadBytes) bytes")
    }
}

private let cr = UInt8(ascii: "\r")
private let lf = UInt8(ascii: "\n")
private let space = UInt8(ascii: " ")
private let tab = UInt8(ascii: "\t")
private let colon = UInt8(ascii: ":")

private func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

/// RFC 4648 §4 alphabet: letters, digits, + and /.
private func isBase64Byte(_ c: UInt8) -> Bool {
    switch c {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A, 0x2B, 0x2F: true
    default: false
    }
}

private func isHexDigit(_ c: UInt8) -> Bool {
    isDigit(c) || (c >= 0x41 && c <= 0x46) || (c >= 0x61 && c <= 0x66)
}

/// RFC 9110 `tchar`: letters, digits and ! # $ % & ' * + - . ^ _ ` | ~
private func isTokenByte(_ c: UInt8) -> Bool {
    switch c {
    case 0x30...0x39, 0x41...0x5A, 0x61...0x7A: true
    case 0x21, 0x23, 0x24, 0x25, 0x26, 0x27, 0x2A, 0x2B, 0x2D, 0x2E, 0x5E, 0x5F, 0x60, 0x7C, 0x7E: true
    default: false
    }
}

extension Substring {
    fileprivate func trimmingSpaceAndTab() -> String {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
