/// The bytes of one outgoing WebSocket message, stored after `headroom` bytes that the transport writes its frame
/// header into (libwebsockets' `LWS_PRE`; the transport checks at start-up that it fits).
///
/// A reference type so one encoded frame can sit in many connections' queues: each write rewrites the headroom and
/// finishes (or copies what the socket did not take) before the next connection's write starts, all on the loop
/// thread.
package final class OutboundFrame {
    /// Owned by this object; `headroom + count` bytes, freed in `deinit`.
    package let storage: UnsafeMutableRawBufferPointer
    package let count: Int
    package let isBinary: Bool

    /// Room in front of the payload: `LWS_PRE` is 16 on 64-bit builds of libwebsockets 4.1.
    package static let headroom = 16

    package init(_ payload: [UInt8], isBinary: Bool = false) {
        count = payload.count
        self.isBinary = isBinary
        storage = .allocate(byteCount: Self.headroom + max(payload.count, 1), alignment: 16)
        payload.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress {
                (storage.baseAddress! + Self.headroom).copyMemory(from: base, byteCount: bytes.count)
            }
        }
    }

    /// Where the payload starts.
    package var payload: UnsafeMutablePointer<UInt8> {
        (storage.baseAddress! + Self.headroom).assumingMemoryBound(to: UInt8.self)
    }

    /// The payload's bytes (a copy), for tests and logs.
    package var bytes: [UInt8] { Array(UnsafeBufferPointer(start: payload, count: count)) }

    deinit { storage.deallocate() }
}
