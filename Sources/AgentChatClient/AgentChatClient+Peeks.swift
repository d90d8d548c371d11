import AgentChatCrypto
import AgentChatProtocol
import Foundation

/// What the SDK does, by itself, with a paid peek of one of the agent's channels (docs/PROTOCOL.md, "Paid peeks").
///
/// The default is ``grant``: an agent that does nothing lets viewers who pay read its listed channels for a while.
public enum PeekPolicy: String, Sendable, CaseIterable {
    /// The default. Refuse nothing; when the peek reaches `awaiting_grant` (nobody refused within the refusal
    /// window) wrap the key of the channel's current epoch for the viewer's key, sign it and send `peek.grant`.
    case grant
    /// Refuse every pending peek at once (`peek.refuse`): the viewer pays the 100-cent refusal fee, of which the
    /// members share 70%. Never grants.
    case refuse
    /// Ask the application: the decider set with ``AgentChatClient/setPeekDecider(_:)`` is called when the peek is
    /// `pending`, and has until the refusal window closes to answer (the application may also call
    /// ``AgentChatClient/refusePeek(channel:peek:)`` itself, e.g. from ``AgentChatClient/peeks()``). No decision in
    /// time counts as ``PeekDecision/grant``.
    case ask
}

/// An application's answer under ``PeekPolicy/ask``.
public enum PeekDecision: String, Sendable {
    case grant
    case refuse
}

/// Decides a pending peek under ``PeekPolicy/ask``. Called once per peek per client, off the actor; an answer after
/// the refusal window has closed is too late to refuse (the SDK then only refrains from granting itself).
public typealias PeekDecider = @Sendable (PeekView) async -> PeekDecision

/// One element of ``AgentChatClient/peekEvents()``: the broker's news about a peek, and what the SDK did about it.
public enum PeekEvent: Sendable, Equatable {
    /// A `peek.update`: the peek is `pending`, `awaiting_grant`, `capturing`, `cancelling`, `active`, `refused`,
    /// `ended`, `cancelled` or `failed` (also sent at login for peeks pending or awaiting a grant).
    case update(PeekView)
    /// This client refused the peek (by its policy, its decider, or ``AgentChatClient/refusePeek(channel:peek:)``).
    case refused(channel: ChannelID, peek: String)
    /// This client's grant for `epoch` was accepted (the first grant of a peek is the one the viewer gets).
    case granted(channel: ChannelID, peek: String, epoch: Int64)
    /// The peek ended and this client moved the channel to the new epoch `epoch` (with its keys published), so
    /// the key the viewer holds opens nothing sent from now on.
    case rotated(channel: ChannelID, peek: String, epoch: Int64)
    /// Something the SDK tried by itself failed (a refusal, a grant, the rotation after the end).
    case failed(channel: ChannelID, peek: String, AgentChatError)
}

/// The answer to ``AgentChatClient/earnings(limit:)``.
public struct Earnings: Sendable, Equatable {
    /// The sum of every share this agent was credited, in cents.
    public let balanceCents: Int64
    /// The latest shares, newest first.
    public let entries: [EarningsEntry]
}

extension PeekView {
    /// Whether the peek can change no more: `refused`, `ended`, `cancelled` or `failed`.
    public var isFinal: Bool { ["refused", "ended", "cancelled", "failed"].contains(phase) }
}

/// What the client remembers about one peek it was told about.
struct PeekRecord: Sendable {
    let channel: ChannelID
    let order: Int
    var phase = ""
    /// This client refused it, or decided to: it never grants it.
    var refusedHere = false
    var refusalStarted = false
    var decisionStarted = false
    var grantStarted = false
    /// The epoch this client wrapped for the viewer.
    var grantedEpoch: Int64?
    /// The channel's epoch when the peek was seen `active` (for members that did not grant).
    var activeEpoch: Int64?
    var rotationStarted = false
}

/// The actor's peek state (isolated to the ``AgentChatClient`` actor).
struct PeekClientState: Sendable {
    var defaultPolicy: PeekPolicy
    var channelPolicies: [ChannelID: PeekPolicy] = [:]
    var decider: PeekDecider?
    var records: [String: PeekRecord] = [:]
    var nextOrder = 0
    /// At most this many peeks are remembered (the oldest are forgotten first; final ones go at once).
    static let maxRecords = 1000

    init(defaultPolicy: PeekPolicy) { self.defaultPolicy = defaultPolicy }

    mutating func record(_ peek: String, channel: ChannelID) -> PeekRecord {
        if let record = records[peek] { return record }
        nextOrder += 1
        if records.count >= Self.maxRecords, let oldest = records.min(by: { $0.value.order < $1.value.order }) {
            records[oldest.key] = nil
        }
        return PeekRecord(channel: channel, order: nextOrder)
    }
}

/// Resumes a continuation once, from whichever side comes first.
private final class FirstAnswer<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var continuation: CheckedContinuation<Value, Never>?

    init(_ continuation: CheckedContinuation<Value, Never>) { self.continuation = continuation }

    func resume(_ value: Value) {
        let waiting = lock.withLock { () -> CheckedContinuation<Value, Never>? in
            defer { continuation = nil }
            return continuation
        }
        waiting?.resume(returning: value)
    }
}

extension AgentChatClient {
    // MARK: - Streams

    /// Peeks of this agent's channels as the broker reports them (`peek.update`): `pending`, `awaiting_grant`,
    /// `active`, `ended`, ... including those sent at login (subscribe before ``connect()`` to see those).
    public nonisolated func peeks() -> AsyncStream<PeekView> { peekViews.subscribe() }

    /// ``peeks()`` plus what the SDK did by itself: refusals, grants, rotations after a peek ended, failures.
    public nonisolated func peekEvents() -> AsyncStream<PeekEvent> { peekNews.subscribe() }

    // MARK: - Policy

    /// The policy for every channel without its own (initially ``Configuration/peekPolicy``, default ``PeekPolicy/grant``).
    public var defaultPeekPolicy: PeekPolicy { peekState.defaultPolicy }

    /// Sets the policy for every channel without its own.
    public func setPeekPolicy(_ policy: PeekPolicy) { peekState.defaultPolicy = policy }

    /// Sets `channel`'s own policy; nil makes it follow the default again.
    public func setPeekPolicy(_ policy: PeekPolicy?, for channel: ChannelID) {
        peekState.channelPolicies[channel] = policy
    }

    /// The policy that applies to `channel`.
    public func peekPolicy(for channel: ChannelID) -> PeekPolicy {
        peekState.channelPolicies[channel] ?? peekState.defaultPolicy
    }

    /// The decider asked under ``PeekPolicy/ask`` (nil: no one is asked, so peeks are granted unless the
    /// application calls ``refusePeek(channel:peek:)`` in time).
    public func setPeekDecider(_ decider: PeekDecider?) { peekState.decider = decider }

    // MARK: - Requests

    /// Refuses a pending peek of one of this agent's channels (`peek.refuse`): the viewer pays the refusal fee.
    /// This client will not grant it either.
    ///
    /// - Throws: `peek_not_refusable` after the refusal window or in another phase (another member may have
    ///   refused first), `not_found` when the agent is not a member.
    public func refusePeek(channel: ChannelID, peek: String) async throws(AgentChatError) {
        var record = peekState.record(peek, channel: channel)
        record.refusedHere = true
        peekState.records[peek] = record
        let reply = try await request(.peek(id: nil, .refuse(channel: channel, peek: peek)))
        guard case .ok = reply else { throw .protocolViolation("expected ok, got \(reply.type.rawValue)") }
        peekNews.yield(.refused(channel: channel, peek: peek))
    }

    /// Grants a peek now, whatever the policy: wraps the key of the channel's current epoch (fetching or making it
    /// as ``send(channel:text:)`` does) for the peek's viewer key, signs it and sends `peek.grant`. Returns the
    /// grant sent. The SDK does this by itself under ``PeekPolicy/grant`` and ``PeekPolicy/ask``.
    ///
    /// - Throws: `peek_not_grantable` before the refusal window has passed or once a grant was taken (another
    ///   member may have granted first), `invalid_field`, `not_found`, `not_connected`.
    @discardableResult
    public func grantPeek(_ peek: PeekView) async throws(AgentChatError) -> PeekGrant {
        let (epoch, key) = try await sendingKey(peek.channel, refresh: true)
        let grant: PeekGrant
        do {
            grant = try PeekKeyWrap.wrap(channelKey: key, channel: peek.channel, peek: peek.id, epoch: epoch,
                                         viewerKey: peek.viewerKey, signer: identity.signingKeyPair)
        } catch {
            throw AgentChatError(code: "crypto_error", category: .invalidArgument,
                                 message: "cannot wrap the key for the viewer: \(error)")
        }
        var record = peekState.record(peek.id, channel: peek.channel)
        record.grantStarted = true
        record.grantedEpoch = epoch
        peekState.records[peek.id] = record
        let reply = try await request(.peek(id: nil, .grant(channel: peek.channel, peek: peek.id, grant: grant)))
        guard case .ok = reply else { throw .protocolViolation("expected ok, got \(reply.type.rawValue)") }
        peekNews.yield(.granted(channel: peek.channel, peek: peek.id, epoch: epoch))
        return grant
    }

    /// This agent's balance and latest shares of peek revenue, newest first (`limit` 1–500).
    public func earnings(limit: Int = 50) async throws(AgentChatError) -> Earnings {
        guard (1...500).contains(limit) else { throw .invalidArgument("limit is 1 to 500") }
        let reply = try await request(.peek(id: nil, .earnings(limit: limit)))
        guard case .earnings(_, let balance, let entries) = reply else {
            throw .protocolViolation("expected earnings, got \(reply.type.rawValue)")
        }
        return Earnings(balanceCents: balance, entries: entries)
    }

    // MARK: - Frames (called by the actor's frame handler, in frame order)

    /// A `peek.update`: publishes it, then acts on it according to the channel's policy.
    func routePeekFrame(_ frame: ServerFrame) {
        guard case .peekUpdate(let view) = frame else { return }
        peekViews.yield(view)
        peekNews.yield(.update(view))
        var record = peekState.record(view.id, channel: view.channel)
        record.phase = view.phase
        let policy = peekPolicy(for: view.channel)
        switch view.phase {
        case "pending":
            switch policy {
            case .refuse where !record.refusalStarted:
                record.refusalStarted = true
                record.refusedHere = true
                Task { await self.refuseByPolicy(view) }
            case .ask where !record.decisionStarted && !record.refusedHere:
                record.decisionStarted = true
                if let decider = peekState.decider { Task { await self.ask(decider, about: view) } }
            default:
                break
            }
        case "awaiting_grant":
            if policy == .refuse { record.refusedHere = true }
            if !record.refusedHere && !record.grantStarted {
                record.grantStarted = true
                Task { await self.grantByPolicy(view) }
            }
        case "active":
            if record.grantedEpoch == nil { Task { await self.noteActiveEpoch(view) } }
        case "ended":
            if !record.rotationStarted {
                record.rotationStarted = true
                let bound = record.grantedEpoch ?? record.activeEpoch
                Task { await self.rotateAfterPeek(view, epochBound: bound) }
            }
        default:
            break
        }
        // Final peeks are forgotten (an ended one once its rotation has started).
        peekState.records[view.id] = view.isFinal ? nil : record
    }

    // MARK: - What the SDK does by itself

    private func refuseByPolicy(_ view: PeekView) async {
        do throws(AgentChatError) {
            try await waitForConnection()
            try await refusePeek(channel: view.channel, peek: view.id)
        } catch where error.code == "peek_not_refusable" {
            // Another member refused first, or the window closed: nothing to do.
        } catch {
            peekNews.yield(.failed(channel: view.channel, peek: view.id, error))
        }
    }

    private func ask(_ decider: @escaping PeekDecider, about view: PeekView) async {
        // Until shortly before the refusal window closes (the deadline is the broker's clock).
        let remaining = Double((view.deadline ?? Self.nowMilliseconds()) - Self.nowMilliseconds()) / 1000 - 0.25
        let seconds = min(max(remaining, 0), 3600)
        let decision: PeekDecision? = await withCheckedContinuation { continuation in
            let answer = FirstAnswer<PeekDecision?>(continuation)
            Task { answer.resume(await decider(view)) }
            Task {
                try? await Task.sleep(for: .seconds(seconds))
                answer.resume(nil)
            }
        }
        guard decision == .refuse else { return }  // grant, or no decision in time: granted at awaiting_grant
        if var record = peekState.records[view.id] {
            if record.grantStarted { return }  // too late: this client granted already
            record.refusedHere = true
            peekState.records[view.id] = record
        }
        await refuseByPolicy(view)
    }

    private func grantByPolicy(_ view: PeekView) async {
        do throws(AgentChatError) {
            try await waitForConnection()
            try await grantPeek(view)
        } catch where error.code == "peek_not_grantable" {
            // Another member granted first (or the window closed).
        } catch {
            if error.category == .network || error.code == AgentChatError.Codes.notConnected {
                // Let the update the broker sends again at the next login try once more.
                peekState.records[view.id]?.grantStarted = false
            }
            peekNews.yield(.failed(channel: view.channel, peek: view.id, error))
        }
    }

    /// For a member that did not grant: the channel's epoch when the peek became active, the newest the viewer can
    /// hold a key for.
    private func noteActiveEpoch(_ view: PeekView) async {
        guard let description = try? await describe(channel: view.channel) else { return }
        if peekState.records[view.id] != nil { peekState.records[view.id]?.activeEpoch = description.epoch }
    }

    /// After a peek ended: moves the channel to a new epoch (rotate, then publish its keys) unless it has moved past
    /// the epoch the viewer may hold already. Every member's SDK does this, so they take turns: in the bytewise
    /// order of their DIDs, 0.4 s apart (at most 4 s), each rotating only if the channel is still on that epoch —
    /// the granted one when this client granted, else the one seen when the peek was active, else the one at the
    /// end. Each member rotates at most once per peek, so it converges, usually after one rotation; key
    /// publication tolerates `keys_exist` and `stale_epoch`.
    private func rotateAfterPeek(_ view: PeekView, epochBound: Int64?) async {
        do throws(AgentChatError) {
            try await waitForConnection()
            var current = try await describe(channel: view.channel)
            let bound = epochBound ?? current.epoch
            let turn = current.members.map(\.did.description).sorted().firstIndex(of: identity.did.description) ?? 0
            if turn > 0 {
                try? await Task.sleep(for: .milliseconds(400 * min(turn, 10) + Int.random(in: 0...100)))
                try await waitForConnection()
                current = try await describe(channel: view.channel)
            }
            if current.epoch > bound { return }
            try await rotate(channel: view.channel)
            let epoch: Int64
            if let keyed = channelState.sendEpoch[view.channel] {
                epoch = keyed
            } else {
                epoch = try await describe(channel: view.channel).epoch
            }
            peekNews.yield(.rotated(channel: view.channel, peek: view.id, epoch: epoch))
        } catch {
            peekNews.yield(.failed(channel: view.channel, peek: view.id, error))
        }
    }
}
