import AgentChatProtocol
import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Why the key store could not load or save keys. A struct wrapping a private code, like ``CryptoError``.
public struct KeyStoreError: Error, Hashable, Sendable, CustomStringConvertible {
    private enum Code: String, Sendable {
        case insecurePermissions = "key_store_insecure_permissions"
        case corruptKeyFile = "key_store_corrupt_key_file"
        case ioFailure = "key_store_io_failure"
    }

    private let _code: Code
    /// What went wrong and where, for the operator; never key material.
    public let detail: String
    private init(_ code: Code, _ detail: String) {
        _code = code
        self.detail = detail
    }

    public var code: String { _code.rawValue }
    public var description: String { "\(code): \(detail)" }
    public static func == (lhs: KeyStoreError, rhs: KeyStoreError) -> Bool { lhs._code == rhs._code }
    public func hash(into hasher: inout Hasher) { hasher.combine(_code) }

    /// A key file or the key directory is readable or writable by group or others.
    public static let insecurePermissions = KeyStoreError(.insecurePermissions, "")
    /// A key file is not the expected JSON, or its kid does not match its seed.
    public static let corruptKeyFile = KeyStoreError(.corruptKeyFile, "")
    /// A system call failed.
    public static let ioFailure = KeyStoreError(.ioFailure, "")

    static func insecure(_ path: String, mode: mode_t, wanted: String) -> KeyStoreError {
        KeyStoreError(.insecurePermissions, "\(path) has mode \(String(mode & 0o7777, radix: 8)); it must be "
                      + "\(wanted) (readable by its owner only): chmod \(wanted) \(path)")
    }
    static func corrupt(_ path: String, _ why: String) -> KeyStoreError { KeyStoreError(.corruptKeyFile, "\(path): \(why)") }
    static func io(_ what: String, _ path: String, errno code: Int32 = errno) -> KeyStoreError {
        KeyStoreError(.ioFailure, "\(what) \(path): \(String(cString: strerror(code)))")
    }
}

/// The broker's token-signing keys, one JSON file per key in a directory of their own.
///
/// Each file is `<kid>.json`: `{"createdAt": ms, "kid": "…", "retiredAt": ms | null, "seed": base64url}`, mode
/// 0600, in a directory of mode 0700; loading refuses either if group or others have any access. Files are
/// written to a temporary name (`O_CREAT|O_EXCL`, mode 0600), fsynced, then renamed into place, so a crash
/// leaves the old file or the new one, never half of one.
///
/// The ``active`` key is the newest not retired; ``rotate(now:)`` adds a new one and retires the old, which keeps
/// verifying tokens for ``retention`` after it was retired. Safe to use from several threads (one lock).
public final class SigningKeyStore: @unchecked Sendable {
    /// One key and its lifetime, in Unix milliseconds.
    public struct Entry: Sendable, CustomStringConvertible {
        public let keyPair: SigningKeyPair
        public let createdAt: Int64
        public internal(set) var retiredAt: Int64?
        public var keyID: KeyID { keyPair.keyID }
        public var description: String {
            "SigningKeyStore.Entry(kid: \(keyID), createdAt: \(createdAt), retiredAt: \(retiredAt.map(String.init) ?? "nil"))"
        }
    }

    /// Where the key files live.
    public let directory: String
    /// How long, in milliseconds, a retired key keeps verifying tokens (default 24 h).
    public let retention: Int64

    private let lock = NSLock()
    private var entries: [Entry]  // guarded by lock; sorted by createdAt, oldest first

    /// Opens the store in `directory`, creating it (mode 0700) and a first key if there is none.
    /// `now` is Unix milliseconds.
    public init(directory: String, retention: Int64 = 24 * 3600 * 1000, now: Int64) throws(KeyStoreError) {
        self.directory = directory
        self.retention = retention
        try Self.prepareDirectory(directory)
        entries = try Self.loadAll(directory)
        if entries.allSatisfy({ $0.retiredAt != nil }) {
            let entry = Entry(keyPair: SigningKeyPair(), createdAt: now, retiredAt: nil)
            try Self.write(entry, to: directory)
            entries.append(entry)
        }
    }

    /// The key new tokens are signed with: the newest key not retired.
    public var active: Entry {
        lock.withLock { entries.last(where: { $0.retiredAt == nil })! }
    }

    /// Every key in the store, oldest first.
    public var allEntries: [Entry] { lock.withLock { entries } }

    /// Makes a new active key and retires every other; deletes the files of keys retired longer ago than
    /// ``retention``. Returns the new active key.
    @discardableResult
    public func rotate(now: Int64) throws(KeyStoreError) -> Entry {
        lock.lock()
        defer { lock.unlock() }
        let fresh = Entry(keyPair: SigningKeyPair(), createdAt: max(now, (entries.last?.createdAt ?? now) + 1),
                          retiredAt: nil)
        // The new key first: a crash before the old one is marked leaves two unretired keys, and the newer wins.
        try Self.write(fresh, to: directory)
        for i in entries.indices where entries[i].retiredAt == nil {
            var retired = entries[i]
            retired.retiredAt = now
            try Self.write(retired, to: directory)
            entries[i] = retired
        }
        entries.append(fresh)
        try pruneLocked(now: now)
        return fresh
    }

    /// Deletes the files of keys retired longer ago than ``retention``.
    public func prune(now: Int64) throws(KeyStoreError) {
        lock.lock()
        defer { lock.unlock() }
        try pruneLocked(now: now)
    }

    /// The public keys tokens may be verified with at `now`: every key not retired, or retired less than
    /// ``retention`` ago.
    public func verificationKeys(now: Int64) -> [KeyID: [UInt8]] {
        lock.withLock {
            var keys: [KeyID: [UInt8]] = [:]
            for entry in entries where entry.retiredAt.map({ now - $0 < retention }) ?? true {
                keys[entry.keyID] = entry.keyPair.publicKey
            }
            return keys
        }
    }

    /// ``verificationKeys(now:)`` as a ``KeyRing``.
    public func keyRing(now: Int64) -> KeyRing { KeyRing(keys: verificationKeys(now: now)) }

    // MARK: Files

    private func pruneLocked(now: Int64) throws(KeyStoreError) {
        var kept: [Entry] = []
        for entry in entries {
            if let retiredAt = entry.retiredAt, now - retiredAt >= retention {
                let path = Self.path(for: entry.keyID, in: directory)
                if unlink(path) != 0, errno != ENOENT { throw .io("cannot delete", path) }
            } else {
                kept.append(entry)
            }
        }
        entries = kept
    }

    static func path(for keyID: KeyID, in directory: String) -> String { directory + "/" + keyID.rawValue + ".json" }

    private static func prepareDirectory(_ directory: String) throws(KeyStoreError) {
        if mkdir(directory, 0o700) != 0, errno != EEXIST { throw .io("cannot create directory", directory) }
        var info = stat()
        guard lstat(directory, &info) == 0 else { throw .io("cannot stat", directory) }
        guard info.st_mode & S_IFMT == S_IFDIR else { throw .corrupt(directory, "not a directory") }
        guard info.st_mode & 0o077 == 0 else { throw .insecure(directory, mode: info.st_mode, wanted: "700") }
    }

    private static func loadAll(_ directory: String) throws(KeyStoreError) -> [Entry] {
        let names: [String]
        do { names = try FileManager.default.contentsOfDirectory(atPath: directory) } catch {
            throw .io("cannot list", directory, errno: EIO)
        }
        var entries: [Entry] = []
        for name in names.sorted() where name.hasSuffix(".json") && !name.hasPrefix(".") {
            entries.append(try load(directory + "/" + name))
        }
        return entries.sorted { ($0.createdAt, $0.keyID.rawValue) < ($1.createdAt, $1.keyID.rawValue) }
    }

    private static func load(_ path: String) throws(KeyStoreError) -> Entry {
        let fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else { throw .io("cannot open", path) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .io("cannot stat", path) }
        guard info.st_mode & S_IFMT == S_IFREG else { throw .corrupt(path, "not a regular file") }
        guard info.st_mode & 0o077 == 0 else { throw .insecure(path, mode: info.st_mode, wanted: "600") }
        guard info.st_size <= 4096 else { throw .corrupt(path, "larger than 4096 bytes") }

        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        defer { zeroize(&bytes) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .io("cannot read", path) }
            done += n
        }

        guard let json = try? JSONParser.parse(bytes), let object = json.objectValue else {
            throw .corrupt(path, "not a JSON object")
        }
        guard Set(object.keys) == ["kid", "seed", "createdAt", "retiredAt"] else {
            throw .corrupt(path, "expected exactly kid, seed, createdAt, retiredAt")
        }
        guard let kid = object["kid"]?.stringValue, let seedText = object["seed"]?.stringValue,
            var seed = Base64URL.decode(seedText), seed.count == SigningKeyPair.seedLength,
            let createdAt = object["createdAt"]?.integerValue
        else { throw .corrupt(path, "bad kid, seed or createdAt") }
        defer { zeroize(&seed) }
        let retiredAt: Int64?
        switch object["retiredAt"] {
        case .null?: retiredAt = nil
        case let value?: guard let ms = value.integerValue else { throw .corrupt(path, "bad retiredAt") }; retiredAt = ms
        case nil: retiredAt = nil
        }
        let keyPair: SigningKeyPair
        do { keyPair = try SigningKeyPair(seed: seed) } catch { throw .corrupt(path, "bad seed") }
        guard keyPair.keyID.rawValue == kid else { throw .corrupt(path, "kid does not match the seed") }
        guard path.hasSuffix("/" + kid + ".json") else { throw .corrupt(path, "file name does not match the kid") }
        return Entry(keyPair: keyPair, createdAt: createdAt, retiredAt: retiredAt)
    }

    private static func write(_ entry: Entry, to directory: String) throws(KeyStoreError) {
        var seed = entry.keyPair.seed.copyBytes()
        let object: JSONValue = [
            "kid": .string(entry.keyID.rawValue),
            "seed": .string(Base64URL.encode(seed)),
            "createdAt": .number(Double(entry.createdAt)),
            "retiredAt": entry.retiredAt.map { .number(Double($0)) } ?? .null,
        ]
        zeroize(&seed)
        var bytes = JSONWriter.encode(object)
        bytes.append(0x0A)
        defer { zeroize(&bytes) }

        let finalPath = path(for: entry.keyID, in: directory)
        let tempPath = directory + "/." + entry.keyID.rawValue + ".json.tmp-" + Base64URL.encode(SecureRandom.bytes(6))
        let fd = open(tempPath, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io("cannot create", tempPath) }
        var closed = false
        defer { if !closed { close(fd); unlink(tempPath) } }
        // The umask can only remove bits from 0600; fchmod makes the mode exact whatever it is.
        guard fchmod(fd, 0o600) == 0 else { throw .io("cannot chmod", tempPath) }
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { posixWrite(fd, $0.baseAddress! + done, $0.count - done) }
            if n < 0, errno == EINTR { continue }
            guard n > 0 else { throw .io("cannot write", tempPath) }
            done += n
        }
        guard fsync(fd) == 0 else { throw .io("cannot fsync", tempPath) }
        closed = true
        guard close(fd) == 0 else { unlink(tempPath); throw .io("cannot close", tempPath) }
        guard rename(tempPath, finalPath) == 0 else { unlink(tempPath); throw .io("cannot rename to", finalPath) }
        // Make the rename itself durable.
        let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirFD >= 0 {
            _ = fsync(dirFD)
            close(dirFD)
        }
    }
}

/// `write(2)`, under a name the store's own `write(_:to:)` does not shadow.
private func posixWrite(_ fd: Int32, _ buffer: UnsafeRawPointer, _ count: Int) -> Int { write(fd, buffer, count) }
