"""Agents for the viewer page's peek tests, in Python: what a member's SDK does, written from docs/PROTOCOL.md.

Crypto (PyPI `cryptography` and `PyNaCl`): an identity is an Ed25519 signing key and an X25519 encryption key; its
DID is did:agentchat:z<base58btc(0xED 0x01 ‖ key)>. Channel keys are sealed to members with libsodium's
crypto_box_seal (PyNaCl's SealedBox), messages are AES-256-GCM and Ed25519-signed, and a peek's grant wraps the
channel key for the viewer's X25519 key (X25519, HKDF-SHA256, AES-256-GCM) and is signed.

`Agent` (PyPI `websockets`, its threaded client) is such a member connected to a real broker: it registers, logs in
with the challenge, creates and lists channels, publishes keys, sends messages, and answers peeks by a policy —
refuse when one is pending, grant when one awaits a grant, or nothing — and, like the SDK, moves the channel to a
new epoch when a peek it granted ends.
"""

import base64
import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
import uuid

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl.public import PrivateKey, PublicKey, SealedBox

SUBPROTOCOL = "agentchat.v1"
B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
RAW = serialization.Encoding.Raw, serialization.PublicFormat.Raw


def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def unb64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def base58(raw):
    n = int.from_bytes(raw, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = B58[r] + out
    return "1" * (len(raw) - len(raw.lstrip(b"\0"))) + out


def did_of(signing_public):
    return "did:agentchat:z" + base58(b"\xed\x01" + signing_public)


class Identity:
    def __init__(self, name):
        self.name = name
        self.signing = Ed25519PrivateKey.generate()
        self.signing_public = self.signing.public_key().public_bytes(*RAW)
        self.encryption = PrivateKey.generate()
        self.did = did_of(self.signing_public)

    def sign(self, data):
        return self.signing.sign(data.encode() if isinstance(data, str) else data)

    def registration(self):
        ts = int(time.time() * 1000)
        sk, ek = b64url(self.signing_public), b64url(bytes(self.encryption.public_key))
        signed = "\n".join(["agentchat-register-v1", self.name, sk, ek, str(ts)])
        return {"name": self.name, "signingKey": sk, "encryptionKey": ek, "timestamp": ts,
                "signature": b64url(self.sign(signed))}


def seal_message(identity, channel, epoch, key, text, message_id=None, tamper=False):
    """A `message.send`'s fields (without type and id): AES-256-GCM under the epoch key, signed by the sender.
    `tamper` spoils the signature (the message must then never be shown as text)."""
    mid = message_id or "m-" + uuid.uuid4().hex[:12]
    nonce = os.urandom(12)
    aad = f"agentchat-msg-v1\n{channel}\n{epoch}\n{identity.did}\n{mid}".encode()
    ciphertext = b64url(AESGCM(key).encrypt(nonce, text.encode(), aad))
    signed = f"agentchat-msg-v1\n{channel}\n{epoch}\n{mid}\n{b64url(nonce)}\n{ciphertext}"
    signature = bytearray(identity.sign(signed))
    if tamper:
        signature[5] ^= 0x40
    return {"channel": channel, "epoch": epoch, "clientMessageId": mid, "nonce": b64url(nonce),
            "ciphertext": ciphertext, "signature": b64url(bytes(signature))}


def stored_message(identity, sent):
    """The message as a `messages` frame carries it (less offset and ts, which the broker adds)."""
    return {"sender": identity.did, "id": sent["clientMessageId"], "epoch": sent["epoch"], "nonce": sent["nonce"],
            "ciphertext": sent["ciphertext"], "signature": sent["signature"]}


def wrap_grant(identity, channel, peek, viewer_key, epoch, key, tamper=False):
    """A grant (docs/PROTOCOL.md, "The grant: a channel key wrapped for the viewer")."""
    viewer_raw = unb64url(viewer_key)
    e = X25519PrivateKey.generate()
    e_public = e.public_key().public_bytes(*RAW)
    shared = e.exchange(X25519PublicKey.from_public_bytes(viewer_raw))
    wrap_key = HKDF(algorithm=hashes.SHA256(), length=32, salt=e_public + viewer_raw,
                    info=b"agentchat peek v1").derive(shared)
    aad = f"agentchat-peek-grant-v1\n{channel}\n{peek}\n{epoch}".encode()
    nonce = os.urandom(12)
    ciphertext = AESGCM(wrap_key).encrypt(nonce, key, aad)
    signed = aad + f"\n{viewer_key}\n{b64url(e_public)}\n{b64url(nonce)}\n{b64url(ciphertext)}".encode()
    signature = bytearray(identity.sign(signed))
    if tamper:
        signature[0] ^= 1
    return {"epoch": epoch, "sender": identity.did, "ephemeralKey": b64url(e_public), "nonce": b64url(nonce),
            "ciphertext": b64url(ciphertext), "signature": b64url(bytes(signature))}


class BrokerError(Exception):
    def __init__(self, frame):
        super().__init__(f"{frame.get('code')}: {frame.get('message')}")
        self.frame = frame


class Agent:
    """A member connected to a real broker. `policy` answers peeks: "grant", "refuse" or None."""

    def __init__(self, base_url, name, policy=None):
        from websockets.sync.client import connect  # only the real-broker tests need the package
        self.base = base_url.rstrip("/")
        self.identity = Identity(name)
        self.did = self.identity.did
        self.policy = policy
        self.keys = {}          # (channel, epoch) -> 32-byte key
        self.seen = []          # every peek.update received
        self.log = []           # what the agent did about peeks
        self.errors = []
        self.replies = {}
        self.lock = threading.Lock()
        self.events = queue.Queue()
        self.seq = 0
        self._register()
        self.ws = connect("ws" + self.base[4:] + "/", subprotocols=[SUBPROTOCOL], open_timeout=10,
                          max_size=2 ** 20)
        hello = json.loads(self.ws.recv(10))
        assert hello["type"] == "hello", hello
        signed = f"agentchat-auth-v1\n{hello['broker']}\n{hello['challenge']}"
        self.ws.send(json.dumps({"type": "auth", "id": "a1", "did": self.did,
                                 "signature": b64url(self.identity.sign(signed))}))
        welcome = json.loads(self.ws.recv(10))
        assert welcome["type"] == "welcome", welcome
        self.closed = False
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.worker = threading.Thread(target=self._work, daemon=True)
        self.worker.start()

    def _register(self):
        body = json.dumps(self.identity.registration()).encode()
        req = urllib.request.Request(self.base + "/api/v1/agents/register", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 201, r.status

    # -- frames
    def _read(self):
        while not self.closed:
            try:
                frame = json.loads(self.ws.recv())
            except Exception:
                break
            ref = frame.get("ref")
            if ref is not None:
                with self.lock:
                    box = self.replies.get(ref)
                if box:
                    box.put(frame)
                    continue
            if frame.get("type") == "peek.update":
                self.events.put(frame["peek"])
        self.events.put(None)

    def request(self, frame, timeout=15):
        with self.lock:
            self.seq += 1
            rid = f"q{self.seq}"
            box = self.replies[rid] = queue.Queue()
        self.ws.send(json.dumps({**frame, "id": rid}))
        try:
            answer = box.get(timeout=timeout)
        finally:
            with self.lock:
                del self.replies[rid]
        if answer.get("type") == "error":
            raise BrokerError(answer)
        return answer

    def close(self):
        self.closed = True
        try:
            self.ws.close()
        except Exception:
            pass

    # -- channels
    def create_channel(self, name, members=()):
        return self.request({"type": "channel.create", "name": name, "members": list(members)})["channel"]

    def describe(self, channel):
        return self.request({"type": "channel.describe", "channel": channel})["channel"]

    def list_channel(self, channel, title, topic=""):
        self.request({"type": "channel.listing", "channel": channel, "listed": True, "title": title,
                      "topic": topic})

    def publish_keys(self, channel):
        """Makes the current epoch's key and seals it to every member (as the SDK does for a new epoch)."""
        d = self.describe(channel)
        epoch, key = d["epoch"], os.urandom(32)
        envelopes = {m["did"]: b64url(SealedBox(PublicKey(unb64url(m["encryptionKey"]))).encrypt(key))
                     for m in d["members"]}
        signed = f"agentchat-keys-v1\n{channel}\n{epoch}\n" + "".join(f"{did} {envelopes[did]}\n"
                                                                     for did in sorted(envelopes))
        self.request({"type": "channel.keys", "channel": channel, "epoch": epoch, "envelopes": envelopes,
                      "signature": b64url(self.identity.sign(signed))})
        self.keys[(channel, epoch)] = key
        return epoch

    def rotate(self, channel):
        self.request({"type": "channel.rotate", "channel": channel})
        return self.publish_keys(channel)

    def epoch_key(self, channel, epoch):
        if (channel, epoch) not in self.keys:
            got = self.request({"type": "channel.keys.get", "channel": channel, "epoch": epoch})
            sealed = unb64url(got["envelopes"][self.did])
            self.keys[(channel, epoch)] = SealedBox(self.identity.encryption).decrypt(sealed)
        return self.keys[(channel, epoch)]

    def send(self, channel, text, tamper=False):
        epoch = self.describe(channel)["keyedEpoch"]
        sent = seal_message(self.identity, channel, epoch, self.epoch_key(channel, epoch), text, tamper=tamper)
        ack = self.request({"type": "message.send", **sent})
        return ack["offset"], epoch

    # -- peeks
    def _work(self):
        while True:
            peek = self.events.get()
            if peek is None:
                return
            self.seen.append(peek)
            try:
                self._answer(peek)
            except Exception as e:  # noqa: BLE001 - recorded for the test to report
                self.errors.append(f"{peek.get('phase')}: {type(e).__name__}: {e}")

    def _answer(self, peek):
        channel, pid, phase = peek["channel"], peek["id"], peek["phase"]
        if phase == "pending" and self.policy == "refuse":
            self.request({"type": "peek.refuse", "channel": channel, "peek": pid})
            self.log.append(("refused", pid))
        elif phase == "awaiting_grant" and self.policy == "grant":
            epoch = self.describe(channel)["keyedEpoch"]
            grant = wrap_grant(self.identity, channel, pid, peek["viewerKey"], epoch, self.epoch_key(channel, epoch))
            self.request({"type": "peek.grant", "channel": channel, "peek": pid, "grant": grant})
            self.log.append(("granted", pid, epoch))
        elif phase == "ended" and self.policy == "grant":
            # The viewer's key must open nothing sent from now on: a new epoch, keyed afresh.
            epoch = self.rotate(channel)
            self.log.append(("rotated", pid, epoch))

    def wait_for(self, what, timeout=20):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for entry in self.log:
                if entry[0] == what:
                    return entry
            if self.errors:
                raise AssertionError(f"{self.identity.name}: {self.errors}")
            time.sleep(0.05)
        raise AssertionError(f"{self.identity.name} did not get to {what} in {timeout} s (saw "
                             f"{[p.get('phase') for p in self.seen]}, errors {self.errors})")
