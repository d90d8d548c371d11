import AgentChatLoop
import Logging

/// Finds the current master of a Sentinel-monitored group: asks the sentinels one after another
/// (`SENTINEL get-master-addr-by-name`), each for at most `timeout` milliseconds, starting after the one that
/// answered last, until one names the master.
///
/// Loop-bound. One question at a time: `resolve` while a question is open replaces its completion.
final class SentinelResolver {
    private let loop: EventLoop
    private let sentinels: [RedisEndpoint]
    private let master: String
    private let timeout: UInt64
    private let logger: Logger
    private var next = 0
    private var tried = 0
    private var asking: RedisConnection?
    private var completion: ((RedisEndpoint?) -> Void)?
    private var timer: LoopTimer?

    init(loop: EventLoop, sentinels: [RedisEndpoint], master: String, timeout: UInt64, logger: Logger) {
        precondition(!sentinels.isEmpty, "Sentinel mode needs at least one sentinel")
        self.loop = loop
        self.sentinels = sentinels
        self.master = master
        self.timeout = timeout
        self.logger = logger
        timer = LoopTimer(loop: loop) { [weak self] in self?.giveUpOnThisOne(reason: "no answer in \(timeout) ms") }
    }

    deinit {
        timer = nil
        asking?.close()
    }

    /// Calls `completion` on the loop thread with the master's address, or nil when no sentinel named one.
    func resolve(_ completion: @escaping (RedisEndpoint?) -> Void) {
        loop.preconditionInEventLoop()
        self.completion = completion
        guard asking == nil else { return }
        tried = 0
        askNext()
    }

    /// Stops asking; the open question is never answered.
    func cancel() {
        completion = nil
        stopAsking()
    }

    private func askNext() {
        guard tried < sentinels.count else { return finish(nil) }
        let sentinel = sentinels[next % sentinels.count]
        tried += 1
        var configuration = RedisConnection.Configuration()
        configuration.connectTimeout = timeout
        let connection = RedisConnection(loop: loop, target: .direct(sentinel), configuration: configuration,
                                         logger: logger)
        asking = connection
        connection.onStateChange = { [weak self, weak connection] state in
            guard let self, let connection, state == .connected, connection === self.asking else { return }
            connection.send(["SENTINEL", "get-master-addr-by-name", RedisArgument(self.master)]) { [weak self] result in
                guard let self, connection === self.asking else { return }
                switch result {
                case .success(.array(let parts)) where parts.count == 2:
                    guard let host = parts[0].string, let port = parts[1].string.flatMap(Int.init),
                        (1...65535).contains(port)
                    else { return self.giveUpOnThisOne(reason: "a malformed address") }
                    self.finish(.tcp(host: host, port: port))
                case .success(.null), .success(.array):
                    self.giveUpOnThisOne(reason: "it does not know the master '\(self.master)'")
                case .success(let other):
                    self.giveUpOnThisOne(reason: "an unexpected answer \(other)")
                case .failure(let error):
                    self.giveUpOnThisOne(reason: "\(error)")
                }
            }
        }
        timer?.start(after: timeout)
        connection.start()
    }

    private func giveUpOnThisOne(reason: String) {
        logger.debug("a sentinel did not name the master", metadata: [
            "sentinel": "\(sentinels[next % sentinels.count])", "reason": "\(reason)"])
        stopAsking()
        next += 1
        askNext()
    }

    private func finish(_ endpoint: RedisEndpoint?) {
        stopAsking()
        let completion = completion
        self.completion = nil
        completion?(endpoint)
    }

    private func stopAsking() {
        timer?.stop()
        guard let connection = asking else { return }
        asking = nil
        connection.close()
        // Released on the next turn: this may run inside one of its own callbacks.
        let held = LoopBound(connection, loop: loop)
        loop.execute { _ = held }
    }
}
