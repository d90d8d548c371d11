import AgentChatProtocol

/// Checks compact EdDSA tokens and returns their claims, refusing everything it does not expect.
///
/// The header must hold `alg` = `"EdDSA"` exactly, a `kid` the key lookup knows, optionally `typ` = `"JWT"`, and
/// nothing else: `jku`, `jwk`, `x5u`, `x5c`, `crit` and every other field are refused, so a token can never choose
/// its own key or algorithm. The payload is parsed only after the signature verifies. All seven claims are
/// required; unknown claims are ignored.
public struct JWSVerifier: Sendable {
    /// Finds the Ed25519 public key for a `kid`; nil if unknown. Called once per token, on the caller's thread.
    public typealias KeyLookup = @Sendable (KeyID) -> [UInt8]?

    /// Header fields that would let a token pick its own key, certificate or processing rules.
    static let forbiddenHeaderFields: Set<String> = ["jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "crit"]

    private let lookup: KeyLookup
    /// Seconds of clock skew tolerated on `exp`, `nbf` and `iat`. Default 0: the broker issues and checks its own
    /// tokens against one clock.
    public let leeway: Int64

    /// A verifier that asks `keys` for each token's public key, so the set of keys may change (rotation) without
    /// making a new verifier.
    public init(leeway: Int64 = 0, keys: @escaping KeyLookup) {
        precondition(leeway >= 0, "leeway cannot be negative")
        self.leeway = leeway
        lookup = keys
    }

    /// A verifier over a fixed ring of keys.
    public init(leeway: Int64 = 0, keyRing: KeyRing) {
        self.init(leeway: leeway, keys: { keyRing.publicKey(for: $0) })
    }

    /// The claims of `token` if it is well formed, signed by a known key, valid at `now` (Unix seconds), issued by
    /// `expectedIssuer` and meant for `expectedAudience`; throws the first reason it is not.
    public func verify(_ token: String, now: Int64, expectedIssuer: String, expectedAudience: String)
        throws(JWSError) -> JWS.Claims
    {
        let bytes = Array(token.utf8)
        guard bytes.count <= JWS.maxTokenLength else { throw JWSError.malformed.with("token longer than \(JWS.maxTokenLength) bytes") }
        let segments = bytes.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
        guard segments.count == 3, segments.allSatisfy({ !$0.isEmpty }) else {
            throw JWSError.malformed.with("expected three non-empty segments")
        }
        guard let headerBytes = Base64URL.decode(utf8: segments[0]) else { throw JWSError.invalidBase64.with("header") }
        guard let payloadBytes = Base64URL.decode(utf8: segments[1]) else { throw JWSError.invalidBase64.with("payload") }
        guard let signature = Base64URL.decode(utf8: segments[2]) else { throw JWSError.invalidBase64.with("signature") }

        let header = try Self.parseObject(headerBytes, what: "header")
        let publicKey = try checkHeader(header)

        // The signing input is the received text, never a re-encoding of it.
        let signingInput = Array(bytes[0..<(segments[0].count + 1 + segments[1].count)])
        guard SigningKeyPair.verify(signature: signature, message: signingInput, publicKey: publicKey) else {
            throw JWSError.badSignature
        }

        let claims = try Self.parseClaims(try Self.parseObject(payloadBytes, what: "payload"))
        try check(claims, now: now, expectedIssuer: expectedIssuer, expectedAudience: expectedAudience)
        return claims
    }

    /// The checks of ``verify(_:now:expectedIssuer:expectedAudience:)`` after the signature: times (with the
    /// leeway), issuer and audience. For claims whose signature was checked earlier (a cache of verified tokens).
    public func check(_ claims: JWS.Claims, now: Int64, expectedIssuer: String, expectedAudience: String)
        throws(JWSError)
    {
        if now >= claims.expiresAt &+ leeway { throw JWSError.expired.with("exp \(claims.expiresAt), now \(now)") }
        if claims.notBefore > now &+ leeway { throw JWSError.notYetValid.with("nbf \(claims.notBefore), now \(now)") }
        if claims.issuedAt > now &+ leeway { throw JWSError.issuedInFuture.with("iat \(claims.issuedAt), now \(now)") }
        guard claims.issuer == expectedIssuer else { throw JWSError.wrongIssuer.with("iss \"\(claims.issuer)\"") }
        guard claims.audience.contains(expectedAudience) else { throw JWSError.wrongAudience }
    }

    /// Checks every header field and returns the public key its `kid` names.
    private func checkHeader(_ header: [String: JSONValue]) throws(JWSError) -> [UInt8] {
        guard let alg = header["alg"] else { throw JWSError.unsupportedAlgorithm.with("no alg") }
        guard alg.stringValue == JWS.algorithm else { throw JWSError.unsupportedAlgorithm.with("alg must be EdDSA") }
        for name in header.keys.sorted() where name != "alg" && name != "typ" && name != "kid" {
            if Self.forbiddenHeaderFields.contains(name) { throw JWSError.forbiddenHeader.with(name) }
            throw JWSError.unknownHeader.with(name)
        }
        if let typ = header["typ"], typ.stringValue != "JWT" { throw JWSError.unsupportedType }
        guard let kid = header["kid"]?.stringValue else { throw JWSError.missingKeyID }
        guard let key = lookup(KeyID(rawValue: kid)), key.count == SigningKeyPair.publicKeyLength else {
            throw JWSError.unknownKeyID.with("kid \(kid)")
        }
        return key
    }

    private static func parseObject(_ bytes: [UInt8], what: String) throws(JWSError) -> [String: JSONValue] {
        let value: JSONValue
        do { value = try JSONParser.parse(bytes) } catch { throw JWSError.invalidJSON.with("\(what): \(error.message)") }
        guard let object = value.objectValue else { throw JWSError.invalidJSON.with("\(what) is not an object") }
        return object
    }

    private static func parseClaims(_ payload: [String: JSONValue]) throws(JWSError) -> JWS.Claims {
        func field(_ name: String) throws(JWSError) -> JSONValue {
            guard let value = payload[name] else { throw JWSError.missingClaim.with(name) }
            return value
        }
        func string(_ name: String) throws(JWSError) -> String {
            guard let s = try field(name).stringValue, !s.isEmpty else {
                throw JWSError.invalidClaim.with("\(name) must be a non-empty string")
            }
            return s
        }
        func numericDate(_ name: String) throws(JWSError) -> Int64 {
            guard let n = try field(name).integerValue, n >= 0 else {
                throw JWSError.invalidClaim.with("\(name) must be a non-negative integer")
            }
            return n
        }

        let issuer = try string("iss")
        let audience: [String]
        switch try field("aud") {
        case .string(let s) where !s.isEmpty: audience = [s]
        case .array(let items) where !items.isEmpty:
            var list: [String] = []
            for item in items {
                guard let s = item.stringValue, !s.isEmpty else {
                    throw JWSError.invalidClaim.with("aud must hold non-empty strings")
                }
                list.append(s)
            }
            audience = list
        default: throw JWSError.invalidClaim.with("aud must be a string or a non-empty array of strings")
        }
        guard let subject = DID(parsing: try string("sub")) else { throw JWSError.invalidSubject }
        let issuedAt = try numericDate("iat")
        let notBefore = try numericDate("nbf")
        let expiresAt = try numericDate("exp")
        let tokenID = try string("jti")
        return JWS.Claims(issuer: issuer, audience: audience, subject: subject, issuedAt: issuedAt,
                          notBefore: notBefore, expiresAt: expiresAt, tokenID: tokenID)
    }
}
