// swift-tools-version: 6.1
import PackageDescription

let package = Package(
    name: "AgentChat",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "agentchat-broker", targets: ["agentchat-broker"]),
        .library(name: "AgentChatProtocol", targets: ["AgentChatProtocol"]),
        .library(name: "AgentChatCrypto", targets: ["AgentChatCrypto"]),
        .library(name: "AgentChatClient", targets: ["AgentChatClient"]),
        .executable(name: "agentchat", targets: ["agentchat"]),
        .executable(name: "agentchat-demo", targets: ["agentchat-demo"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        // The Model Context Protocol SDK for `agentchat mcp`: only its `MCP` library is built (its dependency on
        // swift-nio serves its conformance executables, which nothing here builds).
        .package(url: "https://github.com/modelcontextprotocol/swift-sdk", from: "0.12.1"),
    ],
    targets: [
        // C libraries, each behind its own system-library target found with pkg-config.
        .systemLibrary(name: "CLibUV", pkgConfig: "libuv", providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CLibWebSockets", pkgConfig: "libwebsockets", providers: [.apt(["libwebsockets-dev"])]),
        .systemLibrary(name: "CHiredis", pkgConfig: "hiredis", providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CSodium", pkgConfig: "libsodium", providers: [.apt(["libsodium-dev"])]),
        // TLS for the client side (the SDK and the CLI over https:// and wss://); the broker's TLS goes through
        // libwebsockets, which links the same OpenSSL.
        .systemLibrary(name: "COpenSSL", pkgConfig: "openssl", providers: [.apt(["libssl-dev"])]),
        // What Swift cannot import from a C library (expression macros, enumerators, glue), one module per library,
        // checked against the installed headers by the C compiler.
        .target(name: "CLibWebSocketsShims", dependencies: ["CLibWebSockets"]),
        .target(name: "CHiredisShims", dependencies: ["CHiredis", "CLibUV"]),
        // prctl (variadic, so not imported): the supervisor's workers ask to be stopped when it dies.
        .target(name: "CProcessShims"),

        // The one event loop (libuv) and the loop-bound types built on it.
        .target(name: "AgentChatLoop", dependencies: ["CLibUV", .product(name: "Logging", package: "swift-log")]),
        // Every rule of the wire, pure Swift: no C, no I/O.
        .target(name: "AgentChatProtocol", path: "Sources/Protocol"),
        // Every cryptographic primitive, through libsodium: signatures, session tokens, key storage.
        .target(name: "AgentChatCrypto", dependencies: ["AgentChatProtocol", "CSodium"]),
        // The broker's application logic: login, channels, live delivery, indicators, HTTP endpoints. No
        // libwebsockets, hiredis or libuv: connections, stores and the clock are protocols it is handed.
        .target(name: "AgentChatCore",
                dependencies: ["AgentChatProtocol", "AgentChatCrypto",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Metrics", package: "swift-metrics")]),
        // The libwebsockets server: HTTP/1.1 and WebSocket connections, queues, keep-alive. The only importer of
        // libwebsockets.
        .target(name: "AgentChatTransport",
                dependencies: ["AgentChatCore", "AgentChatProtocol", "AgentChatLoop", "CLibWebSockets",
                               "CLibWebSocketsShims", "CLibUV",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "DequeModule", package: "swift-collections")]),
        // Payments on Stripe's REST API over the transport's HTTP client: the `PaymentGateway` the core is handed.
        .target(name: "AgentChatPayments",
                dependencies: ["AgentChatCore", "AgentChatTransport", "AgentChatProtocol", "AgentChatLoop",
                               .product(name: "Logging", package: "swift-log")]),
        // A general Redis client over hiredis: connections, pipelining, pub/sub, scripts, embedded redis-server.
        .target(name: "AgentChatRedis",
                dependencies: ["AgentChatLoop", "CHiredis", "CHiredisShims",
                               .product(name: "Logging", package: "swift-log")]),
        // The product's Redis stores: the key layout and Lua scripts behind the core's store protocols.
        .target(name: "AgentChatPersistence",
                dependencies: ["AgentChatCore", "AgentChatProtocol", "AgentChatRedis", "AgentChatCrypto", "AgentChatLoop",
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/Persistence"),
        // The composition root: command line, configuration, logging and metrics, the wiring; the viewer page.
        .target(name: "AgentChatBroker",
                dependencies: ["AgentChatCore", "AgentChatTransport", "AgentChatPersistence", "AgentChatRedis",
                               "AgentChatPayments", "AgentChatLoop", "AgentChatCrypto", "AgentChatProtocol",
                               "CProcessShims",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Metrics", package: "swift-metrics"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "ArgumentParser", package: "swift-argument-parser")],
                path: "Sources/Broker",
                resources: [.copy("Web"), .copy("Admin")]),
        .executableTarget(name: "agentchat-broker", dependencies: ["AgentChatBroker"]),
        // A small blocking RFC 6455 client: tests drive the broker with it, byte by byte when needed; the SDK
        // connects with it, over TLS (OpenSSL) for wss://.
        .target(name: "WebSocketClient", dependencies: ["COpenSSL"]),

        // The agent SDK: identity files, registration, login, reconnection, the frame request/reply core.
        .target(name: "AgentChatClient", dependencies: ["AgentChatCrypto", "AgentChatProtocol", "WebSocketClient"]),
        // The `agentchat` command line, built on the SDK.
        .executableTarget(name: "agentchat",
                          dependencies: ["AgentChatClient", "AgentChatProtocol",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "MCP", package: "swift-sdk"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Sources/AgentChatCLI"),
        // `make demo`: two SDK agents talking in a listed channel, granting peeks.
        .executableTarget(name: "agentchat-demo", dependencies: ["AgentChatClient", "AgentChatProtocol"],
                          path: "Sources/agentchat-demo"),

        .target(name: "TestSupport", dependencies: ["WebSocketClient", "AgentChatRedis"], path: "Tests/TestSupport"),
        // In-memory twins of the core's stores, a manual clock and a recording connection.
        .target(name: "CoreTestSupport",
                dependencies: ["AgentChatCore", "AgentChatProtocol", "AgentChatCrypto",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "MetricsTestKit", package: "swift-metrics")],
                path: "Tests/CoreTestSupport"),
        .testTarget(name: "ProtocolTests", dependencies: ["AgentChatProtocol"]),
        .testTarget(name: "CryptoTests", dependencies: ["AgentChatCrypto", "AgentChatProtocol"]),
        .testTarget(name: "CoreTests",
                    dependencies: ["AgentChatCore", "CoreTestSupport", "AgentChatProtocol", "AgentChatCrypto",
                                   .product(name: "Logging", package: "swift-log"),
                                   .product(name: "MetricsTestKit", package: "swift-metrics")]),
        .testTarget(name: "RedisTests", dependencies: ["AgentChatRedis", "AgentChatPersistence", "AgentChatLoop", "TestSupport"]),
        .testTarget(name: "BrokerTests",
                    dependencies: ["AgentChatBroker", "AgentChatCore", "AgentChatTransport", "TestSupport",
                                   "WebSocketClient", "AgentChatProtocol", "AgentChatCrypto", "AgentChatRedis"]),
        .testTarget(name: "ClientTests",
                    dependencies: ["AgentChatClient", "AgentChatCrypto", "AgentChatProtocol", "WebSocketClient",
                                   "TestSupport"]),
        // The pure parts of `agentchat mcp` (Tests/MCP drives the whole server with the MCP Python SDK).
        .testTarget(name: "MCPTests", dependencies: ["agentchat", "AgentChatProtocol"]),
        .testTarget(name: "WebSocketClientTests", dependencies: ["WebSocketClient", "TestSupport"]),
        .testTarget(name: "PaymentsTests",
                    dependencies: ["AgentChatPayments", "AgentChatTransport", "AgentChatCore", "AgentChatLoop",
                                   "AgentChatProtocol", "TestSupport", .product(name: "Logging", package: "swift-log")]),
    ],
    swiftLanguageModes: [.v6]
)
