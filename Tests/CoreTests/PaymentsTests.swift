import AgentChatCrypto
import AgentChatProtocol
import Testing

@testable import AgentChatCore

/// Vectors computed independently with Python's `hmac` (`hmac.new(secret, b"<t>." + body, sha256).hexdigest()`),
/// over the body Stripe's own libraries use in their webhook tests.
@Suite struct StripeWebhookSignatureTests {
    let body = Array("{\n  \"id\": \"evt_test_webhook\",\n  \"object\": \"event\"\n}".utf8)
    let v1 = "4f1cd7feda9826e746b7d482c4badebb657398df1099e1046364f6196a230150"
    let rotatedV1 = "dd8169e947b0b094a29b310be0ef911430a52e6395fd78681b3b7f6ef5f9bf5c"
    let t: Int64 = 1_700_000_000

    @Test func acceptsTheDocumentedScheme() throws {
        let verifier = StripeWebhookSignature(secrets: ["whsec_test_secret"])
        try verifier.verify(header: "t=\(t),v1=\(v1)", body: body, now: t)
        // Other schemes and unknown items are ignored; spaces around items are tolerated; upper-case hex too.
        try verifier.verify(header: "t=\(t), v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39, v1=\(v1)",
                            body: body, now: t + 10)
        try verifier.verify(header: "t=\(t),v1=\(v1.uppercased())", body: body, now: t)
        #expect(StripeWebhookSignature.header(for: body, timestamp: t, secret: "whsec_test_secret")
            == "t=\(t),v1=\(v1)")
    }

    @Test func anyOfSeveralV1ValuesAndEitherSecretDuringRotation() throws {
        let verifier = StripeWebhookSignature(secrets: ["whsec_test_secret", "whsec_rotated_2"])
        let wrong = String(repeating: "0", count: 64)
        try verifier.verify(header: "t=\(t),v1=\(wrong),v1=\(v1)", body: body, now: t)
        try verifier.verify(header: "t=\(t),v1=\(rotatedV1)", body: body, now: t)
        let old = StripeWebhookSignature(secrets: ["whsec_test_secret"])
        #expect(throws: StripeWebhookSignature.Failure.mismatch) {
            try old.verify(header: "t=\(t),v1=\(rotatedV1)", body: body, now: t)
        }
    }

    @Test func toleranceIsThreeHundredSecondsBothWays() throws {
        let verifier = StripeWebhookSignature(secrets: ["whsec_test_secret"])
        try verifier.verify(header: "t=\(t),v1=\(v1)", body: body, now: t + 300)
        try verifier.verify(header: "t=\(t),v1=\(v1)", body: body, now: t - 300)
        #expect(throws: StripeWebhookSignature.Failure.outsideTolerance) {
            try verifier.verify(header: "t=\(t),v1=\(v1)", body: body, now: t + 301)
        }
        #expect(throws: StripeWebhookSignature.Failure.outsideTolerance) {
            try verifier.verify(header: "t=\(t),v1=\(v1)", body: body, now: t - 301)
        }
    }

    @Test(arguments: [
        nil, "", "v1=abc", "t=1700000000", "t=17e8,v1=00", "t=-1,v1=00", "t=1700000000,t=1700000000,v1=00",
    ])
    func malformedHeadersAreRefused(header: String?) {
        let verifier = StripeWebhookSignature(secrets: ["whsec_test_secret"])
        #expect(throws: StripeWebhookSignature.Failure.malformed) {
            try verifier.verify(header: header, body: body, now: t)
        }
    }

    @Test func aChangedBodyOrTimestampOrSecretDoesNotVerify() {
        let verifier = StripeWebhookSignature(secrets: ["whsec_test_secret"])
        #expect(throws: StripeWebhookSignature.Failure.mismatch) {
            try verifier.verify(header: "t=\(t),v1=\(v1)", body: body + [0x20], now: t)
        }
        #expect(throws: StripeWebhookSignature.Failure.mismatch) {
            try verifier.verify(header: "t=\(t + 1),v1=\(v1)", body: body, now: t)
        }
        #expect(throws: StripeWebhookSignature.Failure.mismatch) {
            // The whole `whsec_…` string is the key, not its decoded tail.
            try StripeWebhookSignature(secrets: ["test_secret"]).verify(header: "t=\(t),v1=\(v1)", body: body, now: t)
        }
        #expect(throws: StripeWebhookSignature.Failure.malformed) {
            try StripeWebhookSignature(secrets: []).verify(header: "t=\(t),v1=\(v1)", body: body, now: t)
        }
    }
}

@Suite struct RevenueSplitTests {
    func did(_ seed: UInt8) -> DID { DID(signingKey: [UInt8](repeating: seed, count: 32)) }

    @Test func sharesSumToTheCaptureAndTheRemainderGoesToTheFirstDIDs() {
        let members = [did(3), did(1), did(2)]
        let split = RevenueSplit(amount: 500, members: members)
        #expect(split.platform == 150)
        let ordered = members.sorted { Array($0.description.utf8).lexicographicallyPrecedes($1.description.utf8) }
        #expect(split.shares.map(\.did) == ordered)
        #expect(split.shares.map(\.cents) == [117, 117, 116])
        #expect(split.platform + split.shares.reduce(0) { $0 + $1.cents } == 500)
    }

    @Test func everyAmountAndMemberCountBalances() {
        for amount: Int64 in [0, 1, 7, 99, 100, 101, 333, 500, 999, 1_000_003] {
            for count in 1...12 {
                let split = RevenueSplit(amount: amount, members: (1...count).map { did(UInt8($0)) })
                let shared = split.shares.reduce(0) { $0 + $1.cents }
                #expect(split.platform + shared == amount)
                #expect(shared == amount * 70 / 100)
                let cents = split.shares.map(\.cents)
                #expect((cents.max() ?? 0) - (cents.min() ?? 0) <= 1)
                #expect(cents == cents.sorted(by: >), "the extra cents go to the first DIDs")
            }
        }
        #expect(RevenueSplit(amount: 100, members: [did(9)]).shares.map(\.cents) == [70])
    }

    @Test func duplicateMembersCountOnce() {
        #expect(RevenueSplit(amount: 100, members: [did(1), did(1)]).shares.count == 1)
    }
}

@Suite struct PeekStateMachineTests {
    let terms = PeekTerms()
    var machine: PeekStateMachine { PeekStateMachine(terms: terms) }
    let alice = DID(signingKey: [UInt8](repeating: 1, count: 32))
    let bob = DID(signingKey: [UInt8](repeating: 2, count: 32))

    func newPeek(at now: Int64 = 0) -> PeekRecord {
        PeekRecord(id: "p1", channel: ChannelID(randomBytes: [UInt8](repeating: 7, count: 16)), viewerKey: "k", paymentIntent: "pi_1", createdAt: now,
                   terms: terms)
    }

    /// Authorised at 1 s; refusal window to 61 s.
    func pending() throws -> PeekRecord {
        var peek = newPeek()
        _ = try machine.apply(.authorized, to: &peek, now: 1000)
        return peek
    }

    @Test func grantedPathCapturesThePriceAndActivates() throws {
        var peek = try pending()
        #expect(peek.phase == .pending && peek.deadline == 61_000)
        #expect(try machine.apply(.timerDue, to: &peek, now: 60_999) == [], "not yet due")
        #expect(try machine.apply(.timerDue, to: &peek, now: 61_000) == [.announce])
        #expect(peek.phase == .awaitingGrant && peek.deadline == 61_000 + 300_000)
        let actions = try machine.apply(.grant(alice), to: &peek, now: 70_000)
        #expect(actions == [.capture(cents: 500, idempotencyKey: "peek-p1-capture-500"), .announce])
        #expect(peek.phase == .capturing && peek.grantedBy == alice)
        #expect(try machine.apply(.captured(cents: 500), to: &peek, now: 71_000)
            == [.settle(capturedCents: 500, releasedCents: 0), .announce])
        #expect(peek.phase == .active && peek.activeUntil == 71_000 + 600_000 && peek.deadline == peek.activeUntil)
        #expect(try machine.apply(.timerDue, to: &peek, now: 671_000) == [.announce])
        #expect(peek.phase == .ended && peek.phase.isFinal)
    }

    @Test func refusalCapturesTheFeeAndReleasesTheRest() throws {
        var peek = try pending()
        #expect(try machine.apply(.refuse(bob), to: &peek, now: 30_000)
            == [.capture(cents: 100, idempotencyKey: "peek-p1-capture-100"), .announce])
        #expect(try machine.apply(.captured(cents: 100), to: &peek, now: 31_000)
            == [.settle(capturedCents: 100, releasedCents: 400), .announce])
        #expect(peek.phase == .refused && peek.refusedBy == bob && peek.deadline == nil)
    }

    @Test func refusalRacingTheDeadline() throws {
        // The deadline fires first: a refusal after it is refused, and the peek waits for a grant.
        var late = try pending()
        _ = try machine.apply(.timerDue, to: &late, now: 61_000)
        #expect(throws: PeekRejection.notRefusable) { try machine.apply(.refuse(bob), to: &late, now: 61_001) }
        // A refusal at the last millisecond before the deadline wins; the timer then finds nothing to do.
        var early = try pending()
        _ = try machine.apply(.refuse(bob), to: &early, now: 60_999)
        let version = early.version
        #expect(try machine.apply(.timerDue, to: &early, now: 61_000) == [], "its timer is now the capture retry")
        #expect(early.phase == .capturing && early.refusedBy == bob && early.version == version)
        // A refusal exactly at the deadline is too late.
        var atDeadline = try pending()
        #expect(throws: PeekRejection.notRefusable) { try machine.apply(.refuse(bob), to: &atDeadline, now: 61_000) }
    }

    @Test func grantRacingExpiry() throws {
        var peek = try pending()
        _ = try machine.apply(.timerDue, to: &peek, now: 61_000)
        // The grant window ends first: cancelled, and a late grant is refused.
        var expired = peek
        #expect(try machine.apply(.timerDue, to: &expired, now: 361_000)
            == [.cancel(idempotencyKey: "peek-p1-cancel"), .announce])
        #expect(throws: PeekRejection.notGrantable) { try machine.apply(.grant(alice), to: &expired, now: 361_001) }
        #expect(try machine.apply(.cancelled, to: &expired, now: 362_000)
            == [.recordCancellation(releasedCents: 500), .announce])
        #expect(expired.phase == .cancelled && expired.reason == "no grant")
        // The grant comes first: the expiry timer finds the peek capturing and retries the capture instead.
        var granted = peek
        _ = try machine.apply(.grant(alice), to: &granted, now: 360_999)
        #expect(try machine.apply(.timerDue, to: &granted, now: 361_000) == [] )
        #expect(try machine.apply(.timerDue, to: &granted, now: granted.deadline!)
            == [.capture(cents: 500, idempotencyKey: "peek-p1-capture-500")])
        #expect(throws: PeekRejection.notGrantable) { try machine.apply(.grant(bob), to: &granted, now: 361_001) }
    }

    @Test func duplicateAndOutOfOrderWebhooksChangeNothing() throws {
        var peek = try pending()
        let snapshot = peek
        #expect(try machine.apply(.authorized, to: &peek, now: 2000) == [])
        #expect(peek == snapshot)
        #expect(try machine.apply(.captured(cents: 500), to: &peek, now: 2000) == [], "no capture was asked")
        #expect(peek == snapshot)
        var done = try pending()
        _ = try machine.apply(.refuse(bob), to: &done, now: 5000)
        _ = try machine.apply(.captured(cents: 100), to: &done, now: 6000)
        let final = done
        for event: PeekEvent in [.captured(cents: 100), .authorized, .cancelled, .timerDue,
                                 .paymentFailed(permanent: true, reason: "x")] {
            #expect(try machine.apply(event, to: &done, now: 7000) == [])
            #expect(done == final)
        }
    }

    @Test func aBrokerDyingMidCaptureLeavesADueTimerThatRepeatsTheSameCall() throws {
        var peek = try pending()
        _ = try machine.apply(.refuse(bob), to: &peek, now: 10_000)
        // The broker that asked for the capture died before the answer. The retry timer is due 1 s later; whichever
        // broker claims it makes the same call, with the same idempotency key, so Stripe captures once.
        #expect(peek.deadline == 11_000)
        let retry = try machine.apply(.timerDue, to: &peek, now: 11_000)
        #expect(retry == [.capture(cents: 100, idempotencyKey: "peek-p1-capture-100")])
        #expect(peek.deadline == 13_000, "backoff doubles")
        #expect(try machine.apply(.captured(cents: 100), to: &peek, now: 11_500)
            == [.settle(capturedCents: 100, releasedCents: 400), .announce])
    }

    @Test func paymentFailures() throws {
        var transient = try pending()
        _ = try machine.apply(.refuse(bob), to: &transient, now: 10_000)
        #expect(try machine.apply(.paymentFailed(permanent: false, reason: "timeout"), to: &transient, now: 10_100)
            == [])
        #expect(transient.phase == .capturing && transient.deadline == 11_100)
        #expect(try machine.apply(.paymentFailed(permanent: true, reason: "card_declined"), to: &transient,
                                  now: 10_200) == [.announce])
        #expect(transient.phase == .failed && transient.reason == "card_declined")
        // A peek never paid for is cancelled when the payment window ends; nothing was authorised.
        var unpaid = newPeek()
        #expect(try machine.apply(.timerDue, to: &unpaid, now: terms.paymentWindowMilliseconds)
            == [.cancel(idempotencyKey: "peek-p1-cancel"), .announce])
        #expect(try machine.apply(.cancelled, to: &unpaid, now: terms.paymentWindowMilliseconds + 1)
            == [.recordCancellation(releasedCents: 0), .announce])
        // Cancelled on Stripe's side while capturing: failed, nothing charged.
        var capturing = try pending()
        _ = try machine.apply(.refuse(bob), to: &capturing, now: 10_000)
        #expect(try machine.apply(.cancelled, to: &capturing, now: 10_100) == [.announce])
        #expect(capturing.phase == .failed)
    }

    @Test func everyChangeMovesTheVersionAndNothingElseDoes() throws {
        var peek = newPeek()
        var last = peek.version
        let script: [(PeekEvent, Int64)] = [(.timerDue, 10), (.authorized, 1000), (.authorized, 1001),
                                             (.timerDue, 61_000), (.grant(alice), 62_000), (.timerDue, 62_500),
                                             (.captured(cents: 500), 63_000), (.timerDue, 663_000)]
        for (event, now) in script {
            let before = peek
            let actions = try machine.apply(event, to: &peek, now: now)
            if peek == before {
                #expect(actions.isEmpty)
            } else {
                #expect(peek.version == last + 1, "\(event)")
                last = peek.version
            }
        }
        #expect(peek.phase == .ended)
    }
}
