import AgentChatCrypto
import AgentChatProtocol
import Foundation
import WebSocketClient

/// The state of an ``AgentChatClient``'s connection, as published by ``AgentChatClient/stateChanges()``.
public enum ConnectionState: Sendable, Equatable {
    /// Not connected, and not trying to be (before ``AgentChatClient/connect()``, or after a failed one).
    case disconnected
    /// Opening the WebSocket.
    case connecting
    /// The WebSocket is open; logging in (`hello` → `auth` → `welcome`).
    case authenticating
    /// Logged in.
    case connected(AgentProfile)
    /// The connection dropped; attempt `attempt` starts after `delay` seconds.
    case reconnecting(attempt: Int, delay: Double)
    /// Reconnection gave up: the broker refused the identity, or ``ReconnectBackoff/maxAttempts`` ran out.
    case failed(AgentChatError)
    /// ``AgentChatClient/close()`` was called. Final.
    case closed
}

/// A session token from a `welcome`: lets a reconnection skip the challenge until it expires.
public struct SessionToken: Sendable, Equatable, CustomStringConvertible {
    /// The compact JWS. Treat it as a password.
    public let token: String
    /// When the broker stops accepting it, Unix milliseconds.
    public let expiresAt: Int64

    public init(token: String, expiresAt: Int64) {
        self.token = token
        self.expiresAt = expiresAt
    }

    public var description: String { "SessionToken(expiresAt: \(expiresAt), redacted)" }
}

/// The answer to ``AgentChatClient/ping()``.
public struct Pong: Sendable, Equatable {
    /// The broker's clock, Unix milliseconds.
    public let brokerTime: Int64
    /// From sending `ping` to receiving `pong`.
    public let roundTrip: Duration
}

/// An agent's connection to an AgentChat broker: registration over HTTP, login over the WebSocket
/// (subprotocol `WireProtocol.subprotocol`), automatic reconnection, and a request/reply core for typed frames
/// (`ClientFrame` out, `ServerFrame` in, both through `FrameCodec`).
///
/// Concurrency: an actor owns the connection state. Blocking socket I/O runs only on dedicated threads (one per
/// WebSocket connection, see `FrameConnection`, and one per HTTP request), never on the Swift concurrency pool.
///
/// Frames: ``request(_:timeout:)`` sends a frame with a fresh `id` and returns the broker's answer, matched by its
/// `ref` (an `error` answer is thrown as ``AgentChatError`` with the broker's code; an answer the codec cannot read
/// as ``AgentChatError/Category/protocolViolation``). Frames the broker sends on its own (without a `ref` this
/// client is waiting for) go to ``unsolicitedFrames()``.
///
/// Paid peeks: viewers may pay to read a listed channel for a while. The SDK follows a ``PeekPolicy`` per client
/// (``Configuration/peekPolicy``, default ``PeekPolicy/grant``) and optionally per channel: under `.grant` it
/// wraps the key of the channel's current epoch for the viewer and sends `peek.grant` once the refusal window has
/// passed; under `.refuse` it refuses every pending peek; under `.ask` it asks a ``PeekDecider`` (no answer in
/// time counts as grant). When a peek ends, it moves the channel to a new epoch. See ``peekEvents()``.
///
/// Reconnection: once connected, a dropped connection is reopened automatically with ``ReconnectBackoff``
/// (exponential, full jitter), logging in with the stored session token while it is valid and with a signed
/// challenge otherwise (also when the broker answers `token_invalid` or `challenge_expired`). ``close()`` is final.
public actor AgentChatClient {
    /// Tunables.
    public struct Configuration: Sendable {
        /// Seconds to wait for the TCP connection and the WebSocket upgrade, and for the HTTP registration.
        public var connectTimeout: Double = 10
        /// Seconds to wait for the answer to a request (including `auth` and `hello`).
        public var requestTimeout: Double = 10
        /// Reconnect automatically after a connection that was logged in drops.
        public var autoReconnect = true
        public var backoff = ReconnectBackoff()
        /// A stored token is used only if it stays valid at least this many more seconds.
        public var tokenExpiryMargin: Double = 5
        /// What the SDK does with paid peeks of the agent's channels. Default ``PeekPolicy/grant``: nobody refused
        /// within the refusal window, so the SDK wraps the channel's current key for the viewer and grants. Change
        /// it later, or per channel, with ``AgentChatClient/setPeekPolicy(_:)`` and
        /// ``AgentChatClient/setPeekPolicy(_:for:)``.
        public var peekPolicy: PeekPolicy = .grant
        /// For an `https://` (`wss://`) broker: a PEM file of CA certificates to trust besides the system's (e.g. a
        /// private CA). The certificate chain and the host name are always verified; a failure is `tls_failed`.
        /// Unused for a plain `http://` broker.
        public var caFile: String?

        public init() {}
    }

    /// The WebSocket subprotocol this client speaks.
    public static var subprotocol: String { WireProtocol.subprotocol }

    public nonisolated let identity: AgentIdentity
    public nonisolated let server: BrokerURL
    public nonisolated let configuration: Configuration

    /// The current state.
    public private(set) var state: ConnectionState = .disconnected
    /// The profile from the last `welcome`.
    public private(set) var profile: AgentProfile?
    /// The session token from the last `welcome`.
    public private(set) var sessionToken: SessionToken?

    /// The challenge of a `hello`, kept until login signs it.
    private struct Hello {
        let broker: String
        let challenge: String
    }

    private var connection: FrameConnection?
    /// Incremented for every connection (and by `close`): events of older connections are ignored.
    private var generation = 0
    private var nextRequestID = 0
    private var pending: [String: CheckedContinuation<ServerFrame, any Error>] = [:]
    private var bufferedHello: Hello?
    private var helloWaiter: (id: Int, continuation: CheckedContinuation<Hello, any Error>)?
    private var nextWaiterID = 0
    private var connectTask: Task<AgentProfile, any Error>?
    /// Whether `connectTask` is still running (set when it starts, cleared by `establish` as it ends).
    private var establishing = false
    private var reconnectTask: Task<Void, Never>?
    private var isClosed = false
    private nonisolated let states = Broadcaster<ConnectionState>(replaysLatest: true, initial: .disconnected)
    private nonisolated let unsolicited = Broadcaster<ServerFrame>(replaysLatest: false)
    /// `peek.update` frames, and those plus what the SDK did about them (see `AgentChatClient+Peeks.swift`).
    nonisolated let peekViews = Broadcaster<PeekView>(replaysLatest: false)
    nonisolated let peekNews = Broadcaster<PeekEvent>(replaysLatest: false)
    /// Peek policies and what the client remembers of each peek.
    var peekState: PeekClientState
    /// Channel keys, subscriptions and counters (see `AgentChatClient+Channels.swift`).
    var channelState = ChannelClientState()

    public init(identity: AgentIdentity, server: BrokerURL, configuration: Configuration = Configuration()) {
        self.identity = identity
        self.server = server
        self.configuration = configuration
        self.peekState = PeekClientState(defaultPolicy: configuration.peekPolicy)
    }

    /// A client for the broker at `server` (e.g. `http://127.0.0.1:8080`, or `https://chat.example.com` over TLS).
    public init(identity: AgentIdentity, server: String, configuration: Configuration = Configuration())
        throws(AgentChatError)
    {
        self.init(identity: identity, server: try BrokerURL(server), configuration: configuration)
    }

    // MARK: - Streams

    /// Every state change, starting with the current state.
    public nonisolated func stateChanges() -> AsyncStream<ConnectionState> { states.subscribe() }

    /// Frames the broker sent that are not answers to this client's pending requests (and not `hello`): live
    /// `messages` and `channel.event` frames (also delivered to ``subscribe(channel:since:historyEpoch:)``'s
    /// streams), and `error` frames without a `ref`.
    public nonisolated func unsolicitedFrames() -> AsyncStream<ServerFrame> { unsolicited.subscribe() }

    // MARK: - Registration

    /// Registers the identity's keys under `name` (default: the identity's name) with
    /// `POST /api/v1/agents/register`, signed as `docs/PROTOCOL.md` specifies.
    ///
    /// - Throws: ``AgentChatError`` with the broker's code: `already_registered` (``AgentChatError/existingDID``
    ///   set), `rate_limited` (``AgentChatError/retryAfterSeconds`` set), `bad_signature`, `stale_timestamp`,
    ///   `invalid_field`, ...; `invalid_argument` for a name the broker would refuse; `network_error`; `tls_failed`
    ///   (an `https://` broker whose certificate does not verify, see ``Configuration/caFile``).
    public nonisolated func register(name: String? = nil) async throws(AgentChatError) -> AgentProfile {
        guard let name = name ?? identity.name else { throw .invalidArgument("registration needs a name") }
        let request = try AgentRegistration(identity: identity, name: name, timestamp: Self.nowMilliseconds())
        let response: HTTPResponse
        do {
            response = try await HTTPClient.post(url: server, tls: server.tlsOptions(caFile: configuration.caFile),
                                                 path: server.path("/api/v1/agents/register"),
                                                 contentType: "application/json",
                                                 body: JSONWriter.encode(request.json),
                                                 timeout: configuration.connectTimeout)
        } catch {
            throw .connection("cannot reach \(server)", error)
        }
        guard response.status == 201 else {
            throw Self.httpError(status: response.status, headers: response.headers, body: response.body)
        }
        guard let json = try? JSONParser.parse(response.body), let agent = json["agent"] else {
            throw .protocolViolation("201 without a JSON body carrying \"agent\"")
        }
        let profile = try AgentProfile(validating: agent)
        guard profile.did == identity.did else {
            throw .protocolViolation("the broker registered \(profile.did), expected \(identity.did)")
        }
        return profile
    }

    /// The error for a refused HTTP request: the body's `error.code` and `error.message`, plus `did` for
    /// `already_registered` and `Retry-After` for `429`.
    static func httpError(status: Int, headers: [String: String], body: [UInt8]) -> AgentChatError {
        let json = try? JSONParser.parse(body)
        let code = json?["error"]?["code"]?.stringValue ?? "http_\(status)"
        let message = json?["error"]?["message"]?.stringValue ?? "HTTP \(status)"
        var error = AgentChatError.server(code, message, httpStatus: status)
        if let didText = json?["did"]?.stringValue ?? json?["error"]?["did"]?.stringValue {
            error.existingDID = DID(parsing: didText)
        }
        if let retry = headers["retry-after"], let seconds = Int(retry.trimmingCharacters(in: .whitespaces)) {
            error.retryAfterSeconds = seconds
        }
        return error
    }

    // MARK: - Connecting

    /// Connects and logs in; returns the agent's profile from `welcome`. Returns at once when connected already;
    /// joins a login in progress.
    ///
    /// - Throws: `auth_failed` (bad signature or unregistered DID), `network_error`, `tls_failed` (TLS with an
    ///   `https://` broker failed, e.g. its certificate did not verify), `timeout`, `unexpected_response`,
    ///   `client_closed`.
    @discardableResult
    public func connect() async throws(AgentChatError) -> AgentProfile {
        if isClosed { throw .closed }
        if case .connected(let profile) = state { return profile }
        if let reconnectTask, !establishing {
            // A reconnection is waiting out its backoff: log in now instead.
            reconnectTask.cancel()
            self.reconnectTask = nil
        }
        do {
            return try await establishOnce()
        } catch {
            if !isClosed && reconnectTask == nil && !establishing {
                if case .connected = state {} else { setState(.disconnected) }
            }
            throw error
        }
    }

    /// Joins the login in progress, or starts one: never two connections at once.
    private func establishOnce() async throws(AgentChatError) -> AgentProfile {
        let task: Task<AgentProfile, any Error>
        if let connectTask, establishing {
            task = connectTask
        } else {
            establishing = true
            task = Task { try await self.establish() }
            connectTask = task
        }
        do {
            return try await task.value
        } catch {
            throw Self.wrap(error)
        }
    }

    /// One connection and login.
    private func establish() async throws(AgentChatError) -> AgentProfile {
        defer { establishing = false }
        setState(.connecting)
        let opened = try await FrameConnection.open(url: server, tls: server.tlsOptions(caFile: configuration.caFile),
                                                    timeout: configuration.connectTimeout)
        guard !isClosed else {
            await opened.close()
            throw .closed
        }
        generation += 1
        let current = generation
        connection = opened
        bufferedHello = nil
        Task { [weak self] in
            for await event in opened.events {
                guard let self else { return }
                await self.handle(event, generation: current)
            }
        }
        setState(.authenticating)
        do throws(AgentChatError) {
            var hello = try await nextHello()
            if let token = sessionToken,
                Double(token.expiresAt) > Double(Self.nowMilliseconds()) + configuration.tokenExpiryMargin * 1000
            {
                do throws(AgentChatError) {
                    let welcome = try await sendRequest(.auth(id: nil, .token(token.token)),
                                                        timeout: configuration.requestTimeout)
                    return try accept(welcome: welcome, generation: current)
                } catch where error.code == AgentChatError.Codes.tokenInvalid
                    || error.code == AgentChatError.Codes.challengeExpired
                {
                    // The broker answers a refused auth with an error and a fresh hello.
                    sessionToken = nil
                    hello = try await nextHello()
                }
            }
            let signature = identity.sign(AuthChallenge.signedBytes(broker: hello.broker, challenge: hello.challenge))
            let welcome = try await sendRequest(.auth(id: nil, .signature(did: identity.did, signature: signature)),
                                                timeout: configuration.requestTimeout)
            return try accept(welcome: welcome, generation: current)
        } catch {
            if generation == current {
                generation += 1
                connection = nil
                failPending(with: error)
            }
            await opened.close()
            throw error
        }
    }

    private func accept(welcome: ServerFrame, generation current: Int) throws(AgentChatError) -> AgentProfile {
        // The codec reads the profile with `AgentProfile(json:)`, which refuses a DID that is not its signing key's.
        guard case .welcome(_, let profile, let token, let expiresAt) = welcome else {
            throw .protocolViolation("expected welcome, got \(welcome.type.rawValue)")
        }
        guard profile.did == identity.did else {
            throw .protocolViolation("welcome for \(profile.did), expected \(identity.did)")
        }
        guard generation == current, connection != nil else {
            throw .network("the connection closed during login")
        }
        self.profile = profile
        sessionToken = SessionToken(token: token, expiresAt: expiresAt)
        setState(.connected(profile))
        if !channelState.subscriptions.isEmpty {
            Task { await self.resubscribeAll(generation: current) }
        }
        return profile
    }

    // MARK: - Requests

    /// Sends `frame` with a fresh `id` (replacing the frame's own) and returns the broker's answer: the frame
    /// whose `ref` is that id. An `error` answer is thrown with the broker's code.
    ///
    /// Requires a logged-in connection (`not_connected` otherwise).
    public func request(_ frame: ClientFrame, timeout: Double? = nil) async throws(AgentChatError) -> ServerFrame {
        guard case .connected = state else { throw .notConnected }
        return try await sendRequest(frame, timeout: timeout ?? configuration.requestTimeout)
    }

    /// Sends `frame` as it is (with its own `id`, or none) without waiting for an answer. An answer with a `ref`
    /// goes to ``unsolicitedFrames()``. Requires a logged-in connection.
    public func send(_ frame: ClientFrame) throws(AgentChatError) {
        guard case .connected = state, let connection else { throw .notConnected }
        guard connection.send(frame) else { throw .network("the connection is closed") }
    }

    /// The application-level round trip (`ping` → `pong`).
    public func ping() async throws(AgentChatError) -> Pong {
        let start = ContinuousClock.now
        let reply = try await request(.ping(id: nil))
        guard case .pong(_, let time) = reply else {
            throw .protocolViolation("expected pong, got \(reply.type.rawValue)")
        }
        return Pong(brokerTime: time, roundTrip: ContinuousClock.now - start)
    }

    private func sendRequest(_ frame: ClientFrame, timeout: Double) async throws(AgentChatError) -> ServerFrame {
        guard let connection else { throw .notConnected }
        nextRequestID += 1
        let id = "c\(nextRequestID)"
        let frame = frame.with(id: id)
        let timer = Task { [weak self] in
            try? await Task.sleep(for: .seconds(timeout))
            if !Task.isCancelled { await self?.expireRequest(id, after: timeout) }
        }
        defer { timer.cancel() }
        do {
            return try await withCheckedThrowingContinuation { continuation in
                pending[id] = continuation
                if !connection.send(frame) {
                    pending.removeValue(forKey: id)
                    continuation.resume(throwing: AgentChatError.network("the connection is closed"))
                }
            }
        } catch {
            throw Self.wrap(error)
        }
    }

    private func expireRequest(_ id: String, after timeout: Double) {
        pending.removeValue(forKey: id)?.resume(
            throwing: AgentChatError(code: AgentChatError.Codes.timeout, category: .network,
                                     message: "no answer within \(timeout) s"))
    }

    private func nextHello() async throws(AgentChatError) -> Hello {
        if let hello = bufferedHello {
            bufferedHello = nil
            return hello
        }
        guard connection != nil else { throw .notConnected }
        nextWaiterID += 1
        let waiterID = nextWaiterID
        let timeout = configuration.requestTimeout
        let timer = Task { [weak self] in
            try? await Task.sleep(for: .seconds(timeout))
            if !Task.isCancelled { await self?.expireHelloWaiter(waiterID, after: timeout) }
        }
        defer { timer.cancel() }
        do {
            return try await withCheckedThrowingContinuation { continuation in
                helloWaiter = (waiterID, continuation)
            }
        } catch {
            throw Self.wrap(error)
        }
    }

    private func expireHelloWaiter(_ id: Int, after timeout: Double) {
        guard let waiter = helloWaiter, waiter.id == id else { return }
        helloWaiter = nil
        waiter.continuation.resume(
            throwing: AgentChatError(code: AgentChatError.Codes.timeout, category: .network,
                                     message: "no hello within \(timeout) s"))
    }

    // MARK: - Events

    private func handle(_ event: FrameConnection.Event, generation eventGeneration: Int) {
        guard eventGeneration == generation else { return }
        switch event {
        case .frame(let frame):
            if let ref = frame.ref, let continuation = pending.removeValue(forKey: ref) {
                switch frame {
                case .subscribed(_, let channel, let historyEpoch, let offset, let recovered):
                    // Applied here, in frame order, before any `messages` frame that follows it.
                    applySubscribed(channel: channel, historyEpoch: historyEpoch, latest: offset, recovered: recovered)
                    continuation.resume(returning: frame)
                case .error(let error, _):
                    continuation.resume(throwing: AgentChatError.server(error.code.rawValue, error.message))
                default:
                    continuation.resume(returning: frame)
                }
            } else if case .hello(let broker, let challenge, _) = frame {
                let hello = Hello(broker: broker, challenge: challenge)
                if let waiter = helloWaiter {
                    helloWaiter = nil
                    waiter.continuation.resume(returning: hello)
                } else {
                    bufferedHello = hello
                }
            } else {
                routeChannelFrame(frame)
                routePeekFrame(frame)
                unsolicited.yield(frame)
            }
        case .undecodable(let error, let ref):
            // An answer the codec cannot read fails its request now; anything else unreadable is dropped.
            if let ref, let continuation = pending.removeValue(forKey: ref) {
                continuation.resume(throwing: AgentChatError.protocolViolation(
                    "unreadable answer: \(error.code.rawValue): \(error.message)"))
            }
        case .closed(let ending):
            let wasConnected: Bool
            if case .connected = state { wasConnected = true } else { wasConnected = false }
            generation += 1
            connection = nil
            var error = AgentChatError.network("connection closed: \(ending.reason)", closeCode: ending.closeCode)
            if let code = ending.closeCode { error = .network("connection closed (\(code)): \(ending.reason)",
                                                              closeCode: code) }
            failPending(with: error)
            if isClosed || ending.requestedLocally { return }
            if wasConnected {
                if configuration.autoReconnect {
                    startReconnecting()
                } else {
                    setState(.disconnected)
                }
            }
        }
    }

    private func failPending(with error: any Error) {
        let waiting = pending
        pending.removeAll()
        for (_, continuation) in waiting { continuation.resume(throwing: error) }
        if let waiter = helloWaiter {
            helloWaiter = nil
            waiter.continuation.resume(throwing: error)
        }
        bufferedHello = nil
    }

    // MARK: - Reconnecting

    private func startReconnecting() {
        guard reconnectTask == nil else { return }
        reconnectTask = Task { await self.reconnectLoop() }
    }

    private func reconnectLoop() async {
        var attempt = 0
        while !isClosed && !Task.isCancelled {
            attempt += 1
            if let limit = configuration.backoff.maxAttempts, attempt > limit {
                setState(.failed(.network("gave up reconnecting after \(limit) attempts")))
                break
            }
            let delay = configuration.backoff.delay(forAttempt: attempt)
            setState(.reconnecting(attempt: attempt, delay: delay))
            try? await Task.sleep(for: .seconds(delay))
            if isClosed || Task.isCancelled { break }
            do {
                _ = try await establishOnce()
                break
            } catch {
                if isClosed { break }
                // The broker refusing this identity will not change by retrying.
                if error.code == AgentChatError.Codes.authFailed {
                    setState(.failed(error))
                    break
                }
            }
        }
        if !Task.isCancelled { reconnectTask = nil }
    }

    // MARK: - Closing

    /// Closes the connection (closing handshake, code 1000), stops reconnecting, fails waiting requests with
    /// `client_closed`, and finishes the streams. Final: the client cannot connect again.
    public func close() async {
        guard !isClosed else { return }
        isClosed = true
        reconnectTask?.cancel()
        reconnectTask = nil
        let open = connection
        connection = nil
        generation += 1
        failPending(with: AgentChatError.closed)
        endAllSubscriptions(with: .closed)
        setState(.closed)
        await open?.close()
        states.finish()
        unsolicited.finish()
        peekViews.finish()
        peekNews.finish()
    }

    // MARK: - Helpers

    private func setState(_ newState: ConnectionState) {
        guard newState != state else { return }
        state = newState
        states.yield(newState)
        if case .failed(let error) = newState { endAllSubscriptions(with: error) }
    }

    /// The current connection's generation (for work that must not outlive its connection).
    var connectionGeneration: Int { generation }

    static func nowMilliseconds() -> Int64 { Int64((Date().timeIntervalSince1970 * 1000).rounded()) }

    private static func wrap(_ error: any Error) -> AgentChatError {
        if let error = error as? AgentChatError { return error }
        if error is CancellationError { return .network("cancelled") }
        return .network("\(error)")
    }
}
