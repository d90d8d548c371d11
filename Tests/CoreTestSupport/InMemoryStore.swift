import AgentChatCore

/// What every in-memory store twin shares: the clock whose queue it completes on, and fault injection.
///
/// Like the Redis stores, a twin is loop-bound and never calls a completion from inside the call: the operation is
/// carried out in a later turn of the `ManualClock` (as Redis runs a command when it reaches the server) and its
/// completion called then. While the twin is unavailable every operation changes nothing and completes with
/// `StoreFailure.unavailable`; fire-and-forget operations are lost.
package class InMemoryStore {
    package let clock: ManualClock
    /// False: operations fail with `.unavailable` (Redis down, restarting, reconnecting).
    package private(set) var isAvailable = true
    /// Operations carried out (or failed) so far, by name, for assertions.
    package private(set) var calls: [String: Int] = [:]

    package init(clock: ManualClock) { self.clock = clock }

    /// Makes operations fail with `.unavailable` from now on, or work again.
    package func setAvailable(_ available: Bool) {
        let cameBack = available && !isAvailable
        isAvailable = available
        if cameBack { reconnected() }
    }

    /// Called when the store becomes available again (a reconnect).
    func reconnected() {}

    /// Runs `operation` in a later turn and hands its result to `completion`; `.unavailable` without running it
    /// if the store is unavailable by then.
    func perform<Value>(_ name: String, _ completion: @escaping StoreCompletion<Value>,
                        _ operation: @escaping () -> StoreResult<Value>)
    {
        clock.enqueue { [self] in
            calls[name, default: 0] += 1
            let result = isAvailable ? operation() : .failure(.unavailable)
            clock.enqueue(afterTurns: replyTurns) { completion(result) }
        }
    }

    /// Turns between carrying out an operation and its completion (0: in the same turn). With 2 or more, feed
    /// messages published after an operation arrive before its reply, as they may from Redis (pub/sub and commands
    /// are different connections).
    package var replyTurns = 0

    /// Runs `operation` in a later turn if the store is available then; nothing is reported.
    func performUnacknowledged(_ name: String, _ operation: @escaping () -> Void) {
        clock.enqueue { [self] in
            calls[name, default: 0] += 1
            if isAvailable { operation() }
        }
    }

    /// Redis' own clock (key expiry, rate-limit buckets): the manual clock's monotonic time.
    var storeMilliseconds: Int64 { Int64(clock.monotonicMilliseconds) }
}
