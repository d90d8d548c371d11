import AgentChatProtocol
import Foundation
import Testing
import TestSupport
import WebSocketClient

/// A viewer: an unauthenticated connection reading `indicators` frames.
final class ViewerSession {
    let client: WebSocketClient
    private var nextID = 0

    init(port: Int) throws {
        client = try WebSocketClient.connect(port: port, subprotocols: ["agentchat.v1"])
        _ = try client.receiveText(timeout: 5)  // hello
    }

    func request(_ frame: JSONValue) throws -> JSONValue {
        nextID += 1
        guard case .object(var fields) = frame else { throw FixtureError.unexpected("not an object") }
        fields["id"] = .string("v\(nextID)")
        try client.send(text: String(decoding: JSONWriter.encode(.object(fields)), as: UTF8.self))
        while true {
            let reply = try JSONParser.parse(client.receiveText(timeout: 10))
            if reply["ref"]?.stringValue == "v\(nextID)" { return reply }
        }
    }

    /// Indicator updates for `channel` received within `seconds`, in order.
    func updates(for channel: String, during seconds: Double) -> [JSONValue] {
        var found: [JSONValue] = []
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            guard let text = try? client.receiveText(timeout: max(0.05, deadline.timeIntervalSinceNow)),
                let frame = try? JSONParser.parse(text), frame["type"] == "indicators"
            else { continue }
            found += (frame["channels"]?.arrayValue ?? []).filter { $0["id"]?.stringValue == channel }
        }
        return found
    }

    /// Waits until `channel`'s indicators satisfy `condition`; returns the last value seen.
    func waitFor(_ channel: String, timeout: Double = 15, _ condition: (JSONValue) -> Bool) -> JSONValue? {
        let deadline = Date().addingTimeInterval(timeout)
        var last: JSONValue?
        while Date() < deadline {
            for update in updates(for: channel, during: 0.3) {
                last = update
                if condition(update) { return update }
            }
        }
        return last
    }
}

@Suite(.serialized) struct IndicatorTests {
    private func listedChannel(_ owner: RawSession, members: [DID] = [], title: String = "Market makers")
        throws -> String
    {
        let id = try #require(owner.createChannel(members: members)["id"]?.stringValue)
        try owner.publishKeys(id)
        let listed = try owner.request(["type": "channel.listing", "channel": .string(id), "listed": true,
                                        "title": .string(title), "topic": "prices, hourly"])
        #expect(listed["type"] == "ok")
        return id
    }

    @Test func indicatorsAgreeAcrossBrokersAndCountAgentsNotSockets() throws {
        let cluster = try ClusterFixture(["--online-grace", "1.5", "--indicator-rate", "4"])
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: cluster.first.port)
        let bobAgent = TestAgent(name: "bob")
        var bob: RawSession? = try RawSession(agent: bobAgent, port: cluster.second.port)
        let id = try listedChannel(alice, members: [bob!.did])
        let viewer = try ViewerSession(port: cluster.second.port)
        let snapshot = try viewer.request(["type": "indicators.subscribe", "directory": true])
        let first = try #require(snapshot["channels"]?.arrayValue?.first { $0["id"]?.stringValue == id })
        #expect(first["title"] == "Market makers" && first["topic"] == "prices, hourly")
        #expect(first["members"] == 2 && first["online"] == 2 && first["messages"] == 0 && first["peeks"] == 0)
        #expect(first.objectValue?.keys.contains("sender") == false)

        // A second socket of Alice, on the other broker, does not count twice.
        let aliceAgain = try RawSession(agent: alice.agent, port: cluster.second.port, register: false)
        for _ in 0..<3 { _ = try alice.send(id, epoch: 1) }
        let busy = viewer.waitFor(id) { $0["messages"] == 3 }
        #expect(busy?["messages"] == 3 && busy?["messagesLastMinute"] == 3 && busy?["online"] == 2)
        let lastActivity = try #require(busy?["lastActivity"]?.integerValue)
        #expect(lastActivity % 10_000 == 0 && lastActivity > 0)

        // Bob drops: still online within the grace period, offline after it.
        bob?.client.disconnect()
        bob = nil
        #expect(viewer.updates(for: id, during: 0.8).allSatisfy { $0["online"] == 2 })
        #expect(viewer.waitFor(id) { $0["online"] == 1 }?["online"] == 1)
        // Alice closing one of two sockets changes nothing.
        aliceAgain.client.disconnect()
        #expect(viewer.updates(for: id, during: 2.5).allSatisfy { $0["online"] == 1 })
        // A reconnect inside the grace period never shows her offline.
        alice.client.disconnect()
        let reconnected = try RawSession(agent: alice.agent, port: cluster.first.port, register: false)
        defer { reconnected.client.disconnect() }
        let afterReconnect = viewer.updates(for: id, during: 2.5)
        #expect(afterReconnect.allSatisfy { $0["online"] == 1 }, "\(afterReconnect.map { $0["online"] })")
    }

    /// Messages are counted per second only while a channel is listed; listing counts the recent history afresh.
    @Test func listingAChannelCountsWhatWasSaidInTheLastMinuteBeforeIt() throws {
        let broker = try BrokerFixture()
        let alice = try RawSession(agent: TestAgent(name: "alice"), port: broker.port)
        let id = try #require(alice.createChannel()["id"]?.stringValue)
        try alice.publishKeys(id)
        for _ in 0..<4 { _ = try alice.send(id, epoch: 1) }
        #expect(try broker.redisCommand(["EXISTS", "agentchat:ch:{\(id)}:rate"]) == "0")
        let listed = try alice.request(["type": "channel.listing", "channel": .string(id), "listed": true,
                                        "title": "Late listing", "topic": ""])
        #expect(listed["type"] == "ok")
        _ = try alice.send(id, epoch: 1)
        let viewer = try ViewerSession(port: broker.port)
        let snapshot = try viewer.request(["type": "indicators.subscribe", "channels": [.string(id)]])
        let indicators = try #require(snapshot["channels"]?.arrayValue?.first)
        #expect(indicators["messages"] == 5 && indicators["messagesLastMinute"] == 5)
    }

    @Test func aBurstIsCoalescedAndTheLastUpdateIsExact() throws {
        let cluster = try ClusterFixture(["--indicator-rate", "4"])
        let alice = try RawSession(agent: TestAgent(), port: cluster.first.port)
        let id = try listedChannel(alice)
        let viewer = try ViewerSession(port: cluster.second.port)
        _ = try viewer.request(["type": "indicators.subscribe", "channels": [.string(id)]])
        let started = Date()
        let sender = Thread { for _ in 0..<1000 { _ = try? alice.send(id, epoch: 1) } }
        sender.start()
        var updates: [JSONValue] = []
        while !sender.isFinished { updates += viewer.updates(for: id, during: 0.25) }
        updates += viewer.updates(for: id, during: 1.5)
        let seconds = Date().timeIntervalSince(started)
        #expect(updates.count <= Int((seconds * 4).rounded(.up)) + 1, "\(updates.count) updates in \(seconds) s")
        #expect(updates.last?["messages"] == 1000)
        #expect(updates.last?["messagesLastMinute"] == 1000)
    }

    @Test func viewersSeeOnlyListedChannelsAndCannotActAsAgents() throws {
        let fixture = try BrokerFixture(["--viewer-connections-per-address", "2"])
        let alice = try RawSession(agent: TestAgent(), port: fixture.port)
        let hidden = try #require(alice.createChannel()["id"]?.stringValue)
        let listed = try listedChannel(alice, title: "Public room")
        let viewer = try ViewerSession(port: fixture.port)
        #expect(try viewer.request(["type": "indicators.subscribe", "channels": [.string(hidden)]])["code"] == "not_found")
        let directory = try viewer.request(["type": "directory.list"])
        #expect(directory["channels"]?.arrayValue?.compactMap { $0["id"]?.stringValue } == [listed])
        for frame: JSONValue in [["type": "channel.list"], ["type": "message.send"],
                                 ["type": "channel.describe", "channel": .string(listed)]]
        {
            #expect(try viewer.request(frame)["code"] == "not_authenticated")
        }
        // Unlisting removes it from the directory and tells subscribed viewers once.
        let watcher = try ViewerSession(port: fixture.port)
        _ = try watcher.request(["type": "indicators.subscribe", "channels": [.string(listed)]])
        #expect(try alice.request(["type": "channel.listing", "channel": .string(listed), "listed": false])["type"] == "ok")
        #expect(watcher.waitFor(listed) { $0["listed"] == false }?["listed"] == false)
        #expect(try watcher.request(["type": "directory.list"])["channels"] == [])
        // Only the owner lists.
        let bob = try RawSession(agent: TestAgent(), port: fixture.port)
        let open = try #require(bob.createChannel(open: true)["id"]?.stringValue)
        _ = try alice.request(["type": "channel.join", "channel": .string(open)])
        #expect(try alice.request(["type": "channel.listing", "channel": .string(open), "listed": true,
                                   "title": "mine"])["code"] == "forbidden")
        // A third viewer from this address is refused (the first two are still open).
        let third = try ViewerSession(port: fixture.port)
        #expect(try third.request(["type": "directory.list"])["code"] == "rate_limited")
        guard case .close(let code, _) = try third.client.receive(timeout: 5) else {
            Issue.record("expected a close")
            return
        }
        #expect(code == 1008)
    }

    @Test func theDirectoryIsOrderedByActivityAndPaged() throws {
        let fixture = try BrokerFixture()
        let alice = try RawSession(agent: TestAgent(), port: fixture.port)
        let ids = try (0..<3).map { try listedChannel(alice, title: "room \($0)") }
        Thread.sleep(forTimeInterval: 0.01)
        _ = try alice.send(ids[0], epoch: 1)
        let viewer = try ViewerSession(port: fixture.port)
        let page = try viewer.request(["type": "directory.list", "limit": 2])
        #expect(page["channels"]?.arrayValue?.first?["id"]?.stringValue == ids[0])
        #expect(page["next"] == 2)
        let rest = try viewer.request(["type": "directory.list", "limit": 2, "cursor": 2])
        #expect(rest["channels"]?.arrayValue?.count == 1 && rest["next"] == nil)
        // A full last page says it is the last.
        let whole = try viewer.request(["type": "directory.list", "limit": 3])
        #expect(whole["channels"]?.arrayValue?.count == 3 && whole["next"] == nil)
    }

    @Test func theViewerPageIsServedWithAStrictPolicy() throws {
        let fixture = try BrokerFixture()
        let page = try fixture.get("/")
        #expect(page.status == 200)
        #expect(page.headers["content-type"] == "text/html; charset=utf-8")
        let policy = try #require(page.headers["content-security-policy"])
        #expect(policy.contains("default-src 'none'") && policy.contains("script-src 'self'"))
        #expect(page.headers["cache-control"] == "no-cache")
        #expect(page.bodyText.contains("<html"))
        #expect(try fixture.get("/index.html").status == 200)
        #expect(try fixture.get("/../Package.swift").status == 404)
    }
}
