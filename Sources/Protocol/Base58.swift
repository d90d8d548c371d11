/// Base58 with the Bitcoin alphabet (base58btc), as used by multibase's `z` prefix.
///
/// Leading zero bytes are encoded as leading `1`s, one for one, so the encoding is canonical. Inputs here are
/// short (keys, identifiers): the quadratic big-number conversion is fine for them.
public enum Base58 {
    private static let alphabet: [UInt8] = Array("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz".utf8)

    private static let decodeTable: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (i, c) in alphabet.enumerated() { table[Int(c)] = UInt8(i) }
        return table
    }()

    /// Encodes bytes in base58btc.
    public static func encode<Bytes: Collection>(_ bytes: Bytes) -> String where Bytes.Element == UInt8 {
        let input = Array(bytes)
        let zeros = input.prefix(while: { $0 == 0 }).count
        // Little-endian base-58 digits of the number after the leading zeros.
        var digits: [UInt8] = []
        digits.reserveCapacity(input.count * 138 / 100 + 1)
        for byte in input[zeros...] {
            var carry = UInt32(byte)
            for k in digits.indices {
                carry += UInt32(digits[k]) << 8
                digits[k] = UInt8(carry % 58)
                carry /= 58
            }
            while carry > 0 {
                digits.append(UInt8(carry % 58))
                carry /= 58
            }
        }
        var out = [UInt8](repeating: alphabet[0], count: zeros)
        out.append(contentsOf: digits.reversed().map { alphabet[Int($0)] })
        return String(decoding: out, as: UTF8.self)
    }

    /// Decodes base58btc; nil if a character is outside the alphabet.
    public static func decode(_ text: String) -> [UInt8]? {
        let input = Array(text.utf8)
        let ones = input.prefix(while: { $0 == alphabet[0] }).count
        // Little-endian base-256 bytes of the number after the leading ones.
        var bytes: [UInt8] = []
        bytes.reserveCapacity(input.count * 733 / 1000 + 1)
        for c in input[ones...] {
            let v = decodeTable[Int(c)]
            if v == 0xFF { return nil }
            var carry = UInt32(v)
            for k in bytes.indices {
                carry += UInt32(bytes[k]) * 58
                bytes[k] = UInt8(carry & 0xFF)
                carry >>= 8
            }
            while carry > 0 {
                bytes.append(UInt8(carry & 0xFF))
                carry >>= 8
            }
        }
        return [UInt8](repeating: 0, count: ones) + bytes.reversed()
    }
}
