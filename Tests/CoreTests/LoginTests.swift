import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

/// Logging in through `FrameRouter`: challenge signatures, session tokens, failures and the closes
/// `SessionAuthStateMachine` decides.
@Suite struct LoginTests {
    let h = CoreHarness()

    /// The challenge of the `hello` among `frames` (the last one).
    func challenge(in frames: [ServerFrame]) -> String? {
        frames.reversed().lazy.compactMap { frame -> String? in
            if case .hello(_, let challenge, _) = frame { return challenge }
            return nil
        }.first
    }

    @Test func aSignedChallengeIsWelcomedWithATokenThatLogsInAgain() throws {
        let alice = h.makeAgent("alice")
        let c = h.open()
        let hello = c.takeFrames()
        guard case .hello(let broker, let challenge, let expiresAt)? = hello.first, hello.count == 1 else {
            Issue.record("expected one hello, got \(hello)")
            return
        }
        #expect(broker == h.router.issuer)
        #expect(expiresAt == h.clock.unixMilliseconds + AuthChallenge.lifetime)
        let replies = h.request(.auth(id: "a1", alice.credentials(broker: broker, challenge: challenge)), on: c)
        guard case .welcome("a1", let profile, let token, let tokenExpiry)? = replies.first, replies.count == 1 else {
            Issue.record("expected a welcome, got \(replies)")
            return
        }
        #expect(profile == alice.profile)
        #expect(tokenExpiry == h.clock.unixMilliseconds + Int64(h.configuration.tokenLifetimeSeconds) * 1000)

        // Logged in: channel requests are served.
        #expect(h.request(.channel(id: "l", .list(after: nil, limit: 10)), on: c).map(\.typeName) == ["channels"])

        // The token logs in on a new connection, without a signature.
        let d = h.open()
        let again = h.request(.auth(id: "a2", .token(token)), on: d)
        guard case .welcome("a2", let sameProfile, _, _)? = again.first else {
            Issue.record("expected a welcome for the token, got \(again)")
            return
        }
        #expect(sameProfile.did == alice.did)
    }

    @Test func aTokenLoginKeepsItsTokenUntilHalfItsLifetimeThenGetsAFreshOneAndExpiredOrAlteredTokensAreRefused()
        throws
    {
        let alice = h.makeAgent("alice")
        let lifetime = Int64(h.configuration.tokenLifetimeSeconds)
        let expiry = h.clock.unixMilliseconds / 1000 * 1000 + lifetime * 1000
        let (_, token) = h.login(alice)

        // Early in its life the token logs in and comes back unchanged (no new signature).
        h.clock.advance(by: UInt64(lifetime * 1000 / 4))
        let early = h.request(.auth(id: "t1", .token(token)), on: h.open())
        guard case .welcome("t1", _, let same, let sameExpiry)? = early.first else {
            Issue.record("expected a welcome, got \(early)")
            return
        }
        #expect(same == token)
        #expect(sameExpiry == expiry)

        // One byte of its signature changed: a different token, checked in full and refused.
        var altered = Array(token.utf8)
        altered[altered.count - 2] = altered[altered.count - 2] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
        let forged = h.request(.auth(id: "t2", .token(String(decoding: altered, as: UTF8.self))), on: h.open())
        #expect(forged.first?.errorCode == .tokenInvalid)

        // Past half its lifetime it still logs in, and the answer carries a fresh token with a later expiry.
        h.clock.advance(by: UInt64(lifetime * 1000 / 2))
        let late = h.request(.auth(id: "t3", .token(token)), on: h.open())
        guard case .welcome("t3", _, let fresh, let freshExpiry)? = late.first else {
            Issue.record("expected a welcome, got \(late)")
            return
        }
        #expect(fresh != token)
        #expect(freshExpiry == h.clock.unixMilliseconds / 1000 * 1000 + lifetime * 1000)

        // At its expiry the old token is refused, remembered or not; the fresh one still works.
        h.clock.advance(by: UInt64(lifetime * 1000 / 4) + 1000)
        let expired = h.request(.auth(id: "t4", .token(token)), on: h.open())
        #expect(expired.first?.errorCode == .tokenInvalid)
        #expect(h.request(.auth(id: "t5", .token(fresh)), on: h.open()).map(\.typeName) == ["welcome"])
    }

    @Test func aBadSignatureIsRefusedWithAFreshChallengeAndTheNewOneWorks() throws {
        let alice = h.makeAgent("alice")
        let mallory = h.makeAgent("mallory")
        let c = h.open()
        let first = try #require(challenge(in: c.takeFrames()))
        // Signed by the wrong key.
        let forged = AuthCredentials.signature(
            did: alice.did, signature: mallory.keys.sign(AuthChallenge.signedBytes(broker: h.router.issuer,
                                                                                   challenge: first)))
        let refused = h.request(.auth(id: "a1", forged), on: c)
        #expect(refused.map(\.typeName) == ["error", "hello"])
        #expect(refused.first?.errorCode == .authFailed)
        let second = try #require(challenge(in: refused))
        #expect(second != first)

        // The old challenge is used up; the new one logs in.
        let stale = h.request(.auth(id: "a2", alice.credentials(broker: h.router.issuer, challenge: first)), on: c)
        #expect(stale.first?.errorCode == .authFailed)
        let third = try #require(challenge(in: stale))
        let welcome = h.request(.auth(id: "a3", alice.credentials(broker: h.router.issuer, challenge: third)), on: c)
        #expect(welcome.map(\.typeName) == ["welcome"])
        #expect(c.closeCode == nil)
    }

    @Test func anUnregisteredAgentOrAForgedTokenIsRefused() throws {
        let stranger = h.makeAgent("stranger", registered: false)
        let c = h.open()
        let first = try #require(challenge(in: c.takeFrames()))
        let replies = h.request(.auth(id: "a", stranger.credentials(broker: h.router.issuer, challenge: first)),
                                on: c)
        #expect(replies.map(\.typeName) == ["error", "hello"])
        #expect(replies.first?.errorCode == .authFailed)

        let tokenReplies = h.request(.auth(id: "t", .token("eyJhbGciOiJFZERTQSJ9.e30.AAAA")), on: c)
        #expect(tokenReplies.first?.errorCode == .tokenInvalid)
    }

    @Test func anExpiredChallengeIsRefusedWithANewOne() throws {
        let alice = h.makeAgent("alice")
        let c = h.open()
        let old = try #require(challenge(in: c.takeFrames()))
        h.clock.advance(by: UInt64(AuthChallenge.lifetime) + 1)
        let replies = h.request(.auth(id: "a", alice.credentials(broker: h.router.issuer, challenge: old)), on: c)
        #expect(replies.map(\.typeName) == ["error", "hello"])
        #expect(replies.first?.errorCode == .challengeExpired)
    }

    @Test func framesBeforeLoginAreRefusedAndTooManyCloseTheConnection() throws {
        let c = h.open()
        c.skipFrames()
        // ping is served before login.
        #expect(h.request(.ping(id: "p"), on: c).map(\.typeName) == ["pong"])
        for n in 1...4 {
            let replies = h.request(.channel(id: "l\(n)", .list(after: nil, limit: 10)), on: c)
            guard case .error(let error, let ref)? = replies.first, replies.count == 1 else {
                Issue.record("expected one error, got \(replies)")
                return
            }
            #expect(error.code == .notAuthenticated && ref == "l\(n)")
            #expect(c.isOpen)
        }
        let last = h.request(.channel(id: "l5", .list(after: nil, limit: 10)), on: c)
        #expect(last.first?.errorCode == .notAuthenticated)
        #expect(c.closeCode == .authenticationFailed)
        #expect(h.router.connectionCount == 0, "the router forgot the closed connection")
    }

    /// Before login, every frame the broker cannot decode counts towards the 4001 close as much as a frame that needs
    /// a login: a viewer's malformed viewer frames (and `ping`) included. The count is never reset: frames served in
    /// between do not lower it. Well-formed frames a service refuses (an unlisted channel: `not_found`) do not count.
    @Test func aViewersMalformedFramesCountTowardsTheCloseAndServedFramesDoNotResetIt() throws {
        let c = h.open()
        #expect(h.request(.viewer(id: "d", .directoryList(cursor: 0, limit: 20)), on: c).map(\.typeName)
            == ["directory"])
        let unknown = ChannelID(randomBytes: [UInt8](repeating: 9, count: 16))
        let malformed: [(frame: String, code: ErrorCode, ref: String?)] = [
            (#"{"type":"indicators.subscribe","id":"m1","channels":["ch_short"]}"#, .invalidField, "m1"),
            (#"{"type":"directory.list","id":"m2","limit":0}"#, .invalidField, "m2"),
            (#"{"type":"peek.status","id":"m3","channel":"\#(unknown.rawValue)"}"#, .missingField, "m3"),
            (#"{"type":"ping","id":"m4","extra":1}"#, .unknownField, "m4"),
            ("{", .badJSON, nil),
        ]
        for (n, bad) in malformed.enumerated() {
            c.skipFrames()
            h.send(raw: Array(bad.frame.utf8), on: c)
            h.clock.runUntilIdle()
            let replies = c.takeFrames()
            guard case .error(let error, let ref)? = replies.first, replies.count == 1 else {
                Issue.record("\(bad.frame): expected one error, got \(replies)")
                return
            }
            #expect(error.code == bad.code && ref == bad.ref, "\(bad.frame)")
            if n < malformed.count - 1 {
                #expect(c.isOpen, "\(n + 1) refused frames")
                // Served frames, and a refusal of a well-formed one, in between: the count stays.
                #expect(h.request(.ping(id: "p"), on: c).map(\.typeName) == ["pong"])
                #expect(h.request(.viewer(id: "s", .subscribe([unknown])), on: c).map(\.errorCode) == [.notFound])
            }
        }
        #expect(c.closeCode == .authenticationFailed, "the fifth refused frame closes")
    }

    @Test func threeFailedAttemptsCloseTheConnection() throws {
        let alice = h.makeAgent("alice")
        let c = h.open()
        try #require(challenge(in: c.takeFrames()) != nil)
        for attempt in 1...3 {
            let bad = AuthCredentials.signature(did: alice.did, signature: [UInt8](repeating: 0, count: 64))
            let replies = h.request(.auth(id: "a\(attempt)", bad), on: c)
            #expect(replies.first?.errorCode == .authFailed)
            if attempt < 3 {
                #expect(replies.map(\.typeName) == ["error", "hello"])
                #expect(c.isOpen)
                #expect(challenge(in: replies) != nil)
            } else {
                #expect(replies.map(\.typeName) == ["error"], "no new challenge after the last attempt")
            }
        }
        #expect(c.closeCode == .authenticationFailed)
    }

    @Test func aTokenSignedByAnotherBrokerIsCheckedWithTheKeyItPublished() throws {
        // Another broker over the same stores publishes its key; its tokens log in here.
        let other = CoreHarness()
        let alice = other.makeAgent("alice")
        let token = other.login(alice).token
        try #require(!other.signingKeys.keys.isEmpty, "the broker published its verification key")
        // Copy what the other broker published into this broker's key directory twin, and the agent's profile.
        h.agents.insert(alice.profile)
        h.signingKeys.publish(other.signingKeys.keys) { _ in }
        h.clock.runUntilIdle()
        let c = h.open()
        let replies = h.request(.auth(id: "t", .token(token)), on: c)
        #expect(replies.map(\.typeName) == ["welcome"])
        #expect(h.signingKeys.calls["publicKey"] == 1)
    }
}
