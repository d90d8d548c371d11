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
    /// a 60 KB would-be DID held the event loop for seconds, before login. It is now refused on length alone.
    @Test func overlongDIDIsRefusedWithoutDecodingIt() {
        let text = "did:agentchat:z" + String(repeating: "2", count: 60_000)
        let clock = ContinuousClock()
        let elapsed = clock.measure { #expect(DID(parsing: text) == nil) }
        #expect(elapsed < .milliseconds(100), "took \(elapsed)")

        let frame = #"{"type":"channel.keys","channel":"ch_AAECAwQFBgcICQoLDA0ODw","epoch":1,"signature":"x","envelopes":{"\#(text)":"AA"}}"#
        let started = clock.now
        #expect(refusal(frame)?.code == .invalidField)
        #expect(clock.now - started < .milliseconds(500))
    }

    @Test func longestValidDIDStillParses() {
        for fill: UInt8 in [0x00, 0x7F, 0xFF] {
            let did = DID(signingKey: [UInt8](repeating: fill, count: 32))
            #expect(DID(parsing: did.description) == did)
            #expect(did.description.utf8.count == 62)
        }
    }
}
