import AgentChatProtocol

/// A paid peek's grant (docs/PROTOCOL.md, "The grant: a channel key wrapped for the viewer"): one epoch's 32-byte
/// channel key wrapped for the viewer's X25519 key so that a browser opens it with WebCrypto alone, and signed by
/// the granting member.
///
/// 1. `e` = a fresh X25519 key pair; `shared` = X25519(`e.secret`, `viewerKey`).
/// 2. `wrapKey` = HKDF-SHA256(ikm: `shared`, salt: `e.public` ‖ `viewerKey`, info: `agentchat peek v1`, 32 bytes).
/// 3. `aad` = `agentchat-peek-grant-v1\n<channel>\n<peek>\n<epoch>` (``PeekGrant/associatedData(channel:peek:epoch:)``).
/// 4. `ciphertext` = AES-256-GCM(`wrapKey`, 12 random bytes of nonce, the channel key, `aad`): 48 bytes.
/// 5. `signature` = Ed25519 over ``PeekGrant/signedBytes(channel:peek:viewerKey:epoch:ephemeralKey:nonce:ciphertext:)``.
///
/// ``unwrap(_:channel:peek:viewerSecretKey:)`` is the viewer's side (the page does it with WebCrypto); it is here
/// for tests and for tools.
public enum PeekKeyWrap {
    public static let channelKeyLength = 32

    /// The AES-256-GCM key of the wrap: HKDF-SHA256 over the X25519 secret, salted with both public keys.
    public static func wrapKey(sharedSecret: SecretBytes, ephemeralKey: [UInt8], viewerKey: [UInt8])
        throws(CryptoError) -> [UInt8]
    {
        try HKDFSHA256.deriveKey(ikm: sharedSecret, salt: ephemeralKey + viewerKey, info: PeekGrant.info,
                                 length: AES256GCM.keyLength)
    }

    /// Wraps `channelKey` (epoch `epoch` of `channel`) for `viewerKey` under a fresh ephemeral key and a random
    /// nonce, and signs the grant with `signer` (its DID is the grant's `sender`).
    ///
    /// - Throws: ``CryptoError/invalidKeyLength`` for a channel key or viewer key that is not 32 bytes,
    ///   ``CryptoError/operationFailed`` for a low-order viewer key (X25519 gives all zeros).
    public static func wrap(channelKey: [UInt8], channel: ChannelID, peek: String, epoch: Int64, viewerKey: [UInt8],
                            signer: SigningKeyPair) throws(CryptoError) -> PeekGrant
    {
        try wrap(channelKey: channelKey, channel: channel, peek: peek, epoch: epoch, viewerKey: viewerKey,
                 signer: signer, ephemeral: EncryptionKeyPair(), nonce: SecureRandom.bytes(AES256GCM.nonceLength))
    }

    /// ``wrap(channelKey:channel:peek:epoch:viewerKey:signer:)`` with a given ephemeral key pair and nonce (known
    /// answers in tests; never reuse either).
    public static func wrap(channelKey: [UInt8], channel: ChannelID, peek: String, epoch: Int64, viewerKey: [UInt8],
                            signer: SigningKeyPair, ephemeral: EncryptionKeyPair, nonce: [UInt8])
        throws(CryptoError) -> PeekGrant
    {
        guard channelKey.count == channelKeyLength else {
            throw .invalidKeyLength("channel key", expected: channelKeyLength, got: channelKey.count)
        }
        let shared = try X25519.sharedSecret(secretKey: ephemeral.secretKey, publicKey: viewerKey)
        var key = try wrapKey(sharedSecret: shared, ephemeralKey: ephemeral.publicKey, viewerKey: viewerKey)
        defer { zeroize(&key) }
        let associatedData = PeekGrant.associatedData(channel: channel, peek: peek, epoch: epoch)
        let ciphertext = try AES256GCM.seal(channelKey, key: key, nonce: nonce, associatedData: associatedData)
        let signed = PeekGrant.signedBytes(channel: channel, peek: peek, viewerKey: viewerKey, epoch: epoch,
                                           ephemeralKey: ephemeral.publicKey, nonce: nonce, ciphertext: ciphertext)
        return PeekGrant(epoch: epoch, sender: DID(signingKey: signer.publicKey), ephemeralKey: ephemeral.publicKey,
                         nonce: nonce, ciphertext: ciphertext, signature: signer.sign(signed))
    }

    /// Whether the grant's signature verifies with its sender's DID for this channel, peek and viewer key.
    public static func verify(_ grant: PeekGrant, channel: ChannelID, peek: String, viewerKey: [UInt8]) -> Bool {
        let signed = PeekGrant.signedBytes(channel: channel, peek: peek, viewerKey: viewerKey, epoch: grant.epoch,
                                           ephemeralKey: grant.ephemeralKey, nonce: grant.nonce,
                                           ciphertext: grant.ciphertext)
        return SigningKeyPair.verify(signature: grant.signature, message: signed, publicKey: grant.sender.signingKey)
    }

    /// The viewer's side: checks the signature (as the page does before it trusts the key), then opens the
    /// channel key with the viewer's X25519 secret key.
    ///
    /// - Throws: ``CryptoError/authenticationFailed`` when the signature does not verify or the ciphertext does
    ///   not open (another viewer, channel, peek or epoch; an altered byte).
    public static func unwrap(_ grant: PeekGrant, channel: ChannelID, peek: String, viewerSecretKey: SecretBytes)
        throws(CryptoError) -> [UInt8]
    {
        let viewerKey = try X25519.publicKey(secretKey: viewerSecretKey)
        guard verify(grant, channel: channel, peek: peek, viewerKey: viewerKey) else { throw .authenticationFailed }
        let shared = try X25519.sharedSecret(secretKey: viewerSecretKey, publicKey: grant.ephemeralKey)
        var key = try wrapKey(sharedSecret: shared, ephemeralKey: grant.ephemeralKey, viewerKey: viewerKey)
        defer { zeroize(&key) }
        let channelKey = try AES256GCM.open(grant.ciphertext, key: key, nonce: grant.nonce,
                                            associatedData: PeekGrant.associatedData(channel: channel, peek: peek,
                                                                                     epoch: grant.epoch))
        guard channelKey.count == channelKeyLength else { throw .authenticationFailed }
        return channelKey
    }
}
