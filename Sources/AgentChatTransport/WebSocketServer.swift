import AgentChatCore
import AgentChatLoop
import AgentChatProtocol
import CLibWebSockets
import CLibWebSocketsShims
import Foundation
import Logging

/// The libwebsockets server: one context on the broker's libuv loop, HTTP/1.1 and the `agentchat.v1` WebSocket
/// subprotocol on one port. Loop-bound: every method runs on the loop thread.
///
/// C pointer ownership:
/// - `lws_context_user` holds this object unretained: the server destroys the context before it is released.
/// - Per-session data (both protocols) holds a `UInt64` id, not a pointer; `connections` and `exchanges` map ids to
///   objects, so a callback that arrives after an object is gone finds nothing instead of freed memory.
/// - `protocols`, `protocolNames` and `retryPolicy` are allocated here, must outlive the context (libwebsockets
///   keeps pointers to them) and are freed in `deinit`.
package final class WebSocketServer {
    package struct Configuration: Sendable {
        package var host: String
        package var port: Int
        package var limits: Limits
        /// Bytes libwebsockets allocates per connection for received data (a third of an idle connection's memory),
        /// and the most it reads from a connection per loop turn (so it bounds a busy sender's messages per turn).
        package var receiveBufferBytes: Int = 1024
        package var pingIntervalSeconds: Int = 30
        package var pingTimeoutSeconds: Int = 10
        /// Seconds a connection the broker decided to close (4008, 4001, 1001...) may take to go; then the socket is
        /// dropped, whether or not the close frame could be written.
        package var closeGraceSeconds: Int = 5
        /// Other processes listen on the same port (`--processes`): libwebsockets gets no listener, and a
        /// `SharedListener` (`SO_REUSEPORT`) accepts and hands each connection to the same head gate as libwebsockets'
        /// own accepted connections go through.
        package var sharesPort = false
        /// Serve the port over TLS with these files (see `TLSTerminator`); nil: plain HTTP.
        package var tls: TLSFiles?

        package init(host: String, port: Int, limits: Limits, receiveBufferBytes: Int = 1024,
                     pingIntervalSeconds: Int = 30, pingTimeoutSeconds: Int = 10, closeGraceSeconds: Int = 5,
                     sharesPort: Bool = false, tls: TLSFiles? = nil)
        {
            self.sharesPort = sharesPort
            self.tls = tls
            self.host = host
            self.port = port
            self.limits = limits
            self.receiveBufferBytes = receiveBufferBytes
            self.pingIntervalSeconds = pingIntervalSeconds
            self.pingTimeoutSeconds = pingTimeoutSeconds
            self.closeGraceSeconds = closeGraceSeconds
        }
    }

    static let subprotocol = WireProtocol.subprotocol

    let loop: EventLoop
    let configuration: Configuration
    let logger: Logger
    /// Receives connections, their messages and HTTP requests.
    package weak var handler: (any ConnectionHandler)?

    private var context: OpaquePointer?
    /// Written with nil by libwebsockets when a destroyed context has finished closing (`pcontext`).
    private let contextSlot: UnsafeMutablePointer<OpaquePointer?>
    private let protocols: UnsafeMutablePointer<lws_protocols>
    /// The TLS vhosts' one raw protocol and its terminator (see `TLSTerminator`).
    private let tlsProtocols: UnsafeMutablePointer<lws_protocols>
    private let protocolNames: [UnsafeMutablePointer<CChar>]
    private let retryPolicy: UnsafeMutablePointer<lws_retry_bo_t>
    private var nextID: UInt64 = 1
    private(set) var connections: [UInt64: WebSocketConnection] = [:]
    /// WebSocket connections open now.
    package var connectionCount: Int { connections.count }
    private var exchanges: [UInt64: HTTPExchange] = [:]
    package private(set) var boundPort = 0
    private(set) var isShuttingDown = false
    private var shutdownTimer: LoopTimer?
    private var keepAliveTimer: LoopTimer?
    /// Every new connection waits here until the head of its first request is known good (see `HTTPHeadGate`).
    private let gate: HTTPHeadGate
    /// The shared listening socket when `configuration.sharesPort`; nil otherwise (libwebsockets listens).
    private var listener: SharedListener?
    /// Terminates TLS in front of the gate when `configuration.tls` is set.
    private let terminator: TLSTerminator?

    package init(loop: EventLoop, configuration: Configuration, logger: Logger) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        contextSlot = .allocate(capacity: 1)
        contextSlot.initialize(to: nil)

        protocolNames = [strdup("http")!, strdup(Self.subprotocol)!, strdup(TLSTerminator.protocolName)!]
        protocols = .allocate(capacity: 3)
        let slot = MemoryLayout<UInt64>.size
        var http = agentchat_lws_protocols_terminator()
        http.name = UnsafePointer(protocolNames[0])
        http.callback = serverCallback
        http.per_session_data_size = slot
        http.rx_buffer_size = 0
        var ws = agentchat_lws_protocols_terminator()
        ws.name = UnsafePointer(protocolNames[1])
        ws.callback = serverCallback
        ws.per_session_data_size = slot
        ws.rx_buffer_size = configuration.receiveBufferBytes
        // One send() may carry a whole queued frame rather than rx_buffer_size pieces.
        ws.tx_packet_size = configuration.limits.maxMessageBytes + 4096
        protocols.initialize(to: http)
        (protocols + 1).initialize(to: ws)
        (protocols + 2).initialize(to: agentchat_lws_protocols_terminator())
        var relay = agentchat_lws_protocols_terminator()
        relay.name = UnsafePointer(protocolNames[2])
        relay.callback = serverCallback
        relay.per_session_data_size = slot
        tlsProtocols = .allocate(capacity: 2)
        tlsProtocols.initialize(to: relay)
        (tlsProtocols + 1).initialize(to: agentchat_lws_protocols_terminator())

        // Zero validity times switch off libwebsockets' own keep-alive: 4.1 keeps one timer per connection in a
        // list sorted by linear insertion and re-inserts it on every received frame, O(connections) each time.
        // `sweepKeepAlive` does the job with one timer for all connections.
        retryPolicy = .allocate(capacity: 1)
        retryPolicy.initialize(to: lws_retry_bo_t(
            retry_ms_table: nil, retry_ms_table_count: 0, conceal_count: 0, secs_since_valid_ping: 0,
            secs_since_valid_hangup: 0, jitter_percent: 0))
        gate = HTTPHeadGate(loop: loop, headTimeout: 10, logger: logger)
        terminator = configuration.tls == nil ? nil
            : TLSTerminator(loop: loop, protocols: UnsafePointer(tlsProtocols), logger: logger)
        gate.admit = { [unowned self] fd, consumed in adopt(fd, consumed) }
        terminator?.plaintext = { [unowned self] fd in acceptPlain(fd) }
    }

    deinit {
        precondition(context == nil, "WebSocketServer released with a live context")
        protocols.deinitialize(count: 3)
        protocols.deallocate()
        tlsProtocols.deinitialize(count: 2)
        tlsProtocols.deallocate()
        protocolNames.forEach { free($0) }
        retryPolicy.deallocate()
        contextSlot.deallocate()
    }

    /// Creates the context on the loop and starts listening. Throws if the address cannot be bound.
    package func start() throws {
        loop.preconditionInEventLoop()
        precondition(agentchat_lws_pre() <= OutboundFrame.headroom,
                     "LWS_PRE (\(agentchat_lws_pre())) is larger than OutboundFrame.headroom")
        var info = lws_context_creation_info()
        info.port = configuration.sharesPort ? Int32(CONTEXT_PORT_NO_LISTEN_SERVER) : Int32(configuration.port)
        info.protocols = UnsafePointer(protocols)
        info.options = UInt64(LWS_SERVER_OPTION_LIBUV) | UInt64(LWS_SERVER_OPTION_VALIDATE_UTF8)
        if !configuration.host.contains(":") { info.options |= UInt64(LWS_SERVER_OPTION_DISABLE_IPV6) }
        if configuration.tls != nil { info.options |= UInt64(LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT) }
        info.user = Unmanaged.passUnretained(self).toOpaque()
        info.retry_and_idle_policy = UnsafePointer(retryPolicy)
        // HTTPRequestHeadValidator admits heads of at most 4096 bytes and 48 fields; libwebsockets keeps names of
        // unknown headers and 8 bytes of bookkeeping per field beside the values, so its table needs room past 4096.
        info.max_http_header_data = 8192
        info.timeout_secs = 10
        info.pcontext = contextSlot
        var foreignLoops: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(loop.uvLoop)]
        let created: OpaquePointer? = configuration.host.withCString { host in
            info.iface = host
            return foreignLoops.withUnsafeMutableBufferPointer { loops in
                info.foreign_loops = loops.baseAddress
                return lws_create_context(&info)
            }
        }
        guard let created else {
            throw WebSocketServerError.listenFailed(host: configuration.host, port: configuration.port)
        }
        context = created
        contextSlot.pointee = created
        if let terminator, let files = configuration.tls {
            do {
                try terminator.start(context: created, files: files)
            } catch {
                destroyContextNow()
                throw error
            }
        }
        if configuration.sharesPort {
            do {
                listener = try SharedListener(loop: loop, host: configuration.host, port: configuration.port,
                                              logger: logger) { [unowned self] fd in acceptShared(fd) }
                boundPort = listener?.port ?? 0
            } catch {
                destroyContextNow()
                throw error
            }
        } else if let vhost = lws_get_vhost_by_name(created, "default") {
            boundPort = Int(lws_get_vhost_listen_port(vhost))
        }
        guard boundPort > 0 else {
            destroyContextNow()
            throw WebSocketServerError.listenFailed(host: configuration.host, port: configuration.port)
        }
        let shortest = min(configuration.pingIntervalSeconds, configuration.pingTimeoutSeconds,
                           configuration.closeGraceSeconds)
        let period = UInt64(max(250, shortest * 250))
        keepAliveTimer = LoopTimer(loop: loop) { [weak self] in self?.sweepKeepAlive() }
        keepAliveTimer?.start(after: period, repeat: period)
    }

    /// Pings connections silent for `--ping-interval` and drops those that stay silent `--ping-timeout` longer;
    /// drops connections still open `closeGraceSeconds` after the broker decided to close them.
    private func sweepKeepAlive() {
        let now = SystemTime.monotonicSeconds()
        let interval = Double(configuration.pingIntervalSeconds)
        let timeout = Double(configuration.pingTimeoutSeconds)
        let grace = Double(configuration.closeGraceSeconds)
        gate.sweep(now: now)
        for connection in connections.values {
            if let decided = connection.closeDecidedAt {
                if now - decided > grace, !connection.isDropped {
                    let code = connection.pendingClose?.code.rawValue ?? 0
                    logger.debug("dropping connection: close not completed in time",
                                 metadata: ["connection": "\(connection.id)", "code": "\(code)"])
                    connection.drop()
                }
            } else if let sent = connection.pingSentAt {
                if now - sent > timeout { connection.drop() }
            } else if now - connection.lastHeard >= interval {
                connection.ping(now: now)
            }
        }
    }

    /// Closes every WebSocket with 1001, waits (at most `grace` seconds) for them to go, then destroys the context.
    package func shutdown(grace: Double = 3, completion: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        guard !isShuttingDown else { return }
        isShuttingDown = true
        keepAliveTimer = nil
        listener?.close()
        listener = nil
        gate.closeAll()
        for connection in connections.values { connection.close(.goingAway, "broker shutting down") }
        let deadline = SystemTime.monotonicSeconds() + grace
        var destroying: OpaquePointer?
        var lastDestroyCall = 0.0
        shutdownTimer = LoopTimer(loop: loop) { [weak self] in
            guard let self else { return }
            let now = SystemTime.monotonicSeconds()
            if destroying == nil, connections.isEmpty || now > deadline {
                destroying = context
                context = nil
            }
            guard let pending = destroying else { return }
            // libwebsockets writes nil into the slot when the context is freed. On a foreign loop destruction
            // goes in stages, each advanced by another lws_context_destroy() once the handles of the last closed.
            if contextSlot.pointee == nil || now > deadline + 2 {
                shutdownTimer = nil
                terminator?.closeAll()
                completion()
            } else if now - lastDestroyCall > 0.05 {
                lastDestroyCall = now
                lws_context_destroy(pending)
            }
        }
        shutdownTimer?.start(after: 10, repeat: 10)
    }

    /// Destroys the context of a `start()` that failed.
    private func destroyContextNow() {
        listener?.close()
        listener = nil
        gate.closeAll()
        if let context {
            // On a foreign loop libwebsockets finishes destroying the context in later turns of the loop, with
            // callbacks that find this object through the context's user pointer: it must outlive them, and a
            // failed start is followed by the process's exit, so it is kept for good.
            _ = Unmanaged.passRetained(self)
            lws_context_destroy(context)
        }
        context = nil
        terminator?.closeAll()
    }

    /// Loads new TLS files for the connections accepted from now on (`SIGHUP`); connections already open keep the
    /// certificate they have. Throws, keeping the current certificate, when the files cannot be read or used, or
    /// when the server does not serve TLS.
    package func reloadTLS(_ files: TLSFiles) throws {
        loop.preconditionInEventLoop()
        guard let terminator else { throw WebSocketServerError.tlsFailed("the server was started without TLS") }
        try terminator.reload(files)
    }

    // MARK: Callback dispatch

    fileprivate func handle(
        _ wsi: OpaquePointer, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
        _ input: UnsafeMutableRawPointer?, _ length: Int
    ) -> Int32 {
        switch reason {
        case LWS_CALLBACK_FILTER_NETWORK_CONNECTION:
            // `input` is the accepted descriptor. The gate keeps a duplicate; refusing makes libwebsockets close
            // its own copy and forget the connection, which comes back through `adopt` once its head passed.
            let fd = Int32(truncatingIfNeeded: Int(bitPattern: input))
            if let terminator {
                // TLS first: the decrypted bytes come back through `acceptPlain` to the gate.
                let copy = fcntl(fd, F_DUPFD_CLOEXEC, 0)
                if copy >= 0 { terminator.adopt(copy) }
            } else if !gate.take(fd) {
                logger.warning("could not hold a new connection", metadata: ["errno": "\(errno)"])
            }
            return 1
        case LWS_CALLBACK_RAW_ADOPT, LWS_CALLBACK_RAW_RX, LWS_CALLBACK_RAW_WRITEABLE, LWS_CALLBACK_RAW_CLOSE:
            return terminator?.handle(wsi, reason, user, input, length) ?? -1
        case LWS_CALLBACK_HTTP_CONFIRM_UPGRADE:
            // `input` names the upgrade; it is deliberately not read (CVE in 4.1.6's path): headers are read instead.
            return confirmUpgrade(wsi)
        case LWS_CALLBACK_HTTP:
            return httpRequest(wsi, user, path: Self.string(input, length))
        case LWS_CALLBACK_HTTP_BODY:
            return httpBody(wsi, user, input, length)
        case LWS_CALLBACK_HTTP_BODY_COMPLETION:
            return httpBodyComplete(wsi, user)
        case LWS_CALLBACK_HTTP_WRITEABLE:
            return httpWriteable(wsi, user)
        case LWS_CALLBACK_CLOSED_HTTP, LWS_CALLBACK_HTTP_DROP_PROTOCOL:
            if let id = Self.slotID(user), let exchange = exchanges.removeValue(forKey: id) { exchange.wsi = nil }
            return 0
        case LWS_CALLBACK_ESTABLISHED:
            return established(wsi, user)
        case LWS_CALLBACK_RECEIVE:
            return receive(wsi, user, input, length)
        case LWS_CALLBACK_RECEIVE_PONG:
            if Self.frameWasMasked(wsi) == false {
                var reason = Array("client frames must be masked".utf8)
                lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, &reason, reason.count)
                return -1
            }
            if let id = Self.slotID(user), let connection = connections[id] {
                connection.lastHeard = SystemTime.monotonicSeconds()
                connection.pingSentAt = nil
            }
            return 0
        case LWS_CALLBACK_SERVER_WRITEABLE:
            guard let id = Self.slotID(user), let connection = connections[id] else { return -1 }
            return connection.writeable()
        case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
            if let id = Self.slotID(user), let connection = connections[id] { connection.peerSentClose = true }
            return Self.checkCloseCode(wsi, input, length)
        case LWS_CALLBACK_WS_SERVER_DROP_PROTOCOL:
            if let id = Self.slotID(user), let connection = connections[id] { closeAfterUnreportedViolation(wsi, connection) }
            return 0
        case LWS_CALLBACK_CLOSED:
            if let id = Self.slotID(user), let connection = connections.removeValue(forKey: id) {
                connection.detach()
                handler?.connectionClosed(connection)
            }
            return 0
        default:
            return lws_callback_http_dummy(wsi, reason, user, input, length)
        }
    }

    private func allocateID(_ user: UnsafeMutableRawPointer?) -> UInt64? {
        guard let user else { return nil }
        let id = nextID
        nextID += 1
        user.storeBytes(of: id, as: UInt64.self)
        return id
    }

    private static func slotID(_ user: UnsafeMutableRawPointer?) -> UInt64? {
        guard let user else { return nil }
        let id = user.load(as: UInt64.self)
        return id == 0 ? nil : id
    }

    static func string(_ input: UnsafeMutableRawPointer?, _ length: Int) -> String {
        guard let input, length > 0 else { return "" }
        return String(decoding: UnsafeRawBufferPointer(start: input, count: length), as: UTF8.self)
    }

    /// A request header, or nil when absent. Copies the bytes out of libwebsockets' header table.
    static func header(_ wsi: OpaquePointer, _ token: lws_token_indexes) -> String? {
        let total = Int(lws_hdr_total_length(wsi, token))
        guard total > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: total + 1)
        guard lws_hdr_copy(wsi, &buffer, Int32(buffer.count), token) >= 0 else { return nil }
        return String(nulTerminated: buffer)
    }

    /// A header libwebsockets has no token for, as lws keeps it (`name` lower-case, without the colon); the
    /// spelling Stripe sends is tried too.
    static func customHeader(_ wsi: OpaquePointer, _ name: String) -> String? {
        let spellings = [name + ":", name.split(separator: "-").map { $0.prefix(1).uppercased() + $0.dropFirst() }
            .joined(separator: "-") + ":"]
        for spelling in spellings {
            let length = spelling.withCString { Int(lws_hdr_custom_length(wsi, $0, Int32(spelling.utf8.count))) }
            guard length > 0, length <= 8192 else { continue }
            var buffer = [CChar](repeating: 0, count: length + 1)
            let copied = spelling.withCString {
                lws_hdr_custom_copy(wsi, &buffer, Int32(buffer.count), $0, Int32(spelling.utf8.count))
            }
            if copied >= 0 { return String(nulTerminated: buffer) }
        }
        return nil
    }

    /// The client's address; for a connection relayed from TLS, the TLS connection's peer.
    private func clientAddress(_ wsi: OpaquePointer) -> String {
        if let terminator, let address = terminator.peerAddress(ofPlaintextFD: lws_get_socket_fd(wsi)) {
            return address
        }
        return Self.peerAddress(wsi)
    }

    static func peerAddress(_ wsi: OpaquePointer) -> String {
        var buffer = [CChar](repeating: 0, count: 64)
        guard lws_get_peer_simple(wsi, &buffer, buffer.count) != nil else { return "unknown" }
        return String(nulTerminated: buffer)
    }

    /// A connection accepted by the shared listener: the same path as one libwebsockets accepted and offered to
    /// `LWS_CALLBACK_FILTER_NETWORK_CONNECTION` (the gate keeps a duplicate, the original is closed).
    private func acceptShared(_ fd: Int32) {
        if let terminator { return terminator.adopt(fd) }
        acceptPlain(fd)
    }

    /// A plaintext connection (accepted, or the HTTP end of a TLS relay) goes to the gate, which keeps a duplicate.
    private func acceptPlain(_ fd: Int32) {
        if !gate.take(fd) { logger.warning("could not hold a new connection", metadata: ["errno": "\(errno)"]) }
        _ = Glibc.close(fd)
    }

    /// Hands a connection whose request head passed `HTTPRequestHeadValidator` to libwebsockets, with the bytes
    /// the gate consumed from it (none when the head came in one piece and was only peeked).
    private func adopt(_ fd: Int32, _ consumed: [UInt8]) {
        guard let context else {
            _ = Glibc.close(fd)
            return
        }
        // On failure libwebsockets closes the descriptor itself.
        if consumed.isEmpty {
            _ = lws_adopt_socket(context, fd)
        } else {
            _ = consumed.withUnsafeBytes { bytes in
                lws_adopt_socket_readbuf(context, fd, bytes.baseAddress?.assumingMemoryBound(to: CChar.self),
                                         bytes.count)
            }
        }
    }

    // MARK: WebSocket

    private func established(_ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?) -> Int32 {
        guard let id = allocateID(user) else { return -1 }
        let connection = WebSocketConnection(id: id, wsi: wsi, limits: configuration.limits,
                                       remoteAddress: clientAddress(wsi))
        connections[id] = connection
        if isShuttingDown {
            connection.close(.goingAway, "broker shutting down")
            return 0
        }
        handler?.connectionOpened(connection)
        return 0
    }

    private func receive(
        _ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?, _ input: UnsafeMutableRawPointer?, _ length: Int
    ) -> Int32 {
        guard let id = Self.slotID(user), let connection = connections[id] else { return -1 }
        if Self.frameWasMasked(wsi) == false {
            logger.debug("closing connection: unmasked client frame", metadata: ["connection": "\(id)"])
            connection.refusedWith = .protocolError
            var reason = Array("client frames must be masked".utf8)
            lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, &reason, reason.count)
            return -1
        }
        connection.lastHeard = SystemTime.monotonicSeconds()
        connection.pingSentAt = nil
        let outcome = connection.assembler.append(
            UnsafeRawBufferPointer(start: input, count: input == nil ? 0 : length),
            isBinary: lws_frame_is_binary(wsi) != 0,
            isFinal: lws_is_final_fragment(wsi) != 0,
            remaining: Int(lws_remaining_packet_payload(wsi)))
        switch outcome {
        case .incomplete:
            return 0
        case .tooLarge:
            logger.debug("closing connection: message too large", metadata: ["connection": "\(id)"])
            connection.refusedWith = .messageTooBig
            var reason = Array("message larger than \(configuration.limits.maxMessageBytes) bytes".utf8)
            lws_close_reason(wsi, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, &reason, reason.count)
            return -1
        case .message(let bytes, let isBinary):
            handler?.connection(connection, received: bytes, isBinary: isBinary)
            return 0
        }
    }

    /// The peer's close frame, before libwebsockets echoes its payload (`input`, its own receive buffer). lws 4.1.6
    /// rewrites a code below 1000, 1004–1006 and 1012–2999 to 1002 there itself, but echoes 5000 and above, which
    /// RFC 6455 §7.4 makes invalid too: rewritten the same way. A one-byte payload (§5.5.1: a code is two bytes)
    /// is answered with a 1002 close instead of the echo.
    private static func checkCloseCode(_ wsi: OpaquePointer, _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32 {
        guard let input, length > 0 else { return 0 }
        let bytes = input.assumingMemoryBound(to: UInt8.self)
        if length == 1 {
            var reason = Array("a close payload holds a two-byte code".utf8)
            lws_close_reason(wsi, LWS_CLOSE_STATUS_PROTOCOL_ERR, &reason, reason.count)
            return -1
        }
        if Int(bytes[0]) << 8 | Int(bytes[1]) >= 5000 {
            bytes[0] = UInt8(LWS_CLOSE_STATUS_PROTOCOL_ERR.rawValue >> 8)
            bytes[1] = UInt8(LWS_CLOSE_STATUS_PROTOCOL_ERR.rawValue & 0xFF)
        }
        return 0
    }

    /// libwebsockets 4.1.6 drops a connection whose frame its parser refuses without saying why and without a close
    /// frame (a control frame announcing more than 125 bytes, a 64-bit length with its top bit set). This runs as it
    /// starts closing any WebSocket (DROP_PROTOCOL comes before it shuts the socket down): when neither the broker
    /// (`pendingClose`, `drop()`) nor the peer (a close frame, the end of its stream) nor libwebsockets itself (a
    /// close reason it will send) closed it, and no frame is half written, the broker writes a 1002 close frame.
    private func closeAfterUnreportedViolation(_ wsi: OpaquePointer, _ connection: WebSocketConnection) {
        guard connection.pendingClose == nil, !connection.isDropped, !connection.peerSentClose, !isShuttingDown,
            lws_get_close_length(wsi) == 0, lws_partial_buffered(wsi) == 0
        else { return }
        let fd = lws_get_socket_fd(wsi)
        guard fd >= 0 else { return }
        var probe: UInt8 = 0
        let peeked = recv(fd, &probe, 1, agentchat_msg_peek_nowait())
        guard peeked > 0 || (peeked < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) else { return }
        let reason = Array("protocol error".utf8)
        let close: [UInt8] = [0x88, UInt8(2 + reason.count), 0x03, 0xEA] + reason
        logger.debug("closing connection: frame refused by libwebsockets", metadata: ["connection": "\(connection.id)"])
        connection.refusedWith = .protocolError
        _ = close.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, agentchat_msg_nosignal_nowait()) }
    }

    /// Whether the frame being received was masked (see `agentchat_lws_ws_frame_flags`), or nil when that cannot be
    /// read with confidence: the library is not 4.1, or the byte's final and binary bits disagree with the public
    /// accessors for this frame.
    private static func frameWasMasked(_ wsi: OpaquePointer) -> Bool? {
        guard readsMaskBit else { return nil }
        let flags = agentchat_lws_ws_frame_flags(wsi)
        guard (flags & 2 != 0) == (lws_frame_is_binary(wsi) != 0) else { return nil }
        if lws_remaining_packet_payload(wsi) == 0, (flags & 1 != 0) != (lws_is_final_fragment(wsi) != 0) {
            return nil
        }
        return flags & 8 != 0
    }

    /// The mask bit is read only from the libwebsockets whose private layout `agentchat_lws_ws_frame_flags` knows.
    private static let readsMaskBit: Bool = {
        guard let version = lws_get_library_version() else { return false }
        return String(cString: version).hasPrefix("4.1.")
    }()

    // MARK: HTTP

    private func confirmUpgrade(_ wsi: OpaquePointer) -> Int32 {
        let upgrade = Self.header(wsi, WSI_TOKEN_UPGRADE)?.lowercased()
        guard upgrade == "websocket" else {
            // HTTPHeadGate answers every Upgrade other than websocket before libwebsockets sees it; this stays as a
            // second guard, since h2c would reach here unanswered and must never reach the HTTP/2 code.
            if upgrade == "h2c" {
                respondImmediately(wsi, .error(400, .upgradeNotSupported,
                                               "this broker serves HTTP/1.1 only; h2c upgrades are refused"))
            }
            return -1
        }
        if isShuttingDown {
            respondImmediately(wsi, .error(503, .unavailable, "broker shutting down"))
            return -1
        }
        let offered = (Self.header(wsi, WSI_TOKEN_PROTOCOL) ?? "")
            .split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
        guard offered.contains(Self.subprotocol) else {
            respondImmediately(wsi, .error(400, .subprotocolRequired,
                                           "WebSocket upgrades must offer the subprotocol \(Self.subprotocol)"))
            return -1
        }
        return 0
    }

    private static func method(_ wsi: OpaquePointer) -> HTTPMethod? {
        let tokens: [(lws_token_indexes, HTTPMethod)] = [
            (WSI_TOKEN_GET_URI, .get), (WSI_TOKEN_POST_URI, .post), (WSI_TOKEN_OPTIONS_URI, .options),
            (WSI_TOKEN_PUT_URI, .put), (WSI_TOKEN_PATCH_URI, .patch), (WSI_TOKEN_DELETE_URI, .delete),
            (WSI_TOKEN_HEAD_URI, .head),
        ]
        return tokens.first { lws_hdr_total_length(wsi, $0.0) > 0 }?.1
    }

    private func httpRequest(_ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?, path: String) -> Int32 {
        guard let method = Self.method(wsi) else {
            respondImmediately(wsi, .error(405, .methodNotAllowed, "unsupported method"))
            return -1
        }
        if Self.header(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) != nil {
            respondImmediately(wsi, .error(400, .unsupportedTransferEncoding,
                                           "request bodies must be sent with Content-Length, not Transfer-Encoding"))
            return -1
        }
        // libwebsockets 4.1.6 reads Content-Length with atoll and accepts a negative value; only plain digits pass
        // (leading zeros included), and a number too large to hold is over the cap like any other.
        var expected = 0
        if let text = Self.header(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH) {
            let cap = configuration.limits.maxRequestBodyBytes
            switch HTTPRequestHeadValidator.contentLength(text) {
            case .malformed:
                respondImmediately(wsi, .error(400, .badContentLength, "Content-Length must be a decimal number"))
                return -1
            case .tooLarge:
                respondImmediately(wsi, .error(413, .bodyTooLarge, "request bodies are limited to \(cap) bytes"))
                return -1
            case .bytes(let value):
                guard value <= cap else {
                    respondImmediately(wsi, .error(413, .bodyTooLarge, "request bodies are limited to \(cap) bytes"))
                    return -1
                }
                expected = value
            }
        } else if method == .post || method == .put || method == .patch {
            // Without a length libwebsockets would read up to 100 MB as the body.
            respondImmediately(wsi, .error(411, .badContentLength, "\(method.rawValue) requires Content-Length"))
            return -1
        }
        guard let id = allocateID(user) else { return -1 }
        var request = HTTPRequest(method: method, path: path)
        for (name, token) in [("origin", WSI_TOKEN_ORIGIN), ("content-type", WSI_TOKEN_HTTP_CONTENT_TYPE),
                              ("authorization", WSI_TOKEN_HTTP_AUTHORIZATION)] {
            if let value = Self.header(wsi, token) { request.headers[name] = value }
        }
        // The payment webhook's signature (no libwebsockets token).
        if let value = Self.customHeader(wsi, "stripe-signature") { request.headers["stripe-signature"] = value }
        request.remoteAddress = clientAddress(wsi)
        let exchange = HTTPExchange(id: id, wsi: wsi, request: request, expectedBodyBytes: expected)
        exchanges[id] = exchange
        // libwebsockets delivers a body (and, for POST with Content-Length 0, an empty one) before completing.
        if expected > 0 || method == .post { return 0 }
        dispatch(exchange)
        return 0
    }

    private func httpBody(
        _ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?, _ input: UnsafeMutableRawPointer?, _ length: Int
    ) -> Int32 {
        guard let id = Self.slotID(user), let exchange = exchanges[id] else { return -1 }
        guard exchange.request.body.count + length <= exchange.expectedBodyBytes else {
            exchanges[id] = nil
            respondImmediately(wsi, .error(413, .bodyTooLarge, "request body longer than its Content-Length"))
            return -1
        }
        if let input, length > 0 {
            exchange.request.body.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
        }
        return 0
    }

    private func httpBodyComplete(_ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?) -> Int32 {
        guard let id = Self.slotID(user), let exchange = exchanges[id] else { return -1 }
        dispatch(exchange)
        return 0
    }

    private func dispatch(_ exchange: HTTPExchange) {
        guard let handler else { return }
        var answered = false
        handler.handleHTTP(exchange.request) { [weak self] response in
            precondition(!answered, "HTTP handler answered twice")
            answered = true
            guard let self, let wsi = exchange.wsi, exchanges[exchange.id] === exchange else { return }
            var response = response
            response.closeConnection = true
            exchange.response = response
            lws_callback_on_writable(wsi)
        }
    }

    private func httpWriteable(_ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?) -> Int32 {
        guard let id = Self.slotID(user), let exchange = exchanges[id] else { return 0 }
        guard let response = exchange.response else { return 0 }
        exchanges[id] = nil
        exchange.wsi = nil
        // Every answer closes its connection (`Connection: close`, set in `dispatch`): a second request on the same
        // connection would be parsed by libwebsockets alone, without `HTTPRequestHeadValidator`. libwebsockets
        // flushes what it buffered of the response before it closes.
        _ = write(wsi, response)
        return -1
    }

    /// Writes a whole response. Used from the writeable callback, and directly only to refuse a request that will
    /// be closed (the upgrade and request-header callbacks, where libwebsockets itself does the same).
    @discardableResult
    private func write(_ wsi: OpaquePointer, _ response: HTTPResponse) -> Bool {
        let frame = OutboundFrame(response.serialized())
        return lws_write(wsi, frame.payload, frame.count, LWS_WRITE_HTTP) >= 0
    }

    private func respondImmediately(_ wsi: OpaquePointer, _ response: HTTPResponse) {
        var response = response
        response.closeConnection = true
        write(wsi, response)
    }
}

/// The one libwebsockets callback for both protocols. Captures nothing; finds the server through the context.
private func serverCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let context = lws_get_context(wsi), let owner = lws_context_user(context) else {
        return lws_callback_http_dummy(wsi, reason, user, input, length)
    }
    return Unmanaged<WebSocketServer>.fromOpaque(owner).takeUnretainedValue()
        .handle(wsi, reason, user, input, length)
}

extension String {
    /// The text before the first NUL of a buffer libwebsockets filled (invalid UTF-8 repaired, as `cString` did).
    init(nulTerminated buffer: [CChar]) {
        self = String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
