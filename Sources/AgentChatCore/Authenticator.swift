import AgentChatCrypto
import AgentChatProtocol
import Logging

/// Logs agents in: checks challenge signatures, issues and verifies session tokens, looks up profiles.
/// Loop-bound.
///
/// Tokens are signed with this broker's active key from `SigningKeyStore` (its data directory). Every broker
/// publishes its public keys to Redis, so a token one broker issued is accepted by all; a `kid` this broker does
/// not hold is looked up there once and cached.
final class Authenticator {
    static let audience = WireProtocol.subprotocol

    let issuer: String
    let tokenLifetimeSeconds: Int64
    private let signer: JWSSigner
    private let localKeys: [KeyID: [UInt8]]
    private var remoteKeys: [KeyID: [UInt8]] = [:]
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
        return (signer.sign(claims), claims.expiresAt * 1000)
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
        let keys = localKeys.merging(remoteKeys) { local, _ in local }
        let verifier = JWSVerifier(keys: { keys[$0] })
        do {
            let claims = try verifier.verify(token, now: clock.unixMilliseconds / 1000, expectedIssuer: issuer,
                                             expectedAudience: Self.audience)
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
