/// Header fields libwebsockets 4.1 cannot parse, and the copy of a head it is given instead.
///
/// libwebsockets 4.1 recognises header names by walking a table of the names it knows, a byte at a time, the colon
/// included (`host:`). A name that is not one of them normally leaves the table before its colon and is kept as an
/// "unknown" header. But a name that is the *beginning* of a known one (`X` of `x-forwarded-for:`, `A` of `accept:`,
/// `Ho`, `Content`, `Head` of `head `, `Sec-WebSocket-Ke`) leaves the table *at* its colon, and the parser then loses
/// that colon: the value, the line end and the next line are read as more of the name, up to the next colon. Such a
/// field swallows the next field (`A: 1` followed by `Host: x` hides `Host`), and as the last field it swallows the
/// empty line too, so the head never ends and the client gets no answer. The table also holds four entries without a
/// colon (`patch`, `put`, `delete`, `uri-args`): a name starting with one of them is taken for a method or for the
/// query, and the request is dropped or misread.
///
/// The broker reads none of these fields (it reads only headers libwebsockets knows, and `Stripe-Signature`), so
/// `HTTPHeadGate` hands libwebsockets the head without them; on a request with a body it answers 400 `bad_request`
/// instead (see `HandOver.refused`).
extension HTTPRequestHeadValidator {
    /// The header names libwebsockets 4.1's HTTP/1 parser knows (`lib/roles/http/lextable-strings.h`, every entry:
    /// Debian builds it with HTTP/2, WebSocket and the uncommon headers), lower-case, with the byte that ends each.
    static let libwebsocketsNames: [String] = [
        "get ", "post ", "options ", "host:", "connection:", "upgrade:", "origin:", "sec-websocket-draft:",
        "sec-websocket-extensions:", "sec-websocket-key1:", "sec-websocket-key2:", "sec-websocket-protocol:",
        "sec-websocket-accept:", "sec-websocket-nonce:", "http/1.1 ", "http2-settings:", "accept:",
        "access-control-request-headers:", "if-modified-since:", "if-none-match:", "accept-encoding:",
        "accept-language:", "pragma:", "cache-control:", "authorization:", "cookie:", "content-length:",
        "content-type:", "date:", "range:", "referer:", "sec-websocket-key:", "sec-websocket-version:",
        "sec-websocket-origin:", "accept-charset:", "accept-ranges:", "access-control-allow-origin:", "age:",
        "allow:", "content-disposition:", "content-encoding:", "content-language:", "content-location:",
        "content-range:", "etag:", "expect:", "expires:", "from:", "if-match:", "if-range:", "if-unmodified-since:",
        "last-modified:", "link:", "location:", "max-forwards:", "proxy-authenticate:", "proxy-authorization:",
        "refresh:", "retry-after:", "server:", "set-cookie:", "strict-transport-security:", "transfer-encoding:",
        "user-agent:", "vary:", "via:", "www-authenticate:", "proxy ", "x-real-ip:", "http/1.0 ", "x-forwarded-for:",
        "connect ", "head ", "te:", "replay-nonce:", "x-auth-token:",
        // The HTTP/2 pseudo-headers (":authority" …) are in the table too; no header name starts with a colon.
    ]

    /// Entries of the table that end without a colon or space: reached, they stop the name at once.
    static let libwebsocketsBareNames: [String] = ["patch", "put", "delete", "uri-args"]

    /// Every lower-case name libwebsockets loses the colon of: a proper beginning of a name in its table that is
    /// not itself a name in it.
    private static let namesLosingTheirColon: Set<String> = {
        let known = Set(libwebsocketsNames.filter { $0.hasSuffix(":") }.map { String($0.dropLast()) })
        var prefixes = Set<String>()
        for name in libwebsocketsNames + libwebsocketsBareNames {
            let letters = Array(name)
            for length in 1..<letters.count { prefixes.insert(String(letters[0..<length])) }
        }
        return prefixes.subtracting(known).filter { !$0.contains(" ") }
    }()

    /// Whether libwebsockets 4.1 misparses a header field with this name (see the type's comment).
    public static func libwebsocketsMisreads(fieldName name: String) -> Bool {
        let lowered = name.lowercased()
        return namesLosingTheirColon.contains(lowered) || libwebsocketsBareNames.contains { lowered.hasPrefix($0) }
    }

    /// How an accepted head goes to libwebsockets.
    public enum HandOver: Sendable, Equatable {
        /// As it came: libwebsockets reads every field right.
        case asIs
        /// These bytes instead: the head without the fields libwebsockets would misread, and what followed it.
        case copy([UInt8])
        /// Answered here: a field libwebsockets would misread, on a request with a body. The copy would have to be
        /// handed over with the socket, and libwebsockets 4.1 (under libuv) does not read a body after a head handed
        /// over that way.
        case refused(Refusal)
    }

    /// How to hand an accepted head to libwebsockets; `bytes` are those `head` was judged on.
    public func libwebsocketsHandOver(_ bytes: [UInt8], head: Head) -> HandOver {
        let dropped = zip(head.fields, head.fieldLines).filter { Self.libwebsocketsMisreads(fieldName: $0.0.name) }
        guard let first = dropped.first else { return .asIs }
        if let length = head.value(of: "Content-Length"), Self.contentLength(length) != .bytes(0) {
            return .refused(Self.bad("the header field \(first.0.name) is not supported on a request with a body"))
        }
        var copy: [UInt8] = []
        copy.reserveCapacity(bytes.count)
        var from = 0
        for (_, line) in dropped {
            copy += bytes[from..<line.lowerBound]
            from = line.upperBound
        }
        copy += bytes[from...]
        return .copy(copy)
    }
}
