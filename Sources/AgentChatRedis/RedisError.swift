/// An error from the Redis layer. A struct over a private code so new cases do not break callers.
public struct RedisError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: Hashable, Sendable {
        case notConnected
        case connectionLost
        case closed
        case reply(String)
        case unknownScript(String)
        case unexpectedReply(String)
    }

    private let code: Code
    private init(_ code: Code) { self.code = code }

    /// The connection is not established; the command was not sent (there is no hidden queue).
    public static let notConnected = RedisError(.notConnected)
    /// The connection dropped before the reply arrived; the command may or may not have run.
    public static let connectionLost = RedisError(.connectionLost)
    /// The connection was closed by its owner.
    public static let closed = RedisError(.closed)
    /// The server answered with an error reply (`-ERR ...`, `-NOSCRIPT ...`).
    public static func replyError(_ message: String) -> RedisError { RedisError(.reply(message)) }
    /// A script was called by a name never registered.
    public static func unknownScript(_ name: String) -> RedisError { RedisError(.unknownScript(name)) }
    /// The server answered with a reply of an unexpected shape.
    public static func unexpectedReply(_ what: String) -> RedisError { RedisError(.unexpectedReply(what)) }

    /// The server's error text when this is a reply error.
    public var replyMessage: String? {
        if case .reply(let message) = code { return message }
        return nil
    }

    /// Whether the server reported that a script SHA is unknown (`NOSCRIPT`).
    public var isNoScript: Bool { replyMessage?.hasPrefix("NOSCRIPT") ?? false }

    public var description: String {
        switch code {
        case .notConnected: "not connected to Redis"
        case .connectionLost: "connection to Redis lost before the reply"
        case .closed: "Redis connection closed"
        case .reply(let message): "Redis error: \(message)"
        case .unknownScript(let name): "unknown Redis script '\(name)'"
        case .unexpectedReply(let what): "unexpected Redis reply: \(what)"
        }
    }
}
