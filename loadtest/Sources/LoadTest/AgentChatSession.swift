import AgentChatCrypto
import AgentChatProtocol
import Glibc

/// One agentchat.v1 connection: `hello` → `auth` (challenge signed with the agent's key) → `welcome`, then, to
/// subscribe, `channel.join` → `channel.subscribe` → `subscribed`. `messages` batches are scanned for each
/// message's `"ciphertext":"` without parsing the JSON: the first 24 characters of the ciphertext are the
/// harness's header (see `MessageHeader`).
final class AgentChatSession: SessionHandler, ReadyNotifying {
    let context: SessionContext
    let mode: SessionMode
    let identity: SigningKeyPair
    var channel: String?
    private(set) var isReady = false
    var onReady: (() -> Void)?
    /// Replies by `ref`, for the publisher's setup steps.
    var onReply: ((String, JSONValue) -> Void)?
    var acks = 0
    var errors = 0
    /// Already a member (rooms are created with their members): subscribe without joining.
    var skipJoin = false

    init(context: SessionContext, mode: SessionMode, identity: SigningKeyPair, channel: String?) {
        self.context = context
        self.mode = mode
        self.identity = identity
        self.channel = channel
    }

    func opened(_ c: WebSocketConnection) {}

    func sendFrame(_ c: WebSocketConnection, _ value: JSONValue) {
        c.send(JSONWriter.encode(value), binary: false)
    }

    private func markReady() {
        if !isReady { isReady = true; context.ready += 1; onReady?() }
    }

    private static let batchPrefix = Array(#"{"channel":"#.utf8)
    private static let marker = Array(#""ciphertext":""#.utf8)
    private static let ackPrefix = Array(#"{"channel":"#.utf8)

    func received(_ c: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool) {
        // Fast path: a `messages` batch (keys sorted, so it starts with "channel" and each item with "offset",
        // then "ciphertext").
        if payload.count > 64 && payload.starts(with: Self.batchPrefix) {
            let now = nowNs()
            let m = Self.marker
            var i = 0
            let end = payload.count - m.count - MessageHeader.textCount
            var found = false
            while i < end {
                if payload[i] == m[0] && payload[i + 1] == m[1] && payload[i + 2] == m[2] && payload[i + 3] == m[3] {
                    var ok = true
                    for k in 4..<m.count where payload[i + k] != m[k] { ok = false; break }
                    if ok, let h = MessageHeader.decode(payload, at: i + m.count) {
                        context.recorder.record(connection: c.index, h, now: now)
                        found = true
                        i += m.count + 200
                        continue
                    }
                }
                i += 1
            }
            if found { return }
        }
        // message.ack is frequent on the publisher: count it without a full parse.
        if payload.count < 200, let s = String(validating: payload, as: UTF8.self),
           s.contains(#""type":"message.ack""#)
        {
            acks += 1
            return
        }
        guard let value = try? JSONParser.parse(Array(payload)) else { return }
        switch value["type"]?.stringValue {
        case "hello":
            guard let broker = value["broker"]?.stringValue, let challenge = value["challenge"]?.stringValue else {
                return
            }
            let signature = identity.sign(AuthChallenge.signedBytes(broker: broker, challenge: challenge))
            sendFrame(c, ["type": "auth", "id": "a1", "did": .string(identity.did.description),
                          "signature": .string(Base64URL.encode(signature))])
        case "welcome":
            if mode == .subscribe, let channel, skipJoin {
                sendFrame(c, ["type": "channel.subscribe", "id": "s1", "channel": .string(channel)])
            } else if mode == .subscribe, let channel {
                sendFrame(c, ["type": "channel.join", "id": "j1", "channel": .string(channel)])
            } else {
                markReady()
            }
        case "channel" where value["ref"]?.stringValue == "j1":
            sendFrame(c, ["type": "channel.subscribe", "id": "s1", "channel": .string(channel ?? "")])
        case "subscribed":
            markReady()
        case "error":
            errors += 1
            context.protocolErrors += 1
            if context.firstFailure == nil {
                context.firstFailure = "agentchat error: \(String(decoding: payload, as: UTF8.self))"
            }
            if let ref = value["ref"]?.stringValue { onReply?(ref, value) }
            if value["ref"]?.stringValue == "j1" {
                // Already a member (the channel's owner, whose other connection publishes): subscribe anyway.
                errors -= 1
                context.protocolErrors -= 1
                sendFrame(c, ["type": "channel.subscribe", "id": "s1", "channel": .string(channel ?? "")])
            } else if value["ref"]?.stringValue == "s1" || value["ref"]?.stringValue == "a1" {
                context.fail("agentchat: \(value["code"]?.stringValue ?? "?")")
            }
        default:
            if let ref = value["ref"]?.stringValue { onReply?(ref, value) }
        }
    }

    func closed(_ c: WebSocketConnection, reason: String) { context.fail("agentchat: \(reason)") }
}

/// One agent's key pairs, as the coordinator makes and registers them and hands them to workers.
struct AgentIdentity {
    let signing: SigningKeyPair
    let encryption: EncryptionKeyPair

    init() {
        signing = SigningKeyPair()
        encryption = EncryptionKeyPair()
    }

    init(seed: [UInt8]) throws {
        signing = try SigningKeyPair(seed: seed)
        encryption = EncryptionKeyPair()
    }
}
