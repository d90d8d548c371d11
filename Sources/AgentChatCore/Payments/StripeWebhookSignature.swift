import AgentChatCrypto

/// Stripe's webhook signature scheme, exactly: the `Stripe-Signature` header carries a timestamp `t` and one or more
/// `v1` signatures (and possibly `v0` or other schemes, ignored); each `v1` is the lower-case hex HMAC-SHA256 of
/// `"<t>.<raw body>"` keyed with the whole endpoint secret (`whsec_…`, used as its bytes, not decoded). The event is
/// genuine when any `v1` matches under any configured secret (two during a rotation), compared in constant time,
/// and `t` is within the tolerance of now, in both directions.
package struct StripeWebhookSignature: Sendable {
    package enum Failure: String, Error, Equatable, Sendable {
        /// No `Stripe-Signature` header, or no `t`, or no `v1`.
        case malformed = "signature_malformed"
        /// `t` is further than the tolerance from now (either way).
        case outsideTolerance = "signature_timestamp_outside_tolerance"
        /// No `v1` matches under any secret.
        case mismatch = "signature_mismatch"
    }

    /// Stripe's own libraries use 300 s.
    package static let defaultTolerance: Int64 = 300

    private let secrets: [[UInt8]]
    private let tolerance: Int64

    package init(secrets: [String], tolerance: Int64 = defaultTolerance) {
        self.secrets = secrets.filter { !$0.isEmpty }.map { Array($0.utf8) }
        self.tolerance = tolerance
    }

    /// Checks `header` against `body` at `now` (Unix seconds).
    package func verify(header: String?, body: [UInt8], now: Int64) throws(Failure) {
        guard let header, !secrets.isEmpty else { throw .malformed }
        var timestamp: Int64?
        var signatures: [[UInt8]] = []
        for item in header.split(separator: ",") {
            let parts = item.split(separator: "=", maxSplits: 1)
            guard parts.count == 2 else { continue }
            let key = parts[0].trimmingSpaces, value = parts[1].trimmingSpaces
            switch key {
            case "t":
                guard timestamp == nil, !value.isEmpty, value.utf8.count <= 18,
                    value.utf8.allSatisfy({ $0 >= 48 && $0 <= 57 })
                else { throw .malformed }
                timestamp = Int64(value)
            case "v1":
                if let bytes = Self.hexBytes(value), bytes.count == HMACSHA256.macLength { signatures.append(bytes) }
            default:
                continue
            }
        }
        guard let timestamp, !signatures.isEmpty else { throw .malformed }
        guard abs(now - timestamp) <= tolerance else { throw .outsideTolerance }
        let payload = Array("\(timestamp).".utf8) + body
        for secret in secrets {
            let expected = HMACSHA256.authenticate(payload, key: secret)
            // Every comparison runs, so the time taken does not depend on which one matched.
            var matched = false
            for signature in signatures where constantTimeEquals(signature, expected) { matched = true }
            if matched { return }
        }
        throw .mismatch
    }

    /// The header Stripe would send for `body` at `timestamp` under `secret` (the sandbox gateway signs with it).
    package static func header(for body: [UInt8], timestamp: Int64, secret: String) -> String {
        let mac = HMACSHA256.authenticate(Array("\(timestamp).".utf8) + body, key: Array(secret.utf8))
        return "t=\(timestamp),v1=\(hex(mac))"
    }

    package static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Lower- or upper-case hex; nil if anything else.
    static func hexBytes(_ text: Substring) -> [UInt8]? {
        let chars = Array(text.utf8)
        guard chars.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: c - 48
            case 97...102: c - 87
            case 65...70: c - 55
            default: nil
            }
        }
        var out: [UInt8] = []
        out.reserveCapacity(chars.count / 2)
        var index = 0
        while index < chars.count {
            guard let high = nibble(chars[index]), let low = nibble(chars[index + 1]) else { return nil }
            out.append(high << 4 | low)
            index += 2
        }
        return out
    }
}

extension Substring {
    fileprivate var trimmingSpaces: Substring {
        var s = self
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return s
    }
}
