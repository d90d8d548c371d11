import AgentChatCrypto
import AgentChatProtocol

/// The harness's agentchat frames, all through the protocol's codec (`AgentChatProtocol`): frames it sends are
/// `ClientFrame` values encoded by `FrameCodec`, frames it reads are decoded with `decodeServerFrame`.
///
/// The hot paths (`messages` batches, `message.ack`) are scanned without parsing; the byte patterns they look for
/// are derived here from what the codec writes, and `self-check` (which `smoke` runs first) checks the scanners
/// and every frame built here against the golden frames in `Tests/Golden`.
enum Wire {
    static let codec = FrameCodec()
    static var subprotocol: String { WireProtocol.subprotocol }

    static func encode(_ frame: ClientFrame) -> [UInt8] { codec.encode(frame) }

    /// The broker frame in `payload`; nil when the codec cannot read it.
    static func decode(_ payload: UnsafeRawBufferPointer) -> ServerFrame? { decode(Array(payload)) }
    static func decode(_ bytes: [UInt8]) -> ServerFrame? { try? codec.decodeServerFrame(bytes) }

    // MARK: Frames the harness sends

    /// The answer to a `hello`: the challenge signed with the agent's key.
    static func login(_ identity: SigningKeyPair, broker: String, challenge: String, id: String = "a1")
        -> ClientFrame
    {
        .auth(id: id, .signature(did: identity.did,
                                 signature: identity.sign(AuthChallenge.signedBytes(broker: broker,
                                                                                    challenge: challenge))))
    }

    /// A viewer's `indicators.subscribe`: `["directory"]` for the directory, else channel ids.
    static func viewerSubscribe(_ channels: [String], id: String = "s1") -> ClientFrame? {
        if channels == ["directory"] { return .viewer(id: id, .subscribeDirectory) }
        let ids = channels.compactMap(ChannelID.init)
        guard ids.count == channels.count, !ids.isEmpty else { return nil }
        return .viewer(id: id, .subscribe(ids))
    }

    /// A channel's key set for `description`'s epoch: `key` sealed for every member, signed by `signer`.
    static func keySet(_ description: ChannelDescription, key: [UInt8], signer: SigningKeyPair) throws -> ChannelKeys {
        var envelopes: [DID: String] = [:]
        for member in description.members {
            envelopes[member.did] = Base64URL.encode(try EncryptionKeyPair.sealForRecipient(
                key, recipientPublicKey: member.encryptionKey))
        }
        let signed = ChannelKeys.signedBytes(channel: description.id, epoch: description.epoch,
                                             envelopes: Dictionary(uniqueKeysWithValues: envelopes.map {
                                                 ($0.key.description, $0.value)
                                             }))
        return ChannelKeys(channel: description.id, epoch: description.epoch, envelopes: envelopes,
                           signature: Base64URL.encode(signer.sign(signed)))
    }

    // MARK: Byte patterns of the scanners, from the codec's output

    /// `"key":value` as the codec's JSON writer writes it inside an object.
    static func member(_ key: String, _ value: JSONValue) -> [UInt8] {
        Array(JSONWriter.encode(.object([key: value])).dropFirst().dropLast())
    }

    /// `"key":"`: where a string member's value starts.
    static func stringMemberStart(_ key: String) -> [UInt8] { Array(member(key, "").dropLast()) }

    /// A `messages` frame as the codec writes it starts with `beforeChannel`, the channel id, then `afterChannel`
    /// (up to its first stored item).
    static let messagesFrame: (beforeChannel: [UInt8], afterChannel: [UInt8]) = {
        let channel = ChannelID(randomBytes: [UInt8](repeating: 0, count: 16))
        let bytes = codec.encode(ServerFrame.messages(ref: nil, channel: channel, [], next: nil))
        let id = Array(channel.rawValue.utf8)
        let at = (0...(bytes.count - id.count)).first { bytes[$0..<($0 + id.count)].elementsEqual(id) }!
        let after = bytes[(at + id.count)...]
        return (Array(bytes[..<at]), Array(after.prefix(through: after.firstIndex(of: UInt8(ascii: "["))!)))
    }()

    /// Where each stored item starts: `{"offset":`.
    static let itemStart = MessageItem.prefix
    static let ciphertextStart = stringMemberStart("ciphertext")
    static let clientMessageIDStart = stringMemberStart("id")
    static let refStart = stringMemberStart("ref")
    /// In every `message.ack` (and no other frame).
    static let ackType = member("type", .string(FrameType.messageAck.rawValue))
}

extension ServerFrame {
    /// The description of a `channel` answer.
    var channelDescription: ChannelDescription? {
        if case .channel(_, let description) = self { description } else { nil }
    }

    /// The error of an `error` frame.
    var protocolError: ProtocolError? {
        if case .error(let error, _) = self { error } else { nil }
    }
}
