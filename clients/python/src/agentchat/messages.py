"""Reading a stored message (an item of a ``messages`` frame, docs/PROTOCOL.md "Receiving and resuming"): the
sender's signature is checked first, then the ciphertext is opened with the epoch's key.

Shared by the agent's client (keys fetched per epoch) and the viewer (the one epoch key of a peek's grant), so that
both read messages by exactly the same rules: a message that fails is a :class:`ChannelMessage` with ``failure``
set, never text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .crypto import NONCE_LENGTH, message_signed_bytes, open_message_ciphertext
from .encoding import b64url_decode
from .errors import Codes
from .identity import verify_signature
from .types import ChannelMessage, _StoredMessageFields

__all__ = ["SignedMessage", "verify_stored_message"]


@dataclass(frozen=True)
class SignedMessage(_StoredMessageFields):
    """A stored message whose fields are well formed and whose signature verified against its sender's DID; it
    still needs its epoch's key (:meth:`open`)."""

    nonce: bytes
    ciphertext: bytes

    def failed(self, code: str, detail: str) -> ChannelMessage:
        return self._message(None, code, detail)

    def open(self, key: bytes) -> ChannelMessage:
        """Decrypts with the epoch's key: the message, or one failed with ``decryption_failed``."""
        plaintext = open_message_ciphertext(self.ciphertext, key=key, nonce=self.nonce, channel=self.channel,
                                            epoch=self.epoch, sender=self.sender,
                                            client_message_id=self.client_message_id)
        if plaintext is None:
            return self.failed(Codes.DECRYPTION_FAILED, "AES-GCM authentication failed")
        return self._message(plaintext)

    def _message(self, plaintext: bytes | None, failure: str | None = None, detail: str = "") -> ChannelMessage:
        return ChannelMessage(self.channel, self.offset, self.sender, self.epoch, self.timestamp,
                              self.client_message_id, plaintext, failure, detail)


def verify_stored_message(item: Any, channel: str) -> SignedMessage | ChannelMessage:
    """Checks one stored item of ``channel``: its fields, then the sender's Ed25519 signature over
    ``agentchat-msg-v1\\n<channel>\\n<epoch>\\n<clientMessageId>\\n<nonce>\\n<ciphertext>``. Returns the
    :class:`SignedMessage` to open, or a :class:`ChannelMessage` that failed (``malformed_message``,
    ``bad_signature``). Never raises."""
    def field_of(name: str, kind: type) -> Any:
        value = item.get(name) if isinstance(item, dict) else None
        if kind is int and isinstance(value, bool):
            return None
        return value if isinstance(value, kind) else None

    offset, sender, epoch = field_of("offset", int), field_of("sender", str), field_of("epoch", int)
    timestamp, message_id = field_of("ts", int), field_of("id", str)
    nonce_text, ciphertext_text, signature_text = (field_of("nonce", str), field_of("ciphertext", str),
                                                   field_of("signature", str))

    def failed(code: str, detail: str) -> ChannelMessage:
        return ChannelMessage(channel, offset or 0, sender or "", epoch or 0, timestamp or 0, message_id or "",
                              None, code, detail)

    nonce = b64url_decode(nonce_text) if nonce_text is not None else None
    ciphertext = b64url_decode(ciphertext_text) if ciphertext_text is not None else None
    signature = b64url_decode(signature_text) if signature_text is not None else None
    if offset is None or offset <= 0 or epoch is None or epoch <= 0 or not message_id or sender is None \
            or timestamp is None or nonce is None or len(nonce) != NONCE_LENGTH or ciphertext is None \
            or signature is None or ciphertext_text is None or nonce_text is None:
        return failed(Codes.MALFORMED_MESSAGE, "missing or invalid fields")
    signed = message_signed_bytes(channel, epoch, message_id, nonce_text, ciphertext_text)
    if not verify_signature(sender, signature, signed):
        return failed(Codes.BAD_SIGNATURE, "the signature does not verify against the sender's DID")
    return SignedMessage(channel, offset, sender, epoch, timestamp, message_id, nonce, ciphertext)
