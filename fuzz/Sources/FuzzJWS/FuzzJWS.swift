import AgentChatCrypto
import AgentChatProtocol

/// One fixed Ed25519 key (seed 0x07 × 32); the verifier knows only it. The clock is fixed at `now`.
let key = try! SigningKeyPair(seed: [UInt8](repeating: 7, count: 32))
let signer = JWSSigner(key: key)
let verifier = JWSVerifier(keyRing: KeyRing(publicKeys: [key.publicKey]))
let now: Int64 = 1_800_000_000
let issuer = "agentchat-broker"
let audience = "agentchat"

/// The first byte picks how the rest becomes a token:
/// - 0: the rest is the token text, as a client would send it (seeds: real tokens);
/// - 1: the rest is a payload, signed by the key under the signer's own header (reaches the claim checks);
/// - 2: the rest is `header \n payload`, both chosen by the fuzzer and signed by the key (reaches the header
///   checks with a valid signature).
///
/// Properties: `verify` returns or throws for every token; it never accepts one whose signature the key does not
/// verify over the first two segments as sent; what it accepts has alg EdDSA, our kid, no other header field
/// than typ = JWT, and claims valid at `now` for our issuer and audience.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzJWS(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let token: String
    switch data[0] % 3 {
    case 0:
        token = String(decoding: input, as: UTF8.self)
    case 1:
        let header = Base64URL.encode(Array("{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(key.keyID.rawValue)\"}".utf8))
        token = signed(header + "." + Base64URL.encode(input))
    default:
        let newline = input.firstIndex(of: 0x0A) ?? input.endIndex
        let header = input[..<newline]
        let payload = newline < input.endIndex ? input[(newline + 1)...] : []
        token = signed(Base64URL.encode(header) + "." + Base64URL.encode(payload))
    }
    guard let claims = try? verifier.verify(token, now: now, expectedIssuer: issuer, expectedAudience: audience)
    else { return 0 }

    // Accepted: check everything again, independently of the verifier.
    let segments = token.utf8.split(separator: UInt8(ascii: "."), omittingEmptySubsequences: false)
    precondition(segments.count == 3, "accepted a token without three segments")
    let signingInput = Array(token.utf8.prefix(segments[0].count + 1 + segments[1].count))
    guard let signature = Base64URL.decode(utf8: segments[2]),
        SigningKeyPair.verify(signature: signature, message: signingInput, publicKey: key.publicKey)
    else { preconditionFailure("accepted a token the key did not sign: \(token)") }
    guard let headerBytes = Base64URL.decode(utf8: segments[0]),
        case .object(let header)? = try? JSONParser.parse(headerBytes)
    else { preconditionFailure("accepted a token whose header is not a JSON object: \(token)") }
    precondition(header["alg"] == .string("EdDSA"), "accepted alg \(String(describing: header["alg"]))")
    precondition(header["kid"] == .string(key.keyID.rawValue), "accepted another kid")
    precondition(header["typ"] == nil || header["typ"] == .string("JWT"), "accepted typ \(String(describing: header["typ"]))")
    precondition(Set(header.keys).isSubset(of: ["alg", "kid", "typ"]), "accepted header fields \(header.keys.sorted())")
    precondition(claims.expiresAt > now && claims.notBefore <= now && claims.issuedAt <= now, "accepted at the wrong time")
    precondition(claims.issuer == issuer && claims.audience.contains(audience), "accepted another issuer or audience")
    precondition(DID(parsing: claims.subject.description) == claims.subject)
    precondition(!claims.tokenID.isEmpty)
    // A token the signer makes from the accepted claims is accepted with the same claims.
    let again = try? verifier.verify(signer.sign(claims), now: now, expectedIssuer: issuer, expectedAudience: audience)
    precondition(again == claims, "re-signed claims are not accepted as they were")
    return 0
}

private func signed(_ signingInput: String) -> String {
    signingInput + "." + Base64URL.encode(key.sign(Array(signingInput.utf8)))
}
