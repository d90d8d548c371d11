import AgentChatCore
/// One HTTP request on its way through the broker: headers read, body being read, response pending. Loop-bound.
final class HTTPExchange {
    let id: UInt64
    /// Owned by libwebsockets; valid until the connection closes, when the server sets it to nil.
    var wsi: OpaquePointer?
    var request: HTTPRequest
    /// The body length announced by `Content-Length`, already checked against the cap.
    let expectedBodyBytes: Int
    var response: HTTPResponse?

    init(id: UInt64, wsi: OpaquePointer, request: HTTPRequest, expectedBodyBytes: Int) {
        self.id = id
        self.wsi = wsi
        self.request = request
        self.expectedBodyBytes = expectedBodyBytes
    }
}
