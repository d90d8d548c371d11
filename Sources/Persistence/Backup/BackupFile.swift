import AgentChatCrypto
import AgentChatProtocol
import Foundation

/// The backup file format, version 1 (`agentchat-broker backup` / `restore`; docs/ops/backup.md).
///
/// Every integer is big-endian. The file is:
///
/// ```
/// magic      "AGENTCHAT-BACKUP\n" (17 bytes), u32 format version (1)
/// header     u32 length, JSON object: format, createdAt (ms), source (the Redis URL), redisVersion, consistency
/// groups     'G' u32 length, label, u64 capturedAt (Redis TIME, ms), u32 key count; then that many keys:
///            'K' u32 length, name, u8 length, type, i64 expiresAt (Unix ms, -1: none), u32 length, DUMP payload
/// end        'E' u64 group count, u64 key count
/// checksum   32 bytes: BLAKE2b-256 (libsodium) of every byte before it
/// ```
///
/// A group is one hash tag captured in one atomic step; its label is the tag's key prefix (`agentchat:ch:{id}`,
/// `agentchat:agent:{did}`) or, for an untagged key, the key itself.
public enum BackupFile {
    public static let magic: [UInt8] = Array("AGENTCHAT-BACKUP\n".utf8)
    public static let formatVersion: UInt32 = 1
    static let groupMarker = UInt8(ascii: "G"), keyMarker = UInt8(ascii: "K"), endMarker = UInt8(ascii: "E")
    static let checksumLength = 32
}

/// The JSON header of a backup file.
public struct BackupHeader: Sendable, Equatable {
    public var createdAt: Int64
    public var source: String
    public var redisVersion: String

    public init(createdAt: Int64, source: String, redisVersion: String) {
        self.createdAt = createdAt
        self.source = source
        self.redisVersion = redisVersion
    }

    static let consistency = "each group (one hash tag) was captured atomically at its capturedAt; groups in order: channels, agents, other tagged keys, untagged keys"

    var json: [UInt8] {
        JSONWriter.encode(.object([
            "format": .number(Double(BackupFile.formatVersion)), "createdAt": .number(Double(createdAt)),
            "source": .string(source), "redisVersion": .string(redisVersion), "consistency": .string(Self.consistency),
        ]))
    }

    init(json bytes: [UInt8]) throws(BackupFileError) {
        guard case .object(let object)? = try? JSONParser.parse(bytes),
              case .number(let createdAt)? = object["createdAt"], case .string(let source)? = object["source"],
              case .string(let redisVersion)? = object["redisVersion"]
        else { throw BackupFileError("the header is not a backup header") }
        self.init(createdAt: Int64(createdAt), source: source, redisVersion: redisVersion)
    }
}

/// One key of a backup: its name, Redis type, absolute expiry and `DUMP` payload.
public struct BackupKey: Sendable, Equatable {
    public var name: [UInt8]
    public var type: String
    /// Unix time in ms at which the key expires, or nil.
    public var expiresAt: Int64?
    public var payload: [UInt8]

    public init(name: [UInt8], type: String, expiresAt: Int64?, payload: [UInt8]) {
        self.name = name
        self.type = type
        self.expiresAt = expiresAt
        self.payload = payload
    }

    public var nameText: String { String(decoding: name, as: UTF8.self) }
}

/// A record read from a backup file.
public enum BackupRecord: Sendable, Equatable {
    case group(label: String, capturedAt: Int64, keyCount: Int)
    case key(BackupKey)
    /// The end record; only returned once its checksum matched and nothing follows it.
    case end(groups: Int, keys: Int)
}

/// Why a backup file cannot be written or read.
public struct BackupFileError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}

/// Writes a backup file as it goes: to `<path>.partial`, renamed to `path` by `finish()` after an fsync, so an
/// interrupted backup never leaves a file that looks complete. Not thread-safe.
public final class BackupWriter {
    public let path: String
    private let partialPath: String
    private let handle: FileHandle
    private let hash = BLAKE2bStream()
    private var buffer: [UInt8] = []
    private var groups = 0, keys = 0
    private var pendingKeys = 0
    public private(set) var bytesWritten = 0

    public init(path: String, header: BackupHeader) throws(BackupFileError) {
        self.path = path
        partialPath = path + ".partial"
        guard FileManager.default.createFile(atPath: partialPath, contents: nil, attributes: [.posixPermissions: 0o600]),
              let handle = FileHandle(forWritingAtPath: partialPath)
        else { throw BackupFileError("cannot create \(partialPath): \(String(cString: strerror(errno)))") }
        self.handle = handle
        buffer.reserveCapacity(1 << 20)
        buffer += BackupFile.magic
        append(BackupFile.formatVersion)
        let json = header.json
        append(UInt32(json.count))
        buffer += json
    }

    /// Starts a group of `keyCount` keys captured at `capturedAt` (ms).
    public func beginGroup(label: String, capturedAt: Int64, keyCount: Int) throws(BackupFileError) {
        precondition(pendingKeys == 0, "the previous group is not complete")
        buffer.append(BackupFile.groupMarker)
        appendBytes(Array(label.utf8))
        append(UInt64(bitPattern: capturedAt))
        append(UInt32(keyCount))
        groups += 1
        pendingKeys = keyCount
        try flushIfFull()
    }

    public func add(_ key: BackupKey) throws(BackupFileError) {
        precondition(pendingKeys > 0, "more keys than the group announced")
        pendingKeys -= 1
        buffer.append(BackupFile.keyMarker)
        appendBytes(key.name)
        let type = Array(key.type.utf8)
        buffer.append(UInt8(type.count))
        buffer += type
        append(UInt64(bitPattern: key.expiresAt ?? -1))
        appendBytes(key.payload)
        keys += 1
        try flushIfFull()
    }

    /// Writes the end record and the checksum, syncs and renames the file into place. Returns the file's size.
    @discardableResult
    public func finish() throws(BackupFileError) -> Int {
        precondition(pendingKeys == 0, "the last group is not complete")
        buffer.append(BackupFile.endMarker)
        append(UInt64(groups))
        append(UInt64(keys))
        hash.update(buffer)
        let checksum = hash.finish()
        buffer += checksum
        try write(buffer, hashed: false)
        buffer = []
        do {
            try handle.synchronize()
            try handle.close()
        } catch {
            throw BackupFileError("cannot write \(partialPath): \(error)")
        }
        guard rename(partialPath, path) == 0 else {
            throw BackupFileError("cannot rename \(partialPath) to \(path): \(String(cString: strerror(errno)))")
        }
        return bytesWritten
    }

    /// Removes the partial file (after a failure).
    public func abandon() {
        try? handle.close()
        unlink(partialPath)
    }

    private func append(_ value: UInt32) { withUnsafeBytes(of: value.bigEndian) { buffer += $0 } }
    private func append(_ value: UInt64) { withUnsafeBytes(of: value.bigEndian) { buffer += $0 } }
    private func appendBytes(_ bytes: [UInt8]) {
        append(UInt32(bytes.count))
        buffer += bytes
    }

    private func flushIfFull() throws(BackupFileError) {
        guard buffer.count >= 1 << 20 else { return }
        try write(buffer, hashed: true)
        buffer.removeAll(keepingCapacity: true)
    }

    private func write(_ bytes: [UInt8], hashed: Bool) throws(BackupFileError) {
        if hashed { hash.update(bytes) }
        do {
            try handle.write(contentsOf: bytes)
        } catch {
            throw BackupFileError("cannot write \(partialPath): \(error)")
        }
        bytesWritten += bytes.count
    }
}

/// Reads a backup file record by record, hashing as it goes; the end record is returned only when the checksum
/// matches and the file ends right after it. Every length is checked against what is left of the file, so an
/// altered length cannot make it allocate more than the file holds. Not thread-safe.
public final class BackupReader {
    public let path: String
    public let header: BackupHeader
    public let fileSize: Int
    private let handle: FileHandle
    private let hash = BLAKE2bStream()
    private var chunk: [UInt8] = []
    private var chunkOffset = 0
    private var consumed = 0
    private var groups = 0, keys = 0, pendingKeys = 0
    private var ended = false

    public init(path: String) throws(BackupFileError) {
        self.path = path
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path),
              let size = (attributes[.size] as? NSNumber)?.intValue,
              let handle = FileHandle(forReadingAtPath: path)
        else { throw BackupFileError("cannot open \(path): \(String(cString: strerror(errno)))") }
        fileSize = size
        self.handle = handle
        let magic = try Self.read(BackupFile.magic.count, from: handle, size: size, what: "the file's start")
        guard magic == BackupFile.magic else {
            throw BackupFileError("\(path) is not an AgentChat backup (no AGENTCHAT-BACKUP header)")
        }
        let version = Self.uint32(try Self.read(4, from: handle, size: size - magic.count, what: "the header"))
        guard version == BackupFile.formatVersion else {
            throw BackupFileError("\(path) has backup format \(version); this broker reads format \(BackupFile.formatVersion)")
        }
        let lengthBytes = try Self.read(4, from: handle, size: size - magic.count - 4, what: "the header")
        let length = Int(Self.uint32(lengthBytes))
        let json = try Self.read(length, from: handle, size: size - magic.count - 8, what: "the header")
        header = try BackupHeader(json: json)
        for part in [magic, [UInt8](withUnsafeBytes(of: version.bigEndian) { Array($0) }), lengthBytes, json] {
            hash.update(part)
        }
        consumed = magic.count + 8 + length
    }

    deinit { try? handle.close() }

    /// The next record, or nil after the end record.
    public func next() throws(BackupFileError) -> BackupRecord? {
        if ended { return nil }
        let marker = try take(1, what: "a record")[0]
        switch marker {
        case BackupFile.groupMarker:
            guard pendingKeys == 0 else { throw corrupt("a group starts before the previous one's keys") }
            let label = try takeBytes(what: "a group label")
            let capturedAt = Int64(bitPattern: Self.uint64(try take(8, what: "a group")))
            let count = Int(Self.uint32(try take(4, what: "a group")))
            groups += 1
            pendingKeys = count
            return .group(label: String(decoding: label, as: UTF8.self), capturedAt: capturedAt, keyCount: count)
        case BackupFile.keyMarker:
            guard pendingKeys > 0 else { throw corrupt("a key outside a group") }
            pendingKeys -= 1
            let name = try takeBytes(what: "a key name")
            let typeLength = Int(try take(1, what: "a key")[0])
            let type = String(decoding: try take(typeLength, what: "a key type"), as: UTF8.self)
            let expiry = Int64(bitPattern: Self.uint64(try take(8, what: "a key")))
            let payload = try takeBytes(what: "a key's payload")
            keys += 1
            return .key(BackupKey(name: name, type: type, expiresAt: expiry < 0 ? nil : expiry, payload: payload))
        case BackupFile.endMarker:
            guard pendingKeys == 0 else { throw corrupt("the file ends inside a group") }
            let groupCount = Int(Self.uint64(try take(8, what: "the end record")))
            let keyCount = Int(Self.uint64(try take(8, what: "the end record")))
            let expected = hash.finish()
            let checksum = try take(BackupFile.checksumLength, what: "the checksum", hashed: false)
            guard checksum == expected else {
                throw BackupFileError("\(path): checksum mismatch (the file was altered or damaged); nothing restored from it is trustworthy")
            }
            guard consumed == fileSize else {
                throw BackupFileError("\(path): \(fileSize - consumed) unexpected bytes after the checksum")
            }
            guard groupCount == groups, keyCount == keys else {
                throw corrupt("the end record counts \(groupCount) groups and \(keyCount) keys, the file holds \(groups) and \(keys)")
            }
            ended = true
            return .end(groups: groupCount, keys: keyCount)
        default:
            throw corrupt("unknown record type \(marker) at byte \(consumed - 1)")
        }
    }

    private func corrupt(_ what: String) -> BackupFileError {
        BackupFileError("\(path) is damaged: \(what) (at byte \(consumed))")
    }

    private func takeBytes(what: String) throws(BackupFileError) -> [UInt8] {
        let length = Int(Self.uint32(try take(4, what: what)))
        return try take(length, what: what)
    }

    /// `count` bytes from the buffered file; fails if the file holds fewer.
    private func take(_ count: Int, what: String, hashed: Bool = true) throws(BackupFileError) -> [UInt8] {
        guard count <= fileSize - consumed else {
            throw BackupFileError("\(path) ends early, in \(what) at byte \(consumed) of \(fileSize) (truncated?)")
        }
        var out: [UInt8] = []
        out.reserveCapacity(count)
        while out.count < count {
            if chunkOffset == chunk.count {
                chunk = try Self.read(min(1 << 20, fileSize - consumed - out.count), from: handle,
                                      size: fileSize - consumed - out.count, what: what)
                chunkOffset = 0
            }
            let n = min(count - out.count, chunk.count - chunkOffset)
            out += chunk[chunkOffset..<(chunkOffset + n)]
            chunkOffset += n
        }
        consumed += count
        if hashed { hash.update(out) }
        return out
    }

    private static func read(_ count: Int, from handle: FileHandle, size: Int, what: String) throws(BackupFileError)
        -> [UInt8]
    {
        guard count <= size else { throw BackupFileError("the file ends early, in \(what) (truncated?)") }
        guard count > 0 else { return [] }
        let data: Data?
        do { data = try handle.read(upToCount: count) } catch { throw BackupFileError("cannot read: \(error)") }
        guard let data, data.count == count else { throw BackupFileError("the file ends early, in \(what) (truncated?)") }
        return [UInt8](data)
    }

    private static func uint32(_ b: [UInt8]) -> UInt32 { b.reduce(0) { $0 << 8 | UInt32($1) } }
    private static func uint64(_ b: [UInt8]) -> UInt64 { b.reduce(0) { $0 << 8 | UInt64($1) } }
}
