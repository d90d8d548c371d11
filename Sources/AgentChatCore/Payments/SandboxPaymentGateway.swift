import AgentChatCrypto
import AgentChatProtocol

/// Where the sandbox keeps its PaymentIntents (in Redis, so that every broker sees them).
package protocol SandboxPaymentStoring: AnyObject {
    func save(_ intent: PaymentIntent, completion: @escaping StoreCompletion<Void>)
    func load(_ id: String, completion: @escaping StoreCompletion<PaymentIntent?>)
}

/// The payment gateway used when no Stripe key is configured: it behaves like Stripe's manual-capture
/// PaymentIntents, authorises locally when the viewer submits the sandbox form, and sends itself correctly signed
/// webhook events through the broker's own webhook endpoint, so the whole peek flow runs on one machine. No money
/// moves; every page that shows a payment says "sandbox". Loop-bound.
package final class SandboxPaymentGateway: PaymentGateway {
    package let isSandbox = true
    package let publishableKey: String? = nil
    /// The secret its webhooks are signed with; the broker's webhook endpoint accepts it beside Stripe's.
    package let webhookSecret: String
    private let store: any SandboxPaymentStoring
    private let clock: any BrokerClock
    /// Hands a signed webhook request to the broker's HTTP endpoint; set by the router.
    package var deliver: ((HTTPRequest) -> Void)?
    private var pending: [any BrokerTimer] = []

    package init(store: any SandboxPaymentStoring, clock: any BrokerClock,
                 webhookSecret: String = "whsec_sandbox_" + Base64URL.encode(SecureRandom.bytes(24)))
    {
        self.store = store
        self.clock = clock
        self.webhookSecret = webhookSecret
    }

    package func createPaymentIntent(amount: Int64, idempotencyKey: String, metadata: [String: String],
                                     completion: @escaping PaymentCompletion)
    {
        // The id follows from the idempotency key, so the same request twice is the same PaymentIntent.
        let id = "pi_sandbox_" + String(Base64URL.encode(Hash.sha256(Array(idempotencyKey.utf8))).prefix(24))
        store.load(id) { [self] result in
            switch result {
            case .failure: return completion(.failure(.unavailable("sandbox store unavailable")))
            case .success(let existing?): return completion(.success(existing))
            case .success(nil): break
            }
            let intent = PaymentIntent(id: id, status: "requires_payment_method", amount: amount,
                                       clientSecret: id + "_secret_" + Base64URL.encode(SecureRandom.bytes(12)),
                                       metadata: metadata)
            save(intent, event: nil, completion: completion)
        }
    }

    package func retrieve(_ id: String, completion: @escaping PaymentCompletion) {
        load(id, completion: completion) { intent in completion(.success(intent)) }
    }

    /// What the sandbox form does: the card is "authorised" for the whole amount.
    package func authorize(_ id: String, completion: @escaping PaymentCompletion) {
        load(id, completion: completion) { [self] intent in
            guard intent.status == "requires_payment_method" else { return completion(.success(intent)) }
            var authorized = intent
            authorized.status = "requires_capture"
            authorized.amountCapturable = intent.amount
            save(authorized, event: "payment_intent.amount_capturable_updated", completion: completion)
        }
    }

    package func capture(_ id: String, amount: Int64, idempotencyKey: String, completion: @escaping PaymentCompletion) {
        load(id, completion: completion) { [self] intent in
            switch intent.status {
            case "succeeded": return completion(.success(intent))
            case "requires_capture": break
            default:
                return completion(.failure(.refused(code: "payment_intent_unexpected_state",
                                                    message: "the PaymentIntent is \(intent.status)")))
            }
            guard amount > 0, amount <= intent.amountCapturable else {
                return completion(.failure(.refused(code: "amount_too_large", message: "amount_to_capture is too large")))
            }
            var captured = intent
            captured.status = "succeeded"
            captured.amountReceived = amount
            captured.amountCapturable = 0
            save(captured, event: "payment_intent.succeeded", completion: completion)
        }
    }

    package func cancel(_ id: String, idempotencyKey: String, completion: @escaping PaymentCompletion) {
        load(id, completion: completion) { [self] intent in
            switch intent.status {
            case "canceled": return completion(.success(intent))
            case "succeeded":
                return completion(.failure(.refused(code: "payment_intent_unexpected_state",
                                                    message: "the PaymentIntent is succeeded")))
            default: break
            }
            var cancelled = intent
            cancelled.status = "canceled"
            cancelled.amountCapturable = 0
            save(cancelled, event: "payment_intent.canceled", completion: completion)
        }
    }

    private func load(_ id: String, completion: @escaping PaymentCompletion,
                      then next: @escaping (PaymentIntent) -> Void)
    {
        store.load(id) { result in
            switch result {
            case .failure: completion(.failure(.unavailable("sandbox store unavailable")))
            case .success(nil): completion(.failure(.refused(code: "resource_missing", message: "no such PaymentIntent")))
            case .success(let intent?): next(intent)
            }
        }
    }

    private func save(_ intent: PaymentIntent, event: String?, completion: @escaping PaymentCompletion) {
        store.save(intent) { [self] result in
            guard case .success = result else { return completion(.failure(.unavailable("sandbox store unavailable"))) }
            if let event { send(event, intent) }
            completion(.success(intent))
        }
    }

    /// Delivers a signed event on a later loop turn, like a webhook arriving.
    private func send(_ type: String, _ intent: PaymentIntent) {
        let now = clock.unixMilliseconds / 1000
        let body = JSONWriter.encode([
            "id": .string("evt_sandbox_" + Base64URL.encode(SecureRandom.bytes(12))), "object": "event",
            "type": .string(type), "created": .number(Double(now)), "livemode": false,
            "data": ["object": Self.json(intent)],
        ])
        var request = HTTPRequest(method: .post, path: PeekService.webhookPath, body: body, remoteAddress: "sandbox")
        request.headers["content-type"] = "application/json"
        request.headers["stripe-signature"] = StripeWebhookSignature.header(for: body, timestamp: now,
                                                                            secret: webhookSecret)
        let timer = clock.makeTimer { [weak self] in self?.deliver?(request) }
        pending.removeAll { !$0.isActive }  // those that fired
        pending.append(timer)
        timer.start(after: 0)
    }

    /// A PaymentIntent in Stripe's JSON shape.
    package static func json(_ intent: PaymentIntent) -> JSONValue {
        .object([
            "id": .string(intent.id), "object": "payment_intent", "amount": .number(Double(intent.amount)),
            "amount_capturable": .number(Double(intent.amountCapturable)),
            "amount_received": .number(Double(intent.amountReceived)), "currency": "usd",
            "capture_method": "manual", "status": .string(intent.status), "client_secret": .string(intent.clientSecret),
            "metadata": .object(intent.metadata.mapValues { .string($0) }),
        ])
    }
}
