/// Where a Redis server listens: a TCP host and port, or a unix-domain socket.
public enum RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    case tcp(host: String, port: Int)
    case unix(path: String)

    /// The default Redis TCP port.
    public static let defaultPort = 6379

    /// Parses `redis://host[:port][/0]` (IPv6 hosts in brackets) or `unix:///absolute/path`.
    ///
    /// Passwords, query strings and database numbers other than 0 are rejected: the broker uses database 0 and
    /// takes credentials from its configuration, never from a URL that may end up in a log.
    public init(url: String) throws(RedisEndpointError) {
        if url.hasPrefix("unix://") {
            let path = String(url.dropFirst("unix://".count))
            guard path.hasPrefix("/") else {
                throw RedisEndpointError(url: url, reason: "a unix socket URL needs an absolute path: unix:///path/to/redis.sock")
            }
            guard path.count > 1, !path.hasSuffix("/") else {
                throw RedisEndpointError(url: url, reason: "the unix socket path names no file")
            }
            guard !path.contains("?"), !path.contains("#") else {
                throw RedisEndpointError(url: url, reason: "query strings and fragments are not supported")
            }
            self = .unix(path: path)
            return
        }
        guard url.hasPrefix("redis://") else {
            throw RedisEndpointError(url: url, reason: "expected a redis://host:port or unix:///path URL")
        }
        var rest = Substring(url.dropFirst("redis://".count))
        guard !rest.contains("?"), !rest.contains("#") else {
            throw RedisEndpointError(url: url, reason: "query strings and fragments are not supported")
        }
        guard !rest.contains("@") else {
            throw RedisEndpointError(url: url, reason: "credentials in the URL are not supported")
        }
        if let slash = rest.firstIndex(of: "/") {
            let database = rest[rest.index(after: slash)...]
            guard database.isEmpty || database == "0" else {
                throw RedisEndpointError(url: url, reason: "database selection is not supported (only /0)")
            }
            rest = rest[..<slash]
        }
        var host: Substring
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw RedisEndpointError(url: url, reason: "unterminated IPv6 address")
            }
            host = rest[rest.index(after: rest.startIndex)..<close]
            let after = rest[rest.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { throw RedisEndpointError(url: url, reason: "unexpected text after the host") }
                portText = after.dropFirst()
            }
        } else if let colon = rest.firstIndex(of: ":") {
            host = rest[..<colon]
            portText = rest[rest.index(after: colon)...]
        } else {
            host = rest
        }
        guard !host.isEmpty else { throw RedisEndpointError(url: url, reason: "missing host") }
        guard !host.contains(where: { $0 == " " || $0 == "[" || $0 == "]" }) else {
            throw RedisEndpointError(url: url, reason: "invalid host")
        }
        var port = RedisEndpoint.defaultPort
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value), portText.allSatisfy(\.isASCII) else {
                throw RedisEndpointError(url: url, reason: "the port must be a number from 1 to 65535")
            }
            port = value
        }
        self = .tcp(host: String(host), port: port)
    }

    public var description: String {
        switch self {
        case .tcp(let host, let port): host.contains(":") ? "redis://[\(host)]:\(port)" : "redis://\(host):\(port)"
        case .unix(let path): "unix://\(path)"
        }
    }
}

/// A Redis URL that could not be parsed; `description` says why.
public struct RedisEndpointError: Error, Hashable, Sendable, CustomStringConvertible {
    public let url: String
    public let reason: String
    public var description: String { "invalid Redis URL '\(url)': \(reason)" }
}
