import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// A connection the broker has decided to close must go even when the close frame cannot be written.
@Suite(.serialized) struct CloseGraceTests {
    /// The `agentchat_websocket_connections` gauge from `/metrics`.
    static func openConnections(_ fixture: BrokerFixture) -> Int? {
        guard let metrics = try? fixture.get("/metrics"), metrics.status == 200 else { return nil }
        for line in metrics.bodyText.split(separator: "\n") where line.hasPrefix("agentchat_websocket_connections ") {
            return Int(Double(line.split(separator: " ").last ?? "") ?? -1)
        }
        return nil
    }

    /// What the stalled-consumer scenario observed.
    struct Observed: Sendable {
        var openAtStart: Int?
        var openAtEnd: Int?
        var connectionEnded: Bool
        var healthy: Bool
    }

    @Test func aStalledSlowConsumerIsDroppedAfterTheCloseGrace() async throws {
        // The scenario blocks for seconds; it runs on a thread of its own so the few cooperative threads stay free
        // for the async tests running beside it.
        let observed = try await DedicatedThread.run { try Self.stalledSlowConsumer() }
        #expect(observed.openAtStart == 1)
        #expect(observed.openAtEnd == 0, "the stalled connection is still open 25 s after it stopped reading")
        // Its TCP connection is gone too: reading again ends (EOF or reset) rather than waiting forever.
        #expect(observed.connectionEnded)
        #expect(observed.healthy)
    }

    static func stalledSlowConsumer() throws -> Observed {
        // Keep-alive stays at its defaults (ping after 30 s of silence, drop 10 s later), so a drop seen within the
        // 25 s below can only come from the close decision, not from the ping timeout. The frame budget is lifted
        // so every request is answered.
        let fixture = try BrokerFixture(["--max-message-bytes", "4096", "--max-queue-bytes", "16384",
                                         "--frames-per-second", "1000000"])
        let agent = TestAgent()
        _ = try agent.register(port: fixture.port)
        let slow = try RawWebSocket(port: fixture.port, receiveBufferBytes: 4096)
        guard case .frame(let hello) = slow.next(timeout: 5) else { throw FixtureError.unexpected("no hello") }
        try slow.sendText(String(decoding: JSONWriter.encode(agent.authFrame(hello: JSONParser.parse(hello.payload))),
                                 as: UTF8.self))
        guard case .frame(let welcome) = slow.next(timeout: 5),
            try JSONParser.parse(welcome.payload)["type"] == "welcome"
        else { throw FixtureError.unexpected("no welcome") }
        let openAtStart = openConnections(fixture)
        // The client stops reading and asks for about 11 MB of pongs: far more than its 4 KiB receive window, the
        // broker's socket send buffer (at most 4 MiB here) and the 16 KiB queue. The socket stops taking writes,
        // the queue overflows, the broker decides to close with 4008 and cannot write the close frame.
        let ping = WebSocketFrame(opcode: .text,
                                  payload: Array(#"{"type":"ping","id":"\#(String(repeating: "p", count: 64))"}"#.utf8),
                                  maskKey: [1, 2, 3, 4]).encode()
        let batch = Array([[UInt8]](repeating: ping, count: 1000).joined())
        for _ in 0..<100 {
            do { try slow.socket.write(batch, timeout: 20) } catch { break }
        }
        var open = openConnections(fixture)
        let deadline = Date().addingTimeInterval(25)
        while open != 0, Date() < deadline {
            Thread.sleep(forTimeInterval: 0.25)
            open = openConnections(fixture)
        }
        let ended = slow.drainUntilClosed(timeout: 20)
        // The broker is unharmed (health may say 503 for a moment while its Redis connection comes up).
        let healthy = (try? fixture.waitForHealth(200).status) == 200
        return Observed(openAtStart: openAtStart, openAtEnd: open, connectionEnded: ended, healthy: healthy)
    }
}
