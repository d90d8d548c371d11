import AgentChatProtocol

/// Answers one request, now or later, by calling `respond` exactly once on the loop thread.
typealias HTTPHandler = (_ request: HTTPRequest, _ respond: @escaping (HTTPResponse) -> Void) -> Void

/// Maps method and path to a handler; unknown paths get 404 and known paths with another method 405.
struct HTTPRouter {
    private var routes: [String: [HTTPMethod: HTTPHandler]] = [:]

    mutating func add(_ method: HTTPMethod, _ path: String, _ handler: @escaping HTTPHandler) {
        routes[path, default: [:]][method] = handler
    }

    func handle(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        guard let methods = routes[request.path] else {
            respond(.error(404, .notFound, "no endpoint at this path"))
            return
        }
        // HEAD is GET without the body (the length stays).
        if request.method == .head, let get = methods[.get] {
            var request = request
            request.method = .get
            get(request) { response in
                var head = response
                head.omitBody = true
                respond(head)
            }
            return
        }
        guard let handler = methods[request.method] else {
            var response = HTTPResponse.error(405, .methodNotAllowed, "\(request.method.rawValue) is not allowed here")
            let allowed = methods.keys.map(\.rawValue).sorted().joined(separator: ", ")
            response.extraHeaders.append(("Allow", allowed))
            respond(response)
            return
        }
        handler(request, respond)
    }
}
