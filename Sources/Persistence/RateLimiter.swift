import AgentChatCore
import AgentChatRedis

/// Token buckets kept in Redis, so a limit holds across every broker process. Loop-bound.
package final class RateLimiter: RateLimiting {
    private let redis: RedisClient

    /// Refills at `ARGV[1]` tokens per minute up to `ARGV[2]`, on Redis' clock, and takes one if it can.
    static let script = RedisScript(name: "rate_limit", source: """
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        local rate = tonumber(ARGV[1])
        local burst = tonumber(ARGV[2])
        local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
        local tokens = tonumber(state[1]) or burst
        local ts = tonumber(state[2]) or now
        tokens = math.min(burst, tokens + math.max(0, now - ts) * rate / 60000)
        local allowed, retry = 0, 0
        if tokens >= 1 then
          tokens = tokens - 1
          allowed = 1
        else
          retry = math.ceil((1 - tokens) * 60000 / rate)
        end
        redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
        redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 60000 / rate) + 1000)
        return {allowed, retry}
        """)

    package init(redis: RedisClient) {
        self.redis = redis
        redis.scripts.register(Self.script)
    }

    /// Takes one token from bucket `name` of `client`, refilled at `perMinute` up to `burst`.
    package func take(_ name: String, client: String, perMinute: Int, burst: Int,
                      completion: @escaping StoreCompletion<RateDecision>)
    {
        redis.scripts.call(Self.script.name, keys: [RedisKeys.rateLimit(name, client: client)],
                           arguments: [RedisArgument(perMinute), RedisArgument(burst)]) { result in
            completion(result.flatMap { value in
                guard let pair = value.array, pair.count == 2, let allowed = pair[0].int, let retry = pair[1].int else {
                    return .failure(.unexpectedReply("rate_limit returned \(value)"))
                }
                return .success(allowed == 1 ? .allowed : .limited(retryAfterMilliseconds: Int64(retry)))
            }.unavailableOnFailure)
        }
    }
}
