/// A connected, blocking byte stream with deadlines: a plain TCP socket (`BlockingTCPSocket`) or TLS over one
/// (`TLSStream`). `WebSocketClient` and the SDK's HTTP client speak through it, so both work over either.
///
/// Not thread-safe: use from one thread at a time.
public protocol ByteStream: AnyObject, Sendable {
    /// Whether the stream is still open locally.
    var isOpen: Bool { get }
    /// The local port of the underlying TCP connection (nil when closed or unknown).
    var localPort: Int? { get }
    /// Reads up to `maxBytes`, waiting until `deadline`. Returns nil at the end of the stream; throws
    /// `WebSocketError.timeout` if nothing arrived in time (the stream stays usable), `.connectionClosed`,
    /// `.tls`, `.system`.
    func read(maxBytes: Int, deadline: Deadline) throws -> [UInt8]?
    /// Writes every byte before `deadline` or throws (`.timeout`, `.connectionClosed`, `.tls`, `.system`).
    func write(_ bytes: [UInt8], deadline: Deadline) throws
    /// Ends the sending direction (TLS: sends close_notify first).
    func shutdownWrite()
    /// Closes the stream (TLS: sends close_notify first, without waiting). Idempotent.
    func close()
}

extension ByteStream {
    /// Reads up to 64 KiB, waiting until `deadline`.
    public func read(deadline: Deadline) throws -> [UInt8]? {
        try read(maxBytes: 65536, deadline: deadline)
    }

    /// Reads up to `maxBytes` within `timeout` seconds.
    public func read(maxBytes: Int = 65536, timeout: Double) throws -> [UInt8]? {
        try read(maxBytes: maxBytes, deadline: Deadline(seconds: timeout))
    }

    /// Writes every byte within `timeout` seconds or throws.
    public func write(_ bytes: [UInt8], timeout: Double) throws {
        try write(bytes, deadline: Deadline(seconds: timeout))
    }
}

/// Opening a `ByteStream`.
public enum ByteStreams {
    /// Connects to `host:port`, optionally binding `sourceAddress` first: plain TCP when `tls` is nil, else TLS with
    /// those options (handshake, certificate and name verified). Connecting and the handshake share `timeout`.
    public static func connect(host: String, port: Int, sourceAddress: String? = nil, tls: TLSOptions?,
                               timeout: Double) throws -> any ByteStream {
        if let tls {
            return try TLSStream.connect(host: host, port: port, sourceAddress: sourceAddress, options: tls,
                                         timeout: timeout)
        }
        return try BlockingTCPSocket(host: host, port: port, sourceAddress: sourceAddress, timeout: timeout)
    }
}
