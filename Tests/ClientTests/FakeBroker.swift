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
/// plus `ping`/`pong`. Frames go through the protocol's codec both ways: client frames are read with
/// `FrameCodec.decode` (a frame the broker would refuse is answered with the codec's error), broker frames are
/// written with `FrameCodec.encode`.
///
/// Threads: one accept thread, one thread per accepted connection, all started with `DedicatedThread` and all
/// joined by ``stop()``. State shared between them is behind `lock`.
final class FakeBroker: @unchecked Sendable {
    let port: Int
    var url: String { "http://127.0.0.1:\(port)" }
    /// The `broker` of every hello (the `--issuer` of a real broker).
    let issuer = "http://fake-broker.test"

    private let listenFD: Int32
    private let codec = FrameCodec()
    private let lock = NSLock()
    private let threads = DispatchGroup()
    private var stopped = false
    private var agents: [String: JSONValue] = [:]
    private var tokens: [String: String] = [:]
    private var liveWebSockets: [ObjectIdentifier: BlockingTCPSocket] = [:]
    private var _authFrames: [ClientFrame] = []
    private var _receivedFrames: [[UInt8]] = []
    private var _helloBytes: [UInt8]?
    private var _registerBodies: [[UInt8]] = []
    private var _welcomeTokens: [String] = []
    private var _refuseTokens = false
    private var _registerOverride: (status: Int, headers: [(String, String)], body: String)?

    /// Every `auth` frame received, in order.
    var authFrames: [ClientFrame] { lock.withLock { _authFrames } }
    /// Every WebSocket text message received, byte for byte, in order.
    var receivedFrames: [[UInt8]] { lock.withLock { _receivedFrames } }
    /// Sent instead of a fresh `hello` (then logins must sign its challenge for its `broker`).
    var helloBytes: [UInt8]? {
        get { lock.withLock { _helloBytes } }
        set { lock.withLock { _helloBytes = newValue } }
    }
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
    /// and the connection; returns whether it handled the frame.
    typealias FrameHandler = @Sendable (ClientFrame, FakeSession) throws -> Bool
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
            guard offered.contains(WireProtocol.subprotocol) else {
                return try respond(peer, 400, error: "subprotocol_required", "offer \(WireProtocol.subprotocol)")
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
            + "Sec-WebSocket-Protocol: \(WireProtocol.subprotocol)\r\n\r\n").utf8))
        lock.withLock { liveWebSockets[ObjectIdentifier(peer.socket)] = peer.socket }
        var challenge = try sendHello(peer)
        var authenticated: DID?
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
            lock.withLock { _receivedFrames.append(frame.payload) }
            let decoded = codec.decode(frame.payload)
            let clientFrame: ClientFrame
            switch decoded.frame {
            case .success(let success):
                clientFrame = success
            case .failure(let error):
                try send(peer, .error(error, ref: decoded.id))
                continue
            }
            let ref = clientFrame.id
            switch clientFrame {
            case .ping:
                try send(peer, .pong(ref: ref, time: Int64(Date().timeIntervalSince1970 * 1000)))
            case .auth(_, let credentials):
                lock.withLock { _authFrames.append(clientFrame) }
                if authenticated != nil {
                    try send(peer, .error(ProtocolError(.alreadyAuthenticated, "again"), ref: ref))
                    continue
                }
                var did: DID?
                switch credentials {
                case .token(let token):
                    did = lock.withLock { _refuseTokens ? nil : tokens[token].flatMap(DID.init(parsing:)) }
                    if did == nil {
                        try send(peer, .error(ProtocolError(.tokenInvalid, "unknown token"), ref: ref))
                        challenge = try sendHello(peer)
                        continue
                    }
                case .signature(let signer, let signature):
                    if SigningKeyPair.verify(signature: signature,
                                             message: AuthChallenge.signedBytes(broker: challenge.broker,
                                                                                challenge: challenge.challenge),
                                             publicKey: signer.signingKey),
                        lock.withLock({ agents[signer.description] != nil })
                    {
                        did = signer
                    } else {
                        try send(peer, .error(ProtocolError(.authFailed, "bad signature or unknown DID"), ref: ref))
                        challenge = try sendHello(peer)
                        continue
                    }
                }
                let token = "fake." + Base64URL.encode(SecureRandom.bytes(24))
                let profile = lock.withLock { () -> JSONValue in
                    tokens[token] = did!.description
                    _welcomeTokens.append(token)
                    return agents[did!.description]!
                }
                authenticated = did
                let expiresAt = Int64(Date().timeIntervalSince1970 * 1000) + 900_000
                try send(peer, .welcome(ref: ref, agent: AgentProfile(json: profile)!, token: token,
                                        expiresAt: expiresAt))
            default:
                if let did = authenticated, let handler = frameHandler,
                    try handler(clientFrame, FakeSession(did: did, peer: peer, codec: codec))
                {
                    continue
                }
                try send(peer, .error(ProtocolError(authenticated != nil ? .unknownType : .notAuthenticated, "no"),
                                      ref: ref))
            }
        }
    }

    /// Sends a `hello` (or ``helloBytes``); returns what a login must sign.
    private func sendHello(_ peer: FakePeer) throws -> (broker: String, challenge: String) {
        if let bytes = helloBytes {
            guard case .hello(let broker, let challenge, _) = try codec.decodeServerFrame(bytes) else {
                throw ProtocolError(.badFrame, "helloBytes is not a hello")
            }
            try peer.send(WebSocketFrame(opcode: .text, payload: bytes))
            return (broker, challenge)
        }
        let challenge = Base64URL.encode(SecureRandom.bytes(32))
        let expiresAt = Int64(Date().timeIntervalSince1970 * 1000) + 60_000
        try send(peer, .hello(broker: issuer, challenge: challenge, expiresAt: expiresAt))
        return (issuer, challenge)
    }

    private func send(_ peer: FakePeer, _ frame: ServerFrame) throws {
        try peer.send(WebSocketFrame(opcode: .text, payload: codec.encode(frame)))
    }
}

/// One logged-in WebSocket connection of the fake broker, as a ``FakeBroker/FrameHandler`` sees it.
struct FakeSession {
    /// The agent that logged in on it.
    let did: DID
    fileprivate let peer: FakePeer
    fileprivate let codec: FrameCodec

    /// Sends a frame, encoded by the codec.
    func send(_ frame: ServerFrame) throws {
        try peer.send(WebSocketFrame(opcode: .text, payload: codec.encode(frame)))
    }

    /// Sends bytes as they are (a golden frame, say) in one text message.
    func send(bytes: [UInt8]) throws {
        try peer.send(WebSocketFrame(opcode: .text, payload: bytes))
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
