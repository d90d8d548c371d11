import AgentChatCore
import AgentChatLoop
import CLibUV
import CLibWebSockets
import CLibWebSocketsShims
import DequeModule
import Glibc
import Logging

/// The certificate chain and private key the server's port is served with over TLS (PEM files).
package struct TLSFiles: Sendable, Equatable {
    package var certificate: String
    package var privateKey: String

    package init(certificate: String, privateKey: String) {
        self.certificate = certificate
        self.privateKey = privateKey
    }

    /// Nil when both files can be opened for reading; otherwise which one cannot, and why. libwebsockets 4.1.6 quietly
    /// serves without a certificate when a file is missing, so this runs before every load.
    package func unreadable() -> String? {
        for (what, path) in [("certificate", certificate), ("private key", privateKey)] {
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { return "cannot read the TLS \(what) \(path): \(String(cString: strerror(errno)))" }
            _ = Glibc.close(fd)
        }
        return nil
    }
}

/// Serves the port over TLS without letting libwebsockets' HTTP parser see a request head that
/// `HTTPRequestHeadValidator` has not passed.
///
/// libwebsockets 4.1.6 has no callback that shows a server's decrypted bytes before its HTTP parser, so TLS and HTTP
/// are two connections: each accepted TCP connection is adopted on a TLS vhost as a *raw* socket (libwebsockets' own
/// OpenSSL does the handshake, ALPN `http/1.1` only, the certificate), whose decrypted bytes (`LWS_CALLBACK_RAW_RX`)
/// are written into one end of a socketpair; the other end goes through `HTTPHeadGate` like a plain connection and,
/// once its head passed, to libwebsockets' HTTP/WebSocket parser. What the HTTP side writes is read from the pair and
/// written back through the TLS connection (`LWS_CALLBACK_RAW_WRITEABLE`). Either side closing closes the other.
///
/// The certificate is reloaded (`reload`) by creating another TLS vhost: connections already on the old one keep it,
/// new connections are adopted on the new one. Old vhosts stay until the server stops (one `SSL_CTX` each).
///
/// Loop-bound. C pointer ownership: each relay owns one `uv_poll_t` on its end of the pair, allocated here and freed in
/// its close callback; its `data` holds this object unretained (every handle is closed before this object goes).
/// Per-session data of the TLS protocol holds the relay's `UInt64` id. Vhost names and file paths are `strdup`ed
/// copies freed in `deinit` (libwebsockets keeps pointers to them).
final class TLSTerminator {
    static let protocolName = "agentchat-tls-relay"
    /// Bytes waiting to go to the client over TLS before the relay stops reading the HTTP side.
    private static let clientBacklogLimit = 1 << 20

    private final class Relay {
        let id: UInt64
        /// Nil once libwebsockets closed the TLS connection.
        var wsi: OpaquePointer?
        /// This side of the socketpair; -1 once closed.
        var fd: Int32
        let poll: UnsafeMutablePointer<uv_poll_t>
        /// The inode of the other end (the HTTP side), by which `peerAddress(ofPlaintextFD:)` finds the client.
        let plaintextInode: UInt64
        let peer: String
        /// Decrypted client bytes not yet written into the pair (it was full); TLS reading is paused meanwhile.
        var toServer: [UInt8] = []
        /// HTTP-side bytes waiting for the TLS connection to be writeable.
        var toClient = Deque<OutboundFrame>()
        var toClientBytes = 0
        /// The HTTP side closed: the TLS connection closes once `toClient` is written.
        var serverClosed = false
        var clearedHandshakeTimeout = false
        var pollEvents: Int32 = 0

        init(id: UInt64, wsi: OpaquePointer, fd: Int32, poll: UnsafeMutablePointer<uv_poll_t>, plaintextInode: UInt64,
             peer: String)
        {
            self.id = id
            self.wsi = wsi
            self.fd = fd
            self.poll = poll
            self.plaintextInode = plaintextInode
            self.peer = peer
        }
    }

    private let loop: EventLoop
    private let logger: Logger
    private let protocols: UnsafePointer<lws_protocols>
    private var context: OpaquePointer?
    private var vhost: OpaquePointer?
    private var generation = 0
    /// `strdup`ed strings libwebsockets points into (vhost names, paths, the ALPN list).
    private var cStrings: [UnsafeMutablePointer<CChar>] = []
    private var relays: [UInt64: Relay] = [:]
    private var peersByInode: [UInt64: String] = [:]
    /// Relay ids by the address of their poll handle (what a pair event brings).
    private var relayByPoll: [UInt: UInt64] = [:]
    private var nextID: UInt64 = 1
    private var scratch = [UInt8](repeating: 0, count: 64 * 1024)
    /// Receives the plaintext end of each new relay, to pass through the head gate (and then to libwebsockets).
    var plaintext: ((Int32) -> Void)?

    /// Connections relayed now.
    var count: Int { relays.count }

    /// `protocols`: the TLS vhost's protocol list (one raw protocol named `protocolName`), owned by the server.
    init(loop: EventLoop, protocols: UnsafePointer<lws_protocols>, logger: Logger) {
        self.loop = loop
        self.protocols = protocols
        self.logger = logger
    }

    deinit {
        closeAll()
        cStrings.forEach { free($0) }
    }

    /// Creates the first TLS vhost on `context`. Throws with the reason when the files cannot be read or loaded.
    func start(context: OpaquePointer, files: TLSFiles) throws {
        self.context = context
        vhost = try makeVhost(files)
    }

    /// Loads `files` into a new TLS vhost for the connections accepted from now on; on failure the current one
    /// stays and the error says why.
    func reload(_ files: TLSFiles) throws {
        guard context != nil else { return }
        vhost = try makeVhost(files)
    }

    private func makeVhost(_ files: TLSFiles) throws -> OpaquePointer {
        guard let context else { throw WebSocketServerError.tlsFailed("the server is not running") }
        if let problem = files.unreadable() { throw WebSocketServerError.tlsFailed(problem) }
        generation += 1
        func keep(_ text: String) -> UnsafeMutablePointer<CChar> {
            let copy = strdup(text)!
            cStrings.append(copy)
            return copy
        }
        var info = lws_context_creation_info()
        info.port = Int32(CONTEXT_PORT_NO_LISTEN_SERVER)
        info.protocols = protocols
        info.vhost_name = UnsafePointer(keep("agentchat-tls-\(generation)"))
        info.options = UInt64(LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT)
        info.ssl_cert_filepath = UnsafePointer(keep(files.certificate))
        info.ssl_private_key_filepath = UnsafePointer(keep(files.privateKey))
        // HTTP/1.1 only: HTTP/2 in libwebsockets 4.1.6 has unfixed CVEs, and a client offering only h2 gets no ALPN.
        info.alpn = UnsafePointer(keep("http/1.1"))
        info.ssl_options_set = agentchat_tls_minimum_version_options()
        guard let created = lws_create_vhost(context, &info) else {
            throw WebSocketServerError.tlsFailed(
                "cannot use the TLS certificate \(files.certificate) with the key \(files.privateKey): not PEM, or "
                    + "the key does not belong to the certificate (libwebsockets' log says more)")
        }
        return created
    }

    /// Takes a just-accepted TCP connection (its descriptor now belongs to libwebsockets, which closes it if the
    /// adoption fails).
    func adopt(_ fd: Int32) {
        guard let vhost else {
            _ = Glibc.close(fd)
            return
        }
        var descriptor = lws_sock_file_fd_type()
        descriptor.sockfd = fd
        let adopted = Self.protocolName.withCString {
            lws_adopt_descriptor_vhost(vhost, lws_adoption_type(rawValue: LWS_ADOPT_SOCKET.rawValue
                                                                | LWS_ADOPT_ALLOW_SSL.rawValue),
                                       descriptor, $0, nil)
        }
        if adopted == nil { logger.warning("could not adopt a TLS connection") }
    }

    /// The client address of a plaintext connection that came through a relay, found by its descriptor.
    func peerAddress(ofPlaintextFD fd: Int32) -> String? {
        guard !peersByInode.isEmpty else { return nil }
        var status = stat()
        guard fstat(fd, &status) == 0 else { return nil }
        return peersByInode[UInt64(status.st_ino)]
    }

    // MARK: libwebsockets callbacks (the TLS side)

    func handle(_ wsi: OpaquePointer, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
                _ input: UnsafeMutableRawPointer?, _ length: Int) -> Int32
    {
        switch reason {
        case LWS_CALLBACK_RAW_ADOPT:
            return opened(wsi, user)
        case LWS_CALLBACK_RAW_RX:
            guard let relay = relay(user) else { return -1 }
            if !relay.clearedHandshakeTimeout {
                // libwebsockets leaves the timeout it set when the handshake finished running on raw connections.
                relay.clearedHandshakeTimeout = true
                lws_set_timeout(wsi, NO_PENDING_TIMEOUT, 0)
            }
            guard let input, length > 0 else { return 0 }
            return fromClient(relay, UnsafeRawBufferPointer(start: input, count: length)) ? 0 : -1
        case LWS_CALLBACK_RAW_WRITEABLE:
            guard let relay = relay(user) else { return -1 }
            return writeable(relay, wsi)
        case LWS_CALLBACK_RAW_CLOSE:
            if let relay = relay(user) {
                relay.wsi = nil
                finish(relay)
            }
            return 0
        default:
            return 0
        }
    }

    private func relay(_ user: UnsafeMutableRawPointer?) -> Relay? {
        guard let user else { return nil }
        let id = user.load(as: UInt64.self)
        return id == 0 ? nil : relays[id]
    }

    private func opened(_ wsi: OpaquePointer, _ user: UnsafeMutableRawPointer?) -> Int32 {
        guard let user else { return -1 }
        var pair: [Int32] = [-1, -1]
        let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
        guard socketpair(AF_UNIX, type, 0, &pair) == 0 else {
            logger.warning("socketpair failed for a TLS connection", metadata: ["errno": "\(errno)"])
            return -1
        }
        var status = stat()
        fstat(pair[1], &status)
        let poll = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        guard uv_poll_init(loop.uvLoop, poll, pair[0]) == 0 else {
            poll.deallocate()
            _ = Glibc.close(pair[0])
            _ = Glibc.close(pair[1])
            return -1
        }
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        let id = nextID
        nextID += 1
        user.storeBytes(of: id, as: UInt64.self)
        let relay = Relay(id: id, wsi: wsi, fd: pair[0], poll: poll, plaintextInode: UInt64(status.st_ino),
                          peer: WebSocketServer.peerAddress(wsi))
        relays[id] = relay
        relayByPoll[UInt(bitPattern: poll)] = id
        peersByInode[relay.plaintextInode] = relay.peer
        watch(relay, Int32(UV_READABLE.rawValue))
        plaintext?(pair[1])
        return 0
    }

    /// Writes decrypted client bytes into the pair; what does not fit waits, with TLS reading paused. False when the
    /// HTTP side is gone.
    private func fromClient(_ relay: Relay, _ bytes: UnsafeRawBufferPointer) -> Bool {
        guard relay.fd >= 0 else { return false }
        if !relay.toServer.isEmpty {
            relay.toServer += bytes
            return true
        }
        var offset = 0
        while offset < bytes.count {
            let n = send(relay.fd, bytes.baseAddress! + offset, bytes.count - offset, Int32(MSG_NOSIGNAL))
            if n > 0 {
                offset += n
            } else if n < 0 && errno == EINTR {
                continue
            } else if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) {
                relay.toServer = Array(bytes[offset...])
                if let wsi = relay.wsi { lws_rx_flow_control(wsi, 0) }
                watch(relay, relay.pollEvents | Int32(UV_WRITABLE.rawValue))
                return true
            } else {
                return false
            }
        }
        return true
    }

    private func writeable(_ relay: Relay, _ wsi: OpaquePointer) -> Int32 {
        if let frame = relay.toClient.popFirst() {
            relay.toClientBytes -= frame.count
            guard lws_write(wsi, frame.payload, frame.count, agentchat_lws_write_raw()) >= 0 else { return -1 }
            if relay.fd >= 0, relay.pollEvents & Int32(UV_READABLE.rawValue) == 0,
                relay.toClientBytes < Self.clientBacklogLimit
            {
                watch(relay, relay.pollEvents | Int32(UV_READABLE.rawValue))
            }
            if !relay.toClient.isEmpty || relay.serverClosed { lws_callback_on_writable(wsi) }
            return 0
        }
        // Everything the HTTP side wrote went out (libwebsockets writes what it buffered before it closes).
        return relay.serverClosed ? -1 : 0
    }

    // MARK: The pair (the HTTP side)

    fileprivate func pairEvent(_ poll: UnsafeMutablePointer<uv_poll_t>, status: Int32, events: Int32) {
        guard let id = relayByPoll[UInt(bitPattern: poll)], let relay = relays[id] else { return }
        if status < 0 { return serverGone(relay) }
        if events & Int32(UV_WRITABLE.rawValue) != 0, !relay.toServer.isEmpty {
            let pending = relay.toServer
            relay.toServer = []
            let ok = pending.withUnsafeBytes { fromClient(relay, $0) }
            if !ok { return serverGone(relay) }
            if relay.toServer.isEmpty {
                watch(relay, relay.pollEvents & ~Int32(UV_WRITABLE.rawValue))
                if let wsi = relay.wsi { lws_rx_flow_control(wsi, 1) }
            }
        }
        if events & Int32(UV_READABLE.rawValue) != 0 { readServer(relay) }
    }

    private func readServer(_ relay: Relay) {
        while relay.fd >= 0, relay.toClientBytes < Self.clientBacklogLimit {
            let n = scratch.withUnsafeMutableBytes { recv(relay.fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                relay.toClient.append(OutboundFrame(Array(scratch[0..<n])))
                relay.toClientBytes += n
                if let wsi = relay.wsi { lws_callback_on_writable(wsi) }
                continue
            }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return }
            return serverGone(relay)
        }
        if relay.fd >= 0 { watch(relay, relay.pollEvents & ~Int32(UV_READABLE.rawValue)) }
    }

    /// The HTTP side closed (or failed): stop watching the pair, and close the TLS connection once what is queued for
    /// the client went out.
    private func serverGone(_ relay: Relay) {
        closePair(relay)
        relay.serverClosed = true
        if let wsi = relay.wsi { lws_callback_on_writable(wsi) } else { finish(relay) }
    }

    /// The TLS connection is gone: close the pair (the HTTP side then sees its end) and forget the relay.
    private func finish(_ relay: Relay) {
        closePair(relay)
        relays[relay.id] = nil
        relayByPoll[UInt(bitPattern: relay.poll)] = nil
        peersByInode[relay.plaintextInode] = nil
    }

    private func watch(_ relay: Relay, _ events: Int32) {
        guard relay.fd >= 0, events != relay.pollEvents || events == 0 else { return }
        relay.pollEvents = events
        if events == 0 { uv_poll_stop(relay.poll) } else { uv_poll_start(relay.poll, events, tlsPairEvent) }
    }

    private func closePair(_ relay: Relay) {
        guard relay.fd >= 0 else { return }
        if !loop.isClosed {
            relay.poll.withMemoryRebound(to: uv_handle_t.self, capacity: 1) {
                guard uv_is_closing($0) == 0 else { return }
                uv_poll_stop(relay.poll)
                uv_close($0, freeTLSPairPoll)
            }
        }
        _ = Glibc.close(relay.fd)
        relay.fd = -1
        relay.toServer = []
    }

    /// Closes every pair (the server is stopping; libwebsockets closes the TLS connections with its context).
    func closeAll() {
        for relay in relays.values { closePair(relay) }
        relays.removeAll()
        relayByPoll.removeAll()
        peersByInode.removeAll()
        context = nil
        vhost = nil
    }
}

private func tlsPairEvent(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    guard let poll, let data = poll.pointee.data else { return }
    Unmanaged<TLSTerminator>.fromOpaque(data).takeUnretainedValue().pairEvent(poll, status: status, events: events)
}

private func freeTLSPairPoll(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    UnsafeMutableRawPointer(handle)?.deallocate()
}
