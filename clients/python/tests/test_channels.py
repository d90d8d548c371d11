"""Channels, keys, messages, subscriptions and history through the SDK against a real broker."""

from __future__ import annotations

import asyncio

import pytest

from agentchat import (AgentChatError, ChannelResume, MembershipEvent, MessageVerificationError,
                       SubscriptionEnded)
from support import agent


async def test_register_login_create_send_receive(broker) -> None:
    alice = await agent(broker.url, "alice")
    bob = await agent(broker.url, "bob")
    try:
        assert alice.profile is not None and alice.profile.did == alice.did
        assert alice.session_token is not None and "redacted" not in repr(alice.session_token)
        assert alice.session_token.token not in repr(alice.session_token)
        channel = await alice.create_channel("ops", members=[bob.did])
        assert channel.owner == alice.did and set(channel.member_dids) == {alice.did, bob.did}
        assert alice.statistics.keys_published == 1
        sub = await bob.subscribe(channel.id)
        first = await anext(sub)
        assert isinstance(first, ChannelResume) and first.recovered
        receipt = await alice.send(channel.id, "hello bob 🌱")
        assert receipt.offset == 1 and not receipt.duplicate
        message = await sub.next_message(timeout=10)
        assert (message.offset, message.sender, message.text, message.verified) == (1, alice.did, "hello bob 🌱",
                                                                                    True)
        assert bob.statistics.keys_fetched == 1  # bob fetched alice's key set, verified it and opened his envelope
        await bob.send(channel.id, b"\x00binary\xff")
        again = await sub.next_message(timeout=10)
        assert again.plaintext == b"\x00binary\xff" and again.sender == bob.did
        await sub.close()
    finally:
        await alice.close()
        await bob.close()


async def test_membership_invite_join_leave_remove_rotate_list(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    carol = await agent(broker.url)
    try:
        channel = await alice.create_channel("membership")
        with pytest.raises(AgentChatError) as refused:
            await bob.join(channel.id)  # private, not invited: as if it did not exist
        assert refused.value.code == "not_found"
        await alice.invite(channel.id, bob.did)
        joined = await bob.join(channel.id)
        assert set(joined.member_dids) == {alice.did, bob.did}
        await bob.send(channel.id, "bob keyed the new epoch")
        assert [m.text for m in await alice.history(channel.id)] == ["bob keyed the new epoch"]
        await alice.invite(channel.id, carol.did)
        await carol.join(channel.id)
        with pytest.raises(AgentChatError) as forbidden:
            await bob.remove(channel.id, carol.did)
        assert forbidden.value.code == "forbidden"
        await alice.remove(channel.id, carol.did)
        after = await alice.describe(channel.id)
        assert carol.did not in after.member_dids and after.keyed_epoch == after.epoch
        with pytest.raises(AgentChatError) as gone:
            await carol.describe(channel.id)
        assert gone.value.code == "not_found"
        before = after.epoch
        await bob.rotate(channel.id)
        rotated = await bob.describe(channel.id)
        assert rotated.epoch == before + 1 and rotated.keyed_epoch == rotated.epoch
        await alice.send(channel.id, "after the rotation")
        texts = [m.text for m in await bob.history(channel.id)]
        assert texts == ["bob keyed the new epoch", "after the rotation"]
        assert channel.id in [c.id for c in await bob.list_channels()]
        await bob.leave(channel.id)
        assert channel.id not in [c.id for c in await bob.list_channels()]
    finally:
        for c in (alice, bob, carol):
            await c.close()


async def test_list_channels_reads_every_page(broker) -> None:
    alice = await agent(broker.url)
    try:
        made = {(await alice.create_channel(f"page-{i}")).id for i in range(5)}
        # The broker pages at 100; a page also stops early by size. Every page is read: all five are there.
        listed = {c.id for c in await alice.list_channels()}
        assert made <= listed
    finally:
        await alice.close()


async def test_history_pages_before_and_after(broker) -> None:
    alice = await agent(broker.url)
    try:
        channel = await alice.create_channel("history")
        for i in range(1, 13):
            await alice.send(channel.id, f"m{i}")
        newest = await alice.history(channel.id, limit=5)
        assert [m.offset for m in newest] == [8, 9, 10, 11, 12]
        older = await alice.history(channel.id, limit=5, before=8)
        assert [m.text for m in older] == ["m3", "m4", "m5", "m6", "m7"]
        forward = await alice.history(channel.id, limit=4, after=2)
        assert [m.offset for m in forward] == [3, 4, 5, 6]
        everything = await alice.history(channel.id, limit=500, after=0)
        assert [m.text for m in everything] == [f"m{i}" for i in range(1, 13)]
        with pytest.raises(AgentChatError) as both:
            await alice.history(channel.id, before=5, after=2)
        assert both.value.code == "invalid_argument"
    finally:
        await alice.close()


async def test_history_follows_next_when_a_reply_is_cut_by_size(binaries) -> None:
    from conftest import Broker
    small = Broker(binaries, ["--max-queue-bytes", "70000"])  # a history reply holds at most ~35 KB
    alice = await agent(small.url)
    try:
        channel = await alice.create_channel("big")
        for i in range(6):
            await alice.send(channel.id, f"{i}:" + "x" * 12000)
        got = await alice.history(channel.id, limit=6, after=0)
        assert [m.offset for m in got] == [1, 2, 3, 4, 5, 6] and all(m.verified for m in got)
    finally:
        await alice.close()
        small.cleanup()


async def test_duplicate_client_message_id_is_stored_once(broker) -> None:
    alice = await agent(broker.url)
    try:
        channel = await alice.create_channel("dedup")
        first = await alice.send(channel.id, "once", client_message_id="m-0001")
        second = await alice.send(channel.id, "once", client_message_id="m-0001")
        assert (first.offset, first.duplicate) == (1, False)
        assert (second.offset, second.duplicate) == (1, True)
        assert len(await alice.history(channel.id)) == 1
        with pytest.raises(AgentChatError) as bad:
            await alice.send(channel.id, "x", client_message_id="tab\tinside")
        assert bad.value.code == "invalid_argument"
    finally:
        await alice.close()


async def test_subscription_sees_membership_events_and_ends_when_removed(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("events", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        await alice.remove(channel.id, bob.did)
        events = []
        async with asyncio.timeout(10):
            async for event in sub:
                events.append(event)
        assert isinstance(events[0], ChannelResume)
        assert any(isinstance(e, MembershipEvent) and e.event == "member_removed" and e.did == bob.did
                   for e in events)
        assert isinstance(events[-1], SubscriptionEnded) and events[-1].error.code == "not_member"
    finally:
        await alice.close()
        await bob.close()


async def test_tampered_messages_raise_and_never_show_text(broker) -> None:
    """A message whose ciphertext was altered (signature no longer matches) and one with a valid signature but an
    altered ciphertext-and-signature pair that does not decrypt: both surface as errors."""
    from agentchat import frames
    from agentchat.crypto import message_signed_bytes, seal_message
    from agentchat.encoding import b64url_decode, b64url_encode

    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("tamper", members=[bob.did])
        epoch, key = await alice._sending_key(channel.id, refresh=False)
        sub = await bob.subscribe(channel.id)
        await anext(sub)
        # 1. The ciphertext changed after signing: the signature does not verify.
        sealed = seal_message(alice.identity, b"transfer 10", channel=channel.id, epoch=epoch, key=key,
                              client_message_id="t-1")
        raw = bytearray(b64url_decode(sealed.ciphertext) or b"")
        raw[0] ^= 0x01
        tampered = frames.message_send(sealed)
        tampered["ciphertext"] = b64url_encode(bytes(raw))
        await alice.request(tampered)
        # 2. Re-signed by the sender over a ciphertext that does not open (wrong associated data).
        forged = seal_message(alice.identity, b"transfer 99", channel=channel.id, epoch=epoch, key=key,
                              client_message_id="t-2")
        forged_frame = frames.message_send(forged)
        forged_frame["clientMessageId"] = "t-3"
        forged_frame["signature"] = b64url_encode(alice.identity.sign(message_signed_bytes(
            channel.id, epoch, "t-3", forged.nonce, forged.ciphertext)))
        await alice.request(forged_frame)
        await alice.send(channel.id, "a good one")
        received = [await sub.next_message(timeout=10) for _ in range(3)]
        assert [m.offset for m in received] == [1, 2, 3]
        assert (received[0].verified, received[0].failure) == (False, "bad_signature")
        assert (received[1].verified, received[1].failure) == (False, "decryption_failed")
        for bad in received[:2]:
            with pytest.raises(MessageVerificationError) as raised:
                _ = bad.text
            assert raised.value.code == bad.failure and raised.value.offset == bad.offset
            with pytest.raises(MessageVerificationError):
                _ = bad.plaintext
            assert bad.to_json()["plaintext"] is None
        assert received[2].text == "a good one"
        stored = await bob.history(channel.id)
        assert [m.verified for m in stored] == [False, False, True]
    finally:
        await alice.close()
        await bob.close()


async def test_messages_from_an_epoch_whose_key_is_unavailable_are_errors(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("late joiner")
        await alice.send(channel.id, "before bob")
        await alice.invite(channel.id, bob.did)
        await bob.join(channel.id)
        await alice.send(channel.id, "after bob")
        got = await bob.history(channel.id)
        assert got[0].failure == "key_unavailable" and not got[0].verified
        assert got[1].text == "after bob"
    finally:
        await alice.close()
        await bob.close()


async def test_errors_carry_the_broker_code(broker) -> None:
    alice = await agent(broker.url)
    try:
        with pytest.raises(AgentChatError) as unknown:
            await alice.create_channel("x", members=["did:agentchat:z6MkfQKmgCxxwJHTN1V42YuNM6S1KqNE8tScquqaVU6qnyyi"])
        assert unknown.value.code == "unknown_agent" and unknown.value.category.value == "server"
        with pytest.raises(AgentChatError) as missing:
            await alice.describe("ch_AAAAAAAAAAAAAAAAAAAAAA")
        assert missing.value.code == "not_found"
        with pytest.raises(AgentChatError) as again:
            await alice.register()
        assert again.value.code == "already_registered" and again.value.existing_did == alice.did
        assert again.value.http_status == 409
    finally:
        await alice.close()


async def test_stale_epoch_rekeys_and_keys_exist_fetches(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("epochs")
        await alice.send(channel.id, "epoch 1")
        await alice.invite(channel.id, bob.did)
        await bob.join(channel.id)  # epoch 2, keyed by bob; alice is not subscribed and still holds epoch 1
        receipt = await alice.send(channel.id, "epoch 2")
        assert receipt.epoch == channel.epoch + 1
        assert alice.statistics.stale_epoch_retries == 1 and alice.statistics.keys_fetched == 1
        # keys_exist: alice, with a stale view (the epoch unkeyed), tries to publish; the broker refuses; she
        # fetches the set that exists instead.
        await bob.rotate(channel.id)
        real_describe = alice.describe

        async def stale_describe(channel_id: str):  # type: ignore[no-untyped-def]
            d = await real_describe(channel_id)
            from dataclasses import replace
            return replace(d, keyed_epoch=d.epoch - 1)

        alice.describe = stale_describe  # type: ignore[method-assign]
        published = alice.statistics.keys_published
        rotated = await alice.send(channel.id, "epoch 3")
        assert rotated.epoch == receipt.epoch + 1 and alice.statistics.keys_published == published
        history = await bob.history(channel.id)
        assert [m.failure for m in history] == ["key_unavailable", None, None]  # bob joined after epoch 1
        assert [m.text for m in history[1:]] == ["epoch 2", "epoch 3"]
    finally:
        await alice.close()
        await bob.close()


async def test_an_envelope_that_does_not_open_starts_a_new_epoch(broker) -> None:
    """A key set whose envelope for bob is sealed to another key (the broker checks only sizes and coverage):
    bob cannot use the epoch, so his SDK rotates and keys the next one, as the Swift SDK does."""
    from agentchat import AgentIdentity, frames
    from agentchat.crypto import key_set_signed_bytes, seal_key
    from agentchat.encoding import b64url_decode, b64url_encode

    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("bad envelope", members=[bob.did])
        await alice.rotate(channel.id, keying=False)
        d = await alice.describe(channel.id)
        key, mallory = b"k" * 32, AgentIdentity.generate()
        envelopes = {m.did: b64url_encode(seal_key(key, (b64url_decode(m.encryption_key) or b"")
                                                   if m.did != bob.did else mallory.encryption_public_key))
                     for m in d.members}
        await alice.request(frames.channel_keys(d.id, d.epoch, envelopes, b64url_encode(
            alice.identity.sign(key_set_signed_bytes(d.id, d.epoch, envelopes)))))
        sent = await bob.send(channel.id, "in a fresh epoch")
        assert sent.epoch == d.epoch + 1
        assert [m.text for m in await alice.history(channel.id)] == ["in a fresh epoch"]
    finally:
        await alice.close()
        await bob.close()
