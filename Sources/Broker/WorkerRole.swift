import CProcessShims
import Foundation
import Glibc

/// What makes a broker process a worker of a `Supervisor` (`--processes` > 1), and the worker's side of their
/// channel. The supervisor passes it in internal environment variables (not settings: nobody sets them by hand);
/// the channel is a socketpair on descriptor 3.
struct WorkerRole: Sendable {
    static let indexVariable = "AGENTCHAT_INTERNAL_WORKER"
    static let portVariable = "AGENTCHAT_INTERNAL_PORT"
    static let supervisorVariable = "AGENTCHAT_INTERNAL_SUPERVISOR"
    /// Where the supervisor's embedded Redis listens (absent with `--redis-url`, which the worker reads itself).
    static let redisVariable = "AGENTCHAT_INTERNAL_REDIS_URL"
    /// The worker writes `ready <port>\n` here once it listens; its end of stream means the supervisor is gone.
    static let channelDescriptor: Int32 = 3

    /// 0..<processes, in logs and in the `agentchat_process` metric.
    let index: Int
    /// The port every worker binds with `SO_REUSEPORT` (the supervisor picked it when `--port 0`).
    let port: Int
    let supervisorPID: pid_t
    let redisURL: String?

    init(index: Int, port: Int, supervisorPID: pid_t, redisURL: String?) {
        self.index = index
        self.port = port
        self.supervisorPID = supervisorPID
        self.redisURL = redisURL
    }

    /// The role the environment gives this process, or nil when it is not a worker.
    init?(environment: [String: String]) {
        guard let index = environment[Self.indexVariable].flatMap({ Int($0) }),
            let port = environment[Self.portVariable].flatMap({ Int($0) }),
            let supervisor = environment[Self.supervisorVariable].flatMap({ pid_t($0) })
        else { return nil }
        self.init(index: index, port: port, supervisorPID: supervisor,
                  redisURL: environment[Self.redisVariable].flatMap { $0.isEmpty ? nil : $0 })
    }

    /// The variables that give a spawned process this role.
    var environment: [String: String] {
        var variables = [Self.indexVariable: "\(index)", Self.portVariable: "\(port)",
                         Self.supervisorVariable: "\(supervisorPID)"]
        if let redisURL { variables[Self.redisVariable] = redisURL }
        return variables
    }

    /// Makes sure this worker does not outlive its supervisor: SIGTERM when the supervisor's thread that spawned it
    /// ends (`PR_SET_PDEATHSIG`), and SIGTERM to itself when the channel reaches its end (the supervisor closed it,
    /// or died in a way the first missed). Returns false if the supervisor is already gone.
    func watchSupervisor() -> Bool {
        _ = agentchat_set_parent_death_signal(SIGTERM)
        // The supervisor may have died before the line above: then this process was already re-parented.
        guard getppid() == supervisorPID else { return false }
        let descriptor = Self.channelDescriptor
        let watcher = Thread {
            var byte: UInt8 = 0
            while true {
                let n = read(descriptor, &byte, 1)
                if n > 0 || (n < 0 && errno == EINTR) { continue }
                break
            }
            kill(getpid(), SIGTERM)
        }
        watcher.name = "agentchat-supervisor-watch"
        watcher.start()
        return true
    }

    /// Names the process like its supervisor in `ps -o comm`, `top` and `pgrep` (spawned as `/proc/self/exe`, it
    /// would be called `exe`). Writing `/proc/self/comm` renames the main thread, which names the process.
    func takeSupervisorsName() {
        let name = String((CommandLine.arguments.first ?? "agentchat-broker").split(separator: "/").last ?? "")
        try? String(name.utf8.prefix(15))?.write(toFile: "/proc/self/comm", atomically: false, encoding: .utf8)
    }

    /// Tells the supervisor this worker listens on `port`.
    func reportReady(port: Int) {
        let line = Array("ready \(port)\n".utf8)
        _ = line.withUnsafeBytes { send(Self.channelDescriptor, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }
}
