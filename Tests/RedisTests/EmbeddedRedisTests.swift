import AgentChatLoop
import AgentChatRedis
import Foundation
import Testing

@Suite(.serialized) struct EmbeddedRedisTests {
    @Test func unixSocketServerWritesTheAppendOnlyFileAndStops() async throws {
        let directory = temporaryDirectory()
        defer { removeDirectory(directory) }
        let redis = try EmbeddedRedis(configuration: .init(dataDirectory: directory, appendFsync: .always))
        defer { redis.stop() }
        #expect(redis.endpoint == .unix(path: directory + "/redis.sock"))
        #expect(redis.isRunning)
        #expect(kill(redis.pid, 0) == 0)
        #expect(FileManager.default.fileExists(atPath: directory + "/redis.conf"))

        let loop = EventLoop.startThread()
        let connection = try await makeConnection(loop, redis.endpoint)
        defer { shutDown(loop, closing: [connection]) }
        try await waitConnected(connection)
        #expect(try await send(connection, ["SET", "durable-key", "durable-value"]) == .status("OK"))

        // Redis 7 keeps the AOF as a manifest plus files in `appendonlydir`; with `always` the write is there now.
        let aofDirectory = directory + "/appendonlydir"
        let files = try FileManager.default.contentsOfDirectory(atPath: aofDirectory)
        let contents = files.compactMap { FileManager.default.contents(atPath: aofDirectory + "/" + $0) }
        #expect(contents.contains { String(decoding: $0, as: UTF8.self).contains("durable-key") }, "\(files)")

        redis.stop()
        #expect(!redis.isRunning)
        #expect(kill(redis.pid, 0) == -1 && errno == ESRCH)
        // SIGTERM reached it (it was not SIGKILLed after the grace period): a clean shutdown is logged.
        #expect(redis.logTail().contains("ready to exit"), "\(redis.logTail())")
        redis.stop()  // idempotent
    }

    @Test func longDataDirectoryFallsBackToLoopbackTCP() throws {
        let directory = temporaryDirectory() + "/" + String(repeating: "d", count: 100)
        defer { removeDirectory(URL(fileURLWithPath: directory).deletingLastPathComponent().path) }
        let redis = try EmbeddedRedis(configuration: .init(dataDirectory: directory))
        defer { redis.stop() }
        guard case .tcp(let host, let port) = redis.endpoint else {
            Issue.record("expected TCP, got \(redis.endpoint)")
            return
        }
        #expect(host == "127.0.0.1")
        #expect(port > 0)
        redis.stop()
        #expect(!redis.isRunning)
    }

    @Test func explicitLoopbackPort() throws {
        let directory = temporaryDirectory()
        defer { removeDirectory(directory) }
        let port = try EmbeddedRedis.freeLoopbackPort()
        let redis = try EmbeddedRedis(configuration: .init(dataDirectory: directory, listener: .loopbackTCP(port: port)))
        defer { redis.stop() }
        #expect(redis.endpoint == .tcp(host: "127.0.0.1", port: port))
        redis.kill()
        #expect(!redis.isRunning)
    }

    @Test func aServerThatDiesAtStartupReportsItsLog() throws {
        let first = temporaryDirectory()
        let second = temporaryDirectory()
        defer { removeDirectory(first); removeDirectory(second) }
        let port = try EmbeddedRedis.freeLoopbackPort()
        let running = try EmbeddedRedis(configuration: .init(dataDirectory: first, listener: .loopbackTCP(port: port)))
        defer { running.stop() }
        do {
            let clash = try EmbeddedRedis(configuration: .init(dataDirectory: second, listener: .loopbackTCP(port: port)))
            clash.stop()
            Issue.record("a second server started on a busy port")
        } catch {
            #expect(error.description.contains("exited"), "\(error)")
            #expect(error.description.contains("Address already in use") || error.description.contains("bind"),
                    "\(error)")
        }
    }

    @Test func missingServerSaysHowToInstallIt() {
        var configuration = EmbeddedRedis.Configuration(dataDirectory: temporaryDirectory())
        configuration.searchPath = ["/nonexistent-agentchat-dir"]
        do {
            let redis = try EmbeddedRedis(configuration: configuration)
            redis.stop()
            Issue.record("started without redis-server on the search path")
        } catch {
            #expect(error.isServerNotFound)
            #expect(error.description.contains("apt-get install redis-server"), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: configuration.dataDirectory))
    }
}
