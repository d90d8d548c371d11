import AgentChatProtocol
import AgentChatRedis

/// Every Redis key the broker uses, in one place. Keys that one atomic step touches together share a hash tag
/// (`{…}`), so the layout works unchanged on a Redis Cluster.
public enum RedisKeys {
    public static let prefix = "agentchat:"

    /// Hash: an agent's profile (`name`, `signingKey`, `encryptionKey`, `registeredAt`, `registrationTimestamp`,
    /// `registrationSignature`: the self-signature that binds the encryption key to the DID).
    public static func agent(_ did: DID) -> RedisArgument { RedisArgument("\(prefix)agent:{\(did)}") }

    /// Hash: a token bucket (`tokens`, `ts`) for one limit and one client.
    public static func rateLimit(_ name: String, client: String) -> RedisArgument {
        RedisArgument("\(prefix)ratelimit:\(name):{\(client)}")
    }

    /// Set: the channels an agent belongs to (an index; the channel's member set is the truth).
    public static func agentChannels(_ did: DID) -> RedisArgument { RedisArgument("\(prefix)agent:{\(did)}:channels") }

    /// Hash: a channel's metadata (`name`, `owner`, `open`, `epoch`, `keyedEpoch`, `seq`, `historyEpoch`, …).
    public static func channel(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}") }
    /// Set: member DIDs.
    public static func members(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:members") }
    /// Set: invited DIDs.
    public static func invites(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:invites") }
    /// Hash: the key envelopes of one epoch (recipient DID → sealed box, plus `_sender` and `_signature`).
    public static func keys(_ id: ChannelID, epoch: Int64) -> RedisArgument {
        RedisArgument("\(prefix)ch:{\(id)}:keys:\(epoch)")
    }
    /// Hash: read cursors, member DID → the last offset it has read.
    public static func cursors(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:cursors") }
    /// Stream: the message history, entry id `0-<offset>`, fields `m` (the stored item) and `t` (ms).
    public static func log(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:log") }
    /// String: the offset a sender's client message id got, for the dedup window.
    public static func dedup(_ id: ChannelID, sender: DID, clientMessageID: String) -> RedisArgument {
        RedisArgument("\(prefix)ch:{\(id)}:dedup:\(sender):\(clientMessageID)")
    }
    /// Pub/sub channel: stored items and `channel.event` frames of one channel.
    public static func feed(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:feed") }

    /// Hash: messages per second (field: Unix second) of the last two minutes.
    public static func rate(_ id: ChannelID) -> RedisArgument { RedisArgument("\(prefix)ch:{\(id)}:rate") }
    /// Sorted set: listed channels, scored by last activity (ms).
    public static let directory = RedisArgument("\(prefix)directory")
    /// String with a TTL: the agent has a connection to some broker (or had one within the grace period).
    public static func presence(_ did: DID) -> RedisArgument { RedisArgument("\(prefix)presence:{\(did)}") }

    /// Hash: every broker's session-token verification keys, kid → base64url Ed25519 public key.
    public static let signingKeys = RedisArgument("\(prefix)signing-keys")
}
