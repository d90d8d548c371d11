import AgentChatTransport
import Testing

struct HTTPClientURLTests {
    @Test func parsesWhatTheClientSends() throws {
        let stripe = try #require(HTTPClientURL("https://api.stripe.com/v1/payment_intents/pi_1?expand[]=x"))
        #expect(stripe == HTTPClientURL(isTLS: true, host: "api.stripe.com", port: 443,
                                        path: "/v1/payment_intents/pi_1?expand[]=x"))
        #expect(stripe.hostHeader == "api.stripe.com")
        #expect(stripe.origin == "https://api.stripe.com")

        let local = try #require(HTTPClientURL("HTTP://127.0.0.1:8420"))
        #expect(local == HTTPClientURL(isTLS: false, host: "127.0.0.1", port: 8420, path: "/"))
        #expect(local.hostHeader == "127.0.0.1:8420")

        let v6 = try #require(HTTPClientURL("http://[::1]:99/a#fragment"))
        #expect(v6 == HTTPClientURL(isTLS: false, host: "::1", port: 99, path: "/a"))
        #expect(v6.hostHeader == "[::1]:99")
        #expect(HTTPClientURL("https://Example.COM:443?q=1") == HTTPClientURL(isTLS: true, host: "example.com",
                                                                              port: 443, path: "/?q=1"))
    }

    @Test func refusesWhatItCannotSendSafely() {
        for text in ["ftp://x/", "http:/x", "http://", "http://user:pw@host/", "http://host:0/", "http://host:65536/",
                     "http://host:/", "http://ho st/", "http://host/a b", "http://host/a\r\nX: y", "http://[::1/",
                     "http://[zz]/", "http://host:8a/", "http://hos_t/", "//host/", "http://host/é"] {
            #expect(HTTPClientURL(text) == nil, "\(text)")
        }
    }
}
