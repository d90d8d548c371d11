import Foundation
import AgentChatProtocol
import Testing

@testable import AgentChatBroker
@testable import AgentChatCore
@testable import AgentChatTransport

@Suite struct InboundAssemblerTests {
    private func piece(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) -> InboundAssembler.Outcome)
        -> InboundAssembler.Outcome
    {
        bytes.withUnsafeBytes(body)
    }

    @Test func reassemblesPiecesIntoOneMessage() {
        var assembler = InboundAssembler(maxBytes: 10)
        #expect(piece([1, 2, 3]) { assembler.append($0, isBinary: false, isFinal: false) } == .incomplete)
        #expect(piece([4, 5]) { assembler.append($0, isBinary: false, isFinal: true) }
            == .message([1, 2, 3, 4, 5], isBinary: false))
        // The next message starts clean and keeps its own binary flag.
        #expect(piece([9]) { assembler.append($0, isBinary: true, isFinal: true) } == .message([9], isBinary: true))
    }

    @Test func refusesOversizeOnTheRunningTotal() {
        var assembler = InboundAssembler(maxBytes: 4)
        #expect(piece([1, 2, 3]) { assembler.append($0, isBinary: false, isFinal: false) } == .incomplete)
        #expect(piece([4, 5]) { assembler.append($0, isBinary: false, isFinal: true) } == .tooLarge)
        #expect(piece([1, 2, 3, 4]) { assembler.append($0, isBinary: false, isFinal: true) }
            == .message([1, 2, 3, 4], isBinary: false))
    }

    @Test func refusesOversizeFromTheAnnouncedRemainder() {
        var assembler = InboundAssembler(maxBytes: 100)
        #expect(piece([1]) { assembler.append($0, isBinary: false, isFinal: false, remaining: 200) } == .tooLarge)
    }
}

@Suite struct OutboundQueueTests {
    @Test func boundsQueuedBytes() {
        var queue = OutboundQueue(maxBytes: 10)
        #expect(queue.enqueue(OutboundFrame([UInt8](repeating: 1, count: 6))) == .queued)
        #expect(queue.enqueue(OutboundFrame([UInt8](repeating: 2, count: 4))) == .queued)
        #expect(queue.queuedBytes == 10)
        #expect(queue.enqueue(OutboundFrame([3])) == .overflow)
        #expect(queue.dequeue()?.count == 6)
        #expect(queue.queuedBytes == 4)
        #expect(queue.enqueue(OutboundFrame([3])) == .queued)
        queue.removeAll()
        #expect(queue.isEmpty && queue.queuedBytes == 0)
    }

    @Test func framesKeepHeadroomForTheLibrary() {
        let frame = OutboundFrame([7, 8, 9])
        #expect(OutboundFrame.headroom >= 16)
        #expect(Array(UnsafeBufferPointer(start: frame.payload, count: frame.count)) == [7, 8, 9])
    }
}

@Suite struct TokenBucketTests {
    @Test func allowsBurstThenRate() {
        var bucket = TokenBucket(rate: 10, burst: 3, now: 0)
        var taken: [Bool] = []
        for now in [0, 0, 0, 0, 0.1, 0.1, 100, 100, 100, 100] { taken.append(bucket.take(now: now)) }
        // Three at once (the burst), then one back after 0.1 s at 10/s, and never more than the burst after a pause.
        #expect(taken == [true, true, true, false, true, false, true, true, true, false])
    }
}

@Suite struct HTTPRouterTests {
    /// Every status the broker answers has its reason phrase in the status line (415 had "Status").
    @Test(arguments: [101, 200, 201, 204, 400, 401, 403, 404, 405, 408, 409, 411, 413, 414, 415, 426, 429, 431, 500,
                      501, 503, 505])
    func everyStatusHasItsReasonPhrase(_ status: Int) {
        #expect(HTTPResponse.reason(status) != "Status")
    }

    private func route(_ router: HTTPRouter, _ method: HTTPMethod, _ path: String) -> HTTPResponse? {
        var answer: HTTPResponse?
        router.handle(HTTPRequest(method: method, path: path)) { answer = $0 }
        return answer
    }

    @Test func routesKnownPathsAndRefusesOthers() throws {
        var router = HTTPRouter()
        router.add(.get, "/x") { _, respond in respond(.json(200, ["ok": true])) }
        #expect(route(router, .get, "/x")?.status == 200)
        let missing = try #require(route(router, .get, "/nope"))
        #expect(missing.status == 404)
        #expect(try JSONParser.parse(missing.body)["error"]?["code"] == "not_found")
        let wrongMethod = try #require(route(router, .post, "/x"))
        #expect(wrongMethod.status == 405)
        #expect(wrongMethod.extraHeaders.contains { $0 == ("Allow", "GET, HEAD") })
    }

    /// HEAD is served wherever GET is, so `Allow` lists it there, and only there.
    @Test func allowListsHEADWhereGETIsServed() throws {
        var router = HTTPRouter()
        router.add(.get, "/page") { _, respond in respond(.json(200, ["ok": true])) }
        router.add(.post, "/form") { _, respond in respond(.json(200, ["ok": true])) }
        router.add(.options, "/form") { _, respond in respond(.json(200, ["ok": true])) }
        let onPage = try #require(route(router, .delete, "/page"))
        #expect(onPage.extraHeaders.filter { $0.0 == "Allow" }.map(\.1) == ["GET, HEAD"])
        #expect(route(router, .head, "/page")?.status == 200)
        let onForm = try #require(route(router, .head, "/form"))
        #expect(onForm.status == 405)
        #expect(onForm.extraHeaders.filter { $0.0 == "Allow" }.map(\.1) == ["OPTIONS, POST"])
    }

    @Test func serialisesAWholeResponse() {
        var response = HTTPResponse.json(200, ["status": "healthy"])
        response.closeConnection = true
        let text = String(decoding: response.serialized(), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(text.contains("Content-Length: 20\r\n"))
        #expect(text.contains("Connection: close\r\n"))
        #expect(text.hasSuffix("\r\n\r\n{\"status\":\"healthy\"}"))
    }
}

@Suite struct ConfigurationTests {
    @Test func flagsBeatEnvironmentBeatDefaults() throws {
        let defaults = try BrokerCommand.parse([]).resolvedConfiguration(environment: [:])
        #expect(defaults.port == 8080 && defaults.host == "127.0.0.1" && defaults.dataDirectory == "./data")
        #expect(defaults.redisURL == nil && defaults.limits.maxMessageBytes == 65536)
        let env = try BrokerCommand.parse([]).resolvedConfiguration(
            environment: ["AGENTCHAT_PORT": "9001", "AGENTCHAT_LOG_LEVEL": "debug", "AGENTCHAT_APPENDFSYNC": "always"])
        #expect(env.port == 9001 && env.logLevel == .debug && env.appendFsync == .always)
        let flag = try BrokerCommand.parse(["--port", "9002"]).resolvedConfiguration(
            environment: ["AGENTCHAT_PORT": "9001"])
        #expect(flag.port == 9002)
    }

    @Test(arguments: [
        (["--port", "70000"], [String: String]()),
        ([], ["AGENTCHAT_PORT": "eighty"]),
        (["--appendfsync", "never"], [:]),
        (["--log-level", "loud"], [:]),
        (["--max-message-bytes", "10"], [:]),
        (["--max-queue-bytes", "2000"], [:]),
        (["--indicator-rate", "100"], [:]),
        ([], ["AGENTCHAT_PING_INTERVAL": "0"]),
        ([], ["AGENTCHAT_TOKEN_TTL": "10"]),
        ([], ["AGENTCHAT_ROTATE_SIGNING_KEY": "yes"]),
    ])
    func refusesInvalidSettings(arguments: [String], environment: [String: String]) {
        #expect(throws: (any Error).self) {
            try BrokerCommand.parse(arguments).resolvedConfiguration(environment: environment)
        }
    }
}

@Suite struct TLSSettingsTests {
    /// Two readable files (their content is checked when the server loads them, not here).
    private func files() throws -> (String, String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-settings-\(UUID())").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let cert = directory + "/cert.pem", key = directory + "/key.pem"
        #expect(FileManager.default.createFile(atPath: cert, contents: Data("cert".utf8)))
        #expect(FileManager.default.createFile(atPath: key, contents: Data("key".utf8)))
        return (cert, key)
    }

    @Test func plainHTTPByDefaultAndBothFilesFromFlagsOrVariables() throws {
        #expect(try BrokerCommand.parse([]).resolvedConfiguration(environment: [:]).tls == nil)
        let (cert, key) = try files()
        let flags = try BrokerCommand.parse(["--tls-cert", cert, "--tls-key", key]).resolvedConfiguration(environment: [:])
        #expect(flags.tls == TLSFiles(certificate: cert, privateKey: key))
        let env = try BrokerCommand.parse([]).resolvedConfiguration(
            environment: ["AGENTCHAT_TLS_CERT": cert, "AGENTCHAT_TLS_KEY": key])
        #expect(env.tls == TLSFiles(certificate: cert, privateKey: key))
        #expect(BrokerCommand.helpMessage(columns: 400).contains("(env AGENTCHAT_TLS_CERT, default none: plain http)"))
    }

    @Test func bothOrNeitherAndReadable() throws {
        let (cert, key) = try files()
        func problem(_ arguments: [String], _ environment: [String: String] = [:]) -> String {
            do {
                _ = try BrokerCommand.parse(arguments).resolvedConfiguration(environment: environment)
                return "accepted"
            } catch {
                return "\(error)"
            }
        }
        #expect(problem(["--tls-cert", cert]).contains("--tls-cert needs --tls-key"))
        #expect(problem([], ["AGENTCHAT_TLS_KEY": key]).contains("--tls-key needs --tls-cert"))
        #expect(problem(["--tls-cert", cert, "--tls-key", cert + ".missing"])
            .contains("cannot read the TLS private key \(cert).missing: No such file or directory"))
    }
}

@Suite struct SettingsHelpTests {
    /// `--help` is written from the same descriptions the values are resolved from: each names its variable and
    /// its default.
    @Test func helpNamesEachVariableAndDefault() {
        let help = BrokerCommand.helpMessage(columns: 400)
        for (variable, shown) in [("AGENTCHAT_PORT", "8080"), ("AGENTCHAT_TOKEN_TTL", "900"),
                                  ("AGENTCHAT_INDICATOR_RATE", "4"), ("AGENTCHAT_MAX_QUEUE_BYTES", "1048576"),
                                  ("AGENTCHAT_LOG_LEVEL", "info")] {
            #expect(help.contains("(env \(variable), default \(shown))"), "\(variable)")
        }
        let defaults = BrokerConfiguration()
        #expect(defaults.port == BrokerSettings.port.defaultValue && defaults.tokenLifetimeSeconds == 900)
    }
}
