import CLoadTestShims
import Glibc

/// Something the loop watches: a socket or a pipe. Owned by the loop's table while registered.
/// Threading: a loop and everything registered on it belong to the one thread that calls `run`.
class LoopSource {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    func readable(_ loop: EventLoop) {}
    func writable(_ loop: EventLoop) {}
}

/// One epoll loop on one thread, no thread per connection. Level-triggered; write interest only while a
/// connection has bytes queued.
final class EventLoop {
    let epfd: Int32
    private var sources: [Int32: LoopSource] = [:]
    /// Scratch buffer every read goes through first (one per loop, reused).
    let readBuffer: UnsafeMutableRawBufferPointer
    private var fds = [Int32](repeating: 0, count: 1024)
    private var flags = [UInt32](repeating: 0, count: 1024)

    init() {
        epfd = lt_epoll_create()
        precondition(epfd >= 0, "epoll_create1 failed")
        readBuffer = .allocate(byteCount: 256 * 1024, alignment: 16)
    }

    deinit {
        readBuffer.deallocate()
        close(epfd)
    }

    var count: Int { sources.count }

    func add(_ source: LoopSource, write: Bool = false) {
        sources[source.fd] = source
        _ = lt_epoll_ctl(epfd, 0, source.fd, 1, write ? 1 : 0)
    }

    func setWriteInterest(_ source: LoopSource, _ on: Bool) {
        _ = lt_epoll_ctl(epfd, 1, source.fd, 1, on ? 1 : 0)
    }

    /// Unregisters and closes the fd.
    func remove(_ source: LoopSource) {
        guard sources.removeValue(forKey: source.fd) != nil else { return }
        _ = lt_epoll_ctl(epfd, 2, source.fd, 0, 0)
        close(source.fd)
    }

    /// Waits at most `timeoutMs` and dispatches what is ready; returns the number of events.
    @discardableResult
    func poll(timeoutMs: Int32) -> Int {
        let n = fds.withUnsafeMutableBufferPointer { f in
            flags.withUnsafeMutableBufferPointer { g in
                lt_epoll_wait(epfd, f.baseAddress, g.baseAddress, 1024, timeoutMs)
            }
        }
        guard n > 0 else { return 0 }
        for i in 0..<Int(n) {
            let fd = fds[i]
            let flag = flags[i]
            if flag & 2 != 0, let s = sources[fd] { s.writable(self) }
            if flag & 1 != 0, let s = sources[fd] { s.readable(self) }
        }
        return Int(n)
    }

    /// Runs until `done()` is true or `seconds` pass; returns whether `done()` became true.
    @discardableResult
    func run(seconds: Double, until done: () -> Bool) -> Bool {
        let deadline = lt_now_ns() + UInt64(seconds * 1e9)
        while !done() {
            let now = lt_now_ns()
            if now >= deadline { return false }
            poll(timeoutMs: Int32(min(50, max(1, (deadline - now) / 1_000_000))))
        }
        return true
    }
}

/// Monotonic nanoseconds (CLOCK_MONOTONIC): comparable across the harness's processes.
@inline(__always) func nowNs() -> UInt64 { lt_now_ns() }

/// A pipe from a worker process: reads lines.
final class LineReader: LoopSource {
    private var pending: [UInt8] = []
    var lines: [String] = []
    var closed = false

    override init(fd: Int32) {
        _ = lt_set_nonblocking(fd)
        super.init(fd: fd)
    }

    override func readable(_ loop: EventLoop) {
        let n = read(fd, loop.readBuffer.baseAddress, loop.readBuffer.count)
        if n <= 0 {
            if n == 0 || (lt_errno() != EAGAIN && lt_errno() != EINTR) {
                closed = true
                loop.remove(self)
            }
            return
        }
        pending.append(contentsOf: UnsafeRawBufferPointer(start: loop.readBuffer.baseAddress, count: n))
        while let nl = pending.firstIndex(of: 10) {
            lines.append(String(decoding: pending[..<nl], as: UTF8.self))
            pending.removeSubrange(...nl)
        }
    }

    func takeLine() -> String? { lines.isEmpty ? nil : lines.removeFirst() }
}
