import AgentChatRedis
import Testing

@Suite struct RedisEndpointTests {
    @Test(arguments: [
        ("redis://localhost", RedisEndpoint.tcp(host: "localhost", port: 6379)),
        ("redis://127.0.0.1:6380", .tcp(host: "127.0.0.1", port: 6380)),
        ("redis://redis.internal:7000/", .tcp(host: "redis.internal", port: 7000)),
        ("redis://host:1/0", .tcp(host: "host", port: 1)),
        ("redis://[::1]:6379", .tcp(host: "::1", port: 6379)),
        ("redis://[::1]", .tcp(host: "::1", port: 6379)),
        ("unix:///var/run/redis/redis.sock", .unix(path: "/var/run/redis/redis.sock")),
    ])
    func parsesValidURLs(url: String, expected: RedisEndpoint) throws {
        #expect(try RedisEndpoint(url: url) == expected)
    }

    @Test(arguments: [
        ("", "expected a redis://"),
        ("http://localhost:6379", "expected a redis://"),
        ("redis://", "missing host"),
        ("redis://:6379", "missing host"),
        ("redis://host:0", "port"),
        ("redis://host:65536", "port"),
        ("redis://host:abc", "port"),
        ("redis://host:", "port"),
        ("redis://host/3", "database selection is not supported"),
        ("redis://:secret@host:6379", "credentials"),
        ("redis://host?timeout=1", "query"),
        ("redis://[::1", "IPv6"),
        ("unix://relative/path", "absolute path"),
        ("unix:///", "names no file"),
        ("unix:///tmp/dir/", "names no file"),
    ])
    func rejectsInvalidURLs(url: String, reason: String) {
        do {
            let endpoint = try RedisEndpoint(url: url)
            Issue.record("\(url) parsed as \(endpoint)")
        } catch {
            #expect(error.description.contains(reason), "\(error.description)")
            #expect(error.url == url)
        }
    }

    @Test func descriptionRoundTrips() throws {
        for url in ["redis://127.0.0.1:6380", "redis://[::1]:6379", "unix:///tmp/r.sock"] {
            #expect(try RedisEndpoint(url: url).description == url)
        }
    }
}
