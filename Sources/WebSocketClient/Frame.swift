/// A WebSocket opcode (RFC 6455 section 5.2). Any 4-bit value can be represented, so tests can send reserved opcodes.
public struct WebSocketOpcode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue & 0x0F }

    public static let continuation = WebSocketOpcode(rawValue: 0x0)
    public static let text = WebSocketOpcode(rawValue: 0x1)
    public static let binary = WebSocketOpcode(rawValue: 0x2)
    public static let close = WebSocketOpcode(rawValue: 0x8)
    public static let ping = WebSocketOpcode(rawValue: 0x9)
    public static let pong = WebSocketOpcode(rawValue: 0xA)

    /// Close, ping, pong and the reserved 0xB-0xF.
    public var isControl: Bool { rawValue & 0x8 != 0 }

    public var description: String {
        switch self {
        case .continuation: "continuation"
        case .text: "text"
        case .binary: "binary"
        case .close: "close"
        case .ping: "ping"
        case .pong: "pong"
        default: "opcode(0x\(String(rawValue, radix: 16)))"
        }
    }
}

/// One WebSocket frame, as on the wire (payload unmasked in memory).
public struct WebSocketFrame: Hashable, Sendable {
    public var fin: Bool
    /// The three RSV bits, in the low bits (RSV1 = 0b100, RSV2 = 0b010, RSV3 = 0b001).
    public var rsv: UInt8
    public var opcode: WebSocketOpcode
    /// The masking key if the frame is (to be) masked.
    public var maskKey: [UInt8]?
    /// The unmasked payload.
    public var payload: [UInt8]

    public init(opcode: WebSocketOpcode, payload: [UInt8], fin: Bool = true, rsv: UInt8 = 0, maskKey: [UInt8]? = nil) {
        precondition(maskKey == nil || maskKey!.count == 4, "mask key must be 4 bytes")
        self.fin = fin
        self.rsv = rsv & 0x7
        self.opcode = opcode
        self.maskKey = maskKey
        self.payload = payload
    }

    public var isMasked: Bool { maskKey != nil }

    /// The wire bytes: header, extended length (7, 16 or 64-bit form, always the shortest), mask key, (masked) payload.
    public func encode() -> [UInt8] {
        var out = WebSocketFrame.encodeHeader(opcode: opcode, payloadLength: UInt64(payload.count), fin: fin,
                                              rsv: rsv, maskKey: maskKey)
        out.reserveCapacity(out.count + payload.count)
        if let key = maskKey {
            out.append(contentsOf: WebSocketFrame.applyMask(key, to: payload))
        } else {
            out.append(contentsOf: payload)
        }
        return out
    }

    /// Just the header for a frame claiming `payloadLength` bytes, so tests can announce an oversize frame
    /// without building its payload.
    public static func encodeHeader(opcode: WebSocketOpcode, payloadLength: UInt64, fin: Bool = true,
                                    rsv: UInt8 = 0, maskKey: [UInt8]? = nil) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(14)
        out.append((fin ? 0x80 : 0) | (rsv & 0x7) << 4 | opcode.rawValue)
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        if payloadLength <= 125 {
            out.append(maskBit | UInt8(payloadLength))
        } else if payloadLength <= 0xFFFF {
            out.append(maskBit | 126)
            out.append(UInt8(payloadLength >> 8))
            out.append(UInt8(payloadLength & 0xFF))
        } else {
            out.append(maskBit | 127)
            for shift in stride(from: 56, through: 0, by: -8) {
                out.append(UInt8(truncatingIfNeeded: payloadLength >> UInt64(shift)))
            }
        }
        if let key = maskKey {
            precondition(key.count == 4, "mask key must be 4 bytes")
            out.append(contentsOf: key)
        }
        return out
    }

    /// XORs `bytes` with the 4-byte `key` (masking and unmasking are the same operation).
    public static func applyMask(_ key: [UInt8], to bytes: [UInt8]) -> [UInt8] {
        precondition(key.count == 4, "mask key must be 4 bytes")
        var out = bytes
        for i in out.indices { out[i] ^= key[i & 3] }
        return out
    }

    /// A fresh random 4-byte masking key.
    public static func randomMaskKey() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        let v = UInt32.random(in: .min ... .max, using: &rng)
        return [UInt8(truncatingIfNeeded: v >> 24), UInt8(truncatingIfNeeded: v >> 16),
                UInt8(truncatingIfNeeded: v >> 8), UInt8(truncatingIfNeeded: v)]
    }

    /// Result of trying to decode one frame from the front of a buffer.
    public enum DecodeResult: Hashable, Sendable {
        /// Not enough bytes yet.
        case incomplete
        /// One frame, and how many bytes of the buffer it used.
        case frame(WebSocketFrame, consumed: Int)
    }

    /// Decodes the first frame in `buffer[start...]`. Throws `WebSocketError.protocolViolation` if the frame
    /// declares a payload longer than `maxPayloadLength` or uses a non-minimal/invalid 64-bit length.
    public static func decode(_ buffer: [UInt8], from start: Int = 0,
                              maxPayloadLength: UInt64 = UInt64(Int32.max)) throws -> DecodeResult {
        let available = buffer.count - start
        guard available >= 2 else { return .incomplete }
        let b0 = buffer[start], b1 = buffer[start + 1]
        var offset = start + 2
        var length = UInt64(b1 & 0x7F)
        if length == 126 {
            guard buffer.count >= offset + 2 else { return .incomplete }
            length = UInt64(buffer[offset]) << 8 | UInt64(buffer[offset + 1])
            offset += 2
        } else if length == 127 {
            guard buffer.count >= offset + 8 else { return .incomplete }
            length = 0
            for i in 0..<8 { length = length << 8 | UInt64(buffer[offset + i]) }
            offset += 8
            if length >> 63 != 0 {
                throw WebSocketError.protocolViolation("64-bit payload length has its most significant bit set")
            }
        }
        if length > maxPayloadLength {
            throw WebSocketError.protocolViolation("frame payload of \(length) bytes exceeds limit \(maxPayloadLength)")
        }
        var maskKey: [UInt8]? = nil
        if b1 & 0x80 != 0 {
            guard buffer.count >= offset + 4 else { return .incomplete }
            maskKey = Array(buffer[offset..<offset + 4])
            offset += 4
        }
        guard UInt64(buffer.count - offset) >= length else { return .incomplete }
        let end = offset + Int(length)
        var payload = Array(buffer[offset..<end])
        if let key = maskKey { payload = applyMask(key, to: payload) }
        let frame = WebSocketFrame(opcode: WebSocketOpcode(rawValue: b0 & 0x0F), payload: payload,
                                   fin: b0 & 0x80 != 0, rsv: (b0 >> 4) & 0x7, maskKey: maskKey)
        return .frame(frame, consumed: end - start)
    }

    /// The payload of a close frame: 2-byte big-endian code then UTF-8 reason. `code == nil` gives an empty payload.
    public static func closePayload(code: UInt16?, reason: String) -> [UInt8] {
        guard let code else { return [] }
        return [UInt8(code >> 8), UInt8(code & 0xFF)] + Array(reason.utf8)
    }

    /// Parses a close payload; throws on a 1-byte payload or a reason that is not UTF-8.
    public static func parseClosePayload(_ payload: [UInt8]) throws -> (code: UInt16?, reason: String) {
        if payload.isEmpty { return (nil, "") }
        guard payload.count >= 2 else { throw WebSocketError.protocolViolation("close payload of 1 byte") }
        let code = UInt16(payload[0]) << 8 | UInt16(payload[1])
        guard let reason = strictUTF8(Array(payload[2...])) else {
            throw WebSocketError.protocolViolation("close reason is not valid UTF-8")
        }
        return (code, reason)
    }
}

/// Decodes `bytes` as UTF-8, or nil if they are not valid UTF-8 (no replacement characters are substituted).
public func strictUTF8(_ bytes: [UInt8]) -> String? {
    let s = String(decoding: bytes, as: UTF8.self)
    return s.utf8.elementsEqual(bytes) ? s : nil
}
