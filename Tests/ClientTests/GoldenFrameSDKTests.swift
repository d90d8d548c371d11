import AgentChatClient
import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Synchronization
import Testing

/// The SDK against the golden frames of `Tests/Golden` (the wire format, see `GoldenFrameTests`): what it sends
/// for each request has the keys and value types of the golden client frame of that type, and it reads every
/// golden broker frame. Driven through the SDK's public API against the fake broker, which records every frame
/// it receives byte for byte.
@Suite(.serialized) struct GoldenFrameSDKTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Golden")

    /// The golden frames of a folder: file name → bytes (without the final newline).
    static func golden(_ folder: String) throws -> [(name: String, bytes: [UInt8])] {
        let url = directory.appendingPathComponent(folder)
        let names = try FileManager.default.contentsOfDirectory(atPath: url.path).filter { $0.hasSuffix(".json") }
        return try names.sorted().map { name in
            var bytes = Array(try Data(contentsOf: url.appendingPathComponent(name)))
            if bytes.last == UInt8(ascii: "\n") { bytes.removeLast() }
            return (name, bytes)
        }
    }

    /// A value's JSON type; arrays and objects with the types of their elements (object keys are left out: in
    /// frames they are data, e.g. the DIDs of `envelopes`).
    static func shape(_ value: JSONValue) -> String {
        switch value {
        case .array(let items): "[" + Set(items.map(shape)).sorted().joined(separator: "|") + "]"
        case .object(let fields): "{" + Set(fields.values.map(shape)).sorted().joined(separator: "|") + "}"
        default: value.typeName
        }
    }

    /// A frame's top-level keys with the shape of each value.
    static func fields(_ bytes: [UInt8]) throws -> [String: String] {
        guard case .object(let object) = try JSONParser.parse(bytes) else { return [:] }
        return object.mapValues(shape)
    }

    // MARK: - Broker frames

    @Test func theSDKReadsEveryGoldenBrokerFrame() async throws {
        let golden = try Self.golden("server")
        let hello = try #require(golden.first { $0.name == "hello.json" }).bytes
        let others = golden.filter { $0.name != "hello.json" }
        let codec = FrameCodec()
        let broker = try FakeBroker()
        defer { broker.stop() }
        // Every hello is the golden one: logging in means the SDK read it (and signed its challenge for its broker).
        broker.helloBytes = hello
        let trigger = ChannelID(randomBytes: SecureRandom.bytes(16))
        broker.frameHandler = { frame, session in
            guard case .channel(let id, .describe(let channel)) = frame else { return false }
            // Asked about the trigger channel: every other golden frame (their refs answer nothing pending, so
            // they are unsolicited), then the answer. Anything else (the SDK keying a channel a golden event
            // named) is refused.
            if channel == trigger { for frame in others { try session.send(bytes: frame.bytes) } }
            try session.send(.error(ProtocolError(.notFound, "no such channel"), ref: id))
            return true
        }
        let client = try AgentChatClient(identity: .generate(), server: broker.url, configuration: testConfiguration())
        _ = try await client.register(name: "golden")
        let unsolicited = Collector(client.unsolicitedFrames())
        defer { unsolicited.cancel() }
        _ = try await client.connect()
        #expect(broker.authFrames.count == 1)

        await #expect(throws: AgentChatError.notFound) { try await client.describe(channel: trigger) }
        try await waitUntil("every golden broker frame") { unsolicited.values.count >= others.count }
        let received = unsolicited.values
        #expect(received.count == others.count)
        for (index, frame) in others.enumerated() where index < received.count {
            #expect(received[index] == (try codec.decodeServerFrame(frame.bytes)), "\(frame.name)")
            #expect(received[index].type.rawValue == (try JSONParser.parse(frame.bytes))["type"]?.stringValue)
        }
        await client.close()
    }

    // MARK: - Client frames

    @Test func whatTheSDKSendsHasTheShapeOfTheGoldenClientFrames() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let channels = FakeChannels(historyEpoch: "TVpndIGOm6i1ws_c")
        broker.frameHandler = { frame, session in try channels.handle(frame, session) }
        var clients: [AgentChatClient] = []
        for name in ["alice", "bob", "carol"] {
            let client = try AgentChatClient(identity: .generate(name: name), server: broker.url,
                                             configuration: testConfiguration())
            channels.register(try await client.register())
            try await client.connect()
            clients.append(client)
        }
        let (alice, bob, carol) = (clients[0], clients[1], clients[2])

        // Every request the SDK makes, through its public API.
        _ = try await alice.ping()
        let channel = try await alice.createChannel(name: "Market makers", members: [bob.identity.did])
        let receipt = try await alice.send(channel: channel.id, text: "hello")
        let read = try await bob.history(channel: channel.id, after: 0)  // fetches the key: channel.keys.get
        #expect(read.map(\.text) == ["hello"] && read.allSatisfy(\.verified))
        #expect(try await bob.setReadCursor(channel: channel.id, offset: receipt.offset).unread == 0)
        #expect(try await alice.unreadCounts().map(\.unread) == [1])
        try await alice.invite(channel: channel.id, did: carol.identity.did)
        try await carol.join(channel: channel.id)
        #expect(try await alice.listChannels().map(\.id) == [channel.id])
        try await alice.setListing(channel: channel.id, listed: true, title: "Market makers", topic: "prices, hourly")
        // Peeks: a refusal, the earnings (answered with a peek awaiting a grant, which the SDK grants by itself).
        try await alice.refusePeek(channel: channel.id, peek: "pk_FSIvPElWY3B9ipeksb7L2A")
        let earnings = try await alice.earnings(limit: 20)
        #expect(earnings.balanceCents == 467 && earnings.entries.map(\.cents) == [117])
        try await waitUntil("the SDK's grant") {
            broker.receivedFrames.contains { (try? JSONParser.parse($0))?["type"] == "peek.grant" }
        }
        let stream = Collector(try await alice.subscribe(channel: channel.id, since: 0,
                                                         historyEpoch: "TVpndIGOm6i1ws_c"))
        try await waitUntil("the replayed message") { stream.values.contains { $0.message != nil } }
        #expect(stream.values.compactMap(\.message).map(\.offset) == [receipt.offset])
        await alice.unsubscribe(channel: channel.id)
        stream.cancel()
        try await alice.rotate(channel: channel.id)
        try await alice.remove(channel: channel.id, did: carol.identity.did)
        try await bob.leave(channel: channel.id)
        #expect(try await alice.describe(channel: channel.id).members.map(\.did) == [alice.identity.did])
        // A reconnection logs in with the session token.
        broker.dropConnections()
        try await waitUntil("logins by token") { broker.authFrames.filter { $0.authToken != nil }.count == 3 }
        for client in clients { await client.close() }

        let codec = FrameCodec()
        let golden = try Self.golden("client")
        var goldenFields: [FrameType: [(name: String, fields: [String: String])]] = [:]
        for frame in golden {
            let type = try codec.decode(frame.bytes).frame.get().type
            goldenFields[type, default: []].append((frame.name, try Self.fields(frame.bytes)))
        }
        var sentTypes: Set<FrameType> = []
        var matchedGolden: Set<String> = []
        for bytes in broker.receivedFrames {
            let text = String(decoding: bytes, as: UTF8.self)
            // The broker's codec accepts it...
            let frame = try #require(try? codec.decode(bytes).frame.get(), "refused: \(text)")
            sentTypes.insert(frame.type)
            // ...and it has the keys and value types of the golden frame of its type (optional fields may be left
            // out), the id aside.
            let sent = try Self.fields(bytes)
            #expect(sent["id"] == "string", "no id: \(text)")
            let candidates = goldenFields[frame.type] ?? []
            let fitting = candidates.filter { candidate in
                sent.allSatisfy { candidate.fields[$0.key] == $0.value }
            }
            #expect(!fitting.isEmpty, "\(text) fits none of \(candidates.map(\.name))")
            for candidate in fitting where candidate.fields == sent { matchedGolden.insert(candidate.name) }
        }
        // Every client frame type but the viewer's (the SDK is an agent: no peek.request, confirm or status) was
        // sent...
        let agentTypes = Set(FrameType.allCases.filter { $0.direction != .fromBroker })
            .subtracting(FrameType.viewerRequests).subtracting([.peekRequest, .peekConfirm, .peekStatus])
        #expect(sentTypes == agentTypes, "missing: \(agentTypes.subtracting(sentTypes).map(\.rawValue).sorted())")
        // ...and each of their golden frames was matched exactly (every optional field sent at least once).
        let expected = Set(agentTypes.flatMap { goldenFields[$0] ?? [] }.map(\.name))
        #expect(matchedGolden == expected, "not matched exactly: \(expected.subtracting(matchedGolden).sorted())")
    }
}

/// Just enough of a broker's channels for every channel request of the SDK to succeed: one channel at a time,
/// its members and epochs, the key sets published for each epoch, and its messages. Shared by every connection
/// of a ``FakeBroker`` (as its frame handler).
final class FakeChannels: Sendable {
    private struct KeySet {
        var sender: DID
        var signature: String
        var envelopes: [DID: String]
    }

    private struct State {
        var profiles: [DID: AgentProfile] = [:]
        var id = ChannelID(randomBytes: SecureRandom.bytes(16))
        var name = ""
        var owner: DID?
        var open = false
        var members: [DID] = []
        var epoch: Int64 = 0
        var keySets: [Int64: KeySet] = [:]
        var messages: [StoredMessage] = []
        var cursors: [DID: Int64] = [:]
    }

    private let state = Mutex(State())
    private let historyEpoch: String

    init(historyEpoch: String) { self.historyEpoch = historyEpoch }

    /// Makes a registered agent known (members are described with their registration, which the SDK checks).
    func register(_ profile: AgentProfile) { state.withLock { $0.profiles[profile.did] = profile } }

    private func description(_ s: State) -> ChannelDescription {
        ChannelDescription(
            id: s.id, name: s.name, owner: s.owner!, open: s.open, epoch: s.epoch,
            keyedEpoch: s.keySets.keys.max() ?? 0, offset: Int64(s.messages.count), historyEpoch: historyEpoch,
            members: s.members.map { did in
                let profile = s.profiles[did]!
                return ChannelDescription.Member(did: did, name: profile.name, encryptionKey: profile.encryptionKey,
                                                 registration: profile.registration)
            })
    }

    /// Answers a member's peek request: `ok` to refusals and grants (a grant must verify for the peek's viewer key
    /// when the peek is one this fake announced), earnings of one share; after the earnings, announces a peek
    /// awaiting a grant (`pk_…`, viewer key ``peekViewer``), which the SDK grants by itself.
    private func handlePeek(_ ref: String?, _ request: PeekRequest, _ session: FakeSession) throws {
        switch request {
        case .refuse:
            try session.send(.ok(ref: ref))
        case .grant(let channel, let peek, let grant):
            guard peek != Self.announcedPeek
                || PeekKeyWrap.verify(grant, channel: channel, peek: peek, viewerKey: Self.peekViewer.publicKey)
            else { return try session.send(.error(ProtocolError(.invalidField, "bad grant"), ref: ref)) }
            try session.send(.ok(ref: ref))
        case .earnings:
            let channel = state.withLock { $0.id }
            try session.send(.earnings(ref: ref, balanceCents: 467, entries: [
                EarningsEntry(channel: channel, peek: "pk_FSIvPElWY3B9ipeksb7L2A", cents: 117, time: 1_764_700_000_000),
            ]))
            try session.send(.peekUpdate(PeekView(
                id: Self.announcedPeek, channel: channel, phase: "awaiting_grant",
                deadline: Int64(Date().timeIntervalSince1970 * 1000) + 300_000, priceCents: 500,
                refusalFeeCents: 100, capturedCents: 0, viewerKey: Self.peekViewer.publicKey, sandbox: true)))
        case .request, .confirm, .status:
            try session.send(.error(ProtocolError(.unknownType, "viewer frame"), ref: ref))
        }
    }

    static let announcedPeek = "pk_" + Base64URL.encode(SecureRandom.bytes(16))
    static let peekViewer = EncryptionKeyPair()

    /// Answers `frame` from `session`; false for frames that are not channel or peek requests.
    func handle(_ frame: ClientFrame, _ session: FakeSession) throws -> Bool {
        if case .peek(let ref, let request) = frame {
            try handlePeek(ref, request, session)
            return true
        }
        guard case .channel(let ref, let request) = frame else { return false }
        var replies: [ServerFrame] = []
        state.withLock { s in
            func refuse(_ code: String, _ message: String) {
                replies.append(.error(ProtocolError(ErrorCode(rawValue: code), message), ref: ref))
            }
            switch request {
            case .create(let name, let open, let members):
                s.name = name
                s.open = open
                s.owner = session.did
                s.members = [session.did] + members.filter { $0 != session.did }
                s.epoch = 1
                replies.append(.channel(ref: ref, description(s)))
            case .describe:
                replies.append(.channel(ref: ref, description(s)))
            case .list(let after, _):
                // Two pages: the channel, then nothing.
                replies.append(after == nil ? .channels(ref: ref, [description(s)], next: s.id)
                                            : .channels(ref: ref, [], next: nil))
            case .invite, .listing, .unsubscribe:
                replies.append(.ok(ref: ref))
            case .join:
                s.members.append(session.did)
                s.epoch += 1
                replies.append(.channel(ref: ref, description(s)))
            case .leave:
                s.members.removeAll { $0 == session.did }
                s.epoch += 1
                replies.append(.ok(ref: ref))
            case .remove(_, let did):
                s.members.removeAll { $0 == did }
                s.epoch += 1
                replies.append(.ok(ref: ref))
            case .rotate:
                s.epoch += 1
                replies.append(.ok(ref: ref))
            case .publishKeys(let keys):
                guard keys.epoch == s.epoch, Set(keys.envelopes.keys) == Set(s.members) else {
                    return refuse("stale_epoch", "the current epoch is \(s.epoch)")
                }
                guard s.keySets[keys.epoch] == nil else { return refuse("keys_exist", "published already") }
                s.keySets[keys.epoch] = KeySet(sender: session.did, signature: keys.signature,
                                               envelopes: keys.envelopes)
                replies.append(.ok(ref: ref))
            case .getKeys(let channel, let epoch):
                guard let set = s.keySets[epoch], set.envelopes[session.did] != nil else {
                    return refuse("not_found", "no keys")
                }
                replies.append(.keys(ref: ref, channel: channel, epoch: epoch, sender: set.sender,
                                     signature: set.signature,
                                     envelopes: Dictionary(uniqueKeysWithValues: set.envelopes.map {
                                         ($0.key.description, $0.value)
                                     })))
            case .send(let message):
                guard message.epoch == s.epoch, s.keySets[s.epoch] != nil else {
                    return refuse("stale_epoch", "the current epoch is \(s.epoch)")
                }
                let stored = StoredMessage(offset: Int64(s.messages.count) + 1, sender: session.did,
                                           timestamp: Int64(Date().timeIntervalSince1970 * 1000),
                                           epoch: message.epoch, clientMessageID: message.clientMessageID,
                                           nonce: message.nonce, ciphertext: message.ciphertext,
                                           signature: message.signature)
                s.messages.append(stored)
                replies.append(.messageAck(ref: ref, channel: message.channel, offset: stored.offset,
                                           duplicate: false))
            case .history(let channel, let before, let after, let limit):
                let items = s.messages.filter { $0.offset > (after ?? 0) && $0.offset < (before ?? .max) }
                replies.append(.messages(ref: ref, channel: channel,
                                         Array(after == nil ? items.suffix(limit) : items.prefix(limit)), next: nil))
            case .setCursor(let channel, let offset):
                let latest = Int64(s.messages.count)
                guard offset <= latest else { return refuse("invalid_field", "past the latest offset") }
                let read = max(s.cursors[session.did] ?? 0, offset)
                s.cursors[session.did] = read
                replies.append(.cursor(ref: ref, ReadCursor(channel: channel, read: read, offset: latest,
                                                            unread: latest - read)))
            case .unread(let after, _):
                // Two pages: the channel, then nothing.
                let latest = Int64(s.messages.count)
                let read = s.cursors[session.did] ?? 0
                replies.append(after == nil
                    ? .unread(ref: ref, [ReadCursor(channel: s.id, name: s.name, read: read, offset: latest,
                                                    unread: latest - read)], next: s.id)
                    : .unread(ref: ref, [], next: nil))
            case .subscribe(let channel, let since, _):
                replies.append(.subscribed(ref: ref, channel: channel, historyEpoch: historyEpoch,
                                           offset: Int64(s.messages.count), recovered: true))
                if let since {
                    replies.append(.messages(ref: nil, channel: channel, s.messages.filter { $0.offset > since },
                                             next: nil))
                }
            }
        }
        for reply in replies { try session.send(reply) }
        return true
    }
}
