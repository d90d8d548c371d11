import AgentChatProtocol
import Testing

@testable import agentchat

/// The pure parts of `agentchat mcp`: the line check before the MCP SDK, tool arguments, the text budget, the
/// tool catalog. (Tests/MCP drives the whole server with the MCP Python SDK against a real broker.)
struct JSONRPCLineCheckTests {
    private func check(_ line: String) -> JSONRPCLineCheck.Verdict { JSONRPCLineCheck.check(Array(line.utf8)) }

    private func errorCode(_ line: String) -> (id: JSONValue?, code: Int64?) {
        guard case .reply(let response) = check(line) else { return (nil, nil) }
        return (response["id"], response["error"]?["code"]?.integerValue)
    }

    @Test func wellFormedMessagesGoToTheSDK() {
        #expect(check(#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#) == .forward)
        #expect(check(#"{"jsonrpc":"2.0","id":"a","method":"tools/list","params":{}}"#) == .forward)
        #expect(check(#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami"}}"#) == .forward)
        #expect(check(#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#) == .forward)
        #expect(check(#"{"jsonrpc":"2.0","id":3,"result":{}}"#) == .forward)
        #expect(check(#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#) == .forward)
        #expect(check("{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"ping\"}\r") == .forward)
        #expect(check(#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#) == .forward)
    }

    @Test func parseErrorsHaveANullID() {
        #expect(errorCode("not json").code == -32700)
        #expect(errorCode("not json").id == .null)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1"#).code == -32700)
    }

    @Test func invalidRequests() {
        #expect(errorCode("42").code == -32600)
        #expect(errorCode("[]").code == -32600)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1}"#) == (.number(1), -32600))
        #expect(errorCode(#"{"jsonrpc":"1.0","id":1,"method":"ping"}"#) == (.number(1), -32600))
        #expect(errorCode(#"{"id":1,"method":"ping"}"#).code == -32600)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":7}"#).code == -32600)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#) == (.null, -32600))
        #expect(errorCode(#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#) == (.null, -32600))
    }

    @Test func invalidParams() {
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#).code == -32602)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":3}}"#).code == -32602)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":[]}}"#).code == -32602)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"ping","params":[1]}"#).code == -32602)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25"}}"#).code == -32602)
        #expect(errorCode(#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"cursor":5}}"#).code == -32602)
    }

    @Test func invalidNotificationsGetNoAnswer() {
        if case .ignore = check(#"{"jsonrpc":"1.0","method":"notifications/initialized"}"#) {} else { Issue.record("answered") }
        if case .ignore = check(#"{"jsonrpc":"2.0","method":"x","params":[1]}"#) {} else { Issue.record("answered") }
        #expect(check("   ") == .ignore(nil))
    }
}

struct ToolArgumentTests {
    @Test func typesAndBounds() throws {
        let args = try ToolArguments(["n": 5, "s": "x", "b": true, "f": .number(2.5), "a": ["p", "q"], "z": .null],
                                     allowed: ["n", "s", "b", "f", "a", "z", "absent"])
        #expect(try args.integer("n", in: 1...10) == 5)
        #expect(try args.integer("absent", in: 1...10) == nil)
        #expect(try args.integer("z", in: 1...10) == nil)
        #expect(throws: ToolFailure.self) { try args.integer("n", in: 6...10) }
        #expect(throws: ToolFailure.self) { try args.integer("f", in: 0...10) }
        #expect(throws: ToolFailure.self) { try args.integer("s", in: 0...10) }
        #expect(try args.string("s") == "x")
        #expect(throws: ToolFailure.self) { try args.string("n") }
        #expect(throws: ToolFailure.self) { try args.requiredString("absent") }
        #expect(try args.bool("b") == true)
        #expect(try args.stringArray("a", maxCount: 2) == ["p", "q"])
        #expect(throws: ToolFailure.self) { try args.stringArray("a", maxCount: 1) }
        #expect(throws: ToolFailure.self) { try args.channel("s") }
    }

    @Test func unknownArgumentsAreRefused() {
        do {
            _ = try ToolArguments(["chanel": "x"], allowed: ["channel"])
            Issue.record("accepted")
        } catch {
            #expect(error.code == "invalid_argument")
            #expect(error.message.contains("chanel") && error.message.contains("channel"))
        }
    }
}

struct BudgetTests {
    private func message(_ offset: Int64, _ text: String?) -> MessageView {
        MessageView(offset: offset, timestamp: 0, sender: "did:agentchat:z", senderName: nil, text: text,
                    failure: text == nil ? "bad_signature" : nil)
    }

    @Test func keepsWholeMessagesWithinTheBudget() {
        let messages = [message(1, "aaaa"), message(2, "bbbb"), message(3, "cc")]
        #expect(fitToBudget(messages, maxChars: 8).map(\.offset) == [1, 2])
        #expect(fitToBudget(messages, maxChars: 10).map(\.offset) == [1, 2, 3])
        #expect(fitToBudget([], maxChars: 10).isEmpty)
    }

    @Test func cutsOnlyAFirstMessageOverTheBudget() {
        let kept = fitToBudget([message(1, "abcdefghij"), message(2, "k")], maxChars: 4)
        #expect(kept.count == 1)
        #expect(kept[0].text == "abcd" && kept[0].truncatedFrom == 10)
        #expect(kept[0].json["truncatedFromChars"] == .number(10))
    }

    @Test func failedMessagesShowNoText() {
        let json = message(7, nil).json
        #expect(json["text"] == nil)
        #expect(json["verified"] == .bool(false))
        #expect(json["error"]?.stringValue?.contains("bad_signature") == true)
    }
}

struct CatalogTests {
    @Test func everyToolIsDescribed() {
        #expect(Set(MCPToolCatalog.all.map(\.name)).count == MCPToolCatalog.all.count)
        for spec in MCPToolCatalog.all {
            #expect(spec.description.count > 60, "\(spec.name)")
            #expect(Set(spec.required).isSubset(of: spec.argumentNames), "\(spec.name)")
            #expect(spec.inputSchema["type"] == "object")
            #expect(spec.inputSchema["additionalProperties"] == .bool(false))
        }
    }

    @Test func valuesConvertBothWays() {
        let value: JSONValue = ["a": [1, .number(2.5), "x", .null, true], "b": ["c": .number(-3)]]
        #expect(jsonValue(mcpValue(value)) == value)
    }
}
