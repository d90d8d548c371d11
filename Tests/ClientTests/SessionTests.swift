import AgentChatClient
import AgentChatCrypto
import AgentChatProtocol
import Foundation
import Testing

@Suite(.serialized) struct SessionTests {
    /// A registered identity and a client for it on a fresh fake broker.
    private func registeredClient(_ broker: FakeBroker, configuration: AgentChatClient.Configuration? = nil)
        async throws -> (AgentIdentity, AgentChatClient)
    {
        let identity = AgentIdentity.generate()
        let client = try AgentChatClient(identity: identity, server: broker.url,
                                         configuration: configuration ?? testConfiguration())
        _ = try await client.register(name: "alice")
        return (identity, client)
    }

    @Test func connectSignsTheChallengeAndStoresTheToken() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let (identity, client) = try await registeredClient(broker)
        let states = Collector(client.stateChanges())
        let profile = try await client.connect()
        #expect(profile.did == identity.did)
        #expect(profile.name == "alice")
        #expect(await client.state == .connected(profile))
        let token = try #require(await client.sessionToken)
        #expect(token.token == broker.welcomeTokens.first)
        #expect(token.expiresAt > Int64(Date().timeIntervalSince1970 * 1000))
        #expect(!token.description.contains(token.token))

        let auth = try #require(broker.authFrames.first)
        #expect(auth.authDID == identity.did)
        #expect(auth.authToken == nil)
        #expect(auth.id != nil)

        let pong = try await client.ping()
        #expect(pong.brokerTime > 0)
        // A second connect returns the same profile without a new login.
        #expect(try await client.connect() == profile)
        #expect(broker.authFrames.count == 1)

        await client.close()
        #expect(await client.state == .closed)
        try await waitUntil("the closed state") { states.values.last == .closed }
        #expect(states.values.contains(.authenticating))
        #expect(states.values.contains(.connected(profile)))
        await #expect(throws: AgentChatError.closed) { try await client.connect() }
        await #expect(throws: AgentChatError.notConnected) { try await client.ping() }
        states.cancel()
    }

    @Test func errorFramesAndUnsolicitedFrames() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let (_, client) = try await registeredClient(broker)
        let unsolicited = Collector(client.unsolicitedFrames())
        _ = try await client.connect()
        // An error answer (with our id as ref) is thrown with the broker's code. (The fake answers every frame it
        // does not handle, here a channel request, with `unknown_type`.)
        let channel = ChannelID(randomBytes: SecureRandom.bytes(16))
        let error = await #expect(throws: AgentChatError.self) {
            try await client.request(.channel(id: nil, .describe(channel)))
        }
        #expect(error?.code == "unknown_type")
        #expect(error?.category == .server)
        // A frame without an id is answered without a ref: it goes to the unsolicited stream.
        try await client.send(.channel(id: nil, .describe(channel)))
        try await waitUntil("an unsolicited error frame") { unsolicited.values.count == 1 }
        guard case .error(let unsolicitedError, let ref) = unsolicited.values.first else {
            Issue.record("expected an error frame, got \(unsolicited.values)")
            return
        }
        #expect(unsolicitedError.code == .unknownType)
        #expect(ref == nil)
        // The connection is still fine.
        #expect(try await client.ping().brokerTime > 0)
        await client.close()
        unsolicited.cancel()
    }

    /// An answer the codec cannot read (here a `channel` frame without its description) fails the request it
    /// answers at once, as a protocol violation, instead of leaving it to time out.
    @Test func anUnreadableAnswerFailsItsRequest() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        broker.frameHandler = { frame, session in
            try session.send(bytes: Array(#"{"ref":"\#(frame.id ?? "")","type":"channel"}"#.utf8))
            return true
        }
        let (_, client) = try await registeredClient(broker)
        _ = try await client.connect()
        // The request fails as a protocol violation (not by running into its timeout, which is a network error).
        let error = await #expect(throws: AgentChatError.self) {
            try await client.describe(channel: ChannelID(randomBytes: SecureRandom.bytes(16)))
        }
        #expect(error?.category == .protocolViolation)
        #expect(error?.message.contains("bad_frame") == true)
        #expect(try await client.ping().brokerTime > 0)
        await client.close()
    }

    @Test func unregisteredIdentityIsRefused() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let client = try AgentChatClient(identity: .generate(), server: broker.url, configuration: testConfiguration())
        await #expect(throws: AgentChatError.authFailed) { try await client.connect() }
        #expect(await client.state == .disconnected)
        await client.close()
    }

    @Test func reconnectsWithTheStoredToken() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let (identity, client) = try await registeredClient(broker)
        let profile = try await client.connect()
        let firstToken = try #require(await client.sessionToken?.token)
        let states = Collector(client.stateChanges())

        broker.dropConnections()
        try await waitUntil("a second login") { broker.authFrames.count == 2 }
        try await waitUntil("the reconnected state") { await client.state == .connected(profile) }

        let second = broker.authFrames[1]
        #expect(second.authToken == firstToken)
        #expect(second.authDID == nil)
        #expect(await client.sessionToken?.token == broker.welcomeTokens.last)
        #expect(states.values.contains { if case .reconnecting = $0 { true } else { false } })
        #expect(try await client.ping().brokerTime > 0)
        #expect(identity.did == profile.did)
        await client.close()
        states.cancel()
    }

    @Test func fallsBackToTheChallengeWhenTheTokenIsRefused() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        let (identity, client) = try await registeredClient(broker)
        let profile = try await client.connect()
        let firstToken = try #require(await client.sessionToken?.token)
        broker.refuseTokens = true

        broker.dropConnections()
        try await waitUntil("a login by challenge after the refused token") { broker.authFrames.count == 3 }
        try await waitUntil("the reconnected state") { await client.state == .connected(profile) }

        let frames = broker.authFrames
        #expect(frames[1].authToken == firstToken)
        #expect(frames[2].authToken == nil)
        #expect(frames[2].authDID == identity.did)
        let newToken = try #require(await client.sessionToken?.token)
        #expect(newToken != firstToken)
        #expect(newToken == broker.welcomeTokens.last)
        #expect(try await client.ping().brokerTime > 0)
        await client.close()
    }

    @Test func noReconnectionWhenDisabled() async throws {
        let broker = try FakeBroker()
        defer { broker.stop() }
        var configuration = testConfiguration()
        configuration.autoReconnect = false
        let (_, client) = try await registeredClient(broker, configuration: configuration)
        _ = try await client.connect()
        broker.dropConnections()
        try await waitUntil("the disconnected state") { await client.state == .disconnected }
        await #expect(throws: AgentChatError.notConnected) { try await client.ping() }
        // An explicit connect logs in again (with the token).
        _ = try await client.connect()
        #expect(broker.authFrames.last?.authToken != nil)
        await client.close()
    }

    @Test func closeDuringReconnectionStopsIt() async throws {
        let broker = try FakeBroker()
        let (_, client) = try await registeredClient(broker)
        _ = try await client.connect()
        broker.stop()  // the drop, and nothing to reconnect to
        try await waitUntil("reconnecting") {
            if case .reconnecting = await client.state { return true } else { return false }
        }
        await client.close()
        #expect(await client.state == .closed)
    }
}

extension ClientFrame {
    /// The DID of a login by signature.
    var authDID: DID? { if case .auth(_, .signature(let did, _)) = self { did } else { nil } }
    /// The session token of a login by token.
    var authToken: String? { if case .auth(_, .token(let token)) = self { token } else { nil } }
}
