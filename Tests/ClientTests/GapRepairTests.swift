import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Synchronization
import Testing
@testable import AgentChatClient

/// The SDK never trusts the broker to be gap-free: a stream that skips offsets is repaired by subscribing again
/// from the last offset received. The real broker does not skip, so a fake broker (real sockets) plays one that
/// does.
@Suite(.serialized) struct GapRepairTests {
    /// A stored item as the broker sends it (opaque ciphertext: the SDK reports it as undecryptable, with its offset).
    static func item(_ offset: Int64, sender: DID) -> StoredMessage {
        StoredMessage(offset: offset, sender: sender, timestamp: 1_704_067_200_000, epoch: 1,
                      clientMessageID: "m\(offset)", nonce: Base64URL.encode(SecureRandom.bytes(12)),
                      ciphertext: Base64URL.encode(SecureRandom.bytes(32)),
                      signature: Base64URL.encode(SecureRandom.bytes(64)))
    }

    static func messages(_ channel: ChannelID, _ offsets: some Sequence<Int64>, sender: DID) -> ServerFrame {
        .messages(ref: nil, channel: channel, offsets.map { item($0, sender: sender) }, next: nil)
    }

    @Test(arguments: [false, true])
    func anOffsetJumpIsRepairedBySubscribingAgainFromTheLastOffset(announced: Bool) async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let sender = AgentIdentity.generate().did
        /// (since, historyEpoch) of every `channel.subscribe`.
        let subscribes = Mutex<[(since: Int64?, historyEpoch: String?)]>([])
        broker.frameHandler = { frame, session in
            switch frame {
            case .channel(let id, .subscribe(let channel, let since, let historyEpoch)):
                let count = subscribes.withLock {
                    $0.append((since, historyEpoch))
                    return $0.count
                }
                // The second answer says whether everything could be recovered.
                let recovered = count == 1 || !announced
                try session.send(.subscribed(ref: id, channel: channel, historyEpoch: "h1", offset: 7,
                                             recovered: recovered))
                if count == 1 {
                    try session.send(Self.messages(channel, 1...3, sender: sender))
                    try session.send(Self.messages(channel, 6...7, sender: sender))  // 4 and 5 skipped
                } else if announced {
                    try session.send(Self.messages(channel, 6...7, sender: sender))  // trimmed: the broker said so
                } else {
                    try session.send(Self.messages(channel, ((since ?? 0) + 1)...7, sender: sender))
                }
                return true
            case .channel(let id, .getKeys):
                try session.send(.error(ProtocolError(.notFound, "no keys"), ref: id))
                return true
            default:
                return false
            }
        }
        let client = try AgentChatClient(identity: AgentIdentity.generate(), server: broker.url,
                                         configuration: testConfiguration())
        _ = try await client.register(name: "gappy")
        _ = try await client.connect()
        let channel = ChannelID(randomBytes: SecureRandom.bytes(16))
        let stream = Collector(try await client.subscribe(channel: channel, since: 0))
        defer { stream.cancel() }
        let expected: [Int64] = announced ? [1, 2, 3, 6, 7] : Array(1...7)
        try await waitUntil("every offset once, in order", timeout: 20) {
            stream.values.compactMap(\.message).map(\.offset).count >= expected.count
        }
        #expect(stream.values.compactMap(\.message).map(\.offset) == expected)
        let requests = subscribes.withLock { $0 }
        #expect(requests.count == 2)
        #expect(requests.last?.since == 3)
        #expect(requests.last?.historyEpoch == "h1")
        #expect(await client.channelStatistics.gapsRepaired == 1)
        // The repair shows as a resume in the stream, with what the broker said about recovery.
        let resumes = stream.values.compactMap(\.resume)
        #expect(resumes.map(\.recovered) == [true, !announced])
        await client.close()
    }
}

extension ChannelStreamEvent {
    var resume: ChannelResume? { if case .subscribed(let resume) = self { resume } else { nil } }
}
