import CLibUV

/// A libuv timer owned by a Swift object. Loop-bound: create, start, stop and release it on the loop thread.
///
/// libuv timers are used rather than lws timers: lws timers armed outside lws callbacks do not fire on a foreign
/// libuv loop in libwebsockets 4.1.
public final class LoopTimer {
    /// Allocated here and freed in the uv close callback. `data` holds this object unretained and is cleared in
    /// `deinit` before the handle is closed, so a late callback never reaches a freed object.
    private let handle: UnsafeMutablePointer<uv_timer_t>
    private let loop: EventLoop
    private let callback: () -> Void

    public init(loop: EventLoop, _ callback: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.callback = callback
        handle = .allocate(capacity: 1)
        uv_timer_init(loop.uvLoop, handle)
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// Fires once after `milliseconds`, then every `repeatMilliseconds` if non-zero. Restarts a running timer.
    public func start(after milliseconds: UInt64, repeat repeatMilliseconds: UInt64 = 0) {
        loop.preconditionInEventLoop()
        uv_timer_start(handle, loopTimerFired, milliseconds, repeatMilliseconds)
    }

    /// Stops the timer; `start` may arm it again.
    public func stop() {
        uv_timer_stop(handle)
    }

    /// Whether the timer is armed.
    public var isActive: Bool { uv_is_active(UnsafeRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self)) != 0 }

    fileprivate func fire() { callback() }

    deinit {
        // Released after the loop was closed (at process exit): `EventLoop.close()` closed the handle and freed
        // the loop, so libuv no longer refers to it; only its memory is left to free.
        if loop.isClosed {
            handle.deallocate()
            return
        }
        handle.pointee.data = nil
        // Released while `EventLoop.close()` runs the loop a last time: it has already closed every handle (without
        // a callback), and closing one twice aborts libuv. Its memory stays with the process, which is ending.
        if handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1, { uv_is_closing($0) != 0 }) { return }
        uv_timer_stop(handle)
        handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_close($0, freeHandleOnClose) }
    }
}

private func loopTimerFired(_ handle: UnsafeMutablePointer<uv_timer_t>?) {
    guard let data = handle?.pointee.data else { return }
    Unmanaged<LoopTimer>.fromOpaque(data).takeUnretainedValue().fire()
}
