import AgentChatCore
import AgentChatPayments
import AgentChatRedis
import AgentChatTransport
import Foundation
import TestSupport
import Testing

/// The gateway against a scripted server: exactly what goes on the wire, and how every kind of answer maps.
@Suite(.serialized) struct StripeGatewayWireTests {
    static let secret = "sk_test_51NeverLogThisKey"

    static func intentJSON(_ id: String = "pi_1", status: String = "requires_payment_method", amount: Int = 500,
                           capturable: Int = 0, received: Int = 0) -> String
    {
        """
        {"id":"\(id)","object":"payment_intent","amount":\(amount),"amount_capturable":\(capturable),\
        "amount_received":\(received),"capture_method":"manual","client_secret":"\(id)_secret_abc",\
        "currency":"usd","metadata":{"peek":"p 1"},"status":"\(status)"}
        """
    }

    @Test func requestsOnTheWire() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        try await withHarness { harness in
            let gateway = try await harness.gateway(.init(secretKey: Self.secret, publishableKey: "pk_test_1",
                                                          baseURL: server.baseURL + "/", apiVersion: "2024-06-20"))
            try server.enqueue([.init(body: Self.intentJSON()), .init(body: Self.intentJSON()),
                                .init(body: Self.intentJSON(status: "requires_capture", capturable: 500)),
                                .init(body: Self.intentJSON(status: "succeeded", received: 100)),
                                .init(body: Self.intentJSON(status: "canceled"))])
            let metadata = ["peek": "p 1", "buyer": "did:key:z6Mk&x=1"]
            let created = try await harness.call(gateway) { gateway, done in
                gateway.createPaymentIntent(amount: 500, idempotencyKey: "peek-p1-create", metadata: metadata,
                                            completion: done)
            }.get()
            #expect(created == PaymentIntent(id: "pi_1", status: "requires_payment_method", amount: 500,
                                             clientSecret: "pi_1_secret_abc", metadata: ["peek": "p 1"]))
            // A retry after a timeout: the same key and the same body.
            _ = try await harness.call(gateway) { gateway, done in
                gateway.createPaymentIntent(amount: 500, idempotencyKey: "peek-p1-create", metadata: metadata,
                                            completion: done)
            }.get()
            let authorised = try await harness.call(gateway) { $0.retrieve("pi_1", completion: $1) }.get()
            #expect(authorised.isAuthorized && authorised.amountCapturable == 500)
            let captured = try await harness.call(gateway) {
                $0.capture("pi_1", amount: 100, idempotencyKey: "peek-p1-capture", completion: $1)
            }.get()
            #expect(captured.amountReceived == 100)
            _ = try await harness.call(gateway) { $0.cancel("pi_1", idempotencyKey: "peek-p1-cancel", completion: $1) }
                .get()

            let sent = try server.requests()
            try #require(sent.count == 5)
            let createBody = "amount=500&currency=usd&capture_method=manual&payment_method_types[]=card"
                + "&metadata[buyer]=did%3Akey%3Az6Mk%26x%3D1&metadata[peek]=p%201"
            for request in sent[0...1] {
                #expect(request.method == "POST")
                #expect(request.path == "/v1/payment_intents")
                #expect(request.body == createBody)
                #expect(request.header("Idempotency-Key") == "peek-p1-create")
                #expect(request.header("Content-Type") == "application/x-www-form-urlencoded")
            }
            #expect(sent[2].method == "GET")
            #expect(sent[2].path == "/v1/payment_intents/pi_1")
            #expect(sent[2].body == "")
            #expect(sent[2].header("Idempotency-Key") == nil)
            #expect(sent[2].header("Content-Type") == nil)
            #expect(sent[3].path == "/v1/payment_intents/pi_1/capture")
            #expect(sent[3].body == "amount_to_capture=100")
            #expect(sent[3].header("Idempotency-Key") == "peek-p1-capture")
            #expect(sent[4].path == "/v1/payment_intents/pi_1/cancel")
            #expect(sent[4].body == "")
            #expect(sent[4].header("Idempotency-Key") == "peek-p1-cancel")
            for request in sent {
                #expect(request.header("Authorization") == "Bearer \(Self.secret)")
                #expect(request.header("Stripe-Version") == "2024-06-20")
            }
            let gatewayIsSandbox = try await harness.loop.submit { gateway.value.isSandbox }
            let key = try await harness.loop.submit { gateway.value.publishableKey }
            #expect(!gatewayIsSandbox && key == "pk_test_1")
        }
    }

    @Test func errorMappingAndLogs() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        try await withHarness { harness in
            let gateway = try await harness.gateway(.init(secretKey: Self.secret, baseURL: server.baseURL,
                                                          timeoutSeconds: 0.5))
            let canceledError = """
                {"error":{"code":"payment_intent_unexpected_state","message":"This PaymentIntent could not be \
                captured because it has a status of canceled.","type":"invalid_request_error"}}
                """
            try server.enqueue([
                .init(status: 400, headers: ["Request-Id": "req_9"], body: canceledError),
                .init(status: 500, body: #"{"error":{"type":"api_error","message":"Boom"}}"#),
                .init(status: 429, body: #"{"error":{"code":"rate_limit","message":"Slow down"}}"#),
                .init(status: 200, body: Self.intentJSON(status: "canceled")),
                .init(status: 200, body: Self.intentJSON(), delaySeconds: 3),
            ])
            let capture: @Sendable (StripeGateway, @escaping PaymentCompletion) -> Void = {
                $0.capture("pi_1", amount: 100, idempotencyKey: "k", completion: $1)
            }
            #expect(await harness.call(gateway, capture).failure
                == .refused(code: "payment_intent_unexpected_state",
                            message: "This PaymentIntent could not be captured because it has a status of canceled."))
            #expect(await harness.call(gateway, capture).failure == .unavailable("HTTP 500: Boom"))
            #expect(await harness.call(gateway, capture).failure == .unavailable("HTTP 429 (rate_limit): Slow down"))
            // A 200 whose status is not what a capture leaves (localstripe captures a canceled intent this way).
            #expect(await harness.call(gateway, capture).failure
                == .refused(code: "unexpected_status", message: "capture of pi_1 answered with status canceled"))
            #expect(await harness.call(gateway, capture).failure == .unavailable("no complete response within 0.5 s"))

            // Refused here, nothing sent.
            #expect(await harness.call(gateway) { $0.retrieve("pi_1/../../v1/charges", completion: $1) }.failure
                == .refused(code: "invalid_id", message: "not a PaymentIntent id"))
            #expect(await harness.call(gateway) { $0.cancel("pi_1", idempotencyKey: "", completion: $1) }.failure
                == .refused(code: "invalid_idempotency_key",
                            message: "idempotency keys are 1 to 255 visible ASCII characters"))
            #expect(await harness.call(gateway) {
                $0.createPaymentIntent(amount: 0, idempotencyKey: "k", metadata: [:], completion: $1)
            }.failure == .refused(code: "invalid_amount", message: "amount must be positive"))
            #expect(try server.requests().count == 5)

            let logs = harness.logs.all
            #expect(logs.contains { $0.contains("request_id=req_9") && $0.contains("code=payment_intent_unexpected_state") },
                    "\(logs)")
            #expect(!logs.contains { $0.contains(Self.secret) }, "\(logs)")
        }

        // Nothing listens on the port.
        let closed = try EmbeddedRedis.freeLoopbackPort()
        try await withHarness { harness in
            let gateway = try await harness.gateway(.init(secretKey: Self.secret, baseURL: "http://127.0.0.1:\(closed)"))
            guard case .unavailable = await harness.call(gateway, { $0.retrieve("pi_1", completion: $1) }).failure else {
                throw Failure("a closed port was not .unavailable")
            }
        }
    }

    @Test func configurationIsChecked() async throws {
        try await withHarness { harness in
            for (key, url) in [("", "https://api.stripe.com"), ("sk_test_1\r\nX: y", "https://api.stripe.com"),
                               ("sk_test_1", "https://api.stripe.com/v1"), ("sk_test_1", "api.stripe.com")] {
                await #expect(throws: StripeGateway.ConfigurationError.self) {
                    _ = try await harness.gateway(.init(secretKey: key, baseURL: url))
                }
            }
        }
    }
}

/// The gateway against localstripe, a stateful fake of Stripe: the whole life of an authorisation.
///
/// What localstripe does not do (checked in its source, version 1.15): it ignores `Idempotency-Key` (the same create
/// twice makes two PaymentIntents, a repeated capture is refused with 400), sends neither `amount_capturable` nor
/// `amount_received` (`StripeResponse` derives them from its inline charge), answers a capture of a canceled intent
/// with 200 and status `canceled` (Stripe: 400 `payment_intent_unexpected_state`), and its errors carry no code.
@Suite(.serialized) struct StripeGatewayLocalStripeTests {
    static let secret = "sk_test_localstripe"

    /// What the page does with Stripe.js: a test card PaymentMethod, attached, then confirmed; leaves the intent
    /// `requires_capture` (manual capture).
    static func confirmAsThePage(_ harness: ClientHarness, _ stripe: LocalStripe, _ id: String) async throws {
        let auth = HTTPClient.Header("Authorization", "Bearer \(secret)")
        let form = HTTPClient.Header("Content-Type", "application/x-www-form-urlencoded")
        var card = FormBody()
        card.add("type", "card")
        card.add("card", "number", "4242424242424242")
        card.add("card", "exp_month", "12")
        card.add("card", "exp_year", "2034")
        card.add("card", "cvc", "123")
        let method = try await harness.send(.init(method: .post, url: stripe.baseURL + "/v1/payment_methods",
                                                  headers: [auth, form], body: card.bytes)).get()
        try #require(method.status == 200, "\(String(decoding: method.body, as: UTF8.self))")
        let pm = try #require((try JSONSerialization.jsonObject(with: Data(method.body)) as? [String: Any])?["id"]
            as? String)
        var attach = FormBody()
        attach.add("payment_method", pm)
        let attached = try await harness.send(.init(method: .post, url: stripe.baseURL + "/v1/payment_intents/\(id)",
                                                    headers: [auth, form], body: attach.bytes)).get()
        try #require(attached.status == 200)
        let confirmed = try await harness.send(.init(method: .post,
                                                     url: stripe.baseURL + "/v1/payment_intents/\(id)/confirm",
                                                     headers: [auth, form])).get()
        try #require(confirmed.status == 200, "\(String(decoding: confirmed.body, as: UTF8.self))")
    }

    @Test func authoriseCapturePartOfItAndRetry() async throws {
        let stripe = try LocalStripe()
        defer { stripe.stop() }
        try await withHarness { harness in
            let gateway = try await harness.gateway(.init(secretKey: Self.secret, baseURL: stripe.baseURL))
            let created = try await harness.call(gateway) {
                $0.createPaymentIntent(amount: 500, idempotencyKey: "peek-1-create",
                                       metadata: ["peek": "peek-1", "seller": "did:key:z6MkSeller"], completion: $1)
            }.get()
            #expect(created.id.hasPrefix("pi_"))
            #expect(created.status == "requires_payment_method")
            #expect(created.amount == 500 && created.amountCapturable == 0 && created.amountReceived == 0)
            #expect(created.clientSecret.hasPrefix(created.id + "_secret_"))
            #expect(created.metadata == ["peek": "peek-1", "seller": "did:key:z6MkSeller"])

            try await Self.confirmAsThePage(harness, stripe, created.id)
            let authorised = try await harness.call(gateway) { $0.retrieve(created.id, completion: $1) }.get()
            #expect(authorised.status == "requires_capture" && authorised.isAuthorized)
            #expect(authorised.amountCapturable == 500)

            let capture: @Sendable (StripeGateway, @escaping PaymentCompletion) -> Void = {
                $0.capture(created.id, amount: 100, idempotencyKey: "peek-1-capture", completion: $1)
            }
            let captured = try await harness.call(gateway, capture).get()
            #expect(captured.status == "succeeded")
            #expect(captured.amountReceived == 100)
            #expect(captured.amountCapturable == 0)

            // The same capture again (same key): Stripe would replay the first answer; localstripe refuses it. Either
            // way nothing more is captured.
            guard case .refused = await harness.call(gateway, capture).failure else {
                throw Failure("a second capture was not refused by localstripe")
            }
            let after = try await harness.call(gateway) { $0.retrieve(created.id, completion: $1) }.get()
            #expect(after.amountReceived == 100 && after.status == "succeeded")

            // A captured intent cannot be canceled.
            #expect(await harness.call(gateway) {
                $0.cancel(created.id, idempotencyKey: "peek-1-cancel", completion: $1)
            }.failure == .refused(code: "", message: "Bad request"))
        }
    }

    @Test func cancelReleasesTheAuthorisation() async throws {
        let stripe = try LocalStripe()
        defer { stripe.stop() }
        try await withHarness { harness in
            let gateway = try await harness.gateway(.init(secretKey: Self.secret, baseURL: stripe.baseURL))
            let created = try await harness.call(gateway) {
                $0.createPaymentIntent(amount: 500, idempotencyKey: "peek-2-create", metadata: [:], completion: $1)
            }.get()
            try await Self.confirmAsThePage(harness, stripe, created.id)
            let canceled = try await harness.call(gateway) {
                $0.cancel(created.id, idempotencyKey: "peek-2-cancel", completion: $1)
            }.get()
            #expect(canceled.status == "canceled")
            #expect(canceled.amountCapturable == 0 && canceled.amountReceived == 0)

            // Capturing a canceled intent is refused (by the gateway's status check: localstripe answers 200).
            #expect(await harness.call(gateway) {
                $0.capture(created.id, amount: 100, idempotencyKey: "peek-2-capture", completion: $1)
            }.failure == .refused(code: "unexpected_status",
                                  message: "capture of \(created.id) answered with status canceled"))
            // Canceling twice: localstripe refuses the second.
            guard case .refused = await harness.call(gateway, {
                $0.cancel(created.id, idempotencyKey: "peek-2-cancel", completion: $1)
            }).failure else { throw Failure("a second cancel was not refused by localstripe") }

            // Unknown intent, wrong key.
            #expect(await harness.call(gateway) { $0.retrieve("pi_doesnotexist", completion: $1) }.failure
                == .refused(code: "", message: "Not Found"))
            let stranger = try await harness.gateway(.init(secretKey: "pk_test_not_a_secret_key",
                                                           baseURL: stripe.baseURL))
            #expect(await harness.call(stranger) { $0.retrieve(created.id, completion: $1) }.failure
                == .refused(code: "", message: "Unauthorized"))
        }
    }
}
