import WebSocketClient

/// An HTTP/1.1 response: status, headers (names lowercased) and the whole body.
struct HTTPResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
}

/// The one HTTP call the SDK makes, over a blocking `ByteStream` (a plain socket, or TLS for `https://`): one request
/// per connection (`Connection: close`), the response read by `Content-Length`, chunked encoding or until EOF.
///
/// Blocking: call it only from a dedicated thread (``post(url:path:contentType:body:timeout:)`` async does).
enum HTTPClient {
    static let maxResponseBytes = 1 << 20

    /// `tls` is nil for a plain URL (see ``BrokerURL/tlsOptions(caFile:)``).
    static func post(url: BrokerURL, tls: TLSOptions?, path: String, contentType: String, body: [UInt8],
                     timeout: Double) async throws -> HTTPResponse
    {
        try await DedicatedThread.run {
            try postBlocking(url: url, tls: tls, path: path, contentType: contentType, body: body, timeout: timeout)
        }
    }

    static func postBlocking(url: BrokerURL, tls: TLSOptions?, path: String, contentType: String, body: [UInt8],
                             timeout: Double) throws -> HTTPResponse
    {
        let deadline = Deadline(seconds: timeout)
        let socket = try ByteStreams.connect(host: url.host, port: url.port, tls: tls, timeout: timeout)
        defer { socket.close() }
        let hostHeader = url.host.contains(":") ? "[\(url.host)]:\(url.port)" : "\(url.host):\(url.port)"
        let head = "POST \(path) HTTP/1.1\r\nHost: \(hostHeader)\r\nContent-Type: \(contentType)\r\n"
            + "Content-Length: \(body.count)\r\nAccept: application/json\r\nConnection: close\r\n"
            + "User-Agent: agentchat-swift/1\r\n\r\n"
        try socket.write(Array(head.utf8) + body, timeout: timeout)

        var received: [UInt8] = []
        var headerEnd: Int? = nil
        while headerEnd == nil {
            guard let chunk = try socket.read(deadline: deadline) else {
                throw WebSocketError.protocolViolation("connection closed before a complete HTTP response head")
            }
            received += chunk
            headerEnd = findCRLFCRLF(received)
            if headerEnd == nil && received.count > 64 * 1024 {
                throw WebSocketError.protocolViolation("HTTP response head over 64 KiB")
            }
        }
        let parsed = try HTTPResponseHead.parse(head: Array(received[0..<headerEnd!]))
        var rest = Array(received[(headerEnd! + 4)...])
        func readMore() throws -> Bool {
            guard let chunk = try socket.read(deadline: deadline) else { return false }
            rest += chunk
            if rest.count > maxResponseBytes { throw WebSocketError.protocolViolation("HTTP response over 1 MiB") }
            return true
        }
        var responseBody: [UInt8]
        if parsed.headers["transfer-encoding"]?.lowercased().contains("chunked") == true {
            responseBody = []
            var position = 0
            chunks: while true {
                var lineEnd: Int? = nil
                while lineEnd == nil {
                    lineEnd = findCRLF(rest, from: position)
                    if lineEnd == nil, try !readMore() { throw WebSocketError.protocolViolation("truncated chunk") }
                }
                let sizeText = String(decoding: rest[position..<lineEnd!], as: UTF8.self)
                    .split(separator: ";").first.map(String.init) ?? ""
                guard let size = Int(sizeText.trimmingCharacters(in: " \t"), radix: 16), size >= 0 else {
                    throw WebSocketError.protocolViolation("bad chunk size \(sizeText)")
                }
                position = lineEnd! + 2
                if size == 0 { break chunks }
                while rest.count < position + size + 2 {
                    if try !readMore() { throw WebSocketError.protocolViolation("truncated chunk") }
                }
                responseBody += rest[position..<position + size]
                position += size + 2
            }
        } else if let lengthText = parsed.headers["content-length"] {
            guard let length = Int(lengthText), length >= 0, length <= maxResponseBytes else {
                throw WebSocketError.protocolViolation("bad Content-Length \(lengthText)")
            }
            while rest.count < length {
                if try !readMore() { throw WebSocketError.protocolViolation("HTTP body shorter than Content-Length") }
            }
            responseBody = Array(rest.prefix(length))
        } else {
            while try readMore() {}
            responseBody = rest
        }
        return HTTPResponse(status: parsed.status, headers: parsed.headers, body: responseBody)
    }

    private static func findCRLFCRLF(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 {
            return i
        }
        return nil
    }

    private static func findCRLF(_ b: [UInt8], from start: Int) -> Int? {
        guard b.count >= start + 2 else { return nil }
        for i in start...(b.count - 2) where b[i] == 13 && b[i + 1] == 10 { return i }
        return nil
    }
}

extension String {
    fileprivate func trimmingCharacters(in set: String) -> String {
        var s = Substring(self)
        while let f = s.first, set.contains(f) { s.removeFirst() }
        while let l = s.last, set.contains(l) { s.removeLast() }
        return String(s)
    }
}
