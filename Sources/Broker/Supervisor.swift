import AgentChatCore
import Foundation
import Glibc
import Logging
import Synchronization

/// Runs the broker as `count` worker processes on one port (`--processes`). The supervisor serves nothing itself:
/// it spawns each worker (`/proc/self/exe` with the same arguments and a `WorkerRole` in its environment), waits for
/// every `ready <port>` on their channels, restarts a worker that dies (`RestartBackoff`: 0.5 s, doubling to 30 s),
/// and on `stop()` sends them SIGTERM and waits (SIGKILL after `stopGrace`).
///
/// Threads: one dedicated thread owns the workers (spawns, reads their channels, reaps them) for the whole life of
/// the supervisor. It must live that long: `PR_SET_PDEATHSIG`, which the workers set, fires when the *thread* that
/// spawned them exits, which is why workers are not started from `EmbeddedRedis.runWithSignalsUnblocked`'s
/// short-lived thread; the empty signal mask it exists for is set with `posix_spawnattr_setsigmask` instead.
/// `start` and `stop` may be called from any thread.
final class Supervisor: Sendable {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    let count: Int
    let port: Int
    private let arguments: [String]
    private let environment: [String: String]
    private let redisURL: String?
    private let logger: Logger
    private let stopGrace: Double
    private let state = Mutex(Shared())

    private struct Shared {
        var stopRequested = false
        /// Signals to pass on to every running worker (SIGHUP: reload the TLS certificate).
        var pendingSignals: [Int32] = []
        var ready: CheckedContinuation<Void, any Error>?
        var readyOutcome: Result<Void, Failure>?
        var stopped: CheckedContinuation<Void, Never>?
        var isStopped = false
    }

    /// - Parameters:
    ///   - arguments: the command line the workers get (this process's own, without the executable).
    ///   - redisURL: the embedded Redis the workers use, when the supervisor started one.
    init(count: Int, port: Int, arguments: [String], environment: [String: String], redisURL: String?,
         logger: Logger, stopGrace: Double = 10)
    {
        self.count = count
        self.port = port
        self.arguments = arguments
        self.environment = environment
        self.redisURL = redisURL
        self.logger = logger
        self.stopGrace = stopGrace
    }

    /// Starts the workers; returns once every one reported it listens. Throws if one exits before that (the others
    /// are then stopped).
    func start() async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            state.withLock { $0.ready = continuation }
            let thread = Thread { [self] in superviseWorkers() }
            thread.name = "agentchat-supervisor"
            thread.start()
        }
    }

    /// Passes `signal` on to every running worker (from any thread; the supervising thread sends it).
    func signalWorkers(_ signal: Int32) {
        state.withLock { $0.pendingSignals.append(signal) }
    }

    /// Stops every worker (SIGTERM, SIGKILL after the grace period) and returns once all are gone.
    func stop() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { shared -> Bool in
                shared.stopRequested = true
                if shared.isStopped { return true }
                shared.stopped = continuation
                return false
            }
            if resumeNow { continuation.resume() }
        }
    }

    // MARK: The supervising thread

    private struct Worker {
        let index: Int
        var pid: pid_t = 0
        /// The supervisor's end of the channel; -1 once closed.
        var channel: Int32 = -1
        var received: [UInt8] = []
        var isReady = false
        var startedAt = 0.0
        var restartAt: Double?
        var backoff = RestartBackoff()
    }

    private func superviseWorkers() {
        var workers = (0..<count).map { Worker(index: $0) }
        var announced = false
        var termSentAt: Double?
        for i in workers.indices { spawn(&workers[i]) }
        while true {
            let now = SystemTime.monotonicSeconds()
            let stopping = state.withLock { $0.stopRequested }
            if stopping {
                if termSentAt == nil {
                    termSentAt = now
                    for worker in workers where worker.pid > 0 { kill(worker.pid, SIGTERM) }
                } else if let sent = termSentAt, now - sent > stopGrace {
                    for worker in workers where worker.pid > 0 { kill(worker.pid, SIGKILL) }
                }
                if workers.allSatisfy({ $0.pid == 0 }) { break }
            } else {
                for i in workers.indices where workers[i].pid == 0 {
                    if let due = workers[i].restartAt, due <= now { spawn(&workers[i]) }
                }
            }
            let signals = state.withLock { shared in
                defer { shared.pendingSignals = [] }
                return shared.pendingSignals
            }
            for signal in signals {
                for worker in workers where worker.pid > 0 { kill(worker.pid, signal) }
            }
            readChannels(&workers)
            for i in workers.indices where workers[i].pid > 0 {
                var status: Int32 = 0
                guard waitpid(workers[i].pid, &status, WNOHANG) == workers[i].pid else { continue }
                let reason = Self.describe(status)
                let pid = workers[i].pid
                workers[i].pid = 0
                if workers[i].channel >= 0 {
                    close(workers[i].channel)
                    workers[i].channel = -1
                }
                if stopping { continue }
                if !announced {
                    logger.error("worker exited before it was ready",
                                 metadata: ["worker": "\(workers[i].index)", "workerPID": "\(pid)", "status": "\(reason)"])
                    finishStartup(.failure(Failure(
                        description: "worker \(workers[i].index) (pid \(pid)) \(reason) before it was ready")))
                    state.withLock { $0.stopRequested = true }
                    continue
                }
                let exitedAt = SystemTime.monotonicSeconds()
                let delay = workers[i].backoff.delay(afterRunning: exitedAt - workers[i].startedAt)
                workers[i].restartAt = exitedAt + delay
                logger.warning("worker exited; restarting it",
                               metadata: ["worker": "\(workers[i].index)", "workerPID": "\(pid)", "status": "\(reason)",
                                          "delay": "\(delay)"])
            }
            if !announced, !stopping, workers.allSatisfy(\.isReady) {
                announced = true
                logger.info("all workers ready", metadata: ["processes": "\(count)", "port": "\(port)"])
                finishStartup(.success(()))
            }
        }
        for worker in workers where worker.channel >= 0 { close(worker.channel) }
        logger.info("all workers stopped")
        if !announced { finishStartup(.failure(Failure(description: "stopped before every worker was ready"))) }
        let continuation = state.withLock { shared -> CheckedContinuation<Void, Never>? in
            shared.isStopped = true
            defer { shared.stopped = nil }
            return shared.stopped
        }
        continuation?.resume()
    }

    private func finishStartup(_ outcome: Result<Void, Failure>) {
        let continuation = state.withLock { shared -> CheckedContinuation<Void, any Error>? in
            defer { shared.ready = nil }
            return shared.ready
        }
        continuation?.resume(with: outcome.mapError { $0 as any Error })
    }

    /// Waits up to 100 ms for lines (or the end) on the workers' channels.
    private func readChannels(_ workers: inout [Worker]) {
        let polled = workers.indices.filter { workers[$0].channel >= 0 }
        var descriptors = polled.map { pollfd(fd: workers[$0].channel, events: Int16(POLLIN), revents: 0) }
        if descriptors.isEmpty {
            usleep(100_000)
            return
        }
        guard poll(&descriptors, nfds_t(descriptors.count), 100) > 0 else { return }
        var buffer = [UInt8](repeating: 0, count: 256)
        for (slot, i) in polled.enumerated() where descriptors[slot].revents != 0 {
            let n = buffer.withUnsafeMutableBytes { recv(workers[i].channel, $0.baseAddress, $0.count, 0) }
            if n < 0, errno == EINTR || errno == EAGAIN { continue }
            guard n > 0 else {
                // The worker is exiting (or closed its end); waitpid reports it.
                close(workers[i].channel)
                workers[i].channel = -1
                continue
            }
            workers[i].received += buffer[0..<n]
            while let newline = workers[i].received.firstIndex(of: 10) {
                let line = String(decoding: workers[i].received[..<newline], as: UTF8.self)
                workers[i].received.removeSubrange(...newline)
                if line.hasPrefix("ready ") {
                    workers[i].isReady = true
                    logger.info("worker ready", metadata: ["worker": "\(workers[i].index)",
                                                           "workerPID": "\(workers[i].pid)"])
                }
            }
        }
    }

    /// Spawns worker `worker.index` with its end of a new channel on descriptor 3.
    private func spawn(_ worker: inout Worker) {
        worker.restartAt = nil
        worker.isReady = false
        worker.received = []
        var pair: [Int32] = [-1, -1]
        guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &pair) == 0 else {
            return scheduleRetry(&worker, "socketpair failed: errno \(errno)")
        }
        // Both ends are close-on-exec, so no other worker inherits them; dup2 onto 3 clears the flag for the child's
        // copy (unless the end already is 3, where dup2 would do nothing: move it first).
        if pair[1] == WorkerRole.channelDescriptor {
            let moved = fcntl(pair[1], F_DUPFD_CLOEXEC, 10)
            close(pair[1])
            pair[1] = moved
        }
        defer { close(pair[1]) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pair[1], WorkerRole.channelDescriptor)

        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for signal in [SIGTERM, SIGINT, SIGHUP, SIGPIPE, SIGCHLD] { sigaddset(&defaults, signal) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))

        let role = WorkerRole(index: worker.index, port: port, supervisorPID: getpid(), redisURL: redisURL)
        var variables = environment
        for (name, value) in role.environment { variables[name] = value }
        let argv: [UnsafeMutablePointer<CChar>?] =
            ([CommandLine.arguments.first ?? "agentchat-broker"] + arguments).map { strdup($0) } + [nil]
        let envp: [UnsafeMutablePointer<CChar>?] = variables.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer {
            argv.forEach { free($0) }
            envp.forEach { free($0) }
        }
        var pid: pid_t = 0
        let result = posix_spawn(&pid, "/proc/self/exe", &actions, &attributes, argv, envp)
        guard result == 0 else {
            close(pair[0])
            return scheduleRetry(&worker, "posix_spawn failed: \(String(cString: strerror(result)))")
        }
        worker.pid = pid
        worker.channel = pair[0]
        worker.startedAt = SystemTime.monotonicSeconds()
        logger.info("worker started", metadata: ["worker": "\(worker.index)", "workerPID": "\(pid)"])
    }

    private func scheduleRetry(_ worker: inout Worker, _ why: String) {
        logger.error("cannot start a worker", metadata: ["worker": "\(worker.index)", "error": "\(why)"])
        worker.restartAt = SystemTime.monotonicSeconds() + worker.backoff.delay(afterRunning: 0)
    }

    private static func describe(_ status: Int32) -> String {
        let signal = status & 0x7F
        return signal == 0 ? "exited with status \((status >> 8) & 0xFF)" : "was killed by signal \(signal)"
    }
}
