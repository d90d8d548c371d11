import AgentChatProtocol

/// Properties:
/// - `JSONParser.parse` returns or throws for every input, its depth limit holding (no stack overflow);
/// - a parsed value written by `JSONWriter` parses again to an equal value, and writing that gives the same bytes.
@_cdecl("LLVMFuzzerTestOneInput")
func fuzzJSON(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    guard let value = try? JSONParser.parse(bytes) else { return 0 }
    let written = JSONWriter.encode(value)
    let reparsed: JSONValue
    do {
        reparsed = try JSONParser.parse(written)
    } catch {
        preconditionFailure("JSONWriter wrote what JSONParser refuses (\(error)): \(String(decoding: written, as: UTF8.self))")
    }
    precondition(reparsed == value, "parse(write(v)) != v for \(String(decoding: written, as: UTF8.self))")
    precondition(JSONWriter.encode(reparsed) == written, "JSONWriter is not deterministic")
    return 0
}
