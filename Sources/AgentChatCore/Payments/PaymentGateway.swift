/// A PaymentIntent as the broker needs it (Stripe's object, trimmed).
package struct PaymentIntent: Equatable, Sendable {
    package var id: String
    /// Stripe's status: `requires_payment_method`, `requires_confirmation`, `requires_action`, `processing`,
    /// `requires_capture` (authorised, manual capture), `canceled`, `succeeded`.
    package var status: String
    package var amount: Int64
    package var amountCapturable: Int64
    package var amountReceived: Int64
    /// What the page needs to confirm the payment (Stripe's Payment Element, or the sandbox form).
    package var clientSecret: String
    package var metadata: [String: String]

    package init(id: String, status: String, amount: Int64, amountCapturable: Int64 = 0, amountReceived: Int64 = 0,
                 clientSecret: String, metadata: [String: String] = [:])
    {
        self.id = id
        self.status = status
        self.amount = amount
        self.amountCapturable = amountCapturable
        self.amountReceived = amountReceived
        self.clientSecret = clientSecret
        self.metadata = metadata
    }

    package var isAuthorized: Bool { status == "requires_capture" }
}

/// Why a payment call failed.
package enum PaymentError: Error, Equatable, Sendable {
    /// The gateway did not answer or answered 5xx/429: the same call (same idempotency key) may be tried again.
    case unavailable(String)
    /// The gateway refused the call (4xx): trying again cannot help. `code` is Stripe's error code when it gave one.
    case refused(code: String, message: String)

    package var isPermanent: Bool {
        if case .refused = self { return true }
        return false
    }
}

package typealias PaymentCompletion = (Result<PaymentIntent, PaymentError>) -> Void

/// Stripe, or the sandbox. Every mutating call carries an idempotency key derived from the peek, so that a call
/// repeated after a crash or a timeout (by any broker) has the effect of one. Loop-bound; completions come later.
package protocol PaymentGateway: AnyObject {
    /// True for the local sandbox: shown as such wherever a human sees a payment.
    var isSandbox: Bool { get }
    /// Stripe's publishable key for the page (`pk_…`); nil for the sandbox.
    var publishableKey: String? { get }
    /// A PaymentIntent for `amount` cents, USD, `capture_method=manual`.
    func createPaymentIntent(amount: Int64, idempotencyKey: String, metadata: [String: String],
                             completion: @escaping PaymentCompletion)
    func retrieve(_ id: String, completion: @escaping PaymentCompletion)
    /// Captures `amount` (at most what was authorised); the rest of the authorisation is released.
    func capture(_ id: String, amount: Int64, idempotencyKey: String, completion: @escaping PaymentCompletion)
    func cancel(_ id: String, idempotencyKey: String, completion: @escaping PaymentCompletion)
}
