import Foundation
import Glibc
import Synchronization

/// A TCP proxy on 127.0.0.1 in front of a loopback port, for fault injection: it can cut every connection it
/// carries, refuse new ones, or admit only connections whose first bytes contain a marker (for example only a
/// Redis client's pub/sub connection, whose first command is `SUBSCRIBE`).
///
/// One thread accepts; each admitted connection gets a thread that copies bytes both ways with `poll`. `stop()`
/// closes everything; every test that starts a proxy must stop it (deinit does too).
public final class FaultProxy: Sendable {
    public enum Admission: Sendable {
        case all
        case none
        /// Connections whose first bytes (the first read, within a second) contain these bytes.
        case firstBytesContaining([UInt8])
    }

    public let port: Int
    private let targetPort: Int
    private let listener: Int32
    private struct State {
        var admission = Admission.all
        var open: Set<Int32> = []
        var stopped = false
    }
    private let state = Mutex(State())

    public init(targetPort: Int) throws {
        self.targetPort = targetPort
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var one: Int32 = 1
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        var address = Self.loopback(port: 0)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, listen(fd, 128) == 0 else {
            let error = errno
            close(fd)
            throw FaultProxyError(errno: error)
        }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { _ = getsockname(fd, $0, &length) }
        }
        listener = fd
        port = Int(UInt16(bigEndian: address.sin_port))
        let acceptor = Thread { [self] in acceptLoop() }
        acceptor.start()
    }

    deinit { stop() }

    /// Which new connections are let through from now on.
    public func admit(_ admission: Admission) { state.withLock { $0.admission = admission } }

    /// Cuts every connection the proxy carries now (both sides see the end of the stream).
    public func cutAll() {
        state.withLock { for fd in $0.open { shutdown(fd, Int32(SHUT_RDWR)) } }
    }

    /// Connections currently carried (each counted once, by its client side).
    public var connectionCount: Int { state.withLock { $0.open.count / 2 } }

    public func stop() {
        let wasStopped = state.withLock { s -> Bool in
            defer { s.stopped = true }
            if !s.stopped { for fd in s.open { shutdown(fd, Int32(SHUT_RDWR)) } }
            return s.stopped
        }
        if !wasStopped { shutdown(listener, Int32(SHUT_RDWR)) }
    }

    private func acceptLoop() {
        while true {
            let client = accept(listener, nil, nil)
            if client < 0 {
                if errno == EINTR { continue }
                break
            }
            if state.withLock({ $0.stopped }) {
                close(client)
                break
            }
            let relay = Thread { [self] in serve(client) }
            relay.start()
        }
        close(listener)
    }

    private func serve(_ client: Int32) {
        var first: [UInt8] = []
        switch state.withLock({ $0.admission }) {
        case .none:
            close(client)
            return
        case .firstBytesContaining(let marker):
            first = Self.readOnce(client, timeoutMilliseconds: 1000)
            guard Self.contains(first, marker) else {
                close(client)
                return
            }
        case .all:
            break
        }
        let upstream = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = Self.loopback(port: targetPort)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(upstream, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0, Self.writeAll(upstream, first) else {
            close(upstream)
            close(client)
            return
        }
        state.withLock { $0.open.formUnion([client, upstream]) }
        Self.relay(client, upstream)
        state.withLock { $0.open.subtract([client, upstream]) }
        close(client)
        close(upstream)
    }

    /// Copies bytes both ways until either side ends.
    private static func relay(_ a: Int32, _ b: Int32) {
        var fds = [pollfd(fd: a, events: Int16(POLLIN), revents: 0), pollfd(fd: b, events: Int16(POLLIN), revents: 0)]
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        while true {
            guard poll(&fds, 2, -1) >= 0 || errno == EINTR else { return }
            for index in 0..<2 where fds[index].revents != 0 {
                let count = read(fds[index].fd, &buffer, buffer.count)
                guard count > 0, writeAll(fds[1 - index].fd, Array(buffer[0..<count])) else { return }
            }
        }
    }

    private static func readOnce(_ fd: Int32, timeoutMilliseconds: Int32) -> [UInt8] {
        var descriptor = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&descriptor, 1, timeoutMilliseconds) > 0 else { return [] }
        var buffer = [UInt8](repeating: 0, count: 4096)
        let count = read(fd, &buffer, buffer.count)
        return count > 0 ? Array(buffer[0..<count]) : []
    }

    private static func writeAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if written < 0, errno == EINTR { continue }
            guard written > 0 else { return false }
            offset += written
        }
        return true
    }

    private static func contains(_ bytes: [UInt8], _ marker: [UInt8]) -> Bool {
        guard !marker.isEmpty, bytes.count >= marker.count else { return false }
        return (0...(bytes.count - marker.count)).contains { bytes[$0..<($0 + marker.count)].elementsEqual(marker) }
    }

    private static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        return address
    }
}

/// The proxy could not listen on a loopback port.
public struct FaultProxyError: Error {
    public let errno: Int32
}
