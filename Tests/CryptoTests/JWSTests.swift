import AgentChatCrypto
import AgentChatProtocol
import Testing

/// Builds tokens by hand, so tests can sign anything (or not) regardless of what JWSSigner would make.
struct Forge {
    let key: SigningKeyPair
    var kid: String { key.keyID.rawValue }

    var header: String { "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(kid)\"}" }

    func payload(_ now: Int64, overriding changes: [String: JSONValue?] = [:]) -> String {
        var fields: [String: JSONValue] = [
            "iss": "broker", "aud": "agentchat", "sub": .string(key.did.description),
            "iat": .number(Double(now)), "nbf": .number(Double(now)), "exp": .number(Double(now + 600)),
            "jti": "AAAAAAAAAAAAAAAAAAAAAA",
        ]
        for (name, value) in changes { fields[name] = value }
        return String(decoding: JSONWriter.encode(.object(fields)), as: UTF8.self)
    }

    /// header.payload.signature, signed by `key` over exactly these texts.
    func token(header: String? = nil, payload: String) -> String {
        let input = b64text(header ?? self.header) + "." + b64text(payload)
        return input + "." + b64(key.sign(Array(input.utf8)))
    }
}

@Suite struct JWSTests {
    static let now: Int64 = 1_700_000_000
    let key = SigningKeyPair()
    var forge: Forge { Forge(key: key) }
    var verifier: JWSVerifier { JWSVerifier(keyRing: KeyRing(publicKeys: [key.publicKey])) }

    func verify(_ token: String, now: Int64 = JWSTests.now, leeway: Int64 = 0) throws(JWSError) -> JWS.Claims {
        try JWSVerifier(leeway: leeway, keyRing: KeyRing(publicKeys: [key.publicKey]))
            .verify(token, now: now, expectedIssuer: "broker", expectedAudience: "agentchat")
    }

    func expectRejected(_ token: String, _ error: JWSError, now: Int64 = JWSTests.now,
                        sourceLocation: SourceLocation = #_sourceLocation)
    {
        #expect(throws: error, sourceLocation: sourceLocation) { try verify(token, now: now) }
    }

    @Test func signsAndVerifies() throws {
        let claims = JWS.Claims(issuer: "broker", audience: "agentchat", subject: SigningKeyPair().did, now: Self.now,
                                lifetime: 600)
        let token = JWSSigner(key: key).sign(claims)
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        #expect(parts.count == 3)
        #expect(String(decoding: b64(String(parts[0])), as: UTF8.self)
            == "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(key.keyID.rawValue)\"}")
        #expect(try verify(token) == claims)
        #expect(b64(claims.tokenID).count == 16)
        #expect(claims.tokenID != JWS.Claims(issuer: "i", audience: "a", subject: key.did, now: 0, lifetime: 1).tokenID)
    }

    @Test func acceptsAudienceArraysAndAbsentTyp() throws {
        let token = forge.token(payload: forge.payload(Self.now, overriding: ["aud": ["other", "agentchat"]]))
        #expect(try verify(token).audience == ["other", "agentchat"])
        let noTyp = forge.token(header: "{\"alg\":\"EdDSA\",\"kid\":\"\(forge.kid)\"}", payload: forge.payload(Self.now))
        _ = try verify(noTyp)
    }

    @Test func rejectsMalformedTokens() {
        let good = forge.token(payload: forge.payload(Self.now))
        for bad in ["", "a", "a.b", "a.b.c.d", good + ".", "." + good, "..", "a..c", String(good.dropLast(good.count - good.firstIndex(of: ".")!.utf16Offset(in: good)))] {
            expectRejected(bad, .malformed)
        }
        expectRejected(String(repeating: "a", count: JWS.maxTokenLength) + ".b.c", .malformed)
        let parts = good.split(separator: ".").map(String.init)
        expectRejected(parts[0] + "=." + parts[1] + "." + parts[2], .invalidBase64)
        expectRejected(parts[0] + "." + parts[1] + "=." + parts[2], .invalidBase64)
        expectRejected(parts[0] + "." + parts[1] + "." + "+" + parts[2].dropFirst(), .invalidBase64)
        expectRejected(parts[0] + "." + parts[1] + "." + parts[2] + "=", .invalidBase64)
        expectRejected(parts[0] + " ." + parts[1] + "." + parts[2], .invalidBase64)
        expectRejected(forge.token(header: "not json", payload: forge.payload(Self.now)), .invalidJSON)
        expectRejected(forge.token(header: "[\"EdDSA\"]", payload: forge.payload(Self.now)), .invalidJSON)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"alg\":\"EdDSA\",\"kid\":\"\(forge.kid)\"}",
                                   payload: forge.payload(Self.now)), .invalidJSON)
        expectRejected(forge.token(payload: "{\"iss\":\"broker\""), .invalidJSON)
        expectRejected(forge.token(payload: "[]"), .invalidJSON)
    }

    @Test func rejectsAlgorithmsOtherThanEdDSA() {
        let payload = forge.payload(Self.now)
        for alg in ["none", "None", "HS256", "ES256", "RS256", "eddsa", "EdDSA ", "Ed25519"] {
            let header = "{\"alg\":\"\(alg)\",\"typ\":\"JWT\",\"kid\":\"\(forge.kid)\"}"
            expectRejected(forge.token(header: header, payload: payload), .unsupportedAlgorithm)
        }
        expectRejected(forge.token(header: "{\"typ\":\"JWT\",\"kid\":\"\(forge.kid)\"}", payload: payload),
                       .unsupportedAlgorithm)
        expectRejected(forge.token(header: "{\"alg\":null,\"kid\":\"\(forge.kid)\"}", payload: payload),
                       .unsupportedAlgorithm)

        // alg:none forged by hand, with an empty and with a junk signature.
        let noneInput = b64text("{\"alg\":\"none\",\"typ\":\"JWT\"}") + "." + b64text(payload)
        expectRejected(noneInput + ".", .malformed)
        expectRejected(noneInput + ".AAAA", .unsupportedAlgorithm)
        // HS256 with the public key as the HMAC secret (the classic key-confusion forgery).
        let hsInput = b64text("{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"\(forge.kid)\"}") + "." + b64text(payload)
        let hsToken = hsInput + "." + b64(HMACSHA256.authenticate(Array(hsInput.utf8), key: key.publicKey))
        expectRejected(hsToken, .unsupportedAlgorithm)
    }

    @Test(arguments: ["jku", "jwk", "x5u", "x5c", "x5t", "crit"])
    func rejectsKeySourceHeaders(field: String) {
        let header = "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(forge.kid)\",\"\(field)\":\"https://evil.example/k\"}"
        expectRejected(forge.token(header: header, payload: forge.payload(Self.now)), .forbiddenHeader)
    }

    @Test func rejectsOtherHeaderProblems() {
        let payload = forge.payload(Self.now)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(forge.kid)\",\"cty\":\"x\"}",
                                   payload: payload), .unknownHeader)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":\"JOSE\",\"kid\":\"\(forge.kid)\"}",
                                   payload: payload), .unsupportedType)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":1,\"kid\":\"\(forge.kid)\"}",
                                   payload: payload), .unsupportedType)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":\"JWT\"}", payload: payload), .missingKeyID)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":7}", payload: payload),
                       .missingKeyID)
        expectRejected(forge.token(header: "{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"AAAAAAAAAAAAAAAA\"}",
                                   payload: payload), .unknownKeyID)
        // Signed by a key the verifier does not know, under its own kid.
        let stranger = Forge(key: SigningKeyPair())
        expectRejected(stranger.token(payload: stranger.payload(Self.now)), .unknownKeyID)
        // Signed by a stranger but claiming our kid.
        let impostor = Forge(key: SigningKeyPair())
        expectRejected(impostor.token(header: forge.header, payload: impostor.payload(Self.now)), .badSignature)
    }

    @Test func rejectsTamperingWithEveryClaimTheHeaderAndTheSignature() throws {
        let token = forge.token(payload: forge.payload(Self.now))
        _ = try verify(token)
        let parts = token.split(separator: ".").map(String.init)
        let other = SigningKeyPair().did.description
        let changes: [String: JSONValue?] = [
            "iss": "broker2", "aud": "agentchat2", "sub": .string(other), "iat": .number(Double(Self.now - 1)),
            "nbf": .number(Double(Self.now - 1)), "exp": .number(Double(Self.now + 6000)),
            "jti": "BAAAAAAAAAAAAAAAAAAAAA", "extra": "x",
        ]
        for (name, value) in changes {
            let tampered = parts[0] + "." + b64text(forge.payload(Self.now, overriding: [name: value])) + "." + parts[2]
            expectRejected(tampered, .badSignature)
        }
        // The header, re-ordered but equivalent: the signature covers the bytes, not the meaning.
        let reordered = b64text("{\"kid\":\"\(forge.kid)\",\"alg\":\"EdDSA\",\"typ\":\"JWT\"}")
        expectRejected(reordered + "." + parts[1] + "." + parts[2], .badSignature)
        // Another valid signature (over other claims) spliced in.
        let otherToken = forge.token(payload: forge.payload(Self.now, overriding: ["jti": "other"]))
        expectRejected(parts[0] + "." + parts[1] + "." + otherToken.split(separator: ".")[2], .badSignature)
        // A truncated and an extended signature.
        let sig = b64(parts[2])
        expectRejected(parts[0] + "." + parts[1] + "." + b64(Array(sig.dropLast())), .badSignature)
        expectRejected(parts[0] + "." + parts[1] + "." + b64(sig + [0]), .badSignature)
    }

    @Test func rejectsEverySingleBitFlip() throws {
        let token = forge.token(payload: forge.payload(Self.now))
        let parts = token.split(separator: ".").map { b64(String($0)) }
        var checked = 0
        for segment in 0..<3 {
            for i in parts[segment].indices {
                for bit in 0..<8 {
                    var altered = parts
                    altered[segment][i] ^= UInt8(1 << bit)
                    let tampered = altered.map(b64).joined(separator: ".")
                    do {
                        _ = try verify(tampered)
                        Issue.record("bit \(bit) of byte \(i) in segment \(segment) went unnoticed")
                    } catch {
                        // Payload and signature changes can only fail the signature; header changes may fail
                        // earlier (bad JSON, unknown field, …) but must fail.
                        if segment > 0 { #expect(error == .badSignature) }
                    }
                    checked += 1
                }
            }
        }
        #expect(checked > 2000)
    }

    @Test func checksTimes() throws {
        let token = forge.token(payload: forge.payload(Self.now))  // iat = nbf = now, exp = now + 600
        _ = try verify(token, now: Self.now)
        _ = try verify(token, now: Self.now + 599)
        #expect(throws: JWSError.expired) { try verify(token, now: Self.now + 600) }
        #expect(throws: JWSError.expired) { try verify(token, now: Self.now + 100_000) }
        #expect(throws: JWSError.notYetValid) { try verify(token, now: Self.now - 1) }
        // With leeway: 30 s either side.
        _ = try verify(token, now: Self.now + 629, leeway: 30)
        #expect(throws: JWSError.expired) { try verify(token, now: Self.now + 630, leeway: 30) }
        _ = try verify(token, now: Self.now - 30, leeway: 30)
        #expect(throws: JWSError.notYetValid) { try verify(token, now: Self.now - 31, leeway: 30) }

        let futureIat = forge.token(payload: forge.payload(Self.now, overriding: ["iat": .number(Double(Self.now + 60)),
                                                                                  "nbf": .number(Double(Self.now - 60))]))
        #expect(throws: JWSError.issuedInFuture) { try verify(futureIat) }
        let futureNbf = forge.token(payload: forge.payload(Self.now, overriding: ["nbf": .number(Double(Self.now + 60))]))
        #expect(throws: JWSError.notYetValid) { try verify(futureNbf) }
    }

    @Test func checksIssuerAndAudience() {
        expectRejected(forge.token(payload: forge.payload(Self.now, overriding: ["iss": "evil"])), .wrongIssuer)
        expectRejected(forge.token(payload: forge.payload(Self.now, overriding: ["iss": "Broker"])), .wrongIssuer)
        expectRejected(forge.token(payload: forge.payload(Self.now, overriding: ["aud": "other"])), .wrongAudience)
        expectRejected(forge.token(payload: forge.payload(Self.now, overriding: ["aud": ["a", "b"]])), .wrongAudience)
    }

    @Test(arguments: ["iss", "aud", "sub", "iat", "nbf", "exp", "jti"])
    func requiresEveryClaim(name: String) {
        expectRejected(forge.token(payload: forge.payload(Self.now, overriding: [name: Optional<JSONValue>.none])),
                       .missingClaim)
    }

    @Test func rejectsIllTypedClaims() {
        let bad: [(String, JSONValue)] = [
            ("iss", 1), ("iss", ""), ("aud", 1), ("aud", []), ("aud", [1]), ("aud", [""]), ("sub", 1),
            ("iat", "1700000000"), ("nbf", .number(1_700_000_000.5)), ("exp", .number(-1)), ("exp", nil),
            ("exp", .number(1e300)), ("jti", 5), ("jti", ""),
        ]
        for (name, value) in bad {
            expectRejected(forge.token(payload: forge.payload(Self.now, overriding: [name: value])), .invalidClaim)
        }
    }

    @Test func requiresTheSubjectToBeADID() {
        for sub in ["agent-1", "did:key:\(key.did.description.dropFirst("did:agentchat:".count))",
                    key.did.description + "x", "did:agentchat:z"] {
            expectRejected(forge.token(payload: forge.payload(Self.now, overriding: ["sub": .string(sub)])),
                           .invalidSubject)
        }
    }

    @Test func errorsHaveDistinctStableCodes() {
        let all: [JWSError] = [.malformed, .invalidBase64, .invalidJSON, .unsupportedAlgorithm, .unsupportedType,
                               .forbiddenHeader, .unknownHeader, .missingKeyID, .unknownKeyID, .badSignature, .expired,
                               .notYetValid, .issuedInFuture, .wrongIssuer, .wrongAudience, .missingClaim,
                               .invalidClaim, .invalidSubject]
        #expect(Set(all.map(\.code)).count == all.count)
        #expect(JWSError.expired.code == "token_expired")
    }
}
