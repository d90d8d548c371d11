"""Encodings of the wire: strict base64url without padding (RFC 4648 §5) and base58btc (bitcoin alphabet)."""

from __future__ import annotations

import base64
import re

__all__ = ["b64url_encode", "b64url_decode", "base58_encode", "base58_decode"]

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58_ALPHABET)}


def b64url_encode(data: bytes) -> str:
    """Base64url without padding."""
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def b64url_decode(text: object) -> bytes | None:
    """Decodes base64url without padding; None for anything but a string, for padding, ``+``, ``/``, whitespace,
    a bad length or non-canonical trailing bits (the broker refuses all of these, so there is one encoding per value)."""
    if not isinstance(text, str) or _B64URL.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if b64url_encode(raw) != text:
        return None
    return raw


def base58_encode(data: bytes) -> str:
    """Base58btc, bitcoin alphabet, leading zero bytes as ``1``."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58_ALPHABET[r] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def base58_decode(text: str) -> bytes | None:
    """Decodes base58btc; None for a character outside the alphabet."""
    n = 0
    for c in text:
        index = _B58_INDEX.get(c)
        if index is None:
            return None
        n = n * 58 + index
    body = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + body
