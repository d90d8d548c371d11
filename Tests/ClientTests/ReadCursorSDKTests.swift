import AgentChatClient
import AgentChatProtocol
import Foundation
import Testing

/// Read cursors through the SDK against real brokers on one real Redis: one agent's connections on two broker
/// processes share a cursor, which only moves forward, outlives a killed broker, starts at the latest offset when the
/// agent joins, and is deleted from Redis when it leaves.
@Suite(.serialized) struct ReadCursorSDKTests {
    @Test func anAgentsConnectionsOnTwoBrokersShareOneCursorKeptInRedis() async throws {
        let cluster = try await ChannelCluster(brokers: 2)
        defer { cluster.stop() }
        let alice = try await cluster.agent("alice", on: 0)
        let bob = try await cluster.agent("bob", on: 0)
        let channel = try await alice.createChannel(name: "standup", members: [bob.identity.did])
        var offsets: [Int64] = []
        for n in 1...3 { offsets.append(try await alice.send(channel: channel.id, text: "note \(n)").offset) }
        // The same identity through the other broker process: a second instance of Bob.
        let bobElsewhere = try AgentChatClient(identity: bob.identity, server: cluster.url(1),
                                               configuration: testConfiguration())
        defer { Task { await bobElsewhere.close() } }
        try await bobElsewhere.connect()

        #expect(try await bob.unreadCounts() == [ReadCursor(channel: channel.id, name: "standup", read: 0,
                                                            offset: offsets[2], unread: 3)])
        let moved = try await bob.setReadCursor(channel: channel.id, offset: offsets[1])
        #expect(moved == ReadCursor(channel: channel.id, read: offsets[1], offset: offsets[2], unread: 1))
        #expect(try await bobElsewhere.unreadCounts().map(\.read) == [offsets[1]])
        // Never back, from either instance.
        #expect(try await bobElsewhere.setReadCursor(channel: channel.id, offset: offsets[0]).read == offsets[1])
        // Past the latest offset: refused, nothing changes.
        let error = await #expect(throws: AgentChatError.self) {
            try await bob.setReadCursor(channel: channel.id, offset: offsets[2] + 1)
        }
        #expect(error?.code == "invalid_field")
        #expect(try await bob.unreadCounts().map(\.read) == [offsets[1]])
        // Alice's cursor is hers: it stayed at 0.
        #expect(try await alice.unreadCounts().map(\.unread) == [3])
        // It outlives the broker process and the connection: broker 1 killed and replaced, Bob back through it.
        await bobElsewhere.close()
        try await cluster.restartBroker(1)
        let bobAgain = try AgentChatClient(identity: bob.identity, server: cluster.url(1),
                                           configuration: testConfiguration())
        defer { Task { await bobAgain.close() } }
        try await bobAgain.connect()
        #expect(try await bobAgain.unreadCounts().map(\.read) == [offsets[1]])

        // A newcomer starts at the latest offset; leaving deletes the cursor from Redis.
        let carol = try await cluster.agent("carol", on: 1)
        try await alice.invite(channel: channel.id, did: carol.identity.did)
        try await carol.join(channel: channel.id)
        #expect(try await carol.unreadCounts().map(\.read) == [offsets[2]])
        let cursorHolders = { () async throws -> Set<String> in
            let fields = try await runTool("/usr/bin/env", ["redis-cli", "-p", "\(cluster.redis.port)", "--raw",
                                                            "HKEYS", "agentchat:ch:{\(channel.id)}:cursors"])
            return Set(fields.split(separator: "\n").map(String.init))
        }
        #expect(try await cursorHolders() == [bob.identity.did.description, carol.identity.did.description])
        try await carol.leave(channel: channel.id)
        #expect(try await carol.unreadCounts() == [])
        await #expect(throws: AgentChatError.notFound) {
            try await carol.setReadCursor(channel: channel.id, offset: 0)
        }
        #expect(try await cursorHolders() == [bob.identity.did.description])
        await cluster.closeClients()
    }
}
