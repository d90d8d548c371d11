/// How long to wait before each reconnection attempt: exponential backoff with full jitter.
///
/// Attempt `n` (from 1) waits a uniformly random time in `0 ... min(maxDelay, initialDelay * multiplier^(n-1))`
/// seconds, so clients dropped together by one broker do not come back together.
public struct ReconnectBackoff: Sendable, Equatable {
    /// The ceiling of the first attempt, in seconds.
    public var initialDelay: Double
    /// The largest ceiling, in seconds.
    public var maxDelay: Double
    public var multiplier: Double
    /// Give up after this many failed attempts; nil retries forever.
    public var maxAttempts: Int?

    public init(initialDelay: Double = 0.2, maxDelay: Double = 10, multiplier: Double = 2, maxAttempts: Int? = nil) {
        self.initialDelay = initialDelay
        self.maxDelay = maxDelay
        self.multiplier = multiplier
        self.maxAttempts = maxAttempts
    }

    /// The upper bound of attempt `attempt`'s delay, in seconds.
    public func ceiling(forAttempt attempt: Int) -> Double {
        var value = initialDelay
        var n = 1
        while n < attempt && value < maxDelay {
            value *= multiplier
            n += 1
        }
        return min(value, maxDelay)
    }

    /// A random delay for attempt `attempt`, in seconds (full jitter).
    public func delay<R: RandomNumberGenerator>(forAttempt attempt: Int, using generator: inout R) -> Double {
        let top = ceiling(forAttempt: attempt)
        return top > 0 ? Double.random(in: 0...top, using: &generator) : 0
    }

    /// A random delay for attempt `attempt`, in seconds, from the system generator.
    public func delay(forAttempt attempt: Int) -> Double {
        var generator = SystemRandomNumberGenerator()
        return delay(forAttempt: attempt, using: &generator)
    }
}
