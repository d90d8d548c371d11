import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Testing

/// Read cursors through `FrameRouter` over the store twins (which follow the `channel_cursor`, join, leave and
/// remove scripts): forward only, shared by an agent's connections, started at the latest offset on joining,
/// deleted on leaving, and refused past the latest offset or outside the channel.
@Suite struct ReadCursorTests {
    let h = CoreHarness()

    func setCursor(_ channel: ChannelID, _ offset: Int64, on connection: RecordingConnection) -> ServerFrame? {
        h.request(.channel(id: "c", .setCursor(channel, offset: offset)), on: connection).first
    }

    func unread(on connection: RecordingConnection, after: ChannelID? = nil, limit: Int = 100)
        -> (cursors: [ReadCursor], next: ChannelID?)?
    {
        guard case .unread(_, let cursors, let next)? = h.request(.channel(id: "u", .unread(after: after, limit: limit)),
                                                                 on: connection).first
        else { return nil }
        return (cursors, next)
    }

    @Test func aCursorMovesOnlyForwardAndEveryConnectionOfTheAgentSeesIt() throws {
        let alice = h.makeAgent("alice")
        let bob = h.makeAgent("bob")
        let a = h.login(alice).connection
        let channel = h.createChannel("ops", owner: alice, on: a, members: [bob])
        for n in 1...3 { _ = h.request(h.message(channel, clientMessageID: "m\(n)"), on: a) }
        let b1 = h.login(bob).connection
        let b2 = h.login(bob).connection

        let first = try #require(unread(on: b1))
        #expect(first.cursors == [ReadCursor(channel: channel, name: "ops", read: 0, offset: 3, unread: 3)])
        #expect(first.next == nil)

        #expect(setCursor(channel, 2, on: b1) == .cursor(ref: "c", ReadCursor(channel: channel, read: 2, offset: 3,
                                                                              unread: 1)))
        // Never back: a lower offset answers the stored cursor.
        #expect(setCursor(channel, 1, on: b2) == .cursor(ref: "c", ReadCursor(channel: channel, read: 2, offset: 3,
                                                                              unread: 1)))
        #expect(unread(on: b2)?.cursors.first?.read == 2)
        // Alice's cursor is her own.
        #expect(unread(on: a)?.cursors.first?.read == 0)
    }

    @Test func anOffsetPastTheLatestOrAChannelOutsideIsRefusedAndChangesNothing() throws {
        let alice = h.makeAgent("alice")
        let mallory = h.makeAgent("mallory")
        let a = h.login(alice).connection
        let m = h.login(mallory).connection
        let channel = h.createChannel(owner: alice, on: a)
        _ = h.request(h.message(channel, clientMessageID: "x"), on: a)
        #expect(setCursor(channel, 2, on: a)?.errorCode == .invalidField)
        #expect(setCursor(channel, 1, on: m)?.errorCode == .notFound)
        #expect(unread(on: a)?.cursors.first?.read == 0)
        #expect(unread(on: m)?.cursors == [])
        #expect(h.channelStore.channels[channel]?.cursors[mallory.did] == nil)
    }

    @Test func joiningStartsAtTheLatestOffsetAndLeavingDeletesTheCursor() throws {
        let alice = h.makeAgent("alice")
        let carol = h.makeAgent("carol")
        let a = h.login(alice).connection
        let c = h.login(carol).connection
        let channel = h.createChannel(owner: alice, on: a, open: true)
        for n in 1...5 { _ = h.request(h.message(channel, clientMessageID: "m\(n)"), on: a) }
        #expect(h.request(.channel(id: "j", .join(channel)), on: c).first?.typeName == "channel")
        #expect(unread(on: c)?.cursors.map(\.read) == [5])
        #expect(unread(on: c)?.cursors.map(\.unread) == [0])

        #expect(h.request(.channel(id: "l", .leave(channel)), on: c).map(\.typeName) == ["ok"])
        #expect(h.channelStore.channels[channel]?.cursors[carol.did] == nil)
        #expect(unread(on: c)?.cursors == [])
        #expect(setCursor(channel, 5, on: c)?.errorCode == .notFound)
    }

    @Test func unreadCountsPageInChannelIdOrder() throws {
        let alice = h.makeAgent("alice")
        let a = h.login(alice).connection
        let channels = (0..<5).map { h.createChannel("c\($0)", owner: alice, on: a) }.sorted { $0.rawValue < $1.rawValue }
        let first = try #require(unread(on: a, limit: 2))
        #expect(first.cursors.map(\.channel) == Array(channels.prefix(2)))
        #expect(first.next == channels[1])
        let rest = try #require(unread(on: a, after: first.next, limit: 100))
        #expect(rest.cursors.map(\.channel) == Array(channels.dropFirst(2)))
        #expect(rest.next == nil)
    }

    @Test func aReplyFitsInHalfTheQueue() throws {
        let alice = h.makeAgent("alice")
        let a = h.login(alice, queueLimit: 4096).connection
        let name = String(repeating: "n", count: 64)
        let channels = (0..<40).map { _ in h.createChannel(name, owner: alice, on: a) }.sorted { $0.rawValue < $1.rawValue }
        var seen: [ChannelID] = []
        var after: ChannelID?
        repeat {
            guard case .unread(_, let cursors, let next)? = h.request(.channel(id: "u", .unread(after: after, limit: 100)),
                                                                     on: a).first
            else { Issue.record("no unread reply"); return }
            #expect(FrameCodec().encode(.unread(ref: "u", cursors, next: next)).count <= 2048)
            #expect(!cursors.isEmpty)
            seen += cursors.map(\.channel)
            after = next
        } while after != nil
        #expect(seen == channels)
    }
}
