import CSodium

/// Secret bytes (a private key, a seed, a symmetric key) that never print and are zeroed when freed.
///
/// The bytes live in one heap buffer owned by a final class; its `deinit` wipes them with `sodium_memzero` before
/// freeing. The buffer is written only in `init` and never after, which is why the class may be shared between
/// threads (`@unchecked Sendable`). `description`, `debugDescription` and `dump` show the length, never the bytes.
public struct SecretBytes: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    private final class Storage: @unchecked Sendable {
        let buffer: UnsafeMutableRawBufferPointer

        init(count: Int, initialise: (UnsafeMutableRawBufferPointer) -> Void) {
            buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
            let view = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
            view.initializeMemory(as: UInt8.self, repeating: 0)
            initialise(view)
            self.count = count
        }

        let count: Int

        deinit {
            sodium_memzero(buffer.baseAddress!, buffer.count)
            buffer.deallocate()
        }
    }

    private let storage: Storage

    /// Copies `bytes`; the caller remains responsible for its own copy.
    public init(_ bytes: [UInt8]) {
        storage = Storage(count: bytes.count) { dst in
            bytes.withUnsafeBytes { src in if src.count > 0 { dst.copyMemory(from: src) } }
        }
    }

    /// Fills a new buffer of `count` bytes through `initialise`, so secrets produced by C need no Swift array.
    init(count: Int, initialise: (UnsafeMutablePointer<UInt8>) -> Void) {
        storage = Storage(count: count) { dst in
            initialise(dst.baseAddress!.assumingMemoryBound(to: UInt8.self))
        }
    }

    /// `count` random bytes (`randombytes_buf`).
    public static func random(count: Int) -> SecretBytes {
        Sodium.initialize()
        return SecretBytes(count: count) { randombytes_buf($0, count) }
    }

    public var count: Int { storage.count }

    /// Reads the bytes; the pointer must not escape `body`.
    public func withUnsafeBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        try body(UnsafeRawBufferPointer(rebasing: storage.buffer[0..<storage.count]))
    }

    /// A copy of the bytes as an ordinary array, which is not wiped when freed: for serialising a key, and as
    /// little else as possible.
    public func copyBytes() -> [UInt8] { withUnsafeBytes { Array($0) } }

    /// Equality in constant time.
    public func constantTimeEquals(_ other: SecretBytes) -> Bool {
        guard count == other.count else { return false }
        if count == 0 { return true }
        return withUnsafeBytes { a in other.withUnsafeBytes { b in sodium_memcmp(a.baseAddress!, b.baseAddress!, count) == 0 } }
    }

    public var description: String { "SecretBytes(\(count) bytes, redacted)" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["count": count]) }
}

extension SecretBytes {
    /// Calls `body` with a typed pointer to the bytes (never nil, even when empty).
    func withPointer<R, E: Error>(_ body: (UnsafePointer<UInt8>) throws(E) -> R) throws(E) -> R {
        try body(UnsafePointer(storage.buffer.baseAddress!.assumingMemoryBound(to: UInt8.self)))
    }
}
