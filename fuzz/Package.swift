// swift-tools-version: 6.1
import PackageDescription

// libFuzzer targets for the pure parsing code: a separate package (like loadtest/) so that `-sanitize=fuzzer`
// never reaches the broker's own build. `make fuzz` builds it with
// `swift build -c release -Xswiftc -sanitize=fuzzer,address`; each executable is one libFuzzer binary whose
// `LLVMFuzzerTestOneInput` checks its properties with `precondition`.
let package = Package(
    name: "AgentChatFuzz",
    platforms: [.macOS(.v14)],
    dependencies: [
        // `AgentChat` is a committed symlink to `..`: a path dependency's identity is its directory's name, and
        // `..` would be named after the checkout (`fuzz` in a worktree of that name, which collides with this
        // package's own identity). Through the symlink it is always `agentchat`.
        .package(name: "AgentChat", path: "AgentChat"),
    ],
    targets: [
        // Starts libFuzzer's driver from a Swift executable (see its header for why).
        .target(name: "CFuzzerDriver", path: "Sources/CFuzzerDriver"),
        // JSONParser: never crashes; what parses re-encodes (JSONWriter) to bytes that parse to the same value.
        .executableTarget(name: "fuzz-json", dependencies: ["CFuzzerDriver", .product(name: "AgentChatProtocol", package: "AgentChat")],
                          path: "Sources/FuzzJSON"),
        // FrameCodec.decode of client frames and RegistrationRequest.parse; the identifiers inside decoded frames
        // re-parse to themselves; error replies are valid JSON, echo what they should and stay small.
        .executableTarget(name: "fuzz-frame", dependencies: ["CFuzzerDriver", .product(name: "AgentChatProtocol", package: "AgentChat")],
                          path: "Sources/FuzzFrame"),
        // JWSVerifier with one fixed key: never crashes, never accepts a token that key did not sign.
        .executableTarget(name: "fuzz-jws",
                          dependencies: ["CFuzzerDriver", .product(name: "AgentChatProtocol", package: "AgentChat"),
                                         .product(name: "AgentChatCrypto", package: "AgentChat")],
                          path: "Sources/FuzzJWS"),
        // Base58, Base64URL, DID and ChannelID: round trips both ways.
        .executableTarget(name: "fuzz-encoding",
                          dependencies: ["CFuzzerDriver", .product(name: "AgentChatProtocol", package: "AgentChat")],
                          path: "Sources/FuzzEncoding"),
        // The HTTP request-head validator. Until that pure type lands in AgentChatProtocol (being written on
        // another branch), this target only builds and exits; see Sources/FuzzHTTPRequestHead/main.swift.
        .executableTarget(name: "fuzz-http-request-head",
                          dependencies: ["CFuzzerDriver", .product(name: "AgentChatProtocol", package: "AgentChat")],
                          path: "Sources/FuzzHTTPRequestHead"),
    ],
    swiftLanguageModes: [.v6]
)
