import AgentChatCore
import AgentChatProtocol
import AgentChatTransport

/// Stripe's answers, read: a PaymentIntent from a 2xx body, a `PaymentError` from anything else. Pure.
package enum StripeResponse {
    /// The result of one call: the PaymentIntent, or why not.
    package static func paymentIntent(from response: HTTPClient.Response) -> Result<PaymentIntent, PaymentError> {
        guard (200..<300).contains(response.status) else { return .failure(error(from: response)) }
        do {
            return .success(try parsePaymentIntent(JSONParser.parse(response.body)))
        } catch let failure as JSONParser.Failure {
            // A 2xx that cannot be read is not a refusal; the same call (same idempotency key) may be read next time.
            return .failure(.unavailable("HTTP \(response.status) with a body that is not JSON: \(failure.message)"))
        } catch {
            return .failure(.unavailable("HTTP \(response.status) with an unexpected PaymentIntent: \(error)"))
        }
    }

    /// A transport failure: the call may or may not have reached Stripe, so it may be tried again (same key).
    package static func error(from failure: HTTPClientError) -> PaymentError {
        .unavailable(failure.description)
    }

    /// A non-2xx answer. Whether the call may be tried again follows Stripe's own libraries: the
    /// `Stripe-Should-Retry` header when Stripe sent it, else 409 (a concurrent request with the same idempotency
    /// key), 429 and 5xx may; any other 4xx is a refusal. Stripe's `{"error":{"code","message","type"}}` gives the
    /// code (empty when it gave none) and the message.
    package static func error(from response: HTTPClient.Response) -> PaymentError {
        let details = errorDetails(response.body)
        let message = details.message ?? "HTTP \(response.status)"
        let retryable: Bool
        switch response.header("stripe-should-retry")?.lowercased() {
        case "true": retryable = true
        case "false": retryable = false
        default: retryable = response.status == 409 || response.status == 429 || response.status >= 500
            || response.status < 400
        }
        if retryable {
            let code = details.code.map { " (\($0))" } ?? ""
            return .unavailable("HTTP \(response.status)\(code): \(message)")
        }
        return .refused(code: details.code ?? "", message: message)
    }

    /// Stripe's error object, as far as it can be read.
    static func errorDetails(_ body: [UInt8]) -> (code: String?, message: String?, type: String?) {
        guard let json = try? JSONParser.parse(body), let error = json["error"] else { return (nil, nil, nil) }
        return (error["code"]?.stringValue, error["message"]?.stringValue, error["type"]?.stringValue)
    }

    package struct UnexpectedShape: Error, CustomStringConvertible {
        package let description: String
    }

    /// Reads the fields the broker uses. `id`, `status` and `amount` are required.
    ///
    /// Stripe always sends `amount_capturable` and `amount_received`; localstripe (the fake Stripe the tests use)
    /// sends neither. Without them they are derived from `latest_charge` when it is an object (as localstripe sends
    /// it): capturable is the amount while the status is `requires_capture`, received is the captured charge's amount
    /// less what was refunded (a partial capture releases the rest as a refund there).
    package static func parsePaymentIntent(_ json: JSONValue) throws(UnexpectedShape) -> PaymentIntent {
        guard json.objectValue != nil else { throw UnexpectedShape(description: "not an object") }
        if let object = json["object"]?.stringValue, object != "payment_intent" {
            throw UnexpectedShape(description: "object is \(object), not payment_intent")
        }
        guard let id = json["id"]?.stringValue, !id.isEmpty else { throw UnexpectedShape(description: "no id") }
        guard let status = json["status"]?.stringValue else { throw UnexpectedShape(description: "no status") }
        guard let amount = json["amount"]?.integerValue else { throw UnexpectedShape(description: "no amount") }
        let charge = json["latest_charge"]?.objectValue
        let capturable = json["amount_capturable"]?.integerValue
            ?? (status == "requires_capture" ? charge?["amount"]?.integerValue ?? amount : 0)
        let received = json["amount_received"]?.integerValue ?? {
            guard let charge, charge["captured"]?.boolValue == true, charge["status"]?.stringValue == "succeeded",
                let charged = charge["amount"]?.integerValue
            else { return 0 }
            return charged - (charge["amount_refunded"]?.integerValue ?? 0)
        }()
        var metadata: [String: String] = [:]
        for (key, value) in json["metadata"]?.objectValue ?? [:] {
            if let text = value.stringValue { metadata[key] = text }
        }
        return PaymentIntent(id: id, status: status, amount: amount, amountCapturable: capturable,
                             amountReceived: received, clientSecret: json["client_secret"]?.stringValue ?? "",
                             metadata: metadata)
    }
}
