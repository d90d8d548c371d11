import AgentChatCrypto
import AgentChatProtocol
import Foundation
import TestSupport
import WebSocketClient

/// An agent identity made in the test, registering and logging in by hand, byte for byte as the protocol says.
struct TestAgent {
    let signing: SigningKeyPair
    let encryption: EncryptionKeyPair
    let name: String

    init(name: String = "agent-\(UUID().uuidString.prefix(6))") {
        signing = SigningKeyPair()
        encryption = EncryptionKeyPair()
        self.name = name
    }

    var did: DID { DID(signingKey: signing.publicKey) }

    /// The registration body, signed (or not, when `signature` is given).
    func registrationBody(timestamp: Int64 = Int64(Date().timeIntervalSince1970 * 1000),
                          name overrideName: String? = nil, signature: [UInt8]? = nil) -> JSONValue
    {
        let name = overrideName ?? self.name
        let signingKey = Base64URL.encode(signing.publicKey)
        let encryptionKey = Base64URL.encode(encryption.publicKey)
        let signed = Array("agentchat-register-v1\n\(name)\n\(signingKey)\n\(encryptionKey)\n\(timestamp)".utf8)
        return [
            "name": .string(name), "signingKey": .string(signingKey), "encryptionKey": .string(encryptionKey),
            "timestamp": .number(Double(timestamp)),
            "signature": .string(Base64URL.encode(signature ?? signing.sign(signed))),
        ]
    }

    static func post(port: Int, body: [UInt8], contentType: String = "application/json",
                     headers: [(String, String)] = []) throws -> TestSupport.HTTPResponse
    {
        try HTTPProbe.request(port: port, method: "POST", path: "/api/v1/agents/register",
                              headers: [("Content-Type", contentType)] + headers, body: body)
    }

    func register(port: Int) throws -> TestSupport.HTTPResponse {
        try Self.post(port: port, body: JSONWriter.encode(registrationBody()))
    }

    /// Signs the challenge of `hello` and sends `auth`; returns the broker's answer.
    func login(_ client: WebSocketClient, hello: JSONValue, id: String = "login") throws -> JSONValue {
        try client.send(text: String(decoding: JSONWriter.encode(authFrame(hello: hello, id: id)), as: UTF8.self))
        return try JSONParser.parse(client.receiveText(timeout: 5))
    }

    func authFrame(hello: JSONValue, id: String = "login") -> JSONValue {
        let broker = hello["broker"]?.stringValue ?? ""
        let challenge = hello["challenge"]?.stringValue ?? ""
        let signature = signing.sign(Array("agentchat-auth-v1\n\(broker)\n\(challenge)".utf8))
        return ["type": "auth", "id": .string(id), "did": .string(did.description),
                "signature": .string(Base64URL.encode(signature))]
    }
}

/// A minimal RESP client for looking at Redis directly from tests.
enum RedisProbe {
    static func command(port: Int, _ arguments: [String]) throws -> String {
        var request = "*\(arguments.count)\r\n"
        for argument in arguments { request += "$\(argument.utf8.count)\r\n\(argument)\r\n" }
        let bytes = try HTTPProbe.rawExchange(port: port, bytes: Array((request + "*1\r\n$4\r\nQUIT\r\n").utf8),
                                              timeout: 2)
        return String(decoding: bytes, as: UTF8.self)
    }

    static func keyCount(port: Int) throws -> Int {
        let reply = try command(port: port, ["DBSIZE"])
        // "\r\n" is one Character in Swift, so split on it as a string.
        guard let first = reply.components(separatedBy: "\r\n").first, first.hasPrefix(":"),
            let count = Int(first.dropFirst())
        else { throw FixtureError.unexpected("DBSIZE answered \(reply)") }
        return count
    }
}
