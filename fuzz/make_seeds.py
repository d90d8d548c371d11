#!/usr/bin/env python3
"""Writes the committed seed corpus under corpus/<target>/: the frames of docs/PROTOCOL.md with real values, a
real session token signed by the fuzz-jws key (seed 0x07 x 32), DIDs, channel ids and registration bodies.

Deterministic (fixed keys and bytes), so rerunning it changes nothing. Needs python3-cryptography.
"""
import base64, hashlib, json, os
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

HERE = os.path.dirname(os.path.abspath(__file__))
ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b58(data: bytes) -> str:
    zeros = len(data) - len(data.lstrip(b"\0"))
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = ALPHABET[r] + out
    return "1" * zeros + out


def key(seed_byte: int):
    sk = Ed25519PrivateKey.from_private_bytes(bytes([seed_byte]) * 32)
    return sk, sk.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def did(pk: bytes) -> str:
    return "did:agentchat:z" + b58(b"\xed\x01" + pk)


def compact(value) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode()


def write(target: str, name: str, data: bytes):
    os.makedirs(os.path.join(HERE, "corpus", target), exist_ok=True)
    with open(os.path.join(HERE, "corpus", target, name), "wb") as f:
        f.write(data)


broker_sk, broker_pk = key(7)
agent_sk, agent_pk = key(9)
other_sk, other_pk = key(11)
kid = b64(hashlib.blake2b(broker_pk, digest_size=32).digest()[:12])
agent, other = did(agent_pk), did(other_pk)
channel = "ch_" + b64(bytes(range(16)))
channel2 = "ch_" + b64(bytes(range(100, 116)))
NOW = 1_800_000_000
header = '{"alg":"EdDSA","typ":"JWT","kid":"%s"}' % kid
claims = {"iss": "agentchat-broker", "aud": "agentchat", "sub": agent, "iat": NOW - 10, "nbf": NOW - 10,
          "exp": NOW + 3600, "jti": b64(bytes(range(16)))}


def token(header_text: str, claims_value) -> str:
    signing_input = b64(header_text.encode()) + "." + b64(compact(claims_value))
    return signing_input + "." + b64(broker_sk.sign(signing_input.encode()))


tok = token(header, claims)
sig64 = b64(agent_sk.sign(b"challenge"))
frames = {
    "ping": {"type": "ping", "id": "r1"},
    "ping-no-id": {"type": "ping"},
    "auth-signature": {"type": "auth", "id": "a1", "did": agent, "signature": sig64},
    "auth-token": {"type": "auth", "id": "a1", "token": tok},
    "channel-create": {"type": "channel.create", "id": "c1", "name": "Market makers", "open": False,
                       "members": [agent, other]},
    "channel-invite": {"type": "channel.invite", "id": "i1", "channel": channel, "did": other},
    "channel-join": {"type": "channel.join", "id": "j1", "channel": channel},
    "channel-leave": {"type": "channel.leave", "id": "j2", "channel": channel},
    "channel-remove": {"type": "channel.remove", "id": "j3", "channel": channel, "did": other},
    "channel-list": {"type": "channel.list", "id": "l0"},
    "channel-describe": {"type": "channel.describe", "id": "d0", "channel": channel},
    "channel-keys": {"type": "channel.keys", "id": "k1", "channel": channel, "epoch": 4, "signature": sig64,
                     "envelopes": {agent: b64(bytes(80)), other: b64(bytes(range(80)))}},
    "channel-keys-get": {"type": "channel.keys.get", "id": "k2", "channel": channel, "epoch": 4},
    "message-send": {"type": "message.send", "id": "s1", "channel": channel, "epoch": 4, "clientMessageId": "m-1",
                     "nonce": b64(bytes(12)), "ciphertext": b64(bytes(range(48))), "signature": sig64},
    "channel-subscribe": {"type": "channel.subscribe", "id": "r1", "channel": channel, "since": 56,
                          "historyEpoch": "e1"},
    "channel-unsubscribe": {"type": "channel.unsubscribe", "id": "r2", "channel": channel},
    "history": {"type": "history", "id": "h1", "channel": channel, "before": 100, "limit": 50},
    "channel-listing": {"type": "channel.listing", "id": "l1", "channel": channel, "listed": True,
                        "title": "Market makers", "topic": "prices, hourly"},
    "directory-list": {"type": "directory.list", "id": "d1", "limit": 20, "cursor": 0},
    "indicators-subscribe": {"type": "indicators.subscribe", "id": "s1", "channels": [channel, channel2]},
    "indicators-directory": {"type": "indicators.subscribe", "id": "s1", "directory": True},
    "indicators-unsubscribe": {"type": "indicators.unsubscribe", "id": "s2"},
    "unknown-type": {"type": "teleport", "id": "r2"},
}
for name, frame in frames.items():
    write("fuzz-frame", name + ".json", json.dumps(frame, separators=(",", ":"), ensure_ascii=False).encode())

json_seeds = {
    "object": b'{"a":[1,2.5,-3e-7,true,false,null],"b":{"c":"d\\u00e9\\ud83d\\ude00\\n"}}',
    "nested": b"[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]",
    "numbers": b"[0,-0,1e308,-1.5E+3,123456789012345678901234567890,0.1,5e-324]",
    "string-escapes": b'"\\"\\\\\\/\\b\\f\\n\\r\\t\\u0000\\u001f"',
    "unicode": '{"caf\u00e9":"\u65e5\u672c\u8a9e","k":"\u212a"}'.encode(),
    "whitespace": b' \t\r\n{ "a" : [ 1 , 2 ] } \n',
}
for name, data in json_seeds.items():
    write("fuzz-json", name + ".json", data)
for name in ("ping", "channel-keys", "message-send", "channel-listing"):
    write("fuzz-json", "frame-" + name + ".json",
          json.dumps(frames[name], separators=(",", ":"), ensure_ascii=False).encode())

# fuzz-jws: first byte 0 = token text, 1 = payload signed under our header, 2 = header \n payload, signed.
write("fuzz-jws", "token", b"\x00" + tok.encode())
write("fuzz-jws", "token-two-audiences", b"\x00" + token(header, dict(claims, aud=["x", "agentchat"])).encode())
write("fuzz-jws", "token-expired", b"\x00" + token(header, dict(claims, exp=NOW - 1)).encode())
write("fuzz-jws", "token-alg-none", b"\x00" + (b64(b'{"alg":"none"}') + "." + b64(compact(claims)) + ".").encode())
write("fuzz-jws", "payload", b"\x01" + compact(claims))
write("fuzz-jws", "header-payload", b"\x02" + header.encode() + b"\n" + compact(claims))
write("fuzz-jws", "header-no-typ", b"\x02" + ('{"alg":"EdDSA","kid":"%s"}' % kid).encode() + b"\n" + compact(claims))
write("fuzz-jws", "header-jwk", b"\x02" + ('{"alg":"EdDSA","kid":"%s","jwk":{}}' % kid).encode() + b"\n" + compact(claims))

# fuzz-encoding: first byte % 6 = 0 b64 encode, 1 b64 decode, 2 b58 encode, 3 b58 decode, 4 DID, 5 channel id.
write("fuzz-encoding", "b64-encode", b"\x00" + bytes(range(40)))
write("fuzz-encoding", "b64-decode", b"\x01" + b64(bytes(range(200, 256))).encode())
write("fuzz-encoding", "b64-decode-2", b"\x01" + b"-_-_AA")
write("fuzz-encoding", "b58-encode", b"\x02" + b"\0\0" + bytes(range(30)))
write("fuzz-encoding", "b58-decode", b"\x03" + b"11" + b58(bytes(range(1, 40))).encode())
write("fuzz-encoding", "did", b"\x04" + agent.encode())
write("fuzz-encoding", "did-key", b"\x04" + other_pk)
write("fuzz-encoding", "channel", b"\x05" + channel.encode())

# fuzz-http-request-head: the first byte picks the input. Even: a request head (HTTPRequestHeadValidator, what
# HTTPHeadGate checks before libwebsockets parses anything); odd: the registration body (docs/PROTOCOL.md).
heads = {
    "head-health": b"GET /health HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    "head-upgrade": (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Protocol: agentchat.v1\r\n\r\n"),
    "head-register": (b"POST /api/v1/agents/register HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 321\r\n\r\n{"),
    "head-h2c": b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n",
    "head-preface": b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    "head-folded": b"GET /health HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "head-absolute": b"GET http://a/health HTTP/1.1\r\nHost: a\r\n\r\n",
}
for name, head in heads.items():
    write("fuzz-http-request-head", name, b"\x00" + head)
reg_enc = b64(bytes(range(32, 64)))
ts = 1_704_067_200_000
signed = "agentchat-register-v1\n%s\n%s\n%s\n%d" % ("Market maker", b64(agent_pk), reg_enc, ts)
write("fuzz-http-request-head", "register.json", b"\x01" + compact({
    "name": "Market maker", "signingKey": b64(agent_pk), "encryptionKey": reg_enc, "timestamp": ts,
    "signature": b64(agent_sk.sign(signed.encode()))}))
write("fuzz-http-request-head", "register-unicode-name.json", b"\x01" + compact({
    "name": "\u65e5\u672c\u8a9e agent", "signingKey": b64(other_pk), "encryptionKey": reg_enc, "timestamp": ts,
    "signature": sig64}))
