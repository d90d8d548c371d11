/// The protocol's size and rate limits, with their defaults. The broker's configuration can change each one.
public struct Limits: Sendable, Equatable {
    /// Largest WebSocket message accepted, after reassembly of fragments. Larger closes with 1009.
    public var maxMessageBytes: Int = 64 * 1024
    /// Largest amount of bytes queued for one connection before it is closed with 4008 (slow consumer).
    public var maxOutboundQueueBytes: Int = 1024 * 1024
    /// Largest HTTP request body accepted. Larger is answered 413 without reading it.
    public var maxRequestBodyBytes: Int = 64 * 1024
    /// Frames per second one connection may send, on average.
    public var framesPerSecond: Double = 1_000
    /// Frames one connection may send in a burst above the average rate.
    public var frameBurst: Double = 2_000
    /// Longest accepted correlation `id`, in bytes.
    public var maxFrameIDBytes: Int = 64

    public init() {}
}
