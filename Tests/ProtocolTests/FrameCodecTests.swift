import AgentChatProtocol
import Testing

@Suite struct FrameCodecTests {
    let codec = FrameCodec()

    private func decode(_ text: String) -> FrameCodec.Decoded { codec.decode(Array(text.utf8)) }

    @Test func decodesPingWithAndWithoutID() {
        #expect(decode(#"{"type":"ping","id":"r1"}"#) == .init(frame: .success(.ping(id: "r1")), id: "r1"))
        #expect(decode(#"{"type":"ping"}"#).frame == .success(.ping(id: nil)))
    }

    @Test(arguments: [
        (#"not json"#, ErrorCode.badJSON, nil as String?),
        (#"[1,2]"#, .badFrame, nil),
        (#"{"id":"q"}"#, .badFrame, "q"),
        (#"{"type":7,"id":"q"}"#, .badFrame, "q"),
        (#"{"type":"launch","id":"q"}"#, .unknownType, "q"),
        (#"{"type":"ping","id":5}"#, .invalidField, nil),
        (#"{"type":"ping","id":"q","extra":1}"#, .unknownField, "q"),
    ])
    func refusesBadFramesWithStableCodes(text: String, code: ErrorCode, id: String?) {
        let decoded = decode(text)
        guard case .failure(let error) = decoded.frame else {
            Issue.record("expected \(code) for \(text)")
            return
        }
        #expect(error.code == code)
        #expect(decoded.id == id)
    }

    @Test func refusesOverlongID() {
        let id = String(repeating: "x", count: 65)
        guard case .failure(let error) = decode(#"{"type":"ping","id":"\#(id)"}"#).frame else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .invalidField)
    }

    @Test func unknownTypeNamesAreShortenedInMessages() {
        let type = String(repeating: "t", count: 5000)
        guard case .failure(let error) = decode(#"{"type":"\#(type)"}"#).frame else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.message.utf8.count < 100)
    }

    @Test func encodesPongAndError() {
        let pong = String(decoding: codec.encode(.pong(ref: "r1", time: 1_704_067_200_000)), as: UTF8.self)
        #expect(pong == #"{"ref":"r1","time":1704067200000,"type":"pong"}"#)
        let error = String(decoding: codec.encode(.error(ProtocolError(.badJSON, "bad \"x\""), ref: nil)),
                           as: UTF8.self)
        #expect(error == #"{"code":"bad_json","message":"bad \"x\"","type":"error"}"#)
    }
}
