/// A message (or control frame) received from the server.
public enum WebSocketMessage: Sendable, Equatable {
    case text(String)
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    /// The server's close frame; `code` is nil if the close frame had no payload.
    case close(code: UInt16?, reason: String)
}

/// A blocking RFC 6455 WebSocket client over a POSIX socket, for tests and tools.
///
/// Concurrency contract: this is a final class marked `@unchecked Sendable` so it can be handed between
/// tasks and threads, but it must be used from **one thread at a time** (no concurrent `send` and `receive`).
/// The `async` overloads run the blocking call on a dedicated `Thread` (never on the cooperative pool) and
/// resume the awaiting task afterwards; do not overlap them either.
public final class WebSocketClient: @unchecked Sendable {
    public typealias Message = WebSocketMessage

    /// The subprotocol the server selected (`Sec-WebSocket-Protocol` of the 101 response), if any.
    public let negotiatedSubprotocol: String?
    /// The complete 101 response head.
    public let handshakeResponse: HTTPResponseHead
    /// Answer every received ping with a pong carrying the same payload (the ping is still returned by `receive`).
    public var autoReplyToPings = true
    /// Answer a server-initiated close frame with a close frame echoing its code.
    public var autoReplyToClose = true
    /// Largest accepted message (after reassembly) or frame payload; larger ones are a protocol violation.
    public var maxMessageSize = 64 * 1024 * 1024
    /// Timeout for writes, in seconds.
    public var sendTimeout: Double = 10

    private let socket: any ByteStream
    private var buffer: [UInt8] = []
    private var bufferStart = 0
    private var fragmentOpcode: WebSocketOpcode?
    private var fragments: [UInt8] = []
    /// Whether we sent a close frame.
    public private(set) var closeSent = false
    /// Whether we received a close frame.
    public private(set) var closeReceived = false

    private init(socket: any ByteStream, head: HTTPResponseHead, leftover: [UInt8]) {
        self.socket = socket
        self.handshakeResponse = head
        self.negotiatedSubprotocol = head.headers["sec-websocket-protocol"]
        self.buffer = leftover
    }

    deinit { socket.close() }

    /// Opens a TCP connection (with `tls`, a verified TLS connection over it) and performs the HTTP/1.1 upgrade.
    ///
    /// - Parameters:
    ///   - subprotocols: sent as `Sec-WebSocket-Protocol` (omitted if empty).
    ///   - headers: extra request headers, in order. A header named like a default one (Host, Upgrade,
    ///     Connection, Sec-WebSocket-Key, Sec-WebSocket-Version, Sec-WebSocket-Protocol) replaces the default,
    ///     and then the accept check uses the given key.
    ///   - sourceAddress: local address to bind before connecting (e.g. "127.0.0.2").
    ///   - tls: nil for `ws://`; for `wss://`, what to trust (the certificate and its name are always verified).
    ///   - timeout: for connecting (and the TLS handshake) and for the handshake response, in seconds.
    /// - Throws: `WebSocketError.upgradeRejected` carrying status, headers and body if the answer is not 101;
    ///   `.handshakeFailed` if the 101 is invalid; `.tls` if TLS fails (e.g. `certificate verify failed: …`);
    ///   `.timeout`, `.connectionClosed`, `.system`.
    public static func connect(host: String = "127.0.0.1", port: Int, path: String = "/",
                               subprotocols: [String], headers: [(String, String)] = [],
                               sourceAddress: String? = nil, tls: TLSOptions? = nil,
                               timeout: Double = 5) throws -> WebSocketClient {
        let deadline = Deadline(seconds: timeout)
        let socket = try ByteStreams.connect(host: host, port: port, sourceAddress: sourceAddress, tls: tls,
                                             timeout: timeout)
        var key = WebSocketHandshake.randomKey()
        let hostHeader = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        var defaults: [(String, String)] = [
            ("Host", hostHeader),
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Key", key),
            ("Sec-WebSocket-Version", "13"),
        ]
        if !subprotocols.isEmpty { defaults.append(("Sec-WebSocket-Protocol", subprotocols.joined(separator: ", "))) }
        let overridden = Set(headers.map { $0.0.lowercased() })
        defaults.removeAll { overridden.contains($0.0.lowercased()) }
        if let custom = headers.first(where: { $0.0.lowercased() == "sec-websocket-key" }) { key = custom.1 }
        var request = "GET \(path) HTTP/1.1\r\n"
        for (name, value) in defaults + headers { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        try socket.write(Array(request.utf8), timeout: timeout)

        // Read the response head.
        var received: [UInt8] = []
        var headerEnd: Int? = nil
        while headerEnd == nil {
            guard let chunk = try socket.read(deadline: deadline) else {
                if received.isEmpty { throw WebSocketError.connectionClosed }
                throw WebSocketError.handshakeFailed("connection closed during the response head: "
                                                     + String(decoding: received, as: UTF8.self))
            }
            received += chunk
            headerEnd = findHeaderEnd(received)
            if headerEnd == nil && received.count > 1 << 20 {
                throw WebSocketError.handshakeFailed("response head larger than 1 MiB")
            }
        }
        var head = try HTTPResponseHead.parse(head: Array(received[0..<headerEnd!]))
        var rest = Array(received[(headerEnd! + 4)...])

        guard head.status == 101 else {
            // Collect the body: Content-Length bytes, else until close (or the deadline).
            if let lengthText = head.headers["content-length"], let length = Int(lengthText), length >= 0 {
                while rest.count < length {
                    guard let chunk = try? socket.read(deadline: deadline) else { break }
                    rest += chunk
                }
                head.body = Array(rest.prefix(length))
            } else {
                while true {
                    guard let chunk = try? socket.read(deadline: deadline) else { break }
                    rest += chunk
                }
                head.body = rest
            }
            socket.close()
            throw WebSocketError.upgradeRejected(head)
        }
        guard head.headers["upgrade"]?.lowercased() == "websocket" else {
            throw WebSocketError.handshakeFailed("missing or wrong Upgrade header: \(head.headers["upgrade"] ?? "none")")
        }
        guard let connection = head.headers["connection"],
              connection.lowercased().split(separator: ",").contains(where: { $0.trimmingASCIIWhitespace() == "upgrade" })
        else {
            throw WebSocketError.handshakeFailed("missing Connection: Upgrade")
        }
        let expected = WebSocketHandshake.acceptValue(forKey: key)
        guard head.headers["sec-websocket-accept"] == expected else {
            throw WebSocketError.handshakeFailed(
                "Sec-WebSocket-Accept is \(head.headers["sec-websocket-accept"] ?? "missing"), expected \(expected)")
        }
        if let chosen = head.headers["sec-websocket-protocol"], !subprotocols.contains(chosen) {
            throw WebSocketError.handshakeFailed("server selected unrequested subprotocol \(chosen)")
        }
        return WebSocketClient(socket: socket, head: head, leftover: rest)
    }

    // MARK: - Sending

    /// Sends one text message in a single masked frame.
    public func send(text: String) throws {
        try sendFrame(opcode: .text, payload: Array(text.utf8))
    }

    /// Sends one binary message in a single masked frame.
    public func send(binary: [UInt8]) throws {
        try sendFrame(opcode: .binary, payload: binary)
    }

    /// Sends a ping.
    public func ping(_ payload: [UInt8] = []) throws {
        try sendFrame(opcode: .ping, payload: payload)
    }

    /// Sends a pong.
    public func pong(_ payload: [UInt8] = []) throws {
        try sendFrame(opcode: .pong, payload: payload)
    }

    /// Sends one arbitrary frame, exactly as described (no validation): tests use it for fragmentation,
    /// invalid UTF-8, oversize control frames, reserved opcodes, RSV bits or unmasked client frames.
    /// `masked` uses a fresh random mask key.
    public func sendFrame(opcode: WebSocketOpcode, payload: [UInt8], fin: Bool = true, masked: Bool = true,
                          rsv: UInt8 = 0) throws {
        let frame = WebSocketFrame(opcode: opcode, payload: payload, fin: fin, rsv: rsv,
                                   maskKey: masked ? WebSocketFrame.randomMaskKey() : nil)
        if opcode == .close { closeSent = true }
        try sendRaw(frame.encode())
    }

    /// Writes raw bytes to the socket (e.g. a frame header announcing a huge length with no payload).
    public func sendRaw(_ bytes: [UInt8]) throws {
        try socket.write(bytes, timeout: sendTimeout)
    }

    /// Sends a close frame without waiting for the answer. `code == nil` sends an empty close payload.
    public func sendClose(code: UInt16? = 1000, reason: String = "") throws {
        try sendFrame(opcode: .close, payload: WebSocketFrame.closePayload(code: code, reason: reason))
    }

    /// The closing handshake: sends a close frame (unless one was already sent), then reads and discards
    /// messages until the server's close frame, EOF or `timeout`, then closes the socket.
    /// - Returns: the server's close code and reason, or nil if none arrived (EOF, timeout or error).
    @discardableResult
    public func close(code: UInt16 = 1000, reason: String = "", timeout: Double = 5) -> (code: UInt16?, reason: String)? {
        defer { socket.close() }
        guard socket.isOpen else { return nil }
        if !closeSent {
            do { try sendClose(code: code, reason: reason) } catch { return nil }
        }
        let deadline = Deadline(seconds: timeout)
        while true {
            do {
                if case .close(let c, let r) = try receive(deadline: deadline) { return (c, r) }
            } catch {
                return nil
            }
        }
    }

    /// Closes the TCP connection abruptly, without a closing handshake (over TLS, after a close_notify).
    public func disconnect() {
        socket.close()
    }

    /// Whether the socket is still open locally.
    public var isOpen: Bool { socket.isOpen }
    /// The client's side port of the connection, e.g. to find which server process accepted it.
    public var localPort: Int? { socket.localPort }

    // MARK: - Receiving

    /// Receives the next message, reassembling fragmented data messages. Control frames arriving between
    /// fragments are returned as they come; partial messages survive a timeout.
    ///
    /// - Throws: `WebSocketError.timeout` if no complete message arrived within `timeout` seconds (the
    ///   connection stays usable); `.connectionClosed` if the peer closed TCP; `.protocolViolation`.
    public func receive(timeout: Double) throws -> Message {
        try receive(deadline: Deadline(seconds: timeout))
    }

    private func receive(deadline: Deadline) throws -> Message {
        while true {
            let frame = try receiveFrame(deadline: deadline)
            try validate(frame)
            switch frame.opcode {
            case .ping:
                if autoReplyToPings && !closeSent { try? sendFrame(opcode: .pong, payload: frame.payload) }
                return .ping(frame.payload)
            case .pong:
                return .pong(frame.payload)
            case .close:
                closeReceived = true
                let (code, reason) = try WebSocketFrame.parseClosePayload(frame.payload)
                if autoReplyToClose && !closeSent {
                    try? sendFrame(opcode: .close, payload: WebSocketFrame.closePayload(code: code, reason: ""))
                }
                return .close(code: code, reason: reason)
            case .text, .binary:
                if fragmentOpcode != nil {
                    throw WebSocketError.protocolViolation("new \(frame.opcode) frame while a fragmented message is open")
                }
                if frame.fin { return try message(opcode: frame.opcode, payload: frame.payload) }
                fragmentOpcode = frame.opcode
                fragments = frame.payload
            case .continuation:
                guard let opcode = fragmentOpcode else {
                    throw WebSocketError.protocolViolation("continuation frame without a started message")
                }
                fragments += frame.payload
                if fragments.count > maxMessageSize {
                    throw WebSocketError.protocolViolation("message exceeds \(maxMessageSize) bytes")
                }
                if frame.fin {
                    let payload = fragments
                    fragmentOpcode = nil
                    fragments = []
                    return try message(opcode: opcode, payload: payload)
                }
            default:
                throw WebSocketError.protocolViolation("reserved opcode \(frame.opcode)")
            }
        }
    }

    /// Receives the next text message, skipping pings and pongs.
    /// Throws `.protocolViolation` if a binary message or a close frame arrives instead.
    public func receiveText(timeout: Double) throws -> String {
        let deadline = Deadline(seconds: timeout)
        while true {
            switch try receive(deadline: deadline) {
            case .text(let s): return s
            case .ping, .pong: continue
            case .binary(let b): throw WebSocketError.protocolViolation("expected text, got \(b.count) binary bytes")
            case .close(let c, let r):
                throw WebSocketError.protocolViolation("expected text, got close \(c.map(String.init) ?? "-") \(r)")
            }
        }
    }

    /// Receives the next raw frame without reassembly, validation or automatic replies.
    public func receiveFrame(timeout: Double) throws -> WebSocketFrame {
        try receiveFrame(deadline: Deadline(seconds: timeout))
    }

    private func receiveFrame(deadline: Deadline) throws -> WebSocketFrame {
        while true {
            if case .frame(let frame, let consumed) = try WebSocketFrame.decode(
                buffer, from: bufferStart, maxPayloadLength: UInt64(maxMessageSize)) {
                bufferStart += consumed
                if bufferStart == buffer.count {
                    buffer.removeAll(keepingCapacity: true)
                    bufferStart = 0
                } else if bufferStart > 1 << 16 {
                    buffer.removeFirst(bufferStart)
                    bufferStart = 0
                }
                return frame
            }
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
    }

    private func validate(_ frame: WebSocketFrame) throws {
        if frame.isMasked { throw WebSocketError.protocolViolation("server frame is masked") }
        if frame.rsv != 0 { throw WebSocketError.protocolViolation("RSV bits \(frame.rsv) set without an extension") }
        if frame.opcode.isControl {
            if !frame.fin { throw WebSocketError.protocolViolation("fragmented control frame") }
            if frame.payload.count > 125 {
                throw WebSocketError.protocolViolation("control frame payload of \(frame.payload.count) bytes")
            }
        }
    }

    private func message(opcode: WebSocketOpcode, payload: [UInt8]) throws -> Message {
        if opcode == .binary { return .binary(payload) }
        guard let text = strictUTF8(payload) else {
            throw WebSocketError.protocolViolation("text message is not valid UTF-8")
        }
        return .text(text)
    }
}
