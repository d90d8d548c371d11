import Foundation
import Glibc

/// Redis's `INFO commandstats` (calls per command since start), read over one short blocking loopback connection.
/// The difference of two readings around a measured window, divided by the messages published, is "Redis commands
/// per message" (commands run inside the broker's Lua scripts are counted by Redis as well, under their own names).
enum RedisStats {
    /// Calls per command (`set`, `evalsha`, `xadd`, …), or nil when Redis does not answer.
    static func commandCalls(port: Int) -> [String: UInt64]? {
        guard let text = try? query(port: port, "INFO commandstats") else { return nil }
        var calls: [String: UInt64] = [:]
        // cmdstat_get:calls=10,usec=…,usec_per_call=…,rejected_calls=0,failed_calls=0
        for line in text.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {  // "\r\n" is one Character
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = String(line[line.index(line.startIndex, offsetBy: 8)..<colon])
            for field in line[line.index(after: colon)...].split(separator: ",") where field.hasPrefix("calls=") {
                calls[name] = UInt64(field.dropFirst(6))
            }
        }
        return calls
    }

    /// Commands run between two readings, per command, without the readings' own INFO calls.
    static func delta(_ before: [String: UInt64]?, _ after: [String: UInt64]?) -> [String: UInt64]? {
        guard let before, let after else { return nil }
        var d: [String: UInt64] = [:]
        for (name, n) in after {
            let v = n &- (before[name] ?? 0)
            if v > 0 && n >= (before[name] ?? 0) { d[name] = v }
        }
        if let info = d["info"] { d["info"] = info > 1 ? info - 1 : nil }
        return d
    }

    /// Sends one inline command and reads one reply (a bulk string for INFO) to its end.
    static func query(port: Int, _ command: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw HarnessError("socket failed") }
        defer { close(fd) }
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var a = loopbackAddress(port: port)
        let ok = withUnsafePointer(to: &a) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0
            }
        }
        guard ok else { throw HarnessError("redis connect failed") }
        let request = Array((command + "\r\n").utf8)
        guard request.withUnsafeBytes({ write(fd, $0.baseAddress, $0.count) }) == request.count else {
            throw HarnessError("redis write failed")
        }
        var out = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 16384)
        var expected: Int?
        while true {
            let n = buf.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            out.append(contentsOf: buf[0..<n])
            if expected == nil, let crlf = out.firstIndex(of: 10) {
                // "$LEN\r\n…\r\n" or a one-line reply.
                if out.first == UInt8(ascii: "$"), let len = Int(String(decoding: out[1..<(crlf - 1)], as: UTF8.self)) {
                    expected = crlf + 1 + len + 2
                } else {
                    expected = crlf + 1
                }
            }
            if let e = expected, out.count >= e { break }
        }
        return String(decoding: out, as: UTF8.self)
    }
}
