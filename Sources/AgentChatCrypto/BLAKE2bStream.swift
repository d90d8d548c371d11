import CSodium

/// BLAKE2b over data that arrives in pieces (`crypto_generichash_init/update/final`): the same digest as
/// `Hash.blake2b` of the concatenation, without holding it all.
///
/// Owns its libsodium state (64-byte aligned memory, freed in `deinit`). Not thread-safe; `finish()` once.
public final class BLAKE2bStream {
    /// Digest length in bytes.
    public let count: Int
    private let state: UnsafeMutableRawPointer
    private var finished = false

    /// A fresh, unkeyed hash with an output of `count` bytes (16...64, default 32).
    public init(count: Int = 32) {
        precondition((16...64).contains(count), "BLAKE2b output is 16 to 64 bytes")
        Sodium.initialize()
        self.count = count
        state = UnsafeMutableRawPointer.allocate(byteCount: crypto_generichash_statebytes(), alignment: 64)
        _ = crypto_generichash_init(OpaquePointer(state), nil, 0, count)
    }

    deinit { state.deallocate() }

    /// Adds bytes.
    public func update(_ bytes: UnsafeRawBufferPointer) {
        precondition(!finished, "BLAKE2bStream used after finish()")
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        _ = crypto_generichash_update(OpaquePointer(state),
                                      base.assumingMemoryBound(to: UInt8.self), UInt64(bytes.count))
    }

    /// Adds bytes.
    public func update(_ bytes: [UInt8]) { bytes.withUnsafeBytes { update($0) } }

    /// The digest of everything added.
    public func finish() -> [UInt8] {
        precondition(!finished, "BLAKE2bStream finished twice")
        finished = true
        var out = [UInt8](repeating: 0, count: count)
        _ = crypto_generichash_final(OpaquePointer(state), &out, count)
        return out
    }
}
