import CSodium

/// libsodium's one-time initialisation, and the few helpers every primitive shares.
///
/// `sodium_init()` runs exactly once, the first time any type of this module needs libsodium: a `static let` is
/// initialised lazily and thread-safely by the Swift runtime. Every entry point calls ``initialize()`` first.
public enum Sodium {
    private static let initialised: Bool = sodium_init() >= 0  // 0 = done now, 1 = already done, -1 = failed

    /// Initialises libsodium if it has not been yet. Traps if libsodium cannot initialise (no usable entropy
    /// source): nothing in this module would be safe to run.
    public static func initialize() {
        precondition(initialised, "sodium_init() failed: libsodium cannot be used")
    }

    /// The libsodium version, e.g. "1.0.18".
    public static var version: String {
        initialize()
        return String(cString: sodium_version_string())
    }
}

/// Compares two byte strings in time that depends only on their length (`sodium_memcmp`). Different lengths
/// compare unequal at once: lengths are not secret here.
public func constantTimeEquals(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    Sodium.initialize()
    guard a.count == b.count else { return false }
    if a.isEmpty { return true }
    return a.withUnsafeBytes { pa in
        b.withUnsafeBytes { pb in sodium_memcmp(pa.baseAddress!, pb.baseAddress!, a.count) == 0 }
    }
}

/// Cryptographically secure random bytes from libsodium (`randombytes_buf`).
public enum SecureRandom {
    /// `count` random bytes.
    public static func bytes(_ count: Int) -> [UInt8] {
        precondition(count >= 0, "a negative byte count")
        Sodium.initialize()
        var out = [UInt8](repeating: 0, count: count)
        if count > 0 { out.withUnsafeMutableBytes { randombytes_buf($0.baseAddress!, count) } }
        return out
    }
}

/// Zeroes an array's bytes in place with `sodium_memzero`, which the compiler may not optimise away.
func zeroize(_ bytes: inout [UInt8]) {
    bytes.withUnsafeMutableBytes { raw in
        if let base = raw.baseAddress { sodium_memzero(base, raw.count) }
    }
}

/// Calls `body` with a pointer to the bytes and their count; the pointer is never nil, even for an empty array
/// (libsodium accepts a zero length but some of its paths would still read through a null pointer).
func withBytes<R>(_ bytes: [UInt8], _ body: (UnsafePointer<UInt8>, Int) -> R) -> R {
    if bytes.isEmpty {
        var dummy: UInt8 = 0
        return withUnsafePointer(to: &dummy) { body($0, 0) }
    }
    return bytes.withUnsafeBufferPointer { body($0.baseAddress!, $0.count) }
}

/// Converts a libsodium status (0 = success, anything else = failure) to a Swift error, in one place.
@inline(__always)
func check(_ status: Int32, _ failure: CryptoError) throws(CryptoError) {
    guard status == 0 else { throw failure }
}
