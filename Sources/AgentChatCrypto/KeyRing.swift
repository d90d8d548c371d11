/// The public keys a verifier accepts, by key ID: the active signing key and those retired recently enough that
/// tokens they signed may still be live.
public struct KeyRing: Sendable {
    public private(set) var keys: [KeyID: [UInt8]]

    /// A ring of Ed25519 public keys, each filed under its ``KeyID``.
    public init(publicKeys: [[UInt8]]) {
        keys = [:]
        for key in publicKeys { keys[KeyID(publicKey: key)] = key }
    }

    /// A ring from an existing mapping (for example ``SigningKeyStore/verificationKeys(now:)``).
    public init(keys: [KeyID: [UInt8]]) { self.keys = keys }

    /// The public key filed under `keyID`, if any.
    public func publicKey(for keyID: KeyID) -> [UInt8]? { keys[keyID] }
}
