import AgentChatLoop
import AgentChatRedis
import Testing
import TestSupport

@testable import AgentChatPersistence

/// The message append script (`ChannelStore.append`) on a real Redis: its hot-path shortcuts keep the history
/// limits exact.
@Suite(.serialized) struct ChannelAppendScriptTests {

    /// One append's five keys and five arguments (the layout of `channel_append`), for `channel` (a key prefix).
    private static func message(_ channel: String = "", id: String, now: Int64, sender: String = "did:key:alice",
                                epoch: String = "1") -> (keys: [RedisArgument], arguments: [RedisArgument]) {
        ([RedisArgument(channel + "meta"), RedisArgument(channel + "members"), RedisArgument(channel + "log"),
          RedisArgument(channel + "dedup:\(id)"), RedisArgument(channel + "rate")],
         [RedisArgument(sender), RedisArgument(epoch), RedisArgument(",\"id\":\"\(id)\"}"), RedisArgument(now),
          RedisArgument(channel + "feed")])
    }

    /// Calls the script with `messages` under history limits `maxCount` and `maxAge` (ms); one reply per message.
    private func call(_ scripts: OnLoop<RedisScripts>, _ messages: [(keys: [RedisArgument], arguments: [RedisArgument])],
                      maxCount: Int = 1000, maxAge: Int64) async throws -> [RedisValue] {
        let arguments: [RedisArgument] = ["{\"offset\":", RedisArgument(maxCount), RedisArgument(maxAge), "300000"]
            + messages.flatMap(\.arguments)
        let result = try await scripts.loop.submitAndWait { complete in
            scripts.value.call(ChannelStore.append.name, keys: messages.flatMap(\.keys), arguments: arguments) {
                complete(.success($0))
            }
        }
        let replies = try result.get().array
        #expect(replies?.count == messages.count, "\(String(describing: replies))")
        return replies ?? []
    }

    /// Appends one item at `now` (ms) with history limits `maxCount` and `maxAge` (ms); returns its reply.
    private func append(_ scripts: OnLoop<RedisScripts>, now: Int64, maxCount: Int = 1000, maxAge: Int64,
                        id: String) async throws -> RedisValue {
        try await call(scripts, [Self.message(id: id, now: now)], maxCount: maxCount, maxAge: maxAge).first ?? .null
    }

    /// A real Redis with the append script loaded; `body` gets the connection and the scripts.
    private func withAppendScript(_ body: (OnLoop<RedisConnection>, OnLoop<RedisScripts>) async throws -> Void)
        async throws
    {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let (connection, scripts) = try await makeScripts(loop, server.endpoint, registering: [ChannelStore.append])
        defer { shutDown(loop, closing: [scripts, connection]) }
        try await waitConnected(connection)
        try await eventually("script loaded", on: loop) { scripts.value.sha(of: ChannelStore.append.name) != nil }
        try await body(connection, scripts)
    }

    @Test func ageTrimDropsExactlyTheEntriesOlderThanTheLimitAndCountTrimStillApplies() async throws {
        try await withAppendScript { connection, scripts in
            _ = try await send(connection, ["HSET", "meta", "epoch", "1", "keyedEpoch", "1"])
            _ = try await send(connection, ["SADD", "members", "did:key:alice"])

            func offsets() async throws -> [String] {
                guard case .array(let entries) = try await send(connection, ["XRANGE", "log", "-", "+"]) else {
                    return []
                }
                return entries.compactMap { entry -> String? in
                    guard case .array(let parts) = entry, case .bulk(let id)? = parts.first else { return nil }
                    return String(decoding: id, as: UTF8.self)
                }
            }

            // Ages 1 s apart under a 2.5 s limit: each append keeps the entries of the last 2.5 s.
            for (index, now) in [10_000, 11_000, 12_000, 13_000, 14_000].enumerated() {
                let reply = try await append(scripts, now: Int64(now), maxAge: 2_500, id: "m\(index)")
                guard case .array(let fields) = reply else { Issue.record("reply \(reply)"); return }
                #expect(fields.first == .bulk(Array("ok".utf8)))
                #expect(fields.dropFirst().first == .integer(Int64(index + 1)))
            }
            #expect(try await offsets() == ["0-3", "0-4", "0-5"])
            // A long pause: everything before the new one goes, in one append.
            _ = try await append(scripts, now: 60_000, maxAge: 2_500, id: "m5")
            #expect(try await offsets() == ["0-6"])
            // Many within the limit: nothing goes by age; the count limit trims from the front, and the age trim
            // afterwards still sees the true oldest entry.
            for index in 0..<10 {
                _ = try await append(scripts, now: 60_100 + Int64(index), maxCount: 4, maxAge: 2_500, id: "n\(index)")
            }
            #expect(try await offsets() == ["0-13", "0-14", "0-15", "0-16"])
            _ = try await append(scripts, now: 62_608, maxCount: 4, maxAge: 2_500, id: "late")
            #expect(try await offsets() == ["0-15", "0-16", "0-17"])  // 14 (60,107 ms) is older than 60,108
            // Activity is counted only for listed channels; then the counter expires (set once per second).
            #expect(try await send(connection, ["EXISTS", "rate"]) == .integer(0))
            _ = try await send(connection, ["HSET", "meta", "listed", "1"])
            _ = try await append(scripts, now: 62_700, maxCount: 4, maxAge: 2_500, id: "listed")
            guard case .integer(let ttl) = try await send(connection, ["PTTL", "rate"]) else {
                Issue.record("no ttl")
                return
            }
            #expect(ttl > 0 && ttl <= 120_000)
            #expect(try await send(connection, ["HGET", "rate", "62"]) == .bulk(Array("1".utf8)))
        }
    }

    /// A failed `XADD` (here: the log's key holds a string) stores nothing: no offset is used
    /// up (no gap), and the client message id is not remembered, so the retry is stored rather than answered as a
    /// duplicate of an offset that does not exist.
    @Test func aFailedAppendLeavesNoGapAndNoDedupEntry() async throws {
        try await withAppendScript { connection, scripts in
            _ = try await send(connection, ["HSET", "meta", "epoch", "1", "keyedEpoch", "1", "seq", "0"])
            _ = try await send(connection, ["SADD", "members", "did:key:alice"])
            _ = try await send(connection, ["SET", "log", "not a stream"])

            let reply = try await append(scripts, now: 10_000, maxAge: 60_000, id: "x")
            #expect(reply.array?.first == .bulk(Array("failed".utf8)),
                    "the append should fail while the log is not a stream: \(reply)")
            #expect(try await send(connection, ["HGET", "meta", "seq"]) == .bulk(Array("0".utf8)))
            #expect(try await send(connection, ["EXISTS", "dedup:x"]) == .integer(0))

            _ = try await send(connection, ["DEL", "log"])
            let retried = try await append(scripts, now: 10_001, maxAge: 60_000, id: "x")
            guard case .array(let fields) = retried else { Issue.record("reply \(retried)"); return }
            #expect(fields.first == .bulk(Array("ok".utf8)))
            #expect(fields.dropFirst().first == .integer(1))
        }
    }

    /// Several appends in one call, over two channels: each gets its own answer (stored, duplicate of one earlier
    /// in the same call, refusals, a failed `XADD`), and one that fails does not stop those after it.
    @Test func eachAppendOfABatchIsItsOwnStep() async throws {
        try await withAppendScript { connection, scripts in
            for channel in ["a:", "b:"] {
                _ = try await send(connection, ["HSET", RedisArgument(channel + "meta"), "epoch", "2", "keyedEpoch", "2"])
                _ = try await send(connection, ["SADD", RedisArgument(channel + "members"), "did:key:alice"])
            }
            _ = try await send(connection, ["HSET", "c:meta", "epoch", "1", "keyedEpoch", "1"])
            _ = try await send(connection, ["SADD", "c:members", "did:key:alice"])
            _ = try await send(connection, ["SET", "c:log", "not a stream"])
            let replies = try await call(scripts, [
                Self.message("a:", id: "1", now: 1_000, epoch: "2"),
                Self.message("b:", id: "1", now: 1_000, epoch: "2"),
                Self.message("a:", id: "1", now: 1_001, epoch: "2"),  // the same client id again: a duplicate
                Self.message("a:", id: "2", now: 1_001, sender: "did:key:mallory", epoch: "2"),
                Self.message("a:", id: "3", now: 1_001, epoch: "1"),  // a stale epoch
                Self.message("c:", id: "1", now: 1_002),  // XADD fails
                Self.message("a:", id: "4", now: 1_003, epoch: "2"),
            ], maxAge: 60_000)
            let statuses = replies.map { $0.array?.first.flatMap(\.bytes).map { String(decoding: $0, as: UTF8.self) } }
            #expect(statuses == ["ok", "ok", "duplicate", "not_member", "stale_epoch", "failed", "ok"])
            #expect(replies.map { $0.array?.dropFirst().first } == [
                .integer(1), .integer(1), .integer(1), nil, .integer(2), replies[5].array?[1], .integer(2),
            ])
            guard case .array(let entries) = try await send(connection, ["XRANGE", "a:log", "-", "+"]) else {
                Issue.record("no log")
                return
            }
            #expect(entries.count == 2)
            #expect(try await send(connection, ["HGET", "a:meta", "seq"]) == .bulk(Array("2".utf8)))
            #expect(try await send(connection, ["EXISTS", "c:dedup:1"]) == .integer(0))
            #expect(try await send(connection, ["HGET", "c:meta", "seq"]) == .null)
        }
    }

    /// The cluster variant is the same script publishing to the channel's shard (`SPUBLISH`): a classic `PUBLISH`
    /// would never reach the feeds, which a cluster broker subscribes with `SSUBSCRIBE`. (A change of the script's
    /// `PUBLISH` line once left the replacement matching nothing; RedisClusterReshardTests caught it, slowly.)
    @Test func theClusterVariantPublishesToTheShard() {
        #expect(ChannelStore.shardedAppend.name == ChannelStore.append.name)
        #expect(ChannelStore.shardedAppend.source.contains("redis.call('SPUBLISH', "))
        #expect(!ChannelStore.shardedAppend.source.contains("redis.call('PUBLISH', "))
        #expect(ChannelStore.shardedAppend.source.replacing("SPUBLISH", with: "PUBLISH") == ChannelStore.append.source)
    }
}
