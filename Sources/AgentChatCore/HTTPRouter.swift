import AgentChatProtocol

/// Answers one request, now or later, by calling `respond` exactly once on the loop thread.
typealias HTTPHandler = (_ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) -> Void

/// Maps method and path to a handler; unknown paths get 404 and known paths with another method 405. Responses to
/// HEAD keep their headers (the length included) and drop the body.
struct HTTPRouter {
    private var routes: [String: [HTTPMethod: HTTPHandler]] = [:]

    mutating func add(_ method: HTTPMethod, _ path: String, _ handler: @escaping HTTPHandler) {
        routes[path, default: [:]][method] = handler
    }

    func handle(_ request: HTTPRequest, respond answer: @escaping (HTTPResponse) -> Void) {
        // A response to HEAD never carries a body, errors included (RFC 9110 §9.3.2).
        let respond: (HTTPResponse) -> Void = request.method != .head ? answer : { response in
            var head = response
            head.omitBody = true
            answer(head)
        }
        guard let methods = routes[request.path] else {
            respond(.error(404, .notFound, "no endpoint at this path"))
            return
        }
        // HEAD is GET without the body (the length stays).
        if request.method == .head, let get = methods[.get] {
            var request = request
            request.method = .get
            get(request, respond)
            return
        }
        guard let handler = methods[request.method] else {
            var response = HTTPResponse.error(405, .methodNotAllowed, "\(request.method.rawValue) is not allowed here")
            // HEAD is served wherever GET is, so it is allowed there too.
            var allowed = Set(methods.keys)
            if allowed.contains(.get) { allowed.insert(.head) }
            let allow = allowed.map(\.rawValue).sorted().joined(separator: ", ")
            response.extraHeaders.append(("Allow", allow))
            respond(response)
            return
        }
        handler(request, respond)
    }
}
