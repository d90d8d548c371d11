import AgentChatCrypto
import AgentChatProtocol
import Foundation
import WebSocketClient
#if canImport(Glibc)
import Glibc
#endif

/// A tiny in-process broker on 127.0.0.1 (ephemeral port) that speaks exactly the parts of `docs/PROTOCOL.md` the
/// client uses: `POST /api/v1/agents/register` (verifying the signature over the canonical text) and the
/// WebSocket login (`hello` with a challenge, `auth` by signature or token, `welcome`, `error` + fresh `hello`),
/// plus `ping`/`pong`.
///
/// Threads: one accept thread, one thread per accepted connection, all started with `DedicatedThread` and all
/// joined by ``stop()``. State shared between them is behind `lock`.
final class FakeBroker: @unchecked Sendable {
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }
    /// The `broker` of every hello (the `--issuer` of a real broker).
    let issuer = "http://fake-broker.test"

    private let listenFD: Int32
    private let lock = NSLock()
    private let threads = DispatchGroup()
    private var stopped = false
    private var agents: [String: JSONValue] = [:]
    private var tokens: [String: String] = [:]
    private var liveWebSockets: [ObjectIdentifier: BlockingTCPSocket] = [:]
    private var _authFrames: [JSONValue] = []
    private var _registerBodies: [[UInt8]] = []
    private var _welcomeTokens: [String] = []
    private var _refuseTokens = false
    private var _registerOverride: (status: Int, headers: [(String, String)], body: String)?

    /// Every `auth` frame received, in order.
    var authFrames: [JSONValue] { lock.withLock { _authFrames } }
    /// Every registration body received, byte for byte.
    var registerBodies: [[UInt8]] { lock.withLock { _registerBodies } }
    /// Every token sent in a `welcome`, in order.
    var welcomeTokens: [String] { lock.withLock { _welcomeTokens } }
    /// Answer every token `auth` with `token_invalid`.
    var refuseTokens: Bool {
        get { lock.withLock { _refuseTokens } }
        set { lock.withLock { _refuseTokens = newValue } }
    }
    /// Answers frames of an authenticated connection that the fake does not handle itself: called with the frame
    /// and a function that sends a frame on the same connection; returns whether it handled the frame.
    typealias FrameHandler = @Sendable (JSONValue, (JSONValue) throws -> Void) throws -> Bool
    private var _frameHandler: FrameHandler?
    var frameHandler: FrameHandler? {
        get { lock.withLock { _frameHandler } }
        set { lock.withLock { _frameHandler = newValue } }
    }
    /// Answer registrations with this instead of processing them.
    var registerOverride: (status: Int, headers: [(String, String)], body: String)? {
        get { lock.withLock { _registerOverride } }
        set { lock.withLock { _registerOverride = newValue } }
    }

    init() throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw WebSocketError.system(operation: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) }
        }
        guard bound == 0, listen(fd, 32) == 0 else {
            close(fd)
            throw WebSocketError.system(operation: "bind/listen", errno: errno)
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = Int(UInt16(bigEndian: addr.sin_port))
        listenFD = fd
        threads.enter()
        DedicatedThread.start { [self] in
            acceptLoop()
            threads.leave()
        }
    }

    /// Stops accepting, closes every connection and waits for every thread.
    func stop() {
        let sockets = lock.withLock { () -> [BlockingTCPSocket] in
            stopped = true
            return Array(liveWebSockets.values)
        }
        for socket in sockets where socket.isOpen { _ = shutdown(socket.fd, Int32(SHUT_RDWR)) }
        _ = threads.wait(timeout: .now() + 10)
        close(listenFD)
    }

    /// Drops every WebSocket connection abruptly (no close frame), as a crashed broker would.
    func dropConnections() {
        let sockets = lock.withLock { Array(liveWebSockets.values) }
        // shutdown, not close: the connection's own thread closes the descriptor when it sees EOF.
        for socket in sockets where socket.isOpen { _ = shutdown(socket.fd, Int32(SHUT_RDWR)) }
    }

    /// Registers an agent directly (as if an earlier registration had succeeded).
    func preregister(_ profile: JSONValue) {
        lock.withLock { agents[profile["did"]!.stringValue!] = profile }
    }

    private var isStopped: Bool { lock.withLock { stopped } }

    private func acceptLoop() {
        while !isStopped {
            var pfd = pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0)
            guard poll(&pfd, 1, 50) == 1 else { continue }
            let conn = accept(listenFD, nil, nil)
            guard conn >= 0 else { continue }
            let socket = BlockingTCPSocket(adopting: conn)
            threads.enter()
            DedicatedThread.start { [self] in
                let peer = FakePeer(socket: socket)
                do { try serve(peer) } catch {}
                lock.withLock { _ = liveWebSockets.removeValue(forKey: ObjectIdentifier(socket)) }
                socket.close()
                threads.leave()
            }
        }
    }

    // MARK: - HTTP

    private func serve(_ peer: FakePeer) throws {
        let (requestLine, headers) = try peer.readRequestHead()
        let parts = requestLine.split(separator: " ")
        guard parts.count == 3 else { return try respond(peer, 400, error: "bad_request", "bad request line") }
        let method = String(parts[0]), path = String(parts[1])
        if headers["upgrade"]?.lowercased() == "websocket" {
            let offered = (headers["sec-websocket-protocol"] ?? "").split(separator: ",").map {
                $0.trimmingCharacters(in: .whitespaces)
            }
            guard offered.contains("agentchat.v1") else {
                return try respond(peer, 400, error: "subprotocol_required", "offer agentchat.v1")
            }
            return try serveWebSocket(peer, key: headers["sec-websocket-key"] ?? "")
        }
        guard path == "/api/v1/agents/register" else { return try respond(peer, 404, error: "not_found", path) }
        guard method == "POST" else { return try respond(peer, 405, error: "method_not_allowed", method) }
        guard let lengthText = headers["content-length"], let length = Int(lengthText) else {
            return try respond(peer, 411, error: "bad_content_length", "no Content-Length")
        }
        let body = try peer.readBytes(length)
        lock.withLock { _registerBodies.append(body) }
        if let forced = registerOverride {
            return try respond(peer, forced.status, headers: forced.headers, body: forced.body)
        }
        guard headers["content-type"]?.lowercased().hasPrefix("application/json") == true else {
            return try respond(peer, 415, error: "unsupported_media_type", "JSON only")
        }
        guard let json = try? JSONParser.parse(body), let fields = json.objectValue else {
            return try respond(peer, 400, error: "bad_json", "not JSON")
        }
        let expected: Set = ["name", "signingKey", "encryptionKey", "timestamp", "signature"]
        if let extra = Set(fields.keys).subtracting(expected).first {
            return try respond(peer, 400, error: "unknown_field", extra)
        }
        guard let name = fields["name"]?.stringValue, let sk = fields["signingKey"]?.stringValue,
            let ek = fields["encryptionKey"]?.stringValue, let timestamp = fields["timestamp"]?.integerValue,
            let signatureText = fields["signature"]?.stringValue
        else { return try respond(peer, 400, error: "missing_field", "a field is missing") }
        guard let signingKey = Base64URL.decode(sk), signingKey.count == 32,
            let encryptionKey = Base64URL.decode(ek), encryptionKey.count == 32,
            let signature = Base64URL.decode(signatureText), signature.count == 64
        else { return try respond(peer, 400, error: "invalid_field", "bad key or signature") }
        let signed = "agentchat-register-v1\n\(name)\n\(sk)\n\(ek)\n\(timestamp)"
        guard SigningKeyPair.verify(signature: signature, message: Array(signed.utf8), publicKey: signingKey) else {
            return try respond(peer, 400, error: "bad_signature", "the signature does not verify")
        }
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        guard abs(now - timestamp) <= 300_000 else {
            return try respond(peer, 400, error: "stale_timestamp", "too far from the broker's clock")
        }
        let did = DID(signingKey: signingKey).description
        let existing = lock.withLock { agents[did] }
        if existing != nil {
            let body: JSONValue = ["error": ["code": "already_registered", "message": "registered already"],
                                   "did": .string(did)]
            return try respond(peer, 409, body: String(decoding: JSONWriter.encode(body), as: UTF8.self))
        }
        let profile: JSONValue = ["did": .string(did), "name": .string(name), "signingKey": .string(sk),
                                  "encryptionKey": .string(ek), "registeredAt": .number(Double(now)),
                                  "registrationTimestamp": .number(Double(timestamp)),
                                  "registrationSignature": .string(signatureText)]
        lock.withLock { agents[did] = profile }
        let answer: JSONValue = ["agent": profile, "did": .string(did)]
        try respond(peer, 201, body: String(decoding: JSONWriter.encode(answer), as: UTF8.self))
    }

    private func respond(_ peer: FakePeer, _ status: Int, error code: String, _ message: String) throws {
        let body: JSONValue = ["error": ["code": .string(code), "message": .string(message)]]
        try respond(peer, status, body: String(decoding: JSONWriter.encode(body), as: UTF8.self))
    }

    private func respond(_ peer: FakePeer, _ status: Int, headers: [(String, String)] = [], body: String) throws {
        var head = "HTTP/1.1 \(status) Fake\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.utf8.count)\r\nConnection: close\r\n"
        for (name, value) in headers { head += "\(name): \(value)\r\n" }
        try peer.write(Array((head + "\r\n" + body).utf8))
    }

    // MARK: - WebSocket

    private func serveWebSocket(_ peer: FakePeer, key: String) throws {
        try peer.write(Array(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: \(WebSocketHandshake.acceptValue(forKey: key))\r\n"
            + "Sec-WebSocket-Protocol: agentchat.v1\r\n\r\n").utf8))
        lock.withLock { liveWebSockets[ObjectIdentifier(peer.socket)] = peer.socket }
        var challenge = try sendHello(peer)
        var authenticated = false
        while !isStopped {
            let frame: WebSocketFrame
            do {
                frame = try peer.readFrame(timeout: 0.1)
            } catch WebSocketError.timeout {
                continue
            }
            switch frame.opcode {
            case .close:
                try? peer.send(WebSocketFrame(opcode: .close, payload: Array(frame.payload.prefix(2))))
                return
            case .ping:
                try peer.send(WebSocketFrame(opcode: .pong, payload: frame.payload))
                continue
            case .text:
                break
            default:
                continue
            }
            guard let json = try? JSONParser.parse(frame.payload) else {
                try sendJSON(peer, ["type": "error", "code": "bad_json", "message": "not JSON"])
                continue
            }
            let ref = json["id"]
            func reply(_ fields: [String: JSONValue]) throws {
                var fields = fields
                if let ref { fields["ref"] = ref }
                try sendJSON(peer, .object(fields))
            }
            switch json["type"]?.stringValue {
            case "ping":
                try reply(["type": "pong", "time": .number(Double(Int64(Date().timeIntervalSince1970 * 1000)))])
            case "auth":
                lock.withLock { _authFrames.append(json) }
                if authenticated {
                    try reply(["type": "error", "code": "already_authenticated", "message": "again"])
                    continue
                }
                var did: String?
                if let token = json["token"]?.stringValue {
                    did = lock.withLock { _refuseTokens ? nil : tokens[token] }
                    if did == nil {
                        try reply(["type": "error", "code": "token_invalid", "message": "unknown token"])
                        challenge = try sendHello(peer)
                        continue
                    }
                } else if let didText = json["did"]?.stringValue, let parsed = DID(parsing: didText),
                    let signature = json["signature"]?.stringValue.flatMap(Base64URL.decode),
                    SigningKeyPair.verify(signature: signature,
                                          message: Array("agentchat-auth-v1\n\(issuer)\n\(challenge)".utf8),
                                          publicKey: parsed.signingKey),
                    lock.withLock({ agents[didText] != nil })
                {
                    did = didText
                } else {
                    try reply(["type": "error", "code": "auth_failed", "message": "bad signature or unknown DID"])
                    challenge = try sendHello(peer)
                    continue
                }
                let token = "fake." + Base64URL.encode(SecureRandom.bytes(24))
                let profile = lock.withLock { () -> JSONValue in
                    tokens[token] = did!
                    _welcomeTokens.append(token)
                    return agents[did!]!
                }
                authenticated = true
                let expiresAt = Int64(Date().timeIntervalSince1970 * 1000) + 900_000
                try reply(["type": "welcome", "agent": profile, "token": .string(token),
                           "expiresAt": .number(Double(expiresAt))])
            default:
                if authenticated, let handler = frameHandler, try handler(json, { try sendJSON(peer, $0) }) {
                    continue
                }
                try reply(["type": "error", "code": authenticated ? "unknown_type" : "not_authenticated",
                           "message": "no"])
            }
        }
    }

    private func sendHello(_ peer: FakePeer) throws -> String {
        let challenge = Base64URL.encode(SecureRandom.bytes(32))
        let expiresAt = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        try sendJSON(peer, ["type": "hello", "broker": .string(issuer), "challenge": .string(challenge),
                            "expiresAt": .number(Double(expiresAt))])
        return challenge
    }

    private func sendJSON(_ peer: FakePeer, _ value: JSONValue) throws {
        try peer.send(WebSocketFrame(opcode: .text, payload: JSONWriter.encode(value)))
    }
}

/// The server side of one accepted connection: buffered reads of the request head, body and client frames.
final class FakePeer: @unchecked Sendable {
    let socket: BlockingTCPSocket
    private var buffer: [UInt8] = []

    init(socket: BlockingTCPSocket) { self.socket = socket }

    func readRequestHead(timeout: Double = 5) throws -> (String, [String: String]) {
        let deadline = Deadline(seconds: timeout)
        while Self.headerEnd(buffer) == nil {
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
        let end = Self.headerEnd(buffer)!
        let lines = String(decoding: buffer[0..<end], as: UTF8.self).components(separatedBy: "\r\n")
        buffer.removeFirst(end + 4)
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...]
                .trimmingCharacters(in: .whitespaces)
        }
        return (lines[0], headers)
    }

    func readBytes(_ count: Int, timeout: Double = 5) throws -> [UInt8] {
        let deadline = Deadline(seconds: timeout)
        while buffer.count < count {
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
        defer { buffer.removeFirst(count) }
        return Array(buffer.prefix(count))
    }

    func readFrame(timeout: Double) throws -> WebSocketFrame {
        let deadline = Deadline(seconds: timeout)
        while true {
            if case .frame(let frame, let used) = try WebSocketFrame.decode(buffer) {
                buffer.removeFirst(used)
                return frame
            }
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
    }

    func send(_ frame: WebSocketFrame) throws { try write(frame.encode()) }
    func write(_ bytes: [UInt8]) throws { try socket.write(bytes, timeout: 5) }

    private static func headerEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 {
            return i
        }
        return nil
    }
}
