import AgentChatClient
import AgentChatProtocol
import Foundation
import Testing

/// The `agentchat` binary end to end (build it first: `swift build --product agentchat`).
@Suite(.serialized) struct CLITests {
    @Test func keygenRegisterWhoami() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/agent/identity.json"
        let global = ["--server", broker.url, "--identity", path]

        let keygen = try await runCLI(["keygen"] + global)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let did = keygen.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(DID(parsing: did) != nil)
        #expect(fileMode(path) == 0o600)
        #expect(try AgentIdentity.load(from: path).did.description == did)

        let again = try await runCLI(["keygen"] + global)
        #expect(again.status == 1)
        #expect(again.stderr.contains("identity_exists"))
        #expect(try AgentIdentity.load(from: path).did.description == did)

        let register = try await runCLI(["register", "--name", "alice"] + global)
        #expect(register.status == 0, "\(register.stderr)")
        #expect(register.stdout.trimmingCharacters(in: .whitespacesAndNewlines) == did)
        let saved = try AgentIdentity.load(from: path)
        #expect(saved.name == "alice" && saved.registeredAt != nil && saved.server == broker.url)

        let whoami = try await runCLI(["whoami"] + global)
        #expect(whoami.status == 0, "\(whoami.stderr)")
        #expect(whoami.stdout.contains("did: \(did)"))
        #expect(whoami.stdout.contains("name: alice"))

        let json = try await runCLI(["whoami", "--json"] + global)
        #expect(json.status == 0, "\(json.stderr)")
        let profile = try AgentProfile(validating: JSONParser.parse(json.stdout.trimmingCharacters(in: .newlines)))
        #expect(profile.did.description == did)
        #expect(profile.name == "alice")

        // A second registration is refused by the broker: status 3, the code on stderr.
        let twice = try await runCLI(["register", "--name", "alice"] + global)
        #expect(twice.status == 3)
        #expect(twice.stderr.contains("already_registered"))
        #expect(twice.stderr.contains(did))
        #expect(twice.stdout.isEmpty)
    }

    @Test func jsonOutputAndEnvironment() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let env = ["AGENTCHAT_SERVER": broker.url, "AGENTCHAT_IDENTITY": root + "/id.json"]

        let keygen = try await runCLI(["keygen", "--json"], environment: env)
        #expect(keygen.status == 0, "\(keygen.stderr)")
        let key = try JSONParser.parse(keygen.stdout.trimmingCharacters(in: .newlines))
        let did = try #require(key["did"]?.stringValue)
        #expect(key["identity"]?.stringValue == root + "/id.json")

        let register = try await runCLI(["register", "--name", "bob", "--json"], environment: env)
        #expect(register.status == 0, "\(register.stderr)")
        let profile = try AgentProfile(validating: JSONParser.parse(register.stdout.trimmingCharacters(in: .newlines)))
        #expect(profile.did.description == did && profile.name == "bob")

        let twice = try await runCLI(["register", "--name", "bob", "--json"], environment: env)
        #expect(twice.status == 3)
        let error = try JSONParser.parse(twice.stderr.trimmingCharacters(in: .newlines))
        #expect(error["error"]?["code"]?.stringValue == "already_registered")
        #expect(error["error"]?["did"]?.stringValue == did)
    }

    @Test func failures() async throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/id.json"

        // No identity yet.
        let missing = try await runCLI(["whoami", "--identity", path, "--server", "http://127.0.0.1:1"])
        #expect(missing.status == 1)
        #expect(missing.stderr.contains("identity_not_found"))

        // Nothing listening.
        #expect(try await runCLI(["keygen", "--identity", path]).status == 0)
        let unreachable = try await runCLI(["whoami", "--identity", path, "--server", "http://127.0.0.1:1"])
        #expect(unreachable.status == 4)
        #expect(unreachable.stderr.contains("network_error"))

        // Usage errors.
        let usage = try await runCLI(["register", "--bogus"])
        #expect(usage.status == 2)
        #expect(!usage.stderr.isEmpty)
        let badName = try await runCLI(["register", "--identity", path, "--name", "", "--server", "http://127.0.0.1:1"])
        #expect(badName.status == 2)

        // An identity file others can read.
        #expect(chmod(path, 0o644) == 0)
        let insecure = try await runCLI(["whoami", "--identity", path])
        #expect(insecure.status == 1)
        #expect(insecure.stderr.contains("identity_insecure"))
    }
}
