"""Pure pieces without a broker: key-set verification, registration checks, grants, backoff, URLs, names."""

from __future__ import annotations

import os

import pytest

from agentchat import AgentChatClient, AgentChatError, AgentIdentity, ReconnectBackoff, RegistrationCheck
from agentchat.crypto import (check_registration, key_set_signed_bytes, registration_signed_bytes, seal_key,
                              unwrap_grant, verify_grant, wrap_grant)
from agentchat.encoding import b64url_encode

CHANNEL = "ch_FSIvPElWY3B9ipeksb7L2A"


def key_set(sender: AgentIdentity, recipients: list[AgentIdentity], key: bytes, epoch: int = 4) -> dict[str, object]:
    envelopes = {r.did: b64url_encode(seal_key(key, r.encryption_public_key)) for r in recipients}
    signature = sender.sign(key_set_signed_bytes(CHANNEL, epoch, envelopes))
    return {"type": "channel.keys", "ref": "c1", "channel": CHANNEL, "epoch": epoch, "sender": sender.did,
            "signature": b64url_encode(signature), "envelopes": envelopes, "unknownField": True}


def test_key_sets_are_verified_before_they_are_opened() -> None:
    alice, bob, mallory = AgentIdentity.generate(), AgentIdentity.generate(), AgentIdentity.generate()
    client = AgentChatClient(bob, "http://127.0.0.1:9")
    key = os.urandom(32)
    good = key_set(alice, [alice, bob], key)
    assert client._open_key_set(good, CHANNEL, 4, {alice.did, bob.did}) == key

    def refused(reply: dict[str, object], members: set[str] | None = None) -> str:
        with pytest.raises(AgentChatError) as e:
            client._open_key_set(reply, CHANNEL, 4, members)
        return e.value.code

    tampered = dict(good, envelopes={**good["envelopes"], alice.did: good["envelopes"][bob.did]})  # type: ignore
    assert refused(tampered) == "key_verification_failed"  # the signature no longer covers the envelopes
    assert refused(dict(good, sender=mallory.did)) == "key_verification_failed"  # not the signer
    outsider = key_set(mallory, [alice, bob], key)  # signed correctly, but the sender is not among the recipients
    assert refused(outsider) == "key_verification_failed"
    assert refused(good, members={bob.did}) == "key_verification_failed"  # the sender left
    assert refused(dict(good, epoch=5)) == "key_verification_failed"  # not the set asked for
    assert refused(key_set(alice, [alice], key)) == "not_found"  # no envelope for bob
    wrong = key_set(alice, [alice, bob], key)
    wrong_envelopes = dict(wrong["envelopes"])  # type: ignore[call-overload]
    wrong_envelopes[bob.did] = b64url_encode(seal_key(key, mallory.encryption_public_key))
    resigned = dict(wrong, envelopes=wrong_envelopes,
                    signature=b64url_encode(alice.sign(key_set_signed_bytes(CHANNEL, 4, wrong_envelopes))))
    assert refused(resigned) == "key_verification_failed"  # bob's envelope does not open


def test_key_set_text_is_sorted_bytewise() -> None:
    text = key_set_signed_bytes(CHANNEL, 7, {"did:b": "2", "did:B": "3", "did:a": "1"}).decode()
    assert text == f"agentchat-keys-v1\n{CHANNEL}\n7\ndid:B 3\ndid:a 1\ndid:b 2\n"


def test_registration_checks() -> None:
    agent = AgentIdentity.generate()
    key = b64url_encode(agent.encryption_public_key)
    signing = b64url_encode(agent.signing_public_key)
    signature = b64url_encode(agent.sign(registration_signed_bytes("bob", signing, key, 1704067200000)))
    assert check_registration(agent.did, "bob", key, 1704067200000, signature) is RegistrationCheck.VALID
    assert check_registration(agent.did, "bob", key, None, None) is RegistrationCheck.MISSING
    other = b64url_encode(AgentIdentity.generate().encryption_public_key)
    assert check_registration(agent.did, "bob", other, 1704067200000, signature) is RegistrationCheck.INVALID
    assert check_registration(agent.did, "eve", key, 1704067200000, signature) is RegistrationCheck.INVALID
    assert check_registration(agent.did, "bob", key, 1704067200001, signature) is RegistrationCheck.INVALID
    assert check_registration(agent.did, "bob", key, 1704067200000, "not base64!") is RegistrationCheck.INVALID


def test_a_grant_opens_only_for_its_viewer_and_peek() -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    member = AgentIdentity.generate()
    viewer = X25519PrivateKey.generate()
    raw = (serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    viewer_public = viewer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = os.urandom(32)
    grant = wrap_grant(member, channel=CHANNEL, peek="pk_1", epoch=4, viewer_key=viewer_public, channel_key=key)
    assert len(grant["ciphertext"]) == 64  # type: ignore[arg-type]  # 48 bytes in base64url
    assert verify_grant(grant, channel=CHANNEL, peek="pk_1", viewer_key=viewer_public)
    assert not verify_grant(grant, channel=CHANNEL, peek="pk_2", viewer_key=viewer_public)
    assert unwrap_grant(grant, channel=CHANNEL, peek="pk_1", viewer_secret=viewer.private_bytes(*raw)) == key
    assert unwrap_grant(grant, channel=CHANNEL, peek="pk_2", viewer_secret=viewer.private_bytes(*raw)) is None
    other = X25519PrivateKey.generate()
    assert unwrap_grant(grant, channel=CHANNEL, peek="pk_1", viewer_secret=other.private_bytes(*raw)) is None


def test_backoff_ceilings_and_jitter() -> None:
    backoff = ReconnectBackoff(initial_delay=0.2, max_delay=1.0, multiplier=2)
    assert [backoff.ceiling(n) for n in range(1, 6)] == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert all(0 <= backoff.delay(3) <= 0.8 for _ in range(100))


def test_urls_and_names_are_checked_before_anything_is_sent() -> None:
    identity = AgentIdentity.generate()
    for url, code in (("ftp://x", "unsupported_scheme"), ("gopher://example.com", "unsupported_scheme"),
                      ("http://", "invalid_argument")):
        with pytest.raises(AgentChatError) as e:
            AgentChatClient(identity, url)
        assert e.value.code == code, url
    client = AgentChatClient(identity, "http://[::1]:8080/prefix/")
    assert client._url.websocket == "ws://[::1]:8080/prefix/"
    assert client._url.http("/api/v1/agents/register") == "http://[::1]:8080/prefix/api/v1/agents/register"
    tls = AgentChatClient(identity, "https://broker.example")
    assert tls._url.websocket == "wss://broker.example:443/"
    assert tls._url.http("/health") == "https://broker.example:443/health"
    assert AgentChatClient(identity, "wss://[::1]:8443")._url.websocket == "wss://[::1]:8443/"
    for name in ("", "   ", "a\nb", "x" * 65, "bell\x07"):
        with pytest.raises(AgentChatError) as e:
            client.registration_body(name)
        assert e.value.code == "invalid_argument", repr(name)
    body = client.registration_body("ünïcode 🌱", timestamp=1704067200000)
    assert set(body) == {"name", "signingKey", "encryptionKey", "timestamp", "signature"}
