/// Which Redis to use and how to log in to it: one server at a fixed address, or the master of a Sentinel-monitored
/// group, found through the sentinels on every (re)connection.
public struct RedisTarget: Sendable, CustomStringConvertible {
    public enum Location: Sendable, Hashable {
        /// One server.
        case direct(RedisEndpoint)
        /// The master that the sentinels at these addresses name for `master` (`SENTINEL get-master-addr-by-name`).
        case sentinel(sentinels: [RedisEndpoint], master: String)
    }

    public var location: Location
    /// `AUTH` sent first on every connection to the server (not to the sentinels); nil: none.
    public var credentials: RedisCredentials?

    public init(_ location: Location, credentials: RedisCredentials? = nil) {
        self.location = location
        self.credentials = credentials
    }

    public static func direct(_ endpoint: RedisEndpoint, credentials: RedisCredentials? = nil) -> RedisTarget {
        RedisTarget(.direct(endpoint), credentials: credentials)
    }

    /// Parses `redis://[user[:password]@]host[:port][/0]` or `unix:///path`: the endpoint, and the credentials the
    /// URL carries (percent-decoded; a user without a password is refused). The URL itself is never kept, so its
    /// password cannot reach a log through `description`.
    public init(url: String) throws(RedisEndpointError) {
        guard url.hasPrefix("redis://"), let at = url.lastIndex(of: "@") else {
            self = .direct(try RedisEndpoint(url: url))
            return
        }
        let start = url.index(url.startIndex, offsetBy: "redis://".count)
        let userInfo = url[start..<at]
        let redacted = "redis://***@" + url[url.index(after: at)...]
        guard let colon = userInfo.firstIndex(of: ":") else {
            throw RedisEndpointError(url: redacted, reason: "a user needs a password: redis://user:password@host")
        }
        guard let user = String(userInfo[..<colon]).removingPercentEncodingStrictly,
            let password = String(userInfo[userInfo.index(after: colon)...]).removingPercentEncodingStrictly
        else { throw RedisEndpointError(url: redacted, reason: "bad percent-encoding in the credentials") }
        guard !password.isEmpty else { throw RedisEndpointError(url: redacted, reason: "the password is empty") }
        let endpoint: RedisEndpoint
        do {
            endpoint = try RedisEndpoint(url: "redis://" + url[url.index(after: at)...])
        } catch {
            throw RedisEndpointError(url: redacted, reason: error.reason)
        }
        self = .direct(endpoint, credentials: RedisCredentials(username: user.isEmpty ? nil : user, password: password))
    }

    /// The location, never the password.
    public var description: String {
        let login = credentials.map { $0.username.map { " as \($0)" } ?? " with a password" } ?? ""
        switch location {
        case .direct(let endpoint):
            return "\(endpoint)\(login)"
        case .sentinel(let sentinels, let master):
            return "master '\(master)' of sentinels \(sentinels.map(\.description).joined(separator: ","))\(login)"
        }
    }
}

/// A Redis user (ACL) and password, or only a password (the `default` user). `description` never shows the
/// password.
public struct RedisCredentials: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible {
    public var username: String?
    public var password: String

    public init(username: String? = nil, password: String) {
        self.username = username
        self.password = password
    }

    /// The `AUTH` command.
    var authCommand: [RedisArgument] {
        if let username { return ["AUTH", RedisArgument(username), RedisArgument(password)] }
        return ["AUTH", RedisArgument(password)]
    }

    public var description: String { "RedisCredentials(username: \(username ?? "default"), password: redacted)" }
    public var debugDescription: String { description }
}

extension RedisEndpoint {
    /// Parses `host:port` (IPv6 in brackets), as in `--redis-sentinels`.
    public init(hostPort: String) throws(RedisEndpointError) {
        guard !hostPort.contains("/"), !hostPort.contains("@") else {
            throw RedisEndpointError(url: hostPort, reason: "expected host:port")
        }
        self = try RedisEndpoint(url: "redis://" + hostPort)
    }
}

extension String {
    /// Percent-decoding that refuses malformed escapes (Foundation-free).
    var removingPercentEncodingStrictly: String? {
        var bytes: [UInt8] = []
        var iterator = utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(Self.hexValue), let low = iterator.next().flatMap(Self.hexValue)
            else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
