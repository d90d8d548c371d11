import AgentChatCore
import AgentChatLoop
import AgentChatProtocol
import CLibUV
import Glibc
import Logging

/// Holds every new TCP connection until the head of its first request has arrived and passed
/// `HTTPRequestHeadValidator`, then hands it to libwebsockets; a refused head is answered here (JSON error body,
/// `Connection: close`) and never reaches libwebsockets' own parser, which answers many malformed heads with a bare
/// 403 or not at all. Loop-bound.
///
/// How a connection gets here: libwebsockets accepts it and offers it to `LWS_CALLBACK_FILTER_NETWORK_CONNECTION`;
/// the server `take`s a duplicate of the descriptor and refuses it there, so libwebsockets closes its own copy and
/// forgets the connection. In a worker of several processes (`--processes`) the server's `SharedListener` accepts
/// instead and `take`s each connection the same way. Reading: the head is only peeked (`MSG_PEEK`), so libwebsockets
/// later reads it from the socket itself. A head that arrives in pieces stays in the socket too: `SO_RCVLOWAT` (one
/// byte more than has come) keeps the socket from waking the loop until more arrives. (Taking the pieces and handing
/// them over with the connection, `lws_adopt_socket_readbuf`, made libwebsockets 4.1.6 loop forever on a request
/// body that followed: the whole broker stopped.) A head with a header
/// field libwebsockets 4.1 would misread (a name that is the beginning of one it knows, such as `X` or `Content`):
/// it is handed over without those fields, which the broker never reads, or refused when the request has a body
/// (`HTTPRequestHeadValidator.libwebsocketsHandOver`).
///
/// C pointer ownership: each held connection owns one `uv_poll_t`, allocated here and freed in its close callback.
/// Its `data` holds the gate unretained: every handle is closed (so no callback comes) before the gate is released.
final class HTTPHeadGate {
    private final class Held {
        let fd: Int32
        let poll: UnsafeMutablePointer<uv_poll_t>
        let acceptedAt: Double
        /// How many bytes of an incomplete head have come (and stay in the socket); the socket's low-water mark is one
        /// more, while it is not 0.
        var peeked = 0
        /// Not watched until the next sweep (see `readable`).
        var paused = false
        /// When the refusal was written; the connection is then read to its end and closed.
        var answeredAt: Double?

        init(fd: Int32, poll: UnsafeMutablePointer<uv_poll_t>, acceptedAt: Double) {
            self.fd = fd
            self.poll = poll
            self.acceptedAt = acceptedAt
        }
    }

    private let loop: EventLoop
    private let validator: HTTPRequestHeadValidator
    private let logger: Logger
    /// Seconds a connection may take to send its whole head; then it is answered 408 (or closed if it sent nothing).
    private let headTimeout: Double
    /// Seconds a refused connection is read (and discarded) before it is closed, so the refusal is not lost to a
    /// reset caused by unread request bytes.
    private let lingerSeconds = 2.0
    private var held: [UInt: Held] = [:]
    /// One read buffer for every held connection (the loop reads one at a time).
    private var scratch: [UInt8]
    /// Receives each connection whose head passed, with the bytes already consumed from it (often none).
    var admit: ((Int32, [UInt8]) -> Void)?

    init(loop: EventLoop, validator: HTTPRequestHeadValidator = HTTPRequestHeadValidator(), headTimeout: Double,
         logger: Logger) {
        self.loop = loop
        self.validator = validator
        self.headTimeout = headTimeout
        self.logger = logger
        scratch = [UInt8](repeating: 0, count: max(validator.limits.maxHeadBytes, 16 * 1024))
    }

    deinit { closeAll() }

    /// Connections held now.
    var count: Int { held.count }

    /// Takes a duplicate of a just-accepted descriptor (libwebsockets closes the original). False if it could not
    /// (the connection is then simply closed by libwebsockets).
    func take(_ acceptedFD: Int32) -> Bool {
        // Same open file description, so libwebsockets' non-blocking mode and socket options carry over.
        let fd = fcntl(acceptedFD, F_DUPFD_CLOEXEC, 0)
        guard fd >= 0 else { return false }
        // Often the whole head is there already: a good one goes on at once, without a poll handle or another turn
        // of the loop (that turn was most of what the gate added to the cost of a connection).
        let limit = validator.limits.maxHeadBytes
        let n = scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, limit, Int32(MSG_PEEK)) }
        if n > 0 {
            let peeked = Array(scratch[0..<n])
            if case .accepted(let head) = validator.evaluate(peeked) {
                switch validator.libwebsocketsHandOver(peeked, head: head) {
                case .asIs:
                    admit?(fd, [])
                    return true
                case .copy(let copy):
                    guard take(peeked.count, from: fd) else {
                        _ = Glibc.close(fd)
                        return true
                    }
                    admit?(fd, copy)
                    return true
                case .refused:
                    break  // answered once the connection is held, below
                }
            }
        }
        let poll = UnsafeMutablePointer<uv_poll_t>.allocate(capacity: 1)
        guard uv_poll_init(loop.uvLoop, poll, fd) == 0 else {
            poll.deallocate()
            _ = Glibc.close(fd)
            return false
        }
        poll.pointee.data = Unmanaged.passUnretained(self).toOpaque()
        held[Self.key(poll)] = Held(fd: fd, poll: poll, acceptedAt: SystemTime.monotonicSeconds())
        uv_poll_start(poll, Self.events, headGateReadable)
        return true
    }

    /// Answers (408) or closes connections that took too long, and closes refused ones that lingered enough.
    func sweep(now: Double) {
        for connection in Array(held.values) {
            if connection.paused {
                connection.paused = false
                uv_poll_start(connection.poll, Self.events, headGateReadable)
            }
            if let answered = connection.answeredAt {
                if now - answered > lingerSeconds { release(connection, close: true) }
            } else if now - connection.acceptedAt > headTimeout {
                if connection.peeked > 0 {
                    setLowWater(connection.fd, 1)
                    answer(connection, .init(408, .requestTimeout,
                                             "the request head did not arrive within \(Int(headTimeout)) s"))
                } else {
                    release(connection, close: true)
                }
            }
        }
    }

    /// Closes every held connection (the server is stopping).
    func closeAll() {
        // Released after the loop was closed (at process exit): the handles went with the loop; close the sockets.
        if loop.isClosed {
            for connection in held.values { _ = Glibc.close(connection.fd) }
            held.removeAll()
            return
        }
        for connection in Array(held.values) { release(connection, close: true) }
    }

    // MARK: Reading

    /// What a held connection is watched for: data, and the client's end of sending (`EPOLLRDHUP`).
    private static let events = Int32(UV_READABLE.rawValue | UV_DISCONNECT.rawValue)

    fileprivate func readable(_ poll: UnsafeMutablePointer<uv_poll_t>, status: Int32, events: Int32) {
        guard let connection = held[Self.key(poll)] else { return }
        guard status >= 0 else { return release(connection, close: true) }
        if connection.answeredAt != nil { return discardInput(connection) }
        let limit = validator.limits.maxHeadBytes
        let n = scratch.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, limit, Int32(MSG_PEEK)) }
        guard n != 0 else { return release(connection, close: true) }
        guard n > 0 else {
            if errno != EAGAIN && errno != EINTR { release(connection, close: true) }
            return
        }
        let peeked = Array(scratch[0..<n])
        let verdict = validator.evaluate(peeked)
        if verdict == .incomplete {
            if n <= connection.peeked {
                // Nothing new. At the client's end of sending, the head can no longer complete.
                if events & Int32(UV_DISCONNECT.rawValue) != 0 { return release(connection, close: true) }
                // A socket whose readiness ignores the low-water mark (the TLS relay's Unix socketpair) would wake
                // the loop again at once: it is looked at again at the next sweep.
                uv_poll_stop(connection.poll)
                connection.paused = true
                return
            }
            // Wait for more with the bytes left in the socket: it wakes the loop again only once more have come.
            connection.peeked = n
            guard setLowWater(connection.fd, n + 1) else { return release(connection, close: true) }
            return
        }
        if connection.peeked > 0 {
            connection.peeked = 0
            guard setLowWater(connection.fd, 1) else { return release(connection, close: true) }
        }
        judge(connection, verdict, bytes: peeked)
    }

    /// The socket's `SO_RCVLOWAT`: it is readable (for epoll too) once this many bytes are there, or at its end.
    @discardableResult
    private func setLowWater(_ fd: Int32, _ bytes: Int) -> Bool {
        var value = Int32(bytes)
        return setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &value, socklen_t(MemoryLayout<Int32>.size)) == 0
    }

    /// Acts on a verdict on `bytes`, which are still in the socket.
    private func judge(_ connection: Held, _ verdict: HTTPRequestHeadValidator.Verdict, bytes: [UInt8]) {
        switch verdict {
        case .incomplete:
            return
        case .refused(let refusal):
            logger.debug("refused a request head", metadata: ["status": "\(refusal.status)",
                                                              "code": "\(refusal.code.rawValue)"])
            answer(connection, refusal)
        case .accepted(let head):
            switch validator.libwebsocketsHandOver(bytes, head: head) {
            case .asIs:
                release(connection, close: false)
                admit?(connection.fd, [])
            case .copy(let copy):
                release(connection, close: false)
                if !take(bytes.count, from: connection.fd) {
                    _ = Glibc.close(connection.fd)
                    return
                }
                logger.debug("dropped header fields libwebsockets would misread",
                             metadata: ["bytes": "\(bytes.count - copy.count)"])
                admit?(connection.fd, copy)
            case .refused(let refusal):
                answer(connection, refusal)
            }
        }
    }

    /// Takes `count` peeked bytes from the socket (they are there already); false if they could not all be taken.
    private func take(_ count: Int, from fd: Int32) -> Bool {
        scratch.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count, 0) } == count
    }

    // MARK: Answering and releasing

    private func answer(_ connection: Held, _ refusal: HTTPRequestHeadValidator.Refusal) {
        var response = HTTPResponse.error(refusal.status, refusal.code, refusal.message)
        response.extraHeaders = refusal.fields.map { ($0.name, $0.value) }
        response.closeConnection = true
        let bytes = response.serialized()
        // A fresh socket's send buffer holds this whole small answer; what does not fit is dropped with the socket.
        _ = bytes.withUnsafeBytes { send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        shutdown(connection.fd, Int32(SHUT_WR))
        connection.answeredAt = SystemTime.monotonicSeconds()
        discardInput(connection)
    }

    /// Reads and drops what the client still sends after its refusal, until it closes.
    private func discardInput(_ connection: Held) {
        while true {
            let n = scratch.withUnsafeMutableBytes { recv(connection.fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { continue }
            if n < 0 && errno == EINTR { continue }
            if n < 0 && errno == EAGAIN { return }
            return release(connection, close: true)
        }
    }

    /// Stops watching the connection; closes it unless it goes on to libwebsockets. The poll handle is closed
    /// first: `uv_close` removes the descriptor from epoll at once, before libwebsockets registers it again.
    private func release(_ connection: Held, close: Bool) {
        guard held.removeValue(forKey: Self.key(connection.poll)) != nil else { return }
        connection.poll.withMemoryRebound(to: uv_handle_t.self, capacity: 1) {
            // Already closed by `EventLoop.close()` at exit: closing twice aborts libuv.
            guard uv_is_closing($0) == 0 else { return }
            uv_poll_stop(connection.poll)
            uv_close($0, freePollHandle)
        }
        if close { _ = Glibc.close(connection.fd) }
    }

    private static func key(_ poll: UnsafeMutablePointer<uv_poll_t>) -> UInt { UInt(bitPattern: poll) }
}

private func headGateReadable(_ poll: UnsafeMutablePointer<uv_poll_t>?, _ status: Int32, _ events: Int32) {
    guard let poll, let data = poll.pointee.data else { return }
    Unmanaged<HTTPHeadGate>.fromOpaque(data).takeUnretainedValue().readable(poll, status: status, events: events)
}

private func freePollHandle(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    UnsafeMutableRawPointer(handle)?.deallocate()
}
