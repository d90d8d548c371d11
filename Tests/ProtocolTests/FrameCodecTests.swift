import AgentChatProtocol
import Testing

@Suite struct FrameCodecTests {
    let codec = FrameCodec()

    private func decode(_ text: String) -> FrameCodec.Decoded { codec.decode(Array(text.utf8)) }

    @Test func decodesPingWithAndWithoutID() {
        #expect(decode(#"{"type":"ping","id":"r1"}"#) == .init(frame: .success(.ping(id: "r1")), id: "r1", type: "ping"))
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

    @Test func channelListTakesAnOptionalCursorAndLimit() throws {
        let id = ChannelID(randomBytes: Array(repeating: 7, count: 16))
        #expect(decode(#"{"type":"channel.list","id":"l"}"#).frame == .success(.channel(id: "l", .list(after: nil, limit: 100))))
        #expect(decode(#"{"type":"channel.list","after":"\#(id.rawValue)","limit":5}"#).frame
            == .success(.channel(id: nil, .list(after: id, limit: 5))))
        for bad in [#"{"type":"channel.list","limit":0}"#, #"{"type":"channel.list","limit":101}"#,
                    #"{"type":"channel.list","after":"room"}"#, #"{"type":"channel.list","after":1}"#]
        {
            guard case .failure(let error) = decode(bad).frame else {
                Issue.record("expected a failure for \(bad)")
                continue
            }
            #expect(error.code == .invalidField)
        }
        let page = codec.encode(.channels(ref: "l", [], next: id))
        #expect(try JSONParser.parse(page)["next"]?.stringValue == id.rawValue)
    }

    @Test func unreadListPagesLikeChannelList() throws {
        let id = ChannelID(randomBytes: Array(repeating: 7, count: 16))
        #expect(decode(#"{"type":"unread.list","id":"u"}"#).frame
            == .success(.channel(id: "u", .unread(after: nil, limit: 100))))
        #expect(decode(#"{"type":"unread.list","after":"\#(id.rawValue)","limit":1}"#).frame
            == .success(.channel(id: nil, .unread(after: id, limit: 1))))
        for bad in [#"{"type":"unread.list","limit":0}"#, #"{"type":"unread.list","limit":101}"#,
                    #"{"type":"unread.list","after":"room"}"#, #"{"type":"unread.list","limit":"5"}"#]
        {
            guard case .failure(let error) = decode(bad).frame else {
                Issue.record("expected a failure for \(bad)")
                continue
            }
            #expect(error.code == .invalidField)
        }
    }

    @Test(arguments: [
        (#"{"type":"cursor.set","channel":"ch_FSIvPElWY3B9ipeksb7L2A"}"#, ErrorCode.missingField),
        (#"{"type":"cursor.set","offset":3}"#, .missingField),
        (#"{"type":"cursor.set","channel":"ch_FSIvPElWY3B9ipeksb7L2A","offset":-1}"#, .invalidField),
        (#"{"type":"cursor.set","channel":"ch_FSIvPElWY3B9ipeksb7L2A","offset":1.5}"#, .invalidField),
        (#"{"type":"cursor.set","channel":"ch_FSIvPElWY3B9ipeksb7L2A","offset":"3"}"#, .invalidField),
        (#"{"type":"cursor.set","channel":"general","offset":3}"#, .invalidField),
        (#"{"type":"cursor.set","channel":"ch_FSIvPElWY3B9ipeksb7L2A","offset":3,"read":3}"#, .unknownField),
    ])
    func cursorSetNeedsAChannelAndAnOffsetFromZero(text: String, code: ErrorCode) {
        guard case .failure(let error) = decode(text).frame else {
            Issue.record("expected \(code) for \(text)")
            return
        }
        #expect(error.code == code)
    }

    @Test func readCursorsCountOnlyWhatHistoryStillHolds() {
        let id = ChannelID(randomBytes: Array(repeating: 7, count: 16))
        #expect(ReadCursor(channel: id, read: 57, offset: 60, firstOffset: 1).unread == 3)
        #expect(ReadCursor(channel: id, read: 10, offset: 60, firstOffset: 51).unread == 10)  // 1…50 trimmed
        #expect(ReadCursor(channel: id, read: 0, offset: 0, firstOffset: 0).unread == 0)
        #expect(ReadCursor(channel: id, read: 5, offset: 9, firstOffset: 0).unread == 0)  // everything trimmed
        #expect(ReadCursor(channel: id, read: 70, offset: 60, firstOffset: 1).read == 60)
    }

    @Test func refusesOverlongID() {
        let id = String(repeating: "x", count: 65)
        guard case .failure(let error) = decode(#"{"type":"ping","id":"\#(id)"}"#).frame else {
            Issue.record("expected a failure")
            return
        }
        #expect(error.code == .invalidField)
    }

    /// `readableID` (the ref of a frame dropped unread) is the id `decode` reads, whatever the rest of the frame.
    @Test(arguments: [
        #"{"type":"ping","id":"r1"}"#, #"{"id":"q"}"#, #"{"type":"launch","id":"q","x":1}"#, #"{"type":"ping","id":5}"#,
        #"{"type":"ping","id":null}"#, #"{"type":"ping"}"#, #"{"type":"ping","id":"\#(String(repeating: "x", count: 64))"}"#,
        #"{"type":"ping","id":"\#(String(repeating: "x", count: 65))"}"#, #"{"type":"channel.join","id":"j","channel":7}"#,
        #"[{"id":"q"}]"#, #"{"id":"q""#, "not json", "",
    ])
    func theReadableIDIsTheOneDecodeReads(text: String) {
        #expect(codec.readableID(Array(text.utf8)) == decode(text).id, "\(text)")
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

@Suite struct AuthFrameTests {
    let codec = FrameCodec()
    let did = DID(signingKey: [UInt8](repeating: 7, count: 32))
    let signature = Base64URL.encode([UInt8](repeating: 1, count: 64))

    @Test func decodesSignatureAndTokenForms() {
        let signed = codec.decode(Array(#"{"type":"auth","id":"a","did":"\#(did)","signature":"\#(signature)"}"#.utf8))
        #expect(signed.frame == .success(.auth(id: "a", .signature(did: did, signature: [UInt8](repeating: 1, count: 64)))))
        let token = codec.decode(Array(#"{"type":"auth","token":"x.y.z"}"#.utf8))
        #expect(token.frame == .success(.auth(id: nil, .token("x.y.z"))))
    }

    @Test(arguments: [
        (#"{"type":"auth"}"#, ErrorCode.missingField),
        (#"{"type":"auth","did":"did:agentchat:zQ"}"#, .missingField),
        (#"{"type":"auth","did":"did:web:x","signature":"AA"}"#, .invalidField),
        (#"{"type":"auth","token":"t","did":"x","signature":"y"}"#, .invalidField),
        (#"{"type":"auth","token":5}"#, .invalidField),
    ])
    func refusesMalformedAuth(text: String, code: ErrorCode) {
        guard case .failure(let error) = codec.decode(Array(text.utf8)).frame else {
            Issue.record("accepted \(text)")
            return
        }
        #expect(error.code == code)
    }

    @Test func refusesShortSignatures() {
        let short = Base64URL.encode([UInt8](repeating: 1, count: 63))
        let decoded = codec.decode(Array(#"{"type":"auth","did":"\#(did)","signature":"\#(short)"}"#.utf8))
        guard case .failure(let error) = decoded.frame else { Issue.record("accepted"); return }
        #expect(error.code == .invalidField)
    }

    @Test func encodesHelloAndWelcome() throws {
        let hello = try JSONParser.parse(codec.encode(.hello(broker: "b", challenge: "c", expiresAt: 5)))
        #expect(hello == ["type": "hello", "broker": "b", "challenge": "c", "expiresAt": 5])
        let profile = AgentProfile(name: "n", signingKey: did.signingKey, encryptionKey: [UInt8](repeating: 2, count: 32),
                                   registeredAt: 9)
        let welcome = try JSONParser.parse(codec.encode(.welcome(ref: "r", agent: profile, token: "t", expiresAt: 6)))
        #expect(welcome["agent"].flatMap(AgentProfile.init(json:)) == profile)
        #expect(welcome["token"] == "t" && welcome["ref"] == "r" && welcome["expiresAt"] == 6)
    }
}

@Suite struct RegistrationRequestTests {
    private func body(_ fields: [String: JSONValue]) -> [UInt8] { JSONWriter.encode(.object(fields)) }
    static let key = Base64URL.encode([UInt8](repeating: 3, count: 32))
    var key: String { Self.key }
    let sig = Base64URL.encode([UInt8](repeating: 4, count: 64))

    private var valid: [String: JSONValue] {
        ["name": "alice", "signingKey": .string(key), "encryptionKey": .string(key), "timestamp": 1000,
         "signature": .string(sig)]
    }

    @Test func parsesAndBuildsTheSignedBytes() throws {
        let request = try RegistrationRequest.parse(body(valid))
        #expect(request.name == "alice" && request.timestamp == 1000)
        #expect(String(decoding: request.signedBytes, as: UTF8.self)
            == "agentchat-register-v1\nalice\n\(key)\n\(key)\n1000")
    }

    static let badFields: [(String, JSONValue?, ErrorCode)] = [
        ("name", nil, .missingField), ("name", "", .invalidField), ("name", "a\nb", .invalidField),
        ("name", "   ", .invalidField), ("name", .string(String(repeating: "x", count: 65)), .invalidField),
        ("name", 5, .invalidField), ("signingKey", "AAAA", .invalidField), ("signingKey", "not base64!", .invalidField),
        ("encryptionKey", .string(Self.key + "="), .invalidField), ("signature", .string(Self.key), .invalidField),
        ("timestamp", "1000", .invalidField), ("timestamp", .number(1.5), .invalidField), ("timestamp", nil, .missingField),
        ("extra", true, .unknownField),
    ]

    @Test(arguments: badFields)
    func refusesEachBadField(field: String, value: JSONValue?, code: ErrorCode) {
        var fields = valid
        fields[field] = value
        #expect(throws: ProtocolError.self) { try RegistrationRequest.parse(body(fields)) }
        do {
            _ = try RegistrationRequest.parse(body(fields))
        } catch {
            #expect(error.code == code, "\(field) = \(String(describing: value))")
        }
    }

    @Test func refusesNonObjects() {
        for text in ["[]", "nope", "\"x\""] {
            #expect(throws: ProtocolError.self) { try RegistrationRequest.parse(Array(text.utf8)) }
        }
    }
}
