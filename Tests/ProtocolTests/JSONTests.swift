import AgentChatProtocol
import Testing

@Suite struct JSONParserTests {
    static let valid: [(String, JSONValue)] = [
        ("{}", JSONValue.object([:])),
        ("[]", .array([])),
        (" {\"a\" : [1, -2.5, true, false, null, \"x\"]} ", ["a": [1, .number(-2.5), true, false, nil, "x"]]),
        ("\"\\u00e9\\ud83d\\ude00\\n\\\"\"", .string("é😀\n\"")),
        // Runs of plain bytes (ASCII and multi-byte UTF-8) around escapes, and a string without any.
        ("\"ab é\\tcd\\u0041ef😀\\\\\"", .string("ab é\tcdAef😀\\")),
        ("\"eyJhbGciOiJFZERTQSJ9.e30\"", .string("eyJhbGciOiJFZERTQSJ9.e30")),
        ("1e3", .number(1000)),
        ("0", .number(0)),
    ]

    @Test(arguments: valid)
    func parsesValidJSON(text: String, expected: JSONValue) throws {
        #expect(try JSONParser.parse(text) == expected)
    }

    @Test(arguments: [
        "", "{", "{\"a\":1,}", "[1,]", "01", "1.", "-", "NaN", "{\"a\":1}x", "'a'", "{a:1}", "\"\\ud800\"",
        "\"\\udc00\"", "\"\u{01}\"", "{\"a\":1,\"a\":2}", "[1 2]", "tru", "\"\\x\"", "1e999",
    ])
    func rejectsInvalidJSON(text: String) {
        #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(text) }
    }

    @Test func rejectsInvalidUTF8InStrings() {
        #expect(throws: JSONParser.Failure.self) { try JSONParser.parse([0x22, 0xC3, 0x28, 0x22]) }
    }

    @Test func limitsNestingDepth() throws {
        let deep = String(repeating: "[", count: 40) + String(repeating: "]", count: 40)
        #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(deep) }
        // At most 32 containers deep, counting the outermost, whether or not the innermost is empty.
        func nested(_ levels: Int, innermost: String) -> String {
            String(repeating: "[", count: levels - 1) + innermost + String(repeating: "]", count: levels - 1)
        }
        for innermost in ["[]", "{}", "[1]", #"{"a":1}"#] {
            #expect(throws: Never.self, "32 levels, innermost \(innermost)") {
                try JSONParser.parse(nested(32, innermost: innermost))
            }
            #expect(throws: JSONParser.Failure.self, "33 levels, innermost \(innermost)") {
                try JSONParser.parse(nested(33, innermost: innermost))
            }
        }
        let shallow = String(repeating: "[", count: 10) + String(repeating: "]", count: 10)
        _ = try JSONParser.parse(shallow)
    }

    @Test func writerRoundTripsAndSortsKeys() throws {
        let value: JSONValue = ["b": 1, "a": ["x\n\"\\\u{01}", .number(2.5), true, nil], "c": [:]]
        let bytes = JSONWriter.encode(value)
        #expect(String(decoding: bytes, as: UTF8.self) == #"{"a":["x\n\"\\\u0001",2.5,true,null],"b":1,"c":{}}"#)
        #expect(try JSONParser.parse(bytes) == value)
    }
}
