/// Channel and message requests (authenticated connections only). See `docs/PROTOCOL.md`.
public enum ChannelRequest: Equatable, Sendable {
    case create(name: String, open: Bool, members: [DID])
    case invite(ChannelID, DID)
    case join(ChannelID)
    case leave(ChannelID)
    case remove(ChannelID, DID)
    /// The agent's channels with ids after `after` (in id order), at most `limit`.
    case list(after: ChannelID?, limit: Int)
    case describe(ChannelID)
    /// Starts a new epoch without a membership change (a member's envelope would not open, or keys must change).
    case rotate(ChannelID)
    case publishKeys(ChannelKeys)
    case getKeys(ChannelID, epoch: Int64)
    case send(MessageSend)
    case subscribe(ChannelID, since: Int64?, historyEpoch: String?)
    case unsubscribe(ChannelID)
    case history(ChannelID, before: Int64?, after: Int64?, limit: Int)
    case listing(ChannelID, listed: Bool, title: String, topic: String)
    /// Moves the agent's read cursor forward to `offset` (never back).
    case setCursor(ChannelID, offset: Int64)
    /// Read cursors and unread counts of the agent's channels with ids after `after` (in id order), at most `limit`.
    case unread(after: ChannelID?, limit: Int)
}

/// A set of key envelopes for one epoch, signed by the member who made the key.
public struct ChannelKeys: Equatable, Sendable {
    public var channel: ChannelID
    public var epoch: Int64
    /// Recipient DID → sealed box (base64url, as sent).
    public var envelopes: [DID: String]
    public var signature: String

    public init(channel: ChannelID, epoch: Int64, envelopes: [DID: String], signature: String) {
        self.channel = channel
        self.epoch = epoch
        self.envelopes = envelopes
        self.signature = signature
    }

    /// The bytes the sender signs: `agentchat-keys-v1\n<channel>\n<epoch>\n` and `<did> <envelope>\n` per
    /// envelope, sorted by DID.
    public static func signedBytes(channel: ChannelID, epoch: Int64, envelopes: [String: String]) -> [UInt8] {
        var text = "agentchat-keys-v1\n\(channel)\n\(epoch)\n"
        for did in envelopes.keys.sorted() { text += "\(did) \(envelopes[did]!)\n" }
        return Array(text.utf8)
    }

    /// Length of an envelope: a 32-byte channel key sealed with `crypto_box_seal` (32 + 48 bytes).
    public static let envelopeBytes = 80
    /// Most members a channel may have (and so envelopes per epoch).
    public static let maxMembers = 1_000
}

/// An encrypted message as the sender submits it.
public struct MessageSend: Equatable, Sendable {
    public var channel: ChannelID
    public var epoch: Int64
    public var clientMessageID: String
    /// base64url, as sent (the signature covers these exact strings).
    public var nonce: String
    public var ciphertext: String
    public var signature: String

    public init(channel: ChannelID, epoch: Int64, clientMessageID: String, nonce: String, ciphertext: String,
                signature: String)
    {
        self.channel = channel
        self.epoch = epoch
        self.clientMessageID = clientMessageID
        self.nonce = nonce
        self.ciphertext = ciphertext
        self.signature = signature
    }

    /// Largest ciphertext (including the 16-byte tag), decoded.
    public static let maxCiphertextBytes = 32 * 1024
    public static let maxClientMessageIDBytes = 64

    /// Associated data for AES-256-GCM.
    public static func associatedData(channel: ChannelID, epoch: Int64, sender: DID, clientMessageID: String)
        -> [UInt8]
    {
        Array("agentchat-msg-v1\n\(channel)\n\(epoch)\n\(sender)\n\(clientMessageID)".utf8)
    }

    /// The bytes the sender signs.
    public static func signedBytes(channel: ChannelID, epoch: Int64, clientMessageID: String, nonce: String,
                                   ciphertext: String) -> [UInt8]
    {
        Array("agentchat-msg-v1\n\(channel)\n\(epoch)\n\(clientMessageID)\n\(nonce)\n\(ciphertext)".utf8)
    }
}

/// The JSON of one stored message, built once by the broker that accepts it and then stored, published and
/// delivered byte for byte. It starts with `{"offset":` so the offset can be read back without parsing.
public enum MessageItem {
    public static let prefix = Array(#"{"offset":"#.utf8)

    /// Everything after the offset: `,"ciphertext":…,"ts":…}`.
    public static func suffix(_ message: MessageSend, sender: DID, timestamp: Int64) -> [UInt8] {
        suffix(ciphertext: message.ciphertext, epoch: message.epoch, clientMessageID: message.clientMessageID,
               nonce: message.nonce, sender: sender, signature: message.signature, timestamp: timestamp)
    }

    public static func suffix(ciphertext: String, epoch: Int64, clientMessageID: String, nonce: String, sender: DID,
                              signature: String, timestamp: Int64) -> [UInt8]
    {
        var writer = JSONWriter(reservingCapacity: ciphertext.utf8.count + 400)
        func field(_ name: String, _ write: (inout JSONWriter) -> Void) {
            writer.append(Array(",\"\(name)\":".utf8))
            write(&writer)
        }
        field("ciphertext") { $0.writeString(ciphertext) }
        field("epoch") { $0.write(.number(Double(epoch))) }
        field("id") { $0.writeString(clientMessageID) }
        field("nonce") { $0.writeString(nonce) }
        field("sender") { $0.writeString(sender.description) }
        field("signature") { $0.writeString(signature) }
        field("ts") { $0.write(.number(Double(timestamp))) }
        writer.append([UInt8(ascii: "}")])
        return writer.bytes
    }

    /// The offset of an item, read from its first bytes.
    public static func offset(of item: [UInt8]) -> Int64? {
        guard item.count > prefix.count, item.starts(with: prefix) else { return nil }
        var value: Int64 = 0
        var index = prefix.count
        while index < item.count, item[index] >= 48, item[index] <= 57 {
            value = value * 10 + Int64(item[index] - 48)
            index += 1
        }
        return index > prefix.count ? value : nil
    }

    /// A `messages` frame holding `items` (each a stored item's bytes), joined without re-encoding them.
    /// `next` (history replies cut short by their size cap) is where the next page starts.
    public static func batch(channel: ChannelID, items: some Collection<[UInt8]>, ref: String? = nil,
                             next: Int64? = nil) -> [UInt8]
    {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(items.reduce(64) { $0 + $1.count + 1 })
        bytes.append(contentsOf: #"{"channel":""#.utf8)
        bytes.append(contentsOf: channel.rawValue.utf8)
        bytes.append(contentsOf: #"","messages":["#.utf8)
        var first = true
        for item in items {
            if !first { bytes.append(UInt8(ascii: ",")) }
            first = false
            bytes.append(contentsOf: item)
        }
        bytes.append(UInt8(ascii: "]"))
        if let next { bytes.append(contentsOf: #","next":\#(next)"#.utf8) }
        if let ref {
            var writer = JSONWriter()
            writer.writeString(ref)
            bytes.append(contentsOf: #","ref":"#.utf8)
            bytes.append(contentsOf: writer.bytes)
        }
        bytes.append(contentsOf: #","type":"messages"}"#.utf8)
        return bytes
    }
}
