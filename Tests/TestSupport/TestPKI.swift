#if canImport(FoundationEssentials)
import FoundationEssentials
#endif
import Foundation

public enum TestPKIError: Error, Sendable, CustomStringConvertible {
    case opensslMissing
    case opensslFailed(arguments: [String], status: Int32, stderr: String)

    public var description: String {
        switch self {
        case .opensslMissing: "the openssl command is not installed (apt-get install openssl)"
        case .opensslFailed(let arguments, let status, let stderr):
            "openssl \(arguments.joined(separator: " ")) exited with \(status): \(stderr)"
        }
    }
}

/// A throwaway certificate authority (P-256) made with the `openssl` command line in a temporary directory, and
/// server certificates it signs, like Tests/TLS/test_tls.py's. ``remove()`` deletes the directory.
public final class TestPKI: Sendable {
    public let directory: String
    /// The CA's certificate (PEM): what a client is told to trust.
    public let caFile: String
    private let caKey: String

    /// Makes the CA `/CN=AgentChat test <name>` in a fresh temporary directory.
    public init(name: String = "ca") throws {
        directory = try BrokerProcess.makeTemporaryDirectory()
        caFile = directory + "/\(name).pem"
        caKey = directory + "/\(name).key"
        do {
            try Self.openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                              "-keyout", caKey, "-out", caFile, "-days", "2", "-subj", "/CN=AgentChat test \(name)"])
        } catch {
            remove()
            throw error
        }
    }

    /// Issues a server certificate for `names` (subjectAltName entries such as `IP:127.0.0.1`, `DNS:localhost`);
    /// writes `<stem>.pem` and `<stem>.key` and returns their paths.
    public func issue(_ stem: String, serial: Int, names: [String] = ["IP:127.0.0.1", "DNS:localhost"]) throws
        -> (certificate: String, key: String)
    {
        let certificate = directory + "/\(stem).pem", key = directory + "/\(stem).key"
        let request = directory + "/\(stem).csr", extensions = directory + "/\(stem).ext"
        try Data("subjectAltName=\(names.joined(separator: ","))\n".utf8).write(to: URL(fileURLWithPath: extensions))
        try Self.openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                          "-out", request, "-subj", "/CN=\(stem)"])
        try Self.openssl(["x509", "-req", "-in", request, "-CA", caFile, "-CAkey", caKey, "-set_serial", "\(serial)",
                          "-days", "2", "-out", certificate, "-extfile", extensions])
        return (certificate, key)
    }

    /// Deletes the directory and every file in it.
    public func remove() {
        try? FileManager.default.removeItem(atPath: directory)
    }

    /// Runs `openssl arguments` and waits for it; throws with its stderr unless it exits 0.
    static func openssl(_ arguments: [String]) throws {
        let path = (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":")
            .map { "\($0)/openssl" }.first { FileManager.default.isExecutableFile(atPath: $0) }
        guard let path else { throw TestPKIError.opensslMissing }
        let process = try ChildProcess(executable: path, arguments: arguments)
        defer { process.stop() }
        let status = try process.waitForExit(timeout: 60)
        guard status == 0 else {
            throw TestPKIError.opensslFailed(arguments: arguments, status: status, stderr: process.stderr)
        }
    }
}
