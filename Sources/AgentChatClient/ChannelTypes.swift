import AgentChatProtocol

/// One message of a channel, as ``AgentChatClient`` delivers it: verified and decrypted, or marked as failed.
///
/// A message whose signature does not verify, whose epoch key cannot be obtained, or whose ciphertext does not open
/// has ``failure`` set and **no** ``plaintext``: it is never surfaced as text.
public struct ChannelMessage: Sendable, Equatable {
    public let channel: ChannelID
    /// The broker-assigned offset (1, 2, 3, ... per channel).
    public let offset: Int64
    /// The sender's DID, as the broker recorded it (the authenticated sender of `message.send`).
    public let sender: String
    /// The key epoch the message was encrypted under.
    public let epoch: Int64
    /// The broker's clock when it stored the message, Unix milliseconds.
    public let timestamp: Int64
    /// The sender's `clientMessageId`.
    public let clientMessageID: String
    /// The decrypted bytes; nil unless the signature verified and the ciphertext opened.
    public let plaintext: [UInt8]?
    /// Why the message could not be verified or decrypted; nil for a good message.
    public let failure: ChannelMessageFailure?

    public init(channel: ChannelID, offset: Int64, sender: String, epoch: Int64, timestamp: Int64,
                clientMessageID: String, plaintext: [UInt8]?, failure: ChannelMessageFailure?)
    {
        self.channel = channel
        self.offset = offset
        self.sender = sender
        self.epoch = epoch
        self.timestamp = timestamp
        self.clientMessageID = clientMessageID
        self.plaintext = failure == nil ? plaintext : nil
        self.failure = failure
    }

    /// Whether the sender's signature verified and the ciphertext decrypted.
    public var verified: Bool { failure == nil && plaintext != nil }
    /// The sender's DID, parsed.
    public var senderDID: DID? { DID(parsing: sender) }
    /// The plaintext as UTF-8 text (invalid sequences replaced); nil for a failed message.
    public var text: String? { plaintext.map { String(decoding: $0, as: UTF8.self) } }

    /// `{"channel","offset","sender","epoch","timestamp","clientMessageId","verified","plaintext"|"error"}`.
    public var json: JSONValue {
        var fields: [String: JSONValue] = [
            "channel": .string(channel.rawValue), "offset": .number(Double(offset)), "sender": .string(sender),
            "epoch": .number(Double(epoch)), "timestamp": .number(Double(timestamp)),
            "clientMessageId": .string(clientMessageID), "verified": .bool(verified),
        ]
        if let text { fields["plaintext"] = .string(text) } else { fields["plaintext"] = .null }
        if let failure { fields["error"] = .string(failure.description) }
        return .object(fields)
    }
}

/// Why a channel message was not delivered as plaintext.
public enum ChannelMessageFailure: Sendable, Equatable, CustomStringConvertible {
    /// The stored item lacks a field or has an invalid one.
    case malformed(String)
    /// The Ed25519 signature does not verify against the sender's DID.
    case badSignature
    /// This agent has no key for the message's epoch (the broker's answer code, e.g. `not_found`).
    case keyUnavailable(String)
    /// AES-256-GCM authentication failed (wrong key, tampered ciphertext or associated data).
    case decryptionFailed

    public var description: String {
        switch self {
        case .malformed(let why): "malformed: \(why)"
        case .badSignature: "bad_signature"
        case .keyUnavailable(let code): "key_unavailable: \(code)"
        case .decryptionFailed: "decryption_failed"
        }
    }
}

/// What a (re)subscription found: sent as a stream element every time the SDK subscribes, including after a
/// reconnection.
public struct ChannelResume: Sendable, Equatable {
    public let channel: ChannelID
    /// The offset the SDK asked to resume after (nil: only new messages).
    public let since: Int64?
    /// The channel's latest offset when the broker answered.
    public let latestOffset: Int64
    public let historyEpoch: String
    /// False when messages after `since` were lost (trimmed by retention, or the history restarted): the caller
    /// missed messages.
    public let recovered: Bool
    /// True for a resubscription after a reconnection.
    public let isReconnect: Bool
}

/// A membership change announced by the broker (`channel.event`).
public struct ChannelMembershipEvent: Sendable, Equatable {
    public let channel: ChannelID
    /// `member_joined`, `member_left`, `member_removed`, `member_invited` or `keys_published`.
    public let event: String
    public let did: String
    public let epoch: Int64
}

/// One element of ``AgentChatClient/subscribe(channel:since:)``'s stream.
public enum ChannelStreamEvent: Sendable, Equatable {
    /// A message, in offset order, each offset at most once. Check ``ChannelMessage/verified``.
    case message(ChannelMessage)
    /// The broker confirmed a subscription (first, or after reconnecting). Check ``ChannelResume/recovered``.
    case subscribed(ChannelResume)
    /// A membership change.
    case membership(ChannelMembershipEvent)
    /// The subscription ended (the agent left or was removed, the client closed or gave up); the stream finishes.
    case ended(AgentChatError)

    /// The message, if this element is one.
    public var message: ChannelMessage? { if case .message(let m) = self { m } else { nil } }
}

/// The broker's acknowledgement of ``AgentChatClient/send(channel:text:)``.
public struct SendReceipt: Sendable, Equatable {
    public let channel: ChannelID
    public let offset: Int64
    /// True when the broker had this `clientMessageId` already (a retry): not stored twice.
    public let duplicate: Bool
    public let clientMessageID: String
    public let epoch: Int64
}

/// Counters of what the SDK did on its own (for diagnostics and tests).
public struct ChannelStatistics: Sendable, Equatable {
    /// Key sets this client generated and the broker accepted.
    public var keysPublished = 0
    /// Key sets fetched with `channel.keys.get` and opened.
    public var keysFetched = 0
    /// `message.send` attempts refused with `stale_epoch` (each followed by a re-key and a retry).
    public var staleEpochRetries = 0
    /// Resubscriptions after reconnecting.
    public var resubscriptions = 0
    /// Offset jumps seen in a subscription's stream, each repaired by subscribing again from the last offset
    /// received (the broker replays the missing messages).
    public var gapsRepaired = 0
    public init() {}
}
