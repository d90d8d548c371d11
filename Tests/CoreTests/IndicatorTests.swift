import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

/// Viewers' indicators through `FrameRouter`: per-tick coalescing, slow viewers, presence with grace.
@Suite struct IndicatorTests {
    /// The default indicator rate (4 a second): one tick every 250 ms, from the router's start.
    static let tick: UInt64 = 250

    /// Alice owns a listed channel; viewers watch it.
    struct Fixture {
        let h = CoreHarness()
        let alice: TestAgent
        let a: RecordingConnection
        let channel: ChannelID

        init() {
            alice = h.makeAgent("alice")
            a = h.login(alice).connection
            channel = h.createChannel(owner: alice, on: a)
            let replies = h.request(.channel(id: "l", .listing(channel, listed: true, title: "Prices", topic: "")),
                                    on: a)
            precondition(replies.map(\.typeName) == ["ok"], "listing failed: \(replies)")
        }

        /// A viewer subscribed to the channel; its snapshot reply taken.
        func viewer(address: String = "198.51.100.1") -> RecordingConnection {
            let v = h.open(address: address)
            let replies = h.request(.viewer(id: "v", .subscribe([channel])), on: v)
            precondition(replies.count == 1 && replies[0].typeName == "indicators", "subscribe failed: \(replies)")
            return v
        }

        func send(_ range: ClosedRange<Int>) {
            h.sendMessages(channel, count: range.count, from: range.lowerBound, on: a)
            h.clock.runUntilIdle()
        }
    }

    /// The indicators of one channel in each `indicators` update (not replies) among `frames`.
    static func updates(_ frames: [ServerFrame], _ channel: ChannelID) -> [ChannelIndicators?] {
        frames.compactMap { frame in
            guard case .indicators(nil, let list) = frame else { return nil }
            return .some(list.first { $0.id == channel })
        }
    }

    @Test func manyMessagesInOneTickAreOneFrameWithTheNewestValues() throws {
        let f = Fixture()
        let v = f.viewer()
        f.send(1...20)
        #expect(v.takeFrames().isEmpty, "nothing before the tick")
        f.h.clock.advance(by: Self.tick)
        let first = Self.updates(v.takeFrames(), f.channel)
        #expect(first.count == 1)
        #expect(first.first??.messages == 20)
        #expect(first.first??.messagesLastMinute == 20)
        #expect(first.first??.online == 1)

        // Messages in three turns at different times within one tick: still one frame, with the last values.
        f.send(21...25)
        f.h.clock.advance(by: 40)
        f.send(26...30)
        f.h.clock.advance(by: 100)
        f.send(31...35)
        #expect(v.takeFrames().isEmpty)
        f.h.clock.advance(by: Self.tick - 140)
        let second = Self.updates(v.takeFrames(), f.channel)
        #expect(second.count == 1)
        #expect(second.first??.messages == 35)

        // Nothing changed: nothing sent.
        f.h.clock.advance(by: 4 * Self.tick)
        #expect(v.takeFrames().isEmpty)
    }

    @Test func aViewerWhoseLastFrameIsStillQueuedIsSkippedThenGetsTheNewestState() throws {
        let f = Fixture()
        let fast = f.viewer()
        let slow = f.viewer(address: "198.51.100.2")
        slow.readsImmediately = false

        f.send(1...10)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(fast.takeFrames(), f.channel).map { $0?.messages } == [10])
        #expect(Self.updates(slow.takeFrames(), f.channel).map { $0?.messages } == [10])
        #expect(slow.queuedBytes > 0)

        f.send(11...15)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(fast.takeFrames(), f.channel).map { $0?.messages } == [15])
        #expect(slow.takeFrames().isEmpty, "skipped: its previous frame is still queued")

        f.send(16...18)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(fast.takeFrames(), f.channel).map { $0?.messages } == [18])
        #expect(slow.takeFrames().isEmpty)

        slow.readAll()
        f.h.clock.advance(by: Self.tick)
        #expect(fast.takeFrames().isEmpty)
        #expect(Self.updates(slow.takeFrames(), f.channel).map { $0?.messages } == [18], "the newest, no backlog")
    }

    /// Defect: a read for one viewer's request refreshed the shared snapshot, so the next tick saw no change and
    /// viewers already watching never got the new values.
    @Test func anotherViewerSubscribingDoesNotSwallowAnUpdate() throws {
        let f = Fixture()
        let first = f.viewer()
        f.send(1...5)
        // A second viewer subscribes before the tick: its snapshot already holds the new values.
        let second = f.viewer(address: "198.51.100.2")
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(first.takeFrames(), f.channel).map { $0?.messages } == [5])
        #expect(second.takeFrames().isEmpty, "its snapshot was the newest state")
    }

    /// Defect: a failed read was taken for "not listed": viewers were sent `listed: false` and stopped watching.
    @Test func aStoreOutageIsNotReportedAsTheChannelBeingUnlisted() throws {
        let f = Fixture()
        let v = f.viewer()
        f.h.indicatorStore.setAvailable(false)
        f.h.clock.advance(by: 2 * Self.tick)
        #expect(Self.updates(v.takeFrames(), f.channel).allSatisfy { $0?.listed != false })
        f.h.indicatorStore.setAvailable(true)
        f.send(1...3)
        f.h.clock.advance(by: Self.tick)
        let updates = Self.updates(v.takeFrames(), f.channel)
        #expect(updates.map { $0?.messages } == [3], "still watching after the outage")
    }

    @Test func subscribingDuringAStoreOutageAnswersUnavailableNotNotFound() throws {
        let f = Fixture()
        let v = f.h.open(address: "198.51.100.3")
        f.h.indicatorStore.setAvailable(false)
        let replies = f.h.request(.viewer(id: "v", .subscribe([f.channel])), on: v)
        #expect(replies.map(\.errorCode) == [.unavailable])
    }

    @Test func aSubscribeToAChannelThatIsNotListedSendsOtherViewersNothing() throws {
        let f = Fixture()
        let directoryViewer = f.h.open(address: "198.51.100.4")
        f.h.request(.viewer(id: "d", .subscribeDirectory), on: directoryViewer)
        let hidden = f.h.createChannel(owner: f.alice, on: f.a)
        let v = f.h.open(address: "198.51.100.5")
        #expect(f.h.request(.viewer(id: "v", .subscribe([hidden])), on: v).map(\.errorCode) == [.notFound])
        f.h.clock.advance(by: 2 * Self.tick)
        #expect(directoryViewer.takeFrames().isEmpty)
    }

    @Test func unlistingIsSentOnceThenNothing() throws {
        let f = Fixture()
        let v = f.viewer()
        f.h.request(.channel(id: "u", .listing(f.channel, listed: false, title: "Prices", topic: "")), on: f.a)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(v.takeFrames(), f.channel).map { $0?.listed } == [false])
        f.send(1...3)
        f.h.clock.advance(by: 4 * Self.tick)
        #expect(v.takeFrames().isEmpty)
    }

    /// Defect: while a viewer watched the whole directory, the tick recorded a channel that left the directory as
    /// unlisted and marked it for the directory viewers only; the read that followed then saw no change, so a viewer
    /// subscribed to the channel itself was never sent `listed: false`.
    @Test func unlistingReachesAChannelViewerWhileADirectoryViewerWatches() throws {
        let f = Fixture()
        let v = f.viewer()
        let directoryViewer = f.h.open(address: "198.51.100.6")
        #expect(f.h.request(.viewer(id: "d", .subscribeDirectory), on: directoryViewer).map(\.typeName)
            == ["indicators"])
        f.h.request(.channel(id: "u", .listing(f.channel, listed: false, title: "Prices", topic: "")), on: f.a)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(v.takeFrames(), f.channel).map { $0?.listed } == [false])
        #expect(Self.updates(directoryViewer.takeFrames(), f.channel).map { $0?.listed } == [false])
        // Once: later activity of the unlisted channel reaches neither.
        f.send(1...3)
        f.h.clock.advance(by: 4 * Self.tick)
        #expect(v.takeFrames().isEmpty)
        #expect(directoryViewer.takeFrames().isEmpty)
        // Listed again: the directory shows it by itself; the channel's own subscription ended.
        f.h.request(.channel(id: "l", .listing(f.channel, listed: true, title: "Prices", topic: "")), on: f.a)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(directoryViewer.takeFrames(), f.channel).map { $0?.messages } == [3])
        #expect(v.takeFrames().isEmpty)
    }

    /// Defect: a directory subscription replaced the list of listed channels the tick compares with, so a channel
    /// unlisted just before it was never sent as unlisted to the viewers already watching the directory.
    @Test func aNewDirectorySubscriptionDoesNotSwallowAnUnlisting() throws {
        let f = Fixture()
        let first = f.h.open(address: "198.51.100.7")
        f.h.request(.viewer(id: "d", .subscribeDirectory), on: first)
        f.h.request(.channel(id: "u", .listing(f.channel, listed: false, title: "Prices", topic: "")), on: f.a)
        // Before the tick, another viewer subscribes to the directory: its snapshot no longer holds the channel.
        let second = f.h.open(address: "198.51.100.8")
        let snapshot = f.h.request(.viewer(id: "d", .subscribeDirectory), on: second)
        guard case .indicators("d", let listed)? = snapshot.first else {
            Issue.record("expected a snapshot, got \(snapshot)")
            return
        }
        #expect(listed.isEmpty)
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(first.takeFrames(), f.channel).map { $0?.listed } == [false])
        #expect(second.takeFrames().isEmpty, "its snapshot never held the channel")
    }

    /// A viewer of the channel that subscribes to the directory just after the channel was unlisted (the snapshot no
    /// longer holds it) is still sent `listed: false`, while another viewer watches the directory.
    @Test func aChannelViewerSubscribingToTheDirectoryStillHearsOfAnUnlisting() throws {
        let f = Fixture()
        let v = f.viewer()
        let directoryViewer = f.h.open(address: "198.51.100.9")
        f.h.request(.viewer(id: "d", .subscribeDirectory), on: directoryViewer)
        f.h.clock.advance(by: Self.tick)
        f.h.request(.channel(id: "u", .listing(f.channel, listed: false, title: "Prices", topic: "")), on: f.a)
        #expect(f.h.request(.viewer(id: "d", .subscribeDirectory), on: v).map(\.typeName) == ["indicators"])
        f.h.clock.advance(by: Self.tick)
        #expect(Self.updates(v.takeFrames(), f.channel).map { $0?.listed } == [false])
        #expect(Self.updates(directoryViewer.takeFrames(), f.channel).map { $0?.listed } == [false])
    }

    /// `indicators.subscribe` adds to the channels a viewer watches (up to 100 ids a frame); it does not replace them.
    @Test func subscribingAgainAddsChannels() throws {
        let f = Fixture()
        let v = f.viewer()
        let other = f.h.createChannel("other", owner: f.alice, on: f.a)
        #expect(f.h.request(.channel(id: "l2", .listing(other, listed: true, title: "Other", topic: "")), on: f.a)
            .map(\.typeName) == ["ok"])
        let replies = f.h.request(.viewer(id: "v2", .subscribe([other])), on: v)
        guard case .indicators("v2", let snapshot)? = replies.first else {
            Issue.record("expected a snapshot, got \(replies)")
            return
        }
        #expect(snapshot.map(\.id) == [other], "the snapshot holds the channels of this frame")
        f.send(1...2)
        f.h.sendMessages(other, count: 1, on: f.a)
        f.h.clock.runUntilIdle()
        f.h.clock.advance(by: Self.tick)
        let frames = v.takeFrames()
        #expect(Self.updates(frames, f.channel).map { $0?.messages } == [2], "the first channel is still watched")
        #expect(Self.updates(frames, other).map { $0?.messages } == [1])
    }

    // MARK: Presence

    @Test func anAgentThatReconnectsWithinTheGraceNeverShowsOffline() throws {
        let f = Fixture()
        let v = f.viewer()
        #expect(f.h.indicatorStore.isPresent(f.alice.did))

        f.h.disconnect(f.a)
        f.h.clock.advance(by: 10_000)
        let again = f.h.login(f.alice).connection
        f.h.clock.advance(by: 20_000)  // past the first connection's grace: the new one keeps the agent present
        #expect(f.h.indicatorStore.isPresent(f.alice.did))
        #expect(Self.updates(v.takeFrames(), f.channel).allSatisfy { $0?.online == 1 })

        // Two connections: one closing changes nothing.
        let third = f.h.login(f.alice).connection
        f.h.disconnect(again)
        f.h.clock.advance(by: 30_000)
        #expect(f.h.indicatorStore.isPresent(f.alice.did))
        #expect(Self.updates(v.takeFrames(), f.channel).allSatisfy { $0?.online == 1 })

        // The last one closes: online until the grace (15 s) has passed, then offline.
        f.h.disconnect(third)
        f.h.clock.advance(by: 14_000)
        #expect(Self.updates(v.takeFrames(), f.channel).allSatisfy { $0?.online == 1 })
        f.h.clock.advance(by: 1_250)
        #expect(!f.h.indicatorStore.isPresent(f.alice.did))
        #expect(Self.updates(v.takeFrames(), f.channel).map { $0?.online } == [0])
    }
}
