/// A channel's identifier: `ch_` and 22 base64url characters (16 random bytes).
public struct ChannelID: Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public var description: String { rawValue }

    public init?(_ text: String) {
        guard text.hasPrefix("ch_"), text.utf8.count == 25, let bytes = Base64URL.decode(String(text.dropFirst(3))),
            bytes.count == 16
        else { return nil }
        rawValue = text
    }

    /// A channel id from 16 random bytes.
    public init(randomBytes: [UInt8]) {
        precondition(randomBytes.count == 16)
        rawValue = "ch_" + Base64URL.encode(randomBytes)
    }
}
