/// Redis Cluster's key → slot function and the key position of the commands the broker sends. Pure.
///
/// A slot is CRC16 (XMODEM: polynomial 0x1021, initial value 0, as in the Redis Cluster specification) of the key,
/// or of its hash tag — the bytes between the first `{` and the next `}`, when that is not empty — modulo 16384.
public enum RedisClusterSlot {
    /// Slots in a cluster.
    public static let count = 16_384

    /// The slot of `key`.
    public static func of(_ key: [UInt8]) -> Int {
        Int(crc16(hashedPart(of: key)) & 0x3FFF)
    }

    public static func of(_ key: String) -> Int { of(Array(key.utf8)) }

    /// The part of `key` that is hashed: its hash tag if it has a non-empty one, else the whole key.
    static func hashedPart(of key: [UInt8]) -> ArraySlice<UInt8> {
        guard let open = key.firstIndex(of: UInt8(ascii: "{")),
            let close = key[(open + 1)...].firstIndex(of: UInt8(ascii: "}")), close > open + 1
        else { return key[...] }
        return key[(open + 1)..<close]
    }

    /// CRC16-XMODEM. `crc16("123456789") == 0x31C3` (the specification's check value).
    public static func crc16<C: Collection>(_ bytes: C) -> UInt16 where C.Element == UInt8 {
        var crc: UInt16 = 0
        for byte in bytes {
            crc ^= UInt16(byte) << 8
            for _ in 0..<8 { crc = crc & 0x8000 != 0 ? (crc << 1) ^ 0x1021 : crc << 1 }
        }
        return crc
    }

    /// Commands without a key: any node may answer them. `PUBLISH` is broadcast to every node by the cluster.
    static let keyless: Set<String> = [
        "PING", "ECHO", "PUBLISH", "INFO", "TIME", "CLUSTER", "SCRIPT", "WAIT", "DBSIZE", "ROLE", "CONFIG", "CLIENT",
        "COMMAND", "LASTSAVE", "BGREWRITEAOF", "BGSAVE", "FLUSHALL", "FLUSHDB", "MEMORY", "SLOWLOG", "PUBSUB",
        "ASKING", "READONLY", "READWRITE", "AUTH", "HELLO", "SELECT", "RANDOMKEY", "SCAN",
    ]

    /// The key that decides where `command` goes: nil for a keyless command (see `keyless`); for `EVAL`/`EVALSHA`
    /// (and their `_RO` forms) the first key after the key count (nil when there is none); for `SPUBLISH` and
    /// every other command the first argument. Multi-key commands are routed by their first key: the caller keeps
    /// all of their keys in one slot (Redis refuses them with `CROSSSLOT` otherwise).
    public static func routingKey(of command: [RedisArgument]) -> [UInt8]? {
        guard let name = command.first.map({ String(decoding: $0.bytes, as: UTF8.self).uppercased() }) else {
            return nil
        }
        if keyless.contains(name) { return nil }
        switch name {
        case "EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL", "FCALL_RO":
            guard command.count > 3, let count = Int(String(decoding: command[2].bytes, as: UTF8.self)), count > 0
            else { return nil }
            return command[3].bytes
        default:
            return command.count > 1 ? command[1].bytes : nil
        }
    }

    /// The slot `command` goes to, or nil for any node.
    public static func of(command: [RedisArgument]) -> Int? { routingKey(of: command).map(of) }
}
