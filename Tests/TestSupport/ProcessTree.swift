import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Linux `/proc` queries for tests of the broker's worker processes: who is whose child, and which process holds
/// the server side of a TCP connection.
public enum ProcessTree {
    /// The live (not zombie) children of `parent` whose command name is `named` (when given).
    public static func children(of parent: pid_t, named: String? = nil) -> [pid_t] {
        guard let entries = try? FileManager.default.contentsOfDirectory(atPath: "/proc") else { return [] }
        var found: [pid_t] = []
        for entry in entries {
            guard let pid = pid_t(entry), let stat = readWhole("/proc/\(pid)/stat"),
                let open = stat.firstIndex(of: "("), let close = stat.lastIndex(of: ")")
            else { continue }
            // "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            let comm = String(stat[stat.index(after: open)..<close])
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            guard fields.count > 2, fields[0] != "Z", pid_t(fields[1]) == parent else { continue }
            if let named, comm != String(named.prefix(15)) { continue }
            found.append(pid)
        }
        return found.sorted()
    }

    /// Whether `pid` exists and is not a zombie.
    public static func isAlive(_ pid: pid_t) -> Bool {
        guard let stat = readWhole("/proc/\(pid)/stat"),
            let close = stat.lastIndex(of: ")")
        else { return false }
        return stat[stat.index(after: close)...].split(separator: " ").first != "Z"
    }

    /// Which of `candidates` holds the server side of the IPv4 TCP connection from local port `clientPort` to
    /// `serverPort`: the socket's inode from `/proc/net/tcp`, then the process with a descriptor on it.
    public static func owner(ofConnectionFrom clientPort: Int, to serverPort: Int, among candidates: [pid_t])
        -> pid_t?
    {
        guard let table = readWhole("/proc/net/tcp") else { return nil }
        var inode: String?
        let serverHex = ":" + String(serverPort, radix: 16, uppercase: true).leftPadded(to: 4)
        let clientHex = ":" + String(clientPort, radix: 16, uppercase: true).leftPadded(to: 4)
        for line in table.split(separator: "\n").dropFirst() where line.contains(serverHex) && line.contains(clientHex) {
            let fields = line.split(separator: " ")
            guard fields.count > 9, port(fields[1]) == serverPort, port(fields[2]) == clientPort, fields[9] != "0"
            else { continue }
            inode = String(fields[9])
        }
        guard let inode, inode != "0" else { return nil }
        let target = "socket:[\(inode)]"
        for pid in candidates {
            guard let descriptors = try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd") else {
                continue
            }
            for descriptor in descriptors
            where (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\(descriptor)")) == target
            {
                return pid
            }
        }
        return nil
    }

    /// The whole of a /proc file. (Foundation's `String(contentsOfFile:)` stops after its first read on files that
    /// report size 0, as /proc's do: /proc/net/tcp came back with 27 of its lines.)
    private static func readWhole(_ path: String) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { break }
            bytes += chunk[0..<n]
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// "0100007F:1F90" → 8080.
    private static func port(_ address: Substring) -> Int? {
        guard let colon = address.lastIndex(of: ":") else { return nil }
        return Int(address[address.index(after: colon)...], radix: 16)
    }
}

private extension String {
    func leftPadded(to width: Int) -> String { String(repeating: "0", count: max(0, width - count)) + self }
}
