import AgentChatProtocol

/// Every Redis key the broker uses, in one place. Keys that one atomic step touches together share a hash tag
/// (`{…}`), so the layout works unchanged on a Redis Cluster.
public enum RedisKeys {
    public static let prefix = "agentchat:"

    /// Hash: an agent's profile (`name`, `signingKey`, `encryptionKey`, `registeredAt`).
    public static func agent(_ did: DID) -> RedisArgument { RedisArgument("\(prefix)agent:{\(did)}") }

    /// Hash: a token bucket (`tokens`, `ts`) for one limit and one client.
    public static func rateLimit(_ name: String, client: String) -> RedisArgument {
        RedisArgument("\(prefix)ratelimit:\(name):{\(client)}")
    }

    /// Hash: every broker's session-token verification keys, kid → base64url Ed25519 public key.
    public static let signingKeys = RedisArgument("\(prefix)signing-keys")
}
