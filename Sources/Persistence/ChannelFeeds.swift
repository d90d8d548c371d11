import AgentChatCore
import AgentChatProtocol
import AgentChatRedis

/// Channel feeds over Redis pub/sub: one Redis channel per AgentChat channel (`RedisKeys.feed`), carrying the
/// stored items that `ChannelStore.append` publishes (from its Lua script) and `channel.event` frames. Loop-bound.
///
/// An item is published as the exact bytes clients are sent (`MessageItem`, starting with `{"offset":`); an event
/// as its `channel.event` frame, decoded again on arrival with the protocol's own codec.
///
/// On a Redis Cluster the feed is a sharded channel (`SSUBSCRIBE` on the master of the channel's slot, `SPUBLISH`
/// from the append script and here): its name carries the channel's hash tag, so it lives beside the channel's keys.
package final class ChannelFeeds: ChannelFeedBus {
    private let redis: RedisClient
    private let codec = FrameCodec()
    private var subscriptions: [FeedSubscription: RedisPubSub.Subscription] = [:]
    private var nextID: UInt64 = 1

    package init(redis: RedisClient) { self.redis = redis }

    package func subscribe(_ channel: ChannelID, onActive: @escaping () -> Void,
                           handler: @escaping (FeedMessage) -> Void) -> FeedSubscription
    {
        let codec = codec
        let subscription = redis.pubSub.subscribe(channel: RedisKeys.feed(channel).bytes, sharded: true,
                                                  onActive: onActive) { bytes in
            if let message = Self.decode(bytes, codec: codec) { handler(message) }
        }
        let id = FeedSubscription(channel: channel, id: nextID)
        nextID += 1
        subscriptions[id] = subscription
        return id
    }

    package func unsubscribe(_ subscription: FeedSubscription) {
        guard let redisSubscription = subscriptions.removeValue(forKey: subscription) else { return }
        redis.pubSub.unsubscribe(redisSubscription)
    }

    package func publish(_ event: ChannelEvent) {
        redis.send([redis.isCluster ? "SPUBLISH" : "PUBLISH", RedisKeys.feed(event.channel), RedisArgument(codec.encode(event.frame))]) { _ in }
    }

    /// A feed message from its bytes; nil for anything else (which nobody publishes).
    static func decode(_ bytes: [UInt8], codec: FrameCodec) -> FeedMessage? {
        if let item = ChannelItem(bytes: bytes) { return .item(item) }
        guard case .channelEvent(let channel, let name, let did, let epoch)? = try? codec.decodeServerFrame(bytes),
            let kind = ChannelEvent.Kind(rawValue: name)
        else { return nil }
        return .event(ChannelEvent(channel: channel, kind: kind, did: did, epoch: epoch))
    }
}
