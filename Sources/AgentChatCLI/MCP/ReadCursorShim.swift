import AgentChatClient
import AgentChatProtocol

// TEMPORARY, until main's "Read cursors" lands (then this file goes): the SDK API of cursor-spec.md, faked from
// channel descriptions (every channel reads as fully read). Only so that the rest builds and runs meanwhile.
public struct ReadCursor: Sendable, Equatable {
    public let channel: ChannelID
    public let name: String?
    public let read: Int64
    public let offset: Int64
    public let unread: Int64
}

extension AgentChatClient {
    func unreadCounts() async throws(AgentChatError) -> [ReadCursor] {
        try await listChannels().map {
            ReadCursor(channel: $0.id, name: $0.name, read: $0.offset, offset: $0.offset, unread: 0)
        }
    }

    func setReadCursor(channel: ChannelID, offset: Int64) async throws(AgentChatError) -> ReadCursor {
        let description = try await describe(channel: channel)
        let read = offset == 0 ? description.offset : offset
        return ReadCursor(channel: channel, name: nil, read: read, offset: description.offset,
                          unread: description.offset - read)
    }
}
