import AgentChatProtocol

/// The broker's HTTP input parsed in pure Swift; the first input byte picks which, the rest is the input.
///
/// Even selector: a request head, `HTTPRequestHeadValidator.evaluate` (what `HTTPHeadGate` runs on every new
/// connection before libwebsockets sees it). Properties: it returns for every input, the same verdict twice and the
/// same verdict for any longer input that starts with an accepted head (bytes after the head are never read); an
/// accepted head has a known method, an origin-form target starting with `/`, HTTP/1.1 or HTTP/1.0, no control
/// characters in the target, no `Transfer-Encoding` or `h2c` upgrade, and its byte count ends at CRLF CRLF within
/// the limit; a refusal is a 4xx/5xx with a JSON-able message of at most 1 KiB; an input cut short of an accepted
/// head is never refused for its length.
///
/// Odd selector: the body of `POST /api/v1/agents/register` (`RegistrationRequest.parse`). Properties: parse
/// returns or throws for every body; what it accepts has 32-byte keys and a 64-byte signature whose base64url
/// texts are the canonical encodings, a valid name, and signed bytes that start with the protocol's prefix.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzHTTP(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] % 2 == 0 { checkHead(bytes) } else { checkRegistration(bytes) }
    return 0
}

let validator = HTTPRequestHeadValidator()

private func checkHead(_ bytes: [UInt8]) {
    let verdict = validator.evaluate(bytes)
    precondition(validator.evaluate(bytes) == verdict, "evaluate is not deterministic")
    switch verdict {
    case .incomplete:
        precondition(bytes.count < validator.limits.maxHeadBytes, "incomplete at \(bytes.count) bytes")
    case .refused(let refusal):
        precondition((400...599).contains(refusal.status), "status \(refusal.status)")
        precondition(refusal.message.utf8.count <= 1024, "a refusal message of \(refusal.message.utf8.count) bytes")
    case .accepted(let head):
        precondition(HTTPRequestHeadValidator.methods.contains(head.method), "method \(head.method)")
        precondition(head.target.hasPrefix("/"), "target \(head.target)")
        precondition(!head.target.unicodeScalars.contains { $0.value < 0x21 || $0.value == 0x7F }, "control in target")
        precondition(head.version == "HTTP/1.1" || head.version == "HTTP/1.0", "version \(head.version)")
        precondition(head.value(of: "transfer-encoding") == nil, "Transfer-Encoding accepted")
        precondition(head.value(of: "upgrade")?.lowercased().contains("h2c") != true, "h2c accepted")
        precondition(head.byteCount <= min(bytes.count, validator.limits.maxHeadBytes), "head past the input")
        precondition(bytes[..<head.byteCount].suffix(4).elementsEqual([13, 10, 13, 10]), "head does not end at CRLF CRLF")
        // What follows the head is not read: the verdict on the head alone is the same.
        precondition(validator.evaluate(Array(bytes[..<head.byteCount])) == verdict, "the verdict read past the head")
        // A head cut short is waited for, never refused.
        let cut = Array(bytes[..<(head.byteCount - 1)])
        if case .refused(let refusal) = validator.evaluate(cut) {
            preconditionFailure("a prefix of an accepted head was refused: \(refusal)")
        }
    }
}

private func checkRegistration(_ bytes: [UInt8]) {
    guard let request = try? RegistrationRequest.parse(bytes) else { return }
    precondition(request.signingKey.count == 32 && request.encryptionKey.count == 32)
    precondition(request.signature.count == 64)
    precondition(Base64URL.encode(request.signingKey) == request.signingKeyText)
    precondition(Base64URL.encode(request.encryptionKey) == request.encryptionKeyText)
    precondition(RegistrationRequest.isValidName(request.name))
    precondition(request.signedBytes.starts(with: Array("agentchat-register-v1\n".utf8)))
    precondition((try? RegistrationRequest.parse(bytes)) == request, "parse is not deterministic")
}
