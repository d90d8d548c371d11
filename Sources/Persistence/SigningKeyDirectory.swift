import AgentChatCore
import AgentChatRedis

/// Session-token verification keys shared through Redis: every broker publishes its public keys, and looks up
/// the keys of others when a token names a `kid` it does not hold. Private keys never leave a broker's data
/// directory. Loop-bound.
package final class SigningKeyDirectory: SigningKeyDirectoring {
    private let redis: RedisClient

    package init(redis: RedisClient) { self.redis = redis }

    /// Publishes `keys` (kid → Ed25519 public key).
    package func publish(_ keys: [String: [UInt8]], completion: @escaping StoreCompletion<Void>) {
        guard !keys.isEmpty else { return completion(.success(())) }
        var arguments: [RedisArgument] = ["HSET", RedisKeys.signingKeys]
        for (kid, key) in keys.sorted(by: { $0.key < $1.key }) {
            arguments.append(RedisArgument(kid))
            arguments.append(RedisArgument(key))
        }
        redis.send(arguments) { completion($0.map { _ in () }.unavailableOnFailure) }
    }

    /// The public key published under `kid`, or nil.
    package func publicKey(kid: String, completion: @escaping StoreCompletion<[UInt8]?>) {
        redis.send(["HGET", RedisKeys.signingKeys, RedisArgument(kid)]) { result in
            completion(result.map { $0.bytes }.unavailableOnFailure)
        }
    }

    package func whenConnected(_ hook: @escaping () -> Void) {
        redis.addConnectHook(hook)  // in a cluster: every master's (re)connection
    }
}
