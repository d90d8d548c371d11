import CLibUV

/// Runs a callback once at the end of the current loop turn: after the turn's I/O callbacks, before the loop waits
/// again (a libuv check handle). Loop-bound: create, schedule and release it on the loop thread.
///
/// For work that gathers what one turn brought (e.g. the turn's message appends, sent to Redis as one call) and
/// must not delay it: the commands issued here leave in the next poll, exactly when commands issued during the
/// turn would. A zero-delay timer instead runs at the start of the next turn, after a poll that does not wait, and
/// that extra turn splits what would have arrived together (measured: broadcast fan-out frames carried half as
/// many messages, docs/BENCHMARKS.md).
public final class TurnEnd {
    /// Allocated here and freed in the uv close callback; `data` holds this object unretained and is cleared in
    /// `deinit` before the handle is closed (the same life cycle as `LoopTimer`).
    private let handle: UnsafeMutablePointer<uv_check_t>
    private let loop: EventLoop
    private let callback: () -> Void

    public init(loop: EventLoop, _ callback: @escaping () -> Void) {
        loop.preconditionInEventLoop()
        self.loop = loop
        self.callback = callback
        handle = .allocate(capacity: 1)
        uv_check_init(loop.uvLoop, handle)
        handle.pointee.data = Unmanaged.passUnretained(self).toOpaque()
    }

    /// Runs the callback at the end of this turn (once, however often it is called before then). Called from the
    /// callback itself, at the end of the next turn.
    public func schedule() {
        loop.preconditionInEventLoop()
        if !isScheduled { uv_check_start(handle, turnEndReached) }
    }

    /// Whether the callback is due at the end of this turn.
    public var isScheduled: Bool {
        uv_is_active(UnsafeRawPointer(handle).assumingMemoryBound(to: uv_handle_t.self)) != 0
    }

    /// Cancels a scheduled run.
    public func cancel() {
        uv_check_stop(handle)
    }

    fileprivate func fire() {
        uv_check_stop(handle)
        callback()
    }

    deinit {
        if loop.isClosed {
            handle.deallocate()
            return
        }
        handle.pointee.data = nil
        if handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1, { uv_is_closing($0) != 0 }) { return }
        uv_check_stop(handle)
        handle.withMemoryRebound(to: uv_handle_t.self, capacity: 1) { uv_close($0, freeHandleOnClose) }
    }
}

private func turnEndReached(_ handle: UnsafeMutablePointer<uv_check_t>?) {
    guard let data = handle?.pointee.data else { return }
    Unmanaged<TurnEnd>.fromOpaque(data).takeUnretainedValue().fire()
}
