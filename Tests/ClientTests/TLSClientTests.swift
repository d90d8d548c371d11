import AgentChatClient
import AgentChatProtocol
import Foundation
import TestSupport
import Testing
import WebSocketClient

/// The SDK and the CLI over TLS (`https://`, `wss://`) against real brokers started with `--tls-cert`/`--tls-key`,
/// with a throwaway CA and server certificates made by the `openssl` command line (``TestPKI``).
@Suite(.serialized) struct TLSClientTests {
    static let issuer = "https://agentchat.tls.test"

    /// A CA and a broker serving TLS with a certificate it issued for `names`; `stop()` ends both.
    final class TLSBroker: Sendable {
        let pki: TestPKI
        let broker: BrokerProcess

        init(names: [String] = ["IP:127.0.0.1", "DNS:localhost"], extraArguments: [String] = []) async throws {
            let pki = try await DedicatedThread.run { try TestPKI() }
            do {
                let (certificate, key) = try await DedicatedThread.run { try pki.issue("server", serial: 2, names: names) }
                broker = try await BrokerProcess.start(
                    extraArguments: ["--tls-cert", certificate, "--tls-key", key, "--issuer", TLSClientTests.issuer,
                                     "--register-rate", "1000"] + extraArguments,
                    logLevel: "warning")
            } catch {
                pki.remove()
                throw error
            }
            self.pki = pki
        }

        var url: String { broker.baseURL }
        var port: Int { broker.port }
        func stop() {
            broker.stop()
            pki.remove()
        }
    }

    static func configuration(caFile: String?) -> AgentChatClient.Configuration {
        var configuration = testConfiguration()
        configuration.caFile = caFile
        configuration.autoReconnect = false
        return configuration
    }

    // MARK: - URLs

    @Test func brokerURLAcceptsHTTPSAndWSSWithPort443ByDefault() throws {
        let https = try BrokerURL("https://chat.example.com")
        #expect(https.isTLS && https.host == "chat.example.com" && https.port == 443 && https.basePath.isEmpty)
        let wss = try BrokerURL("wss://chat.example.com:8443/prefix/")
        #expect(wss.isTLS && wss.port == 8443 && wss.basePath == "/prefix")
        let upper = try BrokerURL("HTTPS://[::1]")
        #expect(upper.isTLS && upper.host == "::1" && upper.port == 443)
        let plain = try BrokerURL("http://127.0.0.1")
        #expect(!plain.isTLS && plain.port == 80)
        let ws = try BrokerURL("ws://127.0.0.1:9000")
        #expect(!ws.isTLS && ws.port == 9000)
        #expect(throws: AgentChatError(code: AgentChatError.Codes.unsupportedScheme, category: .invalidArgument,
                                       message: "")) { try BrokerURL("ftp://chat.example.com") }
        #expect(throws: AgentChatError(code: AgentChatError.Codes.invalidArgument, category: .invalidArgument,
                                       message: "")) { try BrokerURL("https://") }
    }

    // MARK: - The stream

    /// TLSStream on its own: a verified TLS 1.2+ connection with ALPN http/1.1 that carries an HTTP exchange.
    @Test func tlsStreamVerifiesNegotiatesALPNAndCarriesHTTP() async throws {
        let server = try await TLSBroker()
        defer { server.stop() }
        let port = server.port, caFile = server.pki.caFile
        let (version, alpn, response) = try await DedicatedThread.run { () throws -> (String?, String?, String) in
            let stream = try TLSStream.connect(host: "127.0.0.1", port: port, options: TLSOptions(caFile: caFile),
                                               timeout: 10)
            defer { stream.close() }
            try stream.write(Array("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".utf8),
                             timeout: 10)
            var received: [UInt8] = []
            let deadline = Deadline(seconds: 10)
            while !String(decoding: received, as: UTF8.self).contains("\r\n\r\n") {
                guard let chunk = try stream.read(deadline: deadline) else { break }
                received += chunk
            }
            return (stream.protocolVersion, stream.negotiatedALPN, String(decoding: received, as: UTF8.self))
        }
        #expect(version == "TLSv1.3" || version == "TLSv1.2")
        #expect(alpn == "http/1.1")
        #expect(response.hasPrefix("HTTP/1.1 200"), "\(response)")

        // The same name check for "localhost" (a DNS name, sent as SNI).
        let viaName = try await DedicatedThread.run {
            let stream = try TLSStream.connect(host: "localhost", port: port, options: TLSOptions(caFile: caFile),
                                               timeout: 10)
            defer { stream.close() }
            return stream.serverName
        }
        #expect(viaName == "localhost")
    }

    /// A TLS echo server (Python's ssl module) that logs how each connection ended: `clean close` after the client's
    /// close_notify, `ragged close` after a bare TCP close.
    static let echoServer = """
        import socket, ssl, sys
        port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        listener = socket.create_server(("127.0.0.1", port))
        while True:
            raw, _ = listener.accept()
            try:
                connection = context.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False)
            except (ssl.SSLError, OSError) as error:
                print("handshake failed:", error, flush=True)
                raw.close()
                continue
            total = 0
            try:
                while True:
                    data = connection.recv(65536)
                    if not data:
                        print(f"clean close after {total} bytes", flush=True)
                        break
                    total += len(data)
                    connection.sendall(data)
            except ssl.SSLEOFError:
                print(f"ragged close after {total} bytes", flush=True)
            except (ssl.SSLError, OSError) as error:
                print("error:", error, flush=True)
            connection.close()
        """

    /// TLSStream against another implementation: a read that times out leaves the stream usable, 1 MiB goes there and
    /// back in 64 KiB pieces (records split across reads), and close sends close_notify.
    @Test func tlsStreamTimesOutEchoesAndClosesWithCloseNotify() async throws {
        let pki = try await DedicatedThread.run { try TestPKI() }
        defer { pki.remove() }
        let (certificate, key) = try await DedicatedThread.run { try pki.issue("echo", serial: 3) }
        let server = try await DedicatedThread.run {
            try PythonServer(name: "tls-echo", script: Self.echoServer, arguments: [certificate, key])
        }
        defer { server.stop() }
        let port = server.port, caFile = pki.caFile
        let echoed = try await DedicatedThread.run { () throws -> Bool in
            let stream = try TLSStream.connect(host: "127.0.0.1", port: port, options: TLSOptions(caFile: caFile),
                                               timeout: 10)
            defer { stream.close() }
            do {
                _ = try stream.read(deadline: Deadline(seconds: 0.1))
                return false
            } catch WebSocketError.timeout {}
            var generator = SystemRandomNumberGenerator()
            for _ in 0..<16 {
                let piece = (0..<65536).map { _ in UInt8.random(in: 0...255, using: &generator) }
                try stream.write(piece, timeout: 10)
                var back: [UInt8] = []
                let deadline = Deadline(seconds: 10)
                while back.count < piece.count {
                    guard let chunk = try stream.read(deadline: deadline) else { return false }
                    back += chunk
                }
                guard back == piece else { return false }
            }
            return true
        }
        #expect(echoed)
        try await waitUntil("the server logs how the connection ended") {
            server.logTail().contains("close after 1048576 bytes")
        }
        #expect(server.logTail().contains("clean close after 1048576 bytes"), "\(server.logTail())")
    }

    // MARK: - The SDK

    /// (a) An agent registers and logs in over TLS (https:// registration, wss:// WebSocket) with the CA file, creates
    /// a channel and exchanges end-to-end encrypted messages with an agent on a plain broker on the same Redis.
    @Test func agentsExchangeMessagesOverTLSAndPlain() async throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let redisURL = "redis://127.0.0.1:\(redis.port)"
        let server = try await TLSBroker(extraArguments: ["--redis-url", redisURL])
        defer { server.stop() }
        let plain = try await BrokerProcess.start(
            extraArguments: ["--redis-url", redisURL, "--issuer", Self.issuer, "--register-rate", "1000"],
            logLevel: "warning")
        defer { plain.stop() }
        #expect(server.url.hasPrefix("https://") && plain.baseURL.hasPrefix("http://"))

        let alice = try AgentChatClient(identity: .generate(name: "alice"), server: server.url,
                                        configuration: Self.configuration(caFile: server.pki.caFile))
        #expect(alice.server.isTLS)
        _ = try await alice.register()
        // The WebSocket under the other spelling of the same URL.
        let aliceWSS = try AgentChatClient(identity: alice.identity, server: "wss://127.0.0.1:\(server.port)",
                                           configuration: Self.configuration(caFile: server.pki.caFile))
        let profile = try await aliceWSS.connect()
        #expect(profile.did == alice.identity.did && profile.name == "alice")

        let bob = try AgentChatClient(identity: .generate(name: "bob"), server: plain.baseURL,
                                      configuration: Self.configuration(caFile: nil))
        _ = try await bob.register()
        try await bob.connect()

        let channel = try await aliceWSS.createChannel(name: "tls-room", members: [bob.identity.did])
        #expect(Set(channel.members.map(\.did)) == [alice.identity.did, bob.identity.did])
        let bobStream = Collector(try await bob.subscribe(channel: channel.id))
        let aliceStream = Collector(try await aliceWSS.subscribe(channel: channel.id))
        let secret = "over-tls-\(UUID().uuidString)"
        #expect(try await aliceWSS.send(channel: channel.id, text: secret).offset == 1)
        try await waitUntil("bob receives alice's message", timeout: 20) { bobStream.messages.count == 1 }
        let received = try #require(bobStream.messages.first)
        #expect(received.verified && received.text == secret && received.sender == alice.identity.did.description)

        let reply = "back-over-plain-\(UUID().uuidString)"
        #expect(try await bob.send(channel: channel.id, text: reply).offset == 2)
        try await waitUntil("alice receives both over TLS", timeout: 20) { aliceStream.messages.count == 2 }
        #expect(aliceStream.messages.map(\.text) == [secret, reply])
        #expect(aliceStream.messages.allSatisfy { $0.verified })
        #expect(try await aliceWSS.history(channel: channel.id, limit: 10).map(\.text) == [secret, reply])

        bobStream.cancel()
        aliceStream.cancel()
        await aliceWSS.close()
        await bob.close()
    }

    /// A TLS connection cut under the client (no close_notify, as a network failure would) is reopened over TLS:
    /// the agent logs in again and resumes its subscription without gaps.
    @Test func aCutTLSConnectionReconnectsAndResumes() async throws {
        let server = try await TLSBroker()
        defer { server.stop() }
        let proxy = try FaultProxy(targetPort: server.port)
        defer { proxy.stop() }
        var configuration = Self.configuration(caFile: server.pki.caFile)
        configuration.autoReconnect = true
        let alice = try AgentChatClient(identity: .generate(name: "alice"), server: server.url,
                                        configuration: configuration)
        let bob = try AgentChatClient(identity: .generate(name: "bob"), server: "https://127.0.0.1:\(proxy.port)",
                                      configuration: configuration)
        for client in [alice, bob] {
            _ = try await client.register()
            try await client.connect()
        }
        let channel = try await alice.createChannel(name: "tls-cut", members: [bob.identity.did])
        let stream = Collector(try await bob.subscribe(channel: channel.id, since: 0))
        for index in 1...20 { _ = try await alice.send(channel: channel.id, text: "before-\(index)") }
        try await waitUntil("bob has the first 20", timeout: 20) { stream.messages.count >= 20 }
        proxy.cutAll()
        for index in 1...20 { _ = try await alice.send(channel: channel.id, text: "after-\(index)") }
        try await waitUntil("bob has all 40", timeout: 30) { stream.messages.count >= 40 }
        #expect(stream.messages.map(\.offset) == Array(1...40))
        #expect(stream.messages.map(\.text) == (1...20).map { "before-\($0)" } + (1...20).map { "after-\($0)" })
        #expect(stream.resumes.contains { $0.isReconnect && $0.recovered })
        stream.cancel()
        await alice.close()
        await bob.close()
    }

    /// (b) Without the CA file the broker's certificate does not verify: registration and login fail at once with
    /// `tls_failed`, naming the reason; a plain broker behind an https:// URL is `tls_failed` too; a CA file that
    /// cannot be used is `invalid_argument`.
    @Test func withoutTheCAFileTLSFailsWithItsOwnCode() async throws {
        let server = try await TLSBroker()
        defer { server.stop() }
        let identity = AgentIdentity.generate(name: "carol")
        let untrusting = try AgentChatClient(identity: identity, server: server.url,
                                             configuration: Self.configuration(caFile: nil))
        let registration = await #expect(throws: AgentChatError.tlsFailed) { try await untrusting.register() }
        #expect(registration?.category == .network)
        #expect(registration?.message.contains("certificate verify failed: unable to get local issuer certificate")
                == true, "\(String(describing: registration))")

        // Registered with the CA file, then logging in without it.
        _ = try await AgentChatClient(identity: identity, server: server.url,
                                      configuration: Self.configuration(caFile: server.pki.caFile)).register()
        let login = await #expect(throws: AgentChatError.tlsFailed) { try await untrusting.connect() }
        #expect(login?.message.contains("certificate verify failed") == true)
        #expect(await untrusting.profile == nil)
        await untrusting.close()

        // A CA file that cannot be read, or holds no certificate: a bad argument.
        let missing = try AgentChatClient(identity: identity, server: server.url,
                                          configuration: Self.configuration(caFile: server.pki.directory + "/none.pem"))
        let unreadable = await #expect(throws: AgentChatError.self) { try await missing.connect() }
        #expect(unreadable?.code == AgentChatError.Codes.invalidArgument && unreadable?.category == .invalidArgument)
        #expect(unreadable?.message.contains("cannot read the CA file") == true, "\(String(describing: unreadable))")
        await missing.close()
        let notPEM = server.pki.directory + "/not.pem"
        try Data("not a certificate\n".utf8).write(to: URL(fileURLWithPath: notPEM))
        let garbage = try AgentChatClient(identity: identity, server: server.url,
                                          configuration: Self.configuration(caFile: notPEM))
        let unusable = await #expect(throws: AgentChatError.self) { try await garbage.register() }
        #expect(unusable?.code == AgentChatError.Codes.invalidArgument)
        #expect(unusable?.message.contains("cannot load the CA file") == true, "\(String(describing: unusable))")
        await garbage.close()

        // A plain broker behind an https:// URL: the handshake fails (it does not hang).
        let plain = try await BrokerProcess.start(logLevel: "warning")
        defer { plain.stop() }
        let confused = try AgentChatClient(identity: identity, server: "https://127.0.0.1:\(plain.port)",
                                           configuration: Self.configuration(caFile: server.pki.caFile))
        let handshake = await #expect(throws: AgentChatError.tlsFailed) { try await confused.register() }
        #expect(handshake?.message.contains("handshake failed") == true, "\(String(describing: handshake))")
        await confused.close()
    }

    /// (c) A certificate issued by the trusted CA for another name is refused, for an IP address and for a host name.
    @Test func aCertificateForAnotherNameIsRefused() async throws {
        let server = try await TLSBroker(names: ["DNS:chat.other.example"])
        defer { server.stop() }
        for (host, reason) in [("127.0.0.1", "IP address mismatch"), ("localhost", "hostname mismatch")] {
            let client = try AgentChatClient(identity: .generate(name: "dave"),
                                             server: "https://\(host):\(server.port)",
                                             configuration: Self.configuration(caFile: server.pki.caFile))
            let refused = await #expect(throws: AgentChatError.tlsFailed) { try await client.register() }
            #expect(refused?.message.contains("certificate verify failed: \(reason)") == true,
                    "\(String(describing: refused))")
            #expect(refused?.message.contains("not for \(host)") == true)
            let login = await #expect(throws: AgentChatError.tlsFailed) { try await client.connect() }
            #expect(login?.message.contains(reason) == true)
            await client.close()
        }
        // The WebSocket client on its own refuses it too.
        let port = server.port, caFile = server.pki.caFile
        let error = await #expect(throws: WebSocketError.self) {
            _ = try await WebSocketClient.connect(port: port, subprotocols: [AgentChatClient.subprotocol],
                                                  tls: TLSOptions(caFile: caFile), timeout: 10)
        }
        guard case .tls(let reason)? = error else {
            Issue.record("expected a TLS error, got \(String(describing: error))")
            return
        }
        #expect(reason.contains("IP address mismatch"))
    }

    // MARK: - The CLI

    /// (d) The CLI with `--ca-file` (and `AGENTCHAT_CA_FILE`) against a TLS broker: keygen, register, channel create,
    /// send, history; without it, status 4 and `tls_failed`.
    @Test func cliWithCAFile() async throws {
        let server = try await TLSBroker()
        defer { server.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let alice = ["--server", server.url, "--identity", root + "/alice.json", "--ca-file", server.pki.caFile]
        let bob = ["--server", "wss://127.0.0.1:\(server.port)", "--identity", root + "/bob.json"]
        let bobEnvironment = ["AGENTCHAT_CA_FILE": server.pki.caFile]
        #expect(try await runCLI(["keygen"] + alice).status == 0)
        #expect(try await runCLI(["keygen"] + bob).status == 0)

        // Without a CA file: refused before anything is sent, status 4, the code and OpenSSL's reason on stderr.
        let untrusting = try await runCLI(["register", "--name", "bob"] + bob)
        #expect(untrusting.status == 4)
        #expect(untrusting.stderr.contains("certificate verify failed") && untrusting.stderr.contains("(tls_failed)"),
                "\(untrusting.stderr)")
        #expect(untrusting.stdout.isEmpty)
        let untrustingJSON = try await runCLI(["register", "--name", "bob", "--json"] + bob)
        #expect(untrustingJSON.status == 4)
        let error = try JSONParser.parse(untrustingJSON.stderr.trimmingCharacters(in: .newlines))
        #expect(error["error"]?["code"]?.stringValue == "tls_failed")

        let registerAlice = try await runCLI(["register", "--name", "alice"] + alice)
        #expect(registerAlice.status == 0, "\(registerAlice.stderr)")
        let registerBob = try await runCLI(["register", "--name", "bob"] + bob, environment: bobEnvironment)
        #expect(registerBob.status == 0, "\(registerBob.stderr)")
        let bobDID = try AgentIdentity.load(from: root + "/bob.json").did.description

        let create = try await runCLI(["channel", "create", "--name", "tls-cli", "--member", bobDID] + alice)
        #expect(create.status == 0, "\(create.stderr)")
        let channel = create.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(ChannelID(channel) != nil)
        let secret = "cli-over-tls-\(UUID().uuidString)"
        let send = try await runCLI(["send", "--channel", channel, secret] + alice)
        #expect(send.status == 0, "\(send.stderr)")
        #expect(send.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == "1")
        let history = try await runCLI(["history", "--channel", channel] + bob, environment: bobEnvironment)
        #expect(history.status == 0, "\(history.stderr)")
        #expect(history.stdout.split(separator: "\n").last?.hasSuffix(": " + secret) == true, "\(history.stdout)")

        // The flag wins over the variable; login without any CA file fails cleanly.
        let wrongFlag = try await runCLI(["whoami", "--ca-file", root + "/missing.pem"] + bob,
                                         environment: bobEnvironment)
        #expect(wrongFlag.status == 2 && wrongFlag.stderr.contains("cannot read the CA file"), "\(wrongFlag.stderr)")
        let whoami = try await runCLI(["whoami"] + bob)
        #expect(whoami.status == 4 && whoami.stderr.contains("tls_failed"), "\(whoami.stderr)")

        // `agentchat mcp` takes the same option.
        let mcpHelp = try await runCLI(["mcp", "--help"])
        #expect(mcpHelp.stdout.contains("--ca-file") && mcpHelp.stdout.contains("AGENTCHAT_CA_FILE"))
    }

    /// `agentchat mcp --ca-file` logs in over TLS (its `whoami` tool answers with the profile); without the CA file
    /// the tool answers `tls_failed`.
    @Test func mcpWithCAFile() async throws {
        let server = try await TLSBroker()
        defer { server.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let global = ["--server", server.url, "--identity", root + "/mcp.json"]
        #expect(try await runCLI(["keygen", "--name", "mcp-agent"] + global).status == 0)
        let register = try await runCLI(["register"] + global + ["--ca-file", server.pki.caFile])
        #expect(register.status == 0, "\(register.stderr)")
        let did = register.stdout.trimmingCharacters(in: .whitespacesAndNewlines)

        let trusted = try await Self.mcpWhoami(global + ["--ca-file", server.pki.caFile])
        #expect(trusted.contains("\"isError\":false") && trusted.contains(did), "\(trusted)")
        let untrusted = try await Self.mcpWhoami(global)
        #expect(untrusted.contains("\"isError\":true") && untrusted.contains("tls_failed")
                && untrusted.contains("certificate verify failed"), "\(untrusted)")
    }

    /// Runs `agentchat mcp <arguments>`, calls its `whoami` tool, and returns the answer's line (or all of stdout if
    /// none came; the process is terminated after 30 s at the latest).
    static func mcpWhoami(_ arguments: [String]) async throws -> String {
        let binary = try locateCLI()
        return try await DedicatedThread.run {
            let process = Process()
            process.executableURL = URL(fileURLWithPath: binary)
            process.arguments = ["mcp"] + arguments
            process.environment = ProcessInfo.processInfo.environment.filter { !$0.key.hasPrefix("AGENTCHAT_") }
            let input = Pipe(), output = Pipe()
            process.standardInput = input
            process.standardOutput = output
            process.standardError = FileHandle.nullDevice
            try process.run()
            let watchdog = ProcessWatchdog(process, seconds: 30)
            defer {
                watchdog.cancel()
                if process.isRunning { process.terminate() }
                process.waitUntilExit()
            }
            let requests = [
                #"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","#
                    + #""capabilities":{},"clientInfo":{"name":"tls-test","version":"1"}}}"#,
                #"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
                #"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"whoami","arguments":{}}}"#,
            ]
            input.fileHandleForWriting.write(Data((requests.joined(separator: "\n") + "\n").utf8))
            var text = ""
            while !text.split(separator: "\n").contains(where: { $0.contains(#""id":2,"#) }) {
                let data = output.fileHandleForReading.availableData
                if data.isEmpty { break }
                text += String(decoding: data, as: UTF8.self)
            }
            try? input.fileHandleForWriting.close()
            return text.split(separator: "\n").first { $0.contains(#""id":2,"#) }.map(String.init) ?? text
        }
    }
}

/// Terminates a process that is still running after `seconds`, unless cancelled first.
final class ProcessWatchdog: @unchecked Sendable {
    private let lock = NSLock()
    private var process: Process?

    init(_ process: Process, seconds: Double) {
        self.process = process
        DispatchQueue.global().asyncAfter(deadline: .now() + seconds) { [self] in
            lock.withLock {
                if let running = self.process, running.isRunning { running.terminate() }
            }
        }
    }

    func cancel() { lock.withLock { process = nil } }
}
