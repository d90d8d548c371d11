#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Runs blocking work on a fresh, detached OS thread (never on Swift concurrency's cooperative pool,
/// which may have as few threads as there are cores) and resumes the awaiting task with its result.
public enum DedicatedThread {
    private final class Job: @unchecked Sendable {
        let body: () -> Void
        init(_ body: @escaping () -> Void) { self.body = body }
    }

    /// Starts `body` on a new detached thread.
    public static func start(_ body: @escaping @Sendable () -> Void) {
        let job = Unmanaged.passRetained(Job(body)).toOpaque()
        #if canImport(Darwin)
        var tid: pthread_t? = nil
        #else
        var tid = pthread_t()
        #endif
        let rc = pthread_create(&tid, nil, { raw in
            #if canImport(Darwin)
            let job = Unmanaged<Job>.fromOpaque(raw).takeRetainedValue()
            #else
            let job = Unmanaged<Job>.fromOpaque(raw!).takeRetainedValue()
            #endif
            job.body()
            return nil
        }, job)
        precondition(rc == 0, "pthread_create failed: \(rc)")
        #if canImport(Darwin)
        pthread_detach(tid!)
        #else
        pthread_detach(tid)
        #endif
    }

    /// Runs `body` on a dedicated thread and returns (or throws) its result.
    public static func run<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
            start {
                do { continuation.resume(returning: try body()) } catch { continuation.resume(throwing: error) }
            }
        }
    }
}

extension WebSocketClient {
    /// Async `connect`: performs the blocking handshake on a dedicated thread.
    public static func connect(host: String = "127.0.0.1", port: Int, path: String = "/",
                               subprotocols: [String], headers: [(String, String)] = [],
                               sourceAddress: String? = nil, tls: TLSOptions? = nil,
                               timeout: Double = 5) async throws -> WebSocketClient {
        let sendableHeaders = headers.map { SendablePair(name: $0.0, value: $0.1) }
        return try await DedicatedThread.run {
            try WebSocketClient.connect(host: host, port: port, path: path, subprotocols: subprotocols,
                                        headers: sendableHeaders.map { ($0.name, $0.value) },
                                        sourceAddress: sourceAddress, tls: tls, timeout: timeout)
        }
    }

    /// Async `receive`: waits on a dedicated thread.
    public func receive(timeout: Double) async throws -> Message {
        try await DedicatedThread.run { try self.receive(timeout: timeout) }
    }

    /// Async `receiveText`: waits on a dedicated thread.
    public func receiveText(timeout: Double) async throws -> String {
        try await DedicatedThread.run { try self.receiveText(timeout: timeout) }
    }

    /// Async `receiveFrame`: waits on a dedicated thread.
    public func receiveFrame(timeout: Double) async throws -> WebSocketFrame {
        try await DedicatedThread.run { try self.receiveFrame(timeout: timeout) }
    }

    /// Async closing handshake on a dedicated thread.
    @discardableResult
    public func close(code: UInt16 = 1000, reason: String = "", timeout: Double = 5) async -> (code: UInt16?, reason: String)? {
        let result = try? await DedicatedThread.run { () -> CloseResult in
            CloseResult(value: self.close(code: code, reason: reason, timeout: timeout))
        }
        return result?.value ?? nil
    }
}

private struct SendablePair: Sendable {
    let name: String
    let value: String
}

private struct CloseResult: @unchecked Sendable {
    let value: (code: UInt16?, reason: String)?
}
