import AgentChatProtocol
import Logging

/// Live public indicators for viewers. Loop-bound.
///
/// The truth is in the store (`IndicatorStoring`, Redis); this service reads the indicators of every channel some local viewer
/// watches once per tick (`1 / --indicator-rate` seconds) and sends each viewer at most one `indicators` frame per
/// tick, holding only the channels that changed. Reading at a fixed cadence is what coalesces: a channel with
/// 10,000 messages a second costs the same as a quiet one, and the frame always carries the newest values. A
/// viewer whose previous frame is still queued is skipped for that tick and gets the newest state later.
final class IndicatorService {
    final class Viewer {
        let session: Session
        var channels: Set<ChannelID> = []
        var directory = false
        /// Channels whose newest state this viewer has not been sent yet.
        var stale: Set<ChannelID> = []
        init(session: Session) { self.session = session }
    }

    private let clock: any BrokerClock
    private let store: any IndicatorStoring
    private let outbox: Outbox
    private let logger: Logger
    private var viewers: [UInt64: Viewer] = [:]
    private var viewersPerAddress: [String: Int] = [:]
    private var snapshots: [ChannelID: ChannelIndicators] = [:]
    /// Every listed channel, kept fresh while any viewer watches the whole directory.
    private var directoryChannels: [ChannelID] = []
    private var timer: (any BrokerTimer)?
    private var tickInFlight = false
    let maxViewersPerAddress: Int

    init(clock: any BrokerClock, store: any IndicatorStoring, outbox: Outbox, updatesPerSecond: Double,
         maxViewersPerAddress: Int, logger: Logger)
    {
        self.clock = clock
        self.store = store
        self.outbox = outbox
        self.logger = logger
        self.maxViewersPerAddress = maxViewersPerAddress
        let period = UInt64(max(50, 1000 / updatesPerSecond))
        timer = clock.makeTimer { [weak self] in self?.tick() }
        timer?.start(after: period, repeat: period)
    }

    func stop() { timer = nil }

    /// Makes `session` a viewer (if it is not one) and answers its request. False when the address has too many
    /// viewers already.
    func handle(_ request: ViewerRequest, id: String?, from session: Session) -> Bool {
        let viewer: Viewer
        if let existing = viewers[session.id] {
            viewer = existing
        } else {
            guard viewersPerAddress[session.remoteAddress, default: 0] < maxViewersPerAddress else { return false }
            viewersPerAddress[session.remoteAddress, default: 0] += 1
            viewer = Viewer(session: session)
            viewers[session.id] = viewer
        }
        let reply: (ServerFrame) -> Void = { [outbox, weak session] frame in
            guard let session else { return }
            outbox.send(frame, to: session)
        }
        let refuse: (ProtocolError) -> Void = { error in reply(.error(error, ref: id)) }
        switch request {
        case .directoryList(let cursor, let limit):
            // One more than asked, to know whether another page follows.
            store.directory(cursor: cursor, limit: limit + 1) { [self] result in
                guard case .success(let found) = result else { return refuse(ProtocolError(StoreFailure.unavailable)) }
                let ids = Array(found.prefix(limit))
                read(ids) { indicators in
                    let listed = ids.compactMap { indicators[$0] }
                    reply(.directory(ref: id, listed, next: found.count > limit ? cursor + limit : nil))
                }
            }
        case .subscribe(let ids):
            read(ids) { [self, weak viewer] indicators in
                guard let viewer else { return }
                if let missing = ids.first(where: { indicators[$0] == nil }) {
                    return refuse(ProtocolError(.notFound, "\(missing) is not a listed channel"))
                }
                viewer.channels.formUnion(ids)
                viewer.stale.subtract(ids)
                reply(.indicators(ref: id, ids.compactMap { indicators[$0] }))
            }
        case .subscribeDirectory:
            store.directory(cursor: 0, limit: 10_000) { [self, weak viewer] result in
                guard let viewer else { return }
                guard case .success(let ids) = result else { return refuse(ProtocolError(StoreFailure.unavailable)) }
                directoryChannels = ids
                read(ids) { indicators in
                    viewer.directory = true
                    viewer.stale.removeAll()
                    reply(.indicators(ref: id, ids.compactMap { indicators[$0] }))
                }
            }
        case .unsubscribe:
            viewer.channels.removeAll()
            viewer.directory = false
            viewer.stale.removeAll()
            reply(.ok(ref: id))
        }
        return true
    }

    func sessionClosed(_ session: Session) {
        guard viewers.removeValue(forKey: session.id) != nil else { return }
        viewersPerAddress[session.remoteAddress, default: 1] -= 1
        if viewersPerAddress[session.remoteAddress] == 0 { viewersPerAddress[session.remoteAddress] = nil }
    }

    func isViewer(_ session: Session) -> Bool { viewers[session.id] != nil }

    /// Reads the indicators of `ids` (listed ones only), remembering them as the latest snapshots.
    private func read(_ ids: [ChannelID], completion: @escaping ([ChannelID: ChannelIndicators]) -> Void) {
        guard !ids.isEmpty else { return completion([:]) }
        var results: [ChannelID: ChannelIndicators] = [:]
        var remaining = ids.count
        let now = clock.unixMilliseconds
        for id in ids {
            store.indicators(id, now: now) { [self] result in
                if case .success(let indicators?) = result {
                    results[id] = indicators
                    snapshots[id] = indicators
                }
                remaining -= 1
                if remaining == 0 { completion(results) }
            }
        }
    }

    private func tick() {
        guard !viewers.isEmpty, !tickInFlight else { return }
        let watchesDirectory = viewers.values.contains { $0.directory }
        tickInFlight = true
        let refreshDirectory: (@escaping () -> Void) -> Void = { [self] next in
            guard watchesDirectory else { return next() }
            store.directory(cursor: 0, limit: 10_000) { [self] result in
                if case .success(let ids) = result {
                    // Channels that left the directory are sent once as unlisted.
                    let gone = Set(directoryChannels).subtracting(ids)
                    for id in gone {
                        snapshots[id] = .unlisted(id)
                        for viewer in viewers.values where viewer.directory { viewer.stale.insert(id) }
                    }
                    for id in Set(ids).subtracting(directoryChannels) {
                        for viewer in viewers.values where viewer.directory { viewer.stale.insert(id) }
                    }
                    directoryChannels = ids
                }
                next()
            }
        }
        refreshDirectory { [self] in
            var watched = Set(directoryChannels.filter { _ in watchesDirectory })
            for viewer in viewers.values { watched.formUnion(viewer.channels) }
            let previous = snapshots
            let ids = Array(watched)
            read(ids) { [self] current in
                tickInFlight = false
                for id in ids {
                    let now = current[id] ?? .unlisted(id)
                    if current[id] == nil { snapshots[id] = now }
                    guard previous[id] != now else { continue }
                    for viewer in viewers.values where viewer.directory || viewer.channels.contains(id) {
                        viewer.stale.insert(id)
                    }
                }
                push()
            }
        }
    }

    /// Sends each viewer the newest state of what changed for it, unless its last frame is still queued.
    private func push() {
        for viewer in viewers.values where !viewer.stale.isEmpty && viewer.session.queuedBytes == 0 {
            let changed = viewer.stale.sorted { $0.rawValue < $1.rawValue }.compactMap { snapshots[$0] }
            viewer.stale.removeAll()
            for indicators in changed where !indicators.listed { viewer.channels.remove(indicators.id) }
            guard !changed.isEmpty else { continue }
            outbox.send(.indicators(ref: nil, changed), to: viewer.session)
        }
    }
}
