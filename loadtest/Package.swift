// swift-tools-version: 6.1
import PackageDescription

// The load-test harness: a separate package so the broker's own build stays lean. It depends on the broker's
// package by path only for the wire rules (AgentChatProtocol) and libsodium (AgentChatCrypto).
let package = Package(
    name: "AgentChatLoadTest",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "agentchat-loadtest", targets: ["agentchat-loadtest"]),
    ],
    dependencies: [
        .package(name: "AgentChat", path: ".."),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // epoll, non-blocking connect from a chosen source address, the monotonic clock: what Swift imports badly
        // (epoll_event is a packed struct on x86_64).
        .target(name: "CLoadTestShims", path: "Sources/CLoadTestShims"),
        .executableTarget(
            name: "agentchat-loadtest",
            dependencies: [
                "CLoadTestShims",
                .product(name: "AgentChatProtocol", package: "AgentChat"),
                .product(name: "AgentChatCrypto", package: "AgentChat"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "Sources/LoadTest"),
    ],
    swiftLanguageModes: [.v6]
)
