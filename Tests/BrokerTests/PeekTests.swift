import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// Paid peeks end to end over real sockets and a real Redis, two brokers, the sandbox gateway (no Stripe key):
/// the viewer on one broker, the channel's agents on the other.
@Suite(.serialized) struct PeekTests {
    static let windows = ["--peek-refusal-window", "1", "--peek-grant-window", "1.5", "--peek-duration", "2"]

    private func listedChannel(_ owner: RawSession, members: [DID] = []) throws -> String {
        let id = try #require(owner.createChannel(members: members)["id"]?.stringValue)
        try owner.publishKeys(id)
        let listed = try owner.request(["type": "channel.listing", "channel": .string(id), "listed": true,
                                        "title": "peekable", "topic": "t"])
        #expect(listed["type"] == "ok")
        return id
    }

    /// Requests a peek and confirms it in the sandbox; answers the peek view after the confirmation.
    private func requestAndPay(_ viewer: ViewerSession, channel: String, viewerKey: [UInt8]) throws
        -> (peek: String, token: String, view: JSONValue)
    {
        let requested = try viewer.request(["type": "peek.request", "channel": .string(channel),
                                            "viewerKey": .string(Base64URL.encode(viewerKey))])
        #expect(requested["type"] == "peek", "\(requested)")
        let view = try #require(requested["peek"])
        #expect(view["phase"] == "awaiting_payment" && view["sandbox"] == true && view["priceCents"] == 500)
        let peek = try #require(view["id"]?.stringValue)
        let token = try #require(view["token"]?.stringValue)
        #expect(view["clientSecret"]?.stringValue?.isEmpty == false)
        let confirmed = try viewer.request(["type": "peek.confirm", "channel": .string(channel),
                                            "peek": .string(peek), "token": .string(token)])
        return (peek, token, try #require(confirmed["peek"]))
    }

    /// The next `peek` frame of the viewer whose phase is `phase`.
    private func viewerSees(_ viewer: ViewerSession, _ phase: String, timeout: Double = 15) throws -> JSONValue {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let frame = try JSONParser.parse(viewer.client.receiveText(timeout: max(0.1, deadline.timeIntervalSinceNow)))
            if frame["type"] == "peek", frame["peek"]?["phase"]?.stringValue == phase { return frame["peek"]! }
        }
        throw FixtureError.timeout("no peek frame in phase \(phase)")
    }

    /// The next `peek.update` of the member in `phase` (of `peek`, when given).
    private func memberSees(_ member: RawSession, _ phase: String, peek: String? = nil) throws -> JSONValue {
        while true {
            let frame = try member.next("peek.update", timeout: 15)
            if frame["peek"]?["phase"]?.stringValue == phase, peek == nil || frame["peek"]?["id"]?.stringValue == peek {
                return frame["peek"]!
            }
        }
    }

    @Test func aRefusedPeekCapturesTheFeeAndSharesIt() throws {
        let cluster = try ClusterFixture(Self.windows + ["--peek-refusal-window", "30"])
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let bob = try RawSession(agent: TestAgent(name: "bob"), port: cluster.first.port)
        let channel = try listedChannel(alice, members: [bob.did])
        let viewer = try ViewerSession(port: cluster.second.port)
        let (peek, _, view) = try requestAndPay(viewer, channel: channel, viewerKey: SecureRandom.bytes(32))
        #expect(view["phase"] == "pending", "the sandbox authorises at once: \(view)")
        // Both members are told on the other broker, with the deadline and the viewer's key.
        let pending = try memberSees(bob, "pending")
        #expect(pending["id"]?.stringValue == peek && pending["deadline"]?.integerValue != nil)
        #expect(pending["token"] == nil && pending["clientSecret"] == nil, "viewer-only fields stay with the viewer")
        _ = try memberSees(alice, "pending")
        // A non-member cannot refuse; a member can, once.
        let carol = try RawSession(agent: TestAgent(name: "carol"), port: cluster.first.port)
        let stranger = try carol.request(["type": "peek.refuse", "channel": .string(channel), "peek": .string(peek)])
        #expect(stranger["code"] == "not_found")
        let refused = try bob.request(["type": "peek.refuse", "channel": .string(channel), "peek": .string(peek)])
        #expect(refused["type"] == "ok", "\(refused)")
        let outcome = try viewerSees(viewer, "refused")
        #expect(outcome["capturedCents"] == 100)
        let again = try alice.request(["type": "peek.refuse", "channel": .string(channel), "peek": .string(peek)])
        #expect(again["code"] == "peek_not_refusable")
        // 100 cents: 30 to the platform, 70 between the two members (35 each).
        let earnings = try bob.request(["type": "earnings", "limit": 10])
        #expect(earnings["type"] == "earnings" && earnings["balanceCents"] == 35, "\(earnings)")
        #expect(earnings["entries"]?.arrayValue?.first?["peek"]?.stringValue == peek)
        // The operator's export: a capture of 100, the release of 400, shares 30 + 35 + 35.
        let export = try Process.run(BrokerProcess.locateExecutable(),
                                     ["ledger", "--redis-url", "redis://127.0.0.1:\(cluster.redis.port)"])
        let lines = try export.split(separator: "\n").map { try JSONParser.parse(Array($0.utf8)) }
        let byKind = Dictionary(grouping: lines) { $0["kind"]?.stringValue ?? "" }
        #expect(byKind["capture"]?.compactMap { $0["cents"]?.integerValue } == [100])
        #expect(byKind["release"]?.compactMap { $0["cents"]?.integerValue } == [400])
        #expect(byKind["share"]?.compactMap { $0["cents"]?.integerValue }.sorted() == [30, 35, 35])
        #expect(Set(byKind["share"]?.compactMap { $0["party"]?.stringValue } ?? [])
            == ["platform", alice.did.description, bob.did.description])
    }

    @Test func withoutARefusalOrAGrantNothingIsCharged() throws {
        let cluster = try ClusterFixture(Self.windows)
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let channel = try listedChannel(alice)
        let viewer = try ViewerSession(port: cluster.second.port)
        let (_, _, view) = try requestAndPay(viewer, channel: channel, viewerKey: SecureRandom.bytes(32))
        #expect(view["phase"] == "pending")
        _ = try memberSees(alice, "awaiting_grant")
        let cancelled = try viewerSees(viewer, "cancelled")
        #expect(cancelled["capturedCents"] == 0 && cancelled["reason"] == "no grant")
        let earnings = try alice.request(["type": "earnings"])
        #expect(earnings["balanceCents"] == 0)
    }

    @Test func aGrantedPeekIsPaidAndReadsTheChannelUntilItEnds() throws {
        let cluster = try ClusterFixture(Self.windows + ["--peek-grant-window", "30"])
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let channel = try listedChannel(alice)
        let epoch = try #require(alice.describe(channel)["channel"]?["epoch"]?.integerValue)
        _ = try alice.send(channel, epoch: epoch)
        let viewerKey = SecureRandom.bytes(32)
        let viewer = try ViewerSession(port: cluster.second.port)
        let (peek, token, _) = try requestAndPay(viewer, channel: channel, viewerKey: viewerKey)
        _ = try memberSees(alice, "awaiting_grant")
        // A grant signed for another viewer key is refused; the right one is taken.
        let grant = { (key: [UInt8]) -> JSONValue in
            let ephemeral = SecureRandom.bytes(32), nonce = SecureRandom.bytes(12), ciphertext = SecureRandom.bytes(48)
            let signed = PeekGrant.signedBytes(channel: ChannelID(channel)!, peek: peek, viewerKey: key, epoch: epoch,
                                               ephemeralKey: ephemeral, nonce: nonce, ciphertext: ciphertext)
            return PeekGrant(epoch: epoch, sender: alice.did, ephemeralKey: ephemeral, nonce: nonce,
                             ciphertext: ciphertext, signature: alice.agent.signing.sign(signed)).json
        }
        let wrong = try alice.request(["type": "peek.grant", "channel": .string(channel), "peek": .string(peek),
                                       "grant": grant(SecureRandom.bytes(32))])
        #expect(wrong["code"] == "invalid_field")
        let granted = try alice.request(["type": "peek.grant", "channel": .string(channel), "peek": .string(peek),
                                         "grant": grant(viewerKey)])
        #expect(granted["type"] == "ok", "\(granted)")
        let active = try viewerSees(viewer, "active")
        #expect(active["capturedCents"] == 500 && active["grant"]?["sender"]?.stringValue == alice.did.description)
        // The viewer reads the recent history and what is sent while the peek is active.
        var offsets: [Int64] = []
        let deadline = Date().addingTimeInterval(10)
        _ = try alice.send(channel, epoch: epoch)
        while offsets.count < 2, Date() < deadline {
            let frame = try JSONParser.parse(viewer.client.receiveText(timeout: 5))
            if frame["type"] == "messages" {
                offsets += (frame["messages"]?.arrayValue ?? []).compactMap { $0["offset"]?.integerValue }
            }
        }
        #expect(offsets == [1, 2])
        _ = try viewerSees(viewer, "ended")
        // After a reconnect the viewer can still ask how it went.
        let later = try ViewerSession(port: cluster.first.port)
        let status = try later.request(["type": "peek.status", "channel": .string(channel), "peek": .string(peek),
                                        "token": .string(token)])
        #expect(status["peek"]?["phase"] == "ended")
        let wrongToken = try later.request(["type": "peek.status", "channel": .string(channel),
                                            "peek": .string(peek), "token": "nope"])
        #expect(wrongToken["code"] == "not_found")
        // 500 cents, one member: 350 to Alice.
        let earnings = try alice.request(["type": "earnings"])
        #expect(earnings["balanceCents"] == 350)
    }

    /// The broker that holds a peek's viewer, its timers and its capture is killed with SIGKILL, during the refusal
    /// window and just after the grant (while capturing); the other broker finishes every peek, each with exactly
    /// one outcome, and the ledger balances.
    @Test func killingTheBrokerOfAPeekLeavesItToTheOther() throws {
        var first: BrokerProcess?
        let redis = try RedisServer()
        defer { redis.stop() }
        let common = ["--redis-url", "redis://127.0.0.1:\(redis.port)", "--issuer", "agentchat-test",
                      "--peek-refusal-window", "1", "--peek-grant-window", "30", "--peek-duration", "1"]
        let second = try BrokerProcess(extraArguments: common)
        defer { second.stop() }
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: second.port)
        let channel = try listedChannel(alice)
        let epoch = try #require(alice.describe(channel)["channel"]?["epoch"]?.integerValue)
        var peeks: [(id: String, token: String)] = []
        for round in 0..<4 {
            first = try BrokerProcess(extraArguments: common)
            let viewer = try ViewerSession(port: first!.port)
            let viewerKey = SecureRandom.bytes(32)
            let (peek, token, _) = try requestAndPay(viewer, channel: channel, viewerKey: viewerKey)
            peeks.append((peek, token))
            if round % 2 == 0 {
                // Killed during the refusal window: its claim on nothing is lost; the other broker's sweep moves on.
                first!.kill()
                _ = try memberSees(alice, "awaiting_grant", peek: peek)
                try grant(alice, channel: channel, peek: peek, epoch: epoch, viewerKey: viewerKey)
            } else {
                // Killed while capturing: the grant goes to the broker that is then killed.
                let member = try RawSession(agent: alice.agent, port: first!.port, register: false)
                _ = try memberSees(member, "awaiting_grant", peek: peek)
                try grant(member, channel: channel, peek: peek, epoch: epoch, viewerKey: viewerKey)
                first!.kill()
            }
            first!.stop()
        }
        // Every peek ends (`ended` after its second), granted and captured once.
        let viewer = try ViewerSession(port: second.port)
        for (peek, token) in peeks {
            var phase = ""
            let deadline = Date().addingTimeInterval(60)
            while phase != "ended", Date() < deadline {
                let status = try viewer.request(["type": "peek.status", "channel": .string(channel),
                                                 "peek": .string(peek), "token": .string(token)])
                phase = status["peek"]?["phase"]?.stringValue ?? ""
                if phase != "ended" { Thread.sleep(forTimeInterval: 0.3) }
            }
            #expect(phase == "ended", "\(peek)")
        }
        let export = try Process.run(BrokerProcess.locateExecutable(),
                                     ["ledger", "--redis-url", "redis://127.0.0.1:\(redis.port)"])
        let lines = try export.split(separator: "\n").map { try JSONParser.parse(Array($0.utf8)) }
        let captures = lines.filter { $0["kind"] == "capture" }
        #expect(captures.count == peeks.count && Set(captures.compactMap { $0["peek"]?.stringValue }).count == peeks.count)
        #expect(captures.allSatisfy { $0["cents"] == 500 })
        let shares = lines.filter { $0["kind"] == "share" }.compactMap { $0["cents"]?.integerValue }.reduce(0, +)
        #expect(shares == 500 * Int64(peeks.count))
    }

    private func grant(_ member: RawSession, channel: String, peek: String, epoch: Int64, viewerKey: [UInt8]) throws {
        let ephemeral = SecureRandom.bytes(32), nonce = SecureRandom.bytes(12), ciphertext = SecureRandom.bytes(48)
        let signed = PeekGrant.signedBytes(channel: ChannelID(channel)!, peek: peek, viewerKey: viewerKey, epoch: epoch,
                                           ephemeralKey: ephemeral, nonce: nonce, ciphertext: ciphertext)
        let grant = PeekGrant(epoch: epoch, sender: member.did, ephemeralKey: ephemeral, nonce: nonce,
                              ciphertext: ciphertext, signature: member.agent.signing.sign(signed)).json
        let answer = try member.request(["type": "peek.grant", "channel": .string(channel), "peek": .string(peek),
                                         "grant": grant])
        if answer["type"] != "ok" { Issue.record("grant refused: \(answer)") }
    }

    /// The whole flow against localstripe (a stateful fake of Stripe) through the broker's Stripe client: the
    /// PaymentIntent is created by the broker, confirmed as the page would (a test card), found authorised when the
    /// viewer says it confirmed (localstripe sends no `amount_capturable_updated`), refused, and 100 cents captured.
    @Test func aRefusalCapturesTheFeeOnStripe() throws {
        let stripe = try LocalStripe()
        defer { stripe.stop() }
        let port = try #require(URL(string: stripe.baseURL)?.port)
        let cluster = try ClusterFixture(Self.windows + [
            "--peek-refusal-window", "30", "--stripe-secret-key", "sk_test_peeks", "--stripe-webhook-secret",
            "whsec_test_peeks", "--stripe-api-base", stripe.baseURL,
        ])
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let channel = try listedChannel(alice)
        let viewer = try ViewerSession(port: cluster.second.port)
        let requested = try viewer.request(["type": "peek.request", "channel": .string(channel),
                                            "viewerKey": .string(Base64URL.encode(SecureRandom.bytes(32)))])
        let view = try #require(requested["peek"], "\(requested)")
        #expect(view["sandbox"] == false && view["phase"] == "awaiting_payment")
        let secret = try #require(view["clientSecret"]?.stringValue)
        let intent = try #require(secret.components(separatedBy: "_secret_").first)
        // What Stripe.js does on the page.
        let auth = ("Authorization", "Bearer sk_test_peeks")
        let form = ("Content-Type", "application/x-www-form-urlencoded")
        let method = try HTTPProbe.request(port: port, method: "POST", path: "/v1/payment_methods", headers: [auth, form],
                                           body: Array("type=card&card[number]=4242424242424242&card[exp_month]=12&card[exp_year]=2034&card[cvc]=123".utf8))
        let pm = try #require(JSONParser.parse(method.body)["id"]?.stringValue, "\(method)")
        _ = try HTTPProbe.request(port: port, method: "POST", path: "/v1/payment_intents/\(intent)", headers: [auth, form],
                                  body: Array("payment_method=\(pm)".utf8))
        let confirmedAtStripe = try HTTPProbe.request(port: port, method: "POST",
                                                      path: "/v1/payment_intents/\(intent)/confirm", headers: [auth])
        #expect(try JSONParser.parse(confirmedAtStripe.body)["status"] == "requires_capture")
        let confirmed = try viewer.request(["type": "peek.confirm", "channel": .string(channel),
                                            "peek": view["id"]!, "token": view["token"]!])
        #expect(confirmed["peek"]?["phase"] == "pending", "\(confirmed)")
        _ = try memberSees(alice, "pending")
        let refused = try alice.request(["type": "peek.refuse", "channel": .string(channel), "peek": view["id"]!])
        #expect(refused["type"] == "ok")
        let outcome = try viewerSees(viewer, "refused")
        #expect(outcome["capturedCents"] == 100)
        let atStripe = try JSONParser.parse(HTTPProbe.request(port: port, path: "/v1/payment_intents/\(intent)",
                                                              headers: [auth]).body)
        #expect(atStripe["status"] == "succeeded")
        // A webhook with a bad signature changes nothing; a signed one for an unknown intent is acknowledged.
        let body = Array(#"{"id":"evt_1","type":"payment_intent.canceled","data":{"object":{"id":"pi_x","metadata":{}}}}"#.utf8)
        let bad = try HTTPProbe.request(port: cluster.first.port, method: "POST",
                                        path: "/api/v1/payments/stripe/webhook",
                                        headers: [("Stripe-Signature", "t=1,v1=00"), ("Content-Type", "application/json")],
                                        body: body)
        #expect(bad.status == 400)
        let now = Int64(Date().timeIntervalSince1970)
        let signed = try HTTPProbe.request(port: cluster.first.port, method: "POST",
                                           path: "/api/v1/payments/stripe/webhook",
                                           headers: [("Stripe-Signature",
                                                      StripeTestSignature.header(body, now, "whsec_test_peeks")),
                                                     ("Content-Type", "application/json")], body: body)
        #expect(signed.status == 200)
        // An event of this peek, delivered twice: applied once (the peek is final; nothing changes), the repeat
        // recognised by its id.
        let peekID = try #require(view["id"]?.stringValue)
        let event = Array(#"{"id":"evt_peek_1","type":"payment_intent.succeeded","data":{"object":{"id":"\#(intent)","amount_received":100,"status":"succeeded","metadata":{"peek":"\#(peekID)","channel":"\#(channel)"}}}}"#.utf8)
        var answers: [String] = []
        for _ in 0..<2 {
            let delivered = try HTTPProbe.request(
                port: cluster.second.port, method: "POST", path: "/api/v1/payments/stripe/webhook",
                headers: [("Stripe-Signature", StripeTestSignature.header(event, now, "whsec_test_peeks")),
                          ("Content-Type", "application/json")], body: event)
            #expect(delivered.status == 200)
            answers.append(String(decoding: delivered.body, as: UTF8.self))
        }
        #expect(!answers[0].contains("duplicate") && answers[1].contains("\"duplicate\":true"), "\(answers)")
        let earnings = try alice.request(["type": "earnings"])
        #expect(earnings["balanceCents"] == 70, "captured once: \(earnings)")
    }

    /// The page may load Stripe.js (the Payment Element) only when the broker takes real payments.
    @Test func thePageAllowsStripeOnlyWithStripeKeys() throws {
        let sandbox = try BrokerFixture()
        let strict = try #require(sandbox.get("/").headers["content-security-policy"])
        #expect(strict.contains("script-src 'self';") && !strict.contains("stripe.com"))
        let stripe = try BrokerFixture(["--stripe-secret-key", "sk_test_x", "--stripe-webhook-secret", "whsec_x",
                                        "--stripe-publishable-key", "pk_test_x",
                                        "--stripe-api-base", "http://127.0.0.1:9"])
        let open = try #require(stripe.get("/").headers["content-security-policy"])
        #expect(open.contains("script-src 'self' https://js.stripe.com;") && open.contains("frame-ancestors 'none'"))
    }

    @Test func peeksNeedAListedChannelAndAKey() throws {
        let fixture = try BrokerFixture()
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: fixture.port)
        let unlisted = try #require(alice.createChannel()["id"]?.stringValue)
        let viewer = try ViewerSession(port: fixture.port)
        let refused = try viewer.request(["type": "peek.request", "channel": .string(unlisted),
                                          "viewerKey": .string(Base64URL.encode(SecureRandom.bytes(32)))])
        #expect(refused["code"] == "not_found")
        let badKey = try viewer.request(["type": "peek.request", "channel": .string(unlisted), "viewerKey": "abc"])
        #expect(badKey["code"] == "invalid_field")
        let notLoggedIn = try viewer.request(["type": "peek.refuse", "channel": .string(unlisted),
                                              "peek": .string("pk_" + Base64URL.encode(SecureRandom.bytes(16)))])
        #expect(notLoggedIn["code"] == "not_authenticated")
    }
}

extension Process {
    /// Runs `executable` to its end and returns its standard output (throws on a non-zero exit).
    static func run(_ executable: String, _ arguments: [String]) throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { throw FixtureError.unexpected("\(executable) exited \(process.terminationStatus)") }
        return String(decoding: data, as: UTF8.self)
    }
}

/// Stripe's signature, computed here independently of the broker's verifier.
enum StripeTestSignature {
    static func header(_ body: [UInt8], _ time: Int64, _ secret: String) -> String {
        let mac = HMACSHA256.authenticate(Array("\(time).".utf8) + body, key: Array(secret.utf8))
        return "t=\(time),v1=" + mac.map { String(format: "%02x", $0) }.joined()
    }
}
