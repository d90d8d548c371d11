import AgentChatProtocol
import Foundation
import Glibc
import Testing
import TestSupport
import WebSocketClient

@testable import AgentChatBroker

/// A broker started with `--processes`: a supervisor and its workers on one port, on a test Redis.
final class ProcessesFixture {
    private let base: BrokerFixture
    var redis: RedisServer { base.redis }
    var broker: BrokerProcess { base.broker }

    init(processes: String = "2", _ extraArguments: [String] = []) throws {
        base = try BrokerFixture(["--processes", processes] + extraArguments)
    }

    /// The supervisor's live worker processes.
    var workers: [pid_t] { ProcessTree.children(of: broker.pid, named: "agentchat-broker") }

    /// Waits (bounded, generously: the machine may be busy) until `condition` holds.
    func eventually(_ what: String, attempts: Int = 600, _ condition: () throws -> Bool) throws {
        for _ in 0..<attempts {
            if (try? condition()) == true { return }
            usleep(50_000)
        }
        throw FixtureError.timeout(what)
    }

    /// /health answers 200 (each request may land on either worker).
    func healthy() throws -> Bool {
        try HTTPProbe.request(port: broker.port, path: "/health").status == 200
    }

    /// The worker (of `workers`, by default the live ones) that accepted `client`'s connection.
    func owner(of client: WebSocketClient, among workers: [pid_t]? = nil) throws -> pid_t {
        let local = try #require(client.localPort)
        return try #require(ProcessTree.owner(ofConnectionFrom: local, to: broker.port, among: workers ?? self.workers))
    }
}

@Suite(.serialized) struct ProcessesTests {
    @Test func twoWorkersShareOnePortAndTheConnections() throws {
        let fixture = try ProcessesFixture()
        let workers = fixture.workers
        #expect(workers.count == 2 && !workers.contains(fixture.broker.pid))
        try fixture.eventually("/health 200") { try fixture.healthy() }

        // Connections spread over both workers (the kernel hashes each connection to one SO_REUSEPORT socket).
        var clients: [WebSocketClient] = []
        var owners: Set<pid_t> = []
        for _ in 0..<40 {
            let client = try WebSocketClient.connect(port: fixture.broker.port, subprotocols: ["agentchat.v1"])
            let hello = try JSONParser.parse(client.receiveText(timeout: 10))
            #expect(hello["type"] == "hello")
            owners.insert(try fixture.owner(of: client, among: workers))
            clients.append(client)
        }
        #expect(owners == Set(workers))
        for client in clients { client.disconnect() }

        // Each worker's /metrics says which process answered.
        var scraped: Set<String> = []
        for _ in 0..<200 where scraped.count < 2 {
            let page = try HTTPProbe.request(port: fixture.broker.port, path: "/metrics").bodyText
            for line in page.split(separator: "\n") where line.hasPrefix("agentchat_process{") {
                scraped.insert(String(line))
            }
        }
        #expect(scraped.count == 2)
        for pid in workers { #expect(scraped.contains { $0.contains("pid=\"\(pid)\"") }) }
        // Logs name the process.
        let log = fixture.broker.stderr
        #expect(log.contains("process=supervisor") && log.contains("process=0") && log.contains("process=1"))
    }

    @Test func agentsOnDifferentWorkersExchangeAMessage() throws {
        let fixture = try ProcessesFixture()
        try fixture.eventually("/health 200") { try fixture.healthy() }
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: fixture.broker.port)
        let aliceWorker = try fixture.owner(of: alice.client)
        var bob: RawSession?
        for _ in 0..<40 where bob == nil {
            let candidate = try RawSession(agent: TestAgent(name: "bob"), port: fixture.broker.port)
            if try fixture.owner(of: candidate.client) != aliceWorker { bob = candidate }
        }
        let other = try #require(bob, "no connection landed on the other worker")
        let id = try #require(alice.createChannel(name: "across", members: [other.did])["id"]?.stringValue)
        #expect(try alice.publishKeys(id)["type"] == "ok")
        #expect(try other.request(["type": "channel.subscribe", "channel": .string(id)])["type"] == "subscribed")
        #expect(try alice.send(id, epoch: 1)["type"] == "message.ack")
        let received = try other.receiveMessages(1, channel: id)
        #expect(received.first?["sender"]?.stringValue == alice.did.description)
    }

    @Test func aKilledWorkerIsRestartedAndServiceGoesOn() throws {
        let fixture = try ProcessesFixture()
        let before = fixture.workers
        #expect(before.count == 2)
        let victim = try #require(before.first)
        kill(victim, SIGKILL)
        try fixture.eventually("a replacement worker") {
            let now = fixture.workers
            return now.count == 2 && !now.contains(victim)
        }
        #expect(fixture.broker.process.isRunning)
        try fixture.broker.waitForOutput(containing: "worker exited; restarting it", timeout: 30)
        // Both workers serve again: every connection is answered, and they land on both.
        try fixture.eventually("/health 200") { try fixture.healthy() }
        let after = fixture.workers
        var owners: Set<pid_t> = []
        for _ in 0..<40 {
            let client = try WebSocketClient.connect(port: fixture.broker.port, subprotocols: ["agentchat.v1"])
            #expect(try JSONParser.parse(client.receiveText(timeout: 10))["type"] == "hello")
            owners.insert(try fixture.owner(of: client, among: after))
            client.disconnect()
        }
        #expect(owners == Set(after))
    }

    @Test func sigtermToTheSupervisorStopsEveryWorker() throws {
        let fixture = try ProcessesFixture()
        let workers = fixture.workers
        #expect(workers.count == 2)
        // To the supervisor alone, not its process group: it forwards the signal.
        kill(fixture.broker.pid, SIGTERM)
        #expect(try fixture.broker.waitForExit(timeout: 60) == 0)
        for pid in workers { #expect(!ProcessTree.isAlive(pid)) }
        #expect(fixture.broker.stderr.contains("all workers stopped"))
    }

    /// Connections the workers accept themselves go through the same head gate and request checks as those
    /// libwebsockets accepts with one process: the same answers, whichever worker takes the connection.
    @Test func workersAnswerMalformedRequestsLikeOneProcess() throws {
        let fixture = try ProcessesFixture(processes: "2", ["--max-body-bytes", "1024"])
        try fixture.eventually("/health 200") { try fixture.healthy() }
        let h2c = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
            + "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        let cases = BadRequestCase.all + [
            BadRequestCase("an h2c upgrade", h2c, 400, "upgrade_not_supported"),
            BadRequestCase("a chunked body",
                           "POST /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                           400, "unsupported_transfer_encoding"),
            BadRequestCase("a body over the cap",
                           "POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413,
                           "body_too_large"),
        ]
        for request in cases {
            // Twice each: the two connections may well land on different workers.
            for _ in 0..<2 {
                let response = try HTTPProbe.parse(HTTPProbe.rawExchange(port: fixture.broker.port,
                                                                         bytes: request.bytes, timeout: 20))
                #expect(response.status == request.status, "\(request.name)")
                #expect(try errorCode(response) == request.code, "\(request.name)")
                #expect(response.headers["connection"]?.lowercased() == "close", "\(request.name)")
            }
        }
        #expect(try fixture.healthy())
    }

    @Test func workersStopWhenTheSupervisorIsKilled() throws {
        let fixture = try ProcessesFixture()
        let workers = fixture.workers
        #expect(workers.count == 2)
        kill(fixture.broker.pid, SIGKILL)
        for pid in workers { try fixture.eventually("worker \(pid) to exit") { !ProcessTree.isAlive(pid) } }
    }

    /// Without --redis-url the supervisor runs the one embedded Redis and makes the signing key once; the workers
    /// use both.
    @Test func theSupervisorDoesTheOneTimeWork() throws {
        let broker = try BrokerProcess(extraArguments: ["--processes", "2"])
        defer { broker.stop() }
        let children = ProcessTree.children(of: broker.pid)
        let workers = ProcessTree.children(of: broker.pid, named: "agentchat-broker")
        #expect(workers.count == 2 && children.count == 3)  // and redis-server
        var healthy = false
        for _ in 0..<600 where !healthy {
            healthy = (try? HTTPProbe.request(port: broker.port, path: "/health").status) == 200
            if !healthy { usleep(50_000) }
        }
        #expect(healthy)
        let keys = try FileManager.default.contentsOfDirectory(atPath: broker.dataDirectory + "/keys")
        #expect(keys.filter { $0.hasSuffix(".json") }.count == 1)
        // An agent registered through one worker logs in on whichever the next connection reaches.
        let session = try RawSession(agent: TestAgent(name: "solo"), port: broker.port)
        #expect(try session.request(["type": "channel.list"])["type"] == "channels")
        broker.terminate()
        #expect(try broker.waitForExit(timeout: 60) == 0)
        for pid in children { #expect(!ProcessTree.isAlive(pid)) }
    }

    @Test func autoStartsOneWorkerPerOnlineCPU() throws {
        let fixture = try ProcessesFixture(processes: "auto")
        #expect(fixture.workers.count == BrokerSettings.onlineProcessors)
        try fixture.eventually("/health 200") { try fixture.healthy() }
    }

    @Test(arguments: ["0", "300", "x"])
    func invalidProcessCountsAreRefused(value: String) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("agentchat-\(UUID())").path
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let process = try ChildProcess(executable: BrokerProcess.locateExecutable(),
                                       arguments: ["--port", "0", "--data-dir", directory, "--processes", value])
        defer { process.stop() }
        let expected = value == "x" ? "--processes: x is not a valid value" : "must be 1...256 or auto"
        try process.waitForOutput(containing: expected, in: .stderr, timeout: 30)
        #expect(try process.waitForExit(timeout: 30) != 0)
        #expect(!process.stdout.contains(BrokerProcess.readyMarker))
    }
}

@Suite struct RestartBackoffTests {
    @Test func doublesToThirtySecondsAndResetsAfterAHealthyRun() {
        var backoff = RestartBackoff()
        let crashLoop = (0..<9).map { _ in backoff.delay(afterRunning: 1) }
        #expect(crashLoop == [0.5, 1, 2, 4, 8, 16, 30, 30, 30])
        // A worker that ran 30 s or more was healthy: the next restart is quick again.
        #expect(backoff.delay(afterRunning: 45) == 0.5)
        #expect(backoff.delay(afterRunning: 0) == 1)
    }
}

@Suite struct ProcessesSettingTests {
    @Test func processesResolveFromFlagVariableAndAuto() throws {
        #expect(try BrokerCommand.parse([]).resolvedConfiguration(environment: [:]).processes == 1)
        #expect(try BrokerCommand.parse(["--processes", "3"]).resolvedConfiguration(environment: [:]).processes == 3)
        #expect(try BrokerCommand.parse([]).resolvedConfiguration(environment: ["AGENTCHAT_PROCESSES": "4"])
            .processes == 4)
        let auto = try BrokerCommand.parse(["--processes", "auto"]).resolvedConfiguration(environment: [:])
        #expect(auto.processes == BrokerSettings.onlineProcessors && auto.processes >= 1)
    }

    @Test(arguments: [(["--processes", "0"], [String: String]()), (["--processes", "257"], [:]),
                      (["--processes", "x"], [:]), ([], ["AGENTCHAT_PROCESSES": "-1"]),
                      ([], ["AGENTCHAT_PROCESSES": "many"])])
    func invalidCountsAreRefused(arguments: [String], environment: [String: String]) {
        #expect(throws: (any Error).self) {
            try BrokerCommand.parse(arguments).resolvedConfiguration(environment: environment)
        }
    }
}
