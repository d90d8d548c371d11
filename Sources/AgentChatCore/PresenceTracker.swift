import AgentChatProtocol

/// Which agents have a connection to this broker, published to the store as presence keys with a TTL so every
/// broker agrees who is online. An agent with two connections counts once; after its last connection closes its
/// key runs out `grace` later, so a quick reconnect never shows it offline. Loop-bound.
final class PresenceTracker {
    private let store: any IndicatorStoring
    private let graceMilliseconds: Int64
    /// Refresh period: well inside the grace, so another broker holding the agent keeps the key alive.
    private let refreshMilliseconds: Int64
    private var connections: [DID: Int] = [:]
    private var timer: (any BrokerTimer)?

    init(clock: any BrokerClock, store: any IndicatorStoring, graceSeconds: Double) {
        self.store = store
        graceMilliseconds = Int64(graceSeconds * 1000)
        refreshMilliseconds = max(200, graceMilliseconds / 3)
        timer = clock.makeTimer { [weak self] in self?.refresh() }
        timer?.start(after: UInt64(refreshMilliseconds), repeat: UInt64(refreshMilliseconds))
    }

    /// The key outlives a refresh period with room to spare, and a crashed broker's agents still go offline.
    private var ttl: Int64 { max(graceMilliseconds, refreshMilliseconds * 3) }

    /// Counts a connection of `did`; answers the DID to keep for it: the copy already held for the agent's other
    /// connections when it has some, so that they share one text (an idle connection's DID is about 110 of its
    /// ~3 KiB, docs/BENCHMARKS.md).
    @discardableResult
    func connected(_ did: DID) -> DID {
        if let index = connections.index(forKey: did) {
            connections.values[index] += 1
            return connections.keys[index]
        }
        connections[did] = 1
        store.markPresent([did], milliseconds: ttl)
        return did
    }

    func disconnected(_ did: DID) {
        guard let count = connections[did] else { return }
        if count > 1 {
            connections[did] = count - 1
        } else {
            connections[did] = nil
            store.expirePresence(did, after: graceMilliseconds)
        }
    }

    private func refresh() {
        guard !connections.isEmpty else { return }
        store.markPresent(Array(connections.keys), milliseconds: ttl)
    }

    func stop() { timer = nil }
}
