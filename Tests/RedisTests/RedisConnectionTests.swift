import AgentChatLoop
import Foundation
import AgentChatRedis
import Testing
import TestSupport

@Suite(.serialized) struct RedisConnectionTests {
    @Test func tenThousandPipelinedCommandsAnsweredInOrder() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let connection = try await makeConnection(loop, server.endpoint)
        defer { shutDown(loop, closing: [connection]) }
        try await waitConnected(connection)

        let count = 10_000
        // All sends happen in one loop turn, so hiredis writes them as one pipeline.
        let replies: [Int] = try await loop.submitAndWait { complete in
            var replies: [Int] = []
            replies.reserveCapacity(count)
            for _ in 0..<count {
                connection.value.send(["INCR", "pipelined"]) { result in
                    replies.append((try? result.get())?.int ?? -1)
                    if replies.count == count { complete(.success(replies)) }
                }
            }
        }
        #expect(replies == Array(1...count))
        #expect(try await send(connection, ["GET", "pipelined"]).int == count)
    }

    @Test func commandsFailFastWhileRedisIsDown() async throws {
        let port = try EmbeddedRedis.freeLoopbackPort()  // nothing listens there
        let loop = EventLoop.startThread()
        let states = Collected<RedisConnection.State>()
        let connection = try await loop.submit {
            let connection = RedisConnection(loop: loop, endpoint: .tcp(host: "127.0.0.1", port: port))
            connection.onStateChange = { states.items.append($0) }
            connection.start()
            return OnLoop(loop: loop, connection)
        }
        defer { shutDown(loop, closing: [connection]) }
        // Let a few connect attempts fail (refused), then check sends fail at once.
        try await eventually("several attempts", on: loop) { states.items.filter { $0 == .connecting }.count >= 3 }
        for _ in 0..<3 {
            let outcome = try await result(connection, ["PING"])
            #expect(outcome == .failure(.notConnected))
        }
        #expect(try await loop.submit { connection.value.state } != .connected)
    }

    @Test func reconnectsAfterRedisIsKilledAndRestarted() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let states = Collected<RedisConnection.State>()
        let connects = Collected<Int>()
        let connection = try await loop.submit {
            let connection = RedisConnection(loop: loop, endpoint: server.endpoint)
            connection.onStateChange = { states.items.append($0) }
            connection.addConnectHook { connects.items.append(1) }
            connection.start()
            return OnLoop(loop: loop, connection)
        }
        defer { shutDown(loop, closing: [connection]) }
        try await waitConnected(connection)
        #expect(try await send(connection, ["SET", "k", "before"]) == .status("OK"))

        server.kill()
        try await eventually("disconnected", on: loop) { connection.value.state != .connected }
        #expect(try await loop.submit { states.items.contains(.disconnected) })
        #expect(try await result(connection, ["GET", "k"]) == .failure(.notConnected))

        try server.restart()
        try await waitConnected(connection)
        #expect(try await loop.submit { connects.items.count } == 2)
        #expect(try await send(connection, ["SET", "k", "after"]) == .status("OK"))
        #expect(try await send(connection, ["GET", "k"]).string == "after")
    }

    @Test func connectsOverAUnixSocketAndCloseFailsPendingCommands() async throws {
        let directory = temporaryDirectory()
        defer { removeDirectory(directory) }
        let redis = try EmbeddedRedis(configuration: .init(dataDirectory: directory))
        defer { redis.stop() }
        guard case .unix = redis.endpoint else {
            Issue.record("expected a unix socket endpoint, got \(redis.endpoint)")
            return
        }
        let loop = EventLoop.startThread()
        let connection = try await makeConnection(loop, redis.endpoint)
        defer { shutDown(loop, closing: [connection]) }
        try await waitConnected(connection)
        #expect(try await send(connection, ["PING"]) == .status("PONG"))

        // A command in flight when close() runs completes with .closed; later sends too.
        let outcomes: [Result<RedisValue, RedisError>] = try await loop.submitAndWait { complete in
            var outcomes: [Result<RedisValue, RedisError>] = []
            connection.value.send(["PING"]) { outcomes.append($0) }
            connection.value.close()
            connection.value.send(["PING"]) { outcomes.append($0) }
            complete(.success(outcomes))
        }
        #expect(outcomes == [.failure(.closed), .failure(.closed)])
    }
}

@Suite(.serialized) struct RedisConnectTimeoutTests {
    /// A loopback listener that never accepts, its accept queue filled, so further connects hang in SYN_SENT.
    private final class Blackhole {
        let listener: Int32
        var fillers: [Int32] = []
        let port: Int

        init() throws {
            let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            self.listener = listener
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let ok = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    bind(listener, $0, length) == 0 && listen(listener, 0) == 0 && getsockname(listener, $0, &length) == 0
                }
            }
            guard ok else { throw TimedOut(what: "a loopback listener") }
            port = Int(UInt16(bigEndian: address.sin_port))
            for _ in 0..<4 {
                let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
                _ = withUnsafePointer(to: &address) {
                    $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, length) }
                }
                fillers.append(fd)
            }
            usleep(100_000)
        }

        deinit {
            for fd in fillers { close(fd) }
            close(listener)
        }
    }

    @Test func aHangingConnectIsAbandonedAfterTheTimeoutAndRetried() async throws {
        let blackhole = try Blackhole()
        let port = blackhole.port
        let loop = EventLoop.startThread()
        let states = Collected<RedisConnection.State>()
        let connection = try await loop.submit {
            var configuration = RedisConnection.Configuration()
            configuration.connectTimeout = 200
            let connection = RedisConnection(loop: loop, endpoint: .tcp(host: "127.0.0.1", port: port),
                                             configuration: configuration)
            connection.onStateChange = { states.items.append($0) }
            connection.start()
            return OnLoop(loop: loop, connection)
        }
        defer { shutDown(loop, closing: [connection]) }
        try await eventually("two timed-out attempts", on: loop) {
            states.items.filter { $0 == .disconnected }.count >= 2
        }
        #expect(try await loop.submit { states.items.contains(.connected) } == false)
        #expect(try await result(connection, ["PING"]) == .failure(.notConnected))
        withExtendedLifetime(blackhole) {}
    }
}
