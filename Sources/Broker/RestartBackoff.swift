/// How long the supervisor waits before starting a worker again: 0.5 s after its first exit, doubling with each
/// exit up to 30 s, and back to 0.5 s when the worker that exited had run at least 30 s (it was healthy, not
/// crash-looping). Pure: the caller measures time and starts the process.
struct RestartBackoff: Sendable, Equatable {
    static let first = 0.5
    static let limit = 30.0
    /// A worker that ran this long resets the backoff.
    static let stableAfter = 30.0

    private(set) var next = Self.first

    /// The delay before restarting a worker that ran `seconds` (0 when it could not even be started); advances the
    /// backoff for the next exit.
    mutating func delay(afterRunning seconds: Double) -> Double {
        if seconds >= Self.stableAfter { next = Self.first }
        defer { next = min(next * 2, Self.limit) }
        return next
    }
}
