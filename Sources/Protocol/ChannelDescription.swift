/// What `channel.describe` (and create, join, list) tells a member about a channel.
public struct ChannelDescription: Equatable, Sendable {
    public struct Member: Equatable, Sendable {
        public var did: DID
        public var name: String
        public var encryptionKey: [UInt8]
        /// The member's registration self-signature over its name and encryption key; nil when the broker has
        /// none (a profile stored before profiles kept it) or sent a malformed one.
        public var registration: RegistrationSignature?

        public init(did: DID, name: String, encryptionKey: [UInt8], registration: RegistrationSignature? = nil) {
            self.did = did
            self.name = name
            self.encryptionKey = encryptionKey
            self.registration = registration
        }

        /// The bytes `registration` must sign, with the signing key read out of the DID; nil without one.
        public var registrationSignedBytes: [UInt8]? {
            registration.map {
                RegistrationRequest.signedBytes(name: name, signingKey: did.signingKey, encryptionKey: encryptionKey,
                                                timestamp: $0.timestamp)
            }
        }

        /// `{"did","name","encryptionKey","registrationTimestamp","registrationSignature"}`.
        public var json: JSONValue {
            var fields: [String: JSONValue] = ["did": .string(did.description), "name": .string(name),
                                               "encryptionKey": .string(Base64URL.encode(encryptionKey))]
            registration?.add(to: &fields)
            return .object(fields)
        }
    }

    public var id: ChannelID
    public var name: String
    public var owner: DID
    public var open: Bool
    public var epoch: Int64
    public var keyedEpoch: Int64
    /// The latest message offset, 0 when there is none.
    public var offset: Int64
    public var historyEpoch: String
    public var members: [Member]

    public init(id: ChannelID, name: String, owner: DID, open: Bool, epoch: Int64, keyedEpoch: Int64, offset: Int64,
                historyEpoch: String, members: [Member])
    {
        self.id = id
        self.name = name
        self.owner = owner
        self.open = open
        self.epoch = epoch
        self.keyedEpoch = keyedEpoch
        self.offset = offset
        self.historyEpoch = historyEpoch
        self.members = members
    }

    public var json: JSONValue {
        [
            "id": .string(id.rawValue), "name": .string(name), "owner": .string(owner.description), "open": .bool(open),
            "epoch": .number(Double(epoch)), "keyedEpoch": .number(Double(keyedEpoch)),
            "offset": .number(Double(offset)), "historyEpoch": .string(historyEpoch),
            "members": .array(members.map(\.json)),
        ]
    }

    public init?(json: JSONValue) {
        guard let id = json["id"]?.stringValue.flatMap(ChannelID.init), let name = json["name"]?.stringValue,
            let owner = json["owner"]?.stringValue.flatMap(DID.init(parsing:)), let open = json["open"]?.boolValue,
            let epoch = json["epoch"]?.integerValue, let keyedEpoch = json["keyedEpoch"]?.integerValue,
            let offset = json["offset"]?.integerValue, let historyEpoch = json["historyEpoch"]?.stringValue,
            let members = json["members"]?.arrayValue
        else { return nil }
        var parsed: [Member] = []
        for member in members {
            guard let did = member["did"]?.stringValue.flatMap(DID.init(parsing:)),
                let memberName = member["name"]?.stringValue,
                let key = member["encryptionKey"]?.stringValue.flatMap(Base64URL.decode), key.count == 32
            else { return nil }
            parsed.append(Member(did: did, name: memberName, encryptionKey: key,
                                 registration: RegistrationSignature(fieldsOf: member)))
        }
        self.init(id: id, name: name, owner: owner, open: open, epoch: epoch, keyedEpoch: keyedEpoch, offset: offset,
                  historyEpoch: historyEpoch, members: parsed)
    }
}
