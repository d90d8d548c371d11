import AgentChatProtocol

/// Registered agents in Redis. Loop-bound, like the `RedisClient` it uses.
public final class AgentStore {
    public enum RegisterOutcome: Equatable, Sendable {
        case created
        /// The key was registered before; nothing changed.
        case exists
    }

    private let redis: RedisClient

    /// Creates the profile only if no agent has this DID, atomically.
    static let registerScript = RedisScript(name: "agent_register", source: """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], 'name', ARGV[1], 'signingKey', ARGV[2], 'encryptionKey', ARGV[3],
                   'registeredAt', ARGV[4])
        return 1
        """)

    public init(redis: RedisClient) {
        self.redis = redis
        redis.scripts.register(Self.registerScript)
    }

    public func register(_ profile: AgentProfile, completion: @escaping (Result<RegisterOutcome, RedisError>) -> Void) {
        redis.scripts.call(
            Self.registerScript.name, keys: [RedisKeys.agent(profile.did)],
            arguments: [RedisArgument(profile.name), RedisArgument(profile.signingKey),
                        RedisArgument(profile.encryptionKey), RedisArgument(profile.registeredAt)]
        ) { result in
            completion(result.flatMap { value in
                switch value.int {
                case 1: .success(.created)
                case 0: .success(.exists)
                default: .failure(.unexpectedReply("agent_register returned \(value)"))
                }
            })
        }
    }

    /// The profile of `did`, or nil when it is not registered.
    public func profile(_ did: DID, completion: @escaping (Result<AgentProfile?, RedisError>) -> Void) {
        redis.send(["HMGET", RedisKeys.agent(did), "name", "signingKey", "encryptionKey", "registeredAt"]) { result in
            completion(result.flatMap { value in
                guard let fields = value.array, fields.count == 4 else {
                    return .failure(.unexpectedReply("HMGET returned \(value)"))
                }
                guard let nameBytes = fields[0].bytes else { return .success(nil) }
                guard let signingKey = fields[1].bytes, signingKey == did.signingKey,
                    let encryptionKey = fields[2].bytes, encryptionKey.count == 32,
                    let registeredAt = fields[3].bytes.flatMap({ Int64(String(decoding: $0, as: UTF8.self)) })
                else { return .failure(.unexpectedReply("agent record of \(did) is damaged")) }
                return .success(AgentProfile(name: String(decoding: nameBytes, as: UTF8.self),
                                             signingKey: signingKey, encryptionKey: encryptionKey,
                                             registeredAt: registeredAt))
            })
        }
    }
}
