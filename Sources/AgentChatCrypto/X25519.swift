import CSodium

/// Raw X25519 (RFC 7748) through libsodium's `crypto_scalarmult`: the Diffie-Hellman function itself, for
/// constructions that are not libsodium's own boxes (the peek grant's wrap, which browsers open with WebCrypto).
///
/// The scalar is clamped and the top bit of the u-coordinate ignored, as RFC 7748 specifies. A result of all
/// zeros (the peer's key is a low-order point, so the secret would be known to anyone) is refused with
/// ``CryptoError/operationFailed``: libsodium returns -1 for it, and the output is checked with `sodium_is_zero`
/// besides, so neither alone has to be trusted.
public enum X25519 {
    public static let keyLength = 32

    /// X25519(`secretKey`, `publicKey`): the 32-byte shared secret.
    public static func sharedSecret(secretKey: SecretBytes, publicKey: [UInt8]) throws(CryptoError) -> SecretBytes {
        guard secretKey.count == keyLength else {
            throw .invalidKeyLength("X25519 secret key", expected: keyLength, got: secretKey.count)
        }
        guard publicKey.count == keyLength else {
            throw .invalidKeyLength("X25519 public key", expected: keyLength, got: publicKey.count)
        }
        Sodium.initialize()
        var status: Int32 = 0
        var zero = false
        let shared = SecretBytes(count: keyLength) { out in
            status = secretKey.withPointer { n in crypto_scalarmult(out, n, publicKey) }
            zero = sodium_is_zero(out, keyLength) == 1
        }
        guard status == 0, !zero else {
            throw .operationFailed("X25519 gave the all-zero output (a low-order public key)")
        }
        return shared
    }

    /// ``sharedSecret(secretKey:publicKey:)`` with the scalar as a plain array (test vectors).
    public static func sharedSecret(secretKey: [UInt8], publicKey: [UInt8]) throws(CryptoError) -> [UInt8] {
        try sharedSecret(secretKey: SecretBytes(secretKey), publicKey: publicKey).copyBytes()
    }

    /// X25519(`secretKey`, 9): the public key of a secret scalar (`crypto_scalarmult_base`).
    public static func publicKey(secretKey: SecretBytes) throws(CryptoError) -> [UInt8] {
        guard secretKey.count == keyLength else {
            throw .invalidKeyLength("X25519 secret key", expected: keyLength, got: secretKey.count)
        }
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: keyLength)
        let status = secretKey.withPointer { n in crypto_scalarmult_base(&out, n) }
        try check(status, .operationFailed("X25519 public key derivation failed"))
        return out
    }
}
