import AgentChatProtocol
import Testing

/// Findings of the fuzz targets in fuzz/ (see docs/FUZZING.md), one test each, so they stay fixed.
@Suite struct FuzzRegressionTests {
    let codec = FrameCodec()

    /// The `message` of the error a frame is refused with.
    private func refusal(_ text: String) -> ProtocolError? {
        if case .failure(let error) = codec.decode(Array(text.utf8)).frame { return error }
        return nil
    }

    /// A DID arrives as an unbounded JSON object key (`channel.keys` envelopes) and base58 decoding is quadratic:
    /// a 60 KB would-be DID held the event loop for seconds, before login. It is now refused on length alone, so
    /// even a 4 MB one is refused at once (decoding that one would take hours; no duration is asserted).
    @Test func overlongDIDIsRefusedWithoutDecodingIt() {
        let text = "did:agentchat:z" + String(repeating: "2", count: 60_000)
        #expect(DID(parsing: text) == nil)
        #expect(DID(parsing: "did:agentchat:z" + String(repeating: "2", count: 4_000_000)) == nil)

        let frame = #"{"type":"channel.keys","channel":"ch_AAECAwQFBgcICQoLDA0ODw","epoch":1,"signature":"x","envelopes":{"\#(text)":"AA"}}"#
        #expect(refusal(frame)?.code == .invalidField)
    }

    @Test func longestValidDIDStillParses() {
        for fill: UInt8 in [0x00, 0x7F, 0xFF] {
            let did = DID(signingKey: [UInt8](repeating: fill, count: 32))
            #expect(DID(parsing: did.description) == did)
            #expect(did.description.utf8.count == 62)
        }
    }

    /// An unknown type is echoed "shortened": it was shortened to 32 characters, and one character can carry any
    /// number of combining marks, so a 60 KB type came back whole in the error.
    @Test func unknownTypeEchoIsShortInBytes() throws {
        let type = String(repeating: "a" + String(repeating: "\u{301}", count: 500), count: 40)
        let error = try #require(refusal(#"{"type":"\#(type)"}"#))
        #expect(error.code == .unknownType)
        #expect(error.message.utf8.count < 100, "\(error.message.utf8.count) bytes")
    }

    @Test func unknownFieldEchoIsShortInBytes() throws {
        let field = String(repeating: "\u{1F600}", count: 2_000)
        let error = try #require(refusal(#"{"type":"ping","\#(field)":1}"#))
        #expect(error.code == .unknownField)
        #expect(error.message.utf8.count < 100, "\(error.message.utf8.count) bytes")
    }

    /// A duplicate key was echoed whole in the bad_json message.
    @Test func duplicateKeyEchoIsShort() throws {
        let key = String(repeating: "k", count: 30_000)
        let error = try #require(refusal(#"{"type":"ping","\#(key)":1,"\#(key)":2}"#))
        #expect(error.code == .badJSON)
        #expect(error.message.utf8.count < 120, "\(error.message.utf8.count) bytes")
        #expect(error.message.contains("duplicate key"))
    }

    @Test func shortenedEchoKeepsWholeScalars() throws {
        let type = String(repeating: "\u{1F600}", count: 10)  // 40 bytes: 8 whole scalars fit in 32
        let error = try #require(refusal(#"{"type":"\#(type)"}"#))
        #expect(error.message == "unknown frame type \"" + String(repeating: "\u{1F600}", count: 8) + "…\"")
    }
}
