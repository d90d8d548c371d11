import AgentChatCrypto
import AgentChatProtocol
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// An agent's identity: its Ed25519 signing key pair (whose public key is its ``did``) and its X25519 encryption
/// key pair, plus what it remembers about its registration.
///
/// Private keys never leave the agent: `description`, `debugDescription` and `dump` show only the DID.
///
/// ## Identity file
///
/// ``save(to:overwrite:)`` writes one JSON object (compact, keys sorted) to a file of mode `0600` in a directory
/// created with mode `0700`:
///
/// ```json
/// {"did":"did:agentchat:z6Mk…","encryptionSecret":"<b64url, 32 bytes>","name":"alice",
///  "registeredAt":1704067200000,"server":"http://127.0.0.1:8080","signingSeed":"<b64url, 32 bytes>","version":1}
/// ```
///
/// - `version`: `1`.
/// - `signingSeed`: the 32-byte Ed25519 seed (RFC 8032 private key), base64url without padding.
/// - `encryptionSecret`: the 32-byte X25519 secret key, base64url without padding.
/// - `did`: the DID of the signing key; ``load(from:)`` refuses a file whose DID does not match its seed.
/// - `name` (optional): the name the agent registered (or means to register) with.
/// - `registeredAt` (optional): the broker's registration time in Unix milliseconds.
/// - `server` (optional): the broker URL the agent registered with.
///
/// ``load(from:)`` refuses a file that group or others may read or write (`identity_insecure`), like `ssh` does
/// for private keys.
public struct AgentIdentity: Sendable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The file format version this SDK writes and reads.
    public static let fileVersion = 1

    /// The Ed25519 key pair; its public key is the agent's identity.
    public let signingKeyPair: SigningKeyPair
    /// The X25519 key pair others seal messages to.
    public let encryptionKeyPair: EncryptionKeyPair
    /// The agent's DID, a pure function of ``signingPublicKey``.
    public let did: DID
    /// The agent's name, once chosen.
    public var name: String?
    /// When the broker registered this identity (Unix milliseconds), once registered.
    public var registeredAt: Int64?
    /// The broker URL this identity was registered with, once registered.
    public var server: String?

    /// The 32-byte Ed25519 public key.
    public var signingPublicKey: [UInt8] { signingKeyPair.publicKey }
    /// The 32-byte X25519 public key.
    public var encryptionPublicKey: [UInt8] { encryptionKeyPair.publicKey }

    /// An identity from existing key pairs.
    public init(signingKeyPair: SigningKeyPair, encryptionKeyPair: EncryptionKeyPair, name: String? = nil,
                registeredAt: Int64? = nil, server: String? = nil) {
        self.signingKeyPair = signingKeyPair
        self.encryptionKeyPair = encryptionKeyPair
        self.did = signingKeyPair.did
        self.name = name
        self.registeredAt = registeredAt
        self.server = server
    }

    /// A new identity with fresh random keys.
    public static func generate(name: String? = nil) -> AgentIdentity {
        AgentIdentity(signingKeyPair: SigningKeyPair(), encryptionKeyPair: EncryptionKeyPair(), name: name)
    }

    /// A detached Ed25519 signature of `message` by the signing key.
    public func sign(_ message: [UInt8]) -> [UInt8] { signingKeyPair.sign(message) }

    public var description: String { "AgentIdentity(\(did))" }
    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["did": did.description]) }

    // MARK: - File

    /// The identity file's JSON. Contains the private keys: never log it.
    func fileJSON() -> JSONValue {
        var fields: [String: JSONValue] = [
            "version": .number(Double(Self.fileVersion)),
            "signingSeed": .string(Base64URL.encode(signingKeyPair.seed.copyBytes())),
            "encryptionSecret": .string(Base64URL.encode(encryptionKeyPair.secretKey.copyBytes())),
            "did": .string(did.description),
        ]
        if let name { fields["name"] = .string(name) }
        if let registeredAt { fields["registeredAt"] = .number(Double(registeredAt)) }
        if let server { fields["server"] = .string(server) }
        return .object(fields)
    }

    /// Parses an identity file's JSON.
    static func fromFileJSON(_ json: JSONValue, path: String) throws(AgentChatError) -> AgentIdentity {
        func invalid(_ why: String) -> AgentChatError {
            .identity(AgentChatError.Codes.identityInvalid, "\(path): \(why)")
        }
        guard json.objectValue != nil else { throw invalid("not a JSON object") }
        guard let version = json["version"]?.integerValue else { throw invalid("no integer \"version\"") }
        guard version == Int64(Self.fileVersion) else { throw invalid("unsupported version \(version)") }
        guard let seedText = json["signingSeed"]?.stringValue, let seed = Base64URL.decode(seedText),
            seed.count == SigningKeyPair.seedLength
        else { throw invalid("\"signingSeed\" must be 32 bytes of base64url") }
        guard let secretText = json["encryptionSecret"]?.stringValue, let secret = Base64URL.decode(secretText),
            secret.count == EncryptionKeyPair.secretKeyLength
        else { throw invalid("\"encryptionSecret\" must be 32 bytes of base64url") }
        let signing: SigningKeyPair
        let encryption: EncryptionKeyPair
        do {
            signing = try SigningKeyPair(seed: SecretBytes(seed))
            encryption = try EncryptionKeyPair(secretKey: SecretBytes(secret))
        } catch {
            throw invalid("bad key material (\(error.code))")
        }
        guard let didText = json["did"]?.stringValue, let did = DID(parsing: didText) else {
            throw invalid("no valid \"did\"")
        }
        guard did == signing.did else { throw invalid("\"did\" \(did) does not match the signing key (\(signing.did))") }
        var identity = AgentIdentity(signingKeyPair: signing, encryptionKeyPair: encryption)
        if let name = json["name"] {
            guard let text = name.stringValue else { throw invalid("\"name\" must be a string") }
            identity.name = text
        }
        if let at = json["registeredAt"] {
            guard let value = at.integerValue else { throw invalid("\"registeredAt\" must be an integer") }
            identity.registeredAt = value
        }
        if let server = json["server"] {
            guard let text = server.stringValue else { throw invalid("\"server\" must be a string") }
            identity.server = text
        }
        return identity
    }

    /// Writes the identity file atomically: missing directories are created with mode 0700, the JSON goes to a
    /// temporary file created with mode 0600 beside `path`, which is then renamed (or, without `overwrite`, linked)
    /// into place.
    ///
    /// - Throws: ``AgentChatError/identityExists`` if `path` exists and `overwrite` is false; `identity_io_error`.
    public func save(to path: String, overwrite: Bool = false) throws(AgentChatError) {
        let directory = (path as NSString).deletingLastPathComponent
        try Self.makeDirectories(directory.isEmpty ? "." : directory)
        var template = Array((path + ".tmp-XXXXXX").utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }  // mode 0600
        guard fd >= 0 else { throw Self.ioError("create a temporary file beside \(path)") }
        let temporary = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        var committed = false
        defer {
            if !committed { _ = unlink(temporary) }
        }
        var bytes = JSONWriter.encode(fileJSON()) + [0x0A]
        defer { for i in bytes.indices { bytes[i] = 0 } }
        var written = 0
        var failure: String? = nil
        _ = fchmod(fd, 0o600)
        while written < bytes.count {
            let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if n < 0 {
                if errno == EINTR { continue }
                failure = "write \(temporary)"
                break
            }
            written += n
        }
        if failure == nil && fsync(fd) != 0 { failure = "fsync \(temporary)" }
        _ = close(fd)
        if let failure { throw Self.ioError(failure) }
        if overwrite {
            guard rename(temporary, path) == 0 else { throw Self.ioError("rename \(temporary) to \(path)") }
        } else {
            // link() fails with EEXIST instead of replacing: no window in which an existing identity is lost.
            guard link(temporary, path) == 0 else {
                if errno == EEXIST {
                    throw .identity(AgentChatError.Codes.identityExists,
                                    "\(path) exists already; refusing to overwrite an identity")
                }
                throw Self.ioError("link \(temporary) to \(path)")
            }
            _ = unlink(temporary)
        }
        committed = true
    }

    /// Reads an identity file written by ``save(to:overwrite:)``.
    ///
    /// - Throws: `identity_not_found` if there is no file; `identity_insecure` if group or others have any
    ///   permission on it, or it is not a regular file; `identity_invalid` if it is not a valid identity.
    public static func load(from path: String) throws(AgentChatError) -> AgentIdentity {
        var info = stat()
        guard stat(path, &info) == 0 else {
            if errno == ENOENT {
                throw .identity(AgentChatError.Codes.identityNotFound,
                                "no identity at \(path) (create one with `agentchat keygen`)")
            }
            throw ioError("stat \(path)")
        }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw .identity(AgentChatError.Codes.identityInsecure, "\(path) is not a regular file")
        }
        let permissions = info.st_mode & 0o777
        guard permissions & 0o077 == 0 else {
            throw .identity(AgentChatError.Codes.identityInsecure,
                            "\(path) has mode \(String(permissions, radix: 8)): it holds private keys and must not be "
                                + "accessible by group or others (chmod 600 \(path))")
        }
        guard var bytes = FileManager.default.contents(atPath: path).map({ [UInt8]($0) }) else {
            throw ioError("read \(path)")
        }
        defer { for i in bytes.indices { bytes[i] = 0 } }
        let json: JSONValue
        do {
            json = try JSONParser.parse(bytes.last == 0x0A ? Array(bytes.dropLast()) : bytes)
        } catch {
            throw .identity(AgentChatError.Codes.identityInvalid, "\(path): not valid JSON (\(error.message))")
        }
        return try fromFileJSON(json, path: path)
    }

    private static func makeDirectories(_ directory: String) throws(AgentChatError) {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else { throw ioError("\(directory) is not a directory") }
            return
        }
        let parent = (directory as NSString).deletingLastPathComponent
        if !parent.isEmpty && parent != directory { try makeDirectories(parent) }
        guard mkdir(directory, 0o700) == 0 || errno == EEXIST else { throw ioError("mkdir \(directory)") }
    }

    private static func ioError(_ what: String) -> AgentChatError {
        let reason = String(cString: strerror(errno))
        return .identity(AgentChatError.Codes.identityIO, "cannot \(what): \(reason)")
    }
}
