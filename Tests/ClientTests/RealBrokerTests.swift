import AgentChatClient
import AgentChatProtocol
import Foundation
import Testing

/// The SDK and the CLI against a real broker: the one at `AGENTCHAT_TEST_SERVER` (e.g. `http://127.0.0.1:8080`)
/// when it is set, else a broker and Redis started for the test. Every run registers fresh identities, so a given
/// broker's registration rate limit (`--register-rate`, default 10 per minute) must allow three per run.
@Suite(.serialized)
struct RealBrokerTests {
    /// The broker to use, and what keeps a started one alive.
    private func broker() async throws -> (url: String, cluster: ChannelCluster?) {
        if let url = realBrokerURL { return (url, nil) }
        let cluster = try await ChannelCluster(brokers: 1)
        return (cluster.url(0), cluster)
    }

    @Test func registerConnectPingReconnectByHand() async throws {
        let (url, cluster) = try await broker()
        defer { cluster?.stop() }
        let identity = AgentIdentity.generate()
        let client = try AgentChatClient(identity: identity, server: url, configuration: testConfiguration())
        let registered = try await client.register(name: "client-test")
        #expect(registered.did == identity.did)
        let error = await #expect(throws: AgentChatError.alreadyRegistered) {
            try await client.register(name: "client-test")
        }
        #expect(error?.existingDID == identity.did)

        let profile = try await client.connect()
        #expect(profile == registered)
        #expect(try await client.ping().brokerTime > 0)
        await client.close()

        let stranger = try AgentChatClient(identity: .generate(), server: url, configuration: testConfiguration())
        await #expect(throws: AgentChatError.authFailed) { try await stranger.connect() }
        await stranger.close()
    }

    @Test func cli() async throws {
        let (url, cluster) = try await broker()
        defer { cluster?.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let global = ["--server", url, "--identity", root + "/id.json"]
        #expect(try await runCLI(["keygen"] + global).status == 0)
        let register = try await runCLI(["register", "--name", "cli-test", "--json"] + global)
        #expect(register.status == 0, "\(register.stderr)")
        let whoami = try await runCLI(["whoami", "--json"] + global)
        #expect(whoami.status == 0, "\(whoami.stderr)")
        #expect(whoami.stdout == register.stdout)
    }
}
