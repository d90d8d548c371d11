import AgentChatCore
import AgentChatRedis

/// Tells every broker that a peek changed, over one Redis pub/sub channel (`agentchat:peeks`, carrying
/// `<channel>/<peek>`). A notice lost while a broker's pub/sub connection is down costs nothing lasting: viewers ask
/// again with `peek.status`, members are sent open peeks when they log in, and the peek itself is in Redis.
package final class PeekNotices: PeekNotifier {
    static let channel = "\(RedisKeys.prefix)peeks"
    private let redis: RedisClient
    private var subscription: RedisPubSub.Subscription?

    package init(redis: RedisClient) { self.redis = redis }

    package func listen(_ handler: @escaping (PeekKey) -> Void) {
        subscription = redis.pubSub.subscribe(channel: Self.channel) { bytes in
            if let key = PeekKey(String(decoding: bytes, as: UTF8.self)) { handler(key) }
        }
    }

    package func publish(_ key: PeekKey) {
        redis.send(["PUBLISH", RedisArgument(Self.channel), RedisArgument(key.description)]) { _ in }
    }
}

/// The sandbox gateway's PaymentIntents, one hash each, so that every broker sees the same ones.
package final class SandboxPayments: SandboxPaymentStoring {
    private let redis: RedisClient

    package init(redis: RedisClient) { self.redis = redis }

    static func key(_ id: String) -> RedisArgument { RedisArgument("\(RedisKeys.prefix)sandbox:pi:\(id)") }

    package func save(_ intent: PaymentIntent, completion: @escaping StoreCompletion<Void>) {
        var arguments: [RedisArgument] = ["HSET", Self.key(intent.id), "status", RedisArgument(intent.status),
                                          "amount", RedisArgument(intent.amount),
                                          "capturable", RedisArgument(intent.amountCapturable),
                                          "received", RedisArgument(intent.amountReceived),
                                          "secret", RedisArgument(intent.clientSecret)]
        for (name, value) in intent.metadata.sorted(by: { $0.key < $1.key }) {
            arguments += [RedisArgument("meta." + name), RedisArgument(value)]
        }
        redis.send(arguments) { result in completion(result.map { _ in () }.unavailableOnFailure) }
        redis.send(["EXPIRE", Self.key(intent.id), RedisArgument(8 * 24 * 3600)]) { _ in }
    }

    package func load(_ id: String, completion: @escaping StoreCompletion<PaymentIntent?>) {
        redis.send(["HGETALL", Self.key(id)]) { result in
            completion(result.unavailableOnFailure.map { value in
                let fields = value.stringPairs
                guard let status = fields["status"], let amount = fields["amount"].flatMap({ Int64($0) }),
                    let secret = fields["secret"]
                else { return nil }
                var metadata: [String: String] = [:]
                for (name, value) in fields where name.hasPrefix("meta.") { metadata[String(name.dropFirst(5))] = value }
                return PaymentIntent(id: id, status: status, amount: amount,
                                     amountCapturable: fields["capturable"].flatMap { Int64($0) } ?? 0,
                                     amountReceived: fields["received"].flatMap { Int64($0) } ?? 0,
                                     clientSecret: secret, metadata: metadata)
            })
        }
    }
}
