import Foundation
import WebSocketClient

/// Where a broker listens: an `http://` (or `ws://`) URL, or over TLS an `https://` (or `wss://`) one, with host and
/// optional port (default 80, or 443 over TLS). The same address serves the HTTP endpoints and the WebSocket.
/// Any other scheme is refused with `unsupported_scheme`.
public struct BrokerURL: Sendable, Hashable, CustomStringConvertible {
    /// The URL as given.
    public let description: String
    public let host: String
    public let port: Int
    /// Whether the broker is reached over TLS (`https`, `wss`).
    public let isTLS: Bool
    /// A path prefix before `/api/...` (usually empty), without a trailing slash.
    public let basePath: String

    public init(_ text: String) throws(AgentChatError) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw .invalidArgument("not a URL: \(text)")
        }
        switch scheme {
        case "http", "ws": isTLS = false
        case "https", "wss": isTLS = true
        default:
            throw AgentChatError(code: AgentChatError.Codes.unsupportedScheme, category: .invalidArgument,
                                 message: "unsupported URL scheme \(scheme) in \(text)")
        }
        guard var host = components.host, !host.isEmpty else { throw .invalidArgument("no host in \(text)") }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.description = text
        self.host = host
        self.port = components.port ?? (isTLS ? 443 : 80)
        var path = components.path
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
    }

    /// The path of an HTTP endpoint, e.g. `path("/api/v1/agents/register")`.
    func path(_ endpoint: String) -> String { basePath + endpoint }

    /// The TLS options for connecting to this broker (nil for a plain `http://` URL): trusting the system's CAs plus
    /// those in `caFile`, checking the certificate against ``host``.
    func tlsOptions(caFile: String?) -> TLSOptions? {
        isTLS ? TLSOptions(caFile: caFile) : nil
    }
}
