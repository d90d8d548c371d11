import AgentChatCrypto
import Testing

@Suite struct BLAKE2bStreamTests {
    /// Fed in pieces of any size, the stream gives the one-shot digest (whose value `PrimitiveTests` pins).
    @Test(arguments: [1, 7, 64, 128, 1000, 4096])
    func piecesGiveTheOneShotDigest(piece: Int) {
        let message = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        let stream = BLAKE2bStream()
        var index = 0
        while index < message.count {
            stream.update(Array(message[index..<min(index + piece, message.count)]))
            index += piece
        }
        #expect(stream.finish() == Hash.blake2b(message))
    }

    @Test func emptyAndLongerDigests() {
        #expect(BLAKE2bStream().finish() == Hash.blake2b([]))
        let stream = BLAKE2bStream(count: 64)
        stream.update(Array("abc".utf8))
        #expect(stream.finish() == Hash.blake2b(Array("abc".utf8), count: 64))
        let other = BLAKE2bStream()
        other.update(Array("abd".utf8))
        #expect(other.finish() != Hash.blake2b(Array("abc".utf8)))
    }
}
