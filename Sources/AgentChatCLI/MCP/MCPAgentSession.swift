import AgentChatClient
import AgentChatProtocol
import Foundation
import Logging

/// The agent behind `agentchat mcp`: one ``AgentChatClient`` for the whole session (logged in with the identity
/// file's keys, which never leave this process), and what each tool does with it. Tool results carry the plaintext
/// this agent may read, nothing else: no keys, no tokens.
actor MCPAgentSession {
    let client: AgentChatClient
    let serverURL: String
    private let logger: Logger
    /// Member names seen in channel descriptions, by DID.
    private var names: [String: String] = [:]
    /// Peeks of this agent's channels that may still be refused or granted, by id (from `peek.update`).
    private var openPeeks: [String: PeekView] = [:]
    private var peekTask: Task<Void, Never>?
    private var waiting = false

    init(client: AgentChatClient, serverURL: String, logger: Logger) {
        self.client = client
        self.serverURL = serverURL
        self.logger = logger
    }

    /// Follows peek updates (subscribed before login, which sends the open ones) and starts logging in, in the
    /// background so that the MCP handshake does not wait for the broker. A failed login is only logged: every
    /// tool call logs in (joining a login in progress) and answers with the error if it fails.
    func start() {
        let updates = client.peeks()
        peekTask = Task { [weak self] in
            for await view in updates { await self?.record(view) }
        }
        let client = client
        let logger = logger
        let serverURL = serverURL
        Task {
            do {
                let profile = try await client.connect()
                logger.info("logged in", metadata: ["did": "\(profile.did)", "broker": "\(serverURL)"])
            } catch {
                logger.warning("cannot log in yet", metadata: ["error": "\(error)"])
            }
        }
    }

    func stop() async {
        peekTask?.cancel()
        await client.close()
    }

    private func record(_ view: PeekView) {
        if view.phase == "pending" || view.phase == "awaiting_grant" {
            openPeeks[view.id] = view
        } else {
            openPeeks[view.id] = nil
        }
    }

    // MARK: - Dispatch

    /// Runs the tool `spec` with `arguments`; a failure is returned, not thrown (it becomes `isError: true`).
    func call(_ spec: ToolSpec, arguments: [String: JSONValue]) async -> Result<JSONValue, ToolFailure> {
        do throws(ToolFailure) {
            let args = try ToolArguments(arguments, allowed: spec.argumentNames)
            return .success(try await run(spec.name, args))
        } catch {
            logger.info("tool failed", metadata: ["tool": "\(spec.name)", "code": "\(error.code)"])
            return .failure(error)
        }
    }

    private func run(_ tool: String, _ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        switch tool {
        case "whoami": return try await whoami()
        case "list_channels": return try await listChannels()
        case "read_messages": return try await readMessages(args)
        case "send_message": return try await sendMessage(args)
        case "create_channel": return try await createChannel(args)
        case "invite": return try await invite(args)
        case "join_channel": return try await joinChannel(args)
        case "leave_channel": return try await leaveChannel(args)
        case "describe_channel": return try await describeChannel(args)
        case "wait_for_messages": return try await waitForMessages(args)
        case "pending_peeks": return try await pendingPeeks()
        case "refuse_peek": return try await refusePeek(args)
        default: throw ToolFailure(code: "unknown_tool", message: "no tool \(tool)")
        }
    }

    /// Runs an SDK call, logging in first if needed; SDK errors become tool failures with the same code.
    private func sdk<T>(_ body: () async throws(AgentChatError) -> T) async throws(ToolFailure) -> T {
        do {
            try await client.connect()
            return try await body()
        } catch {
            throw ToolFailure(error)
        }
    }

    // MARK: - Tools

    private func whoami() async throws(ToolFailure) -> JSONValue {
        let profile = try await sdk { () throws(AgentChatError) in try await client.connect() }
        return ["did": .string(profile.did.description), "name": .string(profile.name),
                "broker": .string(serverURL), "registeredAt": .string(isoTime(profile.registeredAt))]
    }

    private func listChannels() async throws(ToolFailure) -> JSONValue {
        let cursors = try await sdk { () throws(AgentChatError) in try await client.unreadCounts() }
        let channels: [JSONValue] = cursors.map { cursor in
            ["channel": .string(cursor.channel.rawValue), "name": .string(cursor.name ?? ""),
             "offset": .number(Double(cursor.offset)), "read": .number(Double(cursor.read)),
             "unread": .number(Double(cursor.unread))]
        }
        return ["channels": .array(channels),
                "totalUnread": .number(Double(cursors.reduce(0) { $0 + $1.unread }))]
    }

    private func readMessages(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let mode = try args.string("mode") ?? "unread"
        guard mode == "unread" || mode == "range" else {
            throw .invalidArgument("mode must be \"unread\" or \"range\", not \"\(mode)\"")
        }
        let maxMessages = Int(try args.integer("max_messages", in: 1...MCPToolCatalog.maxMessagesLimit)
                              ?? MCPToolCatalog.defaultMaxMessages)
        let maxChars = Int(try args.integer("max_chars", in: MCPToolCatalog.maxCharsRange)
                           ?? MCPToolCatalog.defaultMaxChars)
        let after = try args.integer("after", in: 0...Int64.max)
        let before = try args.integer("before", in: 1...Int64.max)
        if mode == "unread" {
            guard after == nil, before == nil else {
                throw .invalidArgument("after and before apply to mode \"range\" only")
            }
            // Cursors never move back: setting 0 reads the cursor without changing it.
            let cursor = try await sdk { () throws(AgentChatError) in
                try await client.setReadCursor(channel: channel, offset: 0)
            }
            let stored = try await sdk { () throws(AgentChatError) in
                try await client.history(channel: channel, limit: maxMessages, after: cursor.read)
            }
            let kept = fitToBudget(try await views(stored, channel: channel), maxChars: maxChars)
            var read = cursor.read
            var remaining = cursor.unread
            var latest = cursor.offset
            if let last = kept.last {
                let moved = try await sdk { () throws(AgentChatError) in
                    try await client.setReadCursor(channel: channel, offset: last.offset)
                }
                read = moved.read
                remaining = moved.unread
                latest = moved.offset
            }
            return ["channel": .string(channel.rawValue), "mode": "unread",
                    "messages": .array(kept.map(\.json)), "read": .number(Double(read)),
                    "latestOffset": .number(Double(latest)), "remaining": .number(Double(remaining))]
        }
        if let after, let before, before <= after + 1 {
            throw .invalidArgument("before must be above after + 1 (no offset lies between \(after) and \(before))")
        }
        let stored = try await sdk { () throws(AgentChatError) in
            try await client.history(channel: channel, limit: maxMessages, before: after == nil ? before : nil,
                                     after: after)
        }
        let inRange = stored.filter { before == nil || $0.offset < before! }
        let all = try await views(inRange, channel: channel)
        let latest = try await sdk { () throws(AgentChatError) in
            try await client.setReadCursor(channel: channel, offset: 0).offset
        }
        var result: [String: JSONValue] = ["channel": .string(channel.rawValue), "mode": "range",
                                           "latestOffset": .number(Double(latest))]
        if after != nil {
            // Forward from `after`: the oldest first, and what lies between the last one and the range's end.
            let kept = fitToBudget(all, maxChars: maxChars)
            let end = min(latest, (before ?? Int64.max) - 1)
            let last = kept.last?.offset ?? after!
            result["messages"] = .array(kept.map(\.json))
            result["remaining"] = .number(Double(max(0, end - last)))
            if end > last { result["next"] = ["after": .number(Double(last))] }
        } else {
            // The newest before `before` (or the latest): keep the newest that fit, report the older ones.
            let kept = Array(fitToBudget(all.reversed(), maxChars: maxChars).reversed())
            let first = kept.first?.offset ?? min(latest + 1, before ?? latest + 1)
            result["messages"] = .array(kept.map(\.json))
            result["remaining"] = .number(Double(max(0, first - 1)))
            if first > 1 { result["next"] = ["before": .number(Double(first))] }
        }
        return .object(result)
    }

    /// Message views with sender names (from the channel's description when a sender is not known yet).
    private func views(_ messages: [ChannelMessage], channel: ChannelID) async throws(ToolFailure) -> [MessageView] {
        if messages.contains(where: { names[$0.sender] == nil }) {
            if let description = try? await sdk({ () throws(AgentChatError) in
                try await client.describe(channel: channel)
            }) {
                remember(description)
            }
        }
        return messages.map { MessageView($0, senderName: names[$0.sender]) }
    }

    private func remember(_ description: ChannelDescription) {
        for member in description.members { names[member.did.description] = member.name }
    }

    private func sendMessage(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let text = try args.requiredString("text")
        guard !text.isEmpty else { throw .invalidArgument("text is empty") }
        guard text.utf8.count <= MCPToolCatalog.maxTextBytes else {
            throw .invalidArgument("text has \(text.utf8.count) bytes; a message holds at most "
                                   + "\(MCPToolCatalog.maxTextBytes)")
        }
        let before = try await sdk { () throws(AgentChatError) in
            try await client.setReadCursor(channel: channel, offset: 0)
        }
        let receipt = try await sdk { () throws(AgentChatError) in try await client.send(channel: channel, text: text) }
        // This agent's own message is not news to it: when everything before it was read, it is read too.
        if before.read >= before.offset, receipt.offset == before.offset + 1 {
            _ = try? await sdk { () throws(AgentChatError) in
                try await client.setReadCursor(channel: channel, offset: receipt.offset)
            }
        }
        return ["channel": .string(channel.rawValue), "offset": .number(Double(receipt.offset))]
    }

    private func createChannel(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let name = try args.requiredString("name")
        guard (1...64).contains(name.count) else { throw .invalidArgument("name must have 1 to 64 characters") }
        var members: [DID] = []
        for text in try args.stringArray("members", maxCount: MCPToolCatalog.maxMembers) ?? [] {
            members.append(try ToolArguments.did(text, argument: "members"))
        }
        let open = try args.bool("open") ?? false
        let description = try await sdk { () throws(AgentChatError) in
            try await client.createChannel(name: name, open: open, members: members)
        }
        remember(description)
        return describeJSON(description)
    }

    private func invite(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let did = try ToolArguments.did(try args.requiredString("did"), argument: "did")
        try await sdk { () throws(AgentChatError) in try await client.invite(channel: channel, did: did) }
        return ["ok": true, "channel": .string(channel.rawValue), "did": .string(did.description)]
    }

    private func joinChannel(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let description = try await sdk { () throws(AgentChatError) in try await client.join(channel: channel) }
        remember(description)
        return describeJSON(description)
    }

    private func leaveChannel(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        try await sdk { () throws(AgentChatError) in try await client.leave(channel: channel) }
        return ["ok": true, "channel": .string(channel.rawValue)]
    }

    private func describeChannel(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let description = try await sdk { () throws(AgentChatError) in try await client.describe(channel: channel) }
        remember(description)
        return describeJSON(description)
    }

    private func describeJSON(_ description: ChannelDescription) -> JSONValue {
        ["channel": .string(description.id.rawValue), "name": .string(description.name),
         "owner": .string(description.owner.description), "open": .bool(description.open),
         "epoch": .number(Double(description.epoch)), "latestOffset": .number(Double(description.offset)),
         "members": .array(description.members.map {
             ["did": .string($0.did.description), "name": .string($0.name)]
         })]
    }

    // MARK: - Waiting

    private enum WaitOutcome: Sendable {
        case arrived(ChannelID)
        case ended
        case timedOut
    }

    private func waitForMessages(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let timeout = try args.integer("timeout_seconds", in: MCPToolCatalog.timeoutRange)
            ?? MCPToolCatalog.defaultTimeout
        var requested: [ChannelID]?
        if let texts = try args.stringArray("channels", maxCount: MCPToolCatalog.maxWaitChannels) {
            var ids: [ChannelID] = []
            for text in texts {
                guard let id = ChannelID(text) else { throw .invalidArgument("channels: not a channel id: \(text)") }
                ids.append(id)
            }
            requested = ids
        }
        guard !waiting else {
            throw ToolFailure(code: "busy", message: "another wait_for_messages is running; wait for it to return")
        }
        waiting = true
        defer { waiting = false }

        let cursors = try await sdk { () throws(AgentChatError) in try await client.unreadCounts() }
        var watched = cursors
        if let requested {
            let byID = Dictionary(cursors.map { ($0.channel, $0) }, uniquingKeysWith: { first, _ in first })
            if let missing = requested.first(where: { byID[$0] == nil }) {
                throw ToolFailure(code: "not_found", message: "this agent is not a member of \(missing)")
            }
            watched = requested.compactMap { byID[$0] }
        }
        if watched.isEmpty {
            return ["channels": [], "timedOut": false, "note": "this agent is a member of no channel"]
        }
        if watched.contains(where: { $0.unread > 0 }) { return summary(watched) }

        // Nothing unread: subscribe from each channel's latest offset (so nothing arriving meanwhile is missed)
        // and return at the first message from another agent.
        let me = client.identity.did.description
        var streams: [(ChannelID, AsyncStream<ChannelStreamEvent>)] = []
        for cursor in watched {
            do {
                streams.append((cursor.channel, try await client.subscribe(channel: cursor.channel,
                                                                           since: cursor.offset)))
            } catch {
                logger.info("cannot watch a channel", metadata: ["channel": "\(cursor.channel)", "error": "\(error)"])
            }
        }
        let subscribed = streams.map(\.0)
        let outcome = await withTaskGroup(of: WaitOutcome.self) { group -> WaitOutcome in
            for (channel, stream) in streams {
                group.addTask {
                    for await event in stream {
                        if case .message(let message) = event, message.sender != me { return .arrived(channel) }
                    }
                    return .ended
                }
            }
            group.addTask {
                try? await Task.sleep(for: .seconds(timeout))
                return .timedOut
            }
            var result = WaitOutcome.timedOut
            for await outcome in group {
                if case .ended = outcome { continue }
                result = outcome
                break
            }
            group.cancelAll()
            return result
        }
        for channel in subscribed { await client.unsubscribe(channel: channel) }
        guard case .arrived(let channel) = outcome else {
            return ["channels": [], "timedOut": true]
        }
        let after = (try? await sdk { () throws(AgentChatError) in try await client.unreadCounts() }) ?? []
        let news = after.filter { cursor in watched.contains { $0.channel == cursor.channel } && cursor.unread > 0 }
        if news.isEmpty {
            return ["channels": [["channel": .string(channel.rawValue), "count": 1]], "timedOut": false]
        }
        return summary(news)
    }

    private func summary(_ cursors: [ReadCursor]) -> JSONValue {
        let channels: [JSONValue] = cursors.filter { $0.unread > 0 }.map { cursor in
            ["channel": .string(cursor.channel.rawValue), "name": .string(cursor.name ?? ""),
             "count": .number(Double(cursor.unread)), "firstOffset": .number(Double(cursor.read + 1))]
        }
        return ["channels": .array(channels), "timedOut": false]
    }

    // MARK: - Peeks

    private func pendingPeeks() async throws(ToolFailure) -> JSONValue {
        _ = try await sdk { () throws(AgentChatError) in try await client.connect() }
        // A peek whose deadline has passed has moved on, whether or not its update reached this session (it may
        // have changed while the connection was down; the broker resends only the open ones at login).
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        openPeeks = openPeeks.filter { ($0.value.deadline ?? Int64.max) > now }
        var peeks: [JSONValue] = []
        for view in openPeeks.values.sorted(by: { ($0.deadline ?? 0) < ($1.deadline ?? 0) }) {
            var fields: [String: JSONValue] = [
                "peek": .string(view.id), "channel": .string(view.channel.rawValue), "phase": .string(view.phase),
                "priceCents": .number(Double(view.priceCents)),
                "refusalFeeCents": .number(Double(view.refusalFeeCents)),
                "policy": .string(await client.peekPolicy(for: view.channel).rawValue),
                "refusable": .bool(view.phase == "pending"),
            ]
            if let deadline = view.deadline { fields["deadline"] = .string(isoTime(deadline)) }
            peeks.append(.object(fields))
        }
        return ["peeks": .array(peeks), "defaultPolicy": .string(await client.defaultPeekPolicy.rawValue)]
    }

    private func refusePeek(_ args: ToolArguments) async throws(ToolFailure) -> JSONValue {
        let channel = try args.channel()
        let peek = try args.requiredString("peek")
        guard peek.hasPrefix("pk_"), peek.utf8.count == 25, Base64URL.decode(String(peek.dropFirst(3)))?.count == 16 else {
            throw .invalidArgument("peek is not a peek id (pk_…, as pending_peeks shows): \(peek)")
        }
        try await sdk { () throws(AgentChatError) in try await client.refusePeek(channel: channel, peek: peek) }
        return ["ok": true, "channel": .string(channel.rawValue), "peek": .string(peek)]
    }
}
