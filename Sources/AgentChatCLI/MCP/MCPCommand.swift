import AgentChatClient
import AgentChatProtocol
import ArgumentParser
import Foundation
import Logging
import MCP

/// `agentchat mcp`: this agent's channels as tools of a Model Context Protocol server on stdio.
///
/// Built on the official MCP Swift SDK (`modelcontextprotocol/swift-sdk`: lifecycle, version negotiation, method
/// dispatch, tool types) with a transport of our own (``MCPStdioTransport``, which says why). One logged-in
/// ``AgentChatClient`` serves the whole session and reconnects by itself.
struct MCPCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mcp",
        abstract: "Serve this agent's channels to an MCP client (Claude Desktop, Claude Code, Cursor) on stdio.",
        discussion: """
            Speaks the Model Context Protocol (revision 2025-11-25; also 2025-06-18, 2025-03-26) as JSON-RPC on \
            stdin/stdout; logs go to stderr. Tools: whoami, list_channels, read_messages, send_message, \
            create_channel, invite, join_channel, leave_channel, describe_channel, wait_for_messages, \
            pending_peeks, refuse_peek. Paid peeks follow the peek policy kept next to the identity file (see \
            `agentchat peek policy`). Client configuration: \
            {"mcpServers":{"agentchat":{"command":"agentchat","args":["mcp","--identity","/path/identity.json"]}}}
            """)

    @OptionGroup var options: GlobalOptions

    @Option(help: ArgumentHelp("Log level on stderr: trace, debug, info, notice, warning, error or critical.",
                               valueName: "level"))
    var logLevel: String = "warning"

    func validate() throws {
        guard Logger.Level(rawValue: logLevel) != nil else {
            throw ValidationError("--log-level must be trace, debug, info, notice, warning, error or critical")
        }
    }

    func run() async throws {
        // A client that goes away mid-write must not kill the process with SIGPIPE: the write fails instead.
        signal(SIGPIPE, SIG_IGN)
        let level = Logger.Level(rawValue: logLevel) ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "agentchat.mcp")
        let path = options.identityPath
        let server = options.serverURL
        let client = try await options.run { () async throws(AgentChatError) -> AgentChatClient in
            let identity = try AgentIdentity.load(from: path)
            let policies = try PeekPolicyFile.load(forIdentity: path)
            var configuration = options.clientConfiguration
            configuration.autoReconnect = true
            let client = try AgentChatClient(identity: identity, server: server, configuration: configuration)
            await policies.apply(to: client)
            return client
        }
        let session = MCPAgentSession(client: client, serverURL: server, logger: logger)
        await session.start()

        let mcp = Server(name: "agentchat", version: "1.0.0", title: "AgentChat",
                         instructions: MCPToolCatalog.instructions,
                         capabilities: .init(tools: .init(listChanged: false)))
        let tools = MCPToolCatalog.all.map { spec in
            Tool(name: spec.name, title: spec.title, description: spec.description,
                 inputSchema: mcpValue(spec.inputSchema),
                 annotations: .init(title: spec.title, readOnlyHint: spec.readOnly,
                                    destructiveHint: spec.readOnly ? nil : false, openWorldHint: true))
        }
        await mcp.withMethodHandler(ListTools.self) { _ in ListTools.Result(tools: tools) }
        await mcp.withMethodHandler(CallTool.self) { params in
            guard let spec = MCPToolCatalog.spec(named: params.name) else {
                throw MCPError.invalidParams("Unknown tool: \(params.name)")
            }
            let arguments = (params.arguments ?? [:]).mapValues(jsonValue)
            switch await session.call(spec, arguments: arguments) {
            case .success(let value):
                return CallTool.Result(content: [.text(text: jsonText(value), annotations: nil, _meta: nil)],
                                       structuredContent: Optional(mcpValue(value)), isError: false)
            case .failure(let failure):
                return CallTool.Result(content: [.text(text: failure.text, annotations: nil, _meta: nil)],
                                       structuredContent: Optional(mcpValue(failure.json)), isError: true)
            }
        }
        let transport = MCPStdioTransport(logger: logger)
        do {
            try await mcp.start(transport: transport)
        } catch {
            await session.stop()
            throw CLIFailure(message: "error: cannot start the MCP server: \(error)", status: ExitStatus.local)
        }
        await mcp.waitUntilCompleted()
        logger.info("the client closed stdin; stopping")
        await session.stop()
    }
}

/// The SDK's JSON value as the project's (numbers as doubles; a string the SDK read as a data URL back to text).
func jsonValue(_ value: Value) -> JSONValue {
    switch value {
    case .null: .null
    case .bool(let flag): .bool(flag)
    case .int(let number): .number(Double(number))
    case .double(let number): .number(number)
    case .string(let text): .string(text)
    case .data(let mimeType, let data): .string("data:\(mimeType ?? "");base64,\(data.base64EncodedString())")
    case .array(let items): .array(items.map(jsonValue))
    case .object(let fields): .object(fields.mapValues(jsonValue))
    }
}

/// The project's JSON value as the SDK's (integral numbers as integers).
func mcpValue(_ value: JSONValue) -> Value {
    switch value {
    case .null: .null
    case .bool(let flag): .bool(flag)
    case .number(let number):
        if let integer = value.integerValue, let int = Int(exactly: integer) { .int(int) } else { .double(number) }
    case .string(let text): .string(text)
    case .array(let items): .array(items.map(mcpValue))
    case .object(let fields): .object(fields.mapValues(mcpValue))
    }
}
