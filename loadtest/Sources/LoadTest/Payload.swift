import Histogram

/// What every message carries at the start of its payload, written at send: a sequence number (for loss and
/// duplicate checks), the send time (CLOCK_MONOTONIC ns, for end-to-end latency) and the rate step it belongs to.
/// 18 bytes, so its base64url form is exactly 24 characters and can be concatenated with the base64url of what
/// follows (18 is a multiple of 3).
struct MessageHeader {
    static let byteCount = 18
    static let textCount = 24
    var seq: UInt64
    var sentNs: UInt64
    var step: UInt16

    var bytes: [UInt8] {
        var b = [UInt8](repeating: 0, count: Self.byteCount)
        for i in 0..<8 { b[i] = UInt8(truncatingIfNeeded: seq >> (8 * UInt64(i))) }
        for i in 0..<8 { b[8 + i] = UInt8(truncatingIfNeeded: sentNs >> (8 * UInt64(i))) }
        b[16] = UInt8(truncatingIfNeeded: step)
        b[17] = UInt8(truncatingIfNeeded: step >> 8)
        return b
    }

    /// The 24 base64url characters.
    var text: [UInt8] {
        let b = bytes
        var out = [UInt8]()
        out.reserveCapacity(Self.textCount)
        var i = 0
        while i < 18 {
            let v = UInt32(b[i]) << 16 | UInt32(b[i + 1]) << 8 | UInt32(b[i + 2])
            out.append(Self.alphabet[Int(v >> 18)])
            out.append(Self.alphabet[Int((v >> 12) & 63)])
            out.append(Self.alphabet[Int((v >> 6) & 63)])
            out.append(Self.alphabet[Int(v & 63)])
            i += 3
        }
        return out
    }

    static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)
    static let decodeTable: [UInt8] = {
        var t = [UInt8](repeating: 255, count: 256)
        for (i, c) in alphabet.enumerated() { t[Int(c)] = UInt8(i) }
        return t
    }()

    /// Decodes the 24 characters at `p[offset...]`; nil when they are not base64url.
    @inline(__always)
    static func decode(_ p: UnsafeRawBufferPointer, at offset: Int) -> MessageHeader? {
        guard offset + textCount <= p.count else { return nil }
        var seq: UInt64 = 0, sent: UInt64 = 0, step: UInt64 = 0
        var byteIndex: UInt64 = 0
        return decodeTable.withUnsafeBufferPointer { table -> MessageHeader? in
            for g in 0..<6 {
                var v: UInt32 = 0
                for k in 0..<4 {
                    let d = table[Int(p[offset &+ g &* 4 &+ k])]
                    if d == 255 { return nil }
                    v = v << 6 | UInt32(d)
                }
                var s: UInt32 = 16
                while true {
                    let byte = UInt64((v >> s) & 0xff)
                    if byteIndex < 8 { seq |= byte << (8 &* byteIndex) }
                    else if byteIndex < 16 { sent |= byte << (8 &* (byteIndex &- 8)) }
                    else { step |= byte << (8 &* (byteIndex &- 16)) }
                    byteIndex &+= 1
                    if s == 0 { break }
                    s -= 8
                }
            }
            return MessageHeader(seq: seq, sentNs: sent, step: UInt16(truncatingIfNeeded: step))
        }
    }
}

/// The bytes of a peer target's message: the header text, then filler up to `size` ('.', which is not base64url,
/// so a piece of a message that a server splits off is never mistaken for a header).
func peerPayload(_ header: MessageHeader, size: Int) -> [UInt8] {
    var p = header.text
    if size > p.count { p.append(contentsOf: repeatElement(UInt8(ascii: "."), count: size - p.count)) }
    return p
}

/// Per-step delivery statistics of one worker: counts, latency histogram (µs).
struct StepStats {
    var received: UInt64 = 0
    var duplicates: UInt64 = 0
    var gaps: UInt64 = 0
    /// Messages whose header was implausible (a sequence number far ahead): not counted as deliveries.
    var malformed: UInt64 = 0
    /// WebSocket messages that carried at least one delivery counted here (received / frames: items per frame).
    var frames: UInt64 = 0
    var latency = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 120_000_000,
                                    numberOfSignificantValueDigits: .three)
}

/// Records deliveries for the connections of one process: latency into the step's histogram, and sequence
/// checks per connection (the publisher numbers messages 1, 2, 3, … and every broker delivers in order, so a
/// number at or below the last one seen is a duplicate and a jump is a loss).
final class DeliveryRecorder {
    private(set) var lastSeq: [UInt64]
    private(set) var steps: [StepStats] = []
    private(set) var malformedTotal: UInt64 = 0
    /// 1 for broadcast; for rooms, the members per room: the sender's slot in its room is in the sequence
    /// number's top 16 bits, and sequence numbers are checked per (receiver, sender) pair.
    let roomSize: Int

    init(connections: Int, roomSize: Int = 1) {
        self.roomSize = roomSize
        lastSeq = [UInt64](repeating: 0, count: connections * roomSize)
    }

    /// Set by `beginFrame()` when a WebSocket message arrives; the first delivery recorded from it counts the
    /// frame (in that delivery's step).
    private var frameStarted = false

    /// A WebSocket message arrived: the next delivery recorded is the first of a new frame.
    @inline(__always)
    func beginFrame() { frameStarted = true }

    @inline(__always)
    func record(connection: Int, _ h: MessageHeader, now: UInt64) {
        let step = Int(h.step)
        if step > 4096 { malformedTotal &+= 1; return }
        if frameStarted {
            frameStarted = false
            while steps.count <= step { steps.append(StepStats()) }
            steps[step].frames &+= 1
        }
        var seq = h.seq
        var index = connection
        if roomSize > 1 {
            let slot = Int(truncatingIfNeeded: h.seq >> 48)
            if slot == connection % roomSize { return }  // the sender's own copy (MQTT and agentchat echo it)
            if slot >= roomSize { malformedTotal &+= 1; return }
            seq = h.seq & 0xFFFF_FFFF_FFFF
            index = connection * roomSize + slot
        }
        while steps.count <= step { steps.append(StepStats()) }
        let last = lastSeq[index]
        if seq <= last {
            steps[step].duplicates += 1
            return
        }
        if seq > last &+ 10_000_000 {
            steps[step].malformed &+= 1
            return
        }
        if seq != last + 1 { steps[step].gaps &+= seq - last - 1 }
        lastSeq[index] = seq
        steps[step].received += 1
        let us = now > h.sentNs ? (now - h.sentNs) / 1000 : 0
        _ = steps[step].latency.record(max(1, us))
    }

    func stats(step: Int) -> StepStats { step < steps.count ? steps[step] : StepStats() }
}
