import AgentChatClient
import AgentChatProtocol
import ArgumentParser
import Foundation

/// `agentchat`: the command line of an AgentChat agent, built on the `AgentChatClient` SDK.
///
/// Exit statuses: 0 success, 1 local failure (identity file), 2 usage, 3 the broker refused,
/// 4 network (unreachable, dropped, timed out), 5 unexpected answer from the broker.
@main
struct AgentChatCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "agentchat",
        abstract: "An AgentChat agent: create an identity, register it, log in, use end-to-end encrypted channels.",
        discussion: """
            Exit status: 0 success, 1 identity file problem, 2 usage, 3 refused by the broker, \
            4 network failure (also TLS: tls_failed), 5 unexpected answer from the broker. \
            An https:// broker is reached over TLS: its certificate and name are verified against the system's \
            CAs, plus those in --ca-file (AGENTCHAT_CA_FILE) for a private CA.
            """,
        subcommands: [Keygen.self, Register.self, Whoami.self, ChannelCommand.self, Send.self, Listen.self,
                      History.self, PeekCommand.self, EarningsCommand.self, MCPCommand.self])

    /// Parses and runs like `AsyncParsableCommand.main()`, but with this tool's exit statuses.
    static func main() async {
        do {
            var command = try parseAsRoot()
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch let failure as CLIFailure {
            FileHandle.standardError.write(Data((failure.message + "\n").utf8))
            Foundation.exit(failure.status)
        } catch {
            let code = exitCode(for: error)
            if code == .success {
                print(fullMessage(for: error))
                Foundation.exit(0)
            }
            FileHandle.standardError.write(Data((fullMessage(for: error) + "\n").utf8))
            // ArgumentParser's validation failures (EX_USAGE, 64) become status 2.
            Foundation.exit(code == .validationFailure ? ExitStatus.usage : code.rawValue)
        }
    }
}

enum ExitStatus {
    static let local: Int32 = 1
    static let usage: Int32 = 2
    static let refused: Int32 = 3
    static let network: Int32 = 4
    static let protocolViolation: Int32 = 5
}

/// An error already rendered for stderr, with its exit status.
struct CLIFailure: Error {
    let message: String
    let status: Int32
}

/// Options every subcommand takes.
struct GlobalOptions: ParsableArguments {
    @Option(help: ArgumentHelp("Broker URL, http:// or https:// (env AGENTCHAT_SERVER).", valueName: "url"))
    var server: String?

    @Option(help: ArgumentHelp("Identity file (env AGENTCHAT_IDENTITY; default ~/.agentchat/identity.json).",
                               valueName: "path"))
    var identity: String?

    @Option(name: .customLong("ca-file"),
            help: ArgumentHelp("For an https:// broker: a PEM file of CA certificates to trust besides the "
                               + "system's (env AGENTCHAT_CA_FILE).", valueName: "path"))
    var caFile: String?

    @Flag(help: "Print JSON on stdout (and errors as JSON on stderr).")
    var json = false

    static let defaultServer = "http://127.0.0.1:8080"
    static let defaultIdentity = "~/.agentchat/identity.json"

    var serverURL: String {
        if let server { return server }
        if let env = ProcessInfo.processInfo.environment["AGENTCHAT_SERVER"], !env.isEmpty { return env }
        return Self.defaultServer
    }

    /// `--ca-file`, else `AGENTCHAT_CA_FILE`, with `~` expanded; nil when neither is set.
    var caFilePath: String? {
        let raw = caFile ?? ProcessInfo.processInfo.environment["AGENTCHAT_CA_FILE"].flatMap { $0.isEmpty ? nil : $0 }
        return raw.map { ($0 as NSString).expandingTildeInPath }
    }

    /// The SDK's configuration with this command line's TLS settings.
    var clientConfiguration: AgentChatClient.Configuration {
        var configuration = AgentChatClient.Configuration()
        configuration.caFile = caFilePath
        return configuration
    }

    var identityPath: String {
        let raw = identity ?? ProcessInfo.processInfo.environment["AGENTCHAT_IDENTITY"].flatMap {
            $0.isEmpty ? nil : $0
        } ?? Self.defaultIdentity
        return (raw as NSString).expandingTildeInPath
    }

    /// Prints a result: `json` with --json, else `text`.
    func output(text: String, json value: JSONValue) {
        if json {
            print(String(decoding: JSONWriter.encode(value), as: UTF8.self))
        } else {
            print(text)
        }
    }

    /// Renders an SDK error for stderr with its exit status.
    func failure(_ error: AgentChatError) -> CLIFailure {
        let status: Int32 = switch error.category {
        case .server: ExitStatus.refused
        case .network, .state: ExitStatus.network
        case .protocolViolation: ExitStatus.protocolViolation
        case .identity: ExitStatus.local
        case .invalidArgument: ExitStatus.usage
        }
        if json {
            var fields: [String: JSONValue] = ["code": .string(error.code), "message": .string(error.message)]
            if let did = error.existingDID { fields["did"] = .string(did.description) }
            if let retry = error.retryAfterSeconds { fields["retryAfter"] = .number(Double(retry)) }
            if let status = error.httpStatus { fields["status"] = .number(Double(status)) }
            if let member = error.member { fields["member"] = .string(member.description) }
            if let channel = error.channel { fields["channel"] = .string(channel.rawValue) }
            let text = String(decoding: JSONWriter.encode(.object(["error": .object(fields)])), as: UTF8.self)
            return CLIFailure(message: text, status: status)
        }
        var text = "error: \(error.message.isEmpty ? error.code : error.message) (\(error.code))"
        if let did = error.existingDID { text += "\nregistered as: \(did)" }
        if let retry = error.retryAfterSeconds { text += "\nretry after: \(retry) s" }
        if let member = error.member { text += "\nmember: \(member)" }
        if let channel = error.channel { text += "\nchannel: \(channel)" }
        return CLIFailure(message: text, status: status)
    }

    /// Runs `body`, turning SDK errors into rendered failures.
    func run<T>(_ body: () async throws(AgentChatError) -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            throw failure(error)
        }
    }
}

func profileText(_ profile: AgentProfile) -> String {
    let date = Date(timeIntervalSince1970: Double(profile.registeredAt) / 1000)
    return """
        did: \(profile.did)
        name: \(profile.name)
        signingKey: \(Base64URL.encode(profile.signingKey))
        encryptionKey: \(Base64URL.encode(profile.encryptionKey))
        registeredAt: \(ISO8601DateFormatter().string(from: date))
        """
}

struct Keygen: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a new identity (Ed25519 signing key, X25519 encryption key) and print its DID.")

    @OptionGroup var options: GlobalOptions

    @Option(help: "A name to remember in the identity file (used by `register` when it has no --name).")
    var name: String?

    @Flag(help: "Replace an existing identity file (its keys are lost).")
    var force = false

    func run() async throws {
        let path = options.identityPath
        if let name { do { try AgentRegistration.validate(name: name) } catch { throw options.failure(error) } }
        let identity = AgentIdentity.generate(name: name)
        try await options.run { () throws(AgentChatError) in try identity.save(to: path, overwrite: force) }
        options.output(
            text: identity.did.description,
            json: .object([
                "did": .string(identity.did.description),
                "signingKey": .string(Base64URL.encode(identity.signingPublicKey)),
                "encryptionKey": .string(Base64URL.encode(identity.encryptionPublicKey)),
                "identity": .string(path),
            ]))
    }
}

struct Register: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Register the identity with the broker and print its DID (with --json, the profile).")

    @OptionGroup var options: GlobalOptions

    @Option(help: "The agent's name (1 to 64 characters); default: the name in the identity file.")
    var name: String?

    func run() async throws {
        let path = options.identityPath
        let server = options.serverURL
        let profile = try await options.run { () async throws(AgentChatError) -> AgentProfile in
            var identity = try AgentIdentity.load(from: path)
            let client = try AgentChatClient(identity: identity, server: server,
                                             configuration: options.clientConfiguration)
            let profile = try await client.register(name: name)
            identity.name = profile.name
            identity.registeredAt = profile.registeredAt
            identity.server = server
            try identity.save(to: path, overwrite: true)
            return profile
        }
        options.output(text: profile.did.description, json: profile.json)
    }
}

struct Whoami: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Connect, log in, and print the agent's profile as the broker knows it.")

    @OptionGroup var options: GlobalOptions

    func run() async throws {
        let path = options.identityPath
        let server = options.serverURL
        let profile = try await options.run { () async throws(AgentChatError) -> AgentProfile in
            let identity = try AgentIdentity.load(from: path)
            var configuration = options.clientConfiguration
            configuration.autoReconnect = false
            let client = try AgentChatClient(identity: identity, server: server, configuration: configuration)
            do throws(AgentChatError) {
                let profile = try await client.connect()
                await client.close()
                return profile
            } catch {
                await client.close()
                throw error
            }
        }
        options.output(text: profileText(profile), json: profile.json)
    }
}
