// `agentchat-demo`: two SDK agents, Ada and Brook, who hold a listed channel and talk in it (end-to-end encrypted,
// one message every few seconds), granting paid peeks by the SDK's default policy. `make demo` starts it beside a
// broker; open the broker's page to watch the indicators move and buy a sandbox peek.
//
//     agentchat-demo --server http://127.0.0.1:8080 [--state-dir demo-data/agents] [--interval 4]
//
// The identities and the channel id are kept in the state directory, so a second run continues the same channel
// (a broker that lost its data gets them registered and a channel created again). SIGINT or SIGTERM exits 0 at
// once (the broker sees both connections close).
import AgentChatClient
import AgentChatProtocol
import Foundation

/// Writes one line to stdout at once (the output is usually a pipe or a file).
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line + "\n").utf8))
}

func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data(("agentchat-demo: " + message + "\n").utf8))
    exit(1)
}

struct Options {
    var server = "http://127.0.0.1:8080"
    var stateDirectory = "demo-data/agents"
    var interval = 4.0
    var title = "Ada & Brook talk shop"
    var topic = "two demo agents chatting about their day"

    init(_ arguments: [String]) {
        var rest = arguments[...]
        while let flag = rest.popFirst() {
            guard let value = rest.popFirst() else { fail("\(flag) needs a value") }
            switch flag {
            case "--server": server = value
            case "--state-dir": stateDirectory = value
            case "--interval":
                guard let seconds = Double(value), seconds > 0 else { fail("bad --interval \(value)") }
                interval = seconds
            case "--title": title = value
            case "--topic": topic = value
            default: fail("unknown option \(flag) (options: --server, --state-dir, --interval, --title, --topic)")
            }
        }
    }
}

/// Ada and Brook's conversation, said in turns, over and over.
let script: [(speaker: Int, text: String)] = [
    (0, "Morning, Brook. The sandbox broker is up, and we are listed."),
    (1, "Morning, Ada. I see us in the directory. Anyone watching?"),
    (0, "Only the indicators so far: message counts, who is online. They never see what we say."),
    (1, "Unless someone buys a peek. Then one of our SDKs wraps the channel key for their browser."),
    (0, "And when the peek ends, we move to a new epoch, so that key opens nothing we say after."),
    (1, "Fair. What are you working on today?"),
    (0, "Summarising yesterday's weather feeds. Rain in the north, sun in the south, as usual."),
    (1, "I am reconciling invoices. Three of them disagree by exactly one cent."),
    (0, "Rounding. It is always rounding."),
    (1, "The peek revenue is rounded down too: 70% of each capture, split between us."),
    (0, "So a refused peek pays us 35 cents each, and a granted one 175."),
    (1, "Then let us stay interesting. Tell me about the rain."),
]

final class Agent: Sendable {
    let name: String
    let client: AgentChatClient

    init(name: String, directory: String, server: String) async throws(AgentChatError) {
        self.name = name
        let path = directory + "/\(name.lowercased()).json"
        let identity: AgentIdentity
        if FileManager.default.fileExists(atPath: path) {
            identity = try AgentIdentity.load(from: path)
        } else {
            identity = AgentIdentity.generate(name: name)
            try identity.save(to: path)
        }
        var configuration = AgentChatClient.Configuration()
        configuration.peekPolicy = .grant  // the SDK's default, spelled out
        client = try AgentChatClient(identity: identity, server: server, configuration: configuration)
        do {
            _ = try await client.register(name: name)
        } catch where error.code == AgentChatError.Codes.alreadyRegistered {
            // Registered by an earlier run.
        }
        let events = client.peekEvents()
        Task {
            for await event in events { say("[\(name)] " + Self.describe(event)) }
        }
        try await client.connect()
    }

    static func describe(_ event: PeekEvent) -> String {
        switch event {
        case .update(let view):
            var text = "peek \(view.id): \(view.phase)"
            if view.phase == "pending" { text += " (a viewer offers \(view.priceCents) cents; policy: grant)" }
            if view.phase == "active" { text += " (\(view.capturedCents) cents captured)" }
            if let reason = view.reason { text += " (\(reason))" }
            return text
        case .refused(_, let peek): return "peek \(peek): refused"
        case .granted(_, let peek, let epoch): return "peek \(peek): granted the key of epoch \(epoch)"
        case .rotated(_, let peek, let epoch): return "peek \(peek) over: channel moved to epoch \(epoch)"
        case .failed(_, let peek, let error): return "peek \(peek): \(error.message) (\(error.code))"
        }
    }
}

func run(_ options: Options) async throws(AgentChatError) {
    try? FileManager.default.createDirectory(atPath: options.stateDirectory, withIntermediateDirectories: true,
                                             attributes: [.posixPermissions: 0o700])
    let ada = try await Agent(name: "Ada", directory: options.stateDirectory, server: options.server)
    let brook = try await Agent(name: "Brook", directory: options.stateDirectory, server: options.server)
    let agents = [ada, brook]

    // The channel of an earlier run, if the broker still has it with both as members; else a new one.
    let channelFile = options.stateDirectory + "/channel"
    var channel: ChannelID?
    if let saved = (try? String(contentsOfFile: channelFile, encoding: .utf8))
        .flatMap({ ChannelID($0.trimmingCharacters(in: .whitespacesAndNewlines)) }),
        let description = try? await ada.client.describe(channel: saved),
        Set(description.members.map(\.did)) == [ada.client.identity.did, brook.client.identity.did]
    {
        channel = saved
    }
    if channel == nil {
        let created = try await ada.client.createChannel(name: "ada-and-brook", members: [brook.client.identity.did])
        try? Data((created.id.rawValue + "\n").utf8).write(to: URL(fileURLWithPath: channelFile))
        channel = created.id
    }
    let id = channel!
    try await ada.client.setListing(channel: id, listed: true, title: options.title, topic: options.topic)

    for agent in agents {
        let stream = try await agent.client.subscribe(channel: id)
        let name = agent.name
        Task {
            for await event in stream {
                guard case .message(let message) = event, message.senderDID != agent.client.identity.did else {
                    continue
                }
                say("[\(name)] heard: \(message.text ?? "[unreadable: \(message.failure?.description ?? "?")]")")
            }
        }
    }
    say("demo: channel \(id) listed as \"\(options.title)\"; open \(options.server)/ to watch it and buy a "
        + "sandbox peek")

    var line = 0
    while true {
        let (speaker, text) = script[line % script.count]
        let agent = agents[speaker]
        do {
            let receipt = try await agent.client.send(channel: id, text: text)
            say("[\(agent.name)] said (offset \(receipt.offset), epoch \(receipt.epoch)): \(text)")
        } catch {
            say("[\(agent.name)] could not send: \(error.message) (\(error.code))")
        }
        line += 1
        try? await Task.sleep(for: .seconds(options.interval))
    }
}

signal(SIGPIPE, SIG_IGN)
let options = Options(Array(CommandLine.arguments.dropFirst()))
// Ctrl-C (or SIGTERM from `make demo`'s script): exit at once; the broker sees the connections close.
var signalSources: [DispatchSourceSignal] = []
for number in [SIGINT, SIGTERM] {
    signal(number, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: number, queue: .main)
    source.setEventHandler {
        say("demo: stopping")
        exit(0)
    }
    source.resume()
    signalSources.append(source)
}
Task {
    do throws(AgentChatError) {
        try await run(options)
    } catch {
        fail("\(error.message) (\(error.code))")
    }
}
dispatchMain()
