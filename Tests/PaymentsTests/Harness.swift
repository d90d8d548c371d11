import AgentChatCore
import AgentChatLoop
import AgentChatPayments
import AgentChatTransport
import Logging
import Synchronization

/// A loop thread with one started `HTTPClient` on it, and helpers that run calls there and wait for completions,
/// checking that no completion runs inside the call that started it.
final class ClientHarness: Sendable {
    let loop: EventLoop
    let client: LoopBound<HTTPClient>
    let logs: LogRecorder

    init(configuration: HTTPClient.Configuration = .init()) async throws {
        let loop = EventLoop.startThread(name: "payments-test")
        let logs = LogRecorder()
        self.loop = loop
        self.logs = logs
        do {
            client = try await loop.submit {
                let client = HTTPClient(loop: loop, configuration: configuration, logger: logs.logger("http"))
                try client.start()
                return LoopBound(client, loop: loop)
            }
        } catch {
            loop.stop()
            throw error
        }
    }

    func send(_ request: HTTPClient.Request) async -> Result<HTTPClient.Response, HTTPClientError> {
        let client = client
        return try! await loop.submitAndWait { (complete: @escaping (Result<Result<HTTPClient.Response, HTTPClientError>, any Error>) -> Void) in
            let returned = CallReturned()
            client.value.send(request) { result in
                precondition(returned.value, "completion called inside send()")
                complete(.success(result))
            }
            returned.value = true
        }
    }

    /// Runs `call` with the gateway on the loop thread and waits for its completion.
    func call(_ gateway: LoopBound<StripeGateway>,
              _ call: @escaping @Sendable (StripeGateway, @escaping PaymentCompletion) -> Void) async
        -> Result<PaymentIntent, PaymentError>
    {
        try! await loop.submitAndWait { (complete: @escaping (Result<Result<PaymentIntent, PaymentError>, any Error>) -> Void) in
            let returned = CallReturned()
            call(gateway.value) { result in
                precondition(returned.value, "completion called inside the gateway call")
                complete(.success(result))
            }
            returned.value = true
        }
    }

    func gateway(_ configuration: StripeGateway.Configuration) async throws -> LoopBound<StripeGateway> {
        let client = client
        let logs = logs
        return try await loop.submit {
            LoopBound(try StripeGateway(client: client.value, configuration: configuration,
                                        logger: logs.logger("stripe")), loop: client.loop)
        }
    }

    /// Shuts the client down and stops the loop.
    func close() async {
        let client = client
        _ = try? await loop.submitAndWait { (done: @escaping (Result<Int, any Error>) -> Void) in
            client.value.shutdown { done(.success(client.value.pendingCount)) }
        }
        loop.stop()
    }
}

/// Loop-thread only.
final class CallReturned: @unchecked Sendable {
    var value = false
}

/// Every log line (message and metadata, rendered), to check what is and is not logged.
final class LogRecorder: Sendable {
    private let lines = Mutex<[String]>([])

    func logger(_ label: String) -> Logger {
        var logger = Logger(label: label) { _ in Handler(recorder: self) }
        logger.logLevel = .trace
        return logger
    }

    var all: [String] { lines.withLock { $0 } }

    fileprivate func record(_ line: String) { lines.withLock { $0.append(line) } }

    private struct Handler: LogHandler {
        let recorder: LogRecorder
        var metadata: Logger.Metadata = [:]
        var logLevel: Logger.Level = .trace

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            let merged = metadata.merging(event.metadata ?? [:]) { $1 }
            let rendered = merged.sorted { $0.key < $1.key }.map { "\($0.key)=\($0.value)" }.joined(separator: " ")
            recorder.record("\(event.level) \(event.message) \(rendered)")
        }
    }
}

extension Result {
    var failure: Failure? {
        if case .failure(let failure) = self { return failure }
        return nil
    }

    var success: Success? {
        if case .success(let success) = self { return success }
        return nil
    }
}

/// Runs `body` with a fresh harness and closes it afterwards, whether `body` throws or not.
func withHarness(_ configuration: HTTPClient.Configuration = .init(),
                 _ body: (ClientHarness) async throws -> Void) async throws
{
    let harness = try await ClientHarness(configuration: configuration)
    do {
        try await body(harness)
    } catch {
        await harness.close()
        throw error
    }
    await harness.close()
}
