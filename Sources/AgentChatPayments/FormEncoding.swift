/// `application/x-www-form-urlencoded` bodies in Stripe's bracket syntax: `metadata[peek]=…`,
/// `payment_method_types[]=card`.
///
/// Each part of a key and each value is percent-encoded (everything but `A–Z a–z 0–9 - . _ ~`, UTF-8, so a space
/// is `%20` and `+`, `&`, `=`, `[`, `]` are escaped); the brackets that join the parts of a key are written as they
/// are, as Stripe's own libraries write them. Fields keep the order they were added in, so the same call always
/// produces the same body (Stripe compares the parameters of requests that share an idempotency key).
package struct FormBody: Equatable, Sendable {
    package private(set) var fields: [(key: [String], value: String)] = []

    package init() {}

    /// `name=value`.
    package mutating func add(_ name: String, _ value: String) { fields.append(([name], value)) }

    /// `name[sub]=value`; `name[]=value` for an empty `sub` (an array element).
    package mutating func add(_ name: String, _ sub: String, _ value: String) { fields.append(([name, sub], value)) }

    /// `name[key]=value` for every entry, in key order (bytewise), so a dictionary encodes the same way every time.
    package mutating func add(_ name: String, dictionary: [String: String]) {
        for key in dictionary.keys.sorted(by: { $0.utf8.lexicographicallyPrecedes($1.utf8) }) {
            add(name, key, dictionary[key]!)
        }
    }

    package var encoded: String {
        fields.map { field in
            var key = Self.percentEncode(field.key[0])
            for part in field.key.dropFirst() { key += "[" + Self.percentEncode(part) + "]" }
            return key + "=" + Self.percentEncode(field.value)
        }.joined(separator: "&")
    }

    package var bytes: [UInt8] { Array(encoded.utf8) }

    package static func percentEncode(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(text.utf8.count)
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"),
                UInt8(ascii: "~"):
                out.append(byte)
            default:
                out += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0x0F)]]
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    package static func == (lhs: FormBody, rhs: FormBody) -> Bool { lhs.encoded == rhs.encoded }
}
