import AgentChatClient
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// `agentchat peek …`, `agentchat earnings` and the peeks `agentchat listen` shows.
@Suite(.serialized) struct PeekCLITests {
    @Test func thePolicyIsKeptNextToTheIdentityFile() async throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let identity = root + "/agent/identity.json"
        let global = ["--identity", identity]
        let policyFile = root + "/agent/identity.peek-policy.json"

        let initial = try await runCLI(["peek", "policy"] + global)
        #expect(initial.status == 0 && initial.stdout == "default: grant\n", "\(initial)")
        #expect(!FileManager.default.fileExists(atPath: policyFile))

        let refuse = try await runCLI(["peek", "policy", "refuse"] + global)
        #expect(refuse.status == 0 && refuse.stdout == "default: refuse\n", "\(refuse)")
        let channel = "ch_FSIvPElWY3B9ipeksb7L2A"
        let ask = try await runCLI(["peek", "policy", "ask", "--channel", channel, "--json"] + global)
        #expect(ask.status == 0)
        let json = try JSONParser.parse(Array(ask.stdout.utf8.dropLast()))
        #expect(json["default"] == "refuse" && json["channels"]?[channel] == "ask", "\(ask)")
        let saved = try JSONParser.parse(Array(try Data(contentsOf: URL(fileURLWithPath: policyFile))))
        #expect(saved == json)
        let shown = try await runCLI(["peek", "policy"] + global)
        #expect(shown.stdout == "default: refuse\n\(channel): ask\n")
        let reset = try await runCLI(["peek", "policy", "default", "--channel", channel] + global)
        #expect(reset.stdout == "default: refuse\n")

        let bad = try await runCLI(["peek", "policy", "maybe"] + global)
        #expect(bad.status == 2, "\(bad)")
        let badChannel = try await runCLI(["peek", "policy", "grant", "--channel", "nope"] + global)
        #expect(badChannel.status == 2)
        // Another identity file name gets the suffix appended.
        let other = try await runCLI(["peek", "policy", "ask", "--identity", root + "/me"])
        #expect(other.status == 0 && FileManager.default.fileExists(atPath: root + "/me.peek-policy.json"))
    }

    @Test func listenShowsPeeksAndFollowsThePolicyEarningsAndRefuse() async throws {
        let cluster = try await ChannelCluster(
            brokers: 1, extraArguments: ["--peek-refusal-window", "5", "--peek-grant-window", "3",
                                         "--peek-duration", "2"])
        defer { cluster.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let global = ["--server", cluster.url(0), "--identity", root + "/id.json"]
        #expect(try await runCLI(["keygen", "--name", "alice"] + global).status == 0)
        #expect(try await runCLI(["register"] + global).status == 0)
        let created = try await runCLI(["channel", "create", "--name", "peekable"] + global)
        let channel = try #require(ChannelID(created.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let listing = try await runCLI(["channel", "listing", "--channel", channel.rawValue, "--title", "Peekable"]
            + global)
        #expect(listing.status == 0, "\(listing.stderr)")
        #expect(try await runCLI(["peek", "policy", "refuse"] + global).status == 0)

        let listen = try ChildProcess(executable: try locateCLI(),
                                      arguments: ["listen", "--channel", channel.rawValue, "--count", "1"] + global)
        defer { listen.stop() }
        let viewer = try await PeekViewer(port: cluster.brokers[0].port)
        let (peek, _) = try await viewer.requestAndPay(channel)
        let (refused, _) = try await viewer.until("refused")
        #expect(refused["capturedCents"] == 100)
        try await DedicatedThread.run {
            try listen.waitForOutput(containing: "peek \(peek) on \(channel): refused by this agent", in: .stderr,
                                     timeout: 10)
            try listen.waitForOutput(containing: "peek \(peek) on \(channel): refused (100 cents", in: .stderr,
                                     timeout: 10)
        }
        #expect(listen.stderr.contains("peek \(peek) on \(channel): pending (a viewer pays 500 cents"), "\(listen.stderr)")
        #expect(listen.stdout.isEmpty, "peeks stay off stdout")
        // Messages still arrive on stdout.
        #expect(try await runCLI(["send", "--channel", channel.rawValue, "hello"] + global).status == 0)
        let status = try await DedicatedThread.run { try listen.waitForExit(timeout: 15) }
        #expect(status == 0 && listen.stdout.contains(": hello"), "\(listen.stdout)\n\(listen.stderr)")

        let earnings = try await runCLI(["earnings", "--json"] + global)
        #expect(earnings.status == 0, "\(earnings.stderr)")
        let json = try JSONParser.parse(Array(earnings.stdout.utf8.dropLast()))
        #expect(json["balanceCents"] == 70 && json["entries"]?.arrayValue?.first?["peek"]?.stringValue == peek, "\(json)")
        let text = try await runCLI(["earnings"] + global)
        #expect(text.stdout.hasPrefix("balance: 0.70 USD (70 cents)\n") && text.stdout.contains("\(peek) 70 cents"))
        #expect(try await runCLI(["earnings", "--limit", "0"] + global).status == 2)

        let late = try await runCLI(["peek", "refuse", channel.rawValue, peek] + global)
        #expect(late.status == 3 && late.stderr.contains("peek_not_refusable"), "\(late)")
    }
}
