import AgentChatCrypto
import AgentChatProtocol
import ArgumentParser
import Foundation

/// `self-check`: the harness's frames and scanners against the golden frames of the broker's package
/// (`Tests/Golden`, the wire format). `smoke` runs it first.
///
/// - Every frame the harness sends, built as it builds it, is accepted by the broker's codec and has the keys and
///   value types of a golden client frame of its type (optional fields may be left out, an empty array stands for
///   any array).
/// - The `message.send` template signs what it sends, and a `messages` batch of it, as the codec writes one, gives
///   back the header and clientMessageId through the fast-path scanners.
/// - Every golden broker frame decodes through `Wire`; `MessagesFrame.scan` reads exactly the golden `messages`
///   frames (offsets, ids, `ref`), and the `message.ack` fast path recognizes exactly the golden `message.ack`.
enum SelfCheck {
    static var defaultGoldenDirectory: String { CommonOptions.loadtestDirectory + "/../Tests/Golden" }

    struct Golden {
        let name: String
        let bytes: [UInt8]
        let json: JSONValue
        var type: String { json["type"]?.stringValue ?? "" }
    }

    static func load(_ directory: String, _ folder: String) throws -> [Golden] {
        let path = directory + "/" + folder
        guard let names = try? FileManager.default.contentsOfDirectory(atPath: path), !names.isEmpty else {
            throw HarnessError("self-check: no golden frames in \(path) (pass --golden <repository>/Tests/Golden)")
        }
        return try names.filter { $0.hasSuffix(".json") }.sorted().map { name in
            var bytes = Array(try Data(contentsOf: URL(fileURLWithPath: path + "/" + name)))
            if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
            return Golden(name: name, bytes: bytes, json: try JSONParser.parse(bytes))
        }
    }

    /// A value's JSON type; arrays and objects with the types of their elements (object keys are data in frames).
    static func shape(_ value: JSONValue) -> String {
        switch value {
        case .array(let items): "[" + Set(items.map(shape)).sorted().joined(separator: "|") + "]"
        case .object(let fields): "{" + Set(fields.values.map(shape)).sorted().joined(separator: "|") + "}"
        default: value.typeName
        }
    }

    static func fields(_ json: JSONValue) -> [String: String] { json.objectValue?.mapValues(shape) ?? [:] }

    /// Runs every check; returns how many passed, or throws with every failure.
    @discardableResult
    static func run(golden directory: String) throws -> Int {
        let client = try load(directory, "client")
        let server = try load(directory, "server")
        var failures: [String] = []
        var passed = 0
        func check(_ condition: Bool, _ what: @autoclosure () -> String) {
            if condition { passed += 1 } else { failures.append(what()) }
        }
        func golden(_ name: String) throws -> Golden {
            guard let found = server.first(where: { $0.name == name }) else {
                throw HarnessError("self-check: no golden \(name)")
            }
            return found
        }

        // The frames the harness sends, built as its sessions build them.
        let codec = Wire.codec
        guard case .hello(let broker, let challenge, _)? = Wire.decode(try golden("hello.json").bytes),
              let description = Wire.decode(try golden("channel.json").bytes)?.channelDescription
        else { throw HarnessError("self-check: the golden hello or channel does not decode") }
        let channel = description.id
        let identity = SigningKeyPair()
        let template = try AgentChatSendTemplate(channel: channel, epoch: description.epoch,
                                                 key: SecureRandom.bytes(32), signer: identity, payloadSize: 64,
                                                 runTag: "self-check")
        let header = MessageHeader(seq: 42, sentNs: 123_456_789, step: 3)
        var sent: [(what: String, frame: ClientFrame?, bytes: [UInt8])] = [
            ("login", Wire.login(identity, broker: broker, challenge: challenge), []),
            ("join", .channel(id: "j1", .join(channel)), []),
            ("subscribe", .channel(id: "s1", .subscribe(channel, since: nil, historyEpoch: nil)), []),
            ("chaos subscribe", .channel(id: "sub", .subscribe(channel, since: 56, historyEpoch: description.historyEpoch)), []),
            ("chaos history", .channel(id: "h", .history(channel, before: nil, after: 25, limit: 500)), []),
            ("open channel", .channel(id: "c1", .create(name: "bench", open: true, members: [])), []),
            ("room", .channel(id: "c1", .create(name: "room-1", open: false, members: [identity.did])), []),
            ("describe", .channel(id: "d1", .describe(channel)), []),
            ("keys", .channel(id: "k1", .publishKeys(try Wire.keySet(description, key: SecureRandom.bytes(32),
                                                                     signer: identity))), []),
            ("listing", .channel(id: "l1", .listing(channel, listed: true, title: "Busy 1", topic: "load test")), []),
            ("viewer directory", Wire.viewerSubscribe(["directory"]), []),
            ("viewer channels", Wire.viewerSubscribe([channel.rawValue]), []),
            ("message.send template", nil, template.frame(header, requestID: "m42")),
        ]
        for index in sent.indices where sent[index].frame != nil { sent[index].bytes = Wire.encode(sent[index].frame!) }
        let goldenClient = Dictionary(grouping: client, by: \.type)
        for (what, _, bytes) in sent {
            let text = String(decoding: bytes, as: UTF8.self)
            guard case .success(let frame) = codec.decode(bytes).frame, let json = try? JSONParser.parse(bytes) else {
                failures.append("\(what): the broker's codec refuses \(text)")
                continue
            }
            let mine = fields(json)
            let candidates = goldenClient[frame.type.rawValue] ?? []
            check(candidates.contains { g in
                let theirs = fields(g.json)
                return mine.allSatisfy { key, shape in
                    theirs[key] == shape || (shape == "[]" && theirs[key]?.hasPrefix("[") == true)
                }
            }, "\(what): \(text) fits none of the golden \(frame.type.rawValue) frames \(candidates.map(\.name))")
        }

        // The template: signed, and read back by the scanners from a `messages` batch as the codec writes it.
        if case .success(.channel(let id, .send(let message))) = codec.decode(template.frame(header, requestID: "m42")).frame {
            check(id == "m42" && message.clientMessageID == template.clientMessageID(header),
                  "message.send template: id or clientMessageId")
            let signed = MessageSend.signedBytes(channel: message.channel, epoch: message.epoch,
                                                 clientMessageID: message.clientMessageID, nonce: message.nonce,
                                                 ciphertext: message.ciphertext)
            check(Base64URL.decode(message.signature).map {
                SigningKeyPair.verify(signature: $0, message: signed, publicKey: identity.publicKey)
            } == true, "message.send template: the signature does not verify")
            let stored = StoredMessage(offset: 7, sender: identity.did, timestamp: 1, epoch: message.epoch,
                                       clientMessageID: message.clientMessageID, nonce: message.nonce,
                                       ciphertext: message.ciphertext, signature: message.signature)
            let batch = codec.encode(ServerFrame.messages(ref: nil, channel: channel, [stored, stored], next: nil))
            var headers: [MessageHeader] = []
            let found = batch.withUnsafeBytes { AgentChatSession.scanHeaders($0) { headers.append($0) } }
            check(found && headers.count == 2 && headers.allSatisfy {
                $0.seq == header.seq && $0.sentNs == header.sentNs && $0.step == header.step
            }, "AgentChatSession.scanHeaders: \(headers.count) headers from a batch of 2")
            let scanned = batch.withUnsafeBytes { MessagesFrame.scan($0) }
            check(scanned?.map(\.offset) == [7, 7] && scanned?.map(\.id) == Array(repeating: message.clientMessageID, count: 2),
                  "MessagesFrame.scan of a template batch: \(String(describing: scanned))")
        } else {
            failures.append("message.send template: not decoded as message.send")
        }

        // Broker frames: every golden one decodes; the scanners read exactly what they should.
        for g in server {
            let frame = Wire.decode(g.bytes)
            check(frame?.type.rawValue == g.type, "\(g.name): Wire.decode gives \(String(describing: frame?.type))")
            let scanned = g.bytes.withUnsafeBytes { MessagesFrame.scan($0) }
            if case .messages(let ref, _, let items, _)? = frame {
                check(scanned?.map(\.offset) == items.map(\.offset) && scanned?.map(\.id) == items.map(\.clientMessageID),
                      "\(g.name): MessagesFrame.scan gives \(String(describing: scanned))")
                check(g.bytes.withUnsafeBytes { MessagesFrame.hasRef($0) } == (ref != nil),
                      "\(g.name): MessagesFrame.hasRef")
            } else {
                check(scanned == nil, "\(g.name): MessagesFrame.scan reads a frame that is not messages")
            }
            check(g.bytes.withUnsafeBytes { AgentChatSession.isAck($0) } == (frame?.type == .messageAck),
                  "\(g.name): the message.ack fast path")
        }

        guard failures.isEmpty else {
            throw HarnessError("self-check failed:\n  " + failures.joined(separator: "\n  "))
        }
        return passed
    }
}

/// `agentchat-loadtest self-check`.
struct SelfCheckCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "self-check",
        abstract: "Check the harness's frames and fast-path scanners against the golden frames (Tests/Golden).")
    @Option(help: "The golden frames (default: Tests/Golden next to loadtest/).")
    var golden: String?

    func run() throws {
        Sodium.initialize()
        let directory = golden ?? SelfCheck.defaultGoldenDirectory
        let passed = try SelfCheck.run(golden: directory)
        print("self-check: \(passed) checks against \(directory): ok")
    }
}
