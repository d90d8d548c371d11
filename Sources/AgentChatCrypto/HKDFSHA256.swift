/// HKDF with HMAC-SHA-256 (RFC 5869), built on ``HMACSHA256`` (libsodium's `crypto_auth_hmacsha256_*`): Debian
/// 12's libsodium 1.0.18 has no `crypto_kdf_hkdf_sha256_*` (they arrived in 1.0.19).
public enum HKDFSHA256 {
    public static let hashLength = 32
    /// The longest output RFC 5869 allows: 255 blocks.
    public static let maxOutputLength = 255 * hashLength

    /// HKDF-Extract: PRK = HMAC-SHA-256(key: `salt`, message: `ikm`). An empty salt is HashLen zero bytes, which
    /// HMAC treats the same as no key at all.
    public static func extract(salt: [UInt8], ikm: [UInt8]) -> [UInt8] {
        HMACSHA256.authenticate(ikm, key: salt.isEmpty ? [UInt8](repeating: 0, count: hashLength) : salt)
    }

    /// HKDF-Expand: the first `length` bytes of T(1) ‖ T(2) ‖ …, where T(i) = HMAC(PRK, T(i-1) ‖ info ‖ i).
    public static func expand(prk: [UInt8], info: [UInt8], length: Int) throws(CryptoError) -> [UInt8] {
        guard prk.count >= hashLength else {
            throw .invalidKeyLength("HKDF pseudorandom key", expected: hashLength, got: prk.count)
        }
        guard length >= 0, length <= maxOutputLength else {
            throw .invalidInputLength("HKDF-SHA256 output is 0 to \(maxOutputLength) bytes, asked \(length)")
        }
        var output: [UInt8] = []
        output.reserveCapacity(length + hashLength)
        var block: [UInt8] = []
        var counter: UInt8 = 1
        while output.count < length {
            var message = block + info + [counter]
            block = HMACSHA256.authenticate(message, key: prk)
            zeroize(&message)
            output += block
            counter &+= 1
        }
        zeroize(&block)
        let result = Array(output.prefix(length))
        zeroize(&output)
        return result
    }

    /// Extract then expand: `length` bytes of key material from `ikm`.
    public static func deriveKey(ikm: [UInt8], salt: [UInt8], info: [UInt8], length: Int) throws(CryptoError)
        -> [UInt8]
    {
        var prk = extract(salt: salt, ikm: ikm)
        defer { zeroize(&prk) }
        return try expand(prk: prk, info: info, length: length)
    }

    /// ``deriveKey(ikm:salt:info:length:)`` with the input key material held as a secret.
    public static func deriveKey(ikm: SecretBytes, salt: [UInt8], info: [UInt8], length: Int) throws(CryptoError)
        -> [UInt8]
    {
        var input = ikm.copyBytes()
        defer { zeroize(&input) }
        return try deriveKey(ikm: input, salt: salt, info: info, length: length)
    }
}
