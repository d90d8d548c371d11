import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

/// The frame budget through `FrameRouter`: a frame over it is dropped and answered `rate_limited`, with the frame's
/// `id` as `ref` when it has a readable one (as every error), for agents and viewers; dropped frames do not count
/// towards the close before login. The manual clock does not move, so the budget does not refill.
@Suite struct FrameBudgetTests {
    /// Sends raw frames in one turn and returns what the connection got.
    static func send(_ frames: [String], on c: RecordingConnection, _ h: CoreHarness) -> [ServerFrame] {
        c.skipFrames()
        for frame in frames { h.send(raw: Array(frame.utf8), on: c) }
        h.clock.runUntilIdle()
        return c.takeFrames()
    }

    /// The `rate_limited` errors among `frames`, as their refs.
    static func rateLimitedRefs(_ frames: [ServerFrame]) -> [String?] {
        frames.compactMap { frame in
            guard case .error(let error, let ref) = frame, error.code == .rateLimited else { return nil }
            return .some(ref)
        }
    }

    /// Over the budget: a frame with a readable id, one without an id, bad JSON, an id over 64 bytes. Only the first
    /// is answered with a `ref` (as is never a binary message, sent apart).
    static let overBudget = [#"{"type":"ping","id":"over"}"#, #"{"type":"ping"}"#, "{",
                             #"{"type":"ping","id":"\#(String(repeating: "x", count: 65))"}"#]

    @Test func anAgentsFrameOverTheBudgetIsAnsweredWithItsIDAsRef() throws {
        var configuration = FrameRouter.Configuration()
        configuration.limits.framesPerSecond = 1
        configuration.limits.frameBurst = 3
        let h = CoreHarness(configuration: configuration)
        let alice = h.makeAgent("alice")
        let a = h.login(alice).connection  // the auth frame took one
        let served = Self.send([#"{"type":"ping","id":"p1"}"#, #"{"type":"ping","id":"p2"}"#], on: a, h)
        #expect(served.map(\.typeName) == ["pong", "pong"])
        let refused = Self.send(Self.overBudget, on: a, h)
        h.send(raw: Array(#"{"type":"ping","id":"binary"}"#.utf8), on: a, isBinary: true)
        h.clock.runUntilIdle()
        let binary = a.takeFrames()
        #expect(Self.rateLimitedRefs(refused) == ["over", nil, nil, nil])
        #expect(refused.count == 4, "nothing but the refusals: \(refused)")
        #expect(Self.rateLimitedRefs(binary) == [nil], "a binary message is not read")
        #expect(a.isOpen)
    }

    @Test func aViewersFrameOverTheBudgetIsAnsweredWithItsIDAsRef() throws {
        var configuration = FrameRouter.Configuration()
        configuration.viewerFramesPerSecond = 1  // bursts of 2
        let h = CoreHarness(configuration: configuration)
        let v = h.open(address: "198.51.100.9")
        // The first viewer frame gives the connection the viewers' budget (full); it is not taken from it.
        #expect(h.request(.viewer(id: "d", .directoryList(cursor: 0, limit: 20)), on: v).map(\.typeName)
            == ["directory"])
        let served = Self.send([#"{"type":"ping","id":"p1"}"#, #"{"type":"directory.list","id":"d2"}"#], on: v, h)
        #expect(served.map(\.typeName) == ["pong", "directory"])
        let refused = Self.send(Self.overBudget + [#"{"type":"directory.list","id":"d3"}"#], on: v, h)
        #expect(Self.rateLimitedRefs(refused) == ["over", nil, nil, nil, "d3"])
        #expect(refused.count == 5, "nothing but the refusals: \(refused)")
        // Frames dropped over the budget do not count towards the close before login (5 refused frames).
        let agentFrames = Self.send(Array(repeating: #"{"type":"channel.list","id":"l"}"#, count: 6), on: v, h)
        #expect(Self.rateLimitedRefs(agentFrames) == Array(repeating: "l", count: 6))
        #expect(v.isOpen)
    }
}
