import AgentChatCrypto
import AgentChatProtocol
import Testing

@Suite struct Ed25519Tests {
    // RFC 8037 A.1 (key) and A.4 (signature). The signature is the RFC's, also what OpenSSL (Python's
    // `cryptography`) produces; the value in the task brief differs after byte 39 and does not verify.
    static let d = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
    static let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
    static let signingInput = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    static let signature = "hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"

    @Test func reproducesRFC8037Vector() throws {
        let pair = try SigningKeyPair(seed: b64(Self.d))
        #expect(pair.publicKey == b64(Self.x))
        #expect(pair.seed.copyBytes() == b64(Self.d))
        #expect(pair.secretKey.count == 64)
        #expect(pair.secretKey.copyBytes() == b64(Self.d) + b64(Self.x))
        let sig = pair.sign(Array(Self.signingInput.utf8))
        #expect(Base64URL.encode(sig) == Self.signature)
        #expect(SigningKeyPair.verify(signature: sig, message: Array(Self.signingInput.utf8), publicKey: b64(Self.x)))
    }

    @Test func rejectsAlteredSignaturesMessagesAndKeys() throws {
        let pair = SigningKeyPair()
        let message = Array("hello".utf8)
        let sig = pair.sign(message)
        #expect(SigningKeyPair.verify(signature: sig, message: message, publicKey: pair.publicKey))
        var bad = sig
        bad[10] ^= 1
        #expect(!SigningKeyPair.verify(signature: bad, message: message, publicKey: pair.publicKey))
        #expect(!SigningKeyPair.verify(signature: sig, message: Array("hellp".utf8), publicKey: pair.publicKey))
        #expect(!SigningKeyPair.verify(signature: sig, message: message, publicKey: SigningKeyPair().publicKey))
        #expect(!SigningKeyPair.verify(signature: Array(sig.dropLast()), message: message, publicKey: pair.publicKey))
        #expect(!SigningKeyPair.verify(signature: sig + [0], message: message, publicKey: pair.publicKey))
        #expect(!SigningKeyPair.verify(signature: sig, message: message, publicKey: Array(pair.publicKey.dropLast())))
        #expect(!SigningKeyPair.verify(signature: [], message: message, publicKey: []))
        // The empty message signs and verifies.
        #expect(SigningKeyPair.verify(signature: pair.sign([]), message: [], publicKey: pair.publicKey))
    }

    @Test func rejectsBadSeedLengths() {
        #expect(throws: CryptoError.invalidKeyLength) { try SigningKeyPair(seed: [UInt8](repeating: 1, count: 31)) }
        #expect(throws: CryptoError.invalidKeyLength) { try SigningKeyPair(seed: [UInt8](repeating: 1, count: 64)) }
    }

    @Test func secretsNeverPrint() throws {
        let pair = try SigningKeyPair(seed: b64(Self.d))
        let seedHex = b64(Self.d).map { String($0, radix: 16) }.joined()
        for text in [String(describing: pair), String(reflecting: pair), String(describing: pair.secretKey),
                     String(reflecting: pair.seed)] {
            #expect(!text.contains(Self.d))
            #expect(!text.contains(seedHex))
            #expect(!text.contains("157"))  // first seed byte 0x9d in decimal
        }
        var dumped = ""
        dump(pair.secretKey, to: &dumped)
        #expect(!dumped.contains("157"))
        #expect(String(describing: pair).contains(pair.keyID.rawValue))
    }

    @Test func keyIDIsTruncatedBlake2bOfThePublicKey() {
        let key = b64(Self.x)
        let kid = KeyID(publicKey: key)
        #expect(kid.rawValue == Base64URL.encode(Array(Hash.blake2b(key, count: 32).prefix(12))))
        #expect(kid.rawValue.count == 16)
    }
}

@Suite struct HashAndMACTests {
    @Test func hmacRFC4231() {
        // Test case 1, 2 and 6 (a 131-byte key, longer than the 64-byte block).
        #expect(HMACSHA256.authenticate(Array("Hi There".utf8), key: [UInt8](repeating: 0x0b, count: 20))
            == hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"))
        #expect(HMACSHA256.authenticate(Array("what do ya want for nothing?".utf8), key: Array("Jefe".utf8))
            == hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"))
        #expect(HMACSHA256.authenticate(Array("Test Using Larger Than Block-Size Key - Hash Key First".utf8),
                                        key: [UInt8](repeating: 0xaa, count: 131))
            == hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"))
        #expect(HMACSHA256.authenticate(Array("Hi There".utf8), key: SecretBytes([UInt8](repeating: 0x0b, count: 20)))
            == hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"))
        let mac = HMACSHA256.authenticate(Array("m".utf8), key: Array("k".utf8))
        #expect(HMACSHA256.isValid(mac, for: Array("m".utf8), key: Array("k".utf8)))
        #expect(!HMACSHA256.isValid(mac, for: Array("n".utf8), key: Array("k".utf8)))
    }

    @Test func hashes() {
        #expect(Hash.sha256(Array("abc".utf8)) == hex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"))
        #expect(Hash.blake2b([]) == hex("0e5751c026e543b2e8ab2eb06099daa1d1e5df47778f7787faab45cdf12fe3a8"))
        #expect(Hash.blake2b(Array("abc".utf8), count: 64) == hex(
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"))
    }

    @Test func randomAndConstantTime() {
        let a = SecureRandom.bytes(32)
        #expect(a.count == 32)
        #expect(a != SecureRandom.bytes(32))
        #expect(SecureRandom.bytes(0).isEmpty)
        #expect(constantTimeEquals(a, a))
        #expect(!constantTimeEquals(a, SecureRandom.bytes(32)))
        #expect(!constantTimeEquals(a, Array(a.dropLast())))
        #expect(constantTimeEquals([], []))
        #expect(!Sodium.version.isEmpty)
    }
}

@Suite struct EncryptionTests {
    @Test func aesGCMRoundTripAndTamperDetection() throws {
        try #require(AES256GCM.isAvailable)
        let key = SecureRandom.bytes(32)
        let nonce = SecureRandom.bytes(12)
        let ad = Array("header".utf8)
        let plaintext = Array("attack at dawn".utf8)
        let sealed = try AES256GCM.seal(plaintext, key: key, nonce: nonce, associatedData: ad)
        #expect(sealed.count == plaintext.count + 16)
        #expect(try AES256GCM.open(sealed, key: key, nonce: nonce, associatedData: ad) == plaintext)
        #expect(try AES256GCM.open(AES256GCM.seal([], key: key, nonce: nonce), key: key, nonce: nonce) == [])

        for i in sealed.indices {
            var bad = sealed
            bad[i] ^= 0x01
            #expect(throws: CryptoError.authenticationFailed) {
                try AES256GCM.open(bad, key: key, nonce: nonce, associatedData: ad)
            }
        }
        #expect(throws: CryptoError.authenticationFailed) {
            try AES256GCM.open(sealed, key: key, nonce: nonce, associatedData: Array("headex".utf8))
        }
        #expect(throws: CryptoError.authenticationFailed) {
            try AES256GCM.open(sealed, key: SecureRandom.bytes(32), nonce: nonce, associatedData: ad)
        }
        #expect(throws: CryptoError.authenticationFailed) {
            try AES256GCM.open(sealed, key: key, nonce: SecureRandom.bytes(12), associatedData: ad)
        }
        #expect(throws: CryptoError.invalidInputLength) { try AES256GCM.open([1, 2, 3], key: key, nonce: nonce) }
        #expect(throws: CryptoError.invalidKeyLength) { try AES256GCM.seal(plaintext, key: [1], nonce: nonce) }
        #expect(throws: CryptoError.invalidNonceLength) { try AES256GCM.seal(plaintext, key: key, nonce: [1]) }
    }

    @Test func aesGCMKnownAnswer() throws {
        // NIST GCM test case 13 (all-zero 256-bit key and 96-bit IV, empty plaintext): only the tag.
        try #require(AES256GCM.isAvailable)
        let tag = try AES256GCM.seal([], key: [UInt8](repeating: 0, count: 32), nonce: [UInt8](repeating: 0, count: 12))
        #expect(tag == hex("530f8afbc74536b9a963b4f1c4cb738b"))
        // Test case 14: one zero block.
        let ct = try AES256GCM.seal([UInt8](repeating: 0, count: 16), key: [UInt8](repeating: 0, count: 32),
                                    nonce: [UInt8](repeating: 0, count: 12))
        #expect(ct == hex("cea7403d4d606b6e074ec5d3baf39d18d0d1c8a799996bf0265b98b5d48ab919"))
    }

    @Test func sealedBoxRoundTrip() throws {
        let recipient = EncryptionKeyPair()
        let message = Array("a channel key".utf8)
        let sealed = try EncryptionKeyPair.sealForRecipient(message, recipientPublicKey: recipient.publicKey)
        #expect(sealed.count == message.count + 48)
        #expect(try recipient.openSealed(sealed) == message)
        #expect(try recipient.openSealed(EncryptionKeyPair.sealForRecipient([], recipientPublicKey: recipient.publicKey)) == [])
        #expect(throws: CryptoError.authenticationFailed) { try EncryptionKeyPair().openSealed(sealed) }
        var bad = sealed
        bad[bad.count - 1] ^= 0x80
        #expect(throws: CryptoError.authenticationFailed) { try recipient.openSealed(bad) }
        #expect(throws: CryptoError.invalidInputLength) { try recipient.openSealed([1, 2]) }

        // The same secret gives the same public key.
        let again = try EncryptionKeyPair(secretKey: recipient.secretKey.copyBytes())
        #expect(again.publicKey == recipient.publicKey)
        #expect(try again.openSealed(sealed) == message)
        #expect(!String(describing: recipient).contains(Base64URL.encode(recipient.secretKey.copyBytes())))
    }

    @Test func x25519RFC7748PublicKey() throws {
        // RFC 7748 §6.1: Alice's private and public keys.
        let alice = try EncryptionKeyPair(secretKey: hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
        #expect(alice.publicKey == hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"))
    }
}
