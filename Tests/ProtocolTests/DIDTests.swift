import AgentChatProtocol
import Testing

@Suite struct Base64URLTests {
    // RFC 4648 §10 vectors, unpadded; plus bytes that use `-` and `_`.
    static let vectors: [(String, String)] = [
        ("", ""), ("f", "Zg"), ("fo", "Zm8"), ("foo", "Zm9v"), ("foob", "Zm9vYg"), ("fooba", "Zm9vYmE"),
        ("foobar", "Zm9vYmFy"),
    ]

    @Test(arguments: vectors)
    func encodesAndDecodesRFC4648Vectors(plain: String, encoded: String) {
        #expect(Base64URL.encode(Array(plain.utf8)) == encoded)
        #expect(Base64URL.decode(encoded) == Array(plain.utf8))
    }

    @Test func usesTheURLAlphabet() {
        #expect(Base64URL.encode([0xFB, 0xFF, 0xBF]) == "-_-_")
        #expect(Base64URL.decode("-_-_") == [0xFB, 0xFF, 0xBF])
    }

    @Test func roundTripsEveryLengthAndByte() {
        var bytes: [UInt8] = []
        for i in 0..<300 {
            #expect(Base64URL.decode(Base64URL.encode(bytes)) == bytes)
            bytes.append(UInt8(truncatingIfNeeded: i &* 151 &+ 7))
        }
    }

    @Test(arguments: [
        "Zg==", "Zg=", "Zm8=",  // padding
        "+w", "/w", "a+b/",  // the standard alphabet
        "Zm 9v", " Zm9v", "Zm9v\n", "Zm9v\t",  // whitespace
        "Z", "Zm9vY",  // impossible lengths (4n+1)
        "AB", "Zh", "Zm9", "Zm9vYmF",  // non-zero trailing bits
        "Zm9v!", "Zm9vé",
    ])
    func rejects(text: String) {
        #expect(Base64URL.decode(text) == nil)
    }

    @Test func everyByteHasExactlyOneAcceptedOneCharacterPair() {
        // For one byte, 16 second characters share its top bits; only the one with zero low bits is accepted.
        #expect(Base64URL.decode("AA") == [0x00])
        #expect(Base64URL.decode("AB") == nil)
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        var accepted = 0
        for a in alphabet { for b in alphabet where Base64URL.decode(String([a, b])) != nil { accepted += 1 } }
        #expect(accepted == 256)
    }
}

@Suite struct Base58Tests {
    static func hex(_ s: String) -> [UInt8] {
        var out: [UInt8] = []
        var it = s.makeIterator()
        while let h = it.next(), let l = it.next() { out.append(UInt8(String([h, l]), radix: 16)!) }
        return out
    }

    // From the IETF base58 draft (draft-msporny-base58) and Bitcoin's base58_encode_decode.json.
    static let vectors: [(String, String)] = [
        ("", ""),
        ("61", "2g"),
        ("626262", "a3gV"),
        ("636363", "aPEr"),
        ("00", "1"),
        ("0000", "11"),
        ("00000000000000000000", "1111111111"),
        ("000000287fb4cd", "111233QC4"),
        ("73696d706c792061206c6f6e6720737472696e67", "2cFupjhnEsSn59qHXstmK2ffpLv2"),
        ("00eb15231dfceb60925886b67d065299925915aeb172c06647", "1NS17iag9jJgTHD1VXjvLCEnZuQ3rJDE9L"),
        ("516b6fcd0f", "ABnLTmg"),
        ("bf4f89001e670274dd", "3SEo3LWLoPntC"),
        ("572e4794", "3EFU7m"),
        ("ecac89cad93923c02321", "EJDM8drfXA6uyA"),
        ("10c8511e", "Rt5zm"),
        ("48656c6c6f20576f726c6421", "2NEpo7TZRRrLZSi2U"),
    ]

    @Test(arguments: vectors)
    func encodesAndDecodes(hex: String, encoded: String) {
        #expect(Base58.encode(Self.hex(hex)) == encoded)
        #expect(Base58.decode(encoded) == Self.hex(hex))
    }

    @Test(arguments: ["0", "O", "I", "l", "abc+", "a b", "é"])
    func rejectsCharactersOutsideTheAlphabet(text: String) {
        #expect(Base58.decode(text) == nil)
    }
}

@Suite struct DIDTests {
    /// RFC 8037 A.1's Ed25519 public key `x`.
    static let rfc8037Key = Base64URL.decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")!

    @Test func didOfTheRFC8037KeyIsItsDidKeyEncoding() throws {
        // Computed independently (Python big-integer base58 of ED 01 ‖ key). The brief's expected value,
        // z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp, is the did:key specification's example key, a
        // different key (3b6a27bc…): see `didKeySpecificationExample`.
        let did = DID(signingKey: Self.rfc8037Key)
        #expect(did.description == "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw")
        #expect(DID(parsing: did.description) == did)
        #expect(try #require(DID(parsing: did.description)).signingKey == Self.rfc8037Key)
    }

    @Test func didKeySpecificationExample() throws {
        // did:key spec: did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp, key O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik.
        let key = try #require(Base64URL.decode("O2onvM62pC1io6jQKm8Nc2UyFXcd4kOmOsBIoYtZ2ik"))
        #expect(DID(signingKey: key).description == "did:agentchat:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp")
        let parsed = try #require(DID(parsing: "did:agentchat:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"))
        #expect(parsed.signingKey == key)
    }

    @Test func roundTripsKeysWithLeadingZeros() throws {
        for key in [[UInt8](repeating: 0, count: 32), [0, 0, 1] + [UInt8](repeating: 0xFF, count: 29),
                    [UInt8](repeating: 0xFF, count: 32)] {
            let did = DID(signingKey: key)
            #expect(try #require(DID(parsing: did.description)).signingKey == key)
        }
    }

    static let good = "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"

    static var rejected: [String] {
        let rfcKey = rfc8037Key
        return [
            "", "did:agentchat:", "did:agentchat:z",
            "did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",  // wrong method
            "DID:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",  // prefix case
            " did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",  // leading space
            good + " ", good + "\n",  // trailing whitespace
            "did:agentchat:Z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw",  // multibase prefix case
            "did:agentchat:u7QHXWpgBgrEKt9VL_tPJZAc6DuFy89qmIyWvAhpo9wdRGg",  // base64url multibase of the same bytes
            "did:agentchat:" + "z" + Base58.encode([0xEC, 0x01] + rfcKey),  // X25519 multicodec
            "did:agentchat:" + "z" + Base58.encode([0xED, 0x02] + rfcKey),  // bad varint
            "did:agentchat:" + "z" + Base58.encode([0xED, 0x01] + rfcKey.dropLast()),  // 31-byte key
            "did:agentchat:" + "z" + Base58.encode([0xED, 0x01] + rfcKey + [0]),  // 33-byte key
            "did:agentchat:" + "z" + Base58.encode(rfcKey),  // no multicodec
            "did:agentchat:z" + "1" + String(good.dropFirst("did:agentchat:z".count)),  // leading zero byte
            "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMs0",  // '0' not in base58
            "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsl",  // 'l' not in base58
            "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMs\u{212A}",  // KELVIN SIGN, canonically "K"
        ]
    }

    @Test(arguments: rejected)
    func rejectsInvalidDIDs(text: String) {
        #expect(DID(parsing: text) == nil)
    }

    @Test func goodIsAccepted() {
        #expect(DID(parsing: Self.good) != nil)
    }
}
