import AgentChatLoop
@testable import AgentChatRedis
import Testing
import TestSupport

@Suite struct RedisValueDecodingTests {
    private func decode(_ resp: String) -> RedisValue? { RedisValue.decode(resp: Array(resp.utf8)) }

    @Test func everyReplyType() {
        #expect(decode("+OK\r\n") == .status("OK"))
        #expect(decode("-ERR wrong\r\n") == .error("ERR wrong"))
        #expect(decode(":-42\r\n") == .integer(-42))
        #expect(decode(":9223372036854775807\r\n") == .integer(Int64.max))
        #expect(decode("$5\r\nhello\r\n") == .bulk(Array("hello".utf8)))
        #expect(decode("$0\r\n\r\n") == .bulk([]))
        #expect(decode("$-1\r\n") == .null)
        #expect(decode("*-1\r\n") == .null)
        #expect(decode("*0\r\n") == .array([]))
    }

    @Test func nestedArraysAndNulls() {
        let value = decode("*4\r\n:1\r\n*2\r\n$1\r\na\r\n*1\r\n$-1\r\n+OK\r\n-ERR inner\r\n")
        #expect(value == .array([
            .integer(1),
            .array([.bulk([97]), .array([.null])]),
            .status("OK"),
            .error("ERR inner"),
        ]))
    }

    @Test func binaryBulkWithNULsIsCopiedExactly() {
        let payload: [UInt8] = [0, 1, 0, 255, 13, 10, 0]
        let resp = Array("$7\r\n".utf8) + payload + Array("\r\n".utf8)
        #expect(RedisValue.decode(resp: resp) == .bulk(payload))
    }

    @Test func incompleteInputIsNil() {
        #expect(decode("$5\r\nhel") == nil)
    }

    @Test func accessors() {
        #expect(RedisValue.bulk(Array("12".utf8)).int == 12)
        #expect(RedisValue.integer(7).int == 7)
        #expect(RedisValue.status("PONG").string == "PONG")
        #expect(RedisValue.bulk([104, 105]).string == "hi")
        #expect(RedisValue.bulk([1, 2]).bytes == [1, 2])
        #expect(RedisValue.null.bytes == nil)
        #expect(RedisValue.null.isNull)
        #expect(RedisValue.array([.integer(1)]).array == [.integer(1)])
        #expect(RedisValue.integer(1).array == nil)
    }
}

@Suite(.serialized) struct RedisValueLiveTests {
    @Test func binaryRoundTripAndEveryTypeFromAServer() async throws {
        let server = try RedisServer()
        defer { server.stop() }
        let loop = EventLoop.startThread()
        let connection = try await makeConnection(loop, server.endpoint)
        defer { shutDown(loop, closing: [connection]) }
        try await waitConnected(connection)
        let key: [UInt8] = [107, 0, 255]
        let payload: [UInt8] = [0, 0, 1, 255, 0, 13, 10]
        #expect(try await send(connection, ["SET", RedisArgument(key), RedisArgument(payload)]) == .status("OK"))
        #expect(try await send(connection, ["GET", RedisArgument(key)]) == .bulk(payload))
        #expect(try await send(connection, ["GET", "missing"]) == .null)
        #expect(try await send(connection, ["INCRBY", "n", 5]) == .integer(5))
        #expect(try await send(connection, ["DEL", "n", "missing"]).int == 1)
        let nested = try await send(connection, [
            "EVAL",
            "return {1, 'a', {2, {'b', 'c'}}, redis.status_reply('FINE'), redis.error_reply('ERR nested'), {}}",
            0,
        ])
        #expect(nested == .array([
            .integer(1), .bulk([97]), .array([.integer(2), .array([.bulk([98]), .bulk([99])])]),
            .status("FINE"), .error("ERR nested"), .array([]),
        ]))
        let failure = try await result(connection, ["NOSUCHCOMMAND"])
        #expect(throws: RedisError.self) { try failure.get() }
        if case .failure(let error) = failure {
            #expect(error.replyMessage?.hasPrefix("ERR unknown command") == true, "\(error)")
        }
    }
}
