import AgentChatProtocol
import Foundation
import Logging

/// Writes one JSON object per log line to standard error: `ts`, `level`, `logger`, `msg`, then the metadata.
/// Selected with `--log-format json`, for log shippers.
struct JSONLogHandler: LogHandler {
    let label: String
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?

    init(label: String) { self.label = label }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        var object: [String: JSONValue] = [
            "ts": .string(Date().formatted(.iso8601.year().month().day().time(includingFractionalSeconds: true))),
            "level": .string(event.level.rawValue),
            "logger": .string(label),
            "msg": .string(event.message.description),
        ]
        var merged = metadata
        if let provided = metadataProvider?.get() { merged.merge(provided) { _, new in new } }
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        for (key, value) in merged where object[key] == nil { object[key] = .string(value.description) }
        var line = JSONWriter.encode(.object(object))
        line.append(0x0A)
        line.withUnsafeBytes { _ = Glibc.write(2, $0.baseAddress, $0.count) }  // one write per line: lines never interleave
    }
}
