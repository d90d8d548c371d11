import AgentChatProtocol
import Testing

@testable import AgentChatCore

@Suite struct SessionAuthStateMachineTests {
    let did = DID(signingKey: [UInt8](repeating: 9, count: 32))
    let signature = [UInt8](repeating: 1, count: 64)

    @Test func signatureLoginAnswersTheCurrentChallenge() {
        var machine = SessionAuthStateMachine(challenge: "c1", now: 0)
        #expect(machine.helloAction == .sendHello(challenge: "c1", expiresAt: AuthChallenge.lifetime))
        let action = machine.authReceived(.signature(did: did, signature: signature), now: 10, nextChallenge: "c2")
        #expect(action == .verifySignature(did: did, signature: signature, challenge: "c1"))
        machine.verified(did)
        #expect(machine.authenticatedDID == did)
        let again = machine.authReceived(.token("t"), now: 20, nextChallenge: "c3")
        guard case .reject(let error, nil) = again else { Issue.record("expected a rejection"); return }
        #expect(error.code == .alreadyAuthenticated)
    }

    @Test func aFailedAttemptUsesUpTheChallenge() {
        var machine = SessionAuthStateMachine(challenge: "c1", now: 0)
        _ = machine.authReceived(.signature(did: did, signature: signature), now: 1, nextChallenge: "unused")
        let failed = machine.verificationFailed(ProtocolError(.authFailed, "no"), now: 2, nextChallenge: "c2")
        #expect(failed == .reject(ProtocolError(.authFailed, "no"), hello: ("c2", 2 + AuthChallenge.lifetime)))
        // The next attempt is checked against the new challenge, never the old one.
        let next = machine.authReceived(.signature(did: did, signature: signature), now: 3, nextChallenge: "c3")
        #expect(next == .verifySignature(did: did, signature: signature, challenge: "c2"))
    }

    @Test func anExpiredChallengeIsRefusedWithoutVerifying() {
        var machine = SessionAuthStateMachine(challenge: "c1", now: 0)
        let action = machine.authReceived(.signature(did: did, signature: signature),
                                          now: AuthChallenge.lifetime + 1, nextChallenge: "c2")
        guard case .reject(let error, let hello?) = action else { Issue.record("expected a rejection"); return }
        #expect(error.code == .challengeExpired)
        #expect(hello.challenge == "c2")
        #expect(machine.failedAttempts == 1)
    }

    @Test func threeFailuresClose() {
        var machine = SessionAuthStateMachine(challenge: "c0", now: 0)
        var last: SessionAuthStateMachine.Action?
        for attempt in 1...3 {
            _ = machine.authReceived(.token("bad"), now: 0, nextChallenge: "x")
            last = machine.verificationFailed(ProtocolError(.tokenInvalid, "no"), now: 0, nextChallenge: "c\(attempt)")
        }
        #expect(last == .rejectAndClose(ProtocolError(.tokenInvalid, "no"), .authenticationFailed,
                                        "authentication failed 3 times"))
        #expect(machine.state == .closed)
    }

    @Test func framesBeforeLoginAreCountedThenClose() {
        var machine = SessionAuthStateMachine(challenge: "c0", now: 0)
        let error = ProtocolError(.notAuthenticated, "authenticate first")
        for _ in 1..<SessionAuthStateMachine.maxFramesBeforeAuthentication {
            #expect(machine.refusedBeforeAuthentication(error) == .reject(error, hello: nil))
        }
        #expect(machine.refusedBeforeAuthentication(error)
            == .rejectAndClose(error, .authenticationFailed, "too many frames before authenticating"))
    }
}
