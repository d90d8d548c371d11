import AgentChatCore
import AgentChatLoop
import AgentChatProtocol
import AgentChatRedis
import Testing
import TestSupport

@testable import AgentChatPersistence

/// `ChannelStore` sends a loop turn's appends to a real Redis in `channel_append` calls of at most
/// `appendsPerCall`, flushed before any other command of the store, so one client's requests keep their order.
@Suite(.serialized) struct ChannelStoreBatchTests {
    @Test func aTurnsAppendsGoInFewCallsInOrderAndBeforeTheNextCommand() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let client = try await loop.submit {
            let client = RedisClient(loop: loop, endpoint: server.endpoint)
            client.start()
            return OnLoop(loop: loop, client)
        }
        let store = try await loop.submit { OnLoop(loop: loop, ChannelStore(redis: client.value)) }
        let command = try await loop.submit { OnLoop(loop: loop, client.value.connection) }
        defer { shutDown(loop, closing: [store, command, client]) }
        try await eventually("healthy", on: loop) { client.value.isHealthy }
        try await eventually("scripts loaded", on: loop) { client.value.scripts.sha(of: ChannelStore.append.name) != nil }

        let alice = DID(signingKey: [UInt8](repeating: 7, count: 32))
        let channels = [ChannelID(randomBytes: [UInt8](repeating: 1, count: 16)),
                        ChannelID(randomBytes: [UInt8](repeating: 2, count: 16))]
        for channel in channels {
            _ = try await send(command, ["HSET", RedisKeys.channel(channel), "epoch", "1", "keyedEpoch", "1"])
            _ = try await send(command, ["SADD", RedisKeys.members(channel), RedisArgument(alice.description)])
        }
        _ = try await send(command, ["CONFIG", "RESETSTAT"])

        // 40 appends over two channels in one loop turn, then a leave of the first channel in the same turn.
        let count = 40
        let outcomes = Collected<(Int, StoreResult<AppendOutcome>)>()
        let left: StoreResult<Int64> = try await loop.submitAndWait { complete in
            for n in 0..<count {
                let message = MessageSend(channel: channels[n % 2], epoch: 1, clientMessageID: "m\(n)",
                                          nonce: "AAAAAAAAAAAAAAAA", ciphertext: "Y2lwaGVy", signature: "c2ln")
                store.value.append(message, sender: alice,
                                   suffix: MessageItem.suffix(message, sender: alice, timestamp: 1_000 + Int64(n)),
                                   now: 1_000 + Int64(n)) { outcomes.items.append((n, $0)) }
            }
            store.value.leave(channels[0], alice) { complete(.success($0)) }
        }
        #expect((try? left.get()) != nil, "\(left)")
        try await eventually("every append answered", on: loop) { outcomes.items.count == count }

        // Every append was stored before the leave, in the order sent: offsets 1…20 in each channel.
        let answers = try await loop.submit { outcomes.items }
        #expect(answers.map(\.0) == Array(0..<count), "answered in order")
        for (n, outcome) in answers {
            #expect(outcome == .success(.stored(offset: Int64(n / 2 + 1), listed: false)), "append \(n): \(outcome)")
        }
        // 32 + 8 appends, then the leave: three script calls in all.
        let stats = try await send(command, ["INFO", "commandstats"])
        let line = String(decoding: stats.bytes ?? [], as: UTF8.self).split(separator: "\r\n")
            .first { $0.hasPrefix("cmdstat_evalsha:") } ?? ""
        #expect(ChannelStore.appendsPerCall == 32)
        #expect(line.hasPrefix("cmdstat_evalsha:calls=3,"), "\(line)")
    }
}
