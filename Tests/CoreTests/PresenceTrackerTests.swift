@testable import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

@Suite struct PresenceTrackerTests {
    /// Where a DID's text is stored.
    static func storage(_ did: DID) -> UnsafeRawPointer? {
        did.description.utf8.withContiguousStorageIfAvailable { UnsafeRawPointer($0.baseAddress) } ?? nil
    }

    @Test func anAgentsConnectionsShareOneDIDAndCountOnce() throws {
        let h = CoreHarness()
        let presence = PresenceTracker(clock: h.clock, store: h.indicatorStore, graceSeconds: 15)
        let text = DID(signingKey: [UInt8](repeating: 7, count: 32)).description
        // Two DIDs parsed from the same text, as two logins would make them: equal, stored apart.
        let first = try #require(DID(parsing: text)), second = try #require(DID(parsing: text))
        #expect(first == second && Self.storage(first) != Self.storage(second))

        let kept = presence.connected(first)
        #expect(Self.storage(kept) == Self.storage(first))
        let shared = presence.connected(second)
        #expect(shared == second && Self.storage(shared) == Self.storage(first))
        h.clock.runUntilIdle()
        #expect(h.indicatorStore.isPresent(first))

        // Another agent keeps its own.
        let other = DID(signingKey: [UInt8](repeating: 9, count: 32))
        #expect(Self.storage(presence.connected(other)) == Self.storage(other))

        // Counted twice: the first disconnect leaves the agent present past the grace.
        presence.disconnected(first)
        h.clock.advance(by: 20_000)
        #expect(h.indicatorStore.isPresent(first))
        presence.disconnected(second)
        h.clock.advance(by: 20_000)
        #expect(!h.indicatorStore.isPresent(first))
        presence.stop()
    }
}
