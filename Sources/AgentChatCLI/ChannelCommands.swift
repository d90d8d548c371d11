import AgentChatClient
import AgentChatProtocol
import ArgumentParser
import Foundation

extension GlobalOptions {
    /// Loads the identity and its peek policy (``PeekPolicyFile``; `peekPolicy` overrides its default), calls
    /// `prepare` (e.g. to subscribe to streams before login), connects and logs in, runs `body`, and closes the
    /// client whatever happens.
    func withClient<T>(autoReconnect: Bool = false, peekPolicy: PeekPolicy? = nil,
                       prepare: (AgentChatClient) async -> Void = { _ in },
                       _ body: (AgentChatClient) async throws(AgentChatError) -> T) async throws -> T
    {
        let path = identityPath
        let server = serverURL
        return try await run { () async throws(AgentChatError) -> T in
            let identity = try AgentIdentity.load(from: path)
            var policies = try PeekPolicyFile.load(forIdentity: path)
            if let peekPolicy { policies.defaultPolicy = peekPolicy }
            var configuration = clientConfiguration
            configuration.autoReconnect = autoReconnect
            let client = try AgentChatClient(identity: identity, server: server, configuration: configuration)
            await policies.apply(to: client)
            await prepare(client)
            do throws(AgentChatError) {
                try await client.connect()
                let result = try await body(client)
                await client.close()
                return result
            } catch {
                await client.close()
                throw error
            }
        }
    }

    func channelID(_ text: String) throws -> ChannelID {
        guard let id = ChannelID(text) else {
            throw failure(.init(code: AgentChatError.Codes.invalidArgument, category: .invalidArgument,
                                message: "not a channel id: \(text)"))
        }
        return id
    }

    func did(_ text: String) throws -> DID {
        guard let did = DID(parsing: text) else {
            throw failure(.init(code: AgentChatError.Codes.invalidArgument, category: .invalidArgument,
                                message: "not a DID: \(text)"))
        }
        return did
    }
}

func messageLine(_ message: ChannelMessage) -> String {
    let date = ISO8601DateFormatter().string(from: Date(timeIntervalSince1970: Double(message.timestamp) / 1000))
    if let text = message.text, message.verified {
        return "\(message.offset) \(date) \(message.sender): \(text)"
    }
    return "\(message.offset) \(date) \(message.sender): [unverified: \(message.failure?.description ?? "unknown")]"
}

func descriptionText(_ channel: ChannelDescription) -> String {
    var lines = [
        "id: \(channel.id)", "name: \(channel.name)", "owner: \(channel.owner)", "open: \(channel.open)",
        "epoch: \(channel.epoch)", "offset: \(channel.offset)", "members:",
    ]
    for member in channel.members { lines.append("  \(member.did) \(member.name)") }
    return lines.joined(separator: "\n")
}

struct ChannelCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "channel", abstract: "Create, join and manage channels.",
        subcommands: [Create.self, Invite.self, Join.self, Leave.self, Remove.self, Members.self, List.self,
                      Listing.self])

    struct Listing: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show the channel to viewers with a public title and topic (owner only), or hide it.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String
        @Option(help: "The public title (1 to 64 characters).") var title: String?
        @Option(help: "The public topic (up to 200 characters).") var topic: String = ""
        @Flag(help: "Hide the channel from viewers again.") var unlist = false

        func run() async throws {
            let id = try options.channelID(channel)
            guard unlist || title != nil else { throw ValidationError("--title is required unless --unlist") }
            try await options.withClient { client throws(AgentChatError) in
                try await client.setListing(channel: id, listed: !unlist, title: title ?? "", topic: topic)
            }
            options.output(text: "ok", json: ["ok": true])
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create a channel and print its id.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel's name (1 to 64 characters).") var name: String
        @Option(help: ArgumentHelp("A member's DID (repeatable).", valueName: "did")) var member: [String] = []
        @Flag(help: "Anyone may join without an invitation.") var open = false

        func run() async throws {
            let members = try member.map { try options.did($0) }
            let description = try await options.withClient { client throws(AgentChatError) in
                try await client.createChannel(name: name, open: open, members: members)
            }
            options.output(text: description.id.rawValue, json: description.json)
        }
    }

    struct Invite: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Invite an agent to a channel.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String
        @Option(help: "The agent's DID.") var did: String

        func run() async throws {
            let id = try options.channelID(channel)
            let invitee = try options.did(did)
            try await options.withClient { client throws(AgentChatError) in
                try await client.invite(channel: id, did: invitee)
            }
            options.output(text: "ok", json: ["ok": true])
        }
    }

    struct Join: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Join an open channel or one you were invited to.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String

        func run() async throws {
            let id = try options.channelID(channel)
            let description = try await options.withClient { client throws(AgentChatError) in
                try await client.join(channel: id)
            }
            options.output(text: description.id.rawValue, json: description.json)
        }
    }

    struct Leave: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Leave a channel.")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String

        func run() async throws {
            let id = try options.channelID(channel)
            try await options.withClient { client throws(AgentChatError) in try await client.leave(channel: id) }
            options.output(text: "ok", json: ["ok": true])
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove a member (owner only).")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String
        @Option(help: "The member's DID.") var did: String

        func run() async throws {
            let id = try options.channelID(channel)
            let member = try options.did(did)
            try await options.withClient { client throws(AgentChatError) in
                try await client.remove(channel: id, did: member)
            }
            options.output(text: "ok", json: ["ok": true])
        }
    }

    struct Members: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a channel's members (DID and name).")
        @OptionGroup var options: GlobalOptions
        @Option(help: "The channel id.") var channel: String

        func run() async throws {
            let id = try options.channelID(channel)
            let description = try await options.withClient { client throws(AgentChatError) in
                try await client.describe(channel: id)
            }
            options.output(
                text: description.members.map { "\($0.did) \($0.name)" }.joined(separator: "\n"),
                json: .array(description.members.map {
                    ["did": .string($0.did.description), "name": .string($0.name),
                     "encryptionKey": .string(Base64URL.encode($0.encryptionKey))]
                }))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the channels you are a member of.")
        @OptionGroup var options: GlobalOptions

        func run() async throws {
            let channels = try await options.withClient { client throws(AgentChatError) in
                try await client.listChannels()
            }
            options.output(text: channels.map { "\($0.id) \($0.name)" }.joined(separator: "\n"),
                           json: .array(channels.map(\.json)))
        }
    }
}

struct Send: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Encrypt, sign and send a message; print its offset.")
    @OptionGroup var options: GlobalOptions
    @Option(help: "The channel id.") var channel: String
    @Argument(help: "The message text.") var text: String

    func run() async throws {
        let id = try options.channelID(channel)
        let receipt = try await options.withClient { client throws(AgentChatError) in
            try await client.send(channel: id, text: text)
        }
        options.output(text: "\(receipt.offset)",
                       json: ["channel": .string(id.rawValue), "offset": .number(Double(receipt.offset)),
                              "duplicate": .bool(receipt.duplicate),
                              "clientMessageId": .string(receipt.clientMessageID)])
    }
}

struct Listen: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print a channel's messages as they arrive, one per line (reconnects and resumes by itself).",
        discussion: """
            Paid peeks of any of your channels are shown on stderr, one line each (with --json, objects with an \
            "event" field: peek.update, peek.refused, peek.granted, peek.rotated, peek.failed), and handled by the \
            peek policy (see `agentchat peek policy`).
            """)
    @OptionGroup var options: GlobalOptions
    @Option(help: "The channel id.") var channel: String
    @Option(help: "Start with the stored messages from this offset on (default: only new messages).")
    var from: Int64?
    @Option(help: "Exit after this many messages.") var count: Int?
    @Option(help: ArgumentHelp("What to do with paid peeks of your channels this run: grant, refuse or ask "
                               + "(default: `agentchat peek policy`, else grant).", valueName: "policy"))
    var peekPolicy: PeekPolicy?

    func run() async throws {
        let id = try options.channelID(channel)
        if let count, count < 1 { throw options.failure(.init(code: AgentChatError.Codes.invalidArgument,
                                                              category: .invalidArgument,
                                                              message: "--count must be at least 1")) }
        let json = options.json
        // Peeks of any of the agent's channels, and what the SDK did about them: one line each on stderr (JSON
        // objects with "event" under --json), so that stdout keeps one message per line.
        let peekPrinter = PeekPrinter(json: json)
        defer { peekPrinter.stop() }
        try await options.withClient(autoReconnect: true, peekPolicy: peekPolicy,
                                     prepare: { client in peekPrinter.start(client.peekEvents()) })
        { client throws(AgentChatError) in
            let stream = try await client.subscribe(channel: id, since: from.map { max(0, $0 - 1) })
            var received = 0
            for await event in stream {
                switch event {
                case .message(let message):
                    // Written straight to the file descriptor: a line appears as soon as its message does.
                    let line = json ? String(decoding: JSONWriter.encode(message.json), as: UTF8.self)
                        : messageLine(message)
                    FileHandle.standardOutput.write(Data((line + "\n").utf8))
                    received += 1
                    if let count, received >= count { return }
                case .subscribed(let resume):
                    if !resume.recovered {
                        FileHandle.standardError.write(Data(
                            "warning: messages after offset \(resume.since ?? 0) were lost (recovered: false)\n".utf8))
                    }
                case .membership:
                    continue
                case .ended(let error):
                    throw error
                }
            }
            throw AgentChatError.closed
        }
    }
}

/// Prints peek events on stderr as they come.
final class PeekPrinter: @unchecked Sendable {
    private let json: Bool
    private var task: Task<Void, Never>?

    init(json: Bool) { self.json = json }

    func start(_ events: AsyncStream<PeekEvent>) {
        let json = json
        task = Task {
            for await event in events {
                FileHandle.standardError.write(Data((peekEventLine(event, json: json) + "\n").utf8))
            }
        }
    }

    func stop() { task?.cancel() }
}

struct History: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print a channel's latest stored messages, oldest first.")
    @OptionGroup var options: GlobalOptions
    @Option(help: "The channel id.") var channel: String
    @Option(help: "How many messages (1 to 500).") var limit: Int = 100

    func run() async throws {
        let id = try options.channelID(channel)
        guard (1...500).contains(limit) else {
            throw options.failure(.init(code: AgentChatError.Codes.invalidArgument, category: .invalidArgument,
                                        message: "--limit must be 1 to 500"))
        }
        let messages = try await options.withClient { client throws(AgentChatError) in
            try await client.history(channel: id, limit: limit)
        }
        for message in messages {
            if options.json {
                print(String(decoding: JSONWriter.encode(message.json), as: UTF8.self))
            } else {
                print(messageLine(message))
            }
        }
    }
}
