import AgentChatProtocol
import Foundation
import Glibc

struct ResumeOptions {
    var backlog = 10_000
    var tries = 5
    var payload = 256
    /// Most `message.send` frames in flight (sent, not acknowledged) while the backlog is published.
    var window = 200
    /// Bound on one replay, seconds.
    var timeout = 120.0
}

extension Harness {
    /// `resume` (agentchat only; core NATS, MQTT QoS 0 and the mirror keep no history): an agent publishes a
    /// backlog of `backlog` messages to a channel (every one acknowledged, so stored), then, `tries` times, a new
    /// connection of a second member subscribes with `since: 0` and receives the whole history. Measured per try:
    /// from `channel.subscribe` sent to the first message and to the last, messages per `messages` frame, broker
    /// CPU and Redis commands; checked: every message exactly once and in order (sequence numbers 1…backlog).
    func runResume(_ o: ResumeOptions) throws -> RunResult {
        guard options.target == .agentchat else {
            throw HarnessError("resume: agentchat only (core NATS, MQTT QoS 0 and the mirror keep no history)")
        }
        log("registering 2 agents")
        let owner = AgentIdentity(), reader = AgentIdentity()
        try Registration.register(owner, name: "bench-owner", port: server.endpoint.port)
        try Registration.register(reader, name: "bench-reader", port: server.endpoint.port)
        publisher = try Publisher(loop: loop, server: server, payloadSize: o.payload, identity: owner)
        let created = try publisher!.request("c1", .create(name: "resume", open: true, members: []))
        guard let channel = created.channelDescription?.id.rawValue, let channelID = ChannelID(channel) else {
            throw HarnessError("channel not created")
        }
        // The reader joins before the keys are published (a join afterwards would start a new key epoch).
        let member = try Publisher(loop: loop, server: server, payloadSize: o.payload, identity: reader)
        _ = try member.request("join", .join(channelID))  // not "j1": the session answers that one itself
        member.connection.shutdown()
        try publisher!.publishKeys(channel: channel, runTag: runTag)

        var result = RunResult(workload: "resume", target: targetName, date: Self.isoNow(), command: options.command,
                               connections: 1, payloadBytes: o.payload, harnessProcesses: 1)
        // The backlog, at most `window` unacknowledged at a time.
        let acks0 = publisher!.acks
        let cpu0 = server.brokerCPU, redis0 = server.redisCommandCalls()
        let t0 = nowNs()
        var seq: UInt64 = 0
        while publisher!.acks - acks0 < o.backlog {
            while Int(seq) < o.backlog && Int(seq) - (publisher!.acks - acks0) < o.window {
                seq += 1
                publisher!.publish(MessageHeader(seq: seq, sentNs: nowNs(), step: 1))
            }
            loop.poll(timeoutMs: 5)
            guard publisher!.connection.isOpen else { throw HarnessError("publisher connection closed") }
            if publisher!.errors > 0 { throw HarnessError("the broker refused a message.send (\(publisher!.errors) error frames)") }
            if Double(nowNs() - t0) / 1e9 > o.timeout { throw HarnessError("backlog not acknowledged in \(o.timeout) s") }
        }
        let publishSeconds = Double(nowNs() - t0) / 1e9
        let publishCPU = server.brokerCPU - cpu0
        let publishRedis = RedisStats.delta(redis0, server.redisCommandCalls()).map { $0.values.reduce(0, +) }
        log(String(format: "backlog: %d messages in %.2f s (%.0f msg/s), broker CPU %.0f µs per message, %@ Redis commands per message",
                   o.backlog, publishSeconds, Double(o.backlog) / publishSeconds, publishCPU * 1e6 / Double(o.backlog),
                   Report.f(publishRedis.map { Double($0) / Double(o.backlog) }, 2) as NSString))

        var tries: [ResumeResult.Try] = []
        for t in 1...max(1, o.tries) {
            let context = SessionContext(connections: 1)
            let session = AgentChatSession(context: context, mode: .subscribe, identity: reader.signing, channel: channel)
            session.skipJoin = true
            session.since = 0
            let cpu0 = server.brokerCPU, redis0 = server.redisCommandCalls()
            guard let c = WebSocketConnection(index: 0, source: "127.0.0.2", host: server.subscriberEndpoint.host,
                                              port: server.subscriberEndpoint.port, path: "/",
                                              subprotocol: Wire.subprotocol, handler: session, loop: loop)
            else { throw HarnessError("resume: could not connect") }
            var first: UInt64?
            var all: UInt64?
            let backlog = UInt64(o.backlog)
            loop.run(seconds: o.timeout) {
                let got = context.recorder.stats(step: 1).received
                let now = nowNs()
                if first == nil && got > 0 { first = now }
                if got >= backlog { all = now; return true }
                return context.failed > 0  // a close counts as a failure (isOpen is false while connecting)
            }
            // Anything extra (a duplicate) would arrive right behind the last message.
            loop.run(seconds: 0.2) { false }
            c.shutdown()
            let s = context.recorder.stats(step: 1)
            let last = context.recorder.lastSeq[0]
            let sent = session.subscribeSentNs
            let ms = { (x: UInt64?) in x.map { Double($0 &- sent) / 1e6 } }
            let redis = RedisStats.delta(redis0, server.redisCommandCalls()).map { $0.values.reduce(0, +) }
            let tr = ResumeResult.Try(firstMs: ms(first), allMs: ms(all), received: s.received,
                                      lost: backlog - min(backlog, last) + s.gaps, duplicated: s.duplicates,
                                      gaps: s.gaps, frames: s.frames,
                                      messagesPerFrame: s.frames > 0 ? Double(s.received) / Double(s.frames) : nil,
                                      brokerCPUSeconds: server.brokerCPU - cpu0, redisCommands: redis)
            if let f = context.firstFailure { result.notes.append("try \(t): \(f)") }
            log(String(format: "resume try %d: first %@ ms, all %@ ms, received %d, lost %d, duplicated %d, gaps %d, %@ msgs/frame, broker CPU %.0f ms, Redis commands %@",
                       t, Report.f(tr.firstMs, 2) as NSString, Report.f(tr.allMs, 1) as NSString, tr.received, tr.lost,
                       tr.duplicated, tr.gaps, Report.f(tr.messagesPerFrame, 1) as NSString, tr.brokerCPUSeconds * 1000,
                       (redis.map(String.init) ?? "—") as NSString))
            tries.append(tr)
        }
        var r = ResumeResult(backlog: o.backlog, payloadBytes: o.payload, publishSeconds: publishSeconds,
                             publishMessagesPerSecond: Double(o.backlog) / publishSeconds,
                             publishBrokerCPUMicrosecondsPerMessage: publishCPU * 1e6 / Double(o.backlog),
                             publishRedisCommandsPerMessage: publishRedis.map { Double($0) / Double(o.backlog) },
                             tries: tries)
        r.firstMs = median(tries.compactMap(\.firstMs))
        r.allMs = median(tries.compactMap(\.allMs))
        r.messagesPerFrame = median(tries.compactMap(\.messagesPerFrame))
        r.redisCommandsPerMessage = median(tries.compactMap { $0.redisCommands.map { Double($0) / Double(o.backlog) } })
        r.brokerCPUMillisecondsPerReplay = median(tries.map { $0.brokerCPUSeconds * 1000 })
        result.resume = r
        result.lost = tries.map(\.lost).reduce(0, +)
        result.duplicated = tries.map(\.duplicated).reduce(0, +)
        if tries.contains(where: { $0.allMs == nil }) { result.notes.append("a replay did not complete") }
        result.notes.append("acks \(publisher!.acks) of \(seq) sent; error frames \(publisher!.errors)")
        return result
    }
}
