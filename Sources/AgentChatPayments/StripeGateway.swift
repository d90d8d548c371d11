import AgentChatCore
import AgentChatLoop
import AgentChatTransport
import Logging

/// `PaymentGateway` on Stripe's REST API (or anything that speaks it, such as localstripe), over `HTTPClient`.
///
/// Every call sends `Authorization: Bearer <secret key>`; every POST a form-encoded body (`FormBody`) and the
/// caller's `Idempotency-Key`, so that a call repeated after a timeout has the effect of one (on Stripe: localstripe
/// ignores the header). Loop-bound: call on the loop thread; completions come later, on the loop thread, once.
///
/// A call's answer is checked against what the call is for: a capture must come back `succeeded` (or `processing`),
/// a cancellation `canceled`; anything else is `.refused(code: "unexpected_status")` rather than a success.
///
/// The gateway does not own the client: whoever made it starts it and shuts it down.
package final class StripeGateway: PaymentGateway {
    package struct Configuration: Sendable {
        /// `sk_live_…`/`sk_test_…` (or a restricted `rk_…` key). Sent only in the Authorization header, never logged.
        package var secretKey: String
        package var publishableKey: String?
        /// Without a trailing slash: `https://api.stripe.com`, or localstripe's `http://127.0.0.1:8420`.
        package var baseURL: String
        package var timeoutSeconds: Double
        /// Sent as `payment_method_types[]` at creation; empty sends none (Stripe then uses the account's
        /// automatic payment methods; localstripe needs none either).
        package var paymentMethodTypes: [String]
        /// `Stripe-Version`, or nil for the account's default version.
        package var apiVersion: String?

        package init(secretKey: String, publishableKey: String? = nil, baseURL: String = "https://api.stripe.com",
                     timeoutSeconds: Double = 20, paymentMethodTypes: [String] = ["card"], apiVersion: String? = nil)
        {
            self.secretKey = secretKey
            self.publishableKey = publishableKey
            self.baseURL = baseURL
            self.timeoutSeconds = timeoutSeconds
            self.paymentMethodTypes = paymentMethodTypes
            self.apiVersion = apiVersion
        }
    }

    package struct ConfigurationError: Error, CustomStringConvertible {
        package let description: String
    }

    package let isSandbox = false
    package var publishableKey: String? { configuration.publishableKey }

    private let client: HTTPClient
    private let configuration: Configuration
    private let baseURL: String
    private let logger: Logger
    private var deferred: [UInt64: LoopTimer] = [:]
    private var nextDeferred: UInt64 = 1

    /// Response headers kept for logs: Stripe's request id (what its support asks for) and whether an idempotent
    /// request was replayed.
    private static let loggedHeaders = ["request-id", "idempotent-replayed", "stripe-should-retry"]

    package init(client: HTTPClient, configuration: Configuration, logger: Logger) throws {
        var base = configuration.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        guard let url = HTTPClientURL(base + "/"), url.path == "/" else {
            throw ConfigurationError(description: "the Stripe base URL must be http(s)://host[:port] without a path")
        }
        guard !configuration.secretKey.isEmpty,
            configuration.secretKey.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else { throw ConfigurationError(description: "the Stripe secret key is empty or holds invalid characters") }
        self.client = client
        self.configuration = configuration
        self.baseURL = base
        self.logger = logger
    }

    // MARK: PaymentGateway

    package func createPaymentIntent(amount: Int64, idempotencyKey: String, metadata: [String: String],
                                     completion: @escaping PaymentCompletion)
    {
        guard amount > 0 else { return refuseLater("invalid_amount", "amount must be positive", completion) }
        var form = FormBody()
        form.add("amount", String(amount))
        form.add("currency", "usd")
        form.add("capture_method", "manual")
        for type in configuration.paymentMethodTypes { form.add("payment_method_types", "", type) }
        form.add("metadata", dictionary: metadata)
        post("create", "/v1/payment_intents", form, idempotencyKey: idempotencyKey, intent: nil,
             expecting: nil, completion)
    }

    package func retrieve(_ id: String, completion: @escaping PaymentCompletion) {
        guard Self.isValidID(id) else { return refuseLater("invalid_id", "not a PaymentIntent id", completion) }
        send("retrieve", .get, "/v1/payment_intents/\(id)", body: [], idempotencyKey: nil, intent: id,
             expecting: nil, completion)
    }

    package func capture(_ id: String, amount: Int64, idempotencyKey: String,
                         completion: @escaping PaymentCompletion)
    {
        guard Self.isValidID(id) else { return refuseLater("invalid_id", "not a PaymentIntent id", completion) }
        guard amount > 0 else { return refuseLater("invalid_amount", "amount must be positive", completion) }
        var form = FormBody()
        form.add("amount_to_capture", String(amount))
        post("capture", "/v1/payment_intents/\(id)/capture", form, idempotencyKey: idempotencyKey, intent: id,
             expecting: ["succeeded", "processing"], completion)
    }

    package func cancel(_ id: String, idempotencyKey: String, completion: @escaping PaymentCompletion) {
        guard Self.isValidID(id) else { return refuseLater("invalid_id", "not a PaymentIntent id", completion) }
        post("cancel", "/v1/payment_intents/\(id)/cancel", FormBody(), idempotencyKey: idempotencyKey, intent: id,
             expecting: ["canceled"], completion)
    }

    // MARK: Calls

    private func post(_ call: String, _ path: String, _ form: FormBody, idempotencyKey: String, intent: String?,
                      expecting: Set<String>?, _ completion: @escaping PaymentCompletion)
    {
        guard Self.isValidIdempotencyKey(idempotencyKey) else {
            return refuseLater("invalid_idempotency_key", "idempotency keys are 1 to 255 visible ASCII characters",
                               completion)
        }
        send(call, .post, path, body: form.bytes, idempotencyKey: idempotencyKey, intent: intent,
             expecting: expecting, completion)
    }

    private func send(_ call: String, _ method: HTTPClient.Method, _ path: String, body: [UInt8],
                      idempotencyKey: String?, intent: String?, expecting: Set<String>?,
                      _ completion: @escaping PaymentCompletion)
    {
        var headers = [HTTPClient.Header("Authorization", "Bearer \(configuration.secretKey)"),
                       HTTPClient.Header("Accept", "application/json")]
        if let version = configuration.apiVersion { headers.append(.init("Stripe-Version", version)) }
        if method == .post {
            headers.append(.init("Content-Type", "application/x-www-form-urlencoded"))
            if let idempotencyKey { headers.append(.init("Idempotency-Key", idempotencyKey)) }
        }
        let request = HTTPClient.Request(method: method, url: baseURL + path, headers: headers, body: body,
                                         timeoutSeconds: configuration.timeoutSeconds,
                                         extraResponseHeaders: Self.loggedHeaders)
        client.send(request) { [logger] result in
            var outcome: Result<PaymentIntent, PaymentError>
            var metadata: Logger.Metadata = ["call": "\(call)"]
            if let intent { metadata["intent"] = "\(intent)" }
            switch result {
            case .failure(let failure):
                outcome = .failure(StripeResponse.error(from: failure))
            case .success(let response):
                metadata["http_status"] = "\(response.status)"
                if let requestID = response.header("request-id") { metadata["request_id"] = "\(requestID)" }
                outcome = StripeResponse.paymentIntent(from: response)
                if case .success(let paymentIntent) = outcome, let expecting,
                    !expecting.contains(paymentIntent.status)
                {
                    outcome = .failure(.refused(
                        code: "unexpected_status",
                        message: "\(call) of \(paymentIntent.id) answered with status \(paymentIntent.status)"))
                }
            }
            switch outcome {
            case .success(let paymentIntent):
                metadata["status"] = "\(paymentIntent.status)"
                logger.debug("Stripe call succeeded", metadata: metadata)
            case .failure(.unavailable(let why)):
                metadata["error"] = "\(why)"
                logger.warning("Stripe unavailable", metadata: metadata)
            case .failure(.refused(let code, let message)):
                metadata["code"] = "\(code)"
                metadata["error"] = "\(message)"
                logger.warning("Stripe refused a call", metadata: metadata)
            }
            completion(outcome)
        }
    }

    /// Refuses a call that cannot be sent, on a later turn of the loop (completions never run inside the call).
    private func refuseLater(_ code: String, _ message: String, _ completion: @escaping PaymentCompletion) {
        let id = nextDeferred
        nextDeferred += 1
        let timer = LoopTimer(loop: client.loop) { [weak self] in
            self?.deferred[id] = nil
            completion(.failure(.refused(code: code, message: message)))
        }
        deferred[id] = timer
        timer.start(after: 0)
    }

    /// Stripe ids are `pi_` and letters, digits and underscores; anything else would change the path.
    static func isValidID(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 255 && id.utf8.allSatisfy { byte in
            (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122) || byte == 95
        }
    }

    static func isValidIdempotencyKey(_ key: String) -> Bool {
        !key.isEmpty && key.utf8.count <= 255 && key.utf8.allSatisfy { $0 > 0x20 && $0 < 0x7F }
    }
}
