import Foundation

/// Where a broker listens: an `http://` (or `ws://`) URL with host and optional port. The same address serves the
/// HTTP endpoints and the WebSocket.
///
/// TLS (`https`, `wss`) is not supported yet: such URLs are refused with `unsupported_scheme`.
public struct BrokerURL: Sendable, Hashable, CustomStringConvertible {
    /// The URL as given.
    public let description: String
    public let host: String
    public let port: Int
    /// A path prefix before `/api/...` (usually empty), without a trailing slash.
    public let basePath: String

    public init(_ text: String) throws(AgentChatError) {
        guard let components = URLComponents(string: text), let scheme = components.scheme?.lowercased() else {
            throw .invalidArgument("not a URL: \(text)")
        }
        switch scheme {
        case "http", "ws": break
        case "https", "wss":
            throw AgentChatError(code: AgentChatError.Codes.unsupportedScheme, category: .invalidArgument,
                                 message: "\(scheme):// is not supported yet (no TLS); use http://")
        default:
            throw AgentChatError(code: AgentChatError.Codes.unsupportedScheme, category: .invalidArgument,
                                 message: "unsupported URL scheme \(scheme) in \(text)")
        }
        guard var host = components.host, !host.isEmpty else { throw .invalidArgument("no host in \(text)") }
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        self.description = text
        self.host = host
        self.port = components.port ?? 80
        var path = components.path
        while path.hasSuffix("/") { path.removeLast() }
        self.basePath = path
    }

    /// The path of an HTTP endpoint, e.g. `path("/api/v1/agents/register")`.
    func path(_ endpoint: String) -> String { basePath + endpoint }
}
