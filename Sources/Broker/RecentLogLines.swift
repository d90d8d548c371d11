import AgentChatCore
import Foundation
import Logging

/// The last warning and error lines this process logged, for the admin page: a bounded ring, filled by
/// `RecentLogLines.Handler` (one of the handlers every logger writes to) from any thread, read on the loop.
///
/// Secrets never get in: only the message and the metadata whose keys are not secret-like are kept (log lines carry
/// no tokens or keys in the first place; this is the second guard), each line cut at 400 characters.
final class RecentLogLines: @unchecked Sendable {
    /// Lines kept.
    let capacity: Int
    private let lock = NSLock()
    private var lines: [RecentLogLine] = []
    private var next = 0

    init(capacity: Int = 100) { self.capacity = capacity }

    /// Metadata keys never kept (lower-cased substrings).
    static let secretKeys = ["token", "secret", "key", "authorization", "signature", "password", "cookie"]

    func append(_ line: RecentLogLine) {
        lock.lock()
        defer { lock.unlock() }
        if lines.count < capacity {
            lines.append(line)
        } else {
            lines[next] = line
            next = (next + 1) % capacity
        }
    }

    /// Oldest first.
    var snapshot: [RecentLogLine] {
        lock.lock()
        defer { lock.unlock() }
        return Array(lines[next...] + lines[..<next])
    }

    /// The text kept for one event: the message, then ` key=value` for each metadata entry that is not secret-like.
    static func text(_ message: String, _ metadata: Logger.Metadata) -> String {
        var text = message
        for key in metadata.keys.sorted() {
            let lowered = key.lowercased()
            guard !secretKeys.contains(where: lowered.contains) else { continue }
            text += " \(key)=\(metadata[key]!)"
        }
        return text.count > 400 ? String(text.prefix(400)) + "…" : text
    }

    /// Records warnings and worse into a `RecentLogLines`.
    struct Handler: LogHandler {
        let label: String
        let lines: RecentLogLines
        var logLevel: Logger.Level = .warning
        var metadata: Logger.Metadata = [:]
        var metadataProvider: Logger.MetadataProvider?

        subscript(metadataKey key: String) -> Logger.Metadata.Value? {
            get { metadata[key] }
            set { metadata[key] = newValue }
        }

        func log(event: LogEvent) {
            guard event.level >= .warning else { return }
            var merged = metadata
            if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
            if let extra = event.metadata { merged.merge(extra) { _, new in new } }
            // The process index and pid are the same on every line of this process.
            merged["process"] = nil
            merged["pid"] = nil
            lines.append(RecentLogLine(time: Int64(Date().timeIntervalSince1970 * 1000), level: event.level.rawValue,
                                       logger: label, message: RecentLogLines.text(event.message.description, merged)))
        }
    }
}
