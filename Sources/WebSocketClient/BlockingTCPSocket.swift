#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Errors of the WebSocket client and its socket layer.
public enum WebSocketError: Error, Sendable, Equatable, CustomStringConvertible {
    /// Nothing (or not a complete message) arrived before the timeout. The connection is still usable.
    case timeout
    /// The peer closed the TCP connection (EOF or reset).
    case connectionClosed
    /// The server answered the upgrade with something other than 101; carries the whole HTTP response.
    case upgradeRejected(HTTPResponseHead)
    /// The server answered 101 but the handshake is invalid (bad accept value, missing headers, unrequested subprotocol).
    case handshakeFailed(String)
    /// The peer violated RFC 6455 (masked server frame, bad UTF-8, bad fragmentation, oversize control frame...).
    case protocolViolation(String)
    /// Host or source address could not be resolved.
    case addressResolution(String)
    /// A system call failed.
    case system(operation: String, errno: Int32)
    /// TLS failed: the handshake (e.g. `certificate verify failed: unable to get local issuer certificate`, or
    /// `handshake failed: wrong version number` from a plain server) or a TLS record later on. The message carries
    /// OpenSSL's reason.
    case tls(String)
    /// The TLS options cannot be used (e.g. `cannot read the CA file /x.pem: No such file or directory`); nothing
    /// was sent.
    case tlsOptions(String)
    /// The client was already closed locally.
    case notConnected

    public var description: String {
        switch self {
        case .timeout: "timed out"
        case .connectionClosed: "connection closed by peer"
        case .upgradeRejected(let r): "upgrade rejected with HTTP \(r.status): \(r.bodyText)"
        case .handshakeFailed(let m): "handshake failed: \(m)"
        case .protocolViolation(let m): "protocol violation: \(m)"
        case .addressResolution(let m): "address resolution failed: \(m)"
        case .system(let op, let e): "\(op) failed: \(String(cString: strerror(e))) (errno \(e))"
        case .tls(let m): "TLS: \(m)"
        case .tlsOptions(let m): "TLS options: \(m)"
        case .notConnected: "not connected"
        }
    }

    /// The HTTP status of a rejected upgrade, else nil.
    public var httpStatus: Int? {
        if case .upgradeRejected(let r) = self { return r.status }
        return nil
    }
}

/// An HTTP response head (and body, if any), as received during a failed upgrade.
public struct HTTPResponseHead: Sendable, Equatable {
    public var status: Int
    public var reason: String
    /// Header names lowercased; repeated headers joined with ", ".
    public var headers: [String: String]
    public var body: [UInt8]
    public var bodyText: String { String(decoding: body, as: UTF8.self) }

    public init(status: Int, reason: String, headers: [String: String], body: [UInt8]) {
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
    }

    /// Parses `HTTP/1.1 <status> <reason>\r\n<headers>\r\n` (the bytes before the blank line, without it).
    public static func parse(head: [UInt8]) throws -> HTTPResponseHead {
        let text = String(decoding: head, as: UTF8.self)
        var lines = text.components(separatedByCRLF: ())
        guard !lines.isEmpty else { throw WebSocketError.handshakeFailed("empty HTTP response") }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/"), let status = Int(parts[1]) else {
            throw WebSocketError.handshakeFailed("malformed status line: \(statusLine)")
        }
        var headers: [String: String] = [:]
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].trimmingASCIIWhitespace().lowercased()
            let value = line[line.index(after: colon)...].trimmingASCIIWhitespace()
            if let existing = headers[name] { headers[name] = existing + ", " + value } else { headers[name] = value }
        }
        return HTTPResponseHead(status: status, reason: parts.count > 2 ? String(parts[2]) : "",
                                headers: headers, body: [])
    }
}

extension String {
    /// Lines split on LF, with a trailing CR removed from each.
    func components(separatedByCRLF: Void) -> [String] {
        // Work on bytes: "\r\n" is a single Character, so Character-based splitting would miss it.
        Array(utf8).split(separator: 10, omittingEmptySubsequences: false).map { line in
            String(decoding: line.last == 13 ? line.dropLast() : line, as: UTF8.self)
        }
    }
}

extension StringProtocol {
    func trimmingASCIIWhitespace() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}

/// Finds `\r\n\r\n` in `buffer`; returns the index of its first byte.
func findHeaderEnd(_ buffer: [UInt8]) -> Int? {
    guard buffer.count >= 4 else { return nil }
    for i in 0...(buffer.count - 4)
    where buffer[i] == 13 && buffer[i + 1] == 10 && buffer[i + 2] == 13 && buffer[i + 3] == 10 {
        return i
    }
    return nil
}

/// A point in time after which a blocking operation gives up.
public struct Deadline: Sendable {
    public let instant: ContinuousClock.Instant
    public init(seconds: Double) {
        instant = .now + .nanoseconds(Int64((max(0, seconds) * 1e9).rounded()))
    }
    /// Remaining time in whole milliseconds for poll(), rounded up, at least 0.
    public var remainingMilliseconds: Int32 {
        let remaining = ContinuousClock.now.duration(to: instant)
        if remaining <= .zero { return 0 }
        let (s, atto) = remaining.components
        let ms = s * 1000 + (atto + 999_999_999_999_999) / 1_000_000_000_000_000
        return Int32(clamping: ms)
    }
    public var hasPassed: Bool { ContinuousClock.now >= instant }
}

/// A non-blocking TCP socket driven with poll(), offering blocking calls with timeouts.
///
/// Low-level building block shared by `WebSocketClient` and test probes. Not thread-safe: use from one thread at a time.
public final class BlockingTCPSocket: ByteStream, @unchecked Sendable {
    public private(set) var fd: Int32
    public var isOpen: Bool { fd >= 0 }

    /// Connects to `host:port` (numeric address or name), optionally binding `sourceAddress` first,
    /// giving up after `timeout` seconds. TCP_NODELAY is enabled.
    public init(host: String, port: Int, sourceAddress: String? = nil, timeout: Double) throws {
        fd = -1
        let deadline = Deadline(seconds: timeout)
        let addresses = try Self.resolve(host: host, port: port, numericOnly: false)
        var lastError: WebSocketError = .addressResolution("no addresses for \(host)")
        for (family, storage, length) in addresses {
            do {
                fd = try Self.connectOne(family: family, address: storage, length: length,
                                         sourceAddress: sourceAddress, deadline: deadline)
                return
            } catch let e as WebSocketError {
                lastError = e
                if case .timeout = e { break }
            }
        }
        throw lastError
    }

    /// Takes ownership of an already connected descriptor (e.g. from accept()); makes it non-blocking.
    public init(adopting fd: Int32) {
        self.fd = fd
        let flags = fcntl(fd, F_GETFL, 0)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close() }

    /// The local port of the connection (nil when closed or unknown).
    public var localPort: Int? {
        guard fd >= 0 else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else { return nil }
        // sin_port and sin6_port sit at the same offset, right after the family.
        return withUnsafeBytes(of: &storage) { Int(UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self))) }
    }

    /// Closes the descriptor (idempotent).
    public func close() {
        if fd >= 0 {
            _ = sysClose(fd)
            fd = -1
        }
    }

    /// Half-closes the sending direction.
    public func shutdownWrite() {
        if fd >= 0 { _ = shutdown(fd, Int32(SHUT_WR)) }
    }

    /// Writes every byte or throws (`.timeout`, `.connectionClosed` on EPIPE/ECONNRESET, `.system`).
    public func write(_ bytes: [UInt8], timeout: Double) throws {
        try write(bytes, deadline: Deadline(seconds: timeout))
    }

    /// Writes every byte before `deadline` or throws (`.timeout`, `.connectionClosed` on EPIPE/ECONNRESET,
    /// `.system`).
    public func write(_ bytes: [UInt8], deadline: Deadline) throws {
        guard fd >= 0 else { throw WebSocketError.notConnected }
        var sent = 0
        while sent < bytes.count {
            let n = bytes.withUnsafeBytes { raw in
                send(fd, raw.baseAddress! + sent, raw.count - sent, sendFlags)
            }
            if n > 0 { sent += n; continue }
            let err = errno
            if n < 0 && err == EINTR { continue }
            if n < 0 && (err == EAGAIN || err == EWOULDBLOCK) {
                try waitFor(events: Int16(POLLOUT), deadline: deadline)
                continue
            }
            if err == EPIPE || err == ECONNRESET { throw WebSocketError.connectionClosed }
            throw WebSocketError.system(operation: "send", errno: err)
        }
    }

    /// Reads up to `maxBytes`, waiting until `deadline`. Returns nil at EOF; throws `.timeout` if nothing arrived,
    /// `.connectionClosed` on ECONNRESET.
    public func read(maxBytes: Int = 65536, deadline: Deadline) throws -> [UInt8]? {
        guard fd >= 0 else { throw WebSocketError.notConnected }
        var buffer = [UInt8](repeating: 0, count: maxBytes)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress!, $0.count, 0) }
            if n > 0 { return Array(buffer[0..<n]) }
            if n == 0 { return nil }
            let err = errno
            if err == EINTR { continue }
            if err == EAGAIN || err == EWOULDBLOCK {
                try waitFor(events: Int16(POLLIN), deadline: deadline)
                continue
            }
            if err == ECONNRESET { throw WebSocketError.connectionClosed }
            throw WebSocketError.system(operation: "recv", errno: err)
        }
    }

    /// Reads up to `maxBytes` within `timeout` seconds.
    public func read(maxBytes: Int = 65536, timeout: Double) throws -> [UInt8]? {
        try read(maxBytes: maxBytes, deadline: Deadline(seconds: timeout))
    }

    private func waitFor(events: Int16, deadline: Deadline) throws {
        while true {
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let r = poll(&pfd, 1, deadline.remainingMilliseconds)
            if r > 0 { return }
            if r == 0 { throw WebSocketError.timeout }
            if errno == EINTR { continue }
            throw WebSocketError.system(operation: "poll", errno: errno)
        }
    }

    // MARK: - Connecting

    private static func connectOne(family: Int32, address: sockaddr_storage, length: socklen_t,
                                   sourceAddress: String?, deadline: Deadline) throws -> Int32 {
        let s = socket(family, sockStreamType, 0)
        guard s >= 0 else { throw WebSocketError.system(operation: "socket", errno: errno) }
        var ok = false
        defer { if !ok { _ = sysClose(s) } }
        var one: Int32 = 1
        _ = setsockopt(s, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        #if canImport(Darwin)
        _ = setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, socklen_t(MemoryLayout<Int32>.size))
        #endif
        if let sourceAddress {
            let sources = try resolve(host: sourceAddress, port: 0, numericOnly: true)
            guard var src = sources.first(where: { $0.family == family }) else {
                throw WebSocketError.addressResolution("source address \(sourceAddress) has a different family")
            }
            let r = withUnsafePointer(to: &src.storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(s, $0, src.length) }
            }
            guard r == 0 else { throw WebSocketError.system(operation: "bind \(sourceAddress)", errno: errno) }
        }
        let flags = fcntl(s, F_GETFL, 0)
        _ = fcntl(s, F_SETFL, flags | O_NONBLOCK)
        var addr = address
        let r = withUnsafePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(s, $0, length) }
        }
        if r != 0 {
            guard errno == EINPROGRESS || errno == EINTR else {
                throw WebSocketError.system(operation: "connect", errno: errno)
            }
            while true {
                var pfd = pollfd(fd: s, events: Int16(POLLOUT), revents: 0)
                let p = poll(&pfd, 1, deadline.remainingMilliseconds)
                if p > 0 { break }
                if p == 0 { throw WebSocketError.timeout }
                if errno != EINTR { throw WebSocketError.system(operation: "poll", errno: errno) }
            }
            var soError: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            _ = getsockopt(s, SOL_SOCKET, SO_ERROR, &soError, &len)
            if soError != 0 { throw WebSocketError.system(operation: "connect", errno: soError) }
        }
        ok = true
        return s
    }

    static func resolve(host: String, port: Int, numericOnly: Bool)
        throws -> [(family: Int32, storage: sockaddr_storage, length: socklen_t)] {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = sockStreamType
        hints.ai_flags = AI_NUMERICSERV | (numericOnly ? AI_NUMERICHOST : 0)
        var result: UnsafeMutablePointer<addrinfo>? = nil
        let rc = getaddrinfo(host, String(port), &hints, &result)
        guard rc == 0, let first = result else {
            throw WebSocketError.addressResolution("\(host): \(String(cString: gai_strerror(rc)))")
        }
        defer { freeaddrinfo(first) }
        var out: [(Int32, sockaddr_storage, socklen_t)] = []
        var cur: UnsafeMutablePointer<addrinfo>? = first
        while let ai = cur {
            var storage = sockaddr_storage()
            withUnsafeMutableBytes(of: &storage) { dst in
                dst.copyMemory(from: UnsafeRawBufferPointer(start: ai.pointee.ai_addr, count: Int(ai.pointee.ai_addrlen)))
            }
            out.append((ai.pointee.ai_family, storage, ai.pointee.ai_addrlen))
            cur = ai.pointee.ai_next
        }
        return out
    }
}

#if canImport(Glibc) || canImport(Musl)
let sockStreamType = Int32(SOCK_STREAM.rawValue)
let sendFlags = Int32(MSG_NOSIGNAL)
#else
let sockStreamType = SOCK_STREAM
let sendFlags: Int32 = 0
#endif

@inline(__always) func sysClose(_ fd: Int32) -> Int32 {
    #if canImport(Glibc)
    Glibc.close(fd)
    #elseif canImport(Musl)
    Musl.close(fd)
    #else
    Darwin.close(fd)
    #endif
}
