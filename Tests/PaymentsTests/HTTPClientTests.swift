import AgentChatLoop
import AgentChatRedis
import AgentChatTransport
import Foundation
import TestSupport
import Testing

@Suite(.serialized) struct HTTPClientTests {
    @Test func getAndPostOverPlainHTTP() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        try await withHarness { harness in
        // No script: the server echoes the request.
        let get = try await harness.send(.init(method: .get, url: server.baseURL + "/v1/things/pi_1?x=1",
                                               headers: [.init("Authorization", "Bearer sk_test_secret"),
                                                         .init("X-Trace", "a\tb")])).get()
        #expect(get.status == 200)
        #expect(get.header("Content-Type") == "application/json")
        let echo = try #require(try JSONSerialization.jsonObject(with: Data(get.body)) as? [String: Any])
        #expect(echo["method"] as? String == "GET")
        #expect(echo["path"] as? String == "/v1/things/pi_1?x=1")

        let body = Array("amount=500&metadata[peek]=p%201".utf8)
        let post = try await harness.send(.init(method: .post, url: server.baseURL + "/v1/payment_intents",
                                                headers: [.init("Content-Type", "application/x-www-form-urlencoded"),
                                                          .init("Idempotency-Key", "key-1")],
                                                body: body)).get()
        #expect(post.status == 200)
        // An empty POST still says Content-Length: 0.
        _ = try await harness.send(.init(method: .post, url: server.baseURL + "/empty")).get()

        let recorded = try server.requests()
        try #require(recorded.count == 3)
        #expect(recorded[0].method == "GET")
        #expect(recorded[0].header("Authorization") == "Bearer sk_test_secret")
        #expect(recorded[0].header("X-Trace") == "a\tb")
        #expect(recorded[0].header("Host") == "127.0.0.1:\(server.server.port)")
        #expect(recorded[0].header("User-Agent") == "agentchat-broker")
        #expect(recorded[0].header("Content-Length") == nil)
        #expect(recorded[1].method == "POST")
        #expect(recorded[1].path == "/v1/payment_intents")
        #expect(recorded[1].body == "amount=500&metadata[peek]=p%201")
        #expect(recorded[1].headers(named: "Content-Length") == ["\(body.count)"])
        #expect(recorded[1].header("Idempotency-Key") == "key-1")
        #expect(recorded[1].header("Content-Type") == "application/x-www-form-urlencoded")
        #expect(recorded[2].headers(named: "Content-Length") == ["0"])
        #expect(recorded[2].body == "")
        // Header values never reach the logs.
        #expect(!harness.logs.all.contains { $0.contains("sk_test_secret") })
        }
    }

    @Test func statusesHeadersAndBodyFraming() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        try await withHarness(.init(maxResponseBodyBytes: 100_000)) { harness in
        try server.enqueue([
            .init(status: 402, headers: ["Content-Type": "application/json", "Request-Id": "req_123",
                                         "Stripe-Should-Retry": "false"], body: #"{"error":{}}"#),
            .init(status: 200, body: "0123456789", chunked: true, repeatBody: 5_000),
            .init(status: 200, body: "unframed body", unframed: true),
            .init(status: 503, headers: [:], body: ""),
            .init(status: 200, body: "x", repeatBody: 100_001),
            .init(status: 200, body: "x", chunked: true, repeatBody: 100_001),
        ])
        let url = server.baseURL + "/"
        let refused = try await harness.send(.init(method: .post, url: url, body: [1],
                                                   extraResponseHeaders: ["Request-Id", "stripe-should-retry",
                                                                          "absent-header"])).get()
        #expect(refused.status == 402)
        #expect(refused.header("request-id") == "req_123")
        #expect(refused.header("Stripe-Should-Retry") == "false")
        #expect(refused.header("absent-header") == nil)
        #expect(refused.header("content-length") == "12")
        #expect(String(decoding: refused.body, as: UTF8.self) == #"{"error":{}}"#)

        let chunked = try await harness.send(.init(method: .get, url: url)).get()
        #expect(chunked.body == Array(String(repeating: "0123456789", count: 5_000).utf8))
        let unframed = try await harness.send(.init(method: .get, url: url)).get()
        #expect(String(decoding: unframed.body, as: UTF8.self) == "unframed body")
        let empty = try await harness.send(.init(method: .get, url: url)).get()
        #expect(empty.status == 503)
        #expect(empty.body.isEmpty)
        #expect(await harness.send(.init(method: .get, url: url)).failure == .responseTooLarge(limit: 100_000))
        #expect(await harness.send(.init(method: .get, url: url)).failure == .responseTooLarge(limit: 100_000))
        }
    }

    @Test func failuresComeLaterAndOnce() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        try await withHarness { harness in
        // Nothing listens there.
        let closedPort = try EmbeddedRedis.freeLoopbackPort()
        guard case .connectionFailed = await harness.send(.init(method: .get, url: "http://127.0.0.1:\(closedPort)/"))
            .failure
        else { throw Failure("a closed port did not fail to connect") }

        // Answered after the deadline.
        try server.enqueue([.init(delaySeconds: 3), .init()])
        let started = ContinuousClock.now
        #expect(await harness.send(.init(method: .get, url: server.baseURL + "/", timeoutSeconds: 0.5)).failure
            == .timedOut(seconds: 0.5))
        let waited = ContinuousClock.now - started
        // Not before the deadline; and not the server's answer either, which comes at 3 s (`.timedOut` above already
        // says so: no bound on how late a loaded machine runs the timer is asserted).
        #expect(waited >= .milliseconds(500), "\(waited)")
        // The client goes on with other requests (the scripted 200).
        #expect(try await harness.send(.init(method: .get, url: server.baseURL + "/")).get().status == 200)

        // Refused before anything is sent.
        guard case .invalidRequest = await harness.send(.init(method: .get, url: "ftp://127.0.0.1/")).failure,
            case .invalidRequest = await harness.send(.init(method: .get, url: server.baseURL,
                                                            headers: [.init("X-A", "1\r\nX-Injected: 2")])).failure,
            case .invalidRequest = await harness.send(.init(method: .get, url: server.baseURL,
                                                            headers: [.init("Bad Name", "1")])).failure,
            case .invalidRequest = await harness.send(.init(method: .post, url: server.baseURL,
                                                            headers: [.init("content-length", "1")])).failure
        else { throw Failure("an invalid request was not refused") }
        #expect(try server.requests().count == 2)
        }
    }

    @Test func shutdownFailsPendingRequests() async throws {
        let server = try ScriptedHTTPServer()
        defer { server.stop() }
        let harness = try await ClientHarness()
        try server.enqueue([.init(delaySeconds: 5)])
        let client = harness.client
        let url = server.baseURL + "/"
        let outcomes = try await harness.loop.submitAndWait {
            (complete: @escaping (Result<[HTTPClientError?], any Error>) -> Void) in
            let state = ShutdownState()
            let check = {
                if state.shutDown, state.outcomes.count == 2 { complete(.success(state.outcomes)) }
            }
            client.value.send(.init(method: .get, url: url)) { state.outcomes.append($0.failure); check() }
            // Once the first request has reached the server, shut down with it pending; then send another.
            state.timer = LoopTimer(loop: client.loop) {
                client.value.shutdown { state.shutDown = true; check() }
                client.value.send(.init(method: .get, url: url)) { state.outcomes.append($0.failure); check() }
            }
            state.timer?.start(after: 300)
        }
        #expect(outcomes == [.shutDown, .shutDown])
        #expect(try server.requests().count == 1)
        harness.loop.stop()
    }

    @Test func httpsWithAnExtraCAFile() async throws {
        let server = try ScriptedHTTPServer(tls: true)
        defer { server.stop() }
        let trusting = try await ClientHarness(configuration: .init(extraCAFile: server.certificatePath))
        let response = try await trusting.send(.init(method: .post, url: server.baseURL + "/tls",
                                                     body: Array("a=1".utf8))).get()
        let echo = try #require(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
        #expect(echo["path"] as? String == "/tls")
        #expect(echo["body"] as? String == "a=1")
        await trusting.close()

        // The system store alone does not trust a self-signed certificate.
        let strict = try await ClientHarness()
        guard case .connectionFailed = await strict.send(.init(method: .get, url: server.baseURL + "/")).failure else {
            await strict.close()
            throw Failure("an untrusted certificate was accepted")
        }
        await strict.close()
    }
}

/// Loop-thread only.
final class ShutdownState {
    var outcomes: [HTTPClientError?] = []
    var shutDown = false
    var timer: LoopTimer?
}

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}
