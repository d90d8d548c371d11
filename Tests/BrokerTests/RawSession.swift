import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// A logged-in agent speaking raw protocol frames, for broker-level tests: requests are matched to replies by
/// `ref`, everything else is kept in an inbox.
/// Used from one thread at a time (a test may hand it to one helper thread while it does not touch it).
final class RawSession: @unchecked Sendable {
    let agent: TestAgent
    let client: WebSocketClient
    private(set) var inbox: [JSONValue] = []
    private var nextID = 0

    init(agent: TestAgent, port: Int, register: Bool = true) throws {
        self.agent = agent
        if register { _ = try agent.register(port: port) }
        client = try WebSocketClient.connect(port: port, subprotocols: ["agentchat.v1"])
        let hello = try JSONParser.parse(client.receiveText(timeout: 5))
        let welcome = try agent.login(client, hello: hello)
        guard welcome["type"] == "welcome" else { throw FixtureError.unexpected("login: \(welcome)") }
    }

    var did: DID { agent.did }

    /// Sends `frame` with a fresh `id` and returns the frame whose `ref` matches.
    @discardableResult
    func request(_ frame: JSONValue, timeout: Double = 10) throws -> JSONValue {
        nextID += 1
        let id = "r\(nextID)"
        guard case .object(var fields) = frame else { throw FixtureError.unexpected("not an object") }
        fields["id"] = .string(id)
        try client.send(text: String(decoding: JSONWriter.encode(.object(fields)), as: UTF8.self))
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let reply = try JSONParser.parse(client.receiveText(timeout: max(0.1, deadline.timeIntervalSinceNow)))
            if reply["ref"]?.stringValue == id { return reply }
            inbox.append(reply)
        }
        throw FixtureError.timeout("no reply to \(frame)")
    }

    /// The next frame of `type` (from the inbox first).
    func next(_ type: String, timeout: Double = 10) throws -> JSONValue {
        if let index = inbox.firstIndex(where: { $0["type"]?.stringValue == type }) {
            return inbox.remove(at: index)
        }
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let frame = try JSONParser.parse(client.receiveText(timeout: max(0.1, deadline.timeIntervalSinceNow)))
            if frame["type"]?.stringValue == type { return frame }
            inbox.append(frame)
        }
        throw FixtureError.timeout("no \(type) frame")
    }

    /// Message items received until `count` have arrived (from `messages` frames of `channel`).
    func receiveMessages(_ count: Int, channel: String, timeout: Double = 20) throws -> [JSONValue] {
        var items: [JSONValue] = []
        let deadline = Date().addingTimeInterval(timeout)
        while items.count < count, Date() < deadline {
            let frame = try next("messages", timeout: max(0.1, deadline.timeIntervalSinceNow))
            if frame["channel"]?.stringValue == channel { items += frame["messages"]?.arrayValue ?? [] }
        }
        return items
    }

    func createChannel(name: String = "room", open: Bool = false, members: [DID] = []) throws -> JSONValue {
        let reply = try request(["type": "channel.create", "name": .string(name), "open": .bool(open),
                                 "members": .array(members.map { .string($0.description) })])
        guard reply["type"] == "channel", let channel = reply["channel"] else {
            throw FixtureError.unexpected("create: \(reply)")
        }
        return channel
    }

    func describe(_ channel: String) throws -> JSONValue {
        try request(["type": "channel.describe", "channel": .string(channel)])
    }

    /// Publishes (opaque, test-only) key envelopes for the current epoch, one per current member.
    @discardableResult
    func publishKeys(_ channel: String) throws -> JSONValue {
        let description = try describe(channel)["channel"]
        let epoch = description?["epoch"]?.integerValue ?? 0
        var envelopes: [String: String] = [:]
        for member in description?["members"]?.arrayValue ?? [] {
            guard let did = member["did"]?.stringValue,
                let key = member["encryptionKey"]?.stringValue.flatMap(Base64URL.decode)
            else { continue }
            let sealed = try EncryptionKeyPair.sealForRecipient(SecureRandom.bytes(32), recipientPublicKey: key)
            envelopes[did] = Base64URL.encode(sealed)
        }
        let id = ChannelID(channel)!
        let signature = agent.signing.sign(ChannelKeys.signedBytes(channel: id, epoch: epoch, envelopes: envelopes))
        return try request(["type": "channel.keys", "channel": .string(channel), "epoch": .number(Double(epoch)),
                            "envelopes": .object(envelopes.mapValues { .string($0) }),
                            "signature": .string(Base64URL.encode(signature))])
    }

    /// A `message.send` with a signed, opaque ciphertext.
    func send(_ channel: String, epoch: Int64, ciphertext: [UInt8] = SecureRandom.bytes(48),
              clientMessageID: String = UUID().uuidString) throws -> JSONValue
    {
        let nonce = Base64URL.encode(SecureRandom.bytes(12))
        let text = Base64URL.encode(ciphertext)
        let signed = MessageSend.signedBytes(channel: ChannelID(channel)!, epoch: epoch,
                                             clientMessageID: clientMessageID, nonce: nonce, ciphertext: text)
        return try request(["type": "message.send", "channel": .string(channel), "epoch": .number(Double(epoch)),
                            "clientMessageId": .string(clientMessageID), "nonce": .string(nonce),
                            "ciphertext": .string(text),
                            "signature": .string(Base64URL.encode(agent.signing.sign(signed)))])
    }
}
