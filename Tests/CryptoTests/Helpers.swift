import AgentChatCrypto
import AgentChatProtocol

func hex(_ s: String) -> [UInt8] {
    var out: [UInt8] = []
    var it = s.makeIterator()
    while let h = it.next(), let l = it.next() { out.append(UInt8(String([h, l]), radix: 16)!) }
    return out
}

func b64(_ s: String) -> [UInt8] { Base64URL.decode(s)! }
func b64(_ bytes: [UInt8]) -> String { Base64URL.encode(bytes) }
func b64text(_ s: String) -> String { Base64URL.encode(Array(s.utf8)) }
