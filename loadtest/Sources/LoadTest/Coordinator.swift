import AgentChatCrypto
import AgentChatProtocol
import CLoadTestShims
import Foundation
import Glibc
import Histogram

/// A worker process started by the coordinator, talked to over its stdin/stdout.
final class WorkerProcess {
    let process: Process
    let input: FileHandle
    let output: LineReader
    let connections: Int

    init(arguments: [String], connections: Int, loop: EventLoop) throws {
        process = Process()
        // /proc/self/exe, not its target: it still works when the binary was rebuilt meanwhile.
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe")
        process.arguments = ["worker"] + arguments
        let inPipe = Pipe(), outPipe = Pipe()
        process.standardInput = inPipe
        process.standardOutput = outPipe
        try process.run()
        lt_register_child(process.processIdentifier)
        input = inPipe.fileHandleForWriting
        output = LineReader(fd: dup(outPipe.fileHandleForReading.fileDescriptor))
        try? outPipe.fileHandleForReading.close()
        self.connections = connections
        loop.add(output)
    }

    func send(_ line: String) { try? input.write(contentsOf: Data((line + "\n").utf8)) }

    /// Waits for the next line (the loop keeps running meanwhile).
    func nextLine(_ loop: EventLoop, timeout: Double) -> String? {
        var line: String?
        loop.run(seconds: timeout) {
            line = output.takeLine()
            return line != nil || output.closed
        }
        return line
    }

    var cpu: Double { ProcStat.cpuSeconds(process.processIdentifier) ?? 0 }

    func stop() {
        send("quit")
        let deadline = nowNs() + 5_000_000_000
        while process.isRunning && nowNs() < deadline { usleep(20_000) }
        if process.isRunning { kill(process.processIdentifier, SIGKILL); process.waitUntilExit() }
        lt_unregister_child(process.processIdentifier)
    }
}

/// The publishing side of a target, in the coordinator process.
final class Publisher {
    let loop: EventLoop
    let kind: TargetKind
    let context = SessionContext(connections: 1)
    var connection: WebSocketConnection!
    let payloadSize: Int
    private var nats: NATSSession?
    private var mqtt: MQTTSession?
    private var mirror: MirrorSession?
    private(set) var agent: AgentChatSession?
    private var agentSend: AgentChatSendTemplate?

    convenience init(loop: EventLoop, server: TargetServer, payloadSize: Int, identity: AgentIdentity?) throws {
        try self.init(loop: loop, endpoint: server.endpoint, payloadSize: payloadSize, identity: identity)
    }

    /// Connects to `endpoint` (for agentchat: logs `identity` in) and waits until the connection is ready.
    init(loop: EventLoop, endpoint e: Endpoint, payloadSize: Int, identity: AgentIdentity?) throws {
        self.loop = loop
        self.kind = e.target
        self.payloadSize = payloadSize
        let handler: SessionHandler
        switch e.target {
        case .nats: nats = NATSSession(context: context, mode: .subscribe, publisher: true); handler = nats!
        case .mosquitto: mqtt = MQTTSession(context: context, mode: .subscribe, publisher: true); handler = mqtt!
        case .lwsMirror: mirror = MirrorSession(context: context, publisher: true); handler = mirror!
        case .agentchat:
            agent = AgentChatSession(context: context, mode: .idle, identity: identity!.signing, channel: nil)
            handler = agent!
        }
        guard let c = WebSocketConnection(index: 0, source: "127.0.0.1", host: e.host, port: e.port, path: e.path,
                                          subprotocol: e.subprotocol, handler: handler, loop: loop)
        else { throw HarnessError("publisher could not connect") }
        connection = c
        guard loop.run(seconds: 15, until: { context.ready + context.failed > 0 }), context.ready == 1 else {
            throw HarnessError("publisher not ready: \(context.firstFailure ?? "timeout")")
        }
    }

    /// agentchat: a request (`id` ref) on the publisher's connection, waiting for the reply with `ref`.
    func request(_ ref: String, _ request: ChannelRequest, timeout: Double = 30) throws -> ServerFrame {
        guard let agent else { throw HarnessError("not an agentchat publisher") }
        var reply: ServerFrame?
        agent.onReply = { r, v in if r == ref { reply = v } }
        agent.sendFrame(connection, .channel(id: ref, request))
        loop.run(seconds: timeout) { reply != nil || !connection.isOpen }
        agent.onReply = nil
        guard let reply else { throw HarnessError("no reply to \(ref)") }
        if let error = reply.protocolError { throw HarnessError("\(ref) refused: \(error.code) \(error.message)") }
        return reply
    }

    /// agentchat: publishes a fresh channel key for the current epoch to every member, then prepares the send
    /// template for that epoch. Returns the epoch and its key (for other senders' templates).
    @discardableResult
    func publishKeys(channel: String, runTag: String) throws -> (epoch: Int64, key: [UInt8]) {
        guard let channelID = ChannelID(channel),
              let desc = try request("d1", .describe(channelID)).channelDescription
        else { throw HarnessError("bad channel description") }
        let epoch = desc.epoch
        let key = SecureRandom.bytes(32)
        _ = try request("k1", .publishKeys(try Wire.keySet(desc, key: key, signer: agent!.identity)))
        agentSend = try AgentChatSendTemplate(channel: channelID, epoch: epoch, key: key, signer: agent!.identity,
                                              payloadSize: payloadSize, runTag: runTag)
        return (epoch, key)
    }

    func publish(_ header: MessageHeader) {
        switch kind {
        case .nats: nats!.publish(connection, payload: peerPayload(header, size: payloadSize))
        case .mosquitto: mqtt!.publish(connection, payload: peerPayload(header, size: payloadSize))
        case .lwsMirror: mirror!.publish(connection, payload: peerPayload(header, size: payloadSize))
        case .agentchat:
            connection.send(agentSend!.frame(header), binary: false)
            agent!.sent(at: header.sentNs)
        }
    }

    var acks: Int { agent?.acks ?? 0 }
    var errors: Int { context.protocolErrors }
}

/// `message.send` for the benchmark: the ciphertext is a real AES-256-GCM encryption made once up front, whose
/// first 18 bytes are then overwritten with the harness's header for each send (the broker never decrypts; the
/// bytes stay opaque to it). Each send has a fresh `clientMessageId`, a unique nonce and a valid Ed25519
/// signature over exactly what is sent, unless `signsEachMessage` is false: then every send carries one signature
/// made up front (64 bytes, well-formed; the broker checks a signature's encoding and size, never its validity,
/// which only recipients can and the harness's do not), which spares the harness an Ed25519 signature per message
/// (a fifth of a rooms worker's CPU, taken from the broker on a shared machine).
struct AgentChatSendTemplate {
    let channel: ChannelID
    let epoch: Int64
    let signer: SigningKeyPair
    let tail: String
    let runTag: String
    let noncePrefix: [UInt8]
    let fixedSignature: String?

    init(channel: ChannelID, epoch: Int64, key: [UInt8], signer: SigningKeyPair, payloadSize: Int, runTag: String,
         signsEachMessage: Bool = true) throws {
        self.channel = channel
        self.epoch = epoch
        self.signer = signer
        self.runTag = runTag
        fixedSignature = signsEachMessage ? nil : Base64URL.encode(signer.sign(Array("agentchat-loadtest \(runTag)".utf8)))
        let size = max(payloadSize, MessageHeader.byteCount + 16)
        let plaintext = [UInt8](repeating: UInt8(ascii: "a"), count: size - 16)
        let nonce = SecureRandom.bytes(12)
        let ct = try AES256GCM.seal(plaintext, key: key, nonce: nonce,
                                    associatedData: MessageSend.associatedData(channel: channel, epoch: epoch,
                                                                               sender: signer.did,
                                                                               clientMessageID: "template"))
        tail = Base64URL.encode(ct[MessageHeader.byteCount...])
        noncePrefix = SecureRandom.bytes(4)
    }

    /// The `clientMessageId` of the message with this header: the same for every retry of it.
    func clientMessageID(_ h: MessageHeader) -> String { "\(runTag)-\(h.seq)" }

    /// The `message.send` frame; `requestID` is its `"id"`, echoed as the ack's `ref`.
    func frame(_ h: MessageHeader, requestID: String = "s") -> [UInt8] {
        let cmid = clientMessageID(h)
        var nonceBytes = noncePrefix
        for i in 0..<8 { nonceBytes.append(UInt8(truncatingIfNeeded: h.seq >> (8 * UInt64(i)))) }
        let nonce = Base64URL.encode(nonceBytes)
        let ciphertext = String(decoding: h.text, as: UTF8.self) + tail
        let sig = fixedSignature ?? Base64URL.encode(signer.sign(MessageSend.signedBytes(
            channel: channel, epoch: epoch, clientMessageID: cmid, nonce: nonce, ciphertext: ciphertext)))
        return Wire.encode(.channel(id: requestID, .send(MessageSend(channel: channel, epoch: epoch, clientMessageID: cmid,
                                                                     nonce: nonce, ciphertext: ciphertext, signature: sig))))
    }
}

/// Registers agents over HTTP (blocking, one short connection per request).
enum Registration {
    static func register(_ identity: AgentIdentity, name: String, port: Int) throws {
        let sk = Base64URL.encode(identity.signing.publicKey)
        let ek = Base64URL.encode(identity.encryption.publicKey)
        let ts = Int64(Date().timeIntervalSince1970 * 1000)
        let sig = identity.signing.sign(RegistrationRequest.signedBytes(name: name, signingKey: sk, encryptionKey: ek,
                                                                        timestamp: ts))
        let body = JSONWriter.encode(["name": .string(name), "signingKey": .string(sk), "encryptionKey": .string(ek),
                                      "timestamp": .number(Double(ts)), "signature": .string(Base64URL.encode(sig))])
        let head = "POST /api/v1/agents/register HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nContent-Type: application/json\r\n"
            + "Content-Length: \(body.count)\r\nConnection: close\r\n\r\n"
        let response = try httpExchange(port: port, request: Array(head.utf8) + body)
        guard response.hasPrefix("HTTP/1.1 201") || response.hasPrefix("HTTP/1.1 409") else {
            throw HarnessError("registration failed: \(response.prefix(200))")
        }
    }

    static func httpExchange(port: Int, request: [UInt8]) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var a = loopbackAddress(port: port)
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard ok else { throw HarnessError("HTTP connect failed") }
        var sent = 0
        while sent < request.count {
            let n = request.withUnsafeBytes { write(fd, $0.baseAddress! + sent, $0.count - sent) }
            guard n > 0 else { throw HarnessError("HTTP write failed") }
            sent += n
        }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
