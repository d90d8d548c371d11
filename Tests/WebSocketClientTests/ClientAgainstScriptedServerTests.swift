#if canImport(Glibc)
import Glibc
#endif
import Testing
@testable import WebSocketClient

/// The client against a real TCP server whose every byte is scripted by the test.
@Suite struct ClientAgainstScriptedServerTests {
    @Test func handshakeRequestAndSubprotocolNegotiation() throws {
        let server = try ScriptedServer { peer in
            let (requestLine, headers) = try peer.readRequestHead()
            guard requestLine == "GET /ws?x=1 HTTP/1.1" else { throw ScriptError("request line \(requestLine)") }
            guard headers["upgrade"] == "websocket", headers["connection"] == "Upgrade",
                  headers["sec-websocket-version"] == "13",
                  headers["sec-websocket-protocol"] == "agentchat.v1, other",
                  headers["authorization"] == "Bearer t0k",
                  headers["host"]?.hasPrefix("127.0.0.1:") == true,
                  let key = headers["sec-websocket-key"], Base64Decoded.length(key) == 16
            else { throw ScriptError("bad headers \(headers)") }
            try peer.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
                           + "Sec-WebSocket-Accept: \(WebSocketHandshake.acceptValue(forKey: key))\r\n"
                           + "Sec-WebSocket-Protocol: agentchat.v1\r\n\r\n")
            try peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, path: "/ws?x=1",
                                                 subprotocols: ["agentchat.v1", "other"],
                                                 headers: [("Authorization", "Bearer t0k")])
        #expect(client.negotiatedSubprotocol == "agentchat.v1")
        #expect(client.handshakeResponse.status == 101)
        client.disconnect()
        try server.join()
    }

    @Test func noSubprotocolHeaderWhenNoneRequested() throws {
        let server = try ScriptedServer { peer in
            let headers = try peer.acceptUpgrade()
            if headers["sec-websocket-protocol"] != nil { throw ScriptError("unexpected subprotocol header") }
            try peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        #expect(client.negotiatedSubprotocol == nil)
        client.disconnect()
        try server.join()
    }

    @Test func rejectedUpgradeCarriesStatusHeadersAndBody() throws {
        let body = #"{"error":"unsupported_subprotocol"}"#
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nX-Trace: a\r\nX-Trace: b\r\n"
                           + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)")
            try peer.waitForEOF()
        }
        do {
            _ = try WebSocketClient.connect(port: server.port, subprotocols: ["nope"])
            Issue.record("connect succeeded")
        } catch WebSocketError.upgradeRejected(let response) {
            #expect(response.status == 400)
            #expect(response.reason == "Bad Request")
            #expect(response.headers["content-type"] == "application/json")
            #expect(response.headers["x-trace"] == "a, b")
            #expect(response.bodyText == body)
        }
        try server.join()
    }

    @Test func rejectedUpgradeWithCloseDelimitedBody() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.1 403 Forbidden\r\n\r\nno entry")
        }
        let error = #expect(throws: WebSocketError.self) {
            _ = try WebSocketClient.connect(port: server.port, subprotocols: ["x"])
        }
        #expect(error?.httpStatus == 403)
        if case .upgradeRejected(let r) = error { #expect(r.bodyText == "no entry") }
        try server.join()
    }

    @Test func wrongAcceptValueFailsTheHandshake() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.readRequestHead()
            try peer.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           + "Sec-WebSocket-Accept: s3pPLMBiTxaGWr6Ff7Yb6N/DpXI=\r\n\r\n")
            try? peer.waitForEOF()
        }
        #expect(throws: WebSocketError.self) {
            _ = try WebSocketClient.connect(port: server.port, subprotocols: ["x"])
        }
        try server.join()
    }

    @Test func unrequestedSubprotocolFailsTheHandshake() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade(subprotocol: "evil")
            try? peer.waitForEOF()
        }
        #expect(throws: WebSocketError.handshakeFailed("server selected unrequested subprotocol evil")) {
            _ = try WebSocketClient.connect(port: server.port, subprotocols: ["good"])
        }
        try server.join()
    }

    @Test func clientFramesAreMaskedWithFreshKeys() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            let a = try peer.readFrame(), b = try peer.readFrame(), c = try peer.readFrame()
            guard a.isMasked, b.isMasked, c.isMasked else { throw ScriptError("unmasked client frame") }
            guard a.opcode == .text, a.payload == Array("héllo".utf8), a.fin else { throw ScriptError("text \(a)") }
            guard b.opcode == .binary, b.payload == Array(0..<200).map({ UInt8($0) }) else { throw ScriptError("binary") }
            guard c.opcode == .text, c.payload.count == 70_000 else { throw ScriptError("large") }
            guard Set([a.maskKey!, b.maskKey!, c.maskKey!]).count > 1 else { throw ScriptError("mask keys repeat") }
            let unmasked = try peer.readFrame()
            guard !unmasked.isMasked, unmasked.opcode == .binary else { throw ScriptError("raw unmasked frame") }
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        try client.send(text: "héllo")
        try client.send(binary: Array(0..<200).map { UInt8($0) })
        try client.send(text: String(repeating: "z", count: 70_000))
        try client.sendFrame(opcode: .binary, payload: [1, 2, 3], masked: false)
        try server.join()
    }

    @Test func rawFramesForFragmentationInvalidUTF8AndReservedBits() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            let frames = try (0..<4).map { _ in try peer.readFrame() }
            let expected: [(WebSocketOpcode, Bool, UInt8, [UInt8])] = [
                (.text, false, 0, Array("Hel".utf8)),
                (.continuation, true, 0, Array("lo".utf8)),
                (.text, true, 0, [0xC3, 0x28]),
                (WebSocketOpcode(rawValue: 0x3), true, 0b100, []),
            ]
            for (f, e) in zip(frames, expected) where f.opcode != e.0 || f.fin != e.1 || f.rsv != e.2 || f.payload != e.3 {
                throw ScriptError("unexpected frame \(f)")
            }
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        try client.sendFrame(opcode: .text, payload: Array("Hel".utf8), fin: false)
        try client.sendFrame(opcode: .continuation, payload: Array("lo".utf8), fin: true)
        try client.sendFrame(opcode: .text, payload: [0xC3, 0x28])
        try client.sendFrame(opcode: WebSocketOpcode(rawValue: 0x3), payload: [], rsv: 0b100)
        try server.join()
    }

    @Test func reassemblesFragmentsAndAnswersInterleavedPing() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            // A fragmented text message with a ping in the middle, all written in one burst.
            try peer.write(WebSocketFrame(opcode: .text, payload: Array("frag".utf8), fin: false).encode()
                           + WebSocketFrame(opcode: .ping, payload: Array("p1".utf8)).encode()
                           + WebSocketFrame(opcode: .continuation, payload: Array("men".utf8), fin: false).encode()
                           + WebSocketFrame(opcode: .continuation, payload: Array("ted €".utf8), fin: true).encode()
                           + WebSocketFrame(opcode: .binary, payload: [1, 2], fin: false).encode())
            let pong = try peer.readFrame()
            guard pong.opcode == .pong, pong.payload == Array("p1".utf8), pong.isMasked else {
                throw ScriptError("expected masked pong p1, got \(pong)")
            }
            // Finish the binary message byte by byte.
            for b in WebSocketFrame(opcode: .continuation, payload: [3], fin: true).encode() {
                try peer.write([b])
            }
            try peer.write(WebSocketFrame(opcode: .pong, payload: [9]).encode())
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        #expect(try client.receive(timeout: 5) == .ping(Array("p1".utf8)))
        #expect(try client.receive(timeout: 5) == .text("fragmented €"))
        #expect(try client.receive(timeout: 5) == .binary([1, 2, 3]))
        #expect(try client.receive(timeout: 5) == .pong([9]))
        try server.join()
    }

    @Test func pingAutoReplyCanBeDisabled() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            try peer.write(WebSocketFrame(opcode: .ping, payload: [1]).encode())
            try peer.write(WebSocketFrame(opcode: .text, payload: Array("after".utf8)).encode())
            let next = try peer.readFrame()
            guard next.opcode == .text, next.payload == Array("done".utf8) else { throw ScriptError("got \(next)") }
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        client.autoReplyToPings = false
        #expect(try client.receiveText(timeout: 5) == "after") // skips the ping
        try client.send(text: "done")
        try server.join()
    }

    @Test func timeoutIsDistinctFromPeerClosingAndPartialMessagesSurviveTimeouts() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            let wire = WebSocketFrame(opcode: .text, payload: Array("split".utf8)).encode()
            try peer.write(Array(wire.prefix(4)))
            _ = try peer.readFrame() // client says "go on"
            try peer.write(Array(wire.dropFirst(4)))
            _ = try peer.readFrame() // client says "close now"
            peer.socket.close()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        #expect(throws: WebSocketError.timeout) { try client.receive(timeout: 0.2) }
        try client.send(text: "go on")
        #expect(try client.receiveText(timeout: 5) == "split")
        try client.send(text: "close now")
        #expect(throws: WebSocketError.connectionClosed) { try client.receive(timeout: 5) }
        try server.join()
    }

    @Test func serverCloseIsReportedAndEchoed() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            try peer.write(WebSocketFrame(opcode: .close, payload: WebSocketFrame.closePayload(code: 4001, reason: "kicked")).encode())
            let echo = try peer.readFrame()
            guard echo.opcode == .close, try WebSocketFrame.parseClosePayload(echo.payload).code == 4001 else {
                throw ScriptError("expected close echo, got \(echo)")
            }
            peer.socket.close()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        #expect(try client.receive(timeout: 5) == .close(code: 4001, reason: "kicked"))
        #expect(client.closeReceived)
        #expect(throws: WebSocketError.connectionClosed) { try client.receive(timeout: 5) }
        try server.join()
    }

    @Test func clientInitiatedClosingHandshake() throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            try peer.write(WebSocketFrame(opcode: .text, payload: Array("late".utf8)).encode())
            let close = try peer.readFrame()
            let (code, reason) = try WebSocketFrame.parseClosePayload(close.payload)
            guard close.opcode == .close, code == 1000, reason == "done" else { throw ScriptError("got \(close)") }
            try peer.write(WebSocketFrame(opcode: .close, payload: WebSocketFrame.closePayload(code: 1000, reason: "ok")).encode())
            try peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        let answer = client.close(code: 1000, reason: "done", timeout: 5)
        #expect(answer?.code == 1000)
        #expect(answer?.reason == "ok")
        #expect(!client.isOpen)
        #expect(throws: WebSocketError.notConnected) { try client.send(text: "x") }
        try server.join()
    }

    @Test(arguments: [
        ("masked server frame", WebSocketFrame(opcode: .text, payload: [65], maskKey: [1, 2, 3, 4]).encode()),
        ("invalid UTF-8 text", WebSocketFrame(opcode: .text, payload: [0xC3, 0x28]).encode()),
        ("RSV bit", WebSocketFrame(opcode: .text, payload: [65], rsv: 0b100).encode()),
        ("oversize ping", WebSocketFrame(opcode: .ping, payload: [UInt8](repeating: 0, count: 126)).encode()),
        ("fragmented ping", WebSocketFrame(opcode: .ping, payload: [], fin: false).encode()),
        ("orphan continuation", WebSocketFrame(opcode: .continuation, payload: [65]).encode()),
        ("reserved opcode", WebSocketFrame(opcode: WebSocketOpcode(rawValue: 0x3), payload: []).encode()),
        ("interrupted fragment", WebSocketFrame(opcode: .text, payload: [65], fin: false).encode()
            + WebSocketFrame(opcode: .text, payload: [66]).encode()),
    ])
    func protocolViolationsFromTheServer(name: String, bytes: [UInt8]) throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade()
            try peer.write(bytes)
            try? peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        do {
            let m = try client.receive(timeout: 5)
            Issue.record("\(name): accepted \(m)")
        } catch let error as WebSocketError {
            guard case .protocolViolation = error else {
                Issue.record("\(name): \(error)")
                return
            }
        }
        client.disconnect()
        try server.join()
    }

    @Test func framesSentRightAfterThe101AreNotLost() throws {
        let server = try ScriptedServer { peer in
            let (_, headers) = try peer.readRequestHead()
            try peer.write(Array(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                  + "Sec-WebSocket-Accept: \(WebSocketHandshake.acceptValue(forKey: headers["sec-websocket-key"]!))\r\n\r\n").utf8)
                           + WebSocketFrame(opcode: .text, payload: Array("welcome".utf8)).encode())
            try peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [])
        #expect(try client.receiveText(timeout: 5) == "welcome")
        client.disconnect()
        try server.join()
    }

    @Test func bindsTheRequestedSourceAddress() throws {
        let server = try ScriptedServer { peer in
            guard peer.remoteAddress == "127.0.0.2" else { throw ScriptError("peer address \(peer.remoteAddress)") }
            _ = try peer.acceptUpgrade()
            try peer.waitForEOF()
        }
        let client = try WebSocketClient.connect(port: server.port, subprotocols: [], sourceAddress: "127.0.0.2")
        client.disconnect()
        try server.join()
    }

    @Test func connectionRefusedIsASystemError() throws {
        // A port bound and released again, so nothing listens there.
        let port = try LWSTestServer.freePort()
        let error = #expect(throws: WebSocketError.self) {
            _ = try WebSocketClient.connect(port: port, subprotocols: [], timeout: 2)
        }
        #expect(error == .system(operation: "connect", errno: ECONNREFUSED))
    }

    @Test func asyncWrappers() async throws {
        let server = try ScriptedServer { peer in
            _ = try peer.acceptUpgrade(subprotocol: "a")
            let f = try peer.readFrame()
            try peer.write(WebSocketFrame(opcode: .text, payload: f.payload + Array("!".utf8)).encode())
            try peer.write(WebSocketFrame(opcode: .binary, payload: [7]).encode())
            _ = try peer.readFrame()
            try peer.write(WebSocketFrame(opcode: .close, payload: WebSocketFrame.closePayload(code: 1000, reason: "")).encode())
        }
        let client = try await WebSocketClient.connect(port: server.port, subprotocols: ["a"])
        #expect(client.negotiatedSubprotocol == "a")
        try client.send(text: "hi")
        #expect(try await client.receiveText(timeout: 5) == "hi!")
        #expect(try await client.receive(timeout: 5) == .binary([7]))
        let closed = await client.close(code: 1000, reason: "", timeout: 5)
        #expect(closed?.code == 1000)
        try server.join()
    }
}

enum Base64Decoded {
    /// Decoded length of a padded base64 string.
    static func length(_ s: String) -> Int { s.count / 4 * 3 - s.filter { $0 == "=" }.count }
}
