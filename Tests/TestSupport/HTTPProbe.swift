import WebSocketClient

/// An HTTP response as read off the wire by `HTTPProbe`.
public struct HTTPResponse: Sendable, Equatable {
    public var status: Int
    public var reason: String
    /// Header names lowercased; repeated headers joined with ", ".
    public var headers: [String: String]
    /// The body (de-chunked if the response used chunked transfer encoding).
    public var body: [UInt8]

    public init(status: Int, reason: String = "", headers: [String: String], body: [UInt8]) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    public var bodyText: String { String(decoding: body, as: UTF8.self) }
}

public enum HTTPProbeError: Error, Sendable, CustomStringConvertible {
    /// The server closed or timed out before sending a complete response head; carries what was read.
    case incompleteResponse([UInt8])
    case malformedResponse(String)

    public var description: String {
        switch self {
        case .incompleteResponse(let b): "incomplete HTTP response (\(b.count) bytes): \(String(decoding: b, as: UTF8.self))"
        case .malformedResponse(let m): "malformed HTTP response: \(m)"
        }
    }
}

/// Raw-socket HTTP/1.1 probing for tests: sends exactly the request asked for, including malformed ones.
public enum HTTPProbe {
    /// Sends one request and reads one response.
    ///
    /// The request is `"<method> <path> HTTP/1.1\r\n"`, then `headers` in order, verbatim, then a blank line,
    /// then `body` verbatim. When `addDefaultHeaders` is true, `Host`, `Connection: close` and (for a non-empty
    /// body) `Content-Length` are added *only if absent* from `headers`; pass false to send nothing but what
    /// you give (e.g. a negative or lying Content-Length).
    ///
    /// Reading stops when the server closes, when `Content-Length` bytes (or the last chunk) have arrived, or at
    /// `timeout`. A write failure (the server closing early, e.g. on an oversized body) does not stop the read.
    public static func request(host: String = "127.0.0.1", port: Int, method: String = "GET", path: String = "/",
                               headers: [(String, String)] = [], body: [UInt8] = [],
                               addDefaultHeaders: Bool = true, timeout: Double = 5) throws -> HTTPResponse {
        var all = headers
        if addDefaultHeaders {
            let names = Set(headers.map { $0.0.lowercased() })
            if !names.contains("host") { all.insert(("Host", "\(host):\(port)"), at: 0) }
            if !body.isEmpty && !names.contains("content-length") && !names.contains("transfer-encoding") {
                all.append(("Content-Length", String(body.count)))
            }
            if !names.contains("connection") { all.append(("Connection", "close")) }
        }
        var request = "\(method) \(path) HTTP/1.1\r\n"
        for (name, value) in all { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        let deadline = Deadline(seconds: timeout)
        let socket = try BlockingTCPSocket(host: host, port: port, timeout: timeout)
        defer { socket.close() }
        do {
            try socket.write(Array(request.utf8) + body, timeout: timeout)
        } catch WebSocketError.connectionClosed {
            // The server may already have answered (413, 400...) and closed; read what it sent.
        }
        return try readResponse(socket: socket, deadline: deadline, isHead: method.uppercased() == "HEAD")
    }

    /// Writes `bytes` and returns everything read until the server closes the connection or `timeout` passes.
    /// Never throws for a timeout or a reset after connecting; throws only if connecting fails.
    public static func rawExchange(host: String = "127.0.0.1", port: Int, bytes: [UInt8],
                                   timeout: Double = 5) throws -> [UInt8] {
        let deadline = Deadline(seconds: timeout)
        let socket = try BlockingTCPSocket(host: host, port: port, timeout: timeout)
        defer { socket.close() }
        try? socket.write(bytes, timeout: timeout)
        var out: [UInt8] = []
        while true {
            guard let chunk = try? socket.read(deadline: deadline) else { break }
            out += chunk
        }
        return out
    }

    /// Parses one complete HTTP response out of `bytes` (e.g. from `rawExchange`).
    public static func parse(_ bytes: [UInt8], isHead: Bool = false) throws -> HTTPResponse {
        guard let (response, _) = try parseComplete(bytes, isHead: isHead, atEOF: true) else {
            throw HTTPProbeError.incompleteResponse(bytes)
        }
        return response
    }

    // MARK: - Async wrappers (run on a dedicated thread, not the cooperative pool)

    public static func request(host: String = "127.0.0.1", port: Int, method: String = "GET", path: String = "/",
                               headers: [(String, String)] = [], body: [UInt8] = [],
                               addDefaultHeaders: Bool = true, timeout: Double = 5) async throws -> HTTPResponse {
        let pairs = headers.map { [$0.0, $0.1] }
        return try await DedicatedThread.run {
            try request(host: host, port: port, method: method, path: path, headers: pairs.map { ($0[0], $0[1]) },
                        body: body, addDefaultHeaders: addDefaultHeaders, timeout: timeout)
        }
    }

    public static func rawExchange(host: String = "127.0.0.1", port: Int, bytes: [UInt8],
                                   timeout: Double = 5) async throws -> [UInt8] {
        try await DedicatedThread.run { try rawExchange(host: host, port: port, bytes: bytes, timeout: timeout) }
    }

    // MARK: - Internals

    private static func readResponse(socket: BlockingTCPSocket, deadline: Deadline, isHead: Bool) throws -> HTTPResponse {
        var received: [UInt8] = []
        var eof = false
        while true {
            if let (response, _) = try parseComplete(received, isHead: isHead, atEOF: eof) { return response }
            if eof { throw HTTPProbeError.incompleteResponse(received) }
            do {
                if let chunk = try socket.read(deadline: deadline) { received += chunk } else { eof = true }
            } catch WebSocketError.connectionClosed {
                eof = true
            } catch WebSocketError.timeout {
                // Treat the deadline as the end of a close-delimited body.
                if let (response, _) = try parseComplete(received, isHead: isHead, atEOF: true) { return response }
                throw HTTPProbeError.incompleteResponse(received)
            }
        }
    }

    /// Returns the response if `bytes` hold a complete one (given whether the stream ended), else nil.
    private static func parseComplete(_ bytes: [UInt8], isHead: Bool, atEOF: Bool) throws -> (HTTPResponse, Int)? {
        guard let headEnd = findCRLFCRLF(bytes) else { return nil }
        let head: HTTPResponseHead
        do { head = try HTTPResponseHead.parse(head: Array(bytes[0..<headEnd])) } catch {
            throw HTTPProbeError.malformedResponse(String(decoding: bytes.prefix(200), as: UTF8.self))
        }
        let bodyStart = headEnd + 4
        let rest = Array(bytes[bodyStart...])
        func make(_ body: [UInt8]) -> HTTPResponse {
            HTTPResponse(status: head.status, reason: head.reason, headers: head.headers, body: body)
        }
        if isHead || head.status / 100 == 1 || head.status == 204 || head.status == 304 {
            return (make([]), bodyStart)
        }
        if head.headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            if let (body, used) = dechunk(rest) { return (make(body), bodyStart + used) }
            return atEOF ? (make(rest), bytes.count) : nil
        }
        if let text = head.headers["content-length"], let length = Int(text), length >= 0 {
            if rest.count >= length { return (make(Array(rest.prefix(length))), bodyStart + length) }
            return atEOF ? (make(rest), bytes.count) : nil
        }
        return atEOF ? (make(rest), bytes.count) : nil
    }

    private static func dechunk(_ bytes: [UInt8]) -> ([UInt8], Int)? {
        var body: [UInt8] = []
        var i = 0
        while true {
            guard let lineEnd = findCRLF(bytes, from: i) else { return nil }
            let sizeText = String(decoding: bytes[i..<lineEnd], as: UTF8.self)
                .split(separator: ";").first.map(String.init) ?? ""
            guard let size = Int(sizeText.trimmedSpaceTab(), radix: 16) else { return nil }
            i = lineEnd + 2
            if size == 0 {
                // Skip trailers up to the blank line.
                while true {
                    guard let end = findCRLF(bytes, from: i) else { return nil }
                    if end == i { return (body, end + 2) }
                    i = end + 2
                }
            }
            guard bytes.count >= i + size + 2 else { return nil }
            body += bytes[i..<i + size]
            i += size + 2
        }
    }

    private static func findCRLF(_ b: [UInt8], from start: Int) -> Int? {
        var i = start
        while i + 1 < b.count {
            if b[i] == 13 && b[i + 1] == 10 { return i }
            i += 1
        }
        return nil
    }

    private static func findCRLFCRLF(_ b: [UInt8]) -> Int? {
        var i = 0
        while i + 3 < b.count {
            if b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 { return i }
            i += 1
        }
        return nil
    }
}

extension String {
    fileprivate func trimmedSpaceTab() -> String {
        let set = " \t"
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
