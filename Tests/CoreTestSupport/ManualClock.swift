import AgentChatCore

/// A `BrokerClock` whose time moves only when a test says so, and the test's event loop.
///
/// Work is done in loop *turns*, like libuv's: each turn first fires the timers that are due, then runs the work
/// that was queued before the turn began (`enqueue`: what the store twins use to complete "later", and how the feed
/// twin delivers pub/sub messages). Work queued during a turn runs in the next one, so messages delivered in one
/// turn are handled together, and a 0-ms timer started during a turn fires at the start of the next.
///
/// Nothing happens until `runUntilIdle()`, `turn()` or `advance(by:)` is called; everything is deterministic.
package final class ManualClock: BrokerClock {
    /// Wall-clock time, Unix milliseconds: moves with `advance(by:)`, and may be set.
    package var unixMilliseconds: Int64
    /// Monotonic time in milliseconds: moves with `advance(by:)`; timers run on it.
    package private(set) var monotonicMilliseconds: UInt64 = 0

    package var monotonicSeconds: Double { Double(monotonicMilliseconds) / 1000 + monotonicBase }

    private let monotonicBase: Double
    private var queue: [() -> Void] = []
    private var timers: [ObjectIdentifier: Weak] = [:]
    private var nextSequence: UInt64 = 0
    /// Turns run so far.
    package private(set) var turns = 0

    private struct Weak {
        weak var timer: ManualTimer?
    }

    package init(unixMilliseconds: Int64 = 1_704_067_200_000, monotonicSeconds: Double = 1_000) {
        self.unixMilliseconds = unixMilliseconds
        monotonicBase = monotonicSeconds
    }

    package func makeTimer(_ callback: @escaping () -> Void) -> any BrokerTimer {
        ManualTimer(clock: self, callback: callback)
    }

    /// Queues `work` for the next turn: how twins complete "later".
    package func enqueue(_ work: @escaping () -> Void) { queue.append(work) }

    /// Runs `work` `turns` turns after this one (0: now, from inside a turn's work; 1: like `enqueue`).
    package func enqueue(afterTurns turns: Int, _ work: @escaping () -> Void) {
        guard turns > 0 else { return work() }
        enqueue { [self] in enqueue(afterTurns: turns - 1, work) }
    }

    /// Whether a turn would do anything now.
    package var hasWork: Bool { !queue.isEmpty || nextDue.map { $0 <= monotonicMilliseconds } == true }

    /// One loop turn: due timers (in due order), then the work queued before the turn. False if there was nothing.
    @discardableResult
    package func turn() -> Bool {
        guard hasWork else { return false }
        turns += 1
        for timer in dueTimers() where timer.isActive && timer.dueAt! <= monotonicMilliseconds { timer.fire() }
        let work = queue
        queue = []
        for item in work { item() }
        return true
    }

    /// Runs turns until nothing is queued and no timer is due, without moving time. Returns the turns run.
    @discardableResult
    package func runUntilIdle(maxTurns: Int = 100_000) -> Int {
        var count = 0
        while turn() {
            count += 1
            precondition(count < maxTurns, "the loop never went idle (a 0-ms repeating timer, or work that requeues itself)")
        }
        return count
    }

    /// Moves time forward by `milliseconds`, stopping at each timer's due time (in order) to run the loop until idle.
    /// Wall-clock time moves by the same amount.
    package func advance(by milliseconds: UInt64) {
        let target = monotonicMilliseconds + milliseconds
        runUntilIdle()
        while let due = nextDue, due <= target {
            move(to: max(due, monotonicMilliseconds))
            runUntilIdle()
        }
        move(to: target)
        runUntilIdle()
    }

    /// Moves time to the next timer's due time and runs until idle; false if no timer is active.
    @discardableResult
    package func advanceToNextTimer() -> Bool {
        runUntilIdle()
        guard let due = nextDue else { return false }
        move(to: max(due, monotonicMilliseconds))
        runUntilIdle()
        return true
    }

    private func move(to milliseconds: UInt64) {
        unixMilliseconds += Int64(milliseconds - monotonicMilliseconds)
        monotonicMilliseconds = milliseconds
    }

    private var activeTimers: [ManualTimer] {
        timers = timers.filter { $0.value.timer != nil }
        return timers.values.compactMap(\.timer).filter(\.isActive)
    }

    private var nextDue: UInt64? { activeTimers.compactMap(\.dueAt).min() }

    private func dueTimers() -> [ManualTimer] {
        activeTimers.filter { $0.dueAt! <= monotonicMilliseconds }
            .sorted { ($0.dueAt!, $0.sequence) < ($1.dueAt!, $1.sequence) }
    }

    fileprivate func schedule(_ timer: ManualTimer) {
        nextSequence += 1
        timer.sequence = nextSequence
        timers[ObjectIdentifier(timer)] = Weak(timer: timer)
    }

    /// Timers that are running now.
    package var activeTimerCount: Int { activeTimers.count }
}

/// A timer of a `ManualClock`: fires when the clock's time reaches it; stops when released.
final class ManualTimer: BrokerTimer {
    private weak var clock: ManualClock?
    private let callback: () -> Void
    fileprivate(set) var dueAt: UInt64?
    fileprivate var sequence: UInt64 = 0
    private var period: UInt64 = 0

    init(clock: ManualClock, callback: @escaping () -> Void) {
        self.clock = clock
        self.callback = callback
    }

    func start(after milliseconds: UInt64, repeat: UInt64) {
        guard let clock else { return }
        dueAt = clock.monotonicMilliseconds + milliseconds
        period = `repeat`
        clock.schedule(self)
    }

    func stop() { dueAt = nil }

    var isActive: Bool { dueAt != nil }

    fileprivate func fire() {
        guard let due = dueAt else { return }
        if period > 0 {
            dueAt = due + period
            clock?.schedule(self)
        } else {
            dueAt = nil
        }
        callback()
    }
}
