import AgentChatProtocol

/// The first byte picks the codec, the rest is its input. Properties:
/// - Base64URL and Base58: decode(encode(x)) == x for all bytes x; for every text s that decodes,
///   encode(decode(s)) == s (both decoders accept only the canonical spelling);
/// - DID: a parsed DID prints as the text it was parsed from and equals the DID of its key; the DID of any
///   32-byte key parses back to itself;
/// - ChannelID: the same, for `ch_` + base64url of 16 bytes.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzEncoding(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    guard size > 0, let data else { return 0 }
    let selector = data[0]
    let input = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    let text = String(decoding: input, as: UTF8.self)
    switch selector % 6 {
    case 0:
        let encoded = Base64URL.encode(input)
        precondition(encoded.utf8.count == (input.count * 4 + 2) / 3, "base64url length")
        precondition(Base64URL.decode(encoded) == input, "base64url decode(encode(x)) != x")
    case 1:
        if let decoded = Base64URL.decode(utf8: input) {
            precondition(Array(Base64URL.encode(decoded).utf8) == input, "base64url accepted a non-canonical text")
            precondition(Base64URL.decode(text) == decoded)
        }
    case 2:
        let encoded = Base58.encode(input)
        precondition(Base58.decode(encoded) == input, "base58 decode(encode(x)) != x")
    case 3:
        if let decoded = Base58.decode(text) {
            precondition(Base58.encode(decoded) == text, "base58 accepted a non-canonical text")
        }
    case 4:
        if let did = DID(parsing: text) {
            precondition(did.description.utf8.elementsEqual(input), "a DID prints differently from how it parsed")
            precondition(did == DID(signingKey: did.signingKey))
        }
        if input.count >= 32 {
            let did = DID(signingKey: Array(input.prefix(32)))
            precondition(DID(parsing: did.description) == did, "DID(parsing: DID(key).description) != DID(key)")
        }
    default:
        if let id = ChannelID(text) {
            precondition(id.rawValue.utf8.elementsEqual(input), "a channel id prints differently from how it parsed")
            let random = Base64URL.decode(String(text.dropFirst(3)))
            precondition(random?.count == 16 && ChannelID(randomBytes: random!) == id)
        }
        if input.count >= 16 {
            let id = ChannelID(randomBytes: Array(input.prefix(16)))
            precondition(ChannelID(id.rawValue) == id)
        }
    }
    return 0
}
