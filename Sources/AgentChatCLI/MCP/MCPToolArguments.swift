import AgentChatClient
import AgentChatProtocol
import Foundation

/// A tool's failure as the model sees it: a result with `isError: true` whose text names the code. `code` is the
/// broker's or the SDK's code (`not_found`, `stale_epoch`, `member_key_unverified`, `network_error`, ...) or
/// `invalid_argument` for arguments the tool refuses before anything is sent.
struct ToolFailure: Error, Equatable {
    let code: String
    let message: String
    var details: [String: JSONValue] = [:]

    static func invalidArgument(_ message: String) -> ToolFailure {
        ToolFailure(code: AgentChatError.Codes.invalidArgument, message: message)
    }

    init(code: String, message: String, details: [String: JSONValue] = [:]) {
        self.code = code
        self.message = message
        self.details = details
    }

    init(_ error: AgentChatError) {
        code = error.code
        message = error.message.isEmpty ? error.code : error.message
        if let member = error.member { details["member"] = .string(member.description) }
        if let channel = error.channel { details["channel"] = .string(channel.rawValue) }
        if let retry = error.retryAfterSeconds { details["retryAfterSeconds"] = .number(Double(retry)) }
    }

    /// `{"error":{"code","message",...}}`.
    var json: JSONValue {
        var fields = details
        fields["code"] = .string(code)
        fields["message"] = .string(message)
        return ["error": .object(fields)]
    }

    /// The text block: the code first, so a model reads it at a glance.
    var text: String { "error \(code): \(message)" + (details.isEmpty ? "" : " " + jsonText(.object(details))) }
}

func jsonText(_ value: JSONValue) -> String { String(decoding: JSONWriter.encode(value), as: UTF8.self) }

/// A tool's arguments, checked against what the tool's input schema says (the model may send anything). Pure.
struct ToolArguments {
    let fields: [String: JSONValue]
    let allowed: Set<String>

    /// Refuses names the tool does not define, so that a misspelt argument is not silently ignored.
    init(_ fields: [String: JSONValue], allowed: Set<String>) throws(ToolFailure) {
        self.fields = fields
        self.allowed = allowed
        let unknown = fields.keys.filter { !allowed.contains($0) }.sorted()
        if !unknown.isEmpty {
            throw .invalidArgument("unknown argument\(unknown.count > 1 ? "s" : "") \(unknown.joined(separator: ", "))"
                                   + "; this tool takes \(allowed.isEmpty ? "none" : allowed.sorted().joined(separator: ", "))")
        }
    }

    private func present(_ name: String) -> JSONValue? {
        guard let value = fields[name], value != .null else { return nil }
        return value
    }

    func string(_ name: String) throws(ToolFailure) -> String? {
        guard let value = present(name) else { return nil }
        guard let text = value.stringValue else { throw .invalidArgument("\(name) must be a string, not \(value.typeName)") }
        return text
    }

    func requiredString(_ name: String) throws(ToolFailure) -> String {
        guard let text = try string(name) else { throw .invalidArgument("\(name) is required") }
        return text
    }

    func integer(_ name: String, in range: ClosedRange<Int64>) throws(ToolFailure) -> Int64? {
        guard let value = present(name) else { return nil }
        guard let number = value.integerValue else {
            throw .invalidArgument("\(name) must be an integer, not \(value.typeName == "number" ? "a fraction" : value.typeName)")
        }
        guard range.contains(number) else {
            throw .invalidArgument("\(name) must be \(range.lowerBound) to \(range.upperBound == Int64.max ? "any" : "\(range.upperBound)"), not \(number)")
        }
        return number
    }

    func bool(_ name: String) throws(ToolFailure) -> Bool? {
        guard let value = present(name) else { return nil }
        guard let flag = value.boolValue else { throw .invalidArgument("\(name) must be true or false, not \(value.typeName)") }
        return flag
    }

    func stringArray(_ name: String, maxCount: Int) throws(ToolFailure) -> [String]? {
        guard let value = present(name) else { return nil }
        guard let items = value.arrayValue else { throw .invalidArgument("\(name) must be an array of strings") }
        guard items.count <= maxCount else { throw .invalidArgument("\(name) holds at most \(maxCount) items") }
        var strings: [String] = []
        for item in items {
            guard let text = item.stringValue else { throw .invalidArgument("\(name) must be an array of strings") }
            strings.append(text)
        }
        return strings
    }

    func channel(_ name: String = "channel") throws(ToolFailure) -> ChannelID {
        let text = try requiredString(name)
        guard let id = ChannelID(text) else {
            throw .invalidArgument("\(name) is not a channel id (ch_… as list_channels shows): \(text)")
        }
        return id
    }

    static func did(_ text: String, argument: String) throws(ToolFailure) -> DID {
        guard let did = DID(parsing: text) else {
            throw .invalidArgument("\(argument) is not an agent DID (did:agentchat:…): \(text)")
        }
        return did
    }
}

/// One message as `read_messages` returns it.
struct MessageView: Equatable {
    var offset: Int64
    var timestamp: Int64
    var sender: String
    var senderName: String?
    /// Nil when the message failed verification or decryption: then `failure` says why.
    var text: String?
    var failure: String?
    var truncatedFrom: Int?

    init(_ message: ChannelMessage, senderName: String?) {
        offset = message.offset
        timestamp = message.timestamp
        sender = message.sender
        self.senderName = senderName
        if message.verified, let text = message.text {
            self.text = text
        } else {
            failure = message.failure?.description ?? "unverified"
        }
    }

    init(offset: Int64, timestamp: Int64, sender: String, senderName: String?, text: String?, failure: String?) {
        self.offset = offset
        self.timestamp = timestamp
        self.sender = sender
        self.senderName = senderName
        self.text = text
        self.failure = failure
    }

    /// What the message costs against `max_chars`: its text, or its failure note.
    var cost: Int { (text ?? failure ?? "").count }

    var json: JSONValue {
        var fields: [String: JSONValue] = [
            "offset": .number(Double(offset)), "sender": .string(sender),
            "time": .string(isoTime(timestamp)),
        ]
        if let senderName { fields["senderName"] = .string(senderName) }
        if let text {
            fields["text"] = .string(text)
        } else {
            fields["verified"] = false
            fields["error"] = .string("not shown: the message failed verification (\(failure ?? "unverified"))")
        }
        if let truncatedFrom { fields["truncatedFromChars"] = .number(Double(truncatedFrom)) }
        return .object(fields)
    }
}

func isoTime(_ milliseconds: Int64) -> String {
    let formatter = ISO8601DateFormatter()
    formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
    return formatter.string(from: Date(timeIntervalSince1970: Double(milliseconds) / 1000))
}

/// Keeps messages, oldest first, while their text fits in `maxChars`. The first message is always kept (cut to the
/// budget if it alone is over it, so that a long message cannot block the cursor); the ones after it only whole.
func fitToBudget(_ messages: [MessageView], maxChars: Int) -> [MessageView] {
    var kept: [MessageView] = []
    var used = 0
    for var message in messages {
        if kept.isEmpty, message.cost > maxChars, let text = message.text {
            message.truncatedFrom = text.count
            message.text = String(text.prefix(maxChars))
            kept.append(message)
            break
        }
        guard used + message.cost <= maxChars else { break }
        used += message.cost
        kept.append(message)
    }
    return kept
}
