import Dispatch
#if canImport(Glibc)
import Glibc
#endif
@testable import WebSocketClient

/// A real TCP server on 127.0.0.1 (ephemeral port) that accepts one connection and runs `script` on it on a
/// dedicated thread. The script plays the server side byte by byte, so tests can check exactly what the client
/// sends and feed it exact (including invalid) responses.
final class ScriptedServer: @unchecked Sendable {
    let port: Int
    private let listenFD: Int32
    private let done = DispatchSemaphore(value: 0)
    private var failure: (any Error)?

    init(_ script: @escaping @Sendable (ServerPeer) throws -> Void) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw WebSocketError.system(operation: "socket", errno: errno) }
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard bound == 0, listen(fd, 8) == 0 else {
            close(fd)
            throw WebSocketError.system(operation: "bind/listen", errno: errno)
        }
        _ = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) }
        }
        port = Int(UInt16(bigEndian: addr.sin_port))
        listenFD = fd
        DedicatedThread.start { [self] in
            do {
                var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
                guard poll(&pfd, 1, 10_000) == 1 else { throw WebSocketError.timeout }
                var peerAddr = sockaddr_in()
                var peerLen = socklen_t(MemoryLayout<sockaddr_in>.size)
                let conn = withUnsafeMutablePointer(to: &peerAddr) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { accept(fd, $0, &peerLen) }
                }
                guard conn >= 0 else { throw WebSocketError.system(operation: "accept", errno: errno) }
                var ip = [CChar](repeating: 0, count: 64)
                inet_ntop(AF_INET, &peerAddr.sin_addr, &ip, 64)
                let peer = ServerPeer(socket: BlockingTCPSocket(adopting: conn),
                                      remoteAddress: String(decoding: ip.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
                defer { peer.socket.close() }
                try script(peer)
            } catch {
                self.failure = error
            }
            self.done.signal()
        }
    }

    deinit { close(listenFD) }

    /// Waits for the script to finish and rethrows its error, if any.
    func join(timeout: Double = 30) throws {
        guard done.wait(timeout: .now() + timeout) == .success else { throw WebSocketError.timeout }
        if let failure { throw failure }
    }
}

struct ScriptError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

/// The server side of one accepted connection.
final class ServerPeer: @unchecked Sendable {
    let socket: BlockingTCPSocket
    let remoteAddress: String
    private var buffer: [UInt8] = []

    init(socket: BlockingTCPSocket, remoteAddress: String) {
        self.socket = socket
        self.remoteAddress = remoteAddress
    }

    /// Reads the request head; returns the request line and headers (lowercased names).
    func readRequestHead(timeout: Double = 20) throws -> (requestLine: String, headers: [String: String]) {
        let deadline = Deadline(seconds: timeout)
        while findHeaderEnd(buffer) == nil {
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
        let end = findHeaderEnd(buffer)!
        let lines = String(decoding: buffer[0..<end], as: UTF8.self).components(separatedByCRLF: ())
        buffer.removeFirst(end + 4)
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingASCIIWhitespace()
        }
        return (lines[0], headers)
    }

    /// Reads exactly `count` body bytes.
    func readBytes(_ count: Int, timeout: Double = 20) throws -> [UInt8] {
        let deadline = Deadline(seconds: timeout)
        while buffer.count < count {
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
        let out = Array(buffer.prefix(count))
        buffer.removeFirst(count)
        return out
    }

    /// Answers a WebSocket upgrade correctly (plus `extraHeaders`).
    func acceptUpgrade(subprotocol: String? = nil, extraHeaders: String = "") throws -> [String: String] {
        let (_, headers) = try readRequestHead()
        guard let key = headers["sec-websocket-key"] else { throw ScriptError("no key") }
        var response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Accept: \(WebSocketHandshake.acceptValue(forKey: key))\r\n"
        if let subprotocol { response += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
        response += extraHeaders + "\r\n"
        try write(response)
        return headers
    }

    func write(_ text: String) throws { try socket.write(Array(text.utf8), timeout: 5) }
    func write(_ bytes: [UInt8]) throws { try socket.write(bytes, timeout: 5) }

    /// Reads one (client) frame.
    func readFrame(timeout: Double = 20) throws -> WebSocketFrame {
        let deadline = Deadline(seconds: timeout)
        while true {
            if case .frame(let f, let used) = try WebSocketFrame.decode(buffer) {
                buffer.removeFirst(used)
                return f
            }
            guard let chunk = try socket.read(deadline: deadline) else { throw WebSocketError.connectionClosed }
            buffer += chunk
        }
    }

    /// Waits until the client closes the TCP connection (EOF); throws on timeout.
    func waitForEOF(timeout: Double = 5) throws {
        let deadline = Deadline(seconds: timeout)
        while true {
            do {
                guard try socket.read(deadline: deadline) != nil else { return }
            } catch WebSocketError.connectionClosed {
                return
            }
        }
    }
}
