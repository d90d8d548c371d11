import AgentChatCore
import AgentChatLoop
import AgentChatPersistence
import AgentChatProtocol
import AgentChatRedis
import ArgumentParser
import Foundation
import Logging

/// `agentchat-broker ledger`: every ledger entry of paid peeks as JSON lines on standard output, channel by channel,
/// oldest first within a channel. Reads the Redis the brokers use (`--redis-url`, or `--redis-sentinels` with
/// `--redis-master`, with `--redis-password-file`), or the embedded one of a running broker's data directory.
public struct LedgerCommand: ParsableCommand {
    public static let configuration = CommandConfiguration(
        commandName: "agentchat-broker ledger",
        abstract: "Export the peek ledger as JSON lines (one entry per line).",
        discussion: """
            Each line: {"channel","cents","id","kind","party","paymentIntent","peek","time"}. kind is capture, \
            release (the rest of an authorisation after a capture), cancel (an authorisation released without a \
            capture) or share (party: a member's DID, or "platform"). The shares of a capture sum to it.
            """)

    /// The Redis the brokers use, as for `backup` and `restore`: `--redis-url`, or the sentinels, with credentials;
    /// by default the embedded one of `--data-dir`.
    @OptionGroup var redis: RedisToolOptions

    public init() {}

    /// Prints the ledger. (Not `run()`: the executable calls this from its async top level.)
    public func export() async throws {
        let target: RedisTarget
        switch try redis.resolve() {
        case .target(let given): target = given
        case .embedded(let dataDirectory): target = RedisToolOptions.socket(in: dataDirectory)
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = .error
            return handler
        }
        let loop = EventLoop.startThread()
        defer { loop.stop() }
        let lines: Result<[String], StoreFailure> = try await loop.submitAndWait { complete in
            let redis = RedisClient(loop: loop, target: target, logger: Logger(label: "agentchat.redis"))
            redis.start()
            let store = PeekStore(redis: redis)
            var attempts = 0
            var pendingTimers: [LoopTimer] = []
            func read() {
                store.ledger { result in
                    if case .failure = result, attempts < 20 {
                        // The connection may still be coming up.
                        attempts += 1
                        let timer = LoopTimer(loop: loop) { read() }
                        timer.start(after: 100)
                        pendingTimers.append(timer)
                        return
                    }
                    redis.close()
                    complete(.success(result.map { $0.map(Self.line) }))
                }
            }
            read()
        }
        switch lines {
        case .success(let lines):
            for line in lines { print(line) }
        case .failure:
            throw ValidationError("could not read the ledger from \(target)")
        }
    }

    static func line(_ entry: LedgerEntry) -> String {
        var object: [String: JSONValue] = [
            "id": .string(entry.id), "channel": .string(entry.channel.rawValue), "peek": .string(entry.peek),
            "kind": .string(entry.kind), "cents": .number(Double(entry.cents)),
            "paymentIntent": .string(entry.paymentIntent), "time": .number(Double(entry.time)),
        ]
        if let party = entry.party { object["party"] = .string(party) }
        return String(decoding: JSONWriter.encode(.object(object)), as: UTF8.self)
    }
}
