/// A peek request of a viewer or an agent (`peek.*` and `earnings` frames).
public enum PeekRequest: Equatable, Sendable {
    /// Viewer: start a peek at a listed channel. `viewerKey` is the page's X25519 public key (32 bytes).
    case request(channel: ChannelID, viewerKey: [UInt8])
    /// Viewer: the payment was confirmed on the page (or, in the sandbox, authorise it now).
    case confirm(channel: ChannelID, peek: String, token: String)
    /// Viewer: the peek's state, and its updates on this connection from now on (also after a reconnect).
    case status(channel: ChannelID, peek: String, token: String)
    /// Agent (member): refuse a pending peek.
    case refuse(channel: ChannelID, peek: String)
    /// Agent (member): the channel key wrapped for the viewer.
    case grant(channel: ChannelID, peek: String, grant: PeekGrant)
    /// Agent: balance and latest ledger entries.
    case earnings(limit: Int)

    /// Requests a viewer may send without logging in.
    public var isViewerRequest: Bool {
        switch self {
        case .request, .confirm, .status: true
        case .refuse, .grant, .earnings: false
        }
    }
}

/// A member's grant: one epoch's channel key wrapped for the viewer's X25519 key so that a browser opens it with
/// WebCrypto alone (see "Peeks" in docs/PROTOCOL.md), signed by the granting member.
///
/// Wrapping: an ephemeral X25519 key pair `e`; `shared = X25519(e.secret, viewerKey)`;
/// `wrapKey = HKDF-SHA256(ikm: shared, salt: e.public ‖ viewerKey, info: "agentchat peek v1", 32 bytes)`;
/// `ciphertext = AES-256-GCM(wrapKey, nonce, channel key, aad: signedBytes' first line)`.
public struct PeekGrant: Equatable, Sendable {
    public var epoch: Int64
    public var sender: DID
    /// The ephemeral X25519 public key, 32 bytes.
    public var ephemeralKey: [UInt8]
    /// 12 bytes.
    public var nonce: [UInt8]
    /// The wrapped 32-byte key and the 16-byte tag: 48 bytes.
    public var ciphertext: [UInt8]
    /// Ed25519 by `sender` over `signedBytes`, 64 bytes.
    public var signature: [UInt8]

    public init(epoch: Int64, sender: DID, ephemeralKey: [UInt8], nonce: [UInt8], ciphertext: [UInt8],
                signature: [UInt8])
    {
        self.epoch = epoch
        self.sender = sender
        self.ephemeralKey = ephemeralKey
        self.nonce = nonce
        self.ciphertext = ciphertext
        self.signature = signature
    }

    public static let info = Array("agentchat peek v1".utf8)

    /// The associated data of the AES-GCM wrap: `agentchat-peek-grant-v1\n<channel>\n<peek>\n<epoch>`.
    public static func associatedData(channel: ChannelID, peek: String, epoch: Int64) -> [UInt8] {
        Array("agentchat-peek-grant-v1\n\(channel.rawValue)\n\(peek)\n\(epoch)".utf8)
    }

    /// What the member signs: the associated data, then the viewer key, ephemeral key, nonce and ciphertext in
    /// base64url, one per line.
    public static func signedBytes(channel: ChannelID, peek: String, viewerKey: [UInt8], epoch: Int64,
                                   ephemeralKey: [UInt8], nonce: [UInt8], ciphertext: [UInt8]) -> [UInt8]
    {
        associatedData(channel: channel, peek: peek, epoch: epoch)
            + Array("\n\(Base64URL.encode(viewerKey))\n\(Base64URL.encode(ephemeralKey))\n\(Base64URL.encode(nonce))\n\(Base64URL.encode(ciphertext))".utf8)
    }

    public var json: JSONValue {
        ["epoch": .number(Double(epoch)), "sender": .string(sender.description),
         "ephemeralKey": .string(Base64URL.encode(ephemeralKey)), "nonce": .string(Base64URL.encode(nonce)),
         "ciphertext": .string(Base64URL.encode(ciphertext)), "signature": .string(Base64URL.encode(signature))]
    }

    public init?(json: JSONValue) {
        guard case .object(let object) = json, object.count == 6,
            let epoch = object["epoch"]?.integerValue, epoch > 0,
            let sender = object["sender"]?.stringValue.flatMap(DID.init(parsing:)),
            let ephemeralKey = object["ephemeralKey"]?.stringValue.flatMap(Base64URL.decode), ephemeralKey.count == 32,
            let nonce = object["nonce"]?.stringValue.flatMap(Base64URL.decode), nonce.count == 12,
            let ciphertext = object["ciphertext"]?.stringValue.flatMap(Base64URL.decode), ciphertext.count == 48,
            let signature = object["signature"]?.stringValue.flatMap(Base64URL.decode), signature.count == 64
        else { return nil }
        self.init(epoch: epoch, sender: sender, ephemeralKey: ephemeralKey, nonce: nonce, ciphertext: ciphertext,
                  signature: signature)
    }
}

/// A peek as a viewer or a member is told about it. Viewer-only fields (`token`, `clientSecret`, `publishableKey`,
/// `grant`) are left out of what members are sent.
public struct PeekView: Equatable, Sendable {
    public var id: String
    public var channel: ChannelID
    /// `awaiting_payment`, `pending`, `awaiting_grant`, `capturing`, `cancelling`, `active`, `refused`, `ended`,
    /// `cancelled`, `failed`.
    public var phase: String
    /// When the current phase ends (Unix ms): the payment window, the refusal window, the grant window, the end of
    /// an active peek.
    public var deadline: Int64?
    public var priceCents: Int64
    public var refusalFeeCents: Int64
    /// What was captured (the fee for a refused peek, the price for a granted one).
    public var capturedCents: Int64
    public var viewerKey: [UInt8]
    /// True when payments go to the local sandbox, not Stripe.
    public var sandbox: Bool
    public var reason: String?
    // Viewer only.
    public var token: String?
    public var clientSecret: String?
    public var publishableKey: String?
    public var grant: PeekGrant?

    public init(id: String, channel: ChannelID, phase: String, deadline: Int64?, priceCents: Int64,
                refusalFeeCents: Int64, capturedCents: Int64, viewerKey: [UInt8], sandbox: Bool, reason: String? = nil,
                token: String? = nil, clientSecret: String? = nil, publishableKey: String? = nil,
                grant: PeekGrant? = nil)
    {
        self.id = id
        self.channel = channel
        self.phase = phase
        self.deadline = deadline
        self.priceCents = priceCents
        self.refusalFeeCents = refusalFeeCents
        self.capturedCents = capturedCents
        self.viewerKey = viewerKey
        self.sandbox = sandbox
        self.reason = reason
        self.token = token
        self.clientSecret = clientSecret
        self.publishableKey = publishableKey
        self.grant = grant
    }

    public var json: JSONValue {
        var object: [String: JSONValue] = [
            "id": .string(id), "channel": .string(channel.rawValue), "phase": .string(phase),
            "priceCents": .number(Double(priceCents)), "refusalFeeCents": .number(Double(refusalFeeCents)),
            "capturedCents": .number(Double(capturedCents)), "viewerKey": .string(Base64URL.encode(viewerKey)),
            "sandbox": .bool(sandbox),
        ]
        if let deadline { object["deadline"] = .number(Double(deadline)) }
        if let reason { object["reason"] = .string(reason) }
        if let token { object["token"] = .string(token) }
        if let clientSecret { object["clientSecret"] = .string(clientSecret) }
        if let publishableKey { object["publishableKey"] = .string(publishableKey) }
        if let grant { object["grant"] = grant.json }
        return .object(object)
    }

    public init?(json: JSONValue) {
        guard case .object(let o) = json, let id = o["id"]?.stringValue,
            let channel = o["channel"]?.stringValue.flatMap(ChannelID.init), let phase = o["phase"]?.stringValue,
            let price = o["priceCents"]?.integerValue, let fee = o["refusalFeeCents"]?.integerValue,
            let captured = o["capturedCents"]?.integerValue,
            let viewerKey = o["viewerKey"]?.stringValue.flatMap(Base64URL.decode),
            case .bool(let sandbox)? = o["sandbox"]
        else { return nil }
        var grant: PeekGrant?
        if let value = o["grant"] {
            guard let parsed = PeekGrant(json: value) else { return nil }
            grant = parsed
        }
        self.init(id: id, channel: channel, phase: phase, deadline: o["deadline"]?.integerValue, priceCents: price,
                  refusalFeeCents: fee, capturedCents: captured, viewerKey: viewerKey, sandbox: sandbox,
                  reason: o["reason"]?.stringValue, token: o["token"]?.stringValue,
                  clientSecret: o["clientSecret"]?.stringValue, publishableKey: o["publishableKey"]?.stringValue,
                  grant: grant)
    }
}

/// One line of an agent's earnings.
public struct EarningsEntry: Equatable, Sendable {
    public var channel: ChannelID
    public var peek: String
    public var cents: Int64
    public var time: Int64

    public init(channel: ChannelID, peek: String, cents: Int64, time: Int64) {
        self.channel = channel
        self.peek = peek
        self.cents = cents
        self.time = time
    }

    public var json: JSONValue {
        ["channel": .string(channel.rawValue), "peek": .string(peek), "cents": .number(Double(cents)),
         "time": .number(Double(time))]
    }
}
