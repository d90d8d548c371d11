import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// A subscriber that stops reading makes the broker queue its frames; once the socket takes bytes again, the
/// transport writes several queued frames with one `send()`, framing each itself. The reader must get every frame
/// whole and in order: small ones (2-byte headers) and large ones (4-byte), mixed.
@Suite(.serialized) struct GatheredWritesTests {
    @Test func framesQueuedBehindAStalledReaderArriveWholeAndInOrder() throws {
        let cluster = try ClusterFixture(["--max-message-bytes", "262144", "--max-queue-bytes", "67108864",
                                          "--frames-per-second", "1000000"])
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try #require(alice.createChannel(members: [bob.did])["id"]?.stringValue)
        try alice.publishKeys(id)
        #expect(try bob.request(["type": "channel.subscribe", "channel": .string(id), "since": 0])["type"]
            == "subscribed")
        // Bob stops reading: about 8 MB of messages, more than the kernel's socket buffers take, with his own pings
        // in between (their pongs are small frames queued among the large ones).
        let sizes = [16, 60, 3_000, 20_000, 32 * 1024]
        let count = 400
        for index in 0..<count {
            let ack = try alice.send(id, epoch: 1, ciphertext: [UInt8](repeating: UInt8(index & 0xFF),
                                                                       count: sizes[index % sizes.count]))
            try #require(ack["type"] == "message.ack", "\(ack)")
            if index % 4 == 0 { try bob.client.send(text: #"{"type":"ping","id":"p\#(index)"}"#) }
        }
        var offsets: [Int64] = []
        var lengths: [Int] = []
        var pongs: [String] = []
        let deadline = Date().addingTimeInterval(60)
        while offsets.count < count, Date() < deadline {
            guard let text = try? bob.client.receiveText(timeout: 10) else { break }
            let frame = try JSONParser.parse(text)
            switch frame["type"]?.stringValue {
            case "messages":
                for item in frame["messages"]?.arrayValue ?? [] {
                    offsets.append(item["offset"]?.integerValue ?? -1)
                    lengths.append(item["ciphertext"]?.stringValue.flatMap(Base64URL.decode)?.count ?? -1)
                }
            case "pong": pongs.append(frame["ref"]?.stringValue ?? "")
            default: break
            }
        }
        #expect(offsets == Array(1...Int64(count)))
        #expect(lengths == (0..<count).map { sizes[$0 % sizes.count] })
        // Every pong, in order (the last ones may still be on their way after the last message).
        let expected = stride(from: 0, to: count, by: 4).map { "p\($0)" }
        while pongs.count < expected.count, let frame = try? JSONParser.parse(bob.client.receiveText(timeout: 10)) {
            if frame["type"] == "pong" { pongs.append(frame["ref"]?.stringValue ?? "") }
        }
        #expect(pongs == expected)
    }
}
