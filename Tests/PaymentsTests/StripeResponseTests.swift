import AgentChatCore
import AgentChatPayments
import AgentChatProtocol
import AgentChatTransport
import Testing

struct StripeResponseTests {
    /// Abridged from Stripe's API reference (a PaymentIntent with manual capture, authorised).
    static let stripeIntent = """
        {"id":"pi_3MtwBwLkdIwHu7ix28a3tqPa","object":"payment_intent","amount":500,"amount_capturable":500,
         "amount_details":{"tip":{}},"amount_received":0,"application":null,"capture_method":"manual",
         "client_secret":"pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH","confirmation_method":
         "automatic","created":1680800504,"currency":"usd","customer":null,"latest_charge":"ch_3Mtw",
         "livemode":false,"metadata":{"peek":"pk_1","buyer":"did:key:z6Mk"},"next_action":null,
         "payment_method":"pm_1","payment_method_types":["card"],"status":"requires_capture"}
        """

    static func response(_ status: Int, _ body: String, _ headers: [String: String] = [:]) -> HTTPClient.Response {
        HTTPClient.Response(status: status, headers: headers, body: Array(body.utf8))
    }

    @Test func readsStripesPaymentIntent() throws {
        let intent = try #require(StripeResponse.paymentIntent(from: Self.response(200, Self.stripeIntent)).success)
        #expect(intent == PaymentIntent(id: "pi_3MtwBwLkdIwHu7ix28a3tqPa", status: "requires_capture", amount: 500,
                                        amountCapturable: 500, amountReceived: 0,
                                        clientSecret: "pi_3MtwBwLkdIwHu7ix28a3tqPa_secret_YrKJUKribcBjcG8HVhfZluoGH",
                                        metadata: ["peek": "pk_1", "buyer": "did:key:z6Mk"]))
        #expect(intent.isAuthorized)
    }

    @Test func derivesAmountsFromLocalstripesCharge() throws {
        // localstripe's shape after capturing 100 of 500: no amount_capturable/amount_received, the charge inline,
        // the released 400 as a refund.
        let captured = """
            {"id":"pi_X","object":"payment_intent","amount":500,"status":"succeeded","client_secret":"pi_X_secret_y",
             "metadata":{},"latest_charge":{"id":"ch_1","amount":500,"amount_refunded":400,"captured":true,
             "status":"succeeded"}}
            """
        let intent = try #require(StripeResponse.paymentIntent(from: Self.response(200, captured)).success)
        #expect(intent.amountReceived == 100)
        #expect(intent.amountCapturable == 0)

        let authorised = """
            {"id":"pi_X","amount":500,"status":"requires_capture","client_secret":null,"metadata":{"n":1},
             "latest_charge":{"amount":500,"amount_refunded":0,"captured":false,"status":"succeeded"}}
            """
        let held = try #require(StripeResponse.paymentIntent(from: Self.response(200, authorised)).success)
        #expect(held.amountCapturable == 500)
        #expect(held.amountReceived == 0)
        #expect(held.clientSecret == "")
        #expect(held.metadata == [:])  // non-string metadata values are not Stripe's and are dropped
    }

    @Test func unreadableSuccessIsUnavailable() {
        for body in ["<html>", "{\"id\":\"pi_1\"}", "{\"object\":\"charge\",\"id\":\"ch\",\"status\":\"x\",\"amount\":1}",
                     "[]", "{\"id\":\"pi\",\"status\":\"s\",\"amount\":1.5}"] {
            guard case .unavailable = StripeResponse.paymentIntent(from: Self.response(200, body)).failure else {
                Issue.record("\(body) was not .unavailable")
                continue
            }
        }
    }

    @Test func errorMapping() {
        let unexpectedState = """
            {"error":{"code":"payment_intent_unexpected_state","doc_url":"https://stripe.com/docs/error-codes/payment-intent-unexpected-state",
             "message":"This PaymentIntent could not be captured because it has a status of canceled.",
             "type":"invalid_request_error"}}
            """
        #expect(StripeResponse.paymentIntent(from: Self.response(400, unexpectedState)).failure
            == .refused(code: "payment_intent_unexpected_state",
                        message: "This PaymentIntent could not be captured because it has a status of canceled."))
        let declined = #"{"error":{"code":"card_declined","decline_code":"insufficient_funds","message":"Declined.","type":"card_error"}}"#
        #expect(StripeResponse.paymentIntent(from: Self.response(402, declined)).failure
            == .refused(code: "card_declined", message: "Declined."))
        // localstripe's errors carry no code.
        #expect(StripeResponse.paymentIntent(from: Self.response(
            400, #"{"error":{"message":"Bad request","type":"invalid_request_error"}}"#)).failure
            == .refused(code: "", message: "Bad request"))
        #expect(StripeResponse.paymentIntent(from: Self.response(404, "not json")).failure
            == .refused(code: "", message: "HTTP 404"))

        for status in [429, 500, 502, 503, 409] {
            guard case .unavailable(let why) = StripeResponse.paymentIntent(from: Self.response(
                status, #"{"error":{"code":"lock_timeout","message":"Try again."}}"#)).failure
            else {
                Issue.record("HTTP \(status) was not .unavailable")
                continue
            }
            #expect(why == "HTTP \(status) (lock_timeout): Try again.")
        }
        // Stripe-Should-Retry, when present, decides.
        #expect(StripeResponse.paymentIntent(from: Self.response(
            500, #"{"error":{"code":"x","message":"m"}}"#, ["stripe-should-retry": "false"])).failure
            == .refused(code: "x", message: "m"))
        guard case .unavailable = StripeResponse.paymentIntent(from: Self.response(
            400, "{}", ["stripe-should-retry": "true"])).failure
        else {
            Issue.record("Stripe-Should-Retry: true was not .unavailable")
            return
        }
        #expect(StripeResponse.error(from: HTTPClientError.timedOut(seconds: 2)) == .unavailable("no complete response within 2.0 s"))
        #expect(StripeResponse.error(from: .connectionFailed("refused")).isPermanent == false)
    }
}
