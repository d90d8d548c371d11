import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

/// Live delivery through `FrameRouter`, with the store twins and a manual clock: replay and live hand-over,
/// catch-up after pub/sub losses, per-turn batching, pacing by the reader, failed history reads.
@Suite struct DeliveryTests {
    /// Alice owns a channel Bob is a member of; both logged in.
    struct Fixture {
        let h: CoreHarness
        let alice: TestAgent
        let bob: TestAgent
        let a: RecordingConnection
        let b: RecordingConnection
        let channel: ChannelID

        init(bobQueueLimit: Int = 1024 * 1024, configuration: FrameRouter.Configuration = .init()) {
            h = CoreHarness(configuration: configuration)
            alice = h.makeAgent("alice")
            bob = h.makeAgent("bob")
            a = h.login(alice).connection
            channel = h.createChannel(owner: alice, on: a, members: [bob])
            b = h.login(bob, queueLimit: bobQueueLimit).connection
        }

        /// Alice sends messages `range` (client ids m<n>) in one turn and the loop runs until idle.
        func send(_ range: ClosedRange<Int>, ciphertextBytes: Int = 32) {
            h.sendMessages(channel, count: range.count, from: range.lowerBound, on: a, ciphertextBytes: ciphertextBytes)
            h.clock.runUntilIdle()
        }
    }

    /// An event published right after `subscribed` reaches the subscriber: the answer waits until the channel's
    /// live stream is confirmed on this broker (an epoch rotated between the two used to be lost).
    @Test func anEventRightAfterSubscribedIsDelivered() throws {
        let f = Fixture()
        f.h.feeds.confirmTurns = 6  // the state read answers first
        f.b.skipFrames()
        f.h.send(.channel(id: "sub", .subscribe(f.channel, since: nil, historyEpoch: nil)), on: f.b)
        var subscribed = false
        for _ in 0..<100 where !subscribed {
            _ = f.h.clock.turn()
            subscribed = f.b.frames.contains { if case .subscribed = $0 { true } else { false } }
        }
        #expect(subscribed)
        // In the turn in which Bob learns he is subscribed, Alice rotates the epoch.
        f.h.send(.channel(id: "rot", .rotate(f.channel)), on: f.a)
        f.h.clock.runUntilIdle()
        let events = f.b.takeFrames().compactMap { frame -> String? in
            if case .channelEvent(_, let event, _, _) = frame { event } else { nil }
        }
        #expect(events.contains("epoch_rotated"), "\(events)")
    }

    /// `replyTurns`: 2 makes live messages overtake history reads, so the hand-over needs the items it held.
    @Test(arguments: [false, true], [0, 2])
    func aReplayHandsOverToLiveTrafficWithEveryOffsetOnceInOrder(aliceIsLiveAlready: Bool, replyTurns: Int) throws {
        let f = Fixture(bobQueueLimit: 16 * 1024)
        f.h.channelStore.replyTurns = replyTurns
        if aliceIsLiveAlready { f.h.subscribe(f.channel, on: f.a) }
        f.send(1...40)
        #expect(f.h.channelStore.items(f.channel).map(\.offset) == Array(1...40))
        f.b.skipFrames()

        // Bob resumes from the start while Alice keeps sending, one message a turn.
        f.h.send(.channel(id: "sub", .subscribe(f.channel, since: 0, historyEpoch: nil)), on: f.b)
        for n in 41...100 {
            f.h.send(f.h.message(f.channel, clientMessageID: "m\(n)"), on: f.a)
            f.h.clock.turn()
        }
        f.h.clock.runUntilIdle()

        let frames = f.b.takeFrames()
        guard case .subscribed("sub", _, _, _, true)? = frames.first else {
            Issue.record("expected subscribed first, got \(frames.first.map(\.typeName) ?? "nothing")")
            return
        }
        #expect(deliveredOffsets(frames) == Array(1...100))
        // History was read in several pages, and live messages were interleaved with it.
        #expect(try #require(f.h.channelStore.calls["range"]) >= 2)
        #expect(frames.filter { $0.typeName == "messages" }.count > 2)
        // The hand-over itself never skipped offsets (no gap had to be repaired from history).
        #expect(f.h.metrics.counterTotal(label: "agentchat_feed_gaps_total") == 0)
        if aliceIsLiveAlready { #expect(deliveredOffsets(f.a.frames) == Array(1...100)) }
    }

    @Test(arguments: [0, 2])
    func messagesPublishedWhileThePubSubConnectionIsDownArriveAfterItComesBackWithoutGapOrDuplicate(replyTurns: Int) {
        let f = Fixture()
        f.h.channelStore.replyTurns = replyTurns
        f.h.subscribe(f.channel, on: f.b)
        f.h.subscribe(f.channel, on: f.a)
        f.send(1...3)
        #expect(deliveredOffsets(f.b.frames) == [1, 2, 3])

        f.h.feeds.dropConnection()
        f.send(4...8)
        #expect(f.h.channelStore.items(f.channel).last?.offset == 8)
        #expect(deliveredOffsets(f.b.frames) == [1, 2, 3], "nothing can arrive while pub/sub is down")

        f.h.feeds.reconnect()
        f.h.clock.runUntilIdle()
        #expect(deliveredOffsets(f.b.frames) == Array(1...8))
        f.send(9...10)
        #expect(deliveredOffsets(f.b.frames) == Array(1...10))
        #expect(deliveredOffsets(f.a.frames) == Array(1...10))
    }

    @Test func aLiveMessageLostInFlightIsReadFromHistoryWhenTheNextOneShowsTheGap() {
        let f = Fixture()
        f.h.subscribe(f.channel, on: f.b)
        f.send(1...2)
        f.h.feeds.loseNextMessages(1)
        f.send(3...3)
        #expect(deliveredOffsets(f.b.frames) == [1, 2])
        f.send(4...5)
        #expect(deliveredOffsets(f.b.frames) == Array(1...5))
        #expect(f.h.metrics.counterTotal(label: "agentchat_feed_gaps_total") == 1)
    }

    @Test func messagesOfOneLoopTurnGoOutAsOneFrameEncodedOnceForEverySubscriber() throws {
        let f = Fixture()
        let carol = f.h.makeAgent("carol")
        let c = f.h.login(carol).connection
        f.h.request(.channel(id: "inv", .invite(f.channel, carol.did)), on: f.a)
        f.h.request(.channel(id: "join", .join(f.channel)), on: c)
        f.h.publishKeys(f.channel, epoch: 2, members: [f.alice, f.bob, carol], by: f.alice, on: f.a)
        for connection in [f.b, c] {
            f.h.subscribe(f.channel, on: connection)
            connection.skipFrames()
        }

        for n in 1...5 { f.h.send(f.h.message(f.channel, epoch: 2, clientMessageID: "m\(n)"), on: f.a) }
        f.h.clock.runUntilIdle()

        let bobFrames = f.b.takeFrames()
        let carolFrames = c.takeFrames()
        #expect(bobFrames.map(\.messageOffsets) == [[1, 2, 3, 4, 5]])
        #expect(carolFrames.map(\.messageOffsets) == [[1, 2, 3, 4, 5]])
        // One encoded frame shared by both queues.
        let bobLast = try #require(f.b.sentFrames.last)
        let carolLast = try #require(c.sentFrames.last)
        #expect(bobLast === carolLast)
        #expect(f.h.metrics.counterTotal(label: "agentchat_message_deliveries_total") == 10)

        // Messages that arrive in different turns are different frames.
        for n in 6...7 { f.h.send(f.h.message(f.channel, epoch: 2, clientMessageID: "m\(n)"), on: f.a) }
        f.h.clock.turn()  // 6 and 7 stored
        for n in 8...9 { f.h.send(f.h.message(f.channel, epoch: 2, clientMessageID: "m\(n)"), on: f.a) }
        f.h.clock.runUntilIdle()
        #expect(f.b.takeFrames().map(\.messageOffsets) == [[6, 7], [8, 9]])
    }

    @Test(arguments: [0, 2])
    func thePubSubConnectionComesBackWhileAReplayWaitsForTheReader(replyTurns: Int) throws {
        let f = Fixture(bobQueueLimit: 8 * 1024)
        f.h.channelStore.replyTurns = replyTurns
        f.send(1...60, ciphertextBytes: 200)
        f.b.readsImmediately = false
        f.b.readAll()
        f.h.subscribe(f.channel, since: 0, on: f.b)
        // The replay is paced: a frame is queued and the rest waits for Bob to read.
        try #require(f.b.pendingDrainHandlers == 1)
        let before = deliveredOffsets(f.b.frames)
        #expect(before.count < 60)

        // Pub/sub drops while the replay waits; messages published meanwhile are lost to it; it comes back, and
        // more messages arrive (more than the replay may hold for Bob).
        f.h.feeds.dropConnection()
        f.send(61...65, ciphertextBytes: 200)
        f.h.feeds.reconnect()
        f.h.clock.runUntilIdle()
        f.send(66...70, ciphertextBytes: 200)
        #expect(deliveredOffsets(f.b.frames) == before, "nothing is sent before Bob reads")

        var rounds = 0
        while f.b.pendingDrainHandlers > 0, rounds < 100 {
            f.b.readAll()
            f.h.clock.runUntilIdle()
            rounds += 1
        }
        #expect(rounds > 2)
        f.b.readsImmediately = true
        f.b.readAll()
        f.send(71...75, ciphertextBytes: 200)

        #expect(f.b.closeCode == nil)
        #expect(deliveredOffsets(f.b.frames) == Array(1...75))
        // Never more than the pacing allows in the queue: half the limit plus one frame.
        #expect(f.b.sentFrames.allSatisfy { $0.count <= 4 * 1024 })
    }

    @Test func subscribingAgainOnTheSameConnectionReplaysFromTheNewPointThenContinuesLiveOnce() {
        let f = Fixture()
        f.h.subscribe(f.channel, on: f.b)
        f.send(1...5)
        f.b.skipFrames()
        // A client that saw a gap after 2 resubscribes from there (what the SDK's gap repair does).
        let replay = f.h.subscribe(f.channel, since: 2, on: f.b)
        f.send(6...7)
        #expect(deliveredOffsets(replay + f.b.takeFrames()) == [3, 4, 5, 6, 7])
    }

    @Test func aRemovedMembersLastFrameIsItsOwnRemovalEvent() throws {
        let f = Fixture()
        f.h.subscribe(f.channel, on: f.b)
        f.h.subscribe(f.channel, on: f.a)
        f.send(1...2)
        f.b.skipFrames()
        #expect(f.h.request(.channel(id: "rm", .remove(f.channel, f.bob.did)), on: f.a).contains { $0.typeName == "ok" })
        f.h.clock.runUntilIdle()
        f.h.publishKeys(f.channel, epoch: 2, members: [f.alice], by: f.alice, on: f.a)
        f.h.sendMessages(f.channel, epoch: 2, count: 2, from: 3, on: f.a)
        f.h.clock.runUntilIdle()
        let frames = f.b.takeFrames()
        guard case .channelEvent(_, "member_removed", let did, 2)? = frames.last, frames.count == 1 else {
            Issue.record("expected only Bob's removal, got \(frames)")
            return
        }
        #expect(did == f.bob.did)
        #expect(deliveredOffsets(f.a.frames) == [1, 2, 3, 4])
    }

    @Test func aFailedHistoryReadIsRetriedNotSkipped() {
        let f = Fixture()
        f.h.subscribe(f.channel, on: f.b)
        f.send(1...3)
        f.h.feeds.dropConnection()
        f.send(4...6)

        // Pub/sub comes back while the store does not answer: the catch-up read fails and is retried with backoff.
        f.h.channelStore.setAvailable(false)
        f.h.feeds.reconnect()
        f.h.clock.runUntilIdle()
        #expect(f.h.metrics.counterTotal(label: "agentchat_history_read_retries_total") == 1)
        f.h.clock.advance(by: 50)
        #expect(f.h.metrics.counterTotal(label: "agentchat_history_read_retries_total") == 2)
        #expect(deliveredOffsets(f.b.frames) == [1, 2, 3])

        f.h.channelStore.setAvailable(true)
        f.h.clock.advance(by: 100)
        #expect(deliveredOffsets(f.b.frames) == Array(1...6))
        f.send(7...8)
        #expect(deliveredOffsets(f.b.frames) == Array(1...8))
        #expect(f.b.closeCode == nil)
    }

    @Test func historyThatStaysUnreadableClosesTheSubscriberSoItResumesElsewhere() {
        let f = Fixture()
        f.h.subscribe(f.channel, on: f.b)
        f.send(1...2)
        f.h.feeds.dropConnection()
        f.h.channelStore.setAvailable(false)
        f.h.feeds.reconnect()
        f.h.clock.advance(by: 20_000)
        #expect(f.b.closeCode == nil, "still retrying")
        f.h.clock.advance(by: 20_000)
        #expect(f.b.closeCode == .internalError)
        #expect(f.a.closeCode == nil)
        #expect(f.h.metrics.counterTotal(label: "agentchat_history_read_retries_total") == 20)
    }

    @Test func aHistoryRequestWaitsForRoomInsteadOfOverflowingTheQueue() throws {
        let f = Fixture(bobQueueLimit: 8 * 1024)
        f.send(1...30, ciphertextBytes: 200)
        f.b.readsImmediately = false
        f.b.readAll()
        f.b.skipFrames()
        // Three pages asked for at once (each at most half the queue): the third waits until Bob has read.
        f.h.send(.channel(id: "h1", .history(f.channel, before: nil, after: 0, limit: 100)), on: f.b)
        f.h.send(.channel(id: "h2", .history(f.channel, before: nil, after: 10, limit: 100)), on: f.b)
        f.h.send(.channel(id: "h3", .history(f.channel, before: nil, after: 20, limit: 100)), on: f.b)
        f.h.clock.runUntilIdle()
        #expect(f.b.takeFrames().count == 2)
        #expect(f.b.pendingDrainHandlers == 1)
        #expect(f.b.queuedBytes <= f.b.queueLimit)
        f.b.readAll()
        f.h.clock.runUntilIdle()
        #expect(f.b.closeCode == nil)
        let pages = f.b.frames.compactMap { frame -> (String?, [Int64], Int64?)? in
            guard case .messages(let ref, _, let messages, let next) = frame else { return nil }
            return (ref, messages.map(\.offset), next)
        }
        #expect(pages.map(\.0) == ["h1", "h2", "h3"])
        let first = try #require(pages.first)
        // Cut short by size, with `next` naming its last offset.
        #expect(first.1.first == 1 && first.2 == first.1.last && first.1.count < 30)
        #expect(pages.map { $0.1.first } == [1, 11, 21])
    }
}
