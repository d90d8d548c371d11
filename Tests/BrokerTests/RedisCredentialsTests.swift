import AgentChatRedis
import Foundation
import Testing
import TestSupport

/// Redis credentials: in the URL (`redis://user:password@host`), or an ACL user with a password file; sent with
/// `AUTH` on every connection, and never printed (not in the broker's output, not in `--help`).
@Suite(.serialized) struct RedisCredentialsTests {
    /// A `redis-server` on a free port that needs `password`; an ACL user `agentchat` with `userPassword`.
    final class ProtectedRedis {
        let port: Int
        let process: ChildProcess
        let directory: String

        init(password: String, userPassword: String) throws {
            port = try EmbeddedRedis.freeLoopbackPort()
            directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("agentchat-auth-\(UUID().uuidString.prefix(8))").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            process = try ChildProcess(executable: "/usr/bin/env", arguments: [
                "redis-server", "--port", "\(port)", "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", directory, "--requirepass", password,
                "--user", "agentchat", "on", ">\(userPassword)", "~*", "&*", "+@all",
            ])
            let deadline = Date().addingTimeInterval(10)
            while (try? HTTPProbe.rawExchange(port: port, bytes: Array("PING\r\n".utf8), timeout: 0.5))?.isEmpty != false {
                guard Date() < deadline else { throw FixtureError.unexpected("redis-server did not start") }
                Thread.sleep(forTimeInterval: 0.1)
            }
        }

        deinit {
            process.stop()
            try? FileManager.default.removeItem(atPath: directory)
        }
    }

    static func health(_ broker: BrokerProcess, _ status: Int, timeout: Double = 20) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if (try? HTTPProbe.request(port: broker.port, path: "/health"))?.status == status { return true }
            Thread.sleep(forTimeInterval: 0.1)
        }
        return false
    }

    @Test func aPasswordInTheURLOrAUserWithAPasswordFileLogsInAndIsNeverPrinted() throws {
        let secret = "hunter2-\(UUID().uuidString.prefix(6))"
        let userSecret = "s3cr@t-\(UUID().uuidString.prefix(6))"
        let redis = try ProtectedRedis(password: secret, userPassword: userSecret)

        let byURL = try BrokerProcess(environment: ["AGENTCHAT_REDIS_URL": "redis://:\(secret)@127.0.0.1:\(redis.port)"],
                                      logLevel: "debug")
        defer { byURL.stop() }
        #expect(Self.health(byURL, 200))
        #expect(!byURL.combinedOutput.contains(secret))
        #expect(byURL.combinedOutput.contains("with a password"))

        let file = redis.directory + "/password"
        try (userSecret + "\n").write(toFile: file, atomically: true, encoding: .utf8)
        let asUser = try BrokerProcess(extraArguments: ["--redis-url", "redis://127.0.0.1:\(redis.port)",
                                                        "--redis-username", "agentchat", "--redis-password-file", file],
                                       logLevel: "debug")
        defer { asUser.stop() }
        #expect(Self.health(asUser, 200))
        #expect(!asUser.combinedOutput.contains(userSecret))
        #expect(asUser.combinedOutput.contains("as agentchat"))
    }

    @Test func aWrongPasswordIsReportedWithoutItAndTheBrokerStaysUnhealthy() throws {
        let redis = try ProtectedRedis(password: "right-\(UUID().uuidString.prefix(6))", userPassword: "other")
        let wrong = "wrong-\(UUID().uuidString.prefix(6))"
        let broker = try BrokerProcess(environment: ["AGENTCHAT_REDIS_URL": "redis://:\(wrong)@127.0.0.1:\(redis.port)"],
                                       logLevel: "debug")
        defer { broker.stop() }
        _ = try broker.process.waitForOutput(containing: "Redis refused the credentials", timeout: 20)
        #expect(Self.health(broker, 503, timeout: 5))
        #expect(!broker.combinedOutput.contains(wrong))
    }

    @Test func badRedisSettingsAreRefusedAtStartWithoutEchoingThePassword() throws {
        let secret = "leak-\(UUID().uuidString.prefix(6))"
        for (arguments, message) in [
            (["--redis-url", "redis://user@127.0.0.1:1"], "a user needs a password"),
            (["--redis-url", "redis://u:\(secret)%zz@127.0.0.1:1"], "percent-encoding"),
            (["--redis-sentinels", "127.0.0.1:1"], "--redis-sentinels and --redis-master go together"),
            (["--redis-sentinels", "127.0.0.1:1", "--redis-master", "m", "--redis-url", "redis://127.0.0.1:1"],
             "not both"),
            (["--redis-sentinels", "127.0.0.1:1,", "--redis-master", "m"], "not a valid value"),
            (["--redis-username", "agentchat"], "needs --redis-password-file"),
        ] {
            let process = try ChildProcess(executable: BrokerProcess.locateExecutable(),
                                           arguments: ["--port", "0", "--data-dir", "/nonexistent/agentchat"] + arguments)
            let status = try process.waitForExit(timeout: 20)
            #expect(status != 0, "\(arguments)")
            #expect(process.combinedOutput.contains(message), "\(arguments): \(process.combinedOutput)")
            #expect(!process.combinedOutput.contains(secret))
        }
        let help = try ChildProcess(executable: BrokerProcess.locateExecutable(), arguments: ["--help"])
        _ = try help.waitForExit(timeout: 20)
        #expect(help.stdout.contains("--redis-sentinels") && help.stdout.contains("--redis-password-file"))
    }

    @Test func urlsAndCredentialsParseAndDescribeThemselvesWithoutThePassword() throws {
        let target = try RedisTarget(url: "redis://alice:p%40ss%3Aword@[::1]:6390/0")
        #expect(target.location == .direct(.tcp(host: "::1", port: 6390)))
        #expect(target.credentials == RedisCredentials(username: "alice", password: "p@ss:word"))
        #expect(!"\(target)".contains("p@ss") && "\(target)".contains("as alice"))
        #expect(!"\(target.credentials!)".contains("p@ss") && !String(reflecting: target.credentials!).contains("p@ss"))
        #expect(try RedisTarget(url: "redis://:pw@localhost").credentials == RedisCredentials(password: "pw"))
        #expect(try RedisTarget(url: "unix:///run/redis.sock").credentials == nil)
        #expect(throws: RedisEndpointError.self) { try RedisTarget(url: "redis://u:@localhost") }
        let error = #expect(throws: RedisEndpointError.self) { try RedisTarget(url: "redis://u:pw@localhost:99999") }
        #expect(error.map { !"\($0)".contains("pw") } == true)
        #expect(try RedisEndpoint(hostPort: "10.0.0.2:26379") == .tcp(host: "10.0.0.2", port: 26379))
        #expect(throws: RedisEndpointError.self) { try RedisEndpoint(hostPort: "redis://10.0.0.2") }
    }
}
