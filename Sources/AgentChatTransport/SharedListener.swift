import AgentChatLoop
import CLibUV
import Glibc
import Logging

/// A listening socket that several broker processes open on one address with `SO_REUSEPORT`: the kernel spreads
/// new connections over them. Used instead of libwebsockets' listener when the broker runs as several processes
/// (`--processes`): `LWS_SERVER_OPTION_ALLOW_LISTEN_SHARE` did not spread connections in libwebsockets 4.1.6 with one
/// service thread, so the context is created without a listener and this socket accepts, on the loop, and hands
/// each connection on (`accepted`), non-blocking and with `TCP_NODELAY` as libwebsockets' own accept sets it.
/// Loop-bound.
///
/// C pointer ownership: the `uv_poll_t` is allocated here and freed in its close callback; its `data` holds this
/// object unretained, and `close()` (called before release) closes the handle so that no callback follows.
package final class SharedListener {
    /// The bound port (the one asked for, or the one the kernel picked for port 0).
    package let port: Int
    private let loop: EventLoop
    private let logger: Logger
    private var fd: Int32
    private let poll: UnsafeMutablePointer<uv_poll_t>
    /// Takes ownership of each accepted descriptor.
    private let accepted: (Int32) -> Void

    /// Binds `host:port` with `SO_REUSEADDR` and `SO_REUSEPORT`, listens, and starts accepting on the loop.
    package init(loop: EventLoop, host: String, port: Int, logger: Logger, accepted: @escaping (Int32) -> Void)
        throws
    {
        loop.preconditionInEventLoop()
        let (fd, bound) = try Self.bind(host: host, port: port)
        guard Glibc.listen(fd, SOMAXCONN) == 0 else {
            _ = Glibc.close(fd)
            throw WebSocketServerError.listenFailed(host: host, port: port)
        }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK)
        self.loop = loop
        self.logger = logger
        self.fd = fd
        self.port = bound
        self.accepted = accepted
        poll = .allocate(capacity: 1)
        guard uv_poll_init(loop.uvLoop, poll, fd) == 0 else {
            poll.deallocate()
            _ = Glibc.close(fd)
            throw WebSocketServerError.listenFailed(host: host, port: port)
        }
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        uv_poll_start(poll, Int32(UV_READABLE.rawValue), sharedListenerReadable)
    }

    deinit { precondition(fd < 0, "SharedListener released while listening") }

    /// Stops accepting and closes the socket (connections already accepted stay). Idempotent.
    package func close() {
        guard fd >= 0 else { return }
        if !loop.isClosed {
            poll.withMemoryRebound(to: uv_handle_t.self, capacity: 1) {
                guard uv_is_closing($0) == 0 else { return }  // closed by EventLoop.close() at exit
                uv_poll_stop(poll)
                uv_close($0, freeListenerPoll)
            }
        }
        _ = Glibc.close(fd)
        fd = -1
    }

    /// Accepts what is waiting, a bounded number per turn of the loop (the poll is level-triggered: the rest come
    /// on the next turn).
    fileprivate func acceptPending() {
        for _ in 0..<64 where fd >= 0 {
            let connection = accept(fd, nil, nil)
            if connection < 0 {
                switch errno {
                case EAGAIN, EWOULDBLOCK, EINTR, ECONNABORTED, EPROTO: return
                default:
                    // EMFILE and the like: the connection stays queued and is tried again on the next turn.
                    logger.warning("accept failed", metadata: ["errno": "\(errno)"])
                    return
                }
            }
            // (accept4 is not imported.)
            _ = fcntl(connection, F_SETFL, fcntl(connection, F_GETFL, 0) | O_NONBLOCK)
            _ = fcntl(connection, F_SETFD, FD_CLOEXEC)
            var one: Int32 = 1
            _ = setsockopt(connection, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
            accepted(connection)
        }
    }

    /// A socket bound to `host:port` with `SO_REUSEADDR` and `SO_REUSEPORT`, not listening, close-on-exec, and the
    /// bound port. The supervisor holds one to fix the port every worker then binds (a bound socket that does not
    /// listen gets no connections); `init` binds its own the same way.
    package static func bind(host: String, port: Int) throws -> (fd: Int32, port: Int) {
        var hints = addrinfo()
        hints.ai_family = host.contains(":") ? AF_INET6 : AF_INET
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var found: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, String(port), &hints, &found) == 0, let address = found else {
            throw WebSocketServerError.listenFailed(host: host, port: port)
        }
        defer { freeaddrinfo(found) }
        let fd = socket(address.pointee.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw WebSocketServerError.listenFailed(host: host, port: port) }
        var one: Int32 = 1
        let size = socklen_t(MemoryLayout<Int32>.size)
        guard setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, size) == 0,
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, size) == 0,
            Glibc.bind(fd, address.pointee.ai_addr, address.pointee.ai_addrlen) == 0
        else {
            _ = Glibc.close(fd)
            throw WebSocketServerError.listenFailed(host: host, port: port)
        }
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        guard named == 0 else {
            _ = Glibc.close(fd)
            throw WebSocketServerError.listenFailed(host: host, port: port)
        }
        // sin_port and sin6_port sit at the same offset, right after the family.
        let bound = withUnsafeBytes(of: &storage) { UInt16(bigEndian: $0.load(fromByteOffset: 2, as: UInt16.self)) }
        return (fd, Int(bound))
    }
}

private func sharedListenerReadable(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    guard let poll, let data = poll.pointee.data else { return }
    Unmanaged<SharedListener>.fromOpaque(data).takeUnretainedValue().acceptPending()
}

private func freeListenerPoll(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    UnsafeMutableRawPointer(handle)?.deallocate()
}
