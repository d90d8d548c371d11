/// Decides when a pub/sub connection must actually SUBSCRIBE or UNSUBSCRIBE, from local subscriber counts and the
/// connection's state. Pure: no I/O, every edge case unit-testable.
///
/// Rules: the first local subscriber of a channel subscribes it, the last one unsubscribes it, both only while
/// connected; on (re)connection every channel with subscribers is subscribed again. Commands on one connection are
/// answered in order, so a quick subscribe / unsubscribe / subscribe ends in the right server state without waiting
/// for confirmations; confirmations only say when messages will flow (`isActive`).
public struct SubscriptionStateMachine<Channel: Hashable & Sendable>: Sendable {
    public enum Action: Hashable, Sendable {
        case none
        case subscribe(Channel)
        case unsubscribe(Channel)
    }

    private struct Entry: Sendable {
        var subscribers: Int
        var confirmed: Bool
    }

    private var entries: [Channel: Entry] = [:]
    public private(set) var isConnected = false

    public init() {}

    /// A local subscriber joins `channel`.
    public mutating func addSubscriber(to channel: Channel) -> Action {
        if var entry = entries[channel] {
            entry.subscribers += 1
            entries[channel] = entry
            return .none
        }
        entries[channel] = Entry(subscribers: 1, confirmed: false)
        return isConnected ? .subscribe(channel) : .none
    }

    /// A local subscriber leaves `channel`; unknown channels are ignored.
    public mutating func removeSubscriber(from channel: Channel) -> Action {
        guard var entry = entries[channel] else { return .none }
        entry.subscribers -= 1
        if entry.subscribers > 0 {
            entries[channel] = entry
            return .none
        }
        entries[channel] = nil
        return isConnected ? .unsubscribe(channel) : .none
    }

    /// The connection is up: returns every channel to subscribe.
    public mutating func connected() -> [Channel] {
        isConnected = true
        for key in entries.keys { entries[key]?.confirmed = false }
        return Array(entries.keys)
    }

    /// The connection dropped: the server forgot every subscription.
    public mutating func disconnected() {
        isConnected = false
        for key in entries.keys { entries[key]?.confirmed = false }
    }

    /// The server confirmed a SUBSCRIBE of `channel`.
    public mutating func subscribeConfirmed(_ channel: Channel) {
        guard isConnected else { return }
        entries[channel]?.confirmed = true
    }

    /// The server confirmed an UNSUBSCRIBE of `channel` (a later SUBSCRIBE may already be on its way).
    public mutating func unsubscribeConfirmed(_ channel: Channel) {
        entries[channel]?.confirmed = false
    }

    /// Local subscribers of `channel`.
    public func subscriberCount(of channel: Channel) -> Int { entries[channel]?.subscribers ?? 0 }

    /// Whether the server confirmed the subscription on the current connection.
    public func isActive(_ channel: Channel) -> Bool { entries[channel]?.confirmed ?? false }

    /// Channels with at least one local subscriber.
    public var channels: [Channel] { Array(entries.keys) }
}
