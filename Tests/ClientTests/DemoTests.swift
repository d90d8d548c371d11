import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient
#if canImport(Glibc)
import Glibc
#endif

/// `make demo` for a few seconds: `scripts/demo.sh` with the debug builds starts a broker (with its embedded Redis)
/// and the two demo agents; a viewer sees the channel listed and its messages counted; SIGINT to the script stops
/// the agents, the broker and its Redis.
@Suite(.serialized) struct DemoTests {
    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path

    private func isAlive(_ pid: pid_t) -> Bool { kill(pid, 0) == 0 || errno != ESRCH }

    private func number(after prefix: String, in line: String) -> pid_t? {
        guard let range = line.range(of: prefix) else { return nil }
        return pid_t(String(line[range.upperBound...].prefix { $0.isNumber }))
    }

    @Test func theDemoListsATalkingChannelAndStopsEverythingOnInterrupt() async throws {
        let binaries = URL(fileURLWithPath: try BrokerProcess.locateProduct("agentchat-demo",
                                                                            override: "AGENTCHAT_DEMO_BIN"))
            .deletingLastPathComponent().path
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let demo = try ChildProcess(executable: "/bin/sh", arguments: [Self.repository + "/scripts/demo.sh"],
                                    environment: ["AGENTCHAT_BIN_DIR": binaries, "DEMO_DIR": directory,
                                                  "DEMO_PORT": "0", "DEMO_INTERVAL": "1"])
        defer { demo.stop() }
        let (brokerLine, agentsLine, channelLine) = try await DedicatedThread.run {
            (try demo.waitForOutput(containing: "demo: broker at http://", in: .stdout, timeout: 60),
             try demo.waitForOutput(containing: "demo: agents Ada and Brook started", in: .stdout, timeout: 10),
             try demo.waitForOutput(containing: "demo: channel ch_", in: .stdout, timeout: 60))
        }
        let port = try #require(number(after: "http://127.0.0.1:", in: brokerLine).map(Int.init))
        let brokerPID = try #require(number(after: "(pid ", in: brokerLine))
        let agentsPID = try #require(number(after: "(pid ", in: agentsLine))
        let channelText = try #require(channelLine.split(separator: " ").first { $0.hasPrefix("ch_") })
        let channel = try #require(ChannelID(String(channelText)))

        // A viewer finds it in the directory, with both agents online, and sees its message count grow.
        let viewer = try await PeekViewer(port: port)
        let directoryPage = try await viewer.request(["type": "directory.list"])
        let listed = try #require(directoryPage["channels"]?.arrayValue?.first { $0["id"]?.stringValue == channel.rawValue },
                                  "\(directoryPage)")
        #expect(listed["title"] == "Ada & Brook talk shop")
        let snapshot = try await viewer.request(["type": "indicators.subscribe", "channels": [.string(channel.rawValue)]])
        let first = try #require(snapshot["channels"]?.arrayValue?.first?["messages"]?.integerValue)
        let deadline = Date().addingTimeInterval(15)
        var latest: JSONValue?
        while Date() < deadline {
            let frame = try JSONParser.parse(try await viewer.client.receiveText(timeout: 15))
            if frame["type"] == "indicators", let item = frame["channels"]?.arrayValue?.first, item["id"]?.stringValue == channel.rawValue {
                latest = item
                if let count = item["messages"]?.integerValue, count >= first + 2, item["online"] == 2 { break }
            }
        }
        #expect((latest?["messages"]?.integerValue ?? 0) >= first + 2 && latest?["online"] == 2, "\(String(describing: latest))")
        // The agents read each other: the messages are encrypted, and they open.
        try await DedicatedThread.run {
            _ = try demo.waitForOutput(containing: "[Brook] heard: ", in: .stdout, timeout: 15)
            _ = try demo.waitForOutput(containing: "[Ada] heard: ", in: .stdout, timeout: 15)
        }
        #expect(!demo.stdout.contains("unreadable") && !demo.stdout.contains("could not send"), "\(demo.stdout)")

        // The embedded Redis's PID, from its pid file in the broker's data directory.
        let redisPIDFile = FileManager.default.enumerator(atPath: directory + "/broker")?
            .compactMap { $0 as? String }.first { $0.hasSuffix("redis.pid") }
        let redisPID = try #require(redisPIDFile.flatMap {
            try? String(contentsOfFile: directory + "/broker/" + $0, encoding: .utf8)
        }.flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        #expect(isAlive(brokerPID) && isAlive(agentsPID) && isAlive(redisPID))

        // Ctrl-C: SIGINT to the script (what a terminal sends to the foreground group reaches it too).
        kill(demo.pid, SIGINT)
        let status = try await DedicatedThread.run { try demo.waitForExit(timeout: 30) }
        #expect(status == 130, "\(demo.stdout)\n\(demo.stderr)")
        #expect(demo.stdout.contains("demo: stopped"))
        try await waitUntil("every process gone", timeout: 10) {
            !isAlive(brokerPID) && !isAlive(agentsPID) && !isAlive(redisPID)
        }
    }
}
