import CHiredisShims
import CHiredis

/// A Redis reply (RESP2), copied out of hiredis.
public enum RedisValue: Sendable, Hashable {
    case status(String)
    case error(String)
    case integer(Int64)
    case bulk([UInt8])
    case null
    case array([RedisValue])

    /// Status text, error text, or a bulk string decoded as UTF-8 (invalid sequences repaired).
    public var string: String? {
        switch self {
        case .status(let s), .error(let s): s
        case .bulk(let bytes): String(decoding: bytes, as: UTF8.self)
        default: nil
        }
    }

    /// An integer reply, or a bulk or status string holding a decimal integer.
    public var int: Int? {
        switch self {
        case .integer(let value): Int(exactly: value)
        case .bulk(let bytes): Int(String(decoding: bytes, as: UTF8.self))
        case .status(let s): Int(s)
        default: nil
        }
    }

    /// The bytes of a bulk string (or of a status string).
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes): bytes
        case .status(let s): Array(s.utf8)
        default: nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisValue]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    public var isNull: Bool { self == .null }

    /// A flat `[field, value, field, value, …]` reply (HGETALL) as a dictionary of UTF-8 strings.
    public var stringPairs: [String: String] {
        let items = array ?? []
        var fields: [String: String] = [:]
        var index = 0
        while index + 1 < items.count {
            if let key = items[index].bytes, let value = items[index + 1].bytes {
                fields[String(decoding: key, as: UTF8.self)] = String(decoding: value, as: UTF8.self)
            }
            index += 2
        }
        return fields
    }
}

extension RedisValue {
    /// Copies a hiredis reply tree. `reply` is borrowed: hiredis frees it when the callback returns.
    init(reply: UnsafePointer<redisReply>) {
        let r = reply.pointee
        switch r.type {
        case REDIS_REPLY_STRING:
            self = .bulk(RedisValue.copyBytes(r))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisValue] = []
            elements.reserveCapacity(r.elements)
            for index in 0..<r.elements {
                if let element = agentchat_redis_reply_element(reply, index) {
                    elements.append(RedisValue(reply: element))
                } else {
                    elements.append(.null)
                }
            }
            self = .array(elements)
        case REDIS_REPLY_INTEGER:
            self = .integer(Int64(r.integer))
        case REDIS_REPLY_STATUS:
            self = .status(String(decoding: RedisValue.copyBytes(r), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            self = .error(String(decoding: RedisValue.copyBytes(r), as: UTF8.self))
        default:  // REDIS_REPLY_NIL, and nothing else exists in RESP2
            self = .null
        }
    }

    private static func copyBytes(_ r: redisReply) -> [UInt8] {
        guard let str = r.str, r.len > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: str, count: r.len))
    }

    /// Parses one complete RESP2 reply with hiredis' own reader; nil if `resp` is incomplete or malformed.
    /// Lets the conversion be tested without a server.
    static func decode(resp: [UInt8]) -> RedisValue? {
        guard let reader = redisReaderCreate() else { return nil }
        defer { redisReaderFree(reader) }
        let fed = resp.withUnsafeBytes { raw in
            redisReaderFeed(reader, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard fed == REDIS_OK else { return nil }
        var reply: UnsafeMutableRawPointer?
        guard redisReaderGetReply(reader, &reply) == REDIS_OK, let reply else { return nil }
        defer { freeReplyObject(reply) }
        return RedisValue(reply: reply.assumingMemoryBound(to: redisReply.self))
    }
}
