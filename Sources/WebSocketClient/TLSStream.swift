import COpenSSL
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// What a TLS connection trusts, and the name it checks.
public struct TLSOptions: Sendable, Equatable {
    /// A PEM file of CA certificates to trust in addition to the system's default store (e.g. a private CA).
    public var caFile: String?
    /// The name sent as SNI and checked against the certificate; nil: the host connected to. An IP address is
    /// checked against the certificate's IP address entries and not sent as SNI.
    public var serverName: String?

    public init(caFile: String? = nil, serverName: String? = nil) {
        self.caFile = caFile
        self.serverName = serverName
    }
}

/// TLS (OpenSSL) over a `BlockingTCPSocket`: a client that always verifies the server's certificate chain (the
/// system's CAs plus ``TLSOptions/caFile``) and name, speaks TLS 1.2 or 1.3, offers ALPN `http/1.1`, and sends
/// close_notify when it closes.
///
/// OpenSSL reads and writes two memory BIOs; this class moves the ciphertext between them and the socket, so every
/// wait is the socket's poll() with the caller's deadline, and every write goes through `send(MSG_NOSIGNAL)` (a
/// peer that went away is an error, never SIGPIPE). Not thread-safe: use from one thread at a time.
public final class TLSStream: ByteStream, @unchecked Sendable {
    private let socket: BlockingTCPSocket
    /// `SSL_CTX *` and `SSL *`; nil once closed. The SSL owns the two BIOs.
    private var context: OpaquePointer?
    private var ssl: OpaquePointer?
    /// Ciphertext from the socket, for OpenSSL to read.
    private let networkIn: OpaquePointer
    /// Ciphertext from OpenSSL, for the socket.
    private let networkOut: OpaquePointer
    /// The name the certificate was checked against.
    public let serverName: String
    /// After a fatal TLS or socket error (or a partial write) no close_notify is sent: the stream is garbage.
    private var broken = false
    private var handshakeDone = false
    private var shutdownSent = false

    /// Connects to `host:port` and performs the TLS handshake, all within `timeout` seconds.
    ///
    /// - Throws: `WebSocketError.tlsOptions` when the options cannot be used (e.g. an unreadable CA file, checked
    ///   after connecting); `.tls` when the certificate does not verify (`certificate verify failed: <OpenSSL's reason>`) or the handshake fails
    ///   otherwise (e.g. `wrong version number` from a plain-HTTP server); `.timeout`, `.addressResolution`,
    ///   `.system` from connecting.
    public static func connect(host: String, port: Int, sourceAddress: String? = nil, options: TLSOptions,
                               timeout: Double) throws -> TLSStream {
        let deadline = Deadline(seconds: timeout)
        let socket = try BlockingTCPSocket(host: host, port: port, sourceAddress: sourceAddress, timeout: timeout)
        let stream: TLSStream
        do {
            stream = try TLSStream(socket: socket, host: host, options: options)
        } catch {
            socket.close()
            throw error
        }
        do {
            try stream.handshake(deadline: deadline)
        } catch {
            stream.broken = true
            stream.close()
            throw error
        }
        return stream
    }

    /// Sets up the context and the connection; frees what it made when it fails.
    private init(socket: BlockingTCPSocket, host: String, options: TLSOptions) throws {
        self.socket = socket
        let name = options.serverName ?? host
        guard !name.isEmpty else { throw WebSocketError.tlsOptions("no server name to verify the certificate against") }
        serverName = name
        ERR_clear_error()
        guard let context = SSL_CTX_new(TLS_client_method()) else {
            throw WebSocketError.tls("cannot create a TLS context: \(Self.drainErrors())")
        }
        var made: OpaquePointer? = nil
        var ok = false
        defer {
            if !ok {
                if let made { SSL_free(made) }
                SSL_CTX_free(context)
            }
        }
        guard agentchat_ssl_ctx_require_tls12(context) == 1 else {
            throw WebSocketError.tls("cannot require TLS 1.2: \(Self.drainErrors())")
        }
        SSL_CTX_set_verify(context, SSL_VERIFY_PEER, nil)
        guard SSL_CTX_set_default_verify_paths(context) == 1 else {
            throw WebSocketError.tls("cannot load the system's CA certificates: \(Self.drainErrors())")
        }
        if let caFile = options.caFile {
            guard access(caFile, R_OK) == 0 else {
                throw WebSocketError.tlsOptions("cannot read the CA file \(caFile): \(String(cString: strerror(errno)))")
            }
            guard SSL_CTX_load_verify_locations(context, caFile, nil) == 1 else {
                throw WebSocketError.tlsOptions("cannot load the CA file \(caFile): \(Self.drainErrors())")
            }
        }
        made = SSL_new(context)
        guard let ssl = made else { throw WebSocketError.tls("cannot create a TLS connection: \(Self.drainErrors())") }
        guard let networkIn = BIO_new(BIO_s_mem()) else { throw WebSocketError.tls("cannot create a BIO") }
        guard let networkOut = BIO_new(BIO_s_mem()) else {
            BIO_free(networkIn)
            throw WebSocketError.tls("cannot create a BIO")
        }
        agentchat_bio_mem_retry_when_empty(networkIn)
        agentchat_bio_mem_retry_when_empty(networkOut)
        SSL_set_bio(ssl, networkIn, networkOut)  // The SSL owns both from here on.
        self.networkIn = networkIn
        self.networkOut = networkOut

        let alpn: [UInt8] = [8] + Array("http/1.1".utf8)
        guard SSL_set_alpn_protos(ssl, alpn, UInt32(alpn.count)) == 0 else {
            throw WebSocketError.tls("cannot offer ALPN http/1.1: \(Self.drainErrors())")
        }
        if Self.isIPAddress(name) {
            guard X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), name) == 1 else {
                throw WebSocketError.tls("cannot verify against the address \(name): \(Self.drainErrors())")
            }
        } else {
            guard agentchat_ssl_set_sni(ssl, name) == 1 else {
                throw WebSocketError.tls("cannot send the server name \(name): \(Self.drainErrors())")
            }
            SSL_set_hostflags(ssl, UInt32(X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS))
            guard SSL_set1_host(ssl, name) == 1 else {
                throw WebSocketError.tls("cannot verify against the name \(name): \(Self.drainErrors())")
            }
        }
        SSL_set_connect_state(ssl)
        self.context = context
        self.ssl = ssl
        ok = true
    }

    deinit { close() }

    public var isOpen: Bool { ssl != nil && socket.isOpen }
    public var localPort: Int? { socket.localPort }

    /// The protocol version negotiated, e.g. `TLSv1.3`.
    public var protocolVersion: String? {
        guard let ssl, let version = SSL_get_version(ssl) else { return nil }
        return String(cString: version)
    }

    /// The ALPN protocol the server selected, if any.
    public var negotiatedALPN: String? {
        guard let ssl else { return nil }
        var data: UnsafePointer<UInt8>? = nil
        var length: UInt32 = 0
        SSL_get0_alpn_selected(ssl, &data, &length)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeBufferPointer(start: data, count: Int(length)), as: UTF8.self)
    }

    // MARK: - ByteStream

    public func read(maxBytes: Int, deadline: Deadline) throws -> [UInt8]? {
        guard let ssl, socket.isOpen else { throw WebSocketError.notConnected }
        var buffer = [UInt8](repeating: 0, count: max(1, maxBytes))
        while true {
            ERR_clear_error()
            var count = 0
            let result = buffer.withUnsafeMutableBytes { SSL_read_ex(ssl, $0.baseAddress, $0.count, &count) }
            if result == 1 { return Array(buffer[0..<count]) }
            switch SSL_get_error(ssl, result) {
            case SSL_ERROR_WANT_READ:
                // OpenSSL may have something to say first (a TLS 1.3 key update answer).
                try flushOutput(deadline: deadline)
                try fillInput(deadline: deadline)
            case SSL_ERROR_WANT_WRITE:
                try flushOutput(deadline: deadline)
            case SSL_ERROR_ZERO_RETURN:
                return nil  // close_notify: the clean end of the stream.
            default:
                broken = true
                throw WebSocketError.tls("read failed: \(Self.drainErrors())")
            }
        }
    }

    public func write(_ bytes: [UInt8], deadline: Deadline) throws {
        guard let ssl, socket.isOpen else { throw WebSocketError.notConnected }
        try flushOutput(deadline: deadline)
        var offset = 0
        while offset < bytes.count {
            ERR_clear_error()
            var written = 0
            let result = bytes.withUnsafeBytes { raw in
                SSL_write_ex(ssl, raw.baseAddress! + offset, min(raw.count - offset, 1 << 16), &written)
            }
            if result == 1 {
                offset += written
                try flushOutput(deadline: deadline)
                continue
            }
            switch SSL_get_error(ssl, result) {
            case SSL_ERROR_WANT_READ: try fillInput(deadline: deadline)
            case SSL_ERROR_WANT_WRITE: try flushOutput(deadline: deadline)
            default:
                broken = true
                throw WebSocketError.tls("write failed: \(Self.drainErrors())")
            }
        }
    }

    public func shutdownWrite() {
        sendCloseNotify()
        socket.shutdownWrite()
    }

    /// Sends close_notify (without waiting for the peer's), frees the TLS state and closes the socket. Idempotent.
    public func close() {
        sendCloseNotify()
        if let ssl { SSL_free(ssl) }
        if let context { SSL_CTX_free(context) }
        ssl = nil
        context = nil
        socket.close()
    }

    // MARK: - Internals

    private func handshake(deadline: Deadline) throws {
        guard let ssl else { throw WebSocketError.notConnected }
        while true {
            ERR_clear_error()
            let result = SSL_do_handshake(ssl)
            let error = SSL_get_error(ssl, result)
            // The ClientHello, or an alert telling the server why we give up.
            if result == 1 || error == SSL_ERROR_WANT_READ || error == SSL_ERROR_WANT_WRITE {
                try flushOutput(deadline: deadline)
            } else {
                try? flushOutput(deadline: Deadline(seconds: 0))
            }
            if result == 1 { break }
            switch error {
            case SSL_ERROR_WANT_READ:
                do {
                    try fillInput(deadline: deadline)
                } catch WebSocketError.connectionClosed {
                    throw WebSocketError.tls("the server closed the connection during the TLS handshake")
                }
            case SSL_ERROR_WANT_WRITE:
                continue
            default:
                throw handshakeError()
            }
        }
        // SSL_VERIFY_PEER already failed the handshake otherwise; checked again so no path connects unverified.
        guard SSL_get0_peer_certificate(ssl) != nil else {
            throw WebSocketError.tls("the server sent no certificate")
        }
        let verdict = SSL_get_verify_result(ssl)
        guard verdict == Int(X509_V_OK) else { throw WebSocketError.tls(Self.verifyFailure(verdict, name: serverName)) }
        handshakeDone = true
    }

    private func handshakeError() -> WebSocketError {
        guard let ssl else { return .notConnected }
        let verdict = SSL_get_verify_result(ssl)
        if verdict != Int(X509_V_OK) {
            ERR_clear_error()
            return .tls(Self.verifyFailure(verdict, name: serverName))
        }
        return .tls("handshake failed: \(Self.drainErrors())")
    }

    private static func verifyFailure(_ verdict: Int, name: String) -> String {
        let reason = X509_verify_cert_error_string(verdict).map { String(cString: $0) } ?? "error \(verdict)"
        let mismatch = verdict == Int(X509_V_ERR_HOSTNAME_MISMATCH) || verdict == Int(X509_V_ERR_IP_ADDRESS_MISMATCH)
        return "certificate verify failed: \(reason)" + (mismatch ? " (the certificate is not for \(name))" : "")
    }

    /// Sends what OpenSSL wrote to its output BIO.
    private func flushOutput(deadline: Deadline) throws {
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while BIO_ctrl_pending(networkOut) > 0 {
            let count = chunk.withUnsafeMutableBytes { BIO_read(networkOut, $0.baseAddress, Int32($0.count)) }
            guard count > 0 else { return }
            do {
                try socket.write(Array(chunk[0..<Int(count)]), deadline: deadline)
            } catch {
                broken = true  // Part of a record may be out: nothing more can follow it.
                throw error
            }
        }
    }

    /// Waits for ciphertext from the socket and hands it to OpenSSL.
    private func fillInput(deadline: Deadline) throws {
        guard let chunk = try socket.read(maxBytes: 1 << 16, deadline: deadline) else {
            // EOF without close_notify: the stream may be truncated, so it is not a clean end.
            broken = true
            throw WebSocketError.connectionClosed
        }
        let taken = chunk.withUnsafeBytes { BIO_write(networkIn, $0.baseAddress, Int32($0.count)) }
        guard taken == Int32(chunk.count) else { throw WebSocketError.tls("cannot buffer \(chunk.count) bytes") }
    }

    private func sendCloseNotify() {
        guard let ssl, handshakeDone, !broken, !shutdownSent, socket.isOpen else { return }
        shutdownSent = true
        ERR_clear_error()
        _ = SSL_shutdown(ssl)
        // Best effort, never waiting: close must not block on a peer that does not read.
        try? flushOutput(deadline: Deadline(seconds: 0))
    }

    /// OpenSSL's queued errors, oldest first (then cleared), e.g. `certificate verify failed`.
    static func drainErrors() -> String {
        var reasons: [String] = []
        while true {
            let code = ERR_get_error()
            if code == 0 { break }
            if let reason = ERR_reason_error_string(code) {
                reasons.append(String(cString: reason))
            } else {
                var text = [CChar](repeating: 0, count: 256)
                ERR_error_string_n(code, &text, text.count)
                reasons.append(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
            }
        }
        return reasons.isEmpty ? "unknown error" : reasons.joined(separator: "; ")
    }

    static func isIPAddress(_ text: String) -> Bool {
        var v4 = in_addr()
        var v6 = in6_addr()
        return inet_pton(AF_INET, text, &v4) == 1 || inet_pton(AF_INET6, text, &v6) == 1
    }
}
