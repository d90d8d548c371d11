/// Base64url (RFC 4648 §5) without padding, with a strict decoder.
///
/// Strict means every byte string has exactly one accepted encoding: only `A–Z a–z 0–9 - _`, no `=`, no
/// whitespace, no length of the form 4n+1, and the unused low bits of the last character must be zero.
public enum Base64URL {
    private static let alphabet: [UInt8] = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".utf8)

    /// 0xFF marks a byte outside the alphabet.
    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    /// Encodes bytes as unpadded base64url.
    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let input = Array(bytes)
        var out: [UInt8] = []
        out.reserveCapacity((input.count * 4 + 2) / 3)
        var i = 0
        while i + 3 <= input.count {
            let n = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8 | UInt32(input[i + 2])
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
            out.append(alphabet[Int(n >> 6 & 63)])
            out.append(alphabet[Int(n & 63)])
            i += 3
        }
        switch input.count - i {
        case 1:
            let n = UInt32(input[i]) << 16
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
        case 2:
            let n = UInt32(input[i]) << 16 | UInt32(input[i + 1]) << 8
            out.append(alphabet[Int(n >> 18 & 63)])
            out.append(alphabet[Int(n >> 12 & 63)])
            out.append(alphabet[Int(n >> 6 & 63)])
        default: break
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes unpadded base64url; nil on any character outside the alphabet, padding, whitespace, an impossible
    /// length, or non-zero trailing bits.
    public static func decode(_ text: String) -> [UInt8]? { decode(utf8: Array(text.utf8)) }

    /// Decodes unpadded base64url given as UTF-8 bytes, with the same rules as ``decode(_:)``.
    public static func decode<Bytes: Collection>(utf8 text: Bytes) -> [UInt8]? where Bytes.Element == UInt8 {
        let input = Array(text)
        let remainder = input.count % 4
        if remainder == 1 { return nil }
        var out: [UInt8] = []
        out.reserveCapacity(input.count * 3 / 4)
        var i = 0
        while i + 4 <= input.count {
            var n: UInt32 = 0
            for j in 0..<4 {
                let v = decodeTable[Int(input[i + j])]
                if v == 0xFF { return nil }
                n = n << 6 | UInt32(v)
            }
            out.append(UInt8(n >> 16 & 0xFF))
            out.append(UInt8(n >> 8 & 0xFF))
            out.append(UInt8(n & 0xFF))
            i += 4
        }
        if remainder > 0 {
            var n: UInt32 = 0
            for j in 0..<remainder {
                let v = decodeTable[Int(input[i + j])]
                if v == 0xFF { return nil }
                n = n << 6 | UInt32(v)
            }
            if remainder == 2 {
                // 12 bits carry 8: the low 4 must be zero.
                if n & 0x0F != 0 { return nil }
                out.append(UInt8(n >> 4 & 0xFF))
            } else {
                // 18 bits carry 16: the low 2 must be zero.
                if n & 0x03 != 0 { return nil }
                out.append(UInt8(n >> 10 & 0xFF))
                out.append(UInt8(n >> 2 & 0xFF))
            }
        }
        return out
    }
}
