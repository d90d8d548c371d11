/// Why a cryptographic operation failed.
///
/// A struct wrapping a private code so that codes can be added without breaking callers; ``code`` is a stable,
/// machine-readable string. Equality compares codes only, so `#expect(throws: CryptoError.authenticationFailed)`
/// matches whatever the detail says.
public struct CryptoError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case invalidKeyLength = "invalid_key_length"
        case invalidNonceLength = "invalid_nonce_length"
        case invalidInputLength = "invalid_input_length"
        case authenticationFailed = "authentication_failed"
        case unavailable = "unavailable"
        case operationFailed = "operation_failed"
    }

    private let _code: Code
    /// Free text for logs; never contains key material.
    public let detail: String

    private init(_ code: Code, _ detail: String) {
        self._code = code
        self.detail = detail
    }

    /// The stable code, e.g. `"authentication_failed"`.
    public var code: String { _code.rawValue }
    public var description: String { detail.isEmpty ? code : "\(code): \(detail)" }

    public static func == (lhs: CryptoError, rhs: CryptoError) -> Bool { lhs._code == rhs._code }
    public func hash(into hasher: inout Hasher) { hasher.combine(_code) }

    /// A key (or seed) of the wrong length.
    public static let invalidKeyLength = CryptoError(.invalidKeyLength, "")
    /// A nonce of the wrong length.
    public static let invalidNonceLength = CryptoError(.invalidNonceLength, "")
    /// A ciphertext or other input too short or too long to be valid.
    public static let invalidInputLength = CryptoError(.invalidInputLength, "")
    /// Decryption failed: wrong key, nonce or associated data, or the ciphertext was altered.
    public static let authenticationFailed = CryptoError(.authenticationFailed, "")
    /// The primitive is not available on this CPU (AES-256-GCM without AES-NI).
    public static let unavailable = CryptoError(.unavailable, "")
    /// libsodium reported a failure it does not explain (for example a degenerate X25519 public key).
    public static let operationFailed = CryptoError(.operationFailed, "")

    static func invalidKeyLength(_ what: String, expected: Int, got: Int) -> CryptoError {
        CryptoError(.invalidKeyLength, "\(what) must be \(expected) bytes, got \(got)")
    }
    static func invalidNonceLength(expected: Int, got: Int) -> CryptoError {
        CryptoError(.invalidNonceLength, "nonce must be \(expected) bytes, got \(got)")
    }
    static func invalidInputLength(_ detail: String) -> CryptoError { CryptoError(.invalidInputLength, detail) }
    static func operationFailed(_ detail: String) -> CryptoError { CryptoError(.operationFailed, detail) }
}
