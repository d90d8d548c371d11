/// Reassembles one WebSocket message from the pieces libwebsockets hands over.
///
/// A message larger than one read arrives in several RECEIVE callbacks (and a fragmented message in several
/// frames); this collects them and enforces the message size limit on the running total, so an oversize message
/// is refused before it is buffered whole. Pure state: no I/O, unit-tested on its own.
struct InboundAssembler {
    enum Outcome: Equatable {
        /// More pieces are needed.
        case incomplete
        /// A whole message.
        case message([UInt8], isBinary: Bool)
        /// The message passed `maxBytes`; the buffer was dropped and the connection should close with 1009.
        case tooLarge
    }

    let maxBytes: Int
    private var buffer: [UInt8] = []
    private var isBinary = false
    private var inMessage = false

    init(maxBytes: Int) { self.maxBytes = maxBytes }

    /// Adds one piece. `remaining` is what the current frame still announces (lws_remaining_packet_payload), which
    /// lets an oversize frame be refused on its first piece.
    mutating func append(_ piece: UnsafeRawBufferPointer, isBinary binary: Bool, isFinal: Bool, remaining: Int = 0)
        -> Outcome
    {
        if !inMessage {
            inMessage = true
            isBinary = binary
            buffer.removeAll(keepingCapacity: false)
        }
        guard buffer.count + piece.count + remaining <= maxBytes else {
            reset()
            return .tooLarge
        }
        // A frame larger than the receive buffer comes in pieces: room for the whole frame at its first piece.
        if !isFinal, buffer.isEmpty { buffer.reserveCapacity(piece.count + remaining) }
        buffer.append(contentsOf: piece)
        guard isFinal else { return .incomplete }
        let message = buffer
        let binaryMessage = isBinary
        reset()
        return .message(message, isBinary: binaryMessage)
    }

    private mutating func reset() {
        buffer = []
        inMessage = false
    }
}
