import AgentChatProtocol
import Testing

@testable import AgentChatCore

/// The delivery rules, driven deterministically: replay/live hand-over, catch-up after a lost pub/sub connection,
/// failed reads, reconnect while replaying, gaps in the live stream, pacing by the queue, held-item overflow.
@Suite struct ChannelFeedStateMachineTests {
    typealias Machine = ChannelFeedStateMachine
    typealias Item = Machine.Item

    static let roomy = Machine.Queue(queuedBytes: 0, limit: 1 << 20)

    static func items(_ offsets: ClosedRange<Int64>, size: Int = 100) -> [Item] {
        offsets.map { Item(offset: $0, bytes: Array(repeating: UInt8(ascii: "x"), count: size)) }
    }

    /// The reads among the actions.
    static func reads(_ actions: [Machine.Action]) -> [Machine.Read] {
        actions.compactMap { if case .read(let read) = $0 { read } else { nil } }
    }

    /// Offsets sent to `id` by the actions, in order (own frames and shared ones).
    static func sent(_ actions: [Machine.Action], to id: UInt64) -> [Int64] {
        actions.flatMap { action -> [Int64] in
            switch action {
            case .send(let target, let items) where target == id: items.map(\.offset)
            case .broadcast(let targets, let items) where targets.contains(id): items.map(\.offset)
            default: []
            }
        }
    }

    /// A machine with subscriber 1 live after `offset`.
    static func live(after offset: Int64) throws -> Machine {
        var machine = Machine()
        _ = machine.subscribe(1, after: offset, queue: roomy)
        let read = try #require(reads(machine.activated { _ in roomy }).first)
        _ = machine.readCompleted(read, items: [], queue: roomy)
        #expect(machine.subscribers[1]?.phase == .live)
        return machine
    }

    @Test func aSubscriberWaitsForThePubSubSubscriptionThenReplaysAndGoesLive() throws {
        var machine = Machine()
        #expect(machine.subscribe(1, after: 0, queue: Self.roomy).isEmpty)
        let read = try #require(Self.reads(machine.activated { _ in Self.roomy }).first)
        #expect(read.after == 0 && read.subscriber == 1)
        // Live items arrive while the history is read: held, not sent.
        #expect(Self.sent(machine.deliver(Self.items(11...12), queues: { _ in Self.roomy }), to: 1).isEmpty)
        // The read answers 1…10, fewer than asked: history met the live stream.
        let actions = machine.readCompleted(read, items: Self.items(1...10), queue: Self.roomy)
        #expect(Self.sent(actions, to: 1) == Array(1...12))
        #expect(machine.subscribers[1]?.phase == .live)
        // Live from now on, in one frame shared with every other live subscriber.
        _ = machine.subscribe(2, after: 12, queue: Self.roomy)
        let second = try #require(Self.reads(machine.subscribers[2]!.pendingRead.map { [.read($0.read)] } ?? []).first)
        _ = machine.readCompleted(second, items: [], queue: Self.roomy)
        let shared = machine.deliver(Self.items(13...14), queues: { _ in Self.roomy })
        guard case .broadcast(let ids, let items)? = shared.first else {
            Issue.record("expected a shared frame, got \(shared)")
            return
        }
        #expect(Set(ids) == [1, 2] && items.map(\.offset) == [13, 14] && shared.count == 1)
    }

    @Test func aReconfirmedSubscriptionCatchesLiveSubscribersUpAndAFailedReadIsRetriedNotSkipped() throws {
        var machine = try Self.live(after: 5)
        // Pub/sub came back: whatever was published meanwhile is only in history.
        let first = try #require(Self.reads(machine.activated { _ in Self.roomy }).first)
        #expect(first.after == 5)
        // The command connection is still down: the read fails and is retried later, live items held.
        #expect(machine.readCompleted(first, items: nil, queue: Self.roomy) == [.retry(1, afterMilliseconds: 50)])
        #expect(Self.sent(machine.deliver(Self.items(9...10), queues: { _ in Self.roomy }), to: 1).isEmpty)
        let second = try #require(Self.reads(machine.retryDue(1, queue: Self.roomy)).first)
        #expect(machine.readCompleted(second, items: nil, queue: Self.roomy) == [.retry(1, afterMilliseconds: 100)])
        let third = try #require(Self.reads(machine.retryDue(1, queue: Self.roomy)).first)
        #expect(third.after == 5)
        let actions = machine.readCompleted(third, items: Self.items(6...10), queue: Self.roomy)
        #expect(Self.sent(actions, to: 1) == Array(6...10))
        #expect(machine.subscribers[1]?.phase == .live && machine.subscribers[1]?.lastOffset == 10)
    }

    @Test func aSubscriberWhoseHistoryStaysUnreadableIsClosed() throws {
        var machine = Machine()
        _ = machine.subscribe(1, after: 0, queue: Self.roomy)
        var read = try #require(Self.reads(machine.activated { _ in Self.roomy }).first)
        for _ in 0..<Machine.maxFailedReads {
            guard case .retry? = machine.readCompleted(read, items: nil, queue: Self.roomy).first else {
                Issue.record("expected a retry")
                return
            }
            read = try #require(Self.reads(machine.retryDue(1, queue: Self.roomy)).first)
        }
        #expect(machine.readCompleted(read, items: nil, queue: Self.roomy) == [.close(1)])
        #expect(machine.subscribers[1] == nil)
    }

    @Test func aReadIssuedBeforeAReconnectDoesNotHandOverEvenWhenItComesBackShort() throws {
        var machine = Machine()
        _ = machine.subscribe(1, after: 0, queue: Self.roomy)
        let before = try #require(Self.reads(machine.activated { _ in Self.roomy }).first)
        // Pub/sub reconnects while that read is in flight: items published in between reached no one.
        #expect(Self.reads(machine.activated { _ in Self.roomy }).isEmpty)  // one read at a time
        #expect(Self.sent(machine.deliver(Self.items(8...9), queues: { _ in Self.roomy }), to: 1).isEmpty)
        // The old read ends short at 5, but it may predate 6 and 7: another read, not the hand-over.
        let actions = machine.readCompleted(before, items: Self.items(1...5), queue: Self.roomy)
        #expect(Self.sent(actions, to: 1) == Array(1...5))
        let again = try #require(Self.reads(actions).first)
        #expect(again.after == 5 && machine.subscribers[1]?.phase == .reading)
        let last = machine.readCompleted(again, items: Self.items(6...9), queue: Self.roomy)
        #expect(Self.sent(last, to: 1) == Array(6...9))
        #expect(machine.subscribers[1]?.phase == .live)
    }

    @Test func aLiveBatchThatSkipsOffsetsIsReadFromHistoryInstead() throws {
        var machine = try Self.live(after: 5)
        let actions = machine.deliver(Self.items(8...9), queues: { _ in Self.roomy })
        #expect(actions.first == .gap(1))
        #expect(Self.sent(actions, to: 1).isEmpty)
        let read = try #require(Self.reads(actions).first)
        #expect(read.after == 5)
        let caughtUp = machine.readCompleted(read, items: Self.items(6...7), queue: Self.roomy)
        #expect(Self.sent(caughtUp, to: 1) == [6, 7, 8, 9])
        #expect(machine.subscribers[1]?.phase == .live)
    }

    @Test func aReplayIsPacedByTheQueueAndContinuesWhenItDrains() throws {
        var machine = Machine()
        let small = Machine.Queue(queuedBytes: 0, limit: 64 * 1024)
        _ = machine.subscribe(1, after: 0, queue: small)
        let read = try #require(Self.reads(machine.activated { _ in small }).first)
        // Sized to half the queue at the first estimate (4 KiB an item).
        #expect(read.count == 8)
        let actions = machine.readCompleted(read, items: Self.items(1...8, size: 10_000), queue: small)
        // Frames up to half the queue, then a wait.
        let first = Self.sent(actions, to: 1)
        #expect(first == [1, 2, 3])
        #expect(actions.last == .awaitDrain(1))
        #expect(machine.drained(1, queue: Machine.Queue(queuedBytes: 40_000, limit: small.limit)) == [.awaitDrain(1)])
        let resumed = machine.drained(1, queue: Machine.Queue(queuedBytes: 0, limit: small.limit))
        #expect(Self.sent(resumed, to: 1) == [4, 5, 6])
        #expect(machine.drained(2, queue: small).isEmpty)  // not waiting: nothing happens
    }

    @Test func heldItemsPastAQuarterOfTheQueueAreDroppedAndReadAgain() throws {
        var machine = Machine()
        let small = Machine.Queue(queuedBytes: 0, limit: 40_000)
        _ = machine.subscribe(1, after: 0, queue: small)
        let read = try #require(Self.reads(machine.activated { _ in small }).first)
        #expect(read.count == 4)
        _ = machine.deliver(Self.items(3...4, size: 4_000), queues: { _ in small })
        #expect(machine.subscribers[1]?.held.count == 2)
        _ = machine.deliver(Self.items(5...7, size: 4_000), queues: { _ in small })
        #expect(machine.subscribers[1]?.held.isEmpty == true)
        // The read issued before the overflow cannot hand over, even short.
        let actions = machine.readCompleted(read, items: Self.items(1...2, size: 4_000), queue: small)
        #expect(Self.sent(actions, to: 1) == [1, 2])
        let next = try #require(Self.reads(actions).first)
        #expect(next.after == 2 && machine.subscribers[1]?.phase == .reading)
        // Items held again from now on; a short read hands over.
        _ = machine.deliver(Self.items(8...8, size: 4_000), queues: { _ in small })
        let rest = machine.readCompleted(next, items: Self.items(3...5, size: 4_000), queue: small)
        #expect(Self.sent(rest, to: 1) == [3, 4, 5])
        // History answers what each read asks for (6…8 are stored), until a read comes back short.
        var sent: [Int64] = []
        var pending = Self.reads(rest).first
        while let read = pending {
            let stored = Self.items(6...8, size: 4_000).filter { $0.offset > read.after }.prefix(read.count)
            let actions = machine.readCompleted(read, items: Array(stored), queue: small)
            sent += Self.sent(actions, to: 1)
            pending = Self.reads(actions).first
        }
        #expect(sent == [6, 7, 8])
        #expect(machine.subscribers[1]?.phase == .live)
    }

    @Test func anAnswerForAReplacedSubscriptionIsIgnored() throws {
        var machine = Machine()
        _ = machine.subscribe(1, after: 0, queue: Self.roomy)
        let old = try #require(Self.reads(machine.activated { _ in Self.roomy }).first)
        let fresh = try #require(Self.reads(machine.subscribe(1, after: 40, queue: Self.roomy)).first)
        #expect(machine.readCompleted(old, items: Self.items(1...3), queue: Self.roomy).isEmpty)
        #expect(machine.subscribers[1]?.lastOffset == 40)
        #expect(Self.sent(machine.readCompleted(fresh, items: Self.items(41...41), queue: Self.roomy), to: 1) == [41])
        let empty = machine.unsubscribe(1)
        #expect(empty)
    }
}
