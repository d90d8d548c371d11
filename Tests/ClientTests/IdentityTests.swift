import AgentChatClient
import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing

@Suite struct IdentityTests {
    @Test func didIsTheDIDOfTheSigningKey() {
        let identity = AgentIdentity.generate()
        #expect(identity.did == DID(signingKey: identity.signingPublicKey))
        #expect(identity.did.description.hasPrefix("did:agentchat:z6Mk"))
        #expect(identity.signingPublicKey.count == 32)
        #expect(identity.encryptionPublicKey.count == 32)
    }

    @Test func saveAndLoadRoundTripWithPrivateModes() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/a/b/identity.json"
        var identity = AgentIdentity.generate(name: "alice")
        identity.registeredAt = 1_704_067_200_000
        identity.server = "http://127.0.0.1:8080"
        try identity.save(to: path)

        #expect(fileMode(path) == 0o600)
        #expect(fileMode(root + "/a") == 0o700)
        #expect(fileMode(root + "/a/b") == 0o700)
        // No temporary file is left behind.
        #expect(try FileManager.default.contentsOfDirectory(atPath: root + "/a/b") == ["identity.json"])

        let loaded = try AgentIdentity.load(from: path)
        #expect(loaded.did == identity.did)
        #expect(loaded.signingPublicKey == identity.signingPublicKey)
        #expect(loaded.encryptionPublicKey == identity.encryptionPublicKey)
        #expect(loaded.signingKeyPair.seed.constantTimeEquals(identity.signingKeyPair.seed))
        #expect(loaded.encryptionKeyPair.secretKey.constantTimeEquals(identity.encryptionKeyPair.secretKey))
        #expect(loaded.name == "alice")
        #expect(loaded.registeredAt == 1_704_067_200_000)
        #expect(loaded.server == "http://127.0.0.1:8080")

        // The documented format.
        let json = try JSONParser.parse(Array(try #require(FileManager.default.contents(atPath: path))).dropLast())
        #expect(json["version"]?.integerValue == 1)
        #expect(json["did"]?.stringValue == identity.did.description)
        #expect(json["signingSeed"]?.stringValue.flatMap(Base64URL.decode) == identity.signingKeyPair.seed.copyBytes())
        #expect(json["encryptionSecret"]?.stringValue.flatMap(Base64URL.decode)
                    == identity.encryptionKeyPair.secretKey.copyBytes())
    }

    @Test func refusesToOverwriteUnlessAsked() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/identity.json"
        let first = AgentIdentity.generate()
        try first.save(to: path)
        #expect(throws: AgentChatError.identityExists) { try AgentIdentity.generate().save(to: path) }
        #expect(try AgentIdentity.load(from: path).did == first.did)
        let second = AgentIdentity.generate()
        try second.save(to: path, overwrite: true)
        #expect(try AgentIdentity.load(from: path).did == second.did)
        #expect(fileMode(path) == 0o600)
    }

    @Test(arguments: [0o644, 0o640, 0o604, 0o660])
    func refusesAFileOthersCanRead(mode: Int) throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        let path = root + "/identity.json"
        try AgentIdentity.generate().save(to: path)
        #expect(chmod(path, mode_t(mode)) == 0)
        let error = #expect(throws: AgentChatError.identityInsecure) { try AgentIdentity.load(from: path) }
        #expect(error?.category == .identity)
        #expect(error?.message.contains("chmod 600") == true)
    }

    @Test func missingAndMalformedFiles() throws {
        let root = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: root) }
        #expect(throws: AgentChatError.identityNotFound) { try AgentIdentity.load(from: root + "/none.json") }

        // A DID that does not belong to the seed.
        let path = root + "/bad.json"
        let identity = AgentIdentity.generate()
        let other = AgentIdentity.generate()
        let text = """
            {"did":"\(other.did)","encryptionSecret":"\(Base64URL.encode(identity.encryptionKeyPair.secretKey.copyBytes()))",\
            "signingSeed":"\(Base64URL.encode(identity.signingKeyPair.seed.copyBytes()))","version":1}
            """
        #expect(FileManager.default.createFile(atPath: path, contents: Data(text.utf8),
                                               attributes: [.posixPermissions: 0o600]))
        #expect(throws: AgentChatError.identityInvalid) { try AgentIdentity.load(from: path) }

        #expect(FileManager.default.createFile(atPath: path, contents: Data("{\"version\":2}".utf8),
                                               attributes: [.posixPermissions: 0o600]))
        #expect(throws: AgentChatError.identityInvalid) { try AgentIdentity.load(from: path) }
    }

    @Test func descriptionsShowOnlyTheDID() {
        let identity = AgentIdentity.generate(name: "alice")
        let seed = Base64URL.encode(identity.signingKeyPair.seed.copyBytes())
        let secret = Base64URL.encode(identity.encryptionKeyPair.secretKey.copyBytes())
        var dumped = ""
        dump(identity, to: &dumped)
        for text in [identity.description, identity.debugDescription, "\(identity)", String(reflecting: identity),
                     dumped] {
            #expect(text.contains(identity.did.description))
            #expect(!text.contains(seed))
            #expect(!text.contains(secret))
        }
    }

    @Test func backoffDoublesToTheCapWithFullJitter() {
        let backoff = ReconnectBackoff()
        #expect((1...8).map { backoff.ceiling(forAttempt: $0) } == [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10, 10])
        #expect(backoff.ceiling(forAttempt: 1000) == 10)
        for attempt in 1...10 {
            let delay = backoff.delay(forAttempt: attempt)
            #expect(delay >= 0 && delay <= backoff.ceiling(forAttempt: attempt))
        }
    }

    @Test func brokerURLs() throws {
        let url = try BrokerURL("http://127.0.0.1:8080")
        #expect(url.host == "127.0.0.1" && url.port == 8080 && url.basePath == "")
        #expect(try BrokerURL("ws://example.com/").port == 80)
        #expect(try BrokerURL("http://[::1]:9000").host == "::1")
        #expect(try BrokerURL("https://example.com").port == 443)
        #expect(throws: AgentChatError(code: AgentChatError.Codes.unsupportedScheme, category: .invalidArgument,
                                       message: "")) { try BrokerURL("gopher://example.com") }
        #expect(throws: AgentChatError.self) { try BrokerURL("not a url") }
    }
}
