import AgentChatLoop
import Testing

/// What happens at every broker's exit: the loop closes first, loop-bound objects are released after. Their libuv
/// handles were never freed, which LeakSanitizer reported at each broker's exit (and so failed it with status 23)
/// under `make sanitize`. Run there, this test fails on a leak; run plainly, it checks the late release is safe.
@Suite struct EventLoopShutdownTests {
    final class Holder: @unchecked Sendable {
        var timer: LoopTimer?
    }

    @Test func loopBoundHandlesReleasedAfterTheLoopClosedAreFreed() async throws {
        let loop = EventLoop.startThread(name: "shutdown-test")
        let holder = Holder()
        try await loop.submit {
            holder.timer = LoopTimer(loop: loop) {}
            holder.timer?.start(after: 60_000)
        }
        loop.stop()
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(10)
        while !loop.isClosed, clock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        try #require(loop.isClosed)
        holder.timer = nil  // LoopTimer.deinit after close: frees its handle without touching the freed loop
    }
}
