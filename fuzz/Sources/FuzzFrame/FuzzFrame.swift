import AgentChatProtocol

let codec = FrameCodec()

/// Properties of `FrameCodec.decode` (one WebSocket text message from a client):
/// - it returns for every input, the same result twice;
/// - an echoed `id` is at most `maxFrameIDBytes` long;
/// - a refused frame gets an `error` reply that is valid JSON, carries the code, message and `ref` it was given,
///   and stays small (at most `maxErrorReplyBytes`) whatever the frame held;
/// - an accepted frame holds only identifiers that re-parse to themselves, and written back by the client side of
///   the codec (`FrameCodec.encode(ClientFrame)`) it decodes to the same frame: decode(encode(decode(s))) == decode(s).
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzFrame(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    let decoded = codec.decode(bytes)
    precondition(codec.decode(bytes) == decoded, "decode is not deterministic")
    if let id = decoded.id { precondition(id.utf8.count <= codec.limits.maxFrameIDBytes, "id of \(id.utf8.count) bytes") }

    switch decoded.frame {
    case .failure(let error):
        let reply = codec.encode(.error(error, ref: decoded.id))
        precondition(reply.count <= maxErrorReplyBytes, "an error reply of \(reply.count) bytes for a \(size)-byte frame")
        guard case .object(let object)? = try? JSONParser.parse(reply) else {
            preconditionFailure("the error reply is not a JSON object: \(String(decoding: reply, as: UTF8.self))")
        }
        precondition(object["type"] == "error" && object["code"] == .string(error.code.rawValue))
        precondition(object["message"] == .string(error.message), "the error message did not survive encoding")
        precondition(object["ref"] == decoded.id.map(JSONValue.string), "ref is not the request's id")
    case .success(let frame):
        checkIdentifiers(frame)
        let written = codec.encode(frame)
        let again = codec.decode(written)
        precondition(again.frame == .success(frame),
                     "decode(encode(frame)) != frame: \(String(decoding: written, as: UTF8.self)) gave \(again.frame)")
    }
    return 0
}

/// Generous bound on an error reply: code, message with a shortened echo of the offending text, 64-byte ref.
let maxErrorReplyBytes = 1024

private func checkIdentifiers(_ frame: ClientFrame) {
    func check(_ channel: ChannelID) { precondition(ChannelID(channel.rawValue) == channel) }
    func check(_ did: DID) { precondition(DID(parsing: did.description) == did) }
    switch frame {
    case .ping: break
    case .auth(_, .token(let token)): precondition(token.utf8.count <= 8192)
    case .auth(_, .signature(let did, let signature)): check(did); precondition(signature.count == 64)
    case .viewer(_, .subscribe(let ids)): ids.forEach(check); precondition(Set(ids).count == ids.count)
    case .viewer: break
    case .channel(_, let request):
        switch request {
        case .create(_, _, let members): members.forEach(check); precondition(Set(members).count == members.count)
        case .invite(let c, let d), .remove(let c, let d): check(c); check(d)
        case .join(let c), .leave(let c), .describe(let c), .rotate(let c), .unsubscribe(let c), .getKeys(let c, _),
            .subscribe(let c, _, _), .history(let c, _, _, _), .listing(let c, _, _, _):
            check(c)
        case .publishKeys(let keys):
            check(keys.channel)
            keys.envelopes.keys.forEach(check)
            precondition(keys.epoch > 0 && !keys.envelopes.isEmpty)
        case .send(let message):
            check(message.channel)
            precondition(message.epoch > 0)
            precondition(Base64URL.decode(message.nonce)?.count == 12)
            precondition(Base64URL.decode(message.signature)?.count == 64)
        case .list(let after, let limit), .unread(let after, let limit):
            after.map(check)
            precondition((1...100).contains(limit))
        case .setCursor(let c, let offset):
            check(c)
            precondition(offset >= 0)
        }
    case .peek(_, let request):
        switch request {
        case .request(let c, let key): check(c); precondition(key.count == 32)
        case .confirm(let c, let peek, _), .status(let c, let peek, _), .refuse(let c, let peek):
            check(c); precondition(peek.hasPrefix("pk_") && peek.utf8.count == 25)
        case .grant(let c, let peek, let grant):
            check(c); check(grant.sender); precondition(peek.utf8.count == 25 && grant.epoch > 0)
            precondition(grant.ephemeralKey.count == 32 && grant.nonce.count == 12 && grant.ciphertext.count == 48)
        case .earnings(let limit): precondition((1...500).contains(limit))
        }
    }
}
