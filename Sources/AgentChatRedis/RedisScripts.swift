import AgentChatLoop
import Logging

/// A Lua script known by name.
public struct RedisScript: Sendable, Hashable {
    public let name: String
    public let source: String
    public init(name: String, source: String) {
        self.name = name
        self.source = source
    }
}

/// Lua scripts registered by name, loaded with SCRIPT LOAD on every (re)connection and called with EVALSHA.
///
/// Loop-bound. A `NOSCRIPT` reply (after `SCRIPT FLUSH` or a server restart that lost the cache) reloads the script
/// and retries once, transparently.
///
/// A cluster client's `scripts` keeps the registrations and hands them, and every call, to the cluster router, which
/// registers them on each master's own `RedisScripts` and runs a call on the master of its first key's slot.
public final class RedisScripts {
    private let connection: RedisConnection
    /// Cluster mode: registrations and calls go there.
    weak var cluster: RedisCluster?
    private var scripts: [String: RedisScript] = [:]
    private var shas: [String: String] = [:]
    private let logger: Logger

    /// How many SCRIPT LOAD commands succeeded; for tests and metrics.
    public private(set) var loadCount = 0

    public init(connection: RedisConnection, logger: Logger = Logger(label: "agentchat.redis.scripts")) {
        self.connection = connection
        self.logger = logger
        connection.addConnectHook { [weak self] in self?.loadAll() }
    }

    /// Registers `script`; loads it now if connected. Registering a name again replaces its source.
    public func register(_ script: RedisScript) {
        connection.loop.preconditionInEventLoop()
        if scripts[script.name] != script { shas[script.name] = nil }
        scripts[script.name] = script
        if let cluster { return cluster.register(script) }
        if connection.state == .connected { load(script.name) { _ in } }
    }

    /// The SHA1 the server returned for `name`, once loaded.
    public func sha(of name: String) -> String? {
        connection.loop.preconditionInEventLoop()
        return shas[name]
    }

    /// Runs script `name` with EVALSHA (`keys` then `arguments`).
    public func call(_ name: String, keys: [RedisArgument] = [], arguments: [RedisArgument] = [],
                     completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        connection.loop.preconditionInEventLoop()
        guard scripts[name] != nil else {
            completion(.failure(.unknownScript(name)))
            return
        }
        if let cluster { return cluster.call(name, keys: keys, arguments: arguments, completion: completion) }
        if let sha = shas[name] {
            evalsha(name, sha: sha, keys: keys, arguments: arguments, retry: true, completion: completion)
        } else {
            load(name) { [weak self] result in
                guard let self else { return completion(.failure(.closed)) }
                switch result {
                case .success(let sha):
                    self.evalsha(name, sha: sha, keys: keys, arguments: arguments, retry: false, completion: completion)
                case .failure(let error):
                    completion(.failure(error))
                }
            }
        }
    }

    private func evalsha(_ name: String, sha: String, keys: [RedisArgument], arguments: [RedisArgument], retry: Bool,
                         completion: @escaping (Result<RedisValue, RedisError>) -> Void) {
        let command: [RedisArgument] = ["EVALSHA", RedisArgument(sha), RedisArgument(keys.count)] + keys + arguments
        connection.send(command) { [weak self] result in
            guard retry, case .failure(let error) = result, error.isNoScript, let self else {
                return completion(result)
            }
            self.logger.info("script missing on the server; reloading", metadata: ["script": "\(name)"])
            self.load(name) { [weak self] loaded in
                guard let self else { return completion(.failure(.closed)) }
                switch loaded {
                case .success(let sha):
                    self.evalsha(name, sha: sha, keys: keys, arguments: arguments, retry: false, completion: completion)
                case .failure(let error):
                    completion(.failure(error))
                }
            }
        }
    }

    private func load(_ name: String, completion: @escaping (Result<String, RedisError>) -> Void) {
        guard let script = scripts[name] else { return completion(.failure(.unknownScript(name))) }
        connection.send(["SCRIPT", "LOAD", RedisArgument(script.source)]) { [weak self] result in
            switch result {
            case .success(let value):
                guard let sha = value.string, sha.count == 40 else {
                    return completion(.failure(.unexpectedReply("SCRIPT LOAD did not return a SHA1")))
                }
                if let self, self.scripts[name] == script {
                    self.shas[name] = sha
                    self.loadCount += 1
                }
                completion(.success(sha))
            case .failure(let error):
                self?.logger.error("cannot load script", metadata: ["script": "\(name)", "error": "\(error)"])
                completion(.failure(error))
            }
        }
    }

    private func loadAll() {
        guard cluster == nil else { return }
        for name in scripts.keys.sorted() { load(name) { _ in } }
    }
}
