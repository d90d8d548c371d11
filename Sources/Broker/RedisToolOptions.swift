import AgentChatRedis
import ArgumentParser
import Foundation
import Logging

/// The Redis options of the operator tools (`backup`, `restore`): the broker's own (`--redis-url`,
/// `--redis-sentinels` with `--redis-master`, `--redis-username`, `--redis-password-file`, and their
/// `AGENTCHAT_*` variables), and without any of them the embedded Redis of `--data-dir`.
struct RedisToolOptions: ParsableArguments {
    @Option(help: BrokerSettings.redisURL.help) var redisURL: String?
    @Option(help: BrokerSettings.redisSentinels.help) var redisSentinels: String?
    @Option(help: BrokerSettings.redisMaster.help) var redisMaster: String?
    @Option(help: BrokerSettings.redisUsername.help) var redisUsername: String?
    @Option(help: BrokerSettings.redisPasswordFile.help) var redisPasswordFile: String?
    @Option(help: "The broker's data directory, whose embedded Redis to use when no Redis is given (env AGENTCHAT_DATA_DIR, default ./data).")
    var dataDir: String?

    /// Where Redis is: a target, or (none given) the data directory of an embedded Redis.
    enum Resolved {
        case target(RedisTarget)
        case embedded(dataDirectory: String)
    }

    func resolve(environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Resolved {
        typealias S = BrokerSettings
        let url: String? = try S.redisURL.resolve(redisURL, environment)
        var sentinelFlag: [RedisEndpoint]?
        if let redisSentinels {
            guard let parsed = S.redisSentinels.parse(redisSentinels) else {
                throw ValidationError("--redis-sentinels: \(redisSentinels) is not a valid value")
            }
            sentinelFlag = parsed
        }
        let sentinels: [RedisEndpoint]? = try S.redisSentinels.resolve(sentinelFlag, environment)
        let master: String? = try S.redisMaster.resolve(redisMaster, environment)
        let username: String? = try S.redisUsername.resolve(redisUsername, environment)
        let passwordFile: String? = try S.redisPasswordFile.resolve(redisPasswordFile, environment)
        if sentinels != nil, url != nil { throw ValidationError("give --redis-url or --redis-sentinels, not both") }
        if (sentinels == nil) != (master == nil) {
            throw ValidationError("--redis-sentinels and --redis-master go together")
        }
        if username != nil, passwordFile == nil { throw ValidationError("--redis-username needs --redis-password-file") }
        var target: RedisTarget
        if let sentinels, let master {
            target = RedisTarget(.sentinel(sentinels: sentinels, master: master))
        } else if let url {
            target = try RedisTarget(url: url)
        } else {
            if passwordFile != nil { throw ValidationError("--redis-password-file needs --redis-url or --redis-sentinels") }
            let directory: String = try S.dataDirectory.resolve(dataDir, environment)
            return .embedded(dataDirectory: URL(fileURLWithPath: directory).standardizedFileURL.path)
        }
        if let passwordFile {
            let password: String
            do {
                password = try String(contentsOfFile: passwordFile, encoding: .utf8)
                    .split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first
                    .map { String($0).trimmingCharacters(in: .whitespacesAndNewlines) } ?? ""
            } catch {
                throw ValidationError("cannot read --redis-password-file \(passwordFile): \(error.localizedDescription)")
            }
            guard !password.isEmpty else { throw ValidationError("--redis-password-file \(passwordFile) holds no password") }
            target.credentials = RedisCredentials(username: username ?? target.credentials?.username, password: password)
        }
        return .target(target)
    }

    /// The embedded Redis's socket in a data directory.
    static func socket(in dataDirectory: String) -> RedisTarget { .direct(.unix(path: dataDirectory + "/redis.sock")) }

    /// Errors only on standard error: the tools' output is their summary.
    static func quietLogs() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
    }
}
