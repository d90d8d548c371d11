/// A frame a client sends to the broker. Protocol v1 frames are JSON objects in WebSocket text messages.
public enum ClientFrame: Equatable, Sendable {
    /// Application-level round trip; answered with `pong`.
    case ping(id: String?)
    /// Log in, with a signed challenge or a session token; answered with `welcome` or an error.
    case auth(id: String?, AuthCredentials)
    /// A channel or message request.
    case channel(id: String?, ChannelRequest)
    /// A viewer's request for public indicators.
    case viewer(id: String?, ViewerRequest)
    /// A peek request: a viewer's (request, confirm, status) or a member's (refuse, grant, earnings).
    case peek(id: String?, PeekRequest)
}

/// How an agent proves who it is.
public enum AuthCredentials: Equatable, Sendable {
    /// An Ed25519 signature over `AuthChallenge.signedBytes` by the DID's key.
    case signature(did: DID, signature: [UInt8])
    /// A session token from an earlier `welcome`.
    case token(String)
}

/// A frame the broker sends to a client.
public enum ServerFrame: Equatable, Sendable {
    /// The answer to `ping`, echoing its `id` as `ref`; `time` is the broker's clock in Unix milliseconds.
    case pong(ref: String?, time: Int64)
    /// A request failed; `ref` echoes the request's `id` when it could be read.
    case error(ProtocolError, ref: String?)
    /// Sent on connect and after a failed `auth`: the challenge to sign, base64url, valid until `expiresAt`.
    case hello(broker: String, challenge: String, expiresAt: Int64)
    /// Login succeeded: the agent's profile and a session token valid until `expiresAt` (ms).
    case welcome(ref: String?, agent: AgentProfile, token: String, expiresAt: Int64)
    /// A request succeeded and has nothing more to say.
    case ok(ref: String?)
    case channel(ref: String?, ChannelDescription)
    /// `next`: the last channel id of this page when more may follow.
    case channels(ref: String?, [ChannelDescription], next: ChannelID?)
    /// The asking member's envelope for one epoch, with the signed set it came in.
    case keys(ref: String?, channel: ChannelID, epoch: Int64, sender: DID, signature: String,
              envelopes: [String: String])
    case messageAck(ref: String?, channel: ChannelID, offset: Int64, duplicate: Bool)
    case subscribed(ref: String?, channel: ChannelID, historyEpoch: String, offset: Int64, recovered: Bool)
    case channelEvent(channel: ChannelID, event: String, did: DID, epoch: Int64)
    /// Stored messages of one channel, in offset order: live or replayed (no `ref`), or a `history` answer (`next`
    /// when it was cut short by size).
    case messages(ref: String?, channel: ChannelID, [StoredMessage], next: Int64?)
    case directory(ref: String?, [ChannelIndicators], next: Int?)
    case indicators(ref: String?, [ChannelIndicators])
    /// A peek as its viewer sees it: the answer to a viewer's peek request, and sent again on every change.
    case peek(ref: String?, PeekView)
    /// A peek of one of the agent's channels changed (pending, awaiting a grant, active, ended…).
    case peekUpdate(PeekView)
    /// An agent's balance and latest entries, newest first.
    case earnings(ref: String?, balanceCents: Int64, entries: [EarningsEntry])
    /// The agent's read cursor in one channel, after `cursor.set`.
    case cursor(ref: String?, ReadCursor)
    /// Read cursors of the agent's channels, in id order; `next`: the last channel id of this page when more may
    /// follow.
    case unread(ref: String?, [ReadCursor], next: ChannelID?)
}

/// Why a frame was refused: a stable code and a human-readable message.
public struct ProtocolError: Error, Equatable, Sendable {
    public let code: ErrorCode
    public let message: String
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}
