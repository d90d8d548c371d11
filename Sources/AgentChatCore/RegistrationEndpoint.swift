import AgentChatCrypto
import AgentChatProtocol

/// `POST /api/v1/agents/register`: checks shape, clock and signature without touching Redis, then the
/// per-address rate limit, then stores the profile, with the request's timestamp and signature so that clients can
/// verify it, if the key is new. Loop-bound.
struct RegistrationEndpoint {
    static let path = "/api/v1/agents/register"

    let agents: any AgentDirectory
    let rateLimiter: any RateLimiting
    let clock: any BrokerClock
    let perMinute: Int

    func handle(_ request: HTTPRequest, respond: @escaping (HTTPResponse) -> Void) {
        let contentType = request.headers["content-type"]?.lowercased() ?? ""
        guard contentType == "application/json" || contentType.hasPrefix("application/json;") else {
            return respond(.error(415, .unsupportedMediaType, "send the body as application/json"))
        }
        let registration: RegistrationRequest
        do {
            registration = try RegistrationRequest.parse(request.body)
        } catch {
            return respond(.error(400, error.code, error.message))
        }
        let now = clock.unixMilliseconds
        guard abs(now - registration.timestamp) <= RegistrationRequest.maxClockSkew else {
            return respond(.error(400, .staleTimestamp, "timestamp is more than 5 minutes from the broker's clock"))
        }
        guard SigningKeyPair.verify(signature: registration.signature, message: registration.signedBytes,
                                    publicKey: registration.signingKey)
        else {
            return respond(.error(400, .badSignature, "the signature does not verify with signingKey"))
        }
        let profile = AgentProfile(name: registration.name, signingKey: registration.signingKey,
                                   encryptionKey: registration.encryptionKey, registeredAt: now,
                                   registration: registration.selfSignature)
        let client = request.remoteAddress
        rateLimiter.take("register", client: client, perMinute: perMinute, burst: perMinute) { decision in
            switch decision {
            case .failure(let failure):
                respond(.error(503, ProtocolError(failure)))
            case .success(.limited(let retryAfter)):
                var response = HTTPResponse.error(429, .rateLimited, "too many registrations from this address")
                response.extraHeaders.append(("Retry-After", String(max(1, (retryAfter + 999) / 1000))))
                respond(response)
            case .success(.allowed):
                agents.register(profile) { result in
                    switch result {
                    case .success(.created):
                        respond(.json(201, ["did": .string(profile.did.description), "agent": profile.json]))
                    case .success(.exists):
                        respond(.json(409, [
                            "error": ["code": .string(ErrorCode.alreadyRegistered.rawValue),
                                      "message": "this signing key is registered already"],
                            "did": .string(profile.did.description),
                        ]))
                    case .failure(let failure):
                        respond(.error(503, ProtocolError(failure)))
                    }
                }
            }
        }
    }
}

/// Cross-origin access for browser clients: an allowlist of origins from configuration.
struct CORSPolicy {
    let allowedOrigins: Set<String>

    /// Answers a preflight `OPTIONS`.
    func preflight(_ request: HTTPRequest, methods: String) -> HTTPResponse {
        guard let origin = request.headers["origin"], allowedOrigins.contains(origin) else {
            return .error(403, .originNotAllowed, "this origin may not call the API")
        }
        var response = HTTPResponse(status: 204, contentType: "text/plain", body: [])
        response.extraHeaders = [
            ("Access-Control-Allow-Origin", origin), ("Access-Control-Allow-Methods", methods),
            ("Access-Control-Allow-Headers", "Content-Type"), ("Access-Control-Max-Age", "600"), ("Vary", "Origin"),
        ]
        return response
    }

    /// Adds the CORS headers to a response for an allowed origin.
    func decorate(_ response: HTTPResponse, for request: HTTPRequest) -> HTTPResponse {
        guard let origin = request.headers["origin"], allowedOrigins.contains(origin) else { return response }
        var response = response
        response.extraHeaders.append(("Access-Control-Allow-Origin", origin))
        response.extraHeaders.append(("Vary", "Origin"))
        return response
    }
}
