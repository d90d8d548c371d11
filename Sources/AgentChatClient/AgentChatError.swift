import AgentChatProtocol
import WebSocketClient

/// Why an SDK call failed.
///
/// ``code`` is stable and machine-readable: for a refusal by the broker it is the broker's own code (the `code` of
/// an HTTP error body or of an `error` frame, e.g. `already_registered`, `rate_limited`, `token_invalid`); for
/// failures on this side it is one of the client codes below (`network_error`, `identity_insecure`, ...).
/// ``category`` groups codes by what the caller can do about them. Equality compares codes only, so
/// `#expect(throws: AgentChatError.alreadyRegistered)` matches whatever the details say.
public struct AgentChatError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What kind of failure this is, independent of the exact code.
    public enum Category: String, Sendable, Hashable {
        /// The broker answered and refused (HTTP error status or `error` frame). ``AgentChatError/code`` is its code.
        case server
        /// The broker could not be reached, or the connection broke, or it did not answer in time.
        case network
        /// The broker answered something this client does not understand (not the protocol).
        case protocolViolation
        /// The local identity file is missing, unreadable, insecure or malformed.
        case identity
        /// The caller passed an invalid argument (a bad name, a bad URL), detected before anything was sent.
        case invalidArgument
        /// The client was closed, or is not connected.
        case state
    }

    /// The stable code, e.g. `"already_registered"`.
    public let code: String
    public let category: Category
    /// Human-readable text (the broker's `message` for server errors); never contains key material.
    public let message: String
    /// The HTTP status of a refused HTTP request.
    public var httpStatus: Int?
    /// For `already_registered`: the DID the signing key is registered under.
    public var existingDID: DID?
    /// For an HTTP `429`: the `Retry-After` delay in seconds.
    public var retryAfterSeconds: Int?
    /// For a closed connection: the WebSocket close code, when the broker sent one.
    public var closeCode: CloseCode?
    /// For `member_key_unverified`: the member whose encryption key could not be verified.
    public var member: DID?
    /// For `member_key_unverified`: the channel whose key was not sealed.
    public var channel: ChannelID?

    public init(code: String, category: Category, message: String, httpStatus: Int? = nil,
                existingDID: DID? = nil, retryAfterSeconds: Int? = nil, closeCode: CloseCode? = nil) {
        self.code = code
        self.category = category
        self.message = message
        self.httpStatus = httpStatus
        self.existingDID = existingDID
        self.retryAfterSeconds = retryAfterSeconds
        self.closeCode = closeCode
    }

    public var description: String { message.isEmpty ? code : "\(code): \(message)" }

    public static func == (lhs: AgentChatError, rhs: AgentChatError) -> Bool { lhs.code == rhs.code }
    public func hash(into hasher: inout Hasher) { hasher.combine(code) }

    /// A refusal by the broker with one of its codes.
    static func server(_ code: String, _ message: String, httpStatus: Int? = nil) -> AgentChatError {
        AgentChatError(code: code, category: .server, message: message, httpStatus: httpStatus)
    }
    static func network(_ message: String, closeCode: CloseCode? = nil) -> AgentChatError {
        AgentChatError(code: Codes.networkError, category: .network, message: message, closeCode: closeCode)
    }
    /// A failure to reach the broker: `tls_failed` when TLS failed, `invalid_argument` for a CA file that cannot
    /// be used, else `network_error`.
    static func connection(_ context: String, _ error: any Error) -> AgentChatError {
        switch error as? WebSocketError {
        case .tls(let reason)?:
            AgentChatError(code: Codes.tlsFailed, category: .network, message: "\(context): TLS: \(reason)")
        case .tlsOptions(let reason)?:
            .invalidArgument(reason)
        default:
            .network("\(context): \(error)")
        }
    }
    static func protocolViolation(_ message: String) -> AgentChatError {
        AgentChatError(code: Codes.unexpectedResponse, category: .protocolViolation, message: message)
    }
    static func identity(_ code: String, _ message: String) -> AgentChatError {
        AgentChatError(code: code, category: .identity, message: message)
    }
    static func invalidArgument(_ message: String) -> AgentChatError {
        AgentChatError(code: Codes.invalidArgument, category: .invalidArgument, message: message)
    }
    /// The broker described `member` with an encryption key its registration signature does not vouch for.
    static func memberKeyUnverified(_ member: DID, channel: ChannelID, epoch: Int64, _ check: RegistrationCheck)
        -> AgentChatError
    {
        let why = switch check {
        case .missing: "its profile has no registration signature (registered before profiles kept one?)"
        case .invalid, .valid: "its registration signature does not verify over its name and encryption key "
            + "(the key is not the one it registered)"
        }
        var error = AgentChatError(
            code: Codes.memberKeyUnverified, category: .protocolViolation,
            message: "refused to seal the key of \(channel) epoch \(epoch) for member \(member): \(why); "
                + "no key was sealed or published")
        error.member = member
        error.channel = channel
        return error
    }

    /// The codes this client produces itself, and the broker codes it acts on.
    public enum Codes {
        // Client side.
        public static let networkError = "network_error"
        public static let timeout = "timeout"
        public static let unexpectedResponse = "unexpected_response"
        public static let invalidArgument = "invalid_argument"
        public static let identityNotFound = "identity_not_found"
        public static let identityExists = "identity_exists"
        public static let identityInsecure = "identity_insecure"
        public static let identityInvalid = "identity_invalid"
        public static let identityIO = "identity_io_error"
        public static let notConnected = "not_connected"
        public static let closed = "client_closed"
        public static let unsupportedScheme = "unsupported_scheme"
        /// TLS with the broker failed: its certificate did not verify (unknown CA, expired, issued for another name),
        /// or the handshake failed (e.g. a plain-HTTP broker at an `https://` URL). (A CA file that cannot be read
        /// or holds no certificate is `invalid_argument`.)
        public static let tlsFailed = "tls_failed"
        /// A channel key set failed verification (signature, sender membership, or the envelope did not open).
        public static let keyVerificationFailed = "key_verification_failed"
        /// A member's encryption key is not vouched for by its registration signature (missing or not verifying),
        /// so no channel key was sealed for anyone; ``AgentChatError/member`` names the member.
        public static let memberKeyUnverified = "member_key_unverified"
        // Broker codes (docs/PROTOCOL.md).
        public static let alreadyRegistered = "already_registered"
        public static let rateLimited = "rate_limited"
        public static let authFailed = "auth_failed"
        public static let challengeExpired = "challenge_expired"
        public static let tokenInvalid = "token_invalid"
        public static let notFound = "not_found"
        public static let forbidden = "forbidden"
        public static let notMember = "not_member"
        public static let staleEpoch = "stale_epoch"
        public static let keysExist = "keys_exist"
        public static let unknownAgent = "unknown_agent"
    }

    // Values to match with `==` or `#expect(throws:)`.
    public static let alreadyRegistered = AgentChatError.server(Codes.alreadyRegistered, "")
    public static let rateLimited = AgentChatError.server(Codes.rateLimited, "")
    public static let authFailed = AgentChatError.server(Codes.authFailed, "")
    public static let tokenInvalid = AgentChatError.server(Codes.tokenInvalid, "")
    public static let notFound = AgentChatError.server(Codes.notFound, "")
    public static let forbidden = AgentChatError.server(Codes.forbidden, "")
    public static let notMember = AgentChatError.server(Codes.notMember, "")
    public static let staleEpoch = AgentChatError.server(Codes.staleEpoch, "")
    public static let timeout = AgentChatError(code: Codes.timeout, category: .network, message: "")
    public static let notConnected = AgentChatError(code: Codes.notConnected, category: .state, message: "")
    public static let closed = AgentChatError(code: Codes.closed, category: .state, message: "")
    public static let identityNotFound = AgentChatError.identity(Codes.identityNotFound, "")
    public static let identityExists = AgentChatError.identity(Codes.identityExists, "")
    public static let identityInsecure = AgentChatError.identity(Codes.identityInsecure, "")
    public static let identityInvalid = AgentChatError.identity(Codes.identityInvalid, "")
    public static let tlsFailed = AgentChatError(code: Codes.tlsFailed, category: .network, message: "")
    public static let memberKeyUnverified = AgentChatError(code: Codes.memberKeyUnverified,
                                                           category: .protocolViolation, message: "")
}
