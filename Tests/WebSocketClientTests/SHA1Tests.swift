import Testing
@testable import WebSocketClient

private func hex(_ bytes: [UInt8]) -> String {
    bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined()
}

@Suite struct SHA1Tests {
    @Test(arguments: [
        ("", "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        ("abc", "a9993e364706816aba3e25717850c26c9cd0d89d"),
        ("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", "84983e441c3bd26ebaae4aa1f95129e5e54670f1"),
        ("The quick brown fox jumps over the lazy dog", "2fd4e1c67a2d28fced849ee1bb76e7391b93eb12"),
    ])
    func knownVectors(input: String, digest: String) {
        #expect(hex(SHA1.hash(input)) == digest)
    }

    /// Lengths around the 55/56/64-byte padding boundaries, checked against Python's hashlib.
    @Test(arguments: [
        (55, "c1c8bbdc22796e28c0e15163d20899b65621d65a"),
        (56, "c2db330f6083854c99d4b5bfb6e8f29f201be699"),
        (63, "03f09f5b158a7a8cdad920bddc29b81c18a551f5"),
        (64, "0098ba824b5c16427bd7a1122a5a442a25ec644d"),
        (65, "11655326c708d70319be2610e8a57d9a5b959d3b"),
        (119, "ee971065aaa017e0632a8ca6c77bb3bf8b1dfc56"),
        (120, "f34c1488385346a55709ba056ddd08280dd4c6d6"),
        (128, "ad5b3fdbcb526778c2839d2f151ea753995e26a0"),
    ])
    func paddingBoundaries(length: Int, digest: String) {
        #expect(hex(SHA1.hash([UInt8](repeating: UInt8(ascii: "a"), count: length))) == digest)
    }

    @Test func allByteValues() {
        let input = Array((0..<1024).map { UInt8($0 & 0xFF) })
        #expect(hex(SHA1.hash(input)) == "5b00669c480d5cffbdfa8bdba99561160f2d1b77")
    }

    @Test func oneMillionA() {
        #expect(hex(SHA1.hash([UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)))
                == "34aa973cd4c4daa4f61eeb2bdbad27316534016f")
    }

    @Test(arguments: [
        ("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy"),
    ])
    func base64RFC4648Vectors(input: String, encoded: String) {
        #expect(Base64.encode(Array(input.utf8)) == encoded)
    }

    @Test func base64UsesPlusAndSlash() {
        #expect(Base64.encode([0xFB, 0xFF, 0xBF]) == "+/+/")
    }

    /// RFC 6455 section 1.3: key "dGhlIHNhbXBsZSBub25jZQ==" gives "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    /// (cross-checked with Python's hashlib; "s3pPLMBiTxaGWr6Ff7Yb6N/DpXI=" is not the RFC value).
    @Test func acceptValueFromRFC6455Example() {
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func randomKeysAre16BytesBase64AndDiffer() {
        let a = WebSocketHandshake.randomKey(), b = WebSocketHandshake.randomKey()
        #expect(a.count == 24)
        #expect(a.hasSuffix("=="))
        #expect(a != b)
    }
}
