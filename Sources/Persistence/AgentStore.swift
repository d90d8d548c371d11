import AgentChatCore
import AgentChatProtocol
import AgentChatRedis

/// Registered agents in Redis. Loop-bound, like the `RedisClient` it uses.
package final class AgentStore: AgentDirectory {
    private let redis: RedisClient

    /// Creates the profile only if no agent has this DID, atomically. ARGV[5] and ARGV[6] (the registration's
    /// timestamp and signature) are empty for a profile without them, and then not written.
    static let registerScript = RedisScript(name: "agent_register", source: """
        if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
        redis.call('HSET', KEYS[1], 'name', ARGV[1], 'signingKey', ARGV[2], 'encryptionKey', ARGV[3],
                   'registeredAt', ARGV[4])
        if ARGV[6] ~= '' then
          redis.call('HSET', KEYS[1], 'registrationTimestamp', ARGV[5], 'registrationSignature', ARGV[6])
        end
        return 1
        """)

    package init(redis: RedisClient) {
        self.redis = redis
        redis.scripts.register(Self.registerScript)
    }

    package func register(_ profile: AgentProfile, completion: @escaping StoreCompletion<RegisterOutcome>) {
        redis.scripts.call(
            Self.registerScript.name, keys: [RedisKeys.agent(profile.did)],
            arguments: [RedisArgument(profile.name), RedisArgument(profile.signingKey),
                        RedisArgument(profile.encryptionKey), RedisArgument(profile.registeredAt),
                        profile.registration.map { RedisArgument($0.timestamp) } ?? RedisArgument(""),
                        RedisArgument(profile.registration?.signature ?? [])]
        ) { result in
            completion(result.flatMap { value in
                switch value.int {
                case 1: .success(.created)
                case 0: .success(.exists)
                default: .failure(.unexpectedReply("agent_register returned \(value)"))
                }
            }.unavailableOnFailure)
        }
    }

    /// The profile of `did`, or nil when it is not registered. A registration signature that is absent (a profile
    /// stored before they were kept) or malformed is left out: clients then refuse to trust the profile's keys.
    package func profile(_ did: DID, completion: @escaping StoreCompletion<AgentProfile?>) {
        redis.send(["HMGET", RedisKeys.agent(did), "name", "signingKey", "encryptionKey", "registeredAt",
                    "registrationTimestamp", "registrationSignature"]) { result in
            completion(result.flatMap { value in
                guard let fields = value.array, fields.count == 6 else {
                    return .failure(.unexpectedReply("HMGET returned \(value)"))
                }
                guard let nameBytes = fields[0].bytes else { return .success(nil) }
                guard let signingKey = fields[1].bytes, signingKey == did.signingKey,
                    let encryptionKey = fields[2].bytes, encryptionKey.count == 32,
                    let registeredAt = fields[3].bytes.flatMap({ Int64(String(decoding: $0, as: UTF8.self)) })
                else { return .failure(.unexpectedReply("agent record of \(did) is damaged")) }
                var registration: RegistrationSignature?
                if let timestamp = fields[4].bytes.flatMap({ Int64(String(decoding: $0, as: UTF8.self)) }),
                    let signature = fields[5].bytes, signature.count == RegistrationSignature.signatureLength
                {
                    registration = RegistrationSignature(timestamp: timestamp, signature: signature)
                }
                return .success(AgentProfile(name: String(decoding: nameBytes, as: UTF8.self),
                                             signingKey: signingKey, encryptionKey: encryptionKey,
                                             registeredAt: registeredAt, registration: registration))
            }.unavailableOnFailure)
        }
    }
}
