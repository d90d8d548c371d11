import AgentChatProtocol

/// HTTP methods the broker recognises.
package enum HTTPMethod: String, Sendable {
    case get = "GET", post = "POST", put = "PUT", patch = "PATCH", delete = "DELETE", options = "OPTIONS"
    case head = "HEAD"
}

/// One HTTP request, with its body already read and capped.
package struct HTTPRequest: Sendable {
    package var method: HTTPMethod
    package var path: String
    /// Lower-case names.
    package var headers: [String: String] = [:]
    package var body: [UInt8] = []
    /// The peer's IP address, for per-address limits.
    package var remoteAddress = "unknown"

    package init(method: HTTPMethod, path: String, headers: [String: String] = [:], body: [UInt8] = [],
                 remoteAddress: String = "unknown")
    {
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
    }
}

/// One HTTP response, serialised whole and written from the writeable callback.
package struct HTTPResponse: Sendable, Equatable {
    package var status: Int
    package var contentType: String
    package var body: [UInt8]
    package var extraHeaders: [(String, String)] = []
    package var cacheControl = "no-store"
    /// An answer to HEAD: headers (with the full Content-Length) and no body.
    package var omitBody = false
    /// Close the connection after this response (`Connection: close`). The server sets it on every response: a
    /// second request on a connection would reach libwebsockets' parser without `HTTPRequestHeadValidator`.
    package var closeConnection = false

    package init(status: Int, contentType: String, body: [UInt8], extraHeaders: [(String, String)] = [],
                 cacheControl: String = "no-store")
    {
        self.status = status
        self.contentType = contentType
        self.body = body
        self.extraHeaders = extraHeaders
        self.cacheControl = cacheControl
    }

    package static func == (a: HTTPResponse, b: HTTPResponse) -> Bool {
        a.status == b.status && a.contentType == b.contentType && a.body == b.body && a.cacheControl == b.cacheControl
            && a.closeConnection == b.closeConnection && a.extraHeaders.elementsEqual(b.extraHeaders, by: ==)
    }

    package static func json(_ status: Int, _ value: JSONValue) -> HTTPResponse {
        HTTPResponse(status: status, contentType: "application/json", body: JSONWriter.encode(value))
    }

    /// The JSON error body every failed request gets: `{"error":{"code":...,"message":...}}`.
    package static func error(_ status: Int, _ code: ErrorCode, _ message: String) -> HTTPResponse {
        json(status, ["error": ["code": .string(code.rawValue), "message": .string(message)]])
    }

    package static func error(_ status: Int, _ error: ProtocolError) -> HTTPResponse {
        self.error(status, error.code, error.message)
    }

    /// Status line, headers and body, ready for the socket.
    package func serialized() -> [UInt8] {
        var head = "HTTP/1.1 \(status) \(Self.reason(status))\r\n"
        head += "Content-Type: \(contentType)\r\n"
        head += "Content-Length: \(body.count)\r\n"
        head += "Cache-Control: \(cacheControl)\r\n"
        head += "X-Content-Type-Options: nosniff\r\n"
        for (name, value) in extraHeaders { head += "\(name): \(value)\r\n" }
        if closeConnection { head += "Connection: close\r\n" }
        head += "\r\n"
        return Array(head.utf8) + (omitBody ? [] : body)
    }

    package static func reason(_ status: Int) -> String {
        switch status {
        case 101: "Switching Protocols"
        case 200: "OK"
        case 201: "Created"
        case 204: "No Content"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 408: "Request Timeout"
        case 409: "Conflict"
        case 411: "Length Required"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 415: "Unsupported Media Type"
        case 426: "Upgrade Required"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 500: "Internal Server Error"
        case 501: "Not Implemented"
        case 503: "Service Unavailable"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }
}
