"""Every signed or encrypted construction of docs/PROTOCOL.md, as pure functions.

Ed25519, X25519 and sealed boxes come from libsodium (PyNaCl); AES-256-GCM, HKDF-SHA256 and the grant's X25519
from ``cryptography``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from dataclasses import dataclass

import nacl.exceptions
import nacl.public
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .encoding import b64url_decode, b64url_encode
from .identity import AgentIdentity, signing_key_from_did, verify_signature

__all__ = [
    "KEY_LENGTH", "NONCE_LENGTH", "TAG_LENGTH", "SEALED_KEY_LENGTH", "MAX_CIPHERTEXT_BYTES",
    "MAX_CLIENT_MESSAGE_ID_BYTES", "registration_signed_bytes", "auth_signed_bytes", "key_set_signed_bytes",
    "message_associated_data", "message_signed_bytes", "RegistrationCheck", "check_registration",
    "seal_key", "open_sealed_key", "SealedMessage", "seal_message", "open_message_ciphertext",
    "grant_associated_data", "grant_signed_bytes", "wrap_grant", "verify_grant", "unwrap_grant",
    "is_valid_name", "is_valid_client_message_id",
]

KEY_LENGTH = 32
NONCE_LENGTH = 12
TAG_LENGTH = 16
#: A channel key sealed with crypto_box_seal: 32 bytes plus 48 of overhead.
SEALED_KEY_LENGTH = 80
MAX_CIPHERTEXT_BYTES = 32 * 1024
MAX_CLIENT_MESSAGE_ID_BYTES = 64
MAX_NAME_LENGTH = 64
_RAW = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _has_control(text: str) -> bool:
    return any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in text)


def is_valid_name(name: str) -> bool:
    """The broker's rule for agent names: 1–64 Unicode scalars, no control characters, not only whitespace."""
    return isinstance(name, str) and 0 < len(name) <= MAX_NAME_LENGTH and not name.isspace() \
        and not _has_control(name)


def is_valid_client_message_id(value: str) -> bool:
    """1–64 bytes of UTF-8 without control characters."""
    return isinstance(value, str) and 0 < len(value.encode("utf-8")) <= MAX_CLIENT_MESSAGE_ID_BYTES \
        and not _has_control(value)


# -- signed texts


def registration_signed_bytes(name: str, signing_key: str, encryption_key: str, timestamp: int) -> bytes:
    """``agentchat-register-v1``, name, the two keys in base64url, the timestamp: joined with ``\\n``."""
    return "\n".join(["agentchat-register-v1", name, signing_key, encryption_key, str(timestamp)]).encode("utf-8")


def auth_signed_bytes(broker: str, challenge: str) -> bytes:
    return f"agentchat-auth-v1\n{broker}\n{challenge}".encode("utf-8")


def key_set_signed_bytes(channel: str, epoch: int, envelopes: Mapping[str, str]) -> bytes:
    """``agentchat-keys-v1\\n<channel>\\n<epoch>\\n`` then ``<did> <envelope>\\n`` per envelope, sorted by DID."""
    text = f"agentchat-keys-v1\n{channel}\n{epoch}\n"
    for did in sorted(envelopes, key=lambda d: d.encode("utf-8")):
        text += f"{did} {envelopes[did]}\n"
    return text.encode("utf-8")


def message_associated_data(channel: str, epoch: int, sender: str, client_message_id: str) -> bytes:
    return f"agentchat-msg-v1\n{channel}\n{epoch}\n{sender}\n{client_message_id}".encode("utf-8")


def message_signed_bytes(channel: str, epoch: int, client_message_id: str, nonce: str, ciphertext: str) -> bytes:
    return f"agentchat-msg-v1\n{channel}\n{epoch}\n{client_message_id}\n{nonce}\n{ciphertext}".encode("utf-8")


# -- trusting an encryption key


class RegistrationCheck(enum.Enum):
    """Whether a profile's name and encryption key are the ones its agent signed at registration."""

    VALID = "valid"
    MISSING = "missing"
    """No registration signature (a profile stored before profiles kept one)."""
    INVALID = "invalid"
    """The signature does not verify (or is malformed): the key is not the one the agent registered."""


def check_registration(did: str, name: str, encryption_key: str, timestamp: int | None,
                       signature: str | None) -> RegistrationCheck:
    """Ed25519 verification of the registration signature over the five lines rebuilt from a member entry, with the
    key read out of the DID ("Trusting an encryption key")."""
    if timestamp is None or signature is None:
        return RegistrationCheck.MISSING
    signing_key = signing_key_from_did(did)
    raw_signature = b64url_decode(signature)
    raw_encryption = b64url_decode(encryption_key)
    if signing_key is None or raw_signature is None or raw_encryption is None or len(raw_encryption) != 32:
        return RegistrationCheck.INVALID
    signed = registration_signed_bytes(name, b64url_encode(signing_key), b64url_encode(raw_encryption), timestamp)
    return RegistrationCheck.VALID if verify_signature(signing_key, raw_signature, signed) \
        else RegistrationCheck.INVALID


# -- channel keys


def seal_key(key: bytes, recipient_public_key: bytes) -> bytes:
    """``crypto_box_seal`` of a channel key to a member's X25519 key (80 bytes)."""
    return nacl.public.SealedBox(nacl.public.PublicKey(recipient_public_key)).encrypt(key)


def open_sealed_key(sealed: bytes, identity: AgentIdentity) -> bytes | None:
    """Opens an envelope sealed to ``identity``; None if it does not open or is not a 32-byte key."""
    try:
        key = nacl.public.SealedBox(identity.encryption_private_key).decrypt(sealed)
    except (nacl.exceptions.CryptoError, ValueError, TypeError):
        return None
    return key if len(key) == KEY_LENGTH else None


# -- messages


@dataclass(frozen=True)
class SealedMessage:
    """The fields of a ``message.send`` (without ``type`` and ``id``)."""

    channel: str
    epoch: int
    client_message_id: str
    nonce: str
    ciphertext: str
    signature: str


def seal_message(identity: AgentIdentity, plaintext: bytes, *, channel: str, epoch: int, key: bytes,
                 client_message_id: str) -> SealedMessage:
    """AES-256-GCM under the epoch key with a random nonce and the documented associated data, then signed."""
    nonce = os.urandom(NONCE_LENGTH)
    aad = message_associated_data(channel, epoch, identity.did, client_message_id)
    ciphertext = b64url_encode(AESGCM(key).encrypt(nonce, plaintext, aad))
    nonce_text = b64url_encode(nonce)
    signature = identity.sign(message_signed_bytes(channel, epoch, client_message_id, nonce_text, ciphertext))
    return SealedMessage(channel, epoch, client_message_id, nonce_text, ciphertext, b64url_encode(signature))


def open_message_ciphertext(ciphertext: bytes, *, key: bytes, nonce: bytes, channel: str, epoch: int, sender: str,
                            client_message_id: str) -> bytes | None:
    """Decrypts and authenticates; None when the tag does not verify."""
    try:
        return AESGCM(key).decrypt(nonce, ciphertext,
                                   message_associated_data(channel, epoch, sender, client_message_id))
    except (InvalidTag, ValueError):
        return None


# -- paid peeks: the grant


def grant_associated_data(channel: str, peek: str, epoch: int) -> bytes:
    return f"agentchat-peek-grant-v1\n{channel}\n{peek}\n{epoch}".encode("utf-8")


def grant_signed_bytes(channel: str, peek: str, epoch: int, viewer_key: str, ephemeral_key: str, nonce: str,
                       ciphertext: str) -> bytes:
    return grant_associated_data(channel, peek, epoch) + \
        f"\n{viewer_key}\n{ephemeral_key}\n{nonce}\n{ciphertext}".encode("utf-8")


def _wrap_key(shared: bytes, ephemeral_public: bytes, viewer_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + viewer_key,
                info=b"agentchat peek v1").derive(shared)


def wrap_grant(identity: AgentIdentity, *, channel: str, peek: str, epoch: int, viewer_key: bytes,
               channel_key: bytes) -> dict[str, object]:
    """A peek grant: the channel key wrapped for the viewer's X25519 key (X25519, HKDF-SHA256, AES-256-GCM) and
    signed by this member ("The grant" in docs/PROTOCOL.md). Returns the ``grant`` object of ``peek.grant``."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes(*_RAW)
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(viewer_key))
    nonce = os.urandom(NONCE_LENGTH)
    ciphertext = AESGCM(_wrap_key(shared, ephemeral_public, viewer_key)).encrypt(
        nonce, channel_key, grant_associated_data(channel, peek, epoch))
    texts = [b64url_encode(viewer_key), b64url_encode(ephemeral_public), b64url_encode(nonce),
             b64url_encode(ciphertext)]
    signature = identity.sign(grant_signed_bytes(channel, peek, epoch, *texts))
    return {"epoch": epoch, "sender": identity.did, "ephemeralKey": texts[1], "nonce": texts[2],
            "ciphertext": texts[3], "signature": b64url_encode(signature)}


def verify_grant(grant: Mapping[str, object], *, channel: str, peek: str, viewer_key: bytes) -> bool:
    """Whether the grant is signed by its ``sender`` for this channel, peek and viewer key."""
    try:
        epoch, sender = grant["epoch"], grant["sender"]
        ephemeral, nonce, ciphertext = str(grant["ephemeralKey"]), str(grant["nonce"]), str(grant["ciphertext"])
        signature = b64url_decode(str(grant["signature"]))
    except KeyError:
        return False
    if not isinstance(epoch, int) or not isinstance(sender, str) or signature is None:
        return False
    signed = grant_signed_bytes(channel, peek, epoch, b64url_encode(viewer_key), ephemeral, nonce, ciphertext)
    return verify_signature(sender, signature, signed)


def unwrap_grant(grant: Mapping[str, object], *, channel: str, peek: str, viewer_secret: bytes) -> bytes | None:
    """The viewer's side: the channel key from a grant (after :func:`verify_grant`); None if it does not open."""
    viewer = X25519PrivateKey.from_private_bytes(viewer_secret)
    viewer_public = viewer.public_key().public_bytes(*_RAW)
    ephemeral = b64url_decode(str(grant.get("ephemeralKey", "")))
    nonce = b64url_decode(str(grant.get("nonce", "")))
    ciphertext = b64url_decode(str(grant.get("ciphertext", "")))
    epoch = grant.get("epoch")
    if ephemeral is None or nonce is None or ciphertext is None or not isinstance(epoch, int) or len(ephemeral) != 32:
        return None
    shared = viewer.exchange(X25519PublicKey.from_public_bytes(ephemeral))
    try:
        return AESGCM(_wrap_key(shared, ephemeral, viewer_public)).decrypt(
            nonce, ciphertext, grant_associated_data(channel, peek, epoch))
    except (InvalidTag, ValueError):
        return None
