import CAgentChatShims

/// The bytes of one outgoing WebSocket message, stored after `LWS_PRE` bytes of headroom that libwebsockets writes
/// its frame header into.
///
/// A reference type so one encoded frame can sit in many connections' queues: each `lws_write` rewrites the
/// headroom and finishes (or copies what the socket did not take) before the next connection's write starts, all on
/// the loop thread.
final class OutboundFrame {
    /// Owned by this object; `headroom + count` bytes, freed in `deinit`.
    let storage: UnsafeMutableRawBufferPointer
    let count: Int
    let isBinary: Bool

    static let headroom = agentchat_lws_pre()

    init(_ payload: [UInt8], isBinary: Bool = false) {
        count = payload.count
        self.isBinary = isBinary
        storage = .allocate(byteCount: Self.headroom + max(payload.count, 1), alignment: 16)
        payload.withUnsafeBytes { bytes in
            if let base = bytes.baseAddress {
                (storage.baseAddress! + Self.headroom).copyMemory(from: base, byteCount: bytes.count)
            }
        }
    }

    /// Where the payload starts: the pointer to hand to `lws_write`.
    var payload: UnsafeMutablePointer<UInt8> {
        (storage.baseAddress! + Self.headroom).assumingMemoryBound(to: UInt8.self)
    }

    deinit { storage.deallocate() }
}
