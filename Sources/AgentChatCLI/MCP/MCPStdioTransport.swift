import AgentChatProtocol
import Foundation
import Logging
import MCP

/// The stdio transport of `agentchat mcp`: newline-delimited JSON-RPC 2.0 on stdin and stdout.
///
/// Why not the SDK's own `StdioTransport`: it switches stdin and stdout to non-blocking mode (which changes the file
/// descriptions it shares with the parent) and polls stdin every 10 ms; and the SDK's server answers a line that is
/// not a request it can decode with `-32700` under a random id, and a request whose params it cannot decode with
/// `-32603`. This transport reads stdin with blocking reads on a dedicated thread and checks every line first
/// (``JSONRPCLineCheck``): it answers unparsable JSON itself (`-32700`, id null), and malformed requests (`-32600`)
/// and malformed params of the methods it knows (`-32602`); only well-formed messages reach the SDK.
///
/// Stdout carries protocol only: one JSON text per line, written whole under a lock.
actor MCPStdioTransport: Transport {
    nonisolated let logger: Logger
    private let output: LineWriter
    private let stream: AsyncThrowingStream<Data, any Error>
    private let continuation: AsyncThrowingStream<Data, any Error>.Continuation
    private var started = false

    init(logger: Logger, input: Int32 = 0, output: Int32 = 1) {
        self.logger = logger
        self.output = LineWriter(fd: output)
        (stream, continuation) = AsyncThrowingStream.makeStream(of: Data.self, throwing: (any Error).self)
        inputDescriptor = input
    }

    private let inputDescriptor: Int32

    func connect() async throws {
        guard !started else { return }
        started = true
        let reader = LineReader(fd: inputDescriptor, writer: output, logger: logger, continuation: continuation)
        let thread = Thread { reader.run() }
        thread.name = "mcp-stdin"
        thread.start()
    }

    func disconnect() async { continuation.finish() }

    func send(_ data: Data) async throws {
        guard output.write(Array(data)) else {
            throw MCPError.connectionClosed
        }
    }

    func receive() -> AsyncThrowingStream<Data, any Error> { stream }
}

/// Writes whole lines to a file descriptor, one writer at a time.
final class LineWriter: @unchecked Sendable {
    private let fd: Int32
    private let lock = NSLock()

    init(fd: Int32) { self.fd = fd }

    /// Writes `bytes` and a newline; false once the descriptor is closed.
    @discardableResult
    func write(_ bytes: [UInt8]) -> Bool {
        var line = bytes
        line.append(0x0A)
        return lock.withLock {
            var written = 0
            while written < line.count {
                let n = line.withUnsafeBytes { buffer in
                    Foundation.write(fd, buffer.baseAddress! + written, buffer.count - written)
                }
                if n < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += n
            }
            return true
        }
    }
}

/// Reads stdin with blocking reads on its own thread, splits it into lines, checks each one.
private final class LineReader: @unchecked Sendable {
    /// A line longer than this is answered with a parse error and skipped (the broker's messages are at most
    /// 64 KiB, so no legitimate request comes near it).
    static let maxLineBytes = 4 * 1024 * 1024

    let fd: Int32
    let writer: LineWriter
    let logger: Logger
    let continuation: AsyncThrowingStream<Data, any Error>.Continuation

    init(fd: Int32, writer: LineWriter, logger: Logger,
         continuation: AsyncThrowingStream<Data, any Error>.Continuation)
    {
        self.fd = fd
        self.writer = writer
        self.logger = logger
        self.continuation = continuation
    }

    func run() {
        var pending: [UInt8] = []
        var discarding = false
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress!, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                logger.error("stdin read failed", metadata: ["errno": "\(errno)"])
                break
            }
            if n == 0 { break }
            var start = 0
            for index in 0..<n where buffer[index] == 0x0A {
                if discarding {
                    discarding = false
                } else {
                    pending.append(contentsOf: buffer[start..<index])
                    handle(pending)
                }
                pending.removeAll(keepingCapacity: true)
                start = index + 1
            }
            if !discarding { pending.append(contentsOf: buffer[start..<n]) }
            if pending.count > Self.maxLineBytes {
                pending.removeAll()
                discarding = true
                writer.write(JSONWriter.encode(JSONRPCLineCheck.errorResponse(
                    id: .null, code: JSONRPCLineCheck.parseError,
                    message: "Parse error: a line over \(Self.maxLineBytes) bytes")))
            }
        }
        if !pending.isEmpty && !discarding { handle(pending) }
        logger.info("stdin closed")
        continuation.finish()
    }

    private func handle(_ line: [UInt8]) {
        switch JSONRPCLineCheck.check(line) {
        case .forward:
            continuation.yield(Data(line))
        case .reply(let response):
            logger.notice("refused a message", metadata: ["error": "\(response["error"]?["message"]?.stringValue ?? "")"])
            writer.write(JSONWriter.encode(response))
        case .ignore(let why):
            if let why { logger.notice("ignored a message", metadata: ["why": "\(why)"]) }
        }
    }
}

/// What the transport checks in every line before the MCP SDK sees it. Pure: no I/O.
///
/// JSON-RPC 2.0 errors: `-32700` the line is not JSON (id null); `-32600` not a valid request object (`jsonrpc`
/// not "2.0", `method` not a string, an `id` that is not a string or an integer, `params` not an object); `-32602`
/// the params of `initialize`, `tools/call` or `tools/list` lack what the method needs. An invalid notification (no
/// `id`) gets no answer, as JSON-RPC requires. Responses from the client (`result` or `error` with an `id`) and
/// batches (arrays, which only the 2025-03-26 revision allows) go to the SDK unchanged.
enum JSONRPCLineCheck {
    static let parseError = -32700
    static let invalidRequest = -32600
    static let methodNotFound = -32601
    static let invalidParams = -32602

    enum Verdict: Equatable {
        /// Hand the line to the SDK.
        case forward
        /// Answer with this response (a JSON-RPC error); the SDK never sees the line.
        case reply(JSONValue)
        /// Drop the line (blank, or an invalid notification, which gets no answer); the reason is logged.
        case ignore(String?)
    }

    static func check(_ line: [UInt8]) -> Verdict {
        var bytes = line
        if bytes.last == 0x0D { bytes.removeLast() }
        if bytes.allSatisfy({ $0 == 0x20 || $0 == 0x09 }) { return .ignore(nil) }
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes, maxDepth: 64)
        } catch {
            return .reply(errorResponse(id: .null, code: parseError,
                                        message: "Parse error: \(error.message) at byte \(error.offset)"))
        }
        switch json {
        case .array(let items):
            if items.isEmpty { return .reply(errorResponse(id: .null, code: invalidRequest,
                                                           message: "Invalid Request: an empty batch")) }
            return .forward
        case .object(let fields):
            return check(fields)
        default:
            return .reply(errorResponse(id: .null, code: invalidRequest,
                                        message: "Invalid Request: a message is a JSON object, not \(json.typeName)"))
        }
    }

    private static func check(_ fields: [String: JSONValue]) -> Verdict {
        let idField = fields["id"]
        let idValid: Bool = switch idField {
        case .string?: true
        case .number?: idField?.integerValue != nil
        default: false
        }
        let replyID: JSONValue = idValid ? idField! : .null
        func invalid(_ why: String) -> Verdict {
            // A message without an id is a notification: JSON-RPC never answers one.
            if idField == nil && fields["method"] != nil { return .ignore("invalid notification: \(why)") }
            return .reply(errorResponse(id: replyID, code: invalidRequest, message: "Invalid Request: \(why)"))
        }
        guard fields["jsonrpc"] == .string("2.0") else { return invalid("\"jsonrpc\" must be \"2.0\"") }
        guard let methodField = fields["method"] else {
            // A response to a request of ours (the server sends none today, but the SDK may).
            if idField != nil, fields["result"] != nil || fields["error"] != nil { return .forward }
            return invalid("no \"method\"")
        }
        guard case .string(let method) = methodField else { return invalid("\"method\" must be a string") }
        if idField != nil && !idValid { return invalid("\"id\" must be a string or an integer") }
        let params = fields["params"]
        if let params, params != .null, params.objectValue == nil {
            if idField == nil { return .ignore("invalid notification: params is not an object") }
            return .reply(errorResponse(id: replyID, code: invalidParams,
                                        message: "Invalid params: \"params\" must be an object"))
        }
        guard idField != nil else { return .forward }  // notifications: the SDK ignores unknown ones
        if let why = paramsProblem(method: method, params: params?.objectValue) {
            return .reply(errorResponse(id: replyID, code: invalidParams, message: "Invalid params: \(why)"))
        }
        return .forward
    }

    /// What is wrong with the params of a method the server implements; nil if nothing (or an unknown method, which
    /// the SDK answers with -32601).
    static func paramsProblem(method: String, params: [String: JSONValue]?) -> String? {
        switch method {
        case "initialize":
            guard let params else { return "initialize needs params" }
            guard params["protocolVersion"]?.stringValue != nil else { return "\"protocolVersion\" must be a string" }
            guard params["capabilities"]?.objectValue != nil else { return "\"capabilities\" must be an object" }
            guard let info = params["clientInfo"]?.objectValue, info["name"]?.stringValue != nil,
                info["version"]?.stringValue != nil
            else { return "\"clientInfo\" must be an object with string \"name\" and \"version\"" }
            return nil
        case "tools/call":
            guard let params else { return "tools/call needs params with \"name\"" }
            guard params["name"]?.stringValue != nil else { return "\"name\" must be a string" }
            if let arguments = params["arguments"], arguments != .null, arguments.objectValue == nil {
                return "\"arguments\" must be an object"
            }
            return nil
        case "tools/list":
            if let cursor = params?["cursor"], cursor != .null, cursor.stringValue == nil {
                return "\"cursor\" must be a string"
            }
            return nil
        default:
            return nil
        }
    }

    static func errorResponse(id: JSONValue, code: Int, message: String) -> JSONValue {
        ["jsonrpc": "2.0", "id": id, "error": ["code": .number(Double(code)), "message": .string(message)]]
    }
}
