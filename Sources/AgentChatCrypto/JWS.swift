import AgentChatProtocol

/// Compact JWS session tokens (RFC 7515, RFC 7519 claims) signed EdDSA with Ed25519 (RFC 8037).
///
/// The header is always exactly `{"alg":"EdDSA","typ":"JWT","kid":"<kid>"}`. Tokens are made by ``JWSSigner`` and
/// checked by ``JWSVerifier``.
public enum JWS {
    /// The only algorithm this module signs or accepts.
    public static let algorithm = "EdDSA"
    /// Longest token the verifier will look at, in bytes.
    public static let maxTokenLength = 8192

    /// The claims of a session token. Times are NumericDate: whole seconds since the Unix epoch.
    public struct Claims: Sendable, Equatable {
        /// `iss`: who issued the token (the broker).
        public var issuer: String
        /// `aud`: who it is for. Written as a string when there is one audience, an array otherwise.
        public var audience: [String]
        /// `sub`: the agent the token speaks for.
        public var subject: DID
        /// `iat`: when it was issued.
        public var issuedAt: Int64
        /// `nbf`: not valid before.
        public var notBefore: Int64
        /// `exp`: not valid at or after.
        public var expiresAt: Int64
        /// `jti`: a unique identifier (base64url of 16 random bytes when made by ``init(issuer:audience:subject:now:lifetime:)``).
        public var tokenID: String

        public init(issuer: String, audience: [String], subject: DID, issuedAt: Int64, notBefore: Int64,
                    expiresAt: Int64, tokenID: String)
        {
            self.issuer = issuer
            self.audience = audience
            self.subject = subject
            self.issuedAt = issuedAt
            self.notBefore = notBefore
            self.expiresAt = expiresAt
            self.tokenID = tokenID
        }

        /// Claims for a token valid from `now` for `lifetime` seconds, with a fresh random `jti`.
        public init(issuer: String, audience: String, subject: DID, now: Int64, lifetime: Int64) {
            self.init(issuer: issuer, audience: [audience], subject: subject, issuedAt: now, notBefore: now,
                      expiresAt: now + lifetime, tokenID: Base64URL.encode(SecureRandom.bytes(16)))
        }

        /// The claims as a JSON object.
        var json: JSONValue {
            .object([
                "iss": .string(issuer),
                "aud": audience.count == 1 ? .string(audience[0]) : .array(audience.map(JSONValue.string)),
                "sub": .string(subject.description),
                "iat": .number(Double(issuedAt)),
                "nbf": .number(Double(notBefore)),
                "exp": .number(Double(expiresAt)),
                "jti": .string(tokenID),
            ])
        }
    }
}
