import CLibWebSockets
import Logging
import Synchronization

/// Sends libwebsockets' own log lines (errors and warnings only) to swift-log.
package enum LibWebSocketsLog {
    fileprivate static let logger = Mutex<Logger?>(nil)

    package static func route(to logger: Logger) {
        Self.logger.withLock { $0 = logger }
        lws_set_log_level(LLL_ERR | LLL_WARN, lwsLogEmit)
    }
}

private func lwsLogEmit(_ level: Int32, _ line: UnsafePointer<CChar>?) {
    guard let line else { return }
    let text = String(cString: line).trimmingCharacters(in: .whitespacesAndNewlines)
    LibWebSocketsLog.logger.withLock { logger in
        if level & LLL_ERR != 0 {
            logger?.error("\(text)")
        } else {
            logger?.warning("\(text)")
        }
    }
}
