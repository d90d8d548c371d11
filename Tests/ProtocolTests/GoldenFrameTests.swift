import AgentChatProtocol
import Foundation
import Testing

/// The golden frames in `Tests/Golden` (one file per frame type, and one per refusal the codec decides) are the
/// wire format: the broker's codec and the client side of the codec must reproduce them byte for byte.
@Suite struct GoldenFrameTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Golden")

    static func files(_ folder: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.appendingPathComponent(folder).path)) ?? []
        return names.filter { $0.hasSuffix(".json") }.sorted()
    }

    static func bytes(_ folder: String, _ name: String) throws -> [UInt8] {
        var data = Array(try Data(contentsOf: directory.appendingPathComponent(folder).appendingPathComponent(name)))
        if data.last == UInt8(ascii: "\n") { data.removeLast() }
        return data
    }

    let codec = FrameCodec()

    /// The frame types the golden frames of a folder cover, read from their `type` fields.
    static func types(_ folder: String) throws -> Set<FrameType> {
        var types: Set<FrameType> = []
        for file in files(folder) {
            let name = try JSONParser.parse(try bytes(folder, file))["type"]?.stringValue
            if let type = name.flatMap(FrameType.init(rawValue:)) { types.insert(type) }
        }
        return types
    }

    @Test func everyFrameTypeHasAGoldenFrame() throws {
        let client = try Self.types("client")
        let server = try Self.types("server")
        for type in FrameType.allCases {
            switch type.direction {
            case .fromClient: #expect(client.contains(type), "no golden client frame for \(type.rawValue)")
            case .fromBroker: #expect(server.contains(type), "no golden broker frame for \(type.rawValue)")
            case .both:
                #expect(client.contains(type) && server.contains(type), "no golden frames for \(type.rawValue)")
            }
        }
    }

    @Test(arguments: files("client"))
    func clientFramesDecodeAndEncodeBackToTheSameBytes(file: String) throws {
        let golden = try Self.bytes("client", file)
        let decoded = codec.decode(golden)
        let frame = try decoded.frame.get()
        #expect(codec.encode(frame) == golden, "\(file): \(String(decoding: codec.encode(frame), as: UTF8.self))")
        #expect(decoded.type.map { file.hasPrefix($0) } == true)
    }

    @Test(arguments: files("server"))
    func brokerFramesDecodeAndEncodeBackToTheSameBytes(file: String) throws {
        let golden = try Self.bytes("server", file)
        let frame = try codec.decodeServerFrame(golden)
        #expect(codec.encode(frame) == golden, "\(file): \(String(decoding: codec.encode(frame), as: UTF8.self))")
    }

    /// `type`, `id` and `ref` as the typed frames report them are the ones on the wire (clients route by them).
    @Test(arguments: files("client"))
    func clientFramesKnowTheirTypeAndID(file: String) throws {
        let golden = try Self.bytes("client", file)
        let json = try JSONParser.parse(golden)
        let frame = try codec.decode(golden).frame.get()
        #expect(frame.type.rawValue == json["type"]?.stringValue)
        #expect(frame.id == json["id"]?.stringValue)
        #expect(frame.with(id: "other").id == "other" && frame.with(id: "other").with(id: frame.id) == frame)
    }

    @Test(arguments: files("server"))
    func brokerFramesKnowTheirTypeAndRef(file: String) throws {
        let golden = try Self.bytes("server", file)
        let json = try JSONParser.parse(golden)
        let frame = try codec.decodeServerFrame(golden)
        #expect(frame.type.rawValue == json["type"]?.stringValue)
        #expect(frame.ref == json["ref"]?.stringValue)
    }

    @Test(arguments: files("refused"))
    func refusedFramesGetTheirCode(file: String) throws {
        let code = String(file.dropLast(".json".count).prefix { $0 != "." })
        guard case .failure(let error) = codec.decode(try Self.bytes("refused", file)).frame else {
            Issue.record("\(file) was accepted")
            return
        }
        #expect(error.code.rawValue == code)
    }

    @Test func brokerFramesIgnoreFieldsTheyDoNotKnowAndRefuseWhatTheyNeed() throws {
        let frame = try codec.decodeServerFrame(Array(#"{"type":"ok","ref":"x","later":1}"#.utf8))
        #expect(frame == .ok(ref: "x"))
        #expect(throws: ProtocolError.self) { try codec.decodeServerFrame(Array(#"{"type":"message.ack","ref":"x"}"#.utf8)) }
        #expect(throws: ProtocolError.self) { try codec.decodeServerFrame(Array(#"{"type":"message.send"}"#.utf8)) }
        #expect(throws: ProtocolError.self) { try codec.decodeServerFrame(Array("not json".utf8)) }
    }

    @Test func theSubprotocolIsNamedOnce() {
        #expect(WireProtocol.subprotocol == "agentchat.v1")
        #expect(Set(FrameType.allCases.map(\.rawValue)).count == FrameType.allCases.count)
    }
}
