import CSodium

/// AES-256-GCM (libsodium `crypto_aead_aes256gcm_*`), available only on CPUs with AES-NI and CLMUL.
///
/// Nonces are 12 bytes and must never repeat under one key; with random nonces, rotate the key well before
/// 2^32 messages.
public enum AES256GCM {
    public static let keyLength = 32
    public static let nonceLength = 12
    public static let tagLength = 16

    /// Whether this CPU can run libsodium's AES-256-GCM.
    public static var isAvailable: Bool {
        Sodium.initialize()
        return crypto_aead_aes256gcm_is_available() == 1
    }

    /// Encrypts and authenticates `plaintext` (and authenticates `associatedData`): ciphertext ‖ 16-byte tag.
    public static func seal(_ plaintext: [UInt8], key: SecretBytes, nonce: [UInt8], associatedData: [UInt8] = [])
        throws(CryptoError) -> [UInt8]
    {
        try validate(key: key, nonce: nonce)
        var out = [UInt8](repeating: 0, count: plaintext.count + tagLength)
        var outLength: UInt64 = 0
        let status = key.withPointer { k in
            withBytes(plaintext) { m, mlen in
                withBytes(associatedData) { ad, adlen in
                    crypto_aead_aes256gcm_encrypt(&out, &outLength, m, UInt64(mlen), ad, UInt64(adlen), nil, nonce, k)
                }
            }
        }
        try check(status, .operationFailed("crypto_aead_aes256gcm_encrypt failed"))
        return out
    }

    /// ``seal(_:key:nonce:associatedData:)`` with the key as a plain array.
    public static func seal(_ plaintext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8] = [])
        throws(CryptoError) -> [UInt8]
    {
        try seal(plaintext, key: SecretBytes(key), nonce: nonce, associatedData: associatedData)
    }

    /// Checks the tag and decrypts; throws ``CryptoError/authenticationFailed`` if the key, nonce, associated
    /// data or any byte of the ciphertext differs from sealing.
    public static func open(_ ciphertext: [UInt8], key: SecretBytes, nonce: [UInt8], associatedData: [UInt8] = [])
        throws(CryptoError) -> [UInt8]
    {
        try validate(key: key, nonce: nonce)
        guard ciphertext.count >= tagLength else {
            throw .invalidInputLength("AES-256-GCM ciphertext is at least \(tagLength) bytes")
        }
        // One spare byte so the output pointer is never null for an empty plaintext.
        var out = [UInt8](repeating: 0, count: ciphertext.count - tagLength + 1)
        var outLength: UInt64 = 0
        let status = key.withPointer { k in
            withBytes(associatedData) { ad, adlen in
                crypto_aead_aes256gcm_decrypt(&out, &outLength, nil, ciphertext, UInt64(ciphertext.count),
                                              ad, UInt64(adlen), nonce, k)
            }
        }
        try check(status, .authenticationFailed)
        out.removeLast(out.count - Int(outLength))
        return out
    }

    /// ``open(_:key:nonce:associatedData:)`` with the key as a plain array.
    public static func open(_ ciphertext: [UInt8], key: [UInt8], nonce: [UInt8], associatedData: [UInt8] = [])
        throws(CryptoError) -> [UInt8]
    {
        try open(ciphertext, key: SecretBytes(key), nonce: nonce, associatedData: associatedData)
    }

    private static func validate(key: SecretBytes, nonce: [UInt8]) throws(CryptoError) {
        guard isAvailable else { throw .unavailable }
        guard key.count == keyLength else { throw .invalidKeyLength("AES-256-GCM key", expected: keyLength, got: key.count) }
        guard nonce.count == nonceLength else { throw .invalidNonceLength(expected: nonceLength, got: nonce.count) }
    }
}
