import AgentChatProtocol

/// The prices and windows of peeks.
package struct PeekTerms: Equatable, Sendable {
    /// What a granted peek costs, authorised up front (manual capture).
    package var priceCents: Int64 = 500
    /// What is captured when an agent refuses.
    package var refusalFeeCents: Int64 = 100
    /// How long the viewer has to authorise the payment.
    package var paymentWindowMilliseconds: Int64 = 15 * 60 * 1000
    /// How long the channel's agents may refuse, from authorisation.
    package var refusalWindowMilliseconds: Int64 = 60 * 1000
    /// How long the broker waits for a member's grant after the refusal window; then the payment is cancelled.
    package var grantWindowMilliseconds: Int64 = 5 * 60 * 1000
    /// How long an active peek lasts.
    package var durationMilliseconds: Int64 = 10 * 60 * 1000
    /// First wait before a failed payment call is tried again (doubling, up to a minute).
    package var retryMilliseconds: Int64 = 1000
    /// Payment calls tried before the peek is given up as failed.
    package var maxAttempts = 40

    package init() {}
}

/// Where a peek is. Final phases: `refused`, `ended`, `cancelled`, `failed`.
package enum PeekPhase: String, Sendable, CaseIterable {
    /// A PaymentIntent exists; the viewer has not authorised it yet.
    case awaitingPayment = "awaiting_payment"
    /// Authorised; the channel's agents may refuse until the deadline.
    case pending
    /// Nobody refused; waiting for a member's grant (the channel key wrapped for the viewer).
    case awaitingGrant = "awaiting_grant"
    /// Capturing the refusal fee (refused) or the price (granted).
    case capturing
    /// Cancelling the PaymentIntent: never paid, or no grant came.
    case cancelling
    /// Granted and paid: the viewer reads the channel until `activeUntil`.
    case active
    /// Refused; the refusal fee was captured and the rest released.
    case refused
    /// An active peek that ran its time.
    case ended
    /// Nothing was charged.
    case cancelled
    /// The payment could not be captured; nothing was charged and no access given.
    case failed

    package var isFinal: Bool { [.refused, .ended, .cancelled, .failed].contains(self) }
}

/// One peek, as stored. Every change goes through `PeekStateMachine`, and is written only if `version` is still
/// the one it was read at (compare-and-set), so that of two brokers acting on the same peek exactly one wins.
package struct PeekRecord: Equatable, Sendable {
    package var id: String
    package var channel: ChannelID
    /// The viewer's X25519 public key (32 bytes, base64url), that grants wrap the channel key for.
    package var viewerKey: String
    package var paymentIntent: String
    package var phase: PeekPhase
    package var version: Int64
    package var createdAt: Int64
    /// When the current phase's timer is due (payment window, refusal window, grant window, a retry, the end).
    package var deadline: Int64?
    package var refusedBy: DID?
    package var grantedBy: DID?
    /// The amount being or already captured.
    package var captureCents: Int64 = 0
    /// Payment calls tried in the current phase.
    package var attempts = 0
    package var activeUntil: Int64?
    /// Why it was cancelled or failed.
    package var reason: String?

    package init(id: String, channel: ChannelID, viewerKey: String, paymentIntent: String, createdAt: Int64,
                 terms: PeekTerms)
    {
        self.id = id
        self.channel = channel
        self.viewerKey = viewerKey
        self.paymentIntent = paymentIntent
        phase = .awaitingPayment
        version = 1
        self.createdAt = createdAt
        deadline = createdAt + terms.paymentWindowMilliseconds
    }

    /// Idempotency keys of the payment calls, derived from the peek id so that a retry, by any broker, after any
    /// crash, is the same call.
    package var captureKey: String { "peek-\(id)-capture-\(captureCents)" }
    package var cancelKey: String { "peek-\(id)-cancel" }
    package static func createKey(_ id: String) -> String { "peek-\(id)-create" }
}

/// What happened to a peek.
package enum PeekEvent: Equatable, Sendable {
    /// The payment is authorised (webhook `payment_intent.amount_capturable_updated`, or the PaymentIntent
    /// retrieved in `requires_capture`).
    case authorized
    /// A member refused.
    case refuse(DID)
    /// A member's grant (the key wrapped for the viewer) is stored.
    case grant(DID)
    /// The peek's timer is due (the caller claimed it).
    case timerDue
    /// The gateway captured `cents`.
    case captured(cents: Int64)
    /// The gateway cancelled the PaymentIntent (or it was cancelled on Stripe's side).
    case cancelled
    /// A payment call failed; `permanent` when retrying cannot help.
    case paymentFailed(permanent: Bool, reason: String)
}

/// What the caller does after a transition, in order.
package enum PeekAction: Equatable, Sendable {
    case capture(cents: Int64, idempotencyKey: String)
    case cancel(idempotencyKey: String)
    /// Record a capture and its shares (and the release of the rest of the authorisation) in the ledger, in the
    /// same atomic write as the transition.
    case settle(capturedCents: Int64, releasedCents: Int64)
    /// Record that the authorisation was released without a capture.
    case recordCancellation(releasedCents: Int64)
    /// The phase changed: tell the viewer and the members.
    case announce
}

/// Why a request about a peek is refused.
package enum PeekRejection: String, Error, Equatable, Sendable {
    /// Refusal is only possible while the peek is pending, before its deadline.
    case notRefusable = "peek_not_refusable"
    /// Grants are only taken after the refusal window, while no grant was taken.
    case notGrantable = "peek_not_grantable"
}

/// The peek lifecycle, without I/O: the caller reads the record, applies an event with the time, writes the record
/// back if `version` moved (compare-and-set), and performs the actions. Applying an event that does not fit the
/// phase changes nothing (duplicate and out-of-order webhooks, a timer that fires twice, a late gateway answer).
package struct PeekStateMachine: Sendable {
    package let terms: PeekTerms

    package init(terms: PeekTerms) { self.terms = terms }

    package func apply(_ event: PeekEvent, to peek: inout PeekRecord, now: Int64) throws(PeekRejection) -> [PeekAction] {
        switch (event, peek.phase) {
        case (.authorized, .awaitingPayment):
            return transition(&peek, to: .pending, deadline: now + terms.refusalWindowMilliseconds) + [.announce]

        case (.refuse(let did), .pending):
            guard let deadline = peek.deadline, now < deadline else { throw .notRefusable }
            peek.refusedBy = did
            return startCapture(&peek, cents: terms.refusalFeeCents, now: now)
        case (.refuse, _):
            throw .notRefusable

        case (.grant(let did), .awaitingGrant):
            peek.grantedBy = did
            return startCapture(&peek, cents: terms.priceCents, now: now)
        case (.grant, _):
            throw .notGrantable

        case (.timerDue, _):
            guard let deadline = peek.deadline, now >= deadline else { return [] }
            return timerDue(&peek, now: now)

        case (.captured(let cents), .capturing):
            peek.captureCents = cents
            let settle = PeekAction.settle(capturedCents: cents, releasedCents: max(0, terms.priceCents - cents))
            if peek.refusedBy != nil {
                return transition(&peek, to: .refused, deadline: nil) + [settle, .announce]
            }
            peek.activeUntil = now + terms.durationMilliseconds
            return transition(&peek, to: .active, deadline: peek.activeUntil) + [settle, .announce]

        case (.cancelled, .cancelling), (.cancelled, .awaitingPayment), (.cancelled, .pending),
             (.cancelled, .awaitingGrant):
            // Cancelled by us, or on Stripe's side (then no money can be taken any more).
            let wasAuthorized = peek.phase != .awaitingPayment && peek.reason != "unpaid"
            if peek.phase != .cancelling { peek.reason = "payment cancelled" }
            return transition(&peek, to: .cancelled, deadline: nil)
                + [.recordCancellation(releasedCents: wasAuthorized ? terms.priceCents : 0), .announce]
        case (.cancelled, .capturing):
            peek.reason = "payment cancelled"
            return transition(&peek, to: .failed, deadline: nil) + [.announce]

        case (.paymentFailed(let permanent, let reason), .capturing),
             (.paymentFailed(let permanent, let reason), .cancelling):
            if permanent || peek.attempts >= terms.maxAttempts {
                peek.reason = reason
                if peek.phase == .cancelling {
                    // A PaymentIntent that cannot be cancelled cannot be captured either: nothing was charged.
                    return transition(&peek, to: .cancelled, deadline: nil)
                        + [.recordCancellation(releasedCents: 0), .announce]
                }
                return transition(&peek, to: .failed, deadline: nil) + [.announce]
            }
            peek.deadline = now + backoff(attempts: peek.attempts)
            peek.version += 1
            return []

        default:
            return []
        }
    }

    private func timerDue(_ peek: inout PeekRecord, now: Int64) -> [PeekAction] {
        switch peek.phase {
        case .awaitingPayment:
            peek.reason = "unpaid"
            return startCancel(&peek, now: now)
        case .pending:
            return transition(&peek, to: .awaitingGrant, deadline: now + terms.grantWindowMilliseconds) + [.announce]
        case .awaitingGrant:
            peek.reason = "no grant"
            return startCancel(&peek, now: now)
        case .capturing:
            peek.attempts += 1
            peek.deadline = now + backoff(attempts: peek.attempts)
            peek.version += 1
            return [.capture(cents: peek.captureCents, idempotencyKey: peek.captureKey)]
        case .cancelling:
            peek.attempts += 1
            peek.deadline = now + backoff(attempts: peek.attempts)
            peek.version += 1
            return [.cancel(idempotencyKey: peek.cancelKey)]
        case .active:
            return transition(&peek, to: .ended, deadline: nil) + [.announce]
        case .refused, .ended, .cancelled, .failed:
            return []
        }
    }

    /// Captures are retried from the timer until the gateway answers, so a broker that dies mid-capture leaves a
    /// due timer and another broker repeats the same (idempotent) call.
    private func startCapture(_ peek: inout PeekRecord, cents: Int64, now: Int64) -> [PeekAction] {
        peek.captureCents = cents
        peek.attempts = 1
        return transition(&peek, to: .capturing, deadline: now + backoff(attempts: 1))
            + [.capture(cents: cents, idempotencyKey: peek.captureKey), .announce]
    }

    private func startCancel(_ peek: inout PeekRecord, now: Int64) -> [PeekAction] {
        peek.attempts = 1
        return transition(&peek, to: .cancelling, deadline: now + backoff(attempts: 1))
            + [.cancel(idempotencyKey: peek.cancelKey), .announce]
    }

    private func transition(_ peek: inout PeekRecord, to phase: PeekPhase, deadline: Int64?) -> [PeekAction] {
        peek.phase = phase
        peek.deadline = deadline
        peek.version += 1
        if phase != .capturing && phase != .cancelling { peek.attempts = 0 }
        return []
    }

    /// 1 s, 2 s, 4 s … up to a minute.
    func backoff(attempts: Int) -> Int64 {
        min(60_000, terms.retryMilliseconds << Int64(min(max(0, attempts - 1), 16)))
    }
}
