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
                read(ids) { indicators, failed in
                    if failed { return refuse(ProtocolError(StoreFailure.unavailable)) }
                    let listed = ids.compactMap { indicators[$0] }
                    reply(.directory(ref: id, listed, next: found.count > limit ? cursor + limit : nil))
                }
            }
        case .subscribe(let ids):
            read(ids) { [weak viewer] indicators, failed in
                guard let viewer else { return }
                if failed { return refuse(ProtocolError(StoreFailure.unavailable)) }
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
                // Compared with the last list first, so that viewers watching already hear of what left or joined
                // the directory (this one gets the snapshot: what it covers is taken off its stale set below).
                directoryChanged(to: ids)
                read(ids) { indicators, failed in
                    if failed { return refuse(ProtocolError(StoreFailure.unavailable)) }
                    viewer.directory = true
                    // The snapshot is the newest state of the listed channels; news of others (a channel this viewer
                    // watches that was just unlisted) is still to be sent.
                    viewer.stale.subtract(ids)
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

    /// Reads the indicators of `ids`: the listed ones, and whether some read failed. What was read becomes the
    /// latest snapshot (`.unlisted` for a known channel no longer listed); a snapshot that changed is marked stale for
    /// every viewer watching it, whichever request read it. A failed read changes nothing.
    private func read(_ ids: [ChannelID], completion: @escaping ([ChannelID: ChannelIndicators], Bool) -> Void) {
        guard !ids.isEmpty else { return completion([:], false) }
        var results: [ChannelID: ChannelIndicators] = [:]
        var failed = false
        var remaining = ids.count
        let now = clock.unixMilliseconds
        for id in ids {
            store.indicators(id, now: now) { [self] result in
                switch result {
                case .success(let indicators?):
                    results[id] = indicators
                    record(indicators)
                case .success(nil):
                    // Unlisted now: news only for a channel that was known listed.
                    if snapshots[id] != nil { record(.unlisted(id)) }
                case .failure:
                    failed = true
                }
                remaining -= 1
                if remaining == 0 { completion(results, failed) }
            }
        }
    }

    private func record(_ indicators: ChannelIndicators) {
        guard snapshots[indicators.id] != indicators else { return }
        snapshots[indicators.id] = indicators
        for viewer in viewers.values where viewer.directory || viewer.channels.contains(indicators.id) {
            viewer.stale.insert(indicators.id)
        }
    }

    /// The directory was read: channels that left it are recorded as unlisted, and so sent once as unlisted to every
    /// viewer watching them, by channel or through the directory (a later read finds nothing new for them); channels
    /// that joined it are news for the directory viewers.
    private func directoryChanged(to ids: [ChannelID]) {
        for id in Set(directoryChannels).subtracting(ids) { record(.unlisted(id)) }
        for id in Set(ids).subtracting(directoryChannels) {
            for viewer in viewers.values where viewer.directory { viewer.stale.insert(id) }
        }
        directoryChannels = ids
    }

    private func tick() {
        guard !viewers.isEmpty, !tickInFlight else { return }
        let watchesDirectory = viewers.values.contains { $0.directory }
        tickInFlight = true
        let refreshDirectory: (@escaping () -> Void) -> Void = { [self] next in
            guard watchesDirectory else { return next() }
            store.directory(cursor: 0, limit: 10_000) { [self] result in
                if case .success(let ids) = result { directoryChanged(to: ids) }
                next()
            }
        }
        refreshDirectory { [self] in
            var watched = Set(directoryChannels.filter { _ in watchesDirectory })
            for viewer in viewers.values { watched.formUnion(viewer.channels) }
            read(Array(watched)) { [self] _, _ in
                tickInFlight = false
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
