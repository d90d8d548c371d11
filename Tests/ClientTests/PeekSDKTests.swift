import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Synchronization
import Testing
import TestSupport
import WebSocketClient
@testable import AgentChatClient

/// A viewer: an unauthenticated WebSocket that asks for a peek, pays in the sandbox and follows it. Its X25519 key
/// pair is the page's.
final class PeekViewer: Sendable {
    let client: WebSocketClient
    let keys = EncryptionKeyPair()
    private let nextID = Mutex(0)

    init(port: Int) async throws {
        client = try await WebSocketClient.connect(port: port, subprotocols: [WireProtocol.subprotocol])
        _ = try await client.receiveText(timeout: 5)  // hello
    }

    func request(_ frame: JSONValue) async throws -> JSONValue {
        let id = nextID.withLock { value in
            value += 1
            return "v\(value)"
        }
        guard case .object(var fields) = frame else { throw TimedOut(description: "not an object") }
        fields["id"] = .string(id)
        try client.send(text: String(decoding: JSONWriter.encode(.object(fields)), as: UTF8.self))
        while true {
            let reply = try JSONParser.parse(try await client.receiveText(timeout: 10))
            if reply["ref"]?.stringValue == id { return reply }
        }
    }

    /// `peek.request` then `peek.confirm` (the sandbox authorises at once): the peek id and its view after paying.
    func requestAndPay(_ channel: ChannelID) async throws -> (peek: String, view: JSONValue) {
        let requested = try await request(["type": "peek.request", "channel": .string(channel.rawValue),
                                           "viewerKey": .string(Base64URL.encode(keys.publicKey))])
        let peek = try #require(requested["peek"]?["id"]?.stringValue, "\(requested)")
        let token = try #require(requested["peek"]?["token"]?.stringValue)
        let confirmed = try await request(["type": "peek.confirm", "channel": .string(channel.rawValue),
                                           "peek": .string(peek), "token": .string(token)])
        return (peek, try #require(confirmed["peek"], "\(confirmed)"))
    }

    /// The frames received until a `peek` frame in `phase` (that one included).
    func until(_ phase: String, timeout: Double = 20) async throws -> (peek: JSONValue, frames: [JSONValue]) {
        let deadline = Date().addingTimeInterval(timeout)
        var frames: [JSONValue] = []
        while Date() < deadline {
            let frame = try JSONParser.parse(try await client.receiveText(timeout: max(0.1, deadline.timeIntervalSinceNow)))
            frames.append(frame)
            guard frame["type"] == "peek", let seen = frame["peek"]?["phase"]?.stringValue else { continue }
            if seen == phase { return (frame["peek"]!, frames) }
            if ["refused", "ended", "cancelled", "failed"].contains(seen) {
                throw TimedOut(description: "the peek ended \(seen), not \(phase): \(frame)")
            }
        }
        throw TimedOut(description: "no peek frame in phase \(phase); got \(frames)")
    }
}

/// Values appended from any thread.
final class Recorder<Value: Sendable>: Sendable {
    private let storage = Mutex<[Value]>([])
    func append(_ value: Value) { storage.withLock { $0.append(value) } }
    var values: [Value] { storage.withLock { $0 } }
}

/// The SDK's peek handling against real brokers (two, on one real Redis) with the sandbox gateway and short
/// windows; the viewer is on the other broker than the agents.
@Suite(.serialized) struct PeekSDKTests {
    static let windows = ["--peek-refusal-window", "1", "--peek-grant-window", "3", "--peek-duration", "2"]
    /// For tests that refuse: the SDK refuses at once, but a loaded machine (the whole suite runs in parallel on two
    /// cores) may take more than a second to carry the notice from broker to broker to the SDK and back.
    static let refusable = windows + ["--peek-refusal-window", "15"]

    /// A registered agent on `broker` with `configuration` (fast reconnection; the peek policy as given).
    private func agent(_ cluster: ChannelCluster, _ name: String, on broker: Int = 0,
                       policy: PeekPolicy? = nil, connect: Bool = true) async throws -> AgentChatClient
    {
        var configuration = testConfiguration()
        if let policy { configuration.peekPolicy = policy }
        let client = try AgentChatClient(identity: .generate(name: name), server: cluster.url(broker),
                                         configuration: configuration)
        _ = try await client.register(name: name)
        if connect { try await client.connect() }
        return client
    }

    private func listedChannel(_ owner: AgentChatClient, members: [DID] = []) async throws -> ChannelID {
        let channel = try await owner.createChannel(name: "peekable", members: members)
        try await owner.setListing(channel: channel.id, listed: true, title: "Peekable", topic: "tests")
        return channel.id
    }

    @Test func policyRefuseRefusesAtOnceAndTheAgentEarnsItsShare() async throws {
        let cluster = try await ChannelCluster(brokers: 2, extraArguments: Self.refusable)
        defer { cluster.stop() }
        let alice = try await agent(cluster, "alice", policy: .refuse)
        #expect(await alice.defaultPeekPolicy == .refuse)
        let events = Collector(alice.peekEvents())
        let views = Collector(alice.peeks())
        defer { events.cancel(); views.cancel() }
        let channel = try await listedChannel(alice)
        let viewer = try await PeekViewer(port: cluster.brokers[1].port)
        let (peek, paid) = try await viewer.requestAndPay(channel)
        #expect(paid["phase"] == "pending")
        let (refused, _) = try await viewer.until("refused")
        #expect(refused["capturedCents"] == 100)
        try await waitUntil("the refusal event") { events.values.contains(.refused(channel: channel, peek: peek)) }
        #expect(!events.values.contains { if case .granted = $0 { true } else { false } })
        try await waitUntil("the refused update") { views.values.contains { $0.phase == "refused" } }
        #expect(views.values.first?.phase == "pending" && views.values.first?.id == peek)
        #expect(views.values.allSatisfy { $0.channel == channel && $0.viewerKey == viewer.keys.publicKey })
        // 100 cents: 30 to the platform, 70 to the only member.
        let earnings = try await alice.earnings(limit: 10)
        #expect(earnings.balanceCents == 70)
        #expect(earnings.entries.map(\.peek) == [peek] && earnings.entries.first?.cents == 70)
        #expect(earnings.entries.first?.channel == channel)
        await #expect(throws: AgentChatError.self) { try await alice.earnings(limit: 0) }
        // Too late to refuse again.
        let late = await #expect(throws: AgentChatError.self) { try await alice.refusePeek(channel: channel, peek: peek) }
        #expect(late?.code == "peek_not_refusable")
        await alice.close()
    }

    @Test func policyGrantWrapsTheChannelKeyAndRotatesAfterTheEnd() async throws {
        let cluster = try await ChannelCluster(brokers: 2, extraArguments: Self.windows)
        defer { cluster.stop() }
        // Two members, on both brokers, both granting (the default): one grant is taken, one rotation follows.
        let alice = try await agent(cluster, "alice", on: 0)
        let bob = try await agent(cluster, "bob", on: 1)
        #expect(await alice.defaultPeekPolicy == .grant)
        let aliceEvents = Collector(alice.peekEvents())
        let bobEvents = Collector(bob.peekEvents())
        defer { aliceEvents.cancel(); bobEvents.cancel() }
        let channel = try await listedChannel(alice, members: [bob.identity.did])
        let before = try await alice.send(channel: channel, text: "before the peek")

        let viewer = try await PeekViewer(port: cluster.brokers[1].port)
        let (peek, _) = try await viewer.requestAndPay(channel)
        let (active, frames) = try await viewer.until("active")
        #expect(active["capturedCents"] == 500)
        let grant = try #require(active["grant"].flatMap(PeekGrant.init(json:)), "\(active)")
        #expect([alice.identity.did, bob.identity.did].contains(grant.sender))
        #expect(grant.epoch == before.epoch)
        // The viewer opens the grant with its secret key: exactly the channel key both agents hold.
        let unwrapped = try PeekKeyWrap.unwrap(grant, channel: channel, peek: peek, viewerSecretKey: viewer.keys.secretKey)
        #expect(unwrapped == (try await alice.epochKey(channel, epoch: grant.epoch)))
        #expect(unwrapped == (try await bob.epochKey(channel, epoch: grant.epoch)))
        try await waitUntil("a granted event") {
            (aliceEvents.values + bobEvents.values).contains(.granted(channel: channel, peek: peek, epoch: grant.epoch))
        }

        // The viewer reads the history with that key: the message sent before the peek opens.
        let (_, during) = try await viewer.until("ended")
        let items = (frames + during).filter { $0["type"] == "messages" }.flatMap { $0["messages"]?.arrayValue ?? [] }
        let first = try #require(items.first { $0["offset"]?.integerValue == before.offset }, "\(frames + during)")
        let messageID = try #require(first["id"]?.stringValue)
        let opened = try AES256GCM.open(
            try #require(first["ciphertext"]?.stringValue.flatMap(Base64URL.decode)), key: unwrapped,
            nonce: try #require(first["nonce"]?.stringValue.flatMap(Base64URL.decode)),
            associatedData: MessageSend.associatedData(channel: channel, epoch: grant.epoch,
                                                       sender: alice.identity.did, clientMessageID: messageID))
        #expect(String(decoding: opened, as: UTF8.self) == "before the peek")

        // After the end the channel is on a newer epoch, keyed, and stays there: the members' SDKs converge.
        try await waitUntil("a rotation", timeout: 15) {
            (aliceEvents.values + bobEvents.values).contains { if case .rotated = $0 { true } else { false } }
        }
        try await Task.sleep(for: .seconds(2.5))  // longer than the others' jitter
        let settled = try await alice.describe(channel: channel)
        #expect(settled.epoch > grant.epoch && settled.keyedEpoch == settled.epoch, "\(settled)")
        let rotations = (aliceEvents.values + bobEvents.values).filter { if case .rotated = $0 { true } else { false } }
        #expect(rotations.count <= 2, "\(rotations)")
        try await Task.sleep(for: .seconds(1))
        #expect(try await bob.describe(channel: channel).epoch == settled.epoch)
        // The old key opens nothing sent now.
        let after = try await bob.send(channel: channel, text: "after the peek")
        #expect(after.epoch > grant.epoch)
        #expect(try await alice.epochKey(channel, epoch: after.epoch) != unwrapped)
        #expect(!(aliceEvents.values + bobEvents.values).contains { if case .failed = $0 { true } else { false } },
                "\(aliceEvents.values + bobEvents.values)")
        // 500 cents: 350 between the two members.
        #expect(try await alice.earnings().balanceCents == 175)
        #expect(try await bob.earnings().balanceCents == 175)
        await alice.close()
        await bob.close()
    }

    @Test func askLetsTheApplicationRefuseAndNoAnswerGrants() async throws {
        // The decider has until shortly before the refusal window closes; the silent one is then granted. Windows
        // long enough for a loaded machine (the whole suite in parallel on two cores) to carry the notice from broker
        // to broker to the SDK and the answer back: with 3 s, a refusal once arrived too late, and a grant once too.
        let cluster = try await ChannelCluster(brokers: 2, extraArguments: Self.windows
                                                   + ["--peek-refusal-window", "8", "--peek-grant-window", "15"])
        defer { cluster.stop() }
        let alice = try await agent(cluster, "alice")
        let refusing = try await listedChannel(alice)
        let silent = try await listedChannel(alice)
        // Only these two channels ask; the default stays grant.
        await alice.setPeekPolicy(.ask, for: refusing)
        await alice.setPeekPolicy(.ask, for: silent)
        #expect(await alice.peekPolicy(for: refusing) == .ask)
        #expect(await alice.defaultPeekPolicy == .grant)
        let asked = Recorder<PeekView>()
        await alice.setPeekDecider { view in
            asked.append(view)
            if view.channel == refusing {
                try? await Task.sleep(for: .milliseconds(100))
                return .refuse
            }
            try? await Task.sleep(for: .seconds(30))  // never in time: counts as grant
            return .refuse
        }
        let events = Collector(alice.peekEvents())
        defer { events.cancel() }

        let viewer = try await PeekViewer(port: cluster.brokers[1].port)
        let (refusedPeek, _) = try await viewer.requestAndPay(refusing)
        let (refused, _) = try await viewer.until("refused")
        #expect(refused["capturedCents"] == 100)
        #expect(asked.values.map(\.id) == [refusedPeek] && asked.values.first?.phase == "pending")
        #expect(events.values.contains(.refused(channel: refusing, peek: refusedPeek)))

        let second = try await PeekViewer(port: cluster.brokers[1].port)
        let (grantedPeek, _) = try await second.requestAndPay(silent)
        let (active, _) = try await second.until("active")
        let grant = try #require(active["grant"].flatMap(PeekGrant.init(json:)))
        #expect(try PeekKeyWrap.unwrap(grant, channel: silent, peek: grantedPeek,
                                       viewerSecretKey: second.keys.secretKey)
            == (try await alice.epochKey(silent, epoch: grant.epoch)))
        #expect(asked.values.map(\.id) == [refusedPeek, grantedPeek])
        await alice.close()
    }

    @Test func aMemberLoggingInDuringTheRefusalWindowIsToldAndRefuses() async throws {
        let cluster = try await ChannelCluster(brokers: 2,
                                               extraArguments: Self.refusable)
        defer { cluster.stop() }
        let alice = try await agent(cluster, "alice", on: 0)
        let bob = try await agent(cluster, "bob", on: 1, policy: .refuse, connect: false)
        let channel = try await listedChannel(alice, members: [bob.identity.did])
        let viewer = try await PeekViewer(port: cluster.brokers[0].port)
        let (peek, paid) = try await viewer.requestAndPay(channel)
        #expect(paid["phase"] == "pending")
        // Bob logs in now: the broker sends him the pending peek, and his SDK refuses it.
        let views = Collector(bob.peeks())
        defer { views.cancel() }
        try await bob.connect()
        let (refused, _) = try await viewer.until("refused")
        #expect(refused["capturedCents"] == 100)
        #expect(views.values.first?.id == peek && views.values.first?.phase == "pending")
        #expect(try await bob.earnings().entries.map(\.cents) == [35])
        await alice.close()
        await bob.close()
    }
}
