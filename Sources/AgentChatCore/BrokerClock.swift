import Foundation

/// Time and timers for the core, injected: the loop's clock in the broker, a `ManualClock` in unit tests.
/// Loop-bound: timers fire on the loop thread.
package protocol BrokerClock: AnyObject {
    /// Wall-clock time in Unix milliseconds, as used on the wire.
    var unixMilliseconds: Int64 { get }
    /// Monotonic seconds, for rates and timeouts.
    var monotonicSeconds: Double { get }
    /// A stopped timer that runs `callback` when it fires.
    func makeTimer(_ callback: @escaping () -> Void) -> any BrokerTimer
}

/// A timer made by a `BrokerClock`. It stops when released.
package protocol BrokerTimer: AnyObject {
    /// Fires after `milliseconds` (0: on the next loop turn), then every `repeat` milliseconds if that is not 0.
    /// Starting an active timer restarts it.
    func start(after milliseconds: UInt64, repeat: UInt64)
    func stop()
    var isActive: Bool { get }
}

extension BrokerTimer {
    package func start(after milliseconds: UInt64) { start(after: milliseconds, repeat: 0) }
}

/// The system's clocks, for the loop's `BrokerClock` and the transport.
package enum SystemTime {
    package static func unixMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    package static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
