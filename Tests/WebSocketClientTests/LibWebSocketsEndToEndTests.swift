#if canImport(Glibc)
import Glibc
#endif
import Testing
import TestSupport
@testable import WebSocketClient

/// Debian's `libwebsockets-test-server`, run on a free loopback port for the duration of a test.
final class LWSTestServer: @unchecked Sendable {
    static let candidates = ["/usr/bin/libwebsockets-test-server", "/usr/local/bin/libwebsockets-test-server"]
    static let binary: String? = candidates.first { access($0, X_OK) == 0 }

    let process: ChildProcess
    let port: Int

    init() throws {
        var lastError: any Error = WebSocketError.timeout
        for _ in 0..<3 {
            let port = try Self.freePort()
            let process = try ChildProcess(executable: Self.binary!, arguments: ["--port=\(port)"])
            // Ready once it accepts TCP connections.
            let deadline = Deadline(seconds: 10)
            while !deadline.hasPassed && process.isRunning {
                if let s = try? BlockingTCPSocket(host: "127.0.0.1", port: port, timeout: 1) {
                    s.close()
                    self.process = process
                    self.port = port
                    return
                }
                usleep(20_000)
            }
            process.stop()
            lastError = ChildProcessError.exitedEarly(status: process.exitStatus ?? -1, stdout: process.stdout,
                                                      stderr: process.stderr)
        }
        throw lastError
    }

    deinit { process.stop() }

    /// A port that was free a moment ago (bound to port 0, then released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
        }
        guard ok else { throw WebSocketError.system(operation: "bind", errno: errno) }
        return Int(UInt16(bigEndian: addr.sin_port))
    }
}

/// Receives until a text message satisfies `predicate` (skipping others), within `timeout` seconds overall.
private func receiveText(_ client: WebSocketClient, timeout: Double, where predicate: (String) -> Bool) throws -> String {
    let deadline = Deadline(seconds: timeout)
    while true {
        let remaining = Double(deadline.remainingMilliseconds) / 1000
        guard remaining > 0 else { throw WebSocketError.timeout }
        let text = try client.receiveText(timeout: remaining)
        if predicate(text) { return text }
    }
}

@Suite(.enabled(if: LWSTestServer.binary != nil,
                "libwebsockets-test-server is not installed (apt-get install -y libwebsockets-test-server)"),
       .serialized)
struct LibWebSocketsEndToEndTests {
    @Test func dumbIncrementStreamsConsecutiveNumbersAndResets() throws {
        let server = try LWSTestServer()
        let client = try WebSocketClient.connect(port: server.port, subprotocols: ["dumb-increment-protocol"])
        #expect(client.negotiatedSubprotocol == "dumb-increment-protocol")
        var numbers: [Int] = []
        for _ in 0..<5 {
            let text = try client.receiveText(timeout: 5)
            numbers.append(try #require(Int(text), "not a number: \(text)"))
        }
        #expect(zip(numbers, numbers.dropFirst()).allSatisfy { $1 == $0 + 1 }, "\(numbers)")
        // Let the counter grow past where a reset lands, then reset it.
        _ = try receiveText(client, timeout: 10) { (Int($0) ?? 0) >= numbers.last! + 20 }
        try client.send(text: "reset\n")
        let afterReset = try receiveText(client, timeout: 5) { (Int($0) ?? .max) < 10 }
        #expect(Int(afterReset)! < 10)
        #expect(client.close(code: 1000, reason: "bye", timeout: 5)?.code == 1000)
    }

    @Test func serverInitiatedCloseWithCodeAndReason() throws {
        let server = try LWSTestServer()
        let client = try WebSocketClient.connect(port: server.port, subprotocols: ["dumb-increment-protocol"])
        try client.send(text: "closeme\n")
        let deadline = Deadline(seconds: 5)
        var close: WebSocketMessage?
        while close == nil {
            let m = try client.receive(timeout: Double(deadline.remainingMilliseconds) / 1000)
            if case .close = m { close = m }
        }
        #expect(close == .close(code: 1001, reason: "seeya"))
        // After our echoed close the server drops the TCP connection.
        #expect(throws: WebSocketError.connectionClosed) {
            while true { _ = try client.receive(timeout: 5) }
        }
    }

    @Test func mirrorBroadcastsTextToEveryClientIncludingLargeFrames() throws {
        let server = try LWSTestServer()
        let a = try WebSocketClient.connect(port: server.port, subprotocols: ["lws-mirror-protocol"])
        let b = try WebSocketClient.connect(port: server.port, subprotocols: ["lws-mirror-protocol"])
        #expect(a.negotiatedSubprotocol == "lws-mirror-protocol")
        let marker = "hello-\(UInt32.random(in: 0 ... .max))"
        try a.send(text: marker)
        #expect(try receiveText(b, timeout: 5) { $0 == marker } == marker)
        #expect(try receiveText(a, timeout: 5) { $0 == marker } == marker)
        // 16-bit length frame from the client, and the mirrored copy back.
        let medium = "m" + String(repeating: "x", count: 300)
        try b.send(text: medium)
        #expect(try receiveText(a, timeout: 5) { $0.hasPrefix("m") } == medium)
        a.close()
        b.close()
    }

    @Test func pingIsAnsweredWithPong() throws {
        let server = try LWSTestServer()
        let client = try WebSocketClient.connect(port: server.port, subprotocols: ["lws-mirror-protocol"])
        try client.ping([1, 2, 3, 4])
        let deadline = Deadline(seconds: 5)
        var pong: [UInt8]?
        while pong == nil {
            if case .pong(let p) = try client.receive(timeout: Double(deadline.remainingMilliseconds) / 1000) { pong = p }
        }
        #expect(pong == [1, 2, 3, 4])
        client.close()
    }

    @Test func asyncClientAgainstRealServer() async throws {
        let server = try LWSTestServer()
        let client = try await WebSocketClient.connect(port: server.port, subprotocols: ["dumb-increment-protocol"])
        let first = try await client.receiveText(timeout: 5)
        let second = try await client.receiveText(timeout: 5)
        #expect(Int(second) == Int(first)! + 1)
        let answer = await client.close(code: 1000, reason: "", timeout: 5)
        #expect(answer?.code == 1000)
        withExtendedLifetime(server) {}
    }
}
