import AgentChatCrypto
import AgentChatProtocol
import Logging

/// Logs agents in: checks challenge signatures, issues and verifies session tokens, looks up profiles.
/// Loop-bound.
///
/// Tokens are signed with this broker's active key from `SigningKeyStore` (its data directory). Every broker
/// publishes its public keys to Redis, so a token one broker issued is accepted by all; a `kid` this broker does
/// not hold is looked up there once and cached.
///
/// A reconnect with a token costs one signature check per broker process and token: verified tokens are remembered
/// by a BLAKE2b digest of their whole text (so any changed byte is a different entry and gets the full check), with
/// their claims, whose times, issuer and audience are checked again on every use. The answer to a token login
/// carries the same token while at least half of its lifetime is left and the broker's active key signed it (no
/// signing either), a fresh one otherwise.
final class Authenticator {
    /// How many verified tokens are remembered (about 150 bytes each); expired ones are dropped when it is full, and
    /// all of them if that is not enough.
    static let verifiedTokenLimit = 100_000

    static let audience = WireProtocol.subprotocol

    let issuer: String
    let tokenLifetimeSeconds: Int64
    private let signer: JWSSigner
    private let activeKeyID: KeyID
    private let localKeys: [KeyID: [UInt8]]
    private var remoteKeys: [KeyID: [UInt8]] = [:]
    /// Tokens known to be genuine: their claims, and whether this broker's active key signed them.
    private var verifiedTokens: [TokenDigest: (claims: JWS.Claims, activeKey: Bool)] = [:]
    private let agents: any AgentDirectory
    private let directory: any SigningKeyDirectoring
    private let clock: any BrokerClock
    private let logger: Logger

    init(issuer: String, tokenLifetimeSeconds: Int64, keyStore: SigningKeyStore, directory: any SigningKeyDirectoring,
         agents: any AgentDirectory, clock: any BrokerClock, logger: Logger)
    {
        self.issuer = issuer
        self.tokenLifetimeSeconds = tokenLifetimeSeconds
        self.agents = agents
        self.directory = directory
        self.clock = clock
        self.logger = logger
        signer = JWSSigner(key: keyStore.active.keyPair)
        activeKeyID = keyStore.active.keyID
        localKeys = keyStore.verificationKeys(now: clock.unixMilliseconds)
        directory.whenConnected { [weak self] in self?.publishKeys() }
    }

    /// Publishes this broker's verification keys (again after every reconnect: Redis may have lost them).
    func publishKeys() {
        let keys = Dictionary(uniqueKeysWithValues: localKeys.map { ($0.key.rawValue, $0.value) })
        directory.publish(keys) { [logger] result in
            if case .failure(let error) = result {
                logger.warning("could not publish signing keys", metadata: ["error": "\(error)"])
            }
        }
    }

    /// A fresh random challenge, base64url.
    func newChallenge() -> String { Base64URL.encode(SecureRandom.bytes(AuthChallenge.length)) }

    /// A session token for `did` and its expiry in Unix milliseconds.
    func issueToken(for did: DID) -> (token: String, expiresAt: Int64) {
        let now = clock.unixMilliseconds / 1000
        let claims = JWS.Claims(issuer: issuer, audience: Self.audience, subject: did, now: now,
                                lifetime: tokenLifetimeSeconds)
        // Not remembered here: a token is remembered when it first comes back (so an idle connection's broker pays
        // no memory for the token it was given).
        return (signer.sign(claims), claims.expiresAt * 1000)
    }

    /// The token for the answer to a login with `presented`: the same token while at least half of its lifetime
    /// is left and it is signed with this broker's active key, else a fresh one.
    func sessionToken(for did: DID, presented: String) -> (token: String, expiresAt: Int64) {
        let now = clock.unixMilliseconds / 1000
        if let (claims, activeKey) = verifiedTokens[TokenDigest(presented)], activeKey, claims.subject == did,
            claims.expiresAt - now >= (claims.expiresAt - claims.issuedAt) / 2
        {
            return (presented, claims.expiresAt * 1000)
        }
        return issueToken(for: did)
    }

    /// Checks a challenge signature, then that the DID is registered.
    func verifySignature(did: DID, signature: [UInt8], challenge: String,
                         completion: @escaping (Result<AgentProfile, ProtocolError>) -> Void)
    {
        let message = AuthChallenge.signedBytes(broker: issuer, challenge: challenge)
        guard SigningKeyPair.verify(signature: signature, message: message, publicKey: did.signingKey) else {
            return completion(.failure(ProtocolError(.authFailed, "the signature does not verify")))
        }
        profile(of: did, completion: completion)
    }

    /// Checks a session token, then that its subject is still registered.
    func verifyToken(_ token: String, completion: @escaping (Result<AgentProfile, ProtocolError>) -> Void) {
        verifyToken(token, fetchUnknownKey: true, completion: completion)
    }

    private func verifyToken(_ token: String, fetchUnknownKey: Bool,
                             completion: @escaping (Result<AgentProfile, ProtocolError>) -> Void)
    {
        let now = clock.unixMilliseconds / 1000
        let digest = TokenDigest(token)
        if let (claims, _) = verifiedTokens[digest] {
            do {
                try JWSVerifier(keys: { _ in nil }).check(claims, now: now, expectedIssuer: issuer,
                                                          expectedAudience: Self.audience)
            } catch {
                verifiedTokens[digest] = nil
                return completion(.failure(ProtocolError(.tokenInvalid, error.code)))
            }
            return profile(of: claims.subject, completion: completion)
        }
        let keys = localKeys.merging(remoteKeys) { local, _ in local }
        let verifier = JWSVerifier(keys: { keys[$0] })
        do {
            let claims = try verifier.verify(token, now: now, expectedIssuer: issuer, expectedAudience: Self.audience)
            remember(token, claims, activeKey: Self.keyID(of: token) == activeKeyID)
            profile(of: claims.subject, completion: completion)
        } catch where error.code == "token_unknown_kid" && fetchUnknownKey {
            guard let kid = Self.keyID(of: token) else {
                return completion(.failure(ProtocolError(.tokenInvalid, error.code)))
            }
            directory.publicKey(kid: kid.rawValue) { [weak self] result in
                guard let self else { return }
                switch result {
                case .success(let key?) where key.count == SigningKeyPair.publicKeyLength:
                    remoteKeys[kid] = key
                    verifyToken(token, fetchUnknownKey: false, completion: completion)
                case .success:
                    completion(.failure(ProtocolError(.tokenInvalid, error.code)))
                case .failure(let failure):
                    completion(.failure(ProtocolError(failure)))
                }
            }
        } catch {
            completion(.failure(ProtocolError(.tokenInvalid, error.code)))
        }
    }

    private func remember(_ token: String, _ claims: JWS.Claims, activeKey: Bool) {
        if verifiedTokens.count >= Self.verifiedTokenLimit {
            let now = clock.unixMilliseconds / 1000
            verifiedTokens = verifiedTokens.filter { $0.value.claims.expiresAt > now }
            if verifiedTokens.count >= Self.verifiedTokenLimit { verifiedTokens.removeAll(keepingCapacity: true) }
        }
        verifiedTokens[TokenDigest(token)] = (claims, activeKey)
    }

    private func profile(of did: DID, completion: @escaping (Result<AgentProfile, ProtocolError>) -> Void) {
        agents.profile(did) { result in
            switch result {
            case .success(let profile?): completion(.success(profile))
            case .success(nil): completion(.failure(ProtocolError(.authFailed, "\(did) is not registered")))
            case .failure(let failure): completion(.failure(ProtocolError(failure)))
            }
        }
    }

    /// The `kid` in a token's header, read without trusting anything else in it.
    static func keyID(of token: String) -> KeyID? {
        guard let header = token.split(separator: ".", omittingEmptySubsequences: false).first,
            let bytes = Base64URL.decode(String(header)), let json = try? JSONParser.parse(bytes),
            let kid = json["kid"]?.stringValue, kid.utf8.count <= 64
        else { return nil }
        return KeyID(rawValue: kid)
    }
}

/// 16 bytes of BLAKE2b over a token's text: the key under which a verified token is remembered.
private struct TokenDigest: Hashable {
    let high: UInt64
    let low: UInt64

    init(_ token: String) {
        let bytes = Hash.blake2b(Array(token.utf8), count: 16)
        var high: UInt64 = 0, low: UInt64 = 0
        for i in 0..<8 { high = high << 8 | UInt64(bytes[i]); low = low << 8 | UInt64(bytes[i + 8]) }
        self.high = high
        self.low = low
    }
}
