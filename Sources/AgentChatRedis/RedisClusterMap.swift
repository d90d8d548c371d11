/// Which master serves each of the 16,384 slots, as `CLUSTER SLOTS` answered it. Pure value.
public struct RedisClusterMap: Sendable, Hashable {
    /// The masters, in the order first seen.
    public private(set) var masters: [RedisEndpoint] = []
    /// Slot → index into `masters`; -1 while no master serves it.
    private var owners = [Int16](repeating: -1, count: RedisClusterSlot.count)

    public init() {}

    /// Parses a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id…], replica…], …]`. Replicas are ignored
    /// (every command goes to the master). Nil for a reply of another shape.
    public init?(clusterSlots reply: RedisValue) {
        guard let ranges = reply.array else { return nil }
        for range in ranges {
            guard let parts = range.array, parts.count >= 3, let start = parts[0].int, let end = parts[1].int,
                let master = parts[2].array, master.count >= 2, let host = master[0].string, let port = master[1].int,
                0 <= start, start <= end, end < RedisClusterSlot.count, (1...65_535).contains(port)
            else { return nil }
            // An empty host or "?" means the node does not know its address: the slots stay unserved.
            guard !host.isEmpty, host != "?" else { continue }
            assign(start...end, to: .tcp(host: host, port: port))
        }
    }

    /// The master serving `slot`, if any.
    public func master(of slot: Int) -> RedisEndpoint? {
        let index = owners[slot]
        return index < 0 ? nil : masters[Int(index)]
    }

    /// Whether every slot has a master.
    public var coversEverySlot: Bool { !owners.contains(-1) }

    /// How many slots `master` serves.
    public func slotCount(of master: RedisEndpoint) -> Int {
        guard let index = masters.firstIndex(of: master) else { return 0 }
        return owners.reduce(0) { $0 + ($1 == Int16(index) ? 1 : 0) }
    }

    /// Records that `master` now serves `slots` (a `MOVED` reply names one slot).
    public mutating func assign(_ slots: ClosedRange<Int>, to master: RedisEndpoint) {
        let index: Int
        if let known = masters.firstIndex(of: master) {
            index = known
        } else {
            masters.append(master)
            index = masters.count - 1
        }
        for slot in slots { owners[slot] = Int16(index) }
    }
}

/// A cluster redirection or refusal in an error reply.
enum RedisClusterReply: Equatable {
    /// `MOVED slot host:port`: the slot lives elsewhere for good; update the map and retry there.
    case moved(slot: Int, to: RedisEndpoint)
    /// `ASK slot host:port`: this one command (after `ASKING`) goes to the node importing the slot.
    case ask(slot: Int, to: RedisEndpoint)
    /// `TRYAGAIN`: a multi-key command during a migration, with its keys split between the nodes; retry soon.
    case tryAgain
    /// `CLUSTERDOWN`: the cluster cannot serve the slot.
    case down

    init?(_ message: String) {
        if message.hasPrefix("TRYAGAIN") { self = .tryAgain; return }
        if message.hasPrefix("CLUSTERDOWN") { self = .down; return }
        let parts = message.split(separator: " ")
        guard parts.count == 3, parts[0] == "MOVED" || parts[0] == "ASK", let slot = Int(parts[1]),
            (0..<RedisClusterSlot.count).contains(slot), let colon = parts[2].lastIndex(of: ":"),
            let port = Int(parts[2][parts[2].index(after: colon)...]), (1...65_535).contains(port)
        else { return nil }
        var host = String(parts[2][..<colon])
        if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self = parts[0] == "MOVED" ? .moved(slot: slot, to: .tcp(host: host, port: port))
            : .ask(slot: slot, to: .tcp(host: host, port: port))
    }
}
