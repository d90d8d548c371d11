import AgentChatLoop
import AgentChatRedis
import Testing
import TestSupport

@testable import AgentChatPersistence

/// The message append script (`ChannelStore.append`) on a real Redis: its hot-path shortcuts keep the history
/// limits exact.
@Suite(.serialized) struct ChannelAppendScriptTests {

    /// Appends one item at `now` (ms) with history limits `maxCount` and `maxAge` (ms); returns the script's reply.
    private func append(_ scripts: OnLoop<RedisScripts>, now: Int64, maxCount: Int = 1000, maxAge: Int64,
                        id: String) async throws -> RedisValue {
        let arguments: [RedisArgument] = ["did:key:alice", "1", "{\"offset\":", RedisArgument(",\"id\":\"\(id)\"}"),
                                          RedisArgument(now), RedisArgument(maxCount), RedisArgument(now - maxAge),
                                          "300000", "feed"]
        let keys: [RedisArgument] = ["meta", "members", "log", RedisArgument("dedup:\(id)"), "rate"]
        let result = try await scripts.loop.submitAndWait { complete in
            scripts.value.call(ChannelStore.append.name, keys: keys, arguments: arguments) { complete(.success($0)) }
        }
        return try result.get()
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

            var refused = false
            do {
                let reply = try await append(scripts, now: 10_000, maxAge: 60_000, id: "x")
                if case .error = reply { refused = true }
            } catch {
                refused = true
            }
            #expect(refused, "the append should fail while the log is not a stream")
            #expect(try await send(connection, ["HGET", "meta", "seq"]) == .bulk(Array("0".utf8)))
            #expect(try await send(connection, ["EXISTS", "dedup:x"]) == .integer(0))

            _ = try await send(connection, ["DEL", "log"])
            let retried = try await append(scripts, now: 10_001, maxAge: 60_000, id: "x")
            guard case .array(let fields) = retried else { Issue.record("reply \(retried)"); return }
            #expect(fields.first == .bulk(Array("ok".utf8)))
            #expect(fields.dropFirst().first == .integer(1))
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
