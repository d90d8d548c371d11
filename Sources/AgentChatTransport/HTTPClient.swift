import AgentChatCore
import AgentChatLoop
import CLibWebSockets
import CLibWebSocketsShims
import Foundation
import Logging

/// An HTTP/1.1 client on libwebsockets: its own context, with no listener, on the broker's libuv loop (a foreign
/// loop, as for `WebSocketServer`). One connection per request (`connection: close`), `http://` and `https://`
/// (OpenSSL through libwebsockets, with the system CA store and optionally one more CA file), redirects not
/// followed. Loop-bound: `start`, `send` and `shutdown` run on the loop thread, and every completion is called
/// there, exactly once, and never from inside `send`.
///
/// Header values are never logged: callers put secrets in them (`Authorization`). Failures are logged at debug
/// level with the method, scheme, host and port only.
///
/// Name resolution is libwebsockets 4.1's: Debian builds it without `LWS_WITH_SYS_ASYNC_DNS`, so a host name is
/// resolved with a blocking `getaddrinfo()` on the loop thread as the connection starts (an IP address is not).
///
/// C pointer ownership:
/// - `lws_context_user` holds this object unretained: `shutdown` destroys the context before it is released
///   (`deinit` checks).
/// - Each connection carries its request's `UInt64` id as `opaque_user_data` (a number, not a pointer); `exchanges`
///   maps ids to requests, so a callback for a request already answered finds nothing instead of freed memory.
/// - `exchange.wsi` is a borrowed pointer, cleared at `LWS_CALLBACK_WSI_DESTROY` (the last callback of every
///   connection); it is only used to kill a connection that timed out or is cut off by `shutdown`.
/// - `protocols`, `protocolName` and `readBuffer` are allocated here, outlive the context and are freed in `deinit`.
///   The strings of a connection (address, path, Host, method) are copied by libwebsockets during
///   `lws_client_connect_via_info`; the request body is an `OutboundFrame` (with `LWS_PRE` headroom) owned by the
///   exchange.
package final class HTTPClient {
    package enum Method: String, Sendable {
        case get = "GET"
        case post = "POST"
    }

    package struct Header: Equatable, Sendable {
        package var name: String
        package var value: String

        package init(_ name: String, _ value: String) {
            self.name = name
            self.value = value
        }
    }

    package struct Request: Sendable {
        package var method: Method
        /// An absolute `http://` or `https://` URL (see `HTTPClientURL`).
        package var url: String
        /// Sent in order, after the ones libwebsockets writes (`Host`, `connection: close`, `Pragma`,
        /// `Cache-Control`). `Host`, `Connection`, `Content-Length` and `Transfer-Encoding` may not be given;
        /// `Content-Length` is added for POST, `User-Agent` when absent.
        package var headers: [Header]
        package var body: [UInt8]
        /// From the call to the completion: connecting, sending and reading the whole response.
        package var timeoutSeconds: Double
        /// Response headers libwebsockets does not know by name (it keeps every standard one) to read back, e.g.
        /// `request-id`. Case-insensitive.
        package var extraResponseHeaders: [String]

        package init(method: Method, url: String, headers: [Header] = [], body: [UInt8] = [],
                     timeoutSeconds: Double = 30, extraResponseHeaders: [String] = [])
        {
            self.method = method
            self.url = url
            self.headers = headers
            self.body = body
            self.timeoutSeconds = timeoutSeconds
            self.extraResponseHeaders = extraResponseHeaders
        }
    }

    package struct Response: Equatable, Sendable {
        package var status: Int
        /// Lowercased names. Repeated headers come joined as libwebsockets joins them.
        package var headers: [String: String]
        package var body: [UInt8]

        package init(status: Int, headers: [String: String] = [:], body: [UInt8] = []) {
            self.status = status
            self.headers = headers
            self.body = body
        }

        package func header(_ name: String) -> String? { headers[name.lowercased()] }
    }

    package struct Configuration: Sendable {
        /// A PEM file of CA certificates trusted besides the system store (for a test server, a proxy).
        package var extraCAFile: String?
        /// A longer response body fails the request with `responseTooLarge`.
        package var maxResponseBodyBytes: Int
        package var userAgent: String

        package init(extraCAFile: String? = nil, maxResponseBodyBytes: Int = 1 << 20,
                     userAgent: String = "agentchat-broker")
        {
            self.extraCAFile = extraCAFile
            self.maxResponseBodyBytes = maxResponseBodyBytes
            self.userAgent = userAgent
        }
    }

    package typealias Completion = (Result<Response, HTTPClientError>) -> Void

    package let loop: EventLoop
    package let configuration: Configuration
    let logger: Logger

    private var context: OpaquePointer?
    /// Written with nil by libwebsockets when a destroyed context has finished closing (`pcontext`).
    private let contextSlot: UnsafeMutablePointer<OpaquePointer?>
    private let protocols: UnsafeMutablePointer<lws_protocols>
    private let protocolName: UnsafeMutablePointer<CChar>
    /// Where `lws_http_client_read` puts what it reads: `LWS_PRE` bytes of headroom, then `readChunk` bytes.
    private let readBuffer: UnsafeMutablePointer<CChar>
    private static let readChunk = 4096
    private var exchanges: [UInt64: Exchange] = [:]
    private var nextID: UInt64 = 1
    private var isShuttingDown = false
    private var shutdownTimer: LoopTimer?

    /// Requests sent and not yet answered.
    package var pendingCount: Int { exchanges.count }

    package init(loop: EventLoop, configuration: Configuration = .init(), logger: Logger) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.configuration = configuration
        self.logger = logger
        contextSlot = .allocate(capacity: 1)
        contextSlot.initialize(to: nil)
        protocolName = strdup("agentchat-http-client")!
        protocols = .allocate(capacity: 2)
        var client = agentchat_lws_protocols_terminator()
        client.name = UnsafePointer(protocolName)
        client.callback = clientCallback
        client.per_session_data_size = 0
        client.rx_buffer_size = 0
        protocols.initialize(to: client)
        (protocols + 1).initialize(to: agentchat_lws_protocols_terminator())
        readBuffer = .allocate(capacity: Int(agentchat_lws_pre()) + Self.readChunk)
    }

    deinit {
        precondition(context == nil, "HTTPClient released with a live context")
        protocols.deinitialize(count: 2)
        protocols.deallocate()
        free(protocolName)
        readBuffer.deallocate()
        contextSlot.deallocate()
    }

    /// Creates the context on the loop. Throws if libwebsockets refuses (e.g. an unreadable CA file).
    package func start() throws {
        loop.preconditionInEventLoop()
        precondition(context == nil && !isShuttingDown, "HTTPClient started twice")
        precondition(agentchat_lws_pre() <= OutboundFrame.headroom,
                     "LWS_PRE (\(agentchat_lws_pre())) is larger than OutboundFrame.headroom")
        if let file = configuration.extraCAFile, !FileManager.default.isReadableFile(atPath: file) {
            throw HTTPClientError.invalidRequest("CA file \(file) is not readable")
        }
        var info = lws_context_creation_info()
        info.port = CONTEXT_PORT_NO_LISTEN
        info.protocols = UnsafePointer(protocols)
        info.options = UInt64(LWS_SERVER_OPTION_LIBUV) | UInt64(LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT)
        info.user = Unmanaged.passUnretained(self).toOpaque()
        // Response heads: Stripe sends about 1 KB of headers; libwebsockets' default table is 4 KB.
        info.max_http_header_data = 8192
        // libwebsockets' own connect and response timeouts; each request's LoopTimer is the one that counts.
        info.timeout_secs = 300
        info.pcontext = contextSlot
        var foreignLoops: [UnsafeMutableRawPointer?] = [UnsafeMutableRawPointer(loop.uvLoop)]
        let created: OpaquePointer? = Self.withOptionalCString(configuration.extraCAFile) { caFile in
            info.client_ssl_ca_filepath = caFile
            return foreignLoops.withUnsafeMutableBufferPointer { loops in
                info.foreign_loops = loops.baseAddress
                return lws_create_context(&info)
            }
        }
        guard let created else { throw HTTPClientError.connectionFailed("libwebsockets refused to create a context") }
        context = created
        contextSlot.pointee = created
    }

    /// Sends `request`; `completion` runs later on the loop thread, once.
    package func send(_ request: Request, completion: @escaping Completion) {
        loop.preconditionInEventLoop()
        let id = nextID
        nextID += 1
        let exchange = Exchange(id: id, request: request, completion: completion)
        exchanges[id] = exchange
        exchange.timer = LoopTimer(loop: loop) { [weak self] in self?.timerFired(id) }
        guard let context, !isShuttingDown else {
            finish(exchange, .failure(.shutDown))
            return
        }
        guard let target = HTTPClientURL(request.url) else {
            finish(exchange, .failure(.invalidRequest("not an absolute http(s) URL")))
            return
        }
        exchange.target = target
        if let problem = Self.headerProblem(request.headers) {
            finish(exchange, .failure(.invalidRequest(problem)))
            return
        }
        exchange.headerBlock = headerBlock(for: request)
        if !request.body.isEmpty { exchange.body = OutboundFrame(request.body) }
        let timeout = request.timeoutSeconds.isFinite ? min(max(0.001, request.timeoutSeconds), 86_400) : 86_400
        exchange.timer?.start(after: UInt64((timeout * 1000).rounded(.up)))

        var info = lws_client_connect_info()
        info.context = context
        info.port = Int32(target.port)
        info.ssl_connection = Int32(LCCSCF_HTTP_NO_FOLLOW_REDIRECT.rawValue)
        if target.isTLS { info.ssl_connection |= Int32(LCCSCF_USE_SSL.rawValue) }
        info.ietf_version_or_minus_one = -1
        info.opaque_user_data = UnsafeMutableRawPointer(bitPattern: UInt(id))
        let wsi: OpaquePointer? = target.host.withCString { address in
            target.path.withCString { path in
                target.hostHeader.withCString { host in
                    request.method.rawValue.withCString { method in
                        "http/1.1".withCString { alpn in
                            info.address = address
                            info.path = path
                            info.host = host
                            info.method = method
                            info.alpn = alpn
                            info.local_protocol_name = UnsafePointer(protocolName)
                            return lws_client_connect_via_info(&info)
                        }
                    }
                }
            }
        }
        if let wsi {
            exchange.wsi = wsi
        } else {
            // libwebsockets reports a failure inside the call by its return value alone (no CONNECTION_ERROR).
            finish(exchange, .failure(.connectionFailed("could not start a connection to \(target.origin)")))
        }
    }

    /// Fails every pending request with `shutDown`, closes their connections and destroys the context; then
    /// `completion` (on the loop thread).
    package func shutdown(completion: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        guard !isShuttingDown else { return }
        isShuttingDown = true
        for exchange in exchanges.values where exchange.outcome == nil {
            finish(exchange, .failure(.shutDown))
            kill(exchange)
        }
        guard let pending = context else {
            shutdownTimer = LoopTimer(loop: loop) { [weak self] in
                self?.shutdownTimer = nil
                completion()
            }
            shutdownTimer?.start(after: 0)
            return
        }
        context = nil
        let deadline = SystemTime.monotonicSeconds() + 2
        var lastDestroyCall = 0.0
        shutdownTimer = LoopTimer(loop: loop) { [weak self] in
            guard let self else { return }
            let now = SystemTime.monotonicSeconds()
            // As in WebSocketServer.shutdown: on a foreign loop destruction goes in stages, each advanced by another
            // lws_context_destroy() once the handles of the last one closed; libwebsockets then writes nil in the slot.
            if contextSlot.pointee == nil || now > deadline {
                shutdownTimer = nil
                completion()
            } else if now - lastDestroyCall > 0.05 {
                lastDestroyCall = now
                lws_context_destroy(pending)
            }
        }
        shutdownTimer?.start(after: 0, repeat: 10)
    }

    // MARK: Requests

    private final class Exchange {
        let id: UInt64
        let request: Request
        let completion: Completion
        var target: HTTPClientURL?
        var headerBlock: [UInt8] = []
        var body: OutboundFrame?
        var bodySent = false
        /// Borrowed; nil once libwebsockets destroyed the connection (or before it created one).
        var wsi: OpaquePointer?
        var status = 0
        var headers: [String: String] = [:]
        var received: [UInt8] = []
        /// Set once; the timer then delivers it.
        var outcome: Result<Response, HTTPClientError>?
        /// Fires first at the deadline; once there is an outcome, at once, to deliver it.
        var timer: LoopTimer?

        init(id: UInt64, request: Request, completion: @escaping Completion) {
            self.id = id
            self.request = request
            self.completion = completion
        }
    }

    private func finish(_ exchange: Exchange, _ outcome: Result<Response, HTTPClientError>) {
        guard exchange.outcome == nil else { return }
        exchange.outcome = outcome
        if case .failure(let error) = outcome {
            logger.debug("HTTP request failed", metadata: [
                "method": "\(exchange.request.method.rawValue)",
                "origin": "\(exchange.target?.origin ?? "-")",
                "error": "\(error)",
            ])
        }
        exchange.timer?.start(after: 0)
    }

    private func timerFired(_ id: UInt64) {
        guard let exchange = exchanges[id] else { return }
        guard let outcome = exchange.outcome else {
            finish(exchange, .failure(.timedOut(seconds: exchange.request.timeoutSeconds)))
            kill(exchange)
            return
        }
        exchanges[id] = nil
        exchange.timer?.stop()
        exchange.completion(outcome)
    }

    /// Closes the connection of a request that has its outcome; its remaining callbacks find it answered.
    private func kill(_ exchange: Exchange) {
        guard let wsi = exchange.wsi else { return }
        exchange.wsi = nil
        lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_SYNC)
    }

    /// The header lines this client adds after libwebsockets' own, ending in CRLF.
    private func headerBlock(for request: Request) -> [UInt8] {
        var text = ""
        if !request.headers.contains(where: { $0.name.lowercased() == "user-agent" }) {
            text += "User-Agent: \(configuration.userAgent)\r\n"
        }
        for header in request.headers { text += "\(header.name): \(header.value)\r\n" }
        if request.method == .post { text += "Content-Length: \(request.body.count)\r\n" }
        return Array(text.utf8)
    }

    /// Why these headers cannot be sent, or nil: names must be tokens, values must not hold CR, LF, NUL or other
    /// control bytes (but tab), and the framing headers are this client's.
    static func headerProblem(_ headers: [Header]) -> String? {
        let reserved: Set<String> = ["host", "connection", "content-length", "transfer-encoding"]
        let tokenPunctuation = Set("!#$%&'*+-.^_`|~".utf8)
        for header in headers {
            let name = header.name
            guard !name.isEmpty, name.utf8.allSatisfy({ byte in
                (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
                    || tokenPunctuation.contains(byte)
            }) else { return "header name \"\(name)\" is not a token" }
            guard !reserved.contains(name.lowercased()) else { return "header \(name) is set by the client" }
            guard header.value.utf8.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                return "the value of header \(name) holds a control character"
            }
        }
        return nil
    }

    // MARK: Callback dispatch

    fileprivate func handle(
        _ wsi: OpaquePointer, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
        _ input: UnsafeMutableRawPointer?, _ length: Int
    ) -> Int32 {
        let id = UInt64(UInt(bitPattern: lws_get_opaque_user_data(wsi)))
        guard id != 0, let exchange = exchanges[id], exchange.outcome == nil else {
            switch reason {
            case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER, LWS_CALLBACK_CLIENT_HTTP_WRITEABLE,
                LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP, LWS_CALLBACK_RECEIVE_CLIENT_HTTP,
                LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ, LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
                // Answered already (timed out, shut down, failed): nothing more is wanted from this connection.
                return -1
            case LWS_CALLBACK_WSI_DESTROY:
                if id != 0, let exchange = exchanges[id], exchange.wsi == wsi { exchange.wsi = nil }
                return 0
            default:
                return lws_callback_http_dummy(wsi, reason, user, input, length)
            }
        }
        switch reason {
        case LWS_CALLBACK_CLIENT_APPEND_HANDSHAKE_HEADER:
            return appendHeaders(exchange, wsi, input, length)
        case LWS_CALLBACK_CLIENT_HTTP_WRITEABLE:
            return writeBody(exchange, wsi)
        case LWS_CALLBACK_ESTABLISHED_CLIENT_HTTP:
            exchange.status = Int(lws_http_client_http_response(wsi))
            exchange.headers = Self.responseHeaders(wsi, extra: exchange.request.extraResponseHeaders)
            return 0
        case LWS_CALLBACK_RECEIVE_CLIENT_HTTP:
            // Drains what arrived; libwebsockets strips any chunked framing and calls back with
            // RECEIVE_CLIENT_HTTP_READ (and COMPLETED_CLIENT_HTTP at the end of the body) from inside.
            var buffer: UnsafeMutablePointer<CChar>? = readBuffer + Int(agentchat_lws_pre())
            var available = Int32(Self.readChunk)
            return lws_http_client_read(wsi, &buffer, &available) < 0 ? -1 : 0
        case LWS_CALLBACK_RECEIVE_CLIENT_HTTP_READ:
            guard exchange.received.count + length <= configuration.maxResponseBodyBytes else {
                finish(exchange, .failure(.responseTooLarge(limit: configuration.maxResponseBodyBytes)))
                return -1
            }
            if let input, length > 0 {
                exchange.received.append(contentsOf: UnsafeRawBufferPointer(start: input, count: length))
            }
            return 0
        case LWS_CALLBACK_COMPLETED_CLIENT_HTTP:
            finish(exchange, .success(Response(status: exchange.status, headers: exchange.headers,
                                               body: exchange.received)))
            // One request per connection: close it now rather than wait for the server to.
            return -1
        case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
            let reason = input.map { String(cString: $0.assumingMemoryBound(to: CChar.self)) } ?? "unknown"
            finish(exchange, .failure(.connectionFailed(reason)))
            return 0
        case LWS_CALLBACK_CLOSED_CLIENT_HTTP:
            finish(exchange, .failure(.connectionClosed))
            return 0
        case LWS_CALLBACK_WSI_DESTROY:
            if exchange.wsi == wsi { exchange.wsi = nil }
            finish(exchange, .failure(.connectionClosed))
            return 0
        default:
            return lws_callback_http_dummy(wsi, reason, user, input, length)
        }
    }

    private func appendHeaders(
        _ exchange: Exchange, _ wsi: OpaquePointer, _ input: UnsafeMutableRawPointer?, _ length: Int
    ) -> Int32 {
        // `input` is the `char **` where libwebsockets is writing the request head; `length` the room left.
        guard let input else { return -1 }
        let cursor = input.assumingMemoryBound(to: UnsafeMutablePointer<CChar>?.self)
        guard let start = cursor.pointee else { return -1 }
        let block = exchange.headerBlock
        guard block.count <= length else {
            finish(exchange, .failure(.invalidRequest("request headers longer than libwebsockets' buffer")))
            return -1
        }
        block.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress { UnsafeMutableRawPointer(start).copyMemory(from: base, byteCount: block.count) }
        }
        cursor.pointee = start + block.count
        if exchange.body != nil {
            lws_client_http_body_pending(wsi, 1)
            lws_callback_on_writable(wsi)
        }
        return 0
    }

    private func writeBody(_ exchange: Exchange, _ wsi: OpaquePointer) -> Int32 {
        guard let body = exchange.body, !exchange.bodySent else { return 0 }
        exchange.bodySent = true
        // libwebsockets keeps and sends later whatever the socket does not take now.
        guard lws_write(wsi, body.payload, body.count, LWS_WRITE_HTTP_FINAL) == body.count else {
            finish(exchange, .failure(.connectionFailed("could not send the request body")))
            return -1
        }
        lws_client_http_body_pending(wsi, 0)
        return 0
    }

    /// Every header of the response libwebsockets knows by name, plus the `extra` ones it keeps as unknown.
    private static func responseHeaders(_ wsi: OpaquePointer, extra: [String]) -> [String: String] {
        var headers: [String: String] = [:]
        for token in knownHeaderTokens {
            let total = Int(lws_hdr_total_length(wsi, token.index))
            guard total > 0 else { continue }
            var buffer = [CChar](repeating: 0, count: total + 1)
            guard lws_hdr_copy(wsi, &buffer, Int32(buffer.count), token.index) >= 0 else { continue }
            headers[token.name] = Self.text(buffer)
        }
        for name in extra {
            let key = name.lowercased()
            let lookup = key + ":"
            let total = Int(lws_hdr_custom_length(wsi, lookup, Int32(lookup.utf8.count)))
            guard total >= 0 else { continue }
            var buffer = [CChar](repeating: 0, count: total + 1)
            guard lws_hdr_custom_copy(wsi, &buffer, Int32(buffer.count), lookup, Int32(lookup.utf8.count)) >= 0
            else { continue }
            headers[key] = Self.text(buffer)
        }
        return headers
    }

    /// The header tokens of libwebsockets' table that name real headers (`content-type:`), without the request
    /// line and status line tokens (`get `, `http/1.1 `) or HTTP/2 pseudo-headers (`:status`).
    private static let knownHeaderTokens: [(index: lws_token_indexes, name: String)] = {
        var tokens: [(lws_token_indexes, String)] = []
        for raw in 0..<WSI_TOKEN_COUNT.rawValue {
            let token = lws_token_indexes(rawValue: raw)
            guard let text = lws_token_to_string(token) else { continue }
            let name = String(cString: text)
            guard name.hasSuffix(":"), !name.hasPrefix(":"), name.count > 1 else { continue }
            tokens.append((token, String(name.dropLast())))
        }
        return tokens
    }()

    /// The text before the terminating NUL of a buffer libwebsockets filled.
    private static func text(_ buffer: [CChar]) -> String {
        String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    private static func withOptionalCString<T>(_ text: String?, _ body: (UnsafePointer<CChar>?) -> T) -> T {
        guard let text else { return body(nil) }
        return text.withCString { body($0) }
    }
}

/// Why a request got no response.
package enum HTTPClientError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The request cannot be sent as given (URL, headers); nothing went on the wire.
    case invalidRequest(String)
    /// No connection, or TLS failed (libwebsockets' reason).
    case connectionFailed(String)
    /// The connection ended before a complete response.
    case connectionClosed
    case timedOut(seconds: Double)
    case responseTooLarge(limit: Int)
    /// The client is shutting down.
    case shutDown

    package var description: String {
        switch self {
        case .invalidRequest(let why): "invalid request: \(why)"
        case .connectionFailed(let why): "connection failed: \(why)"
        case .connectionClosed: "connection closed before a complete response"
        case .timedOut(let seconds): "no complete response within \(seconds) s"
        case .responseTooLarge(let limit): "response body larger than \(limit) bytes"
        case .shutDown: "HTTP client shut down"
        }
    }
}

/// The one libwebsockets callback of the client. Captures nothing; finds the client through the context.
private func clientCallback(
    _ wsi: OpaquePointer?, _ reason: lws_callback_reasons, _ user: UnsafeMutableRawPointer?,
    _ input: UnsafeMutableRawPointer?, _ length: Int
) -> Int32 {
    guard let wsi, let context = lws_get_context(wsi), let owner = lws_context_user(context) else {
        return lws_callback_http_dummy(wsi, reason, user, input, length)
    }
    return Unmanaged<HTTPClient>.fromOpaque(owner).takeUnretainedValue().handle(wsi, reason, user, input, length)
}
