/// A frame a client sends to the broker. Protocol v1 frames are JSON objects in WebSocket text messages.
public enum ClientFrame: Equatable, Sendable {
    /// Application-level round trip; answered with `pong`.
    case ping(id: String?)
}

/// A frame the broker sends to a client.
public enum ServerFrame: Equatable, Sendable {
    /// The answer to `ping`, echoing its `id` as `ref`; `time` is the broker's clock in Unix milliseconds.
    case pong(ref: String?, time: Int64)
    /// A request failed; `ref` echoes the request's `id` when it could be read.
    case error(ProtocolError, ref: String?)
}

/// Why a frame was refused: a stable code and a human-readable message.
public struct ProtocolError: Error, Equatable, Sendable {
    public let code: ErrorCode
    public let message: String
    public init(_ code: ErrorCode, _ message: String) {
        self.code = code
        self.message = message
    }
}
