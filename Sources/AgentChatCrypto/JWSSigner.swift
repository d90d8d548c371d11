import AgentChatProtocol

/// Makes compact EdDSA tokens with one Ed25519 key.
public struct JWSSigner: Sendable {
    public let key: SigningKeyPair
    /// The `kid` every token from this signer carries.
    public let keyID: KeyID
    private let encodedHeader: String

    public init(key: SigningKeyPair) {
        self.key = key
        keyID = key.keyID
        // Written by hand, not through JSONWriter (which sorts keys), so the header is byte-for-byte this text. The
        // kid is base64url and needs no escaping.
        encodedHeader = Base64URL.encode(Array("{\"alg\":\"EdDSA\",\"typ\":\"JWT\",\"kid\":\"\(keyID.rawValue)\"}".utf8))
    }

    /// The token `header.payload.signature` for `claims` (payload keys sorted).
    public func sign(_ claims: JWS.Claims) -> String {
        let signingInput = encodedHeader + "." + Base64URL.encode(JSONWriter.encode(claims.json))
        let signature = key.sign(Array(signingInput.utf8))
        return signingInput + "." + Base64URL.encode(signature)
    }
}
