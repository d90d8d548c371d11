/// A stable, machine-readable error code carried in `error` frames and HTTP error bodies.
///
/// A struct with static members rather than an enum, so a client built against an older list still decodes codes
/// added later. Every code is listed, with its meaning, in the error table of `docs/PROTOCOL.md`.
public struct ErrorCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }
    public var description: String { rawValue }

    // Frames (WebSocket).
    /// The frame is not valid JSON.
    public static let badJSON = ErrorCode(rawValue: "bad_json")
    /// The frame is JSON but not an object with a string `type`.
    public static let badFrame = ErrorCode(rawValue: "bad_frame")
    /// The `type` is not one this broker knows.
    public static let unknownType = ErrorCode(rawValue: "unknown_type")
    /// A required field is absent.
    public static let missingField = ErrorCode(rawValue: "missing_field")
    /// A field has the wrong JSON type or an invalid value.
    public static let invalidField = ErrorCode(rawValue: "invalid_field")
    /// The frame carries a field this frame type does not define.
    public static let unknownField = ErrorCode(rawValue: "unknown_field")
    /// Binary WebSocket messages are not part of protocol v1.
    public static let binaryNotSupported = ErrorCode(rawValue: "binary_not_supported")
    /// The connection sent frames faster than its limit; the frame was dropped.
    public static let rateLimited = ErrorCode(rawValue: "rate_limited")
    /// The store (Redis) is unreachable; the request changed nothing and may be retried.
    public static let unavailable = ErrorCode(rawValue: "unavailable")
    /// An unexpected broker fault; the request changed nothing.
    public static let internalError = ErrorCode(rawValue: "internal_error")

    // Identity.
    /// The registration signature does not verify.
    public static let badSignature = ErrorCode(rawValue: "bad_signature")
    /// The registration timestamp is more than 5 minutes from the broker's clock.
    public static let staleTimestamp = ErrorCode(rawValue: "stale_timestamp")
    /// The signing key is registered already.
    public static let alreadyRegistered = ErrorCode(rawValue: "already_registered")
    /// Login failed: bad signature, or the DID is not registered.
    public static let authFailed = ErrorCode(rawValue: "auth_failed")
    /// The `hello` challenge expired before the `auth` arrived.
    public static let challengeExpired = ErrorCode(rawValue: "challenge_expired")
    /// The session token was refused; the message names why.
    public static let tokenInvalid = ErrorCode(rawValue: "token_invalid")
    /// The frame needs an authenticated connection.
    public static let notAuthenticated = ErrorCode(rawValue: "not_authenticated")
    /// `auth` on a connection that is authenticated already (or still authenticating).
    public static let alreadyAuthenticated = ErrorCode(rawValue: "already_authenticated")

    // Channels.
    /// No such channel, or a private channel the agent is not a member of, or no such keys; over HTTP, no
    /// endpoint at this path.
    public static let notFound = ErrorCode(rawValue: "not_found")
    /// The agent may not do this (remove without being the owner).
    public static let forbidden = ErrorCode(rawValue: "forbidden")
    /// The agent is not a member of this channel.
    public static let notMember = ErrorCode(rawValue: "not_member")
    /// A DID that is not registered.
    public static let unknownAgent = ErrorCode(rawValue: "unknown_agent")
    /// The epoch is not the current one, or its keys are not published yet.
    public static let staleEpoch = ErrorCode(rawValue: "stale_epoch")
    /// Keys for this epoch were published already.
    public static let keysExist = ErrorCode(rawValue: "keys_exist")
    /// The channel has the most members a channel may have.
    public static let channelFull = ErrorCode(rawValue: "channel_full")

    // HTTP.
    /// A JSON endpoint called with another `Content-Type`.
    public static let unsupportedMediaType = ErrorCode(rawValue: "unsupported_media_type")
    // Peeks.
    /// Refusal is possible only while the peek is pending, before its deadline.
    public static let peekNotRefusable = ErrorCode(rawValue: "peek_not_refusable")
    /// The peek takes no grant now (only after its refusal window, while it waits for one).
    public static let peekNotGrantable = ErrorCode(rawValue: "peek_not_grantable")
    /// The payment provider could not be reached; nothing was created or charged.
    public static let paymentUnavailable = ErrorCode(rawValue: "payment_unavailable")
    /// A CORS preflight from an origin that is not allowed.
    public static let originNotAllowed = ErrorCode(rawValue: "origin_not_allowed")
    /// The endpoint exists but not for this method.
    public static let methodNotAllowed = ErrorCode(rawValue: "method_not_allowed")
    /// The request body is larger than the configured cap.
    public static let bodyTooLarge = ErrorCode(rawValue: "body_too_large")
    /// `Content-Length` is missing where a body is required, or is not a plain decimal number.
    public static let badContentLength = ErrorCode(rawValue: "bad_content_length")
    /// Chunked or otherwise encoded request bodies are not accepted.
    public static let unsupportedTransferEncoding = ErrorCode(rawValue: "unsupported_transfer_encoding")
    /// An `Upgrade` other than `websocket` (for example `h2c`): this broker serves HTTP/1.1 only.
    public static let upgradeNotSupported = ErrorCode(rawValue: "upgrade_not_supported")
    /// A WebSocket upgrade that does not offer the `agentchat.v1` subprotocol.
    public static let subprotocolRequired = ErrorCode(rawValue: "subprotocol_required")
    /// A request head that is not well-formed HTTP/1.1: a malformed request line, a missing HTTP version, a
    /// request target that is not a path, a header line without a colon, an obs-fold line, a control character.
    public static let badRequest = ErrorCode(rawValue: "bad_request")
    /// A method this broker does not implement (anything but GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS).
    public static let notImplemented = ErrorCode(rawValue: "not_implemented")
    /// The request target is longer than the broker accepts.
    public static let uriTooLong = ErrorCode(rawValue: "uri_too_long")
    /// The request head (request line and header fields) is larger than the broker accepts, or has too many fields.
    public static let headersTooLarge = ErrorCode(rawValue: "headers_too_large")
    /// An HTTP version other than 1.1 or 1.0 (for example the HTTP/2 connection preface).
    public static let httpVersionNotSupported = ErrorCode(rawValue: "http_version_not_supported")
    /// A WebSocket upgrade with a `Sec-WebSocket-Version` other than 13; the answer carries `Sec-WebSocket-Version: 13`.
    public static let upgradeRequired = ErrorCode(rawValue: "upgrade_required")
    /// A WebSocket upgrade that is not a well-formed one: not GET, not HTTP/1.1, no `Connection: Upgrade`, or no valid
    /// `Sec-WebSocket-Key`.
    public static let badUpgrade = ErrorCode(rawValue: "bad_upgrade")
    /// The request head did not arrive complete within the broker's time limit.
    public static let requestTimeout = ErrorCode(rawValue: "request_timeout")
    /// An admin endpoint called without the admin token (`Authorization: Bearer …`), or with another one.
    public static let unauthorized = ErrorCode(rawValue: "unauthorized")
}
