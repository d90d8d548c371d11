import Testing
@testable import WebSocketClient

@Suite struct FrameEncodingTests {
    // RFC 6455 section 5.7 examples.
    @Test func unmaskedTextHello() {
        let bytes = WebSocketFrame(opcode: .text, payload: Array("Hello".utf8)).encode()
        #expect(bytes == [0x81, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
    }

    @Test func maskedTextHello() {
        let frame = WebSocketFrame(opcode: .text, payload: Array("Hello".utf8), maskKey: [0x37, 0xFA, 0x21, 0x3D])
        #expect(frame.encode() == [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }

    @Test func fragmentedUnmaskedText() {
        let first = WebSocketFrame(opcode: .text, payload: Array("Hel".utf8), fin: false).encode()
        let last = WebSocketFrame(opcode: .continuation, payload: Array("lo".utf8), fin: true).encode()
        #expect(first == [0x01, 0x03, 0x48, 0x65, 0x6C])
        #expect(last == [0x80, 0x02, 0x6C, 0x6F])
    }

    @Test func pingAndPong() {
        #expect(WebSocketFrame(opcode: .ping, payload: Array("Hello".utf8)).encode()
                == [0x89, 0x05, 0x48, 0x65, 0x6C, 0x6C, 0x6F])
        let pong = WebSocketFrame(opcode: .pong, payload: Array("Hello".utf8), maskKey: [0x37, 0xFA, 0x21, 0x3D])
        #expect(pong.encode() == [0x8A, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }

    @Test func sixteenBitLength256() {
        let bytes = WebSocketFrame(opcode: .binary, payload: [UInt8](repeating: 7, count: 256)).encode()
        #expect(Array(bytes.prefix(4)) == [0x82, 0x7E, 0x01, 0x00])
        #expect(bytes.count == 4 + 256)
    }

    @Test func sixtyFourBitLength65536() {
        let bytes = WebSocketFrame(opcode: .binary, payload: [UInt8](repeating: 7, count: 65536)).encode()
        #expect(Array(bytes.prefix(10)) == [0x82, 0x7F, 0, 0, 0, 0, 0, 1, 0, 0])
        #expect(bytes.count == 10 + 65536)
    }

    @Test(arguments: [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)])
    func headerSizeAtLengthBoundaries(length: Int, headerSize: Int) {
        let header = WebSocketFrame.encodeHeader(opcode: .binary, payloadLength: UInt64(length))
        #expect(header.count == headerSize)
        let masked = WebSocketFrame.encodeHeader(opcode: .binary, payloadLength: UInt64(length), maskKey: [1, 2, 3, 4])
        #expect(masked.count == headerSize + 4)
        #expect(masked[1] & 0x80 == 0x80)
        #expect(masked.suffix(4) == [1, 2, 3, 4])
    }

    @Test func hugeDeclaredLengthHeader() {
        let header = WebSocketFrame.encodeHeader(opcode: .binary, payloadLength: 1 << 40, fin: true)
        #expect(header == [0x82, 0x7F, 0, 0, 0x01, 0, 0, 0, 0, 0])
    }

    @Test func finRsvAndOpcodeBits() {
        let frame = WebSocketFrame(opcode: WebSocketOpcode(rawValue: 0x3), payload: [], fin: false, rsv: 0b101)
        #expect(frame.encode() == [0x53, 0x00])
    }

    @Test func maskingIsAnInvolution() {
        let key: [UInt8] = [0xDE, 0xAD, 0xBE, 0xEF]
        let payload = Array(0..<200).map { UInt8($0) }
        let masked = WebSocketFrame.applyMask(key, to: payload)
        #expect(masked != payload)
        #expect(masked[0] == 0x00 ^ 0xDE && masked[5] == 0x05 ^ 0xAD)
        #expect(WebSocketFrame.applyMask(key, to: masked) == payload)
    }

    @Test func randomMaskKeys() {
        let keys = Set((0..<8).map { _ in WebSocketFrame.randomMaskKey() })
        #expect(keys.allSatisfy { $0.count == 4 })
        #expect(keys.count > 1)
    }

    @Test func opcodeClassification() {
        #expect(WebSocketOpcode.close.isControl && WebSocketOpcode.ping.isControl && WebSocketOpcode.pong.isControl)
        #expect(!WebSocketOpcode.text.isControl && !WebSocketOpcode.binary.isControl && !WebSocketOpcode.continuation.isControl)
        #expect(WebSocketOpcode(rawValue: 0xB).isControl)
    }
}

@Suite struct FrameDecodingTests {
    @Test(arguments: [0, 1, 125, 126, 127, 65535, 65536, 100_000])
    func roundTripMaskedAndUnmasked(length: Int) throws {
        let payload = (0..<length).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        for key in [nil, [9, 8, 7, 6] as [UInt8]] {
            let frame = WebSocketFrame(opcode: .binary, payload: payload, maskKey: key)
            let wire = frame.encode()
            guard case .frame(let decoded, let consumed) = try WebSocketFrame.decode(wire) else {
                Issue.record("incomplete for length \(length)")
                return
            }
            #expect(consumed == wire.count)
            #expect(decoded == frame)
            #expect(decoded.payload == payload)
        }
    }

    @Test func everyStrictPrefixIsIncomplete() throws {
        let wire = WebSocketFrame(opcode: .text, payload: Array(repeating: 65, count: 300), maskKey: [1, 2, 3, 4]).encode()
        for n in 0..<wire.count {
            #expect(try WebSocketFrame.decode(Array(wire.prefix(n))) == .incomplete, "prefix \(n)")
        }
    }

    @Test func decodesConsecutiveFramesFromOffset() throws {
        let a = WebSocketFrame(opcode: .text, payload: Array("Hel".utf8), fin: false)
        let b = WebSocketFrame(opcode: .ping, payload: [1])
        let c = WebSocketFrame(opcode: .continuation, payload: Array("lo".utf8))
        let wire = a.encode() + b.encode() + c.encode()
        var offset = 0
        var frames: [WebSocketFrame] = []
        while case .frame(let f, let used) = try WebSocketFrame.decode(wire, from: offset) {
            frames.append(f)
            offset += used
        }
        #expect(frames == [a, b, c])
        #expect(offset == wire.count)
    }

    @Test func rejectsMostSignificantBitInLength() {
        let wire: [UInt8] = [0x82, 0x7F, 0x80, 0, 0, 0, 0, 0, 0, 1]
        #expect(throws: WebSocketError.self) { try WebSocketFrame.decode(wire) }
    }

    @Test func rejectsPayloadAboveLimitBeforeItArrives() {
        let header = WebSocketFrame.encodeHeader(opcode: .binary, payloadLength: 1 << 30)
        #expect(throws: WebSocketError.protocolViolation("frame payload of 1073741824 bytes exceeds limit 1024")) {
            try WebSocketFrame.decode(header, maxPayloadLength: 1024)
        }
    }

    @Test func closePayloads() throws {
        #expect(WebSocketFrame.closePayload(code: 1000, reason: "bye") == [0x03, 0xE8, 0x62, 0x79, 0x65])
        #expect(WebSocketFrame.closePayload(code: nil, reason: "ignored") == [])
        let parsed = try WebSocketFrame.parseClosePayload([0x03, 0xE9, 0x68, 0x69])
        #expect(parsed.code == 1001 && parsed.reason == "hi")
        let empty = try WebSocketFrame.parseClosePayload([])
        #expect(empty.code == nil && empty.reason == "")
        #expect(throws: WebSocketError.self) { try WebSocketFrame.parseClosePayload([0x03]) }
        #expect(throws: WebSocketError.self) { try WebSocketFrame.parseClosePayload([0x03, 0xE8, 0xC3, 0x28]) }
    }

    @Test func strictUTF8Validation() {
        #expect(strictUTF8(Array("héllo €".utf8)) == "héllo €")
        #expect(strictUTF8([0xEF, 0xBF, 0xBD]) == "\u{FFFD}")
        #expect(strictUTF8([0xC3, 0x28]) == nil)
        #expect(strictUTF8([0xED, 0xA0, 0x80]) == nil) // UTF-16 surrogate
        #expect(strictUTF8([0xF8, 0x88, 0x80, 0x80, 0x80]) == nil)
    }
}
