import CLibUV
import Foundation
import Synchronization

/// The broker's one event loop: a libuv loop run by one thread.
///
/// Threading contract: libwebsockets, hiredis and every loop-bound Swift object are used only on the loop thread.
/// The one thing other threads may do is `execute(_:)` (and the async `submit` helpers built on it), which queues a
/// closure and wakes the loop through a `uv_async_t`, the libuv counterpart of `lws_cancel_service()`.
public final class EventLoop: @unchecked Sendable {
    /// The libuv loop. Owned by this object, freed by `close()`; only the loop thread may use it.
    public let uvLoop: UnsafeMutablePointer<uv_loop_t>
    /// Wakes the loop for queued work. `data` holds this object unretained: the loop outlives the handle. Freed in
    /// `deinit` once `close()` has closed it.
    private let wakeup: UnsafeMutablePointer<uv_async_t>
    private let pending = Mutex<[@Sendable () -> Void]>([])
    private let threadID = Atomic<UInt>(0)
    private let stopped = Atomic<Bool>(false)
    private let closed = Atomic<Bool>(false)

    /// Whether `close()` has freed the loop; handles of loop-bound objects released later must not touch it.
    public var isClosed: Bool { closed.load(ordering: .acquiring) }

    public init() {
        uvLoop = .allocate(capacity: 1)
        precondition(uv_loop_init(uvLoop) == 0, "uv_loop_init failed")
        wakeup = .allocate(capacity: 1)
        precondition(uv_async_init(uvLoop, wakeup, eventLoopWakeup) == 0, "uv_async_init failed")
        wakeup.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// Starts a thread that runs a new loop until `stop()`, then closes it. Returns once the thread is running.
    public static func startThread(name: String = "agentchat-loop") -> EventLoop {
        let loop = EventLoop()
        let started = DispatchSemaphore(value: 0)
        let thread = Thread {
            loop.run(onStart: { started.signal() })
            loop.close()
        }
        thread.name = name
        thread.stackSize = 8 << 20
        thread.start()
        started.wait()
        return loop
    }

    deinit {
        // `close()` closed the wakeup handle and freed the loop; if the loop was never closed, libuv may still
        // refer to the handle and it is left alone.
        if isClosed { wakeup.deallocate() }
    }

    /// Whether the caller runs on the loop thread.
    public var inEventLoop: Bool { threadID.load(ordering: .acquiring) == UInt(pthread_self()) }

    /// Traps when called off the loop thread. Loop-bound code calls this where a mistake would corrupt C state.
    @inline(__always)
    public func preconditionInEventLoop(file: StaticString = #fileID, line: UInt = #line) {
        precondition(inEventLoop, "called off the event loop thread", file: file, line: line)
    }

    /// Runs the loop on the calling thread until `stop()`; that thread becomes the loop thread.
    public func run(onStart: () -> Void = {}) {
        threadID.store(UInt(pthread_self()), ordering: .releasing)
        onStart()
        uv_run(uvLoop, UV_RUN_DEFAULT)
    }

    /// Queues `work` to run on the loop thread. Safe from any thread; runs in order of submission.
    public func execute(_ work: @escaping @Sendable () -> Void) {
        pending.withLock { $0.append(work) }
        uv_async_send(wakeup)
    }

    /// Runs `work` on the loop thread and returns its result.
    public func submit<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            execute { continuation.resume(with: Result { try work() }) }
        }
    }

    /// Starts `work` on the loop thread and waits until it calls its completion (on the loop thread, later).
    public func submitAndWait<T: Sendable>(
        _ work: @escaping @Sendable (_ complete: @escaping (Result<T, any Error>) -> Void) -> Void
    ) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            execute {
                // `complete` must run exactly once; a second call is a programming error caught here.
                let once = Atomic<Bool>(false)
                work { result in
                    precondition(!once.exchange(true, ordering: .relaxed), "completion called twice")
                    continuation.resume(with: result)
                }
            }
        }
    }

    /// Asks the loop to return from `run()` after the current iteration. Safe from any thread.
    public func stop() {
        guard !stopped.exchange(true, ordering: .relaxed) else { return }
        execute { uv_stop(self.uvLoop) }
    }

    fileprivate func drain() {
        let work = pending.withLock { queue -> [@Sendable () -> Void] in
            defer { queue.removeAll(keepingCapacity: true) }
            return queue
        }
        for item in work { item() }
    }

    /// Closes every remaining handle, lets their close callbacks run, and frees the loop. Loop thread, after `run()`.
    public func close() {
        drain()
        uv_walk(uvLoop, closeHandleIfOpen, nil)
        uv_run(uvLoop, UV_RUN_DEFAULT)
        uv_loop_close(uvLoop)
        closed.store(true, ordering: .releasing)
        uvLoop.deallocate()
    }
}

private func eventLoopWakeup(_ handle: UnsafeMutablePointer<uv_async_t>?) {
    guard let data = handle?.pointee.data else { return }
    Unmanaged<EventLoop>.fromOpaque(data).takeUnretainedValue().drain()
}

private func closeHandleIfOpen(_ handle: UnsafeMutablePointer<uv_handle_t>?, _: UnsafeMutableRawPointer?) {
    guard let handle, uv_is_closing(handle) == 0 else { return }
    uv_close(handle, nil)
}

/// Frees a handle allocated with `UnsafeMutablePointer.allocate` once libuv is done with it.
func freeHandleOnClose(_ handle: UnsafeMutablePointer<uv_handle_t>?) {
    UnsafeMutableRawPointer(handle)?.deallocate()
}
