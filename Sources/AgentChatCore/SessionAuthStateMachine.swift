import AgentChatProtocol

/// The login state of one WebSocket connection: challenge, verification, authenticated. Pure: the caller passes
/// the time and fresh challenges, performs the actions, and reports verification results back.
struct SessionAuthStateMachine {
    enum State: Equatable {
        /// A `hello` with this challenge was sent; an `auth` may answer it until `expiresAt`.
        case awaitingAuth(challenge: String, expiresAt: Int64)
        /// Credentials are being checked (signature, token, profile lookup).
        case verifying
        case authenticated(DID)
        case closed
    }

    enum Action: Equatable {
        case sendHello(challenge: String, expiresAt: Int64)
        /// Check an Ed25519 signature over `AuthChallenge.signedBytes(broker:challenge:)`, then the profile.
        case verifySignature(did: DID, signature: [UInt8], challenge: String)
        case verifyToken(String)
        /// Refuse with `error`; then, if given, send a new `hello`.
        case reject(ProtocolError, hello: (challenge: String, expiresAt: Int64)?)
        case close(CloseCode, String)
        /// Refuse with `error`, then close.
        case rejectAndClose(ProtocolError, CloseCode, String)

        static func == (a: Action, b: Action) -> Bool {
            switch (a, b) {
            case (.sendHello(let c1, let e1), .sendHello(let c2, let e2)): c1 == c2 && e1 == e2
            case (.verifySignature(let d1, let s1, let c1), .verifySignature(let d2, let s2, let c2)):
                d1 == d2 && s1 == s2 && c1 == c2
            case (.verifyToken(let t1), .verifyToken(let t2)): t1 == t2
            case (.reject(let e1, let h1), .reject(let e2, let h2)):
                e1 == e2 && h1?.challenge == h2?.challenge && h1?.expiresAt == h2?.expiresAt
            case (.close(let c1, let r1), .close(let c2, let r2)): c1 == c2 && r1 == r2
            case (.rejectAndClose(let e1, let c1, let r1), .rejectAndClose(let e2, let c2, let r2)):
                e1 == e2 && c1 == c2 && r1 == r2
            default: false
            }
        }
    }

    static let maxFailedAttempts = 3
    static let maxFramesBeforeAuthentication = 5

    private(set) var state: State
    private(set) var failedAttempts = 0
    private(set) var refusedFrames = 0

    /// Starts a connection by sending `challenge`.
    init(challenge: String, now: Int64) {
        state = .awaitingAuth(challenge: challenge, expiresAt: now + AuthChallenge.lifetime)
    }

    /// The first action of a connection.
    var helloAction: Action {
        guard case .awaitingAuth(let challenge, let expiresAt) = state else { return .close(.internalError, "") }
        return .sendHello(challenge: challenge, expiresAt: expiresAt)
    }

    var authenticatedDID: DID? {
        if case .authenticated(let did) = state { return did }
        return nil
    }

    /// An `auth` frame arrived. `nextChallenge` is used if this attempt fails at once.
    mutating func authReceived(_ credentials: AuthCredentials, now: Int64, nextChallenge: String) -> Action {
        switch state {
        case .authenticated, .verifying:
            return .reject(ProtocolError(.alreadyAuthenticated, "this connection is authenticated already"),
                           hello: nil)
        case .closed:
            return .close(.authenticationFailed, "closed")
        case .awaitingAuth(let challenge, let expiresAt):
            switch credentials {
            case .token(let token):
                state = .verifying
                return .verifyToken(token)
            case .signature(let did, let signature):
                guard now <= expiresAt else {
                    return fail(ProtocolError(.challengeExpired, "the challenge expired; sign the new one"),
                                now: now, nextChallenge: nextChallenge)
                }
                state = .verifying
                return .verifySignature(did: did, signature: signature, challenge: challenge)
            }
        }
    }

    /// Verification succeeded for `did`.
    mutating func verified(_ did: DID) {
        guard case .verifying = state else { return }
        state = .authenticated(did)
    }

    /// Verification failed with `error`.
    mutating func verificationFailed(_ error: ProtocolError, now: Int64, nextChallenge: String) -> Action {
        guard case .verifying = state else { return .close(.authenticationFailed, "unexpected state") }
        return fail(error, now: now, nextChallenge: nextChallenge)
    }

    /// A frame that needs authentication, or a malformed one, arrived before authenticating; `error` is what to
    /// answer it with.
    mutating func refusedBeforeAuthentication(_ error: ProtocolError) -> Action {
        refusedFrames += 1
        if refusedFrames >= Self.maxFramesBeforeAuthentication {
            state = .closed
            return .rejectAndClose(error, .authenticationFailed, "too many frames before authenticating")
        }
        return .reject(error, hello: nil)
    }

    private mutating func fail(_ error: ProtocolError, now: Int64, nextChallenge: String) -> Action {
        failedAttempts += 1
        if failedAttempts >= Self.maxFailedAttempts {
            state = .closed
            return .rejectAndClose(error, .authenticationFailed, "authentication failed \(failedAttempts) times")
        }
        let expiresAt = now + AuthChallenge.lifetime
        state = .awaitingAuth(challenge: nextChallenge, expiresAt: expiresAt)
        return .reject(error, hello: (nextChallenge, expiresAt))
    }
}
