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
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
    ],
    targets: [
        // C libraries, each behind its own system-library target found with pkg-config.
        .systemLibrary(name: "CLibUV", path: "Sources/CLibUV", pkgConfig: "libuv",
                       providers: [.apt(["libuv1-dev"])]),
        .systemLibrary(name: "CLibWebSockets", path: "Sources/CLibWebSockets", pkgConfig: "libwebsockets",
                       providers: [.apt(["libwebsockets-dev"])]),
        .systemLibrary(name: "CHiredis", path: "Sources/CHiredis", pkgConfig: "hiredis",
                       providers: [.apt(["libhiredis-dev"])]),
        .systemLibrary(name: "CSodium", path: "Sources/CSodium", pkgConfig: "libsodium",
                       providers: [.apt(["libsodium-dev"])]),
        // What Swift cannot import directly: expression macros and the hiredis <-> libuv glue.
        .target(name: "CAgentChatShims", dependencies: ["CLibUV", "CLibWebSockets", "CHiredis"],
                path: "Sources/CAgentChatShims"),

        // The one event loop (libuv) and the loop-bound types built on it.
        .target(name: "AgentChatLoop", dependencies: ["CLibUV", "CAgentChatShims",
                                                      .product(name: "Logging", package: "swift-log")],
                path: "Sources/Loop"),
        // Every rule of the wire, pure Swift: no C, no I/O.
        .target(name: "AgentChatProtocol", path: "Sources/Protocol"),
        // Every cryptographic primitive, through libsodium: signatures, session tokens, key storage.
        .target(name: "AgentChatCrypto", dependencies: ["AgentChatProtocol", "CSodium"], path: "Sources/Crypto"),
        // Everything Redis, over hiredis.
        .target(name: "AgentChatPersistence",
                dependencies: ["AgentChatProtocol", "AgentChatLoop", "CHiredis", "CAgentChatShims",
                               .product(name: "Logging", package: "swift-log")],
                path: "Sources/Persistence"),
        // libwebsockets server, sessions, HTTP endpoints, configuration.
        .target(name: "AgentChatBroker",
                dependencies: ["AgentChatProtocol", "AgentChatPersistence", "AgentChatLoop", "AgentChatCrypto",
                               "CLibWebSockets", "CAgentChatShims", "CSodium",
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "Metrics", package: "swift-metrics"),
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "DequeModule", package: "swift-collections"),
                               .product(name: "ArgumentParser", package: "swift-argument-parser")],
                path: "Sources/Broker",
                resources: [.copy("Web")]),
        .executableTarget(name: "agentchat-broker", dependencies: ["AgentChatBroker"],
                          path: "Sources/BrokerMain"),
        // A small blocking RFC 6455 client: tests drive the broker with it, byte by byte when needed.
        .target(name: "WebSocketClient", path: "Sources/WebSocketClient"),

        // The agent SDK: identity files, registration, login, reconnection, the frame request/reply core.
        .target(name: "AgentChatClient", dependencies: ["AgentChatCrypto", "AgentChatProtocol", "WebSocketClient"],
                path: "Sources/AgentChatClient"),
        // The `agentchat` command line, built on the SDK.
        .executableTarget(name: "agentchat",
                          dependencies: ["AgentChatClient", "AgentChatProtocol",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser")],
                          path: "Sources/AgentChatCLI"),

        .target(name: "TestSupport", dependencies: ["WebSocketClient", "AgentChatPersistence"], path: "Tests/TestSupport"),
        .testTarget(name: "ProtocolTests", dependencies: ["AgentChatProtocol"]),
        .testTarget(name: "CryptoTests", dependencies: ["AgentChatCrypto", "AgentChatProtocol"]),
        .testTarget(name: "PersistenceTests",
                    dependencies: ["AgentChatPersistence", "AgentChatLoop", "TestSupport"]),
        .testTarget(name: "BrokerTests",
                    dependencies: ["AgentChatBroker", "TestSupport", "WebSocketClient", "AgentChatProtocol",
                                   "AgentChatCrypto"]),
        .testTarget(name: "ClientTests",
                    dependencies: ["AgentChatClient", "AgentChatCrypto", "AgentChatProtocol", "WebSocketClient",
                                   "TestSupport"]),
        .testTarget(name: "WebSocketClientTests", dependencies: ["WebSocketClient", "TestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
