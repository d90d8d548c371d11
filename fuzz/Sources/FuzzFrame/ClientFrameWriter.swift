import AgentChatProtocol

/// Writes a decoded client frame back as JSON, the way docs/PROTOCOL.md spells it, for the round-trip property.
/// (The codec has no client-frame encoder of its own: the SDK builds its frames by hand.)
enum ClientFrameWriter {
    static func json(_ frame: ClientFrame) -> JSONValue {
        switch frame {
        case .ping(let id):
            return object("ping", id, [:])
        case .auth(let id, .token(let token)):
            return object("auth", id, ["token": .string(token)])
        case .auth(let id, .signature(let did, let signature)):
            return object("auth", id, ["did": .string(did.description), "signature": .string(Base64URL.encode(signature))])
        case .viewer(let id, let request):
            switch request {
            case .directoryList(let cursor, let limit):
                return object("directory.list", id, ["cursor": .number(Double(cursor)), "limit": .number(Double(limit))])
            case .subscribe(let ids):
                return object("indicators.subscribe", id, ["channels": .array(ids.map { .string($0.rawValue) })])
            case .subscribeDirectory:
                return object("indicators.subscribe", id, ["directory": true])
            case .unsubscribe:
                return object("indicators.unsubscribe", id, [:])
            }
        case .channel(let id, let request):
            switch request {
            case .create(let name, let open, let members):
                return object("channel.create", id, ["name": .string(name), "open": .bool(open),
                                                     "members": .array(members.map { .string($0.description) })])
            case .invite(let channel, let did):
                return object("channel.invite", id, ["channel": .string(channel.rawValue), "did": .string(did.description)])
            case .join(let channel):
                return object("channel.join", id, ["channel": .string(channel.rawValue)])
            case .leave(let channel):
                return object("channel.leave", id, ["channel": .string(channel.rawValue)])
            case .remove(let channel, let did):
                return object("channel.remove", id, ["channel": .string(channel.rawValue), "did": .string(did.description)])
            case .list:
                return object("channel.list", id, [:])
            case .describe(let channel):
                return object("channel.describe", id, ["channel": .string(channel.rawValue)])
            case .publishKeys(let keys):
                var envelopes: [String: JSONValue] = [:]
                for (did, envelope) in keys.envelopes { envelopes[did.description] = .string(envelope) }
                return object("channel.keys", id, ["channel": .string(keys.channel.rawValue),
                                                   "epoch": .number(Double(keys.epoch)),
                                                   "signature": .string(keys.signature), "envelopes": .object(envelopes)])
            case .getKeys(let channel, let epoch):
                return object("channel.keys.get", id, ["channel": .string(channel.rawValue), "epoch": .number(Double(epoch))])
            case .send(let m):
                return object("message.send", id, ["channel": .string(m.channel.rawValue), "epoch": .number(Double(m.epoch)),
                                                   "clientMessageId": .string(m.clientMessageID), "nonce": .string(m.nonce),
                                                   "ciphertext": .string(m.ciphertext), "signature": .string(m.signature)])
            case .subscribe(let channel, let since, let historyEpoch):
                var fields: [String: JSONValue] = ["channel": .string(channel.rawValue)]
                if let since { fields["since"] = .number(Double(since)) }
                if let historyEpoch { fields["historyEpoch"] = .string(historyEpoch) }
                return object("channel.subscribe", id, fields)
            case .unsubscribe(let channel):
                return object("channel.unsubscribe", id, ["channel": .string(channel.rawValue)])
            case .history(let channel, let before, let after, let limit):
                var fields: [String: JSONValue] = ["channel": .string(channel.rawValue), "limit": .number(Double(limit))]
                if let before { fields["before"] = .number(Double(before)) }
                if let after { fields["after"] = .number(Double(after)) }
                return object("history", id, fields)
            case .listing(let channel, let listed, let title, let topic):
                return object("channel.listing", id, ["channel": .string(channel.rawValue), "listed": .bool(listed),
                                                      "title": .string(title), "topic": .string(topic)])
            }
        }
    }

    private static func object(_ type: String, _ id: String?, _ fields: [String: JSONValue]) -> JSONValue {
        var all = fields
        all["type"] = .string(type)
        if let id { all["id"] = .string(id) }
        return .object(all)
    }
}
