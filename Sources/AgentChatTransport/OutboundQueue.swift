import AgentChatCore
import DequeModule

/// The frames waiting to be written to one connection, bounded in bytes. Pure state, unit-tested on its own.
struct OutboundQueue {
    enum EnqueueResult: Equatable {
        case queued
        /// The queue would pass its byte limit: the connection reads too slowly and is to be closed (4008).
        case overflow
    }

    let maxBytes: Int
    private(set) var frames: Deque<OutboundFrame> = []
    private(set) var queuedBytes = 0

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    var isEmpty: Bool { frames.isEmpty }

    mutating func enqueue(_ frame: OutboundFrame) -> EnqueueResult {
        guard queuedBytes + frame.count <= maxBytes else { return .overflow }
        frames.append(frame)
        queuedBytes += frame.count
        return .queued
    }

    mutating func dequeue() -> OutboundFrame? {
        guard let frame = frames.popFirst() else { return nil }
        queuedBytes -= frame.count
        return frame
    }

    mutating func removeAll() {
        frames.removeAll()
        queuedBytes = 0
    }
}
