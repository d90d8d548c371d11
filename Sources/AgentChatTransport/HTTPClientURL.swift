/// An `http://` or `https://` URL split the way libwebsockets' client takes it: address, port, path, Host header.
///
/// Deliberately narrow: no user information (`user:pass@`), no fragments kept, no percent-decoding; the path and
/// query are passed through as written and must be visible ASCII (no spaces, controls or non-ASCII bytes), so that
/// nothing can be injected into the request line.
package struct HTTPClientURL: Equatable, Sendable {
    package var isTLS: Bool
    /// The host to connect to: a name or an IP address (an IPv6 address without its brackets).
    package var host: String
    package var port: Int
    /// Starts with `/`; includes the query.
    package var path: String

    /// The `Host` header: the host (IPv6 in brackets), with `:port` unless it is the scheme's default.
    package var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (isTLS ? 443 : 80) ? name : "\(name):\(port)"
    }

    /// Scheme, host and port, for logs and errors: never the path or query.
    package var origin: String { (isTLS ? "https://" : "http://") + hostHeader }

    package init(isTLS: Bool, host: String, port: Int, path: String) {
        self.isTLS = isTLS
        self.host = host
        self.port = port
        self.path = path
    }

    /// Parses `text`; nil when it is not an absolute http(s) URL this client can send.
    package init?(_ text: String) {
        let bytes = Array(text.utf8)
        guard let colon = bytes.firstIndex(of: UInt8(ascii: ":")),
            bytes[colon...].starts(with: Array("://".utf8))
        else { return nil }
        switch String(decoding: bytes[..<colon], as: UTF8.self).lowercased() {
        case "http": isTLS = false
        case "https": isTLS = true
        default: return nil
        }
        let afterScheme = colon + 3
        let authorityEnd = bytes[afterScheme...].firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?")
            || $0 == UInt8(ascii: "#") } ?? bytes.endIndex
        let authority = bytes[afterScheme..<authorityEnd]
        guard !authority.isEmpty, !authority.contains(UInt8(ascii: "@")) else { return nil }

        var hostBytes: ArraySlice<UInt8>
        var portBytes: ArraySlice<UInt8>? = nil
        if authority.first == UInt8(ascii: "[") {
            guard let close = authority.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            hostBytes = authority[(authority.startIndex + 1)..<close]
            let rest = authority[(close + 1)...]
            if !rest.isEmpty {
                guard rest.first == UInt8(ascii: ":") else { return nil }
                portBytes = rest.dropFirst()
            }
            guard !hostBytes.isEmpty, hostBytes.allSatisfy({ Self.isHex($0) || $0 == UInt8(ascii: ":")
                || $0 == UInt8(ascii: ".") }) else { return nil }
        } else {
            if let portColon = authority.firstIndex(of: UInt8(ascii: ":")) {
                hostBytes = authority[..<portColon]
                portBytes = authority[(portColon + 1)...]
            } else {
                hostBytes = authority
            }
            guard !hostBytes.isEmpty, hostBytes.allSatisfy({ Self.isAlphanumeric($0) || $0 == UInt8(ascii: "-")
                || $0 == UInt8(ascii: ".") }) else { return nil }
        }
        host = String(decoding: hostBytes, as: UTF8.self).lowercased()
        if let portBytes {
            guard !portBytes.isEmpty, portBytes.count <= 5, portBytes.allSatisfy({ $0 >= 48 && $0 <= 57 }),
                let value = Int(String(decoding: portBytes, as: UTF8.self)), (1...65535).contains(value)
            else { return nil }
            port = value
        } else {
            port = isTLS ? 443 : 80
        }

        var rest = bytes[authorityEnd...]
        if let hash = rest.firstIndex(of: UInt8(ascii: "#")) { rest = rest[..<hash] }
        guard rest.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        let pathText = String(decoding: rest, as: UTF8.self)
        path = pathText.isEmpty ? "/" : (pathText.hasPrefix("?") ? "/" + pathText : pathText)
    }

    private static func isAlphanumeric(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 90) || (byte >= 97 && byte <= 122)
    }

    private static func isHex(_ byte: UInt8) -> Bool {
        (byte >= 48 && byte <= 57) || (byte >= 65 && byte <= 70) || (byte >= 97 && byte <= 102)
    }
}
