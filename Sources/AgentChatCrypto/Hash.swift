import CSodium

/// Unkeyed hashes through libsodium.
public enum Hash {
    /// SHA-256 (`crypto_hash_sha256`), 32 bytes.
    public static func sha256(_ message: [UInt8]) -> [UInt8] {
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: 32)
        withBytes(message) { m, mlen in _ = crypto_hash_sha256(&out, m, UInt64(mlen)) }
        return out
    }

    /// BLAKE2b (`crypto_generichash`) with an output of `count` bytes, 16...64 (default 32), optionally keyed
    /// with a 16...64-byte key.
    public static func blake2b(_ message: [UInt8], count: Int = 32, key: [UInt8] = []) -> [UInt8] {
        precondition((16...64).contains(count), "BLAKE2b output is 16 to 64 bytes")
        precondition(key.isEmpty || (16...64).contains(key.count), "a BLAKE2b key is 16 to 64 bytes")
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: count)
        withBytes(message) { m, mlen in
            if key.isEmpty {
                _ = crypto_generichash(&out, count, m, UInt64(mlen), nil, 0)
            } else {
                _ = crypto_generichash(&out, count, m, UInt64(mlen), key, key.count)
            }
        }
        return out
    }
}
