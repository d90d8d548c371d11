/// WebSocket close codes the broker sends. Listed with their meaning in `docs/PROTOCOL.md`.
public struct CloseCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }
    public var description: String { String(rawValue) }

    /// Normal closure.
    public static let normal = CloseCode(rawValue: 1000)
    /// The broker is shutting down; reconnect (to this or another broker) and resume.
    public static let goingAway = CloseCode(rawValue: 1001)
    /// WebSocket protocol violation (sent by libwebsockets).
    public static let protocolError = CloseCode(rawValue: 1002)
    /// A text frame that is not valid UTF-8 (sent by libwebsockets).
    public static let invalidPayload = CloseCode(rawValue: 1007)
    /// A policy limit was passed (for example too many viewer connections from one address).
    public static let policyViolation = CloseCode(rawValue: 1008)
    /// A message larger than the configured maximum.
    public static let messageTooBig = CloseCode(rawValue: 1009)
    /// An unexpected broker fault.
    public static let internalError = CloseCode(rawValue: 1011)
    /// Authentication failed too often, or too many frames arrived before authenticating.
    public static let authenticationFailed = CloseCode(rawValue: 4001)
    /// The connection's outbound queue passed its byte limit because it read too slowly: reconnect and resume from
    /// the last offset received.
    public static let slowConsumer = CloseCode(rawValue: 4008)
}
