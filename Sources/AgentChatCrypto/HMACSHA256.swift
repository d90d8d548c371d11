import CSodium

/// HMAC-SHA-256 with a key of any length (libsodium's `crypto_auth_hmacsha256_init/update/final`; the one-shot
/// `crypto_auth_hmacsha256` accepts only 32-byte keys).
public enum HMACSHA256 {
    public static let macLength = 32

    /// The 32-byte HMAC-SHA-256 of `message` under `key`.
    public static func authenticate(_ message: [UInt8], key: [UInt8]) -> [UInt8] {
        Sodium.initialize()
        var state = crypto_auth_hmacsha256_state()
        defer { withUnsafeMutableBytes(of: &state) { sodium_memzero($0.baseAddress!, $0.count) } }
        var mac = [UInt8](repeating: 0, count: macLength)
        withBytes(key) { k, klen in _ = crypto_auth_hmacsha256_init(&state, k, klen) }
        withBytes(message) { m, mlen in _ = crypto_auth_hmacsha256_update(&state, m, UInt64(mlen)) }
        _ = crypto_auth_hmacsha256_final(&state, &mac)
        return mac
    }

    /// ``authenticate(_:key:)`` with the key held as a secret.
    public static func authenticate(_ message: [UInt8], key: SecretBytes) -> [UInt8] {
        Sodium.initialize()
        var state = crypto_auth_hmacsha256_state()
        defer { withUnsafeMutableBytes(of: &state) { sodium_memzero($0.baseAddress!, $0.count) } }
        var mac = [UInt8](repeating: 0, count: macLength)
        key.withPointer { k in _ = crypto_auth_hmacsha256_init(&state, k, key.count) }
        withBytes(message) { m, mlen in _ = crypto_auth_hmacsha256_update(&state, m, UInt64(mlen)) }
        _ = crypto_auth_hmacsha256_final(&state, &mac)
        return mac
    }

    /// Whether `mac` is the HMAC of `message` under `key`, compared in constant time.
    public static func isValid(_ mac: [UInt8], for message: [UInt8], key: [UInt8]) -> Bool {
        constantTimeEquals(mac, authenticate(message, key: key))
    }
}
