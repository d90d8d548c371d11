import AgentChatClient
import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing

@Suite(.serialized) struct RegistrationTests {
    @Test func canonicalStringAndSignature() throws {
        let identity = AgentIdentity.generate()
        let request = try AgentRegistration(identity: identity, name: "alice ✨", timestamp: 1_704_067_200_000)
        let sk = Base64URL.encode(identity.signingPublicKey)
        let ek = Base64URL.encode(identity.encryptionPublicKey)
        // Recomputed by hand from docs/PROTOCOL.md.
        let expected = "agentchat-register-v1\nalice ✨\n\(sk)\n\(ek)\n1704067200000"
        #expect(request.canonicalString == expected)
        let signature = try #require(Base64URL.decode(request.signature))
        #expect(SigningKeyPair.verify(signature: signature, message: Array(expected.utf8),
                                      publicKey: identity.signingPublicKey))
        #expect(Set(request.json.objectValue!.keys) == ["name", "signingKey", "encryptionKey", "timestamp",
                                                         "signature"])
    }

    @Test(arguments: ["", String(repeating: "a", count: 65), "a\u{7}b", "tab\there", "x\u{85}", "   "])
    func namesTheBrokerWouldRefuse(name: String) {
        #expect(throws: AgentChatError.self) { try AgentRegistration.validate(name: name) }
    }

    @Test func registerSendsASignatureTheBrokerCanVerify() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let identity = AgentIdentity.generate()
        let client = try AgentChatClient(identity: identity, server: broker.url, configuration: testConfiguration())
        let profile = try await client.register(name: "alice")
        #expect(profile.did == identity.did)
        #expect(profile.name == "alice")
        #expect(profile.signingKey == identity.signingPublicKey)
        #expect(profile.encryptionKey == identity.encryptionPublicKey)

        // Independent check of the bytes on the wire.
        let body = try #require(broker.registerBodies.first)
        let json = try JSONParser.parse(body)
        #expect(Set(json.objectValue!.keys) == ["name", "signingKey", "encryptionKey", "timestamp", "signature"])
        let sk = try #require(json["signingKey"]?.stringValue)
        let ek = try #require(json["encryptionKey"]?.stringValue)
        let timestamp = try #require(json["timestamp"]?.integerValue)
        #expect(Base64URL.decode(sk) == identity.signingPublicKey)
        #expect(Base64URL.decode(ek) == identity.encryptionPublicKey)
        #expect(abs(timestamp - Int64(Date().timeIntervalSince1970 * 1000)) < 60_000)
        let text = ["agentchat-register-v1", "alice", sk, ek, String(timestamp)].joined(separator: "\n")
        let signature = try #require(json["signature"]?.stringValue.flatMap(Base64URL.decode))
        #expect(SigningKeyPair.verify(signature: signature, message: Array(text.utf8),
                                      publicKey: identity.signingPublicKey))
        #expect(DID(signingKey: Base64URL.decode(sk)!) == identity.did)
        await client.close()
    }

    @Test func alreadyRegisteredCarriesTheDID() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let identity = AgentIdentity.generate()
        let client = try AgentChatClient(identity: identity, server: broker.url, configuration: testConfiguration())
        _ = try await client.register(name: "alice")
        let error = await #expect(throws: AgentChatError.alreadyRegistered) { try await client.register(name: "bob") }
        #expect(error?.httpStatus == 409)
        #expect(error?.existingDID == identity.did)
        #expect(error?.category == .server)
        await client.close()
    }

    @Test func rateLimitedCarriesRetryAfter() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        broker.registerOverride = (429, [("Retry-After", "7")],
                                   #"{"error":{"code":"rate_limited","message":"slow down"}}"#)
        let client = try AgentChatClient(identity: .generate(), server: broker.url, configuration: testConfiguration())
        let error = await #expect(throws: AgentChatError.rateLimited) { try await client.register(name: "alice") }
        #expect(error?.httpStatus == 429)
        #expect(error?.retryAfterSeconds == 7)
        #expect(error?.message == "slow down")
        await client.close()
    }

    @Test(arguments: [(400, "bad_signature"), (400, "stale_timestamp"), (400, "invalid_field"),
                      (415, "unsupported_media_type"), (503, "unavailable")])
    func everyErrorCodeIsSurfaced(status: Int, code: String) async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        broker.registerOverride = (status, [], #"{"error":{"code":"\#(code)","message":"nope"}}"#)
        let client = try AgentChatClient(identity: .generate(), server: broker.url, configuration: testConfiguration())
        let error = await #expect(throws: AgentChatError.self) { try await client.register(name: "alice") }
        #expect(error?.code == code)
        #expect(error?.httpStatus == status)
        #expect(error?.category == .server)
        await client.close()
    }

    @Test func unreachableBrokerIsANetworkError() async throws {
        let broker = try FakeBroker()
        let url = broker.url
        broker.stop()
        let client = try AgentChatClient(identity: .generate(), server: url, configuration: testConfiguration())
        let error = await #expect(throws: AgentChatError.self) { try await client.register(name: "alice") }
        #expect(error?.category == .network)
        #expect(error?.code == AgentChatError.Codes.networkError)
    }
}
