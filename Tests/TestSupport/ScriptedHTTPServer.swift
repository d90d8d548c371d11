import Foundation
import WebSocketClient

/// A small HTTP/1.1 server for client tests (Python's `http.server`, one thread per connection), plain or TLS with a
/// throwaway certificate for 127.0.0.1. It records every request (method, path, headers, body) and answers from a
/// queue of scripted responses (status, headers, body, a delay before answering, chunked or unframed bodies); with
/// the queue empty it answers 200 with a JSON echo of the request. `POST /_script` and `GET /_requests` are its
/// control endpoints (driven here through `HTTPProbe`), neither recorded nor scripted.
public final class ScriptedHTTPServer: Sendable {
    public let server: PythonServer
    public let isTLS: Bool
    /// The certificate (PEM) a TLS server presents: pass it to the client as an extra CA file.
    public var certificatePath: String { server.directory + "/cert.pem" }
    public var baseURL: String { (isTLS ? "https" : "http") + "://127.0.0.1:\(server.port)" }

    public struct Scripted: Sendable {
        public var status: Int
        public var headers: [String: String]
        public var body: String
        public var delaySeconds: Double
        /// `Transfer-Encoding: chunked`, in pieces of `chunkBytes`.
        public var chunked: Bool
        /// No Content-Length: the body ends when the server closes.
        public var unframed: Bool
        /// Repeats `body` this many times (large bodies without large scripts).
        public var repeatBody: Int

        public init(status: Int = 200, headers: [String: String] = ["Content-Type": "application/json"],
                    body: String = "{}", delaySeconds: Double = 0, chunked: Bool = false, unframed: Bool = false,
                    repeatBody: Int = 1)
        {
            self.status = status
            self.headers = headers
            self.body = body
            self.delaySeconds = delaySeconds
            self.chunked = chunked
            self.unframed = unframed
            self.repeatBody = repeatBody
        }
    }

    public struct Recorded: Sendable {
        public var method: String
        public var path: String
        /// In the order received; names as sent.
        public var headers: [(name: String, value: String)]
        public var body: String

        public func header(_ name: String) -> String? {
            headers.first { $0.name.lowercased() == name.lowercased() }?.value
        }

        public func headers(named name: String) -> [String] {
            headers.filter { $0.name.lowercased() == name.lowercased() }.map(\.value)
        }
    }

    static let script = #"""
        import json, os, ssl, sys, threading, time
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        lock = threading.Lock()
        script, recorded = [], []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = 'HTTP/1.1'
            def log_message(self, *args): pass
            def body(self):
                n = int(self.headers.get('Content-Length') or 0)
                return self.rfile.read(n) if n else b''
            def send(self, status, headers, payload, chunked=False, unframed=False, delay=0):
                if delay: time.sleep(delay)
                self.send_response(status)
                for k, v in headers.items(): self.send_header(k, v)
                if chunked: self.send_header('Transfer-Encoding', 'chunked')
                elif not unframed: self.send_header('Content-Length', str(len(payload)))
                self.send_header('Connection', 'close')
                self.end_headers()
                if chunked:
                    for i in range(0, len(payload), 1000):
                        piece = payload[i:i + 1000]
                        self.wfile.write(b'%x\r\n' % len(piece) + piece + b'\r\n')
                    self.wfile.write(b'0\r\n\r\n')
                else:
                    self.wfile.write(payload)
                self.wfile.flush()
                self.close_connection = True
            def handle_any(self):
                body = self.body()
                if self.path == '/_script' and self.command == 'POST':
                    with lock: script.extend(json.loads(body))
                    return self.send(200, {}, b'{}')
                if self.path == '/_requests':
                    with lock: payload = json.dumps(recorded).encode()
                    return self.send(200, {'Content-Type': 'application/json'}, payload)
                entry = {'method': self.command, 'path': self.path,
                         'headers': [[k, v] for k, v in self.headers.items()],
                         'body': body.decode('utf-8', 'replace')}
                with lock:
                    recorded.append(entry)
                    step = script.pop(0) if script else None
                if step is None:
                    return self.send(200, {'Content-Type': 'application/json'}, json.dumps(entry).encode())
                payload = step['body'].encode() * step.get('repeat', 1)
                self.send(step['status'], step['headers'], payload, step.get('chunked', False),
                          step.get('unframed', False), step.get('delay', 0))
            do_GET = do_POST = do_PUT = do_DELETE = handle_any

        server = ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), Handler)
        server.daemon_threads = True
        if len(sys.argv) > 2 and sys.argv[2] == 'tls':
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain('cert.pem', 'key.pem')
            server.socket = context.wrap_socket(server.socket, server_side=True)
        server.serve_forever()
        """#

    /// Starts a server; with `tls`, first makes a self-signed certificate for 127.0.0.1 with `openssl`.
    public init(tls: Bool = false) throws {
        isTLS = tls
        if tls {
            let directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("agentchat-cert-\(UUID().uuidString.prefix(8))").path
            try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let openssl = Process()
            openssl.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            openssl.arguments = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                                 "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                                 "-keyout", directory + "/key.pem", "-out", directory + "/cert.pem"]
            openssl.standardOutput = FileHandle.nullDevice
            openssl.standardError = FileHandle.nullDevice
            try openssl.run()
            openssl.waitUntilExit()
            guard openssl.terminationStatus == 0 else {
                throw PythonServerError("openssl could not make a test certificate")
            }
            // The server reads them from its own directory, made by PythonServer: the script copies them there
            // before it listens (so before PythonServer returns and this directory is removed).
            let copy = """
                import shutil, sys
                shutil.copy(\(Self.pythonString(directory + "/cert.pem")), 'cert.pem')
                shutil.copy(\(Self.pythonString(directory + "/key.pem")), 'key.pem')
                """
            server = try PythonServer(name: "https-stub", script: copy + "\n" + Self.script, arguments: ["tls"])
        } else {
            server = try PythonServer(name: "http-stub", script: Self.script)
        }
    }

    public func stop() { server.stop() }

    /// Queues responses for the next requests, in order.
    public func enqueue(_ responses: [Scripted]) throws {
        let steps: [[String: Any]] = responses.map { response in
            ["status": response.status, "headers": response.headers, "body": response.body,
             "delay": response.delaySeconds, "chunked": response.chunked, "unframed": response.unframed,
             "repeat": response.repeatBody]
        }
        let body = try JSONSerialization.data(withJSONObject: steps)
        _ = try control(method: "POST", path: "/_script", body: Array(body))
    }

    /// Every request received so far (control requests aside), in order.
    public func requests() throws -> [Recorded] {
        let response = try control(method: "GET", path: "/_requests", body: [])
        guard let list = try JSONSerialization.jsonObject(with: Data(response)) as? [[String: Any]] else {
            throw PythonServerError("unexpected /_requests answer")
        }
        return list.map { entry in
            let pairs = (entry["headers"] as? [[String]] ?? []).map { (name: $0[0], value: $0[1]) }
            return Recorded(method: entry["method"] as? String ?? "", path: entry["path"] as? String ?? "",
                            headers: pairs, body: entry["body"] as? String ?? "")
        }
    }

    private func control(method: String, path: String, body: [UInt8]) throws -> [UInt8] {
        if isTLS {
            // HTTPProbe speaks plain TCP only; the TLS server is controlled through Python's own client.
            throw PythonServerError("control a TLS ScriptedHTTPServer through the client under test")
        }
        let response = try HTTPProbe.request(port: server.port, method: method, path: path,
                                             headers: [("Content-Type", "application/json")], body: body)
        guard response.status == 200 else { throw PythonServerError("\(path) answered \(response.status)") }
        return response.body
    }

    private static func pythonString(_ text: String) -> String {
        "'" + text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "'", with: "\\'") + "'"
    }
}
