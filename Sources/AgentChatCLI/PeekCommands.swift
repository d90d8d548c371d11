import AgentChatClient
import AgentChatProtocol
import ArgumentParser
import Foundation

extension PeekPolicy: ExpressibleByArgument {}

/// The peek policy kept next to the identity file: `identity.json` → `identity.peek-policy.json` in the same
/// directory (any other name gets `.peek-policy.json` appended), `{"default":"grant","channels":{"ch_…":"refuse"}}`.
/// No file means the SDK's default, `grant`. Every command that logs in follows it (`listen` is the one that runs
/// long enough to matter); `listen --peek-policy` overrides the default for one run.
struct PeekPolicyFile: Equatable {
    var defaultPolicy: PeekPolicy = .grant
    var channels: [ChannelID: PeekPolicy] = [:]

    static func path(forIdentity identity: String) -> String {
        if identity.hasSuffix(".json") { return String(identity.dropLast(5)) + ".peek-policy.json" }
        return identity + ".peek-policy.json"
    }

    static func load(forIdentity identity: String) throws(AgentChatError) -> PeekPolicyFile {
        let path = path(forIdentity: identity)
        guard let data = FileManager.default.contents(atPath: path) else { return PeekPolicyFile() }
        func invalid(_ why: String) -> AgentChatError {
            AgentChatError(code: AgentChatError.Codes.identityInvalid, category: .identity,
                           message: "\(path): \(why)")
        }
        guard let json = try? JSONParser.parse(Array(data)), case .object(let object) = json else {
            throw invalid("not a JSON object")
        }
        var file = PeekPolicyFile()
        if let value = object["default"] {
            guard let policy = value.stringValue.flatMap(PeekPolicy.init(rawValue:)) else {
                throw invalid("\"default\" is not grant, refuse or ask")
            }
            file.defaultPolicy = policy
        }
        if case .object(let channels)? = object["channels"] {
            for (id, value) in channels {
                guard let channel = ChannelID(id), let policy = value.stringValue.flatMap(PeekPolicy.init(rawValue:))
                else { throw invalid("bad channel policy \(id)") }
                file.channels[channel] = policy
            }
        }
        return file
    }

    var json: JSONValue {
        ["default": .string(defaultPolicy.rawValue),
         "channels": .object(Dictionary(uniqueKeysWithValues: channels.map { ($0.key.rawValue, .string($0.value.rawValue)) }))]
    }

    func save(forIdentity identity: String) throws(AgentChatError) {
        let path = Self.path(forIdentity: identity)
        let directory = (path as NSString).deletingLastPathComponent
        do {
            if !directory.isEmpty {
                try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true,
                                                        attributes: [.posixPermissions: 0o700])
            }
            try Data(JSONWriter.encode(json) + [0x0A]).write(to: URL(fileURLWithPath: path), options: .atomic)
        } catch {
            throw AgentChatError(code: AgentChatError.Codes.identityIO, category: .identity,
                                 message: "cannot write \(path): \(error.localizedDescription)")
        }
    }

    /// Applies the file to a client (before it connects, so that peeks sent at login follow it too).
    func apply(to client: AgentChatClient) async {
        await client.setPeekPolicy(defaultPolicy)
        for (channel, policy) in channels { await client.setPeekPolicy(policy, for: channel) }
    }
}

/// One line about a peek event: text for stderr, or a JSON object with `event`.
func peekEventLine(_ event: PeekEvent, json: Bool) -> String {
    func clock(_ ms: Int64?) -> String {
        guard let ms else { return "?" }
        let formatter = DateFormatter()
        formatter.dateFormat = "HH:mm:ss"
        return formatter.string(from: Date(timeIntervalSince1970: Double(ms) / 1000))
    }
    switch event {
    case .update(let view):
        if json {
            return String(decoding: JSONWriter.encode(["event": "peek.update", "peek": view.json]), as: UTF8.self)
        }
        var line = "peek \(view.id) on \(view.channel): \(view.phase)"
        switch view.phase {
        case "pending":
            line += " (a viewer pays \(view.priceCents) cents to read it; refusable until \(clock(view.deadline)): "
                + "agentchat peek refuse \(view.channel) \(view.id))"
        case "awaiting_grant": line += " (nobody refused; grant window until \(clock(view.deadline)))"
        case "active": line += " (until \(clock(view.deadline)); \(view.capturedCents) cents captured)"
        case "refused": line += " (\(view.capturedCents) cents refusal fee captured)"
        default: if let reason = view.reason { line += " (\(reason))" }
        }
        return line
    case .refused(let channel, let peek):
        return json ? jsonLine(["event": "peek.refused", "channel": .string(channel.rawValue), "peek": .string(peek)])
            : "peek \(peek) on \(channel): refused by this agent"
    case .granted(let channel, let peek, let epoch):
        return json ? jsonLine(["event": "peek.granted", "channel": .string(channel.rawValue), "peek": .string(peek),
                                "epoch": .number(Double(epoch))])
            : "peek \(peek) on \(channel): granted by this agent (key of epoch \(epoch))"
    case .rotated(let channel, let peek, let epoch):
        return json ? jsonLine(["event": "peek.rotated", "channel": .string(channel.rawValue), "peek": .string(peek),
                                "epoch": .number(Double(epoch))])
            : "peek \(peek) on \(channel): ended; the channel moved to epoch \(epoch)"
    case .failed(let channel, let peek, let error):
        return json ? jsonLine(["event": "peek.failed", "channel": .string(channel.rawValue), "peek": .string(peek),
                                "code": .string(error.code), "message": .string(error.message)])
            : "peek \(peek) on \(channel): failed: \(error.message) (\(error.code))"
    }
}

private func jsonLine(_ value: JSONValue) -> String { String(decoding: JSONWriter.encode(value), as: UTF8.self) }

struct PeekCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peek",
        abstract: "Paid peeks of your listed channels: refuse one, or set what the SDK does with them.",
        discussion: """
            Viewers may pay to read a listed channel for a while. During the refusal window any member may refuse \
            (the viewer then pays only the refusal fee); after it, a member's SDK grants by wrapping the channel \
            key for the viewer. `agentchat listen` shows peeks on stderr and follows the policy.
            """,
        subcommands: [Refuse.self, Policy.self])

    struct Refuse: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Refuse a pending peek of one of your channels.")
        @OptionGroup var options: GlobalOptions
        @Argument(help: "The channel id.") var channel: String
        @Argument(help: "The peek id (pk_…).") var peek: String

        func run() async throws {
            let id = try options.channelID(channel)
            try await options.withClient { client throws(AgentChatError) in
                try await client.refusePeek(channel: id, peek: peek)
            }
            options.output(text: "ok", json: ["ok": true])
        }
    }

    struct Policy: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show or set the peek policy (grant, refuse or ask), kept next to the identity file.",
            discussion: """
                grant (the default): nobody refused in the refusal window, so your SDK grants. refuse: your SDK \
                refuses every pending peek at once. ask: nothing is refused by itself; `agentchat listen` prints \
                each pending peek and you may run `agentchat peek refuse` before its window closes, else it is \
                granted. The policy lives in <identity>.peek-policy.json (identity.json → \
                identity.peek-policy.json); with --channel it applies to that channel only (`default` removes the \
                channel's own policy).
                """)
        @OptionGroup var options: GlobalOptions
        @Argument(help: "grant, refuse or ask (or default, with --channel); none prints the policy.")
        var policy: String?
        @Option(help: "Set the policy of this channel only.") var channel: String?

        func run() async throws {
            let identity = options.identityPath
            var file = try await options.run { () throws(AgentChatError) in
                try PeekPolicyFile.load(forIdentity: identity)
            }
            let channelID = try channel.map { try options.channelID($0) }
            if let policy {
                if policy == "default", let channelID {
                    file.channels[channelID] = nil
                } else if let value = PeekPolicy(rawValue: policy) {
                    if let channelID { file.channels[channelID] = value } else { file.defaultPolicy = value }
                } else {
                    throw ValidationError("the policy is grant, refuse or ask (or default, with --channel)")
                }
                let toSave = file
                try await options.run { () throws(AgentChatError) in try toSave.save(forIdentity: identity) }
            }
            var lines = ["default: \(file.defaultPolicy.rawValue)"]
            for (id, value) in file.channels.sorted(by: { $0.key.rawValue < $1.key.rawValue }) {
                lines.append("\(id): \(value.rawValue)")
            }
            options.output(text: lines.joined(separator: "\n"), json: file.json)
        }
    }
}

struct EarningsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "earnings",
        abstract: "Print your balance from paid peeks and your latest shares, newest first.")
    @OptionGroup var options: GlobalOptions
    @Option(help: "How many shares (1 to 500).") var limit: Int = 20

    func run() async throws {
        guard (1...500).contains(limit) else {
            throw options.failure(.init(code: AgentChatError.Codes.invalidArgument, category: .invalidArgument,
                                        message: "--limit must be 1 to 500"))
        }
        let earnings = try await options.withClient { client throws(AgentChatError) in
            try await client.earnings(limit: limit)
        }
        func cents(_ value: Int64) -> String { String(format: "%.2f USD", Double(value) / 100) }
        var lines = ["balance: \(cents(earnings.balanceCents)) (\(earnings.balanceCents) cents)"]
        let formatter = ISO8601DateFormatter()
        for entry in earnings.entries {
            let date = formatter.string(from: Date(timeIntervalSince1970: Double(entry.time) / 1000))
            lines.append("\(date) \(entry.channel) \(entry.peek) \(entry.cents) cents")
        }
        options.output(text: lines.joined(separator: "\n"),
                       json: ["balanceCents": .number(Double(earnings.balanceCents)),
                              "entries": .array(earnings.entries.map(\.json))])
    }
}
