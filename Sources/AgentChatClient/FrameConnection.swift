import AgentChatProtocol
import Foundation
import WebSocketClient

/// One WebSocket connection to the broker, owned by one dedicated thread.
///
/// `WebSocketClient` is blocking and must be used from one thread at a time, so a single connection thread does
/// all of its I/O: it waits for input in short slices (``pollInterval``) and, between slices, writes the frames
/// queued by ``send(_:)`` (encoded by `FrameCodec`). Input is delivered in order through ``events``: every text
/// message decoded by `FrameCodec.decodeServerFrame` (or, when that fails, the reason and the frame's `ref`), then
/// exactly one ``Event/closed(_:)`` when the connection ends for any reason, after which the stream finishes.
///
/// Thread safety: ``send(_:)`` and ``close()`` may be called from any thread; they only touch the lock-protected
/// outbox. Everything else belongs to the connection thread.
final class FrameConnection: @unchecked Sendable {
    enum Event: Sendable {
        case frame(ServerFrame)
        /// A JSON text message that is not a broker frame this client can read: why, and its `ref` if it has one
        /// (so a request waiting for it can fail at once instead of timing out).
        case undecodable(ProtocolError, ref: String?)
        /// The connection ended: the broker's close code (if it sent a close frame), and a description.
        case closed(Ending)
    }

    struct Ending: Sendable {
        var closeCode: CloseCode?
        var reason: String
        /// Whether ``close()`` asked for it.
        var requestedLocally: Bool
    }

    /// The longest a queued frame waits before the connection thread writes it.
    static let pollInterval = 0.02
    private static let codec = FrameCodec()

    let events: AsyncStream<Event>
    private let continuation: AsyncStream<Event>.Continuation
    private let lock = NSLock()
    private var outbox: [String] = []
    private var closeRequested = false
    private var finished = false
    private var finishWaiters: [CheckedContinuation<Void, Never>] = []

    /// Opens the WebSocket (offering `WireProtocol.subprotocol`) on a dedicated thread, then starts the connection thread.
    /// `tls` is nil for a plain URL; a TLS failure is `tls_failed`.
    static func open(url: BrokerURL, tls: TLSOptions?, timeout: Double) async throws(AgentChatError)
        -> FrameConnection
    {
        let client: WebSocketClient
        do {
            client = try await WebSocketClient.connect(host: url.host, port: url.port, path: url.path("/"),
                                                       subprotocols: [WireProtocol.subprotocol], tls: tls,
                                                       timeout: timeout)
        } catch let error as WebSocketError {
            if case .upgradeRejected(let response) = error {
                throw AgentChatClient.httpError(status: response.status, headers: response.headers,
                                                body: response.body)
            }
            throw .connection("cannot open a WebSocket to \(url)", error)
        } catch {
            throw .network("cannot open a WebSocket to \(url): \(error)")
        }
        guard client.negotiatedSubprotocol == WireProtocol.subprotocol else {
            client.disconnect()
            throw .protocolViolation("the server did not select the \(WireProtocol.subprotocol) subprotocol")
        }
        return FrameConnection(client: client)
    }

    private init(client: WebSocketClient) {
        (events, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .unbounded)
        DedicatedThread.start { [self] in run(client) }
    }

    /// Queues one frame (encoded by the codec) for the connection thread. Returns false if the connection has
    /// ended.
    @discardableResult
    func send(_ frame: ClientFrame) -> Bool {
        let text = String(decoding: Self.codec.encode(frame), as: UTF8.self)
        return lock.withLock {
            guard !finished && !closeRequested else { return false }
            outbox.append(text)
            return true
        }
    }

    /// Asks the connection thread for a closing handshake (code 1000) and waits until the thread has ended.
    func close() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let done = lock.withLock { () -> Bool in
                closeRequested = true
                if finished { return true }
                finishWaiters.append(waiter)
                return false
            }
            if done { waiter.resume() }
        }
    }

    // MARK: - Connection thread

    private func run(_ client: WebSocketClient) {
        var ending = Ending(closeCode: nil, reason: "", requestedLocally: false)
        loop: while true {
            let (frames, closing) = lock.withLock { () -> ([String], Bool) in
                defer { outbox.removeAll() }
                return (outbox, closeRequested)
            }
            do {
                for text in frames { try client.send(text: text) }
            } catch {
                ending.reason = "send failed: \(error)"
                break loop
            }
            if closing {
                let answer = client.close(code: CloseCode.normal.rawValue, reason: "", timeout: 2)
                ending = Ending(closeCode: answer?.code.map(CloseCode.init(rawValue:)), reason: "closed by the client",
                                requestedLocally: true)
                break loop
            }
            do {
                switch try client.receive(timeout: Self.pollInterval) {
                case .text(let text):
                    let bytes = Array(text.utf8)
                    do {
                        continuation.yield(.frame(try Self.codec.decodeServerFrame(bytes)))
                    } catch {
                        // A broker frame that is not JSON is ignored: there is nothing to answer it with.
                        if let json = try? JSONParser.parse(bytes) {
                            continuation.yield(.undecodable(error, ref: json["ref"]?.stringValue))
                        }
                    }
                case .close(let code, let reason):
                    ending.closeCode = code.map(CloseCode.init(rawValue:))
                    ending.reason = reason.isEmpty ? "closed by the broker" : reason
                    break loop
                case .binary, .ping, .pong:
                    continue
                }
            } catch WebSocketError.timeout {
                continue
            } catch {
                ending.reason = "\(error)"
                break loop
            }
        }
        client.disconnect()
        let waiters = lock.withLock { () -> [CheckedContinuation<Void, Never>] in
            finished = true
            outbox.removeAll()
            defer { finishWaiters.removeAll() }
            return finishWaiters
        }
        continuation.yield(.closed(ending))
        continuation.finish()
        for waiter in waiters { waiter.resume() }
    }
}
