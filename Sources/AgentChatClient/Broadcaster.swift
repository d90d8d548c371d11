import Foundation

/// Fans values out to any number of `AsyncStream` subscribers. Thread-safe (one lock); subscribers that stop
/// listening are dropped. With `replaysLatest`, a new subscriber first receives the latest value.
final class Broadcaster<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var subscribers: [Int: AsyncStream<Value>.Continuation] = [:]
    private var nextKey = 0
    private var latest: Value?
    private var finished = false
    private let replaysLatest: Bool

    init(replaysLatest: Bool, initial: Value? = nil) {
        self.replaysLatest = replaysLatest
        self.latest = initial
    }

    func subscribe() -> AsyncStream<Value> {
        let (stream, continuation) = AsyncStream.makeStream(of: Value.self, bufferingPolicy: .bufferingNewest(256))
        let key: Int? = lock.withLock {
            if replaysLatest, let latest { continuation.yield(latest) }
            if finished { return nil }
            nextKey += 1
            subscribers[nextKey] = continuation
            return nextKey
        }
        guard let key else {
            continuation.finish()
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            guard let self else { return }
            _ = self.lock.withLock { self.subscribers.removeValue(forKey: key) }
        }
        return stream
    }

    func yield(_ value: Value) {
        let targets = lock.withLock { () -> [AsyncStream<Value>.Continuation] in
            latest = value
            return Array(subscribers.values)
        }
        for target in targets { target.yield(value) }
    }

    func finish() {
        let targets = lock.withLock { () -> [AsyncStream<Value>.Continuation] in
            finished = true
            defer { subscribers.removeAll() }
            return Array(subscribers.values)
        }
        for target in targets { target.finish() }
    }
}
