import Foundation

/// Time sources in the units the broker uses.
enum Clock {
    /// Wall-clock time in Unix milliseconds, as used on the wire.
    static func unixMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded(.down)) }

    /// Monotonic seconds, for rates and timeouts.
    static func monotonicSeconds() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
