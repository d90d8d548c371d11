import AgentChatCrypto
import AgentChatProtocol
import CoreTestSupport
import Testing

@testable import AgentChatCore

/// The peek service on the in-memory twins and the manual clock: two brokers on the same stores, the sandbox
/// gateway, many peeks with random refusals, grants, duplicate webhooks and expiries.
@Suite struct PeekServiceTests {
    static func configuration() -> FrameRouter.Configuration {
        var configuration = FrameRouter.Configuration()
        configuration.peekTerms.paymentWindowMilliseconds = 5_000
        configuration.peekTerms.refusalWindowMilliseconds = 1_000
        configuration.peekTerms.grantWindowMilliseconds = 2_000
        configuration.peekTerms.durationMilliseconds = 3_000
        return configuration
    }

    /// A listed channel of Alice and Bob, both logged in on the harness's broker.
    struct World {
        let harness: CoreHarness
        let second: FrameRouter
        let alice: TestAgent
        let bob: TestAgent
        let aliceConnection: RecordingConnection
        let bobConnection: RecordingConnection
        let channel: ChannelID
        var nextConnection: UInt64 = 10_000
        /// Every webhook the sandbox delivered, to deliver again.
        let webhooks: WebhookLog

        init() {
            harness = CoreHarness(configuration: PeekServiceTests.configuration())
            second = harness.secondBroker()
            alice = harness.makeAgent("alice")
            bob = harness.makeAgent("bob")
            aliceConnection = harness.login(alice).connection
            bobConnection = harness.login(bob).connection
            channel = harness.createChannel(owner: alice, on: aliceConnection, members: [bob])
            let listed = harness.request(.channel(id: "l", .listing(channel, listed: true, title: "t", topic: "t")),
                                         on: aliceConnection)
            precondition(listed.contains(.ok(ref: "l")))
            webhooks = WebhookLog()
            let deliver = harness.sandbox.deliver
            harness.sandbox.deliver = { [webhooks] request in
                webhooks.requests.append(request)
                deliver?(request)
            }
        }

        /// A viewer connection on the first or the second broker.
        mutating func viewer(onSecond: Bool) -> RecordingConnection {
            nextConnection += 1
            let connection = RecordingConnection(id: nextConnection, remoteAddress: "198.51.100.\(nextConnection % 200)")
            (onSecond ? second : harness.router).connectionOpened(connection)
            harness.clock.runUntilIdle()
            return connection
        }

        func send(_ frame: ClientFrame, on connection: RecordingConnection, onSecond: Bool) {
            (onSecond ? second : harness.router).connection(connection, received: FrameCodec().encode(frame),
                                                            isBinary: false)
        }

        func grant(peek: String, viewerKey: [UInt8], by agent: TestAgent) -> PeekGrant {
            let ephemeral = SecureRandom.bytes(32), nonce = SecureRandom.bytes(12), ciphertext = SecureRandom.bytes(48)
            let signed = PeekGrant.signedBytes(channel: channel, peek: peek, viewerKey: viewerKey, epoch: 1,
                                               ephemeralKey: ephemeral, nonce: nonce, ciphertext: ciphertext)
            return PeekGrant(epoch: 1, sender: agent.did, ephemeralKey: ephemeral, nonce: nonce,
                             ciphertext: ciphertext, signature: agent.keys.sign(signed))
        }
    }

    final class WebhookLog: @unchecked Sendable {
        var requests: [HTTPRequest] = []
    }

    /// The peek the viewer asked for: its id and token, from the `peek` answer.
    static func requested(_ frames: [ServerFrame]) -> (id: String, token: String)? {
        for frame in frames {
            if case .peek(_, let view) = frame, let token = view.token { return (view.id, token) }
        }
        return nil
    }

    @Test func aThousandPeeksOnTwoBrokersChargeOnlyForAccessGivenAndTheLedgerBalances() throws {
        var world = World()
        var generator = SystemRandomNumberGenerator()
        let clock = world.harness.clock
        var plans: [String: Plan] = [:]
        var started: [(key: PeekKey, viewer: RecordingConnection, viewerKey: [UInt8], token: String)] = []
        for round in 0..<1_000 {
            let plan = Plan(pays: Int.random(in: 0..<10, using: &generator) > 0,
                            refuse: Bool.random(using: &generator), lateRefusal: Int.random(in: 0..<4, using: &generator) == 0,
                            grant: Int.random(in: 0..<5, using: &generator) > 0, onSecond: Bool.random(using: &generator))
            let viewer = world.viewer(onSecond: plan.onSecond)
            let viewerKey = SecureRandom.bytes(32)
            world.send(.peek(id: "q", .request(channel: world.channel, viewerKey: viewerKey)), on: viewer,
                       onSecond: plan.onSecond)
            clock.runUntilIdle()
            let peek = try #require(Self.requested(viewer.frames), "round \(round): \(viewer.frames)")
            plans[peek.id] = plan
            started.append((PeekKey(channel: world.channel, id: peek.id), viewer, viewerKey, peek.token))
            if plan.pays {
                world.send(.peek(id: "c", .confirm(channel: world.channel, peek: peek.id, token: peek.token)),
                           on: viewer, onSecond: plan.onSecond)
            }
            // Every few rounds, time passes and members act on what they were told.
            if round % 10 == 9 {
                clock.runUntilIdle()
                act(&world, plans: plans, started: started, generator: &generator)
                clock.advance(by: 400)
                clock.runUntilIdle()
            }
        }
        // Let everything reach a final phase, acting and replaying webhooks on the way.
        for _ in 0..<80 {
            act(&world, plans: plans, started: started, generator: &generator)
            clock.advance(by: 500)
            clock.runUntilIdle()
        }
        let store = world.harness.peekStore
        let peeks = store.peeks.values.map(\.record)
        #expect(peeks.count == 1_000)
        #expect(peeks.allSatisfy { $0.phase.isFinal }, "\(Dictionary(grouping: peeks, by: \.phase).mapValues(\.count))")
        let phases = Dictionary(grouping: peeks, by: \.phase).mapValues(\.count)
        for phase in [PeekPhase.ended, .refused, .cancelled] {
            #expect(phases[phase, default: 0] >= 50, "every outcome is exercised: \(phases)")
        }
        let entries = store.allEntries
        let captures = entries.filter { $0.kind == "capture" }
        let shares = entries.filter { $0.kind == "share" }
        #expect(captures.reduce(0) { $0 + $1.cents } == shares.reduce(0) { $0 + $1.cents }, "the ledger balances")
        #expect(Set(captures.map(\.peek)).count == captures.count, "no peek captured twice")
        for peek in peeks {
            let captured = captures.filter { $0.peek == peek.id }.map(\.cents)
            let intent = world.harness.sandboxPayments.intents[peek.paymentIntent]
            switch peek.phase {
            case .ended:
                #expect(captured == [500] && peek.grantedBy != nil && peek.refusedBy == nil)
            case .refused:
                #expect(captured == [100] && peek.refusedBy != nil && peek.grantedBy == nil)
            case .cancelled:
                #expect(captured.isEmpty && peek.grantedBy == nil)
            default:
                Issue.record("unexpected final phase \(peek.phase)")
            }
            #expect((intent?.amountReceived ?? 0) == (captured.first ?? 0), "the gateway charged what the ledger says")
            let plan = try #require(plans[peek.id])
            if !plan.pays { #expect(peek.phase == .cancelled && peek.reason == "unpaid") }
        }
        let granted = peeks.filter { $0.phase == .ended }.count
        #expect(store.granted[world.channel, default: 0] == Int64(granted))
        #expect(store.active[world.channel, default: 0] == 0)
        // Shares: 30% (rounded up) to the platform, the rest split between Alice and Bob.
        let platform = shares.filter { $0.party == "platform" }.reduce(0) { $0 + $1.cents }
        #expect(platform == Int64(granted) * 150 + Int64(peeks.filter { $0.phase == .refused }.count) * 30)
        // Metrics count each outcome once (granted peeks when they became active, then again when they ended), and
        // the cents captured, released and shared.
        let metrics = world.harness.metrics
        func outcome(_ name: String) -> Int64 {
            metrics.counterTotal(label: "agentchat_peeks_total", dimensions: [("outcome", name)])
        }
        #expect(["granted", "refused", "cancelled", "failed"].map(outcome).reduce(0, +) == 1_000)
        #expect(outcome("requested") == 1_000)
        #expect(outcome("ended") == Int64(granted))
        #expect(outcome("granted") == Int64(granted))
        func cents(_ kind: String) -> Int64 {
            metrics.counterTotal(label: "agentchat_peek_cents_total", dimensions: [("kind", kind)])
        }
        #expect(cents("captured") + cents("released") + cents("cancelled")
            == captures.reduce(0) { $0 + $1.cents } + entries.filter { $0.kind != "capture" && $0.kind != "share" }
                .reduce(0) { $0 + $1.cents })
        #expect(cents("platform") == platform)
        #expect(cents("platform") + cents("members") == cents("captured"))
        // Webhooks were delivered twice and more; each event applied at most once (the phases above prove it).
        #expect(world.webhooks.requests.count > 1_000)
    }

    /// What the members and the network do in one step: refusals (some late), grants, and repeated webhooks.
    private func act(_ world: inout World, plans: [String: Plan], started: [(key: PeekKey, viewer: RecordingConnection,
                     viewerKey: [UInt8], token: String)], generator: inout SystemRandomNumberGenerator)
    {
        for (key, _, viewerKey, _) in started {
            guard let peek = world.harness.peekStore.peeks[key]?.record, let plan = plans[key.id] else { continue }
            switch peek.phase {
            case .pending where plan.refuse && !plan.lateRefusal:
                world.send(.peek(id: "r", .refuse(channel: key.channel, peek: key.id)), on: world.bobConnection,
                           onSecond: false)
            case .awaitingGrant where plan.refuse && plan.lateRefusal:
                // Too late: refused with peek_not_refusable, and the peek goes on.
                world.send(.peek(id: "r", .refuse(channel: key.channel, peek: key.id)), on: world.bobConnection,
                           onSecond: false)
                if plan.grant { grant(&world, key, viewerKey) }
            case .awaitingGrant where plan.grant:
                grant(&world, key, viewerKey)
            default:
                break
            }
        }
        // Stripe delivers some events more than once, and not in order.
        let log = world.webhooks.requests
        for _ in 0..<min(20, log.count) {
            let request = log[Int.random(in: 0..<log.count, using: &generator)]
            let broker = Bool.random(using: &generator) ? world.second : world.harness.router
            broker.handleHTTP(request) { _ in }
        }
        world.harness.clock.runUntilIdle()
    }

    private func grant(_ world: inout World, _ key: PeekKey, _ viewerKey: [UInt8]) {
        // Both members may grant, on different brokers; the first grant is the one taken.
        world.send(.peek(id: "g", .grant(channel: key.channel, peek: key.id,
                                         grant: world.grant(peek: key.id, viewerKey: viewerKey, by: world.alice))),
                   on: world.aliceConnection, onSecond: false)
        world.send(.peek(id: "g", .grant(channel: key.channel, peek: key.id,
                                         grant: world.grant(peek: key.id, viewerKey: viewerKey, by: world.bob))),
                   on: world.bobConnection, onSecond: false)
    }

    struct Plan {
        var pays: Bool
        var refuse: Bool
        var lateRefusal: Bool
        var grant: Bool
        var onSecond: Bool
    }

    /// Defect: `peek.confirm` on a peek that was active already made the connection follow the peek but sent it
    /// none of the channel's messages (only a `peek.status` or the next change did); the protocol says both start
    /// them. Here the viewer confirms again from another connection on the other broker (a reload, say).
    @Test func confirmingAnActivePeekSendsTheGrantTheLastMessagesAndLiveOnes() throws {
        var world = World()
        let clock = world.harness.clock
        world.harness.sendMessages(world.channel, count: 3, on: world.aliceConnection)
        clock.runUntilIdle()
        let viewer = world.viewer(onSecond: false)
        let viewerKey = SecureRandom.bytes(32)
        world.send(.peek(id: "q", .request(channel: world.channel, viewerKey: viewerKey)), on: viewer, onSecond: false)
        clock.runUntilIdle()
        let peek = try #require(Self.requested(viewer.frames))
        let key = PeekKey(channel: world.channel, id: peek.id)
        world.send(.peek(id: "c", .confirm(channel: world.channel, peek: peek.id, token: peek.token)), on: viewer,
                   onSecond: false)
        clock.runUntilIdle()
        clock.advance(by: 1_500)  // past the refusal window: awaiting_grant
        try #require(world.harness.peekStore.peeks[key]?.record.phase == .awaitingGrant)
        world.send(.peek(id: "g", .grant(channel: world.channel, peek: peek.id,
                                         grant: world.grant(peek: peek.id, viewerKey: viewerKey, by: world.alice))),
                   on: world.aliceConnection, onSecond: false)
        clock.runUntilIdle()
        try #require(world.harness.peekStore.peeks[key]?.record.phase == .active)

        let again = world.viewer(onSecond: true)
        again.skipFrames()
        world.send(.peek(id: "c2", .confirm(channel: world.channel, peek: peek.id, token: peek.token)), on: again,
                   onSecond: true)
        clock.runUntilIdle()
        let frames = again.takeFrames()
        guard case .peek("c2", let view)? = frames.first else {
            Issue.record("expected the peek as the answer, got \(frames)")
            return
        }
        #expect(view.phase == "active" && view.grant?.sender == world.alice.did)
        #expect(deliveredOffsets(frames) == [1, 2, 3], "the channel's last messages")
        world.harness.sendMessages(world.channel, count: 1, from: 4, on: world.aliceConnection)
        clock.runUntilIdle()
        #expect(deliveredOffsets(again.takeFrames()) == [4], "and live ones")
    }

    @Test func aBrokerThatDiesMidCaptureLeavesTheCaptureToAnother() throws {
        var world = World()
        let clock = world.harness.clock
        let viewer = world.viewer(onSecond: true)
        let viewerKey = SecureRandom.bytes(32)
        world.send(.peek(id: "q", .request(channel: world.channel, viewerKey: viewerKey)), on: viewer, onSecond: true)
        clock.runUntilIdle()
        let peek = try #require(Self.requested(viewer.frames))
        world.send(.peek(id: "c", .confirm(channel: world.channel, peek: peek.id, token: peek.token)), on: viewer,
                   onSecond: true)
        clock.runUntilIdle()
        let key = PeekKey(channel: world.channel, id: peek.id)
        #expect(world.harness.peekStore.peeks[key]?.record.phase == .pending)
        // The sandbox store goes away just as the capture is asked: the broker that asked never hears back (as if
        // it died); the retry timer stays in the store.
        world.send(.peek(id: "r", .refuse(channel: world.channel, peek: peek.id)), on: world.bobConnection,
                   onSecond: false)
        world.harness.sandboxPayments.setAvailable(false)
        clock.runUntilIdle()
        #expect(world.harness.peekStore.peeks[key]?.record.phase == .capturing)
        #expect(world.harness.peekStore.timers[key] != nil)
        world.harness.sandboxPayments.setAvailable(true)
        for _ in 0..<20 {
            clock.advance(by: 1_000)
            clock.runUntilIdle()
        }
        let record = try #require(world.harness.peekStore.peeks[key]?.record)
        #expect(record.phase == .refused && record.captureCents == 100)
        let captures = world.harness.peekStore.allEntries.filter { $0.kind == "capture" && $0.peek == peek.id }
        #expect(captures.map(\.cents) == [100])
        #expect(world.harness.sandboxPayments.intents[record.paymentIntent]?.amountReceived == 100)
        #expect(world.harness.peekStore.timers[key] == nil, "a final peek has no timer")
    }
}
