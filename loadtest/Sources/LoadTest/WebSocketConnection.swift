import CLoadTestShims
import Glibc

/// What a target does on one connection: its login, subscription and message parsing.
protocol SessionHandler: AnyObject {
    /// The WebSocket handshake completed.
    func opened(_ connection: WebSocketConnection)
    /// One complete WebSocket data message (text or binary), valid only during the call.
    func received(_ connection: WebSocketConnection, _ payload: UnsafeRawBufferPointer, binary: Bool)
    /// The connection failed or closed.
    func closed(_ connection: WebSocketConnection, reason: String)
}

/// A minimal RFC 6455 client over a non-blocking TCP socket on an `EventLoop`: handshake, masked client frames,
/// unmasked server frames, fragments reassembled, pings answered. No thread of its own.
final class WebSocketConnection: LoopSource {
    enum State { case connecting, handshaking, open, closed }

    private(set) var state = State.connecting
    let index: Int
    let handler: SessionHandler
    private let host: String
    private let port: Int
    private let path: String
    private let subprotocol: String?
    /// Bytes not yet written (the kernel said EAGAIN).
    private var outbound: [UInt8] = []
    private var outboundStart = 0
    private var writeInterest = false
    /// Bytes read but not yet a whole frame.
    private var inbound: [UInt8] = []
    /// A fragmented message being reassembled.
    private var fragments: [UInt8] = []
    private var fragmentBinary = false
    private var mask: UInt32 = 0x1234_5678
    weak var loop: EventLoop?

    init?(index: Int, source: String, host: String, port: Int, path: String = "/", subprotocol: String?,
          handler: SessionHandler, loop: EventLoop)
    {
        let fd = lt_connect(source, host, Int32(port))
        guard fd >= 0 else { return nil }
        self.index = index
        self.host = host
        self.port = port
        self.path = path
        self.subprotocol = subprotocol
        self.handler = handler
        self.loop = loop
        mask = UInt32(truncatingIfNeeded: index &* 2_654_435_761) | 1
        super.init(fd: fd)
        loop.add(self, write: true)
    }

    var isOpen: Bool { state == .open }

    // MARK: Writing

    /// Queues one WebSocket message (masked, as a client must).
    func send(_ payload: UnsafeRawBufferPointer, binary: Bool) {
        guard state == .open else { return }
        var header = [UInt8]()
        header.reserveCapacity(14)
        header.append(0x80 | (binary ? 2 : 1))
        let n = payload.count
        if n < 126 {
            header.append(0x80 | UInt8(n))
        } else if n < 65536 {
            header.append(0x80 | 126); header.append(UInt8(n >> 8)); header.append(UInt8(n & 0xff))
        } else {
            header.append(0x80 | 127)
            for shift in stride(from: 56, through: 0, by: -8) { header.append(UInt8((n >> shift) & 0xff)) }
        }
        writeFrame(header: header, payload: payload)
    }

    func send(_ bytes: [UInt8], binary: Bool) { bytes.withUnsafeBytes { send($0, binary: binary) } }
    func send(_ text: String) { send(Array(text.utf8), binary: false) }

    private func writeFrame(header: [UInt8], payload: UnsafeRawBufferPointer) {
        mask = mask &* 1_664_525 &+ 1_013_904_223
        let m = withUnsafeBytes(of: mask) { Array($0) }
        let start = outbound.count
        outbound.reserveCapacity(outbound.count + header.count + 4 + payload.count)
        outbound.append(contentsOf: header)
        outbound.append(contentsOf: m)
        outbound.append(contentsOf: payload)
        outbound.withUnsafeMutableBufferPointer { b in
            let base = start + header.count + 4
            for i in 0..<payload.count { b[base + i] ^= m[i & 3] }
        }
        flush()
    }

    private func sendControl(opcode: UInt8, _ payload: [UInt8]) {
        payload.withUnsafeBytes { p in writeFrame(header: [0x80 | opcode, 0x80 | UInt8(p.count)], payload: p) }
    }

    private func writeRaw(_ bytes: [UInt8]) {
        outbound.append(contentsOf: bytes)
        flush()
    }

    private func flush() {
        while outboundStart < outbound.count {
            let n = outbound.withUnsafeBytes { b in
                Glibc.write(fd, b.baseAddress! + outboundStart, b.count - outboundStart)
            }
            if n > 0 {
                outboundStart += n
                continue
            }
            let e = lt_errno()
            if n < 0 && e == EINTR { continue }
            if n < 0 && e == EAGAIN { break }
            fail("write: errno \(e)")
            return
        }
        if outboundStart == outbound.count {
            outbound.removeAll(keepingCapacity: true)
            outboundStart = 0
        } else if outboundStart > 65536 {
            outbound.removeSubrange(0..<outboundStart)
            outboundStart = 0
        }
        let want = outboundStart < outbound.count
        if want != writeInterest, let loop {
            writeInterest = want
            loop.setWriteInterest(self, want)
        }
    }

    /// Bytes queued in user space (the socket was full).
    var queuedBytes: Int { outbound.count - outboundStart }

    // MARK: Loop callbacks

    override func writable(_ loop: EventLoop) {
        if state == .connecting {
            let err = lt_socket_error(fd)
            if err != 0 { fail("connect: errno \(err)"); return }
            state = .handshaking
            writeInterest = false
            loop.setWriteInterest(self, false)
            var request = "GET \(path) HTTP/1.1\r\nHost: \(host):\(port)\r\nUpgrade: websocket\r\n"
            request += "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            request += "Sec-WebSocket-Version: 13\r\n"
            if let subprotocol { request += "Sec-WebSocket-Protocol: \(subprotocol)\r\n" }
            request += "\r\n"
            writeRaw(Array(request.utf8))
            return
        }
        flush()
    }

    override func readable(_ loop: EventLoop) {
        guard state == .handshaking || state == .open else {
            if state == .connecting {
                let err = lt_socket_error(fd)
                if err != 0 { fail("connect: errno \(err)") }
            }
            return
        }
        let buffer = loop.readBuffer
        // Several reads per wake-up while the socket has data, bounded so one connection cannot starve others.
        for _ in 0..<4 {
            let n = Glibc.read(fd, buffer.baseAddress, buffer.count)
            if n == 0 { fail("closed by peer"); return }
            if n < 0 {
                let e = lt_errno()
                if e == EAGAIN || e == EINTR { return }
                fail("read: errno \(e)")
                return
            }
            let chunk = UnsafeRawBufferPointer(start: buffer.baseAddress, count: n)
            if inbound.isEmpty {
                let used = consume(chunk)
                if state == .closed { return }
                if used < n { inbound.append(contentsOf: chunk[used...]) }
            } else {
                inbound.append(contentsOf: chunk)
                let used = inbound.withUnsafeBytes { consume($0) }
                if state == .closed { return }
                if used == inbound.count { inbound.removeAll(keepingCapacity: true) }
                else if used > 0 { inbound.removeSubrange(0..<used) }
            }
            if n < buffer.count { return }
        }
    }

    /// Parses as much of `bytes` as forms whole units (the HTTP answer, then frames); returns the bytes used.
    private func consume(_ bytes: UnsafeRawBufferPointer) -> Int {
        var pos = 0
        if state == .handshaking {
            guard let end = Self.find(bytes, [13, 10, 13, 10]) else { return 0 }
            let head = String(decoding: bytes[0..<end], as: UTF8.self)
            guard head.hasPrefix("HTTP/1.1 101") else {
                fail("handshake refused: \(head.split(separator: "\r\n").first ?? "")")
                return bytes.count
            }
            state = .open
            pos = end + 4
            handler.opened(self)
            if state == .closed { return bytes.count }
        }
        while state == .open {
            let avail = bytes.count - pos
            guard avail >= 2 else { break }
            let b0 = bytes[pos], b1 = bytes[pos + 1]
            var len = Int(b1 & 0x7f)
            var hdr = 2
            if len == 126 {
                guard avail >= 4 else { break }
                len = Int(bytes[pos + 2]) << 8 | Int(bytes[pos + 3])
                hdr = 4
            } else if len == 127 {
                guard avail >= 10 else { break }
                len = 0
                for i in 0..<8 { len = len << 8 | Int(bytes[pos + 2 + i]) }
                hdr = 10
            }
            if b1 & 0x80 != 0 { hdr += 4 }  // servers never mask; tolerate it by skipping the key (unused)
            guard avail >= hdr + len else { break }
            let payload = UnsafeRawBufferPointer(rebasing: bytes[(pos + hdr)..<(pos + hdr + len)])
            pos += hdr + len
            let opcode = b0 & 0x0f
            let fin = b0 & 0x80 != 0
            switch opcode {
            case 0x1, 0x2:
                if fin {
                    handler.received(self, payload, binary: opcode == 2)
                } else {
                    fragments.removeAll(keepingCapacity: true)
                    fragments.append(contentsOf: payload)
                    fragmentBinary = opcode == 2
                }
            case 0x0:
                fragments.append(contentsOf: payload)
                if fin { fragments.withUnsafeBytes { handler.received(self, $0, binary: fragmentBinary) } }
            case 0x8:
                fail("close frame \(payload.count >= 2 ? Int(payload[0]) << 8 | Int(payload[1]) : 0)")
                return bytes.count
            case 0x9:
                sendControl(opcode: 0xA, Array(payload))
            default:
                break
            }
        }
        return pos
    }

    private static func find(_ hay: UnsafeRawBufferPointer, _ needle: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] {
            var ok = true
            for j in 1..<needle.count where hay[i + j] != needle[j] { ok = false; break }
            if ok { return i }
        }
        return nil
    }

    func fail(_ reason: String) {
        guard state != .closed else { return }
        state = .closed
        loop?.remove(self)
        handler.closed(self, reason: reason)
    }

    /// Closes without telling the handler (the harness is done).
    func shutdown() {
        guard state != .closed else { return }
        state = .closed
        loop?.remove(self)
    }
}
