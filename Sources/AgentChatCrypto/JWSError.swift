/// Why a token was refused. Each reason has its own stable ``code``; the ``detail`` is for logs only (it never
/// quotes key material, and quotes token contents only after they were parsed).
public struct JWSError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case malformed = "token_malformed"
        case invalidBase64 = "token_invalid_base64"
        case invalidJSON = "token_invalid_json"
        case unsupportedAlgorithm = "token_unsupported_algorithm"
        case unsupportedType = "token_unsupported_type"
        case forbiddenHeader = "token_forbidden_header"
        case unknownHeader = "token_unknown_header"
        case missingKeyID = "token_missing_kid"
        case unknownKeyID = "token_unknown_kid"
        case badSignature = "token_bad_signature"
        case expired = "token_expired"
        case notYetValid = "token_not_yet_valid"
        case issuedInFuture = "token_issued_in_future"
        case wrongIssuer = "token_wrong_issuer"
        case wrongAudience = "token_wrong_audience"
        case missingClaim = "token_missing_claim"
        case invalidClaim = "token_invalid_claim"
        case invalidSubject = "token_invalid_subject"
    }

    private let _code: Code
    /// Free text for logs.
    public let detail: String

    private init(_ code: Code, _ detail: String = "") {
        _code = code
        self.detail = detail
    }

    /// The stable code, e.g. `"token_expired"`.
    public var code: String { _code.rawValue }
    public var description: String { detail.isEmpty ? code : "\(code): \(detail)" }

    /// Equality compares codes only.
    public static func == (lhs: JWSError, rhs: JWSError) -> Bool { lhs._code == rhs._code }
    public func hash(into hasher: inout Hasher) { hasher.combine(_code) }

    /// Not three non-empty `.`-separated segments, or longer than ``JWS/maxTokenLength``.
    public static let malformed = JWSError(.malformed)
    /// A segment is not strict unpadded base64url.
    public static let invalidBase64 = JWSError(.invalidBase64)
    /// The header or payload is not a strict JSON object.
    public static let invalidJSON = JWSError(.invalidJSON)
    /// `alg` is missing or anything but exactly `"EdDSA"` (`none`, `HS256`, `ES256`, …).
    public static let unsupportedAlgorithm = JWSError(.unsupportedAlgorithm)
    /// `typ` is present and not `"JWT"`.
    public static let unsupportedType = JWSError(.unsupportedType)
    /// The header names a key or certificate source or critical extensions (`jku`, `jwk`, `x5u`, `x5c`, `x5t`,
    /// `x5t#S256`, `crit`): never honoured, always refused.
    public static let forbiddenHeader = JWSError(.forbiddenHeader)
    /// The header carries a field other than `alg`, `typ`, `kid`.
    public static let unknownHeader = JWSError(.unknownHeader)
    /// `kid` is missing or not a string.
    public static let missingKeyID = JWSError(.missingKeyID)
    /// `kid` names no key the verifier knows (never issued, or retired beyond retention).
    public static let unknownKeyID = JWSError(.unknownKeyID)
    /// The signature does not verify (or is not 64 bytes).
    public static let badSignature = JWSError(.badSignature)
    /// `exp` has passed (now ≥ exp + leeway).
    public static let expired = JWSError(.expired)
    /// `nbf` is later than now + leeway.
    public static let notYetValid = JWSError(.notYetValid)
    /// `iat` is later than now + leeway.
    public static let issuedInFuture = JWSError(.issuedInFuture)
    /// `iss` is not the expected issuer.
    public static let wrongIssuer = JWSError(.wrongIssuer)
    /// `aud` neither is nor contains the expected audience.
    public static let wrongAudience = JWSError(.wrongAudience)
    /// A required claim (`iss`, `aud`, `sub`, `iat`, `nbf`, `exp`, `jti`) is absent.
    public static let missingClaim = JWSError(.missingClaim)
    /// A claim has the wrong JSON type or an impossible value.
    public static let invalidClaim = JWSError(.invalidClaim)
    /// `sub` is a string but not a valid `did:agentchat:` DID.
    public static let invalidSubject = JWSError(.invalidSubject)

    func with(_ detail: String) -> JWSError { JWSError(_code, detail) }
}
