import AgentChatCore
import AgentChatProtocol
import CoreTestSupport
import Logging
import MetricsTestKit
import Testing

/// `AdminService` without processes: who is let in, and what a status answer holds when the store is away.
@Suite struct AdminServiceTests {
    static let token = "0123456789abcdef-admin"
    static let identity = BrokerIdentity(id: "b1", address: "127.0.0.1:8080", version: "0.1.0", pid: 42, process: nil,
                                         startedAt: 1_000)

    static func service(token: String? = token) -> AdminService {
        AdminService(configuration: .init(token: token, identity: identity), clock: ManualClock(), store: nil,
                     metrics: BrokerMetrics(factory: TestMetrics()),
                     local: { .init(connections: [.agent: 2, .viewer: 1], channelFeeds: 3) },
                     storeHealth: { StoreHealth(up: true, latencyMilliseconds: 0.5, commandReconnects: 1) },
                     recentErrors: { [RecentLogLine(time: 5, level: "warning", logger: "agentchat.redis", message: "x")] },
                     logger: Logger(label: "test"))
    }

    static func request(_ authorization: String?) -> HTTPRequest {
        HTTPRequest(method: .get, path: AdminService.statusPath,
                    headers: authorization.map { ["authorization": $0] } ?? [:])
    }

    @Test(arguments: [
        ("Bearer \(token)", true),
        ("bearer \(token)", true),
        ("BEARER   \(token)  ", true),
        ("Bearer \(token)x", false),
        ("Bearer \(token.dropLast())", false),
        ("Bearer \(token.dropLast())X", false),
        ("Bearer \(token.uppercased())", false),
        ("Basic \(token)", false),
        (token, false),
        ("Bearer", false),
        ("Bearer ", false),
        ("", false),
    ])
    func onlyTheExactTokenAfterBearerIsAccepted(header: String, accepted: Bool) {
        #expect(Self.service().isAuthorized(Self.request(header)) == accepted)
    }

    @Test func withoutAConfiguredTokenNothingIsAccepted() {
        let service = Self.service(token: nil)
        #expect(!service.isEnabled)
        #expect(!service.isAuthorized(Self.request("Bearer ")))
        #expect(!service.isAuthorized(Self.request("Bearer \(Self.token)")))
    }

    @Test func aMissingTokenIs401AndTheStatusHoldsThisBroker() throws {
        let service = Self.service()
        var answers: [HTTPResponse] = []
        service.status(Self.request(nil)) { answers.append($0) }
        service.status(Self.request("Bearer \(Self.token)")) { answers.append($0) }
        try #require(answers.count == 2)
        #expect(answers[0].status == 401)
        #expect(try JSONParser.parse(answers[0].body)["error"]?["code"] == "unauthorized")
        #expect(answers[0].extraHeaders.contains { $0 == ("X-Robots-Tag", "noindex, nofollow") })
        #expect(answers[1].status == 200)
        #expect(answers[1].extraHeaders.contains { $0 == ("X-Robots-Tag", "noindex, nofollow") })
        let status = try JSONParser.parse(answers[1].body)
        #expect(status["connections"] == ["agent": 2, "viewer": 1, "unauthenticated": 0, "total": 3])
        #expect(status["channels"]?["subscribed"] == 3)
        #expect(status["channels"]?["listed"] == .null)
        #expect(status["redis"]?["up"] == true)
        #expect(status["redis"]?["reconnects"] == 1)
        #expect(status["brokers"]?.arrayValue?.first?["id"] == "b1")
        #expect(status["recentErrors"]?.arrayValue?.first?["logger"] == "agentchat.redis")
    }
}
