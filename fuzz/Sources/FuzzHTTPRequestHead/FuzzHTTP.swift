import AgentChatProtocol

/// The broker's HTTP input that is parsed in pure Swift.
///
/// Today that is the body of `POST /api/v1/agents/register` (`RegistrationRequest.parse`): the request line and
/// headers are parsed by libwebsockets and checked inline in `WebSocketServer`. When the pure request-head
/// validator lands in AgentChatProtocol, give it the first input byte as a selector here (as fuzz-encoding does),
/// add seeds under corpus/fuzz-http-request-head/ and assert: it never crashes; what it accepts has a known method,
/// a path starting with `/` and no control characters, and at most one plain-digits Content-Length and no
/// Transfer-Encoding.
///
/// Properties now: parse returns or throws for every body; what it accepts has 32-byte keys and a 64-byte
/// signature whose base64url texts are the canonical encodings, a valid name, and signed bytes that start with the
/// protocol's prefix.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    guard let request = try? RegistrationRequest.parse(bytes) else { return 0 }
    precondition(request.signingKey.count == 32 && request.encryptionKey.count == 32)
    precondition(request.signature.count == 64)
    precondition(Base64URL.encode(request.signingKey) == request.signingKeyText)
    precondition(Base64URL.encode(request.encryptionKey) == request.encryptionKeyText)
    precondition(RegistrationRequest.isValidName(request.name))
    precondition(request.signedBytes.starts(with: Array("agentchat-register-v1\n".utf8)))
    precondition((try? RegistrationRequest.parse(bytes)) == request, "parse is not deterministic")
    return 0
}
