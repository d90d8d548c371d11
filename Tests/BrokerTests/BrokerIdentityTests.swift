import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// did:agentchat computed here from first principles (multicodec 0xED01, base58btc by long division), not with the
/// code under test.
func independentDID(_ signingKey: [UInt8]) -> String {
    let alphabet = Array("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")
    var number = [0xED, 0x01] + signingKey
    var digits: [Character] = []
    while number.contains(where: { $0 != 0 }) {
        var remainder = 0
        var quotient: [UInt8] = []
        for byte in number {
            let value = remainder * 256 + Int(byte)
            quotient.append(UInt8(value / 58))
            remainder = value % 58
        }
        digits.append(alphabet[remainder])
        number = Array(quotient.drop(while: { $0 == 0 }))
    }
    return "did:agentchat:z" + String(digits.reversed())
}

@Suite(.serialized) struct RegistrationTests {
    @Test func registersAndDerivesTheDID() throws {
        let fixture = try BrokerFixture()
        let agent = TestAgent(name: "Alice 🤖")
        let response = try agent.register(port: fixture.port)
        #expect(response.status == 201)
        let body = try json(response.bodyText)
        #expect(body["did"]?.stringValue == independentDID(agent.signing.publicKey))
        let profile = try #require(body["agent"].flatMap(AgentProfile.init(json:)))
        #expect(profile.name == "Alice 🤖")
        #expect(profile.encryptionKey == agent.encryption.publicKey)
        // Registering the same key again changes nothing and names the existing DID.
        let again = try agent.register(port: fixture.port)
        #expect(again.status == 409)
        #expect(try errorCode(again) == "already_registered")
        #expect(try json(again.bodyText)["did"]?.stringValue == independentDID(agent.signing.publicKey))
    }

    @Test func everyMalformedBodyIsRefusedAndChangesNothing() throws {
        let fixture = try BrokerFixture(["--max-body-bytes", "2048"])
        _ = try fixture.waitForHealth(200)
        let agent = TestAgent()
        let before = try RedisProbe.keyCount(port: fixture.redis.port)
        let now = Int64(Date().timeIntervalSince1970 * 1000)
        func with(_ key: String, _ value: JSONValue?) -> [UInt8] {
            guard case .object(var fields) = agent.registrationBody() else { return [] }
            fields[key] = value
            return JSONWriter.encode(.object(fields))
        }
        let cases: [(String, [UInt8], String, Int, String)] = [
            ("not JSON", Array("{name: alice".utf8), "application/json", 400, "bad_json"),
            ("array", Array("[1]".utf8), "application/json", 400, "bad_json"),
            ("name missing", with("name", nil), "application/json", 400, "missing_field"),
            ("name a number", with("name", 7), "application/json", 400, "invalid_field"),
            ("timestamp a string", with("timestamp", "1"), "application/json", 400, "invalid_field"),
            ("bad base64", with("signingKey", "%%%"), "application/json", 400, "invalid_field"),
            ("short key", with("encryptionKey", .string(Base64URL.encode([1, 2, 3]))), "application/json", 400,
             "invalid_field"),
            ("unknown field", with("admin", true), "application/json", 400, "unknown_field"),
            ("bad signature", JSONWriter.encode(agent.registrationBody(signature: [UInt8](repeating: 0, count: 64))),
             "application/json", 400, "bad_signature"),
            ("signed other name", with("name", "mallory"), "application/json", 400, "bad_signature"),
            ("stale timestamp", JSONWriter.encode(agent.registrationBody(timestamp: now - 6 * 60 * 1000)),
             "application/json", 400, "stale_timestamp"),
            ("future timestamp", JSONWriter.encode(agent.registrationBody(timestamp: now + 6 * 60 * 1000)),
             "application/json", 400, "stale_timestamp"),
            ("form encoded", JSONWriter.encode(agent.registrationBody()), "application/x-www-form-urlencoded", 415,
             "unsupported_media_type"),
            ("oversize", Array(repeating: 0x20, count: 4096), "application/json", 413, "body_too_large"),
        ]
        for (label, body, contentType, status, code) in cases {
            let response = try TestAgent.post(port: fixture.port, body: body, contentType: contentType)
            #expect(response.status == status, "\(label)")
            #expect(try errorCode(response) == code, "\(label)")
        }
        #expect(try RedisProbe.keyCount(port: fixture.redis.port) == before)
        // The same agent, sent properly, still registers: nothing was half-done.
        #expect(try agent.register(port: fixture.port).status == 201)
    }

    @Test func corsAllowlist() throws {
        let fixture = try BrokerFixture(["--cors-origins", "https://viewer.example, https://other.example"])
        let allowed = try HTTPProbe.request(
            port: fixture.port, method: "OPTIONS", path: "/api/v1/agents/register",
            headers: [("Origin", "https://viewer.example"), ("Access-Control-Request-Method", "POST")])
        #expect(allowed.status == 204)
        #expect(allowed.headers["access-control-allow-origin"] == "https://viewer.example")
        #expect(allowed.headers["access-control-allow-methods"]?.contains("POST") == true)
        let refused = try HTTPProbe.request(
            port: fixture.port, method: "OPTIONS", path: "/api/v1/agents/register",
            headers: [("Origin", "https://evil.example"), ("Access-Control-Request-Method", "POST")])
        #expect(refused.status == 403)
        #expect(refused.headers["access-control-allow-origin"] == nil)
        let agent = TestAgent()
        let posted = try TestAgent.post(port: fixture.port, body: JSONWriter.encode(agent.registrationBody()),
                                        headers: [("Origin", "https://other.example")])
        #expect(posted.status == 201)
        #expect(posted.headers["access-control-allow-origin"] == "https://other.example")
        let foreign = try TestAgent.post(port: fixture.port, body: JSONWriter.encode(TestAgent().registrationBody()),
                                         headers: [("Origin", "https://evil.example")])
        #expect(foreign.headers["access-control-allow-origin"] == nil)
    }

    @Test func rateLimitHoldsAcrossBrokerProcesses() throws {
        let fixture = try BrokerFixture(["--register-rate", "2"])
        let second = try BrokerProcess(extraArguments: ["--redis-url", "redis://127.0.0.1:\(fixture.redis.port)",
                                                        "--register-rate", "2"])
        defer { second.stop() }
        #expect(try TestAgent().register(port: fixture.port).status == 201)
        #expect(try TestAgent().register(port: second.port).status == 201)
        let limited = try TestAgent().register(port: fixture.port)
        #expect(limited.status == 429)
        #expect(try errorCode(limited) == "rate_limited")
        let retryAfter = try #require(limited.headers["retry-after"].flatMap(Int.init))
        #expect((1...60).contains(retryAfter))
        #expect(try TestAgent().register(port: second.port).status == 429)
    }
}

@Suite(.serialized) struct LoginTests {
    @Test func challengeLoginGivesProfileAndToken() throws {
        let fixture = try BrokerFixture()
        let agent = TestAgent()
        #expect(try agent.register(port: fixture.port).status == 201)
        let (client, hello) = try fixture.connectReadingHello()
        let challenge = try #require(hello["challenge"]?.stringValue.flatMap(Base64URL.decode))
        #expect(challenge.count == 32)
        let welcome = try agent.login(client, hello: hello, id: "a1")
        #expect(welcome["type"] == "welcome")
        #expect(welcome["ref"] == "a1")
        #expect(welcome["agent"]?["did"]?.stringValue == agent.did.description)
        let token = try #require(welcome["token"]?.stringValue)
        #expect(token.split(separator: ".").count == 3)
        // Authenticated connections keep working, and a second login is refused.
        try client.send(text: #"{"type":"auth","id":"again","token":"\#(token)"}"#)
        #expect(try json(client.receiveText(timeout: 5))["code"] == "already_authenticated")
        // Nothing secret reaches the logs, even at debug level: not the token, not its signature, not the key.
        let signingSeed = try String(contentsOfFile: fixture.broker.dataDirectory + "/keys/"
            + (FileManager.default.contentsOfDirectory(atPath: fixture.broker.dataDirectory + "/keys").first ?? ""),
            encoding: .utf8)
        let seed = try #require(JSONParser.parse(signingSeed)["seed"]?.stringValue)
        // The log line may reach the pipe after the welcome reached us: wait for it, then read everything.
        _ = try fixture.broker.waitForOutput(containing: "agent authenticated", timeout: 20)
        let logs = fixture.broker.combinedOutput
        #expect(!logs.contains(token) && !logs.contains(String(token.split(separator: ".")[2])))
        #expect(!logs.contains(seed))
    }

    @Test func wrongSignaturesFailThreeTimesThenClose() throws {
        let fixture = try BrokerFixture()
        let agent = TestAgent()
        _ = try agent.register(port: fixture.port)
        var (client, hello) = try fixture.connectReadingHello()
        let impostor = TestAgent()
        for attempt in 1...3 {
            // The impostor signs the real challenge with its own key but claims the agent's DID.
            var frame = impostor.authFrame(hello: hello)
            if case .object(var fields) = frame {
                fields["did"] = .string(agent.did.description)
                frame = .object(fields)
            }
            try client.send(text: String(decoding: JSONWriter.encode(frame), as: UTF8.self))
            #expect(try json(client.receiveText(timeout: 5))["code"] == "auth_failed")
            if attempt < 3 {
                hello = try json(client.receiveText(timeout: 5))
                #expect(hello["type"] == "hello")
            }
        }
        guard case .close(let code, _) = try client.receive(timeout: 5) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 4001)
        // An unregistered agent cannot log in either.
        (client, hello) = try fixture.connectReadingHello()
        #expect(try TestAgent().login(client, hello: hello)["code"] == "auth_failed")
    }

    @Test func aChallengeIsSingleUseAndBoundToItsConnection() throws {
        let fixture = try BrokerFixture()
        let agent = TestAgent()
        _ = try agent.register(port: fixture.port)
        let (first, firstHello) = try fixture.connectReadingHello()
        let (second, _) = try fixture.connectReadingHello()
        // A signature over the first connection's challenge does not open the second.
        let replayed = agent.authFrame(hello: firstHello)
        try second.send(text: String(decoding: JSONWriter.encode(replayed), as: UTF8.self))
        #expect(try json(second.receiveText(timeout: 5))["code"] == "auth_failed")
        // On the first connection, a failed attempt uses the challenge up: the old signature no longer works.
        try first.send(text: #"{"type":"auth","token":"a.b.c"}"#)
        #expect(try json(first.receiveText(timeout: 5))["code"] == "token_invalid")
        let newHello = try json(first.receiveText(timeout: 5))
        #expect(newHello["challenge"] != firstHello["challenge"])
        try first.send(text: String(decoding: JSONWriter.encode(replayed), as: UTF8.self))
        #expect(try json(first.receiveText(timeout: 5))["code"] == "auth_failed")
        _ = try first.receiveText(timeout: 5)  // the next hello
        #expect(try agent.login(first, hello: newHello)["code"] == "auth_failed")  // that challenge is gone too
    }

    @Test func onlyLoginAndPingBeforeAuthentication() throws {
        let fixture = try BrokerFixture()
        let client = try fixture.connect()
        try client.send(text: #"{"type":"ping","id":"p"}"#)
        #expect(try json(client.receiveText(timeout: 5))["type"] == "pong")
        for index in 1...4 {
            try client.send(text: #"{"type":"channel.create","id":"\#(index)"}"#)
            let reply = try json(client.receiveText(timeout: 5))
            #expect(reply["code"] == "not_authenticated")
            #expect(reply["ref"] == .string("\(index)"))
        }
        try client.send(text: "{broken")
        #expect(try json(client.receiveText(timeout: 5))["code"] == "bad_json")
        guard case .close(let code, _) = try client.receive(timeout: 5) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 4001)
    }

    @Test func tokensReconnectAndEveryTamperingIsRefused() throws {
        let fixture = try BrokerFixture()
        let (agent, client) = try fixture.loggedIn()
        _ = client
        let (fresh, hello) = try fixture.connectReadingHello()
        let welcome = try agent.login(fresh, hello: hello)
        let token = try #require(welcome["token"]?.stringValue)
        // Reconnect with the token alone.
        let (reconnected, _) = try fixture.connectReadingHello()
        try reconnected.send(text: #"{"type":"auth","id":"t","token":"\#(token)"}"#)
        let again = try json(reconnected.receiveText(timeout: 5))
        #expect(again["type"] == "welcome")
        #expect(again["agent"]?["did"]?.stringValue == agent.did.description)

        // Forge tokens with the broker's own key, so only the claim under test is wrong.
        let store = try SigningKeyStore(directory: fixture.broker.dataDirectory + "/keys",
                                        now: Int64(Date().timeIntervalSince1970 * 1000))
        let signer = JWSSigner(key: store.active.keyPair)
        let now = Int64(Date().timeIntervalSince1970)
        let issuer = "http://127.0.0.1:\(fixture.port)"
        func claims(iss: String = issuer, aud: String = "agentchat.v1", sub: DID = agent.did, iat: Int64 = now,
                    nbf: Int64 = now, exp: Int64 = now + 600) -> JWS.Claims
        {
            JWS.Claims(issuer: iss, audience: [aud], subject: sub, issuedAt: iat, notBefore: nbf, expiresAt: exp,
                       tokenID: "t")
        }
        let good = signer.sign(claims())
        let parts = good.split(separator: ".").map(String.init)
        let otherKey = JWSSigner(key: SigningKeyPair())
        let noneHeader = Base64URL.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8))
        let jkuHeader = Base64URL.encode(Array(#"{"alg":"EdDSA","jku":"http://evil/keys","kid":"x","typ":"JWT"}"#.utf8))
        let flipped = Array(Base64URL.decode(parts[2])!.enumerated().map { $0.offset == 5 ? $0.element ^ 1 : $0.element })
        let forged: [(String, String)] = [
            ("expired", signer.sign(claims(iat: now - 1000, nbf: now - 1000, exp: now - 10))),
            ("not yet valid", signer.sign(claims(nbf: now + 600, exp: now + 1200))),
            ("wrong audience", signer.sign(claims(aud: "someone-else"))),
            ("wrong issuer", signer.sign(claims(iss: "http://evil.example"))),
            ("unregistered subject", signer.sign(claims(sub: TestAgent().did))),
            ("unknown key", otherKey.sign(claims())),
            ("alg none", noneHeader + "." + parts[1] + "."),
            ("jku header", jkuHeader + "." + parts[1] + "." + parts[2]),
            ("flipped signature bit", parts[0] + "." + parts[1] + "." + Base64URL.encode(flipped)),
            ("claims swapped", parts[0] + "." + Base64URL.encode(Array(#"{"sub":"x"}"#.utf8)) + "." + parts[2]),
            ("garbage", "not-a-token"),
        ]
        for (label, token) in forged {
            let (client, _) = try fixture.connectReadingHello()
            try client.send(text: #"{"type":"auth","token":"\#(token)"}"#)
            let reply = try json(client.receiveText(timeout: 5))
            #expect(reply["type"] == "error", "\(label)")
            #expect(["token_invalid", "auth_failed"].contains(reply["code"]?.stringValue ?? ""), "\(label)")
        }
        // The correctly forged one is accepted: the refusals above are about the one thing each changed.
        let (control, _) = try fixture.connectReadingHello()
        try control.send(text: #"{"type":"auth","token":"\#(good)"}"#)
        #expect(try json(control.receiveText(timeout: 5))["type"] == "welcome")
    }

    @Test func rotationKeepsLiveTokensAndBrokersShareKeys() throws {
        let redis = try RedisServer()
        defer { redis.stop() }
        let dataDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("agentchat-rotation-\(UUID().uuidString.prefix(6))").path
        defer { try? FileManager.default.removeItem(atPath: dataDirectory) }
        let common = ["--redis-url", "redis://127.0.0.1:\(redis.port)", "--issuer", "agentchat-test-cluster"]
        let agent = TestAgent()
        var first: BrokerProcess? = try BrokerProcess(extraArguments: common, dataDirectory: dataDirectory)
        #expect(try agent.register(port: first!.port).status == 201)
        let (client, hello) = try WebSocketClient.connect(port: first!.port, subprotocols: ["agentchat.v1"])
            .readingHello()
        let oldToken = try #require(agent.login(client, hello: hello)["token"]?.stringValue)
        first?.stop()
        first = nil

        // The same data directory, rotated: the old token still works, new tokens carry the new key id.
        let rotated = try BrokerProcess(extraArguments: common + ["--rotate-signing-key"],
                                        dataDirectory: dataDirectory)
        defer { rotated.stop() }
        let (again, _) = try WebSocketClient.connect(port: rotated.port, subprotocols: ["agentchat.v1"]).readingHello()
        try again.send(text: #"{"type":"auth","token":"\#(oldToken)"}"#)
        let welcome = try json(again.receiveText(timeout: 5))
        #expect(welcome["type"] == "welcome")
        let newToken = try #require(welcome["token"]?.stringValue)
        #expect(kid(newToken) != nil && kid(newToken) != kid(oldToken))

        // Another broker on the same Redis, with its own data directory and key, accepts both.
        let other = try BrokerProcess(extraArguments: common)
        defer { other.stop() }
        for token in [oldToken, newToken] {
            let (client, _) = try WebSocketClient.connect(port: other.port, subprotocols: ["agentchat.v1"])
                .readingHello()
            try client.send(text: #"{"type":"auth","token":"\#(token)"}"#)
            #expect(try json(client.receiveText(timeout: 5))["type"] == "welcome")
        }
    }

    private func kid(_ token: String) -> String? {
        token.split(separator: ".").first.flatMap { Base64URL.decode(String($0)) }
            .flatMap { try? JSONParser.parse($0) }?["kid"]?.stringValue
    }
}

extension WebSocketClient {
    func readingHello() throws -> (WebSocketClient, JSONValue) {
        (self, try JSONParser.parse(receiveText(timeout: 5)))
    }
}
