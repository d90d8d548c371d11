#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import WebSocketClient

/// A WebSocket connection with nothing done for the test: its own socket (optionally with a small receive buffer,
/// set before connecting so the advertised window stays small), the upgrade sent as given, frames sent exactly as
/// described (unmasked, oversize control frames...) and read raw. Used from one thread at a time.
public final class RawWebSocket: @unchecked Sendable {
    public let socket: BlockingTCPSocket
    /// The upgrade response head (status, headers).
    public let handshake: HTTPResponseHead
    private var buffer: [UInt8]

    /// Connects to `127.0.0.1:port` and upgrades with subprotocol `agentchat.v1`.
    /// - Parameter receiveBufferBytes: `SO_RCVBUF`, set before `connect` (nil leaves the default).
    public init(port: Int, receiveBufferBytes: Int? = nil, extraHeaders: [(String, String)] = [],
                timeout: Double = 5) throws {
        let fd = try Self.connect(port: port, receiveBufferBytes: receiveBufferBytes)
        socket = BlockingTCPSocket(adopting: fd)
        var request = "GET / HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        request += "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        request += "Sec-WebSocket-Protocol: agentchat.v1\r\n"
        for (name, value) in extraHeaders { request += "\(name): \(value)\r\n" }
        request += "\r\n"
        try socket.write(Array(request.utf8), timeout: timeout)
        let deadline = Deadline(seconds: timeout)
        var received: [UInt8] = []
        while true {
            if let end = Self.headEnd(received) {
                handshake = try HTTPResponseHead.parse(head: Array(received[0..<end]))
                buffer = Array(received[(end + 4)...])
                break
            }
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            received += chunk
        }
        guard handshake.status == 101 else { throw WebSocketError.upgradeRejected(handshake) }
    }

    /// Sends one frame exactly as described; `masked: false` sends a client frame without a mask (RFC 6455 §5.1
    /// forbids it).
    public func send(_ opcode: WebSocketOpcode, _ payload: [UInt8], masked: Bool = true, fin: Bool = true) throws {
        let frame = WebSocketFrame(opcode: opcode, payload: payload, fin: fin,
                                   maskKey: masked ? WebSocketFrame.randomMaskKey() : nil)
        try socket.write(frame.encode(), timeout: 10)
    }

    public func sendText(_ text: String, masked: Bool = true) throws {
        try send(.text, Array(text.utf8), masked: masked)
    }

    public enum Event: Sendable, Equatable {
        case frame(WebSocketFrame)
        /// The broker closed the TCP connection (EOF or reset).
        case closed
        case timeout
    }

    /// The next frame, or `.closed` at EOF or reset, or `.timeout`.
    public func next(timeout: Double) -> Event {
        let deadline = Deadline(seconds: timeout)
        while true {
            if case .frame(let frame, let used)? = try? WebSocketFrame.decode(buffer) {
                buffer.removeFirst(used)
                return .frame(frame)
            }
            do {
                guard let chunk = try socket.read(deadline: deadline) else { return .closed }
                buffer += chunk
            } catch WebSocketError.timeout {
                return .timeout
            } catch {
                return .closed
            }
        }
    }

    /// Reads until the broker's close frame (returning its code, and answering it) and the end of the connection,
    /// skipping every other frame, for at most `timeout` seconds. `sawEnd` tells whether the TCP connection ended.
    public func awaitClose(timeout: Double) -> (code: UInt16?, sawEnd: Bool) {
        let deadline = Deadline(seconds: timeout)
        var code: UInt16?
        while !deadline.hasPassed {
            switch next(timeout: max(0.01, Double(deadline.remainingMilliseconds) / 1000)) {
            case .frame(let frame) where frame.opcode == .close:
                if frame.payload.count >= 2 { code = UInt16(frame.payload[0]) << 8 | UInt16(frame.payload[1]) }
                else { code = 0 }
                // Answer as a client does, so the broker need not wait for the answer before closing.
                try? send(.close, Array(frame.payload.prefix(2)))
            case .frame:
                continue
            case .closed:
                return (code, true)
            case .timeout:
                return (code, false)
            }
        }
        return (code, false)
    }

    /// Reads and discards everything until the connection ends; true if it ended (EOF or reset) in time.
    public func drainUntilClosed(timeout: Double) -> Bool {
        let deadline = Deadline(seconds: timeout)
        while !deadline.hasPassed {
            do {
                guard try socket.read(deadline: deadline) != nil else { return true }
            } catch WebSocketError.timeout {
                return false
            } catch {
                return true
            }
        }
        return false
    }

    public func close() { socket.close() }

    private static func connect(port: Int, receiveBufferBytes: Int?) throws -> Int32 {
        #if canImport(Glibc)
        let fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        #else
        let fd = Darwin.socket(AF_INET, SOCK_STREAM, 0)
        #endif
        guard fd >= 0 else { throw WebSocketError.system(operation: "socket", errno: errno) }
        if var size = receiveBufferBytes.map(Int32.init) {
            _ = setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                #if canImport(Glibc)
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                #else
                Darwin.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                #endif
            }
        }
        guard rc == 0 else {
            let err = errno
            #if canImport(Glibc)
            _ = Glibc.close(fd)
            #else
            _ = Darwin.close(fd)
            #endif
            throw WebSocketError.system(operation: "connect", errno: err)
        }
        return fd
    }

    private static func headEnd(_ b: [UInt8]) -> Int? {
        guard b.count >= 4 else { return nil }
        for i in 0...(b.count - 4) where b[i] == 13 && b[i + 1] == 10 && b[i + 2] == 13 && b[i + 3] == 10 {
            return i
        }
        return nil
    }
}
