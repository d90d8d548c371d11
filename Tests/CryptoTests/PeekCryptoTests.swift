import AgentChatCrypto
import AgentChatProtocol
import Testing

@Suite struct HKDFSHA256Tests {
    /// RFC 5869, appendix A, test cases 1 to 3 (SHA-256).
    static let cases: [(ikm: [UInt8], salt: [UInt8], info: [UInt8], length: Int, prk: String, okm: String)] = [
        ([UInt8](repeating: 0x0b, count: 22), Array(0x00...0x0c), Array(0xf0...0xf9), 42,
         "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5",
         "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        (Array(0x00...0x4f), Array(0x60...0xaf), Array(0xb0...0xff), 82,
         "06a6b88c5853361a06104c9ceb35b45cef760014904671014a193f40c15fc244",
         "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71cc30c58179ec3e87c14c01d5c1f3434f1d87"),
        ([UInt8](repeating: 0x0b, count: 22), [], [], 42,
         "19ef24a32c717b167f33a91d6f648bdf96596776afdb6377ac434c1c293ccb04",
         "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8"),
    ]

    @Test(arguments: 0..<3) func rfc5869(_ index: Int) throws {
        let vector = Self.cases[index]
        let prk = HKDFSHA256.extract(salt: vector.salt, ikm: vector.ikm)
        #expect(prk == hex(vector.prk))
        #expect(try HKDFSHA256.expand(prk: prk, info: vector.info, length: vector.length) == hex(vector.okm))
        #expect(try HKDFSHA256.deriveKey(ikm: vector.ikm, salt: vector.salt, info: vector.info,
                                         length: vector.length) == hex(vector.okm))
        #expect(try HKDFSHA256.deriveKey(ikm: SecretBytes(vector.ikm), salt: vector.salt, info: vector.info,
                                         length: vector.length) == hex(vector.okm))
    }

    @Test func lengths() throws {
        let prk = HKDFSHA256.extract(salt: [1], ikm: [2])
        #expect(try HKDFSHA256.expand(prk: prk, info: [], length: 0) == [])
        // A shorter output is a prefix of a longer one.
        let long = try HKDFSHA256.expand(prk: prk, info: [3], length: HKDFSHA256.maxOutputLength)
        #expect(long.count == 8160)
        #expect(try HKDFSHA256.expand(prk: prk, info: [3], length: 33) == Array(long.prefix(33)))
        #expect(throws: CryptoError.invalidInputLength) {
            try HKDFSHA256.expand(prk: prk, info: [], length: HKDFSHA256.maxOutputLength + 1)
        }
        #expect(throws: CryptoError.invalidKeyLength) { try HKDFSHA256.expand(prk: [1, 2], info: [], length: 32) }
    }
}

@Suite struct X25519Tests {
    /// RFC 7748, section 5.2: two single computations (the second u-coordinate has its top bit set, which must be
    /// ignored), then the iterated one after 1 and 1,000 iterations.
    @Test func rfc7748Functions() throws {
        #expect(try X25519.sharedSecret(
            secretKey: hex("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
            publicKey: hex("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"))
            == hex("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552"))
        #expect(try X25519.sharedSecret(
            secretKey: hex("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
            publicKey: hex("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"))
            == hex("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957"))
        var k: [UInt8] = [9] + [UInt8](repeating: 0, count: 31)
        var u = k
        for iteration in 1...1000 {
            let next = try X25519.sharedSecret(secretKey: k, publicKey: u)
            u = k
            k = next
            if iteration == 1 { #expect(k == hex("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")) }
        }
        #expect(k == hex("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"))
    }

    /// RFC 7748, section 6.1: Alice's and Bob's key pairs and their shared secret.
    @Test func rfc7748DiffieHellman() throws {
        let alice = SecretBytes(hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        let bob = SecretBytes(hex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"))
        let alicePublic = try X25519.publicKey(secretKey: alice)
        let bobPublic = try X25519.publicKey(secretKey: bob)
        #expect(alicePublic == hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
        #expect(bobPublic == hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"))
        let shared = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
        #expect(try X25519.sharedSecret(secretKey: alice, publicKey: bobPublic).copyBytes() == shared)
        #expect(try X25519.sharedSecret(secretKey: bob, publicKey: alicePublic).copyBytes() == shared)
        // The same as libsodium's box key pairs.
        let pair = try EncryptionKeyPair(secretKey: alice)
        #expect(pair.publicKey == alicePublic)
    }

    /// Low-order points give the all-zero output, which is refused.
    @Test func refusesTheAllZeroOutput() {
        let secret = SecureRandom.bytes(32)
        for point in ["0000000000000000000000000000000000000000000000000000000000000000",
                      "0100000000000000000000000000000000000000000000000000000000000000",
                      "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
                      "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
                      "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"] {
            #expect(throws: CryptoError.operationFailed) { try X25519.sharedSecret(secretKey: secret, publicKey: hex(point)) }
        }
        #expect(throws: CryptoError.invalidKeyLength) { try X25519.sharedSecret(secretKey: secret, publicKey: [9]) }
        #expect(throws: CryptoError.invalidKeyLength) {
            try X25519.sharedSecret(secretKey: [1, 2, 3], publicKey: hex(String(repeating: "09", count: 32)))
        }
    }
}

@Suite struct PeekKeyWrapTests {
    static let channel = ChannelID("ch_FSIvPElWY3B9ipeksb7L2A")!
    static let peek = "pk_FSIvPElWY3B9ipeksb7L2A"
    static let signer = try! SigningKeyPair(seed: b64(Ed25519Tests.d))

    /// A known answer computed independently (Python's `cryptography`, i.e. OpenSSL, with the same calls a page
    /// makes in WebCrypto: X25519, HKDF-SHA256, AES-GCM, Ed25519): ephemeral secret 01…20, viewer secret 21…40,
    /// channel key 41…60, nonce 61…6c, the RFC 8037 signing key, epoch 4.
    @Test func knownAnswer() throws {
        let ephemeral = try EncryptionKeyPair(secretKey: Array(0x01...0x20))
        let viewer = SecretBytes(Array(0x21...0x40))
        let viewerKey = try X25519.publicKey(secretKey: viewer)
        #expect(b64(viewerKey) == "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns")
        let channelKey: [UInt8] = Array(0x41...0x60)
        let grant = try PeekKeyWrap.wrap(channelKey: channelKey, channel: Self.channel, peek: Self.peek, epoch: 4,
                                         viewerKey: viewerKey, signer: Self.signer, ephemeral: ephemeral,
                                         nonce: Array(0x61...0x6c))
        #expect(b64(grant.ephemeralKey) == "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9_AsrhtHHw")
        let shared = try X25519.sharedSecret(secretKey: ephemeral.secretKey, publicKey: viewerKey)
        #expect(try PeekKeyWrap.wrapKey(sharedSecret: shared, ephemeralKey: grant.ephemeralKey, viewerKey: viewerKey)
            == hex("a4c0c6f568d74626455c57748af62f55f58c901f3bb2eac5f183e89ac7945ff1"))
        #expect(b64(grant.ciphertext) == "rOELJOY6POZ57NkMltU-4TAPZDBjAuJE1CReKPtsgRaQM5Zm4cAVM1J24c9tWjx6")
        #expect(b64(grant.signature)
            == "dkOSu7KMmxiSPso2g4lvDlihsPK9mO3hYzPVgA4zcS_S1yGmkaS5eTscdIfZQkeWfW1nFjb-Jirq1YoMC8ufBg")
        #expect(grant.sender == DID(signingKey: Self.signer.publicKey) && grant.epoch == 4)
        #expect(try PeekKeyWrap.unwrap(grant, channel: Self.channel, peek: Self.peek, viewerSecretKey: viewer)
            == channelKey)
        // The wire form round-trips (the broker and the page read these fields).
        #expect(PeekGrant(json: grant.json) == grant)
    }

    @Test func roundTripAndRefusals() throws {
        let viewer = EncryptionKeyPair()
        let channelKey = SecureRandom.bytes(32)
        let grant = try PeekKeyWrap.wrap(channelKey: channelKey, channel: Self.channel, peek: Self.peek, epoch: 7,
                                         viewerKey: viewer.publicKey, signer: Self.signer)
        #expect(grant.ephemeralKey.count == 32 && grant.nonce.count == 12 && grant.ciphertext.count == 48)
        #expect(grant.signature.count == 64)
        #expect(PeekKeyWrap.verify(grant, channel: Self.channel, peek: Self.peek, viewerKey: viewer.publicKey))
        #expect(try PeekKeyWrap.unwrap(grant, channel: Self.channel, peek: Self.peek,
                                       viewerSecretKey: viewer.secretKey) == channelKey)
        // Two wraps of one key share nothing.
        let again = try PeekKeyWrap.wrap(channelKey: channelKey, channel: Self.channel, peek: Self.peek, epoch: 7,
                                         viewerKey: viewer.publicKey, signer: Self.signer)
        #expect(again.ephemeralKey != grant.ephemeralKey && again.nonce != grant.nonce)

        // Another viewer, peek, channel or epoch, or any altered byte: refused.
        #expect(throws: CryptoError.authenticationFailed) {
            try PeekKeyWrap.unwrap(grant, channel: Self.channel, peek: Self.peek,
                                   viewerSecretKey: EncryptionKeyPair().secretKey)
        }
        #expect(throws: CryptoError.authenticationFailed) {
            try PeekKeyWrap.unwrap(grant, channel: Self.channel, peek: "pk_AAAAAAAAAAAAAAAAAAAAAA",
                                   viewerSecretKey: viewer.secretKey)
        }
        #expect(throws: CryptoError.authenticationFailed) {
            try PeekKeyWrap.unwrap(grant, channel: ChannelID("ch_AAAAAAAAAAAAAAAAAAAAAA")!, peek: Self.peek,
                                   viewerSecretKey: viewer.secretKey)
        }
        var otherEpoch = grant
        otherEpoch.epoch = 8
        #expect(throws: CryptoError.authenticationFailed) {
            try PeekKeyWrap.unwrap(otherEpoch, channel: Self.channel, peek: Self.peek, viewerSecretKey: viewer.secretKey)
        }
        var altered = grant
        altered.ciphertext[0] ^= 1
        #expect(throws: CryptoError.authenticationFailed) {
            try PeekKeyWrap.unwrap(altered, channel: Self.channel, peek: Self.peek, viewerSecretKey: viewer.secretKey)
        }
        var forged = grant
        forged.sender = DID(signingKey: SigningKeyPair().publicKey)
        #expect(!PeekKeyWrap.verify(forged, channel: Self.channel, peek: Self.peek, viewerKey: viewer.publicKey))

        #expect(throws: CryptoError.invalidKeyLength) {
            try PeekKeyWrap.wrap(channelKey: [1, 2, 3], channel: Self.channel, peek: Self.peek, epoch: 1,
                                 viewerKey: viewer.publicKey, signer: Self.signer)
        }
        #expect(throws: CryptoError.operationFailed) {
            try PeekKeyWrap.wrap(channelKey: channelKey, channel: Self.channel, peek: Self.peek, epoch: 1,
                                 viewerKey: [UInt8](repeating: 0, count: 32), signer: Self.signer)
        }
    }
}
