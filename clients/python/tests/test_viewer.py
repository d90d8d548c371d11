"""The viewer side (agentchat.Viewer) against a real broker: directory pages, indicator snapshots and coalesced
updates that carry no content, a channel unlisted while watched, frames a viewer may not send, sandbox peeks granted
(grant opened, messages decrypted and verified) and refused (the fee), reconnection; and without a broker, what the
viewer does with a grant or a message that does not verify."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import pytest

from agentchat import (AgentChatClient, AgentChatError, AgentIdentity, ChannelIndicators, ChannelMessage,
                       ConnectionState, IndicatorUpdate, PeekPolicy, PeekView, Viewer, frames)
from agentchat.crypto import grant_signed_bytes, seal_message, wrap_grant
from agentchat.encoding import b64url_encode
from support import agent, drop, eventually, viewer, wait_for

PEEK_PHASES_FINAL = ("refused", "ended", "cancelled", "failed")


async def listed_channel(owner: AgentChatClient, title: str, members: list[str] | None = None,
                         topic: str = "") -> str:
    channel = await owner.create_channel(title, members=members or [])
    await owner.set_listing(channel.id, True, title, topic)
    return channel.id


def indicator_frames(v: Viewer) -> list[dict[str, Any]]:
    return [f for f in (json.loads(raw) for raw in v.received_frames) if f["type"] in ("indicators", "directory")]


# ---------------------------------------------------------------- the directory


async def test_directory_pages_hold_the_listed_channels_most_recently_active_first(own_broker) -> None:
    alice = await agent(own_broker.url, "alice")
    v = await viewer(own_broker.url)
    try:
        listed = [await listed_channel(alice, f"Channel {i}", topic=f"topic {i}") for i in range(5)]
        hidden = (await alice.create_channel("not listed")).id
        first = await v.directory(limit=2)
        assert len(first.channels) == 2 and first.next == 2, first
        assert all(isinstance(c, ChannelIndicators) and c.listed for c in first.channels)
        last = await v.directory(limit=2, cursor=4)
        assert len(last.channels) == 1 and last.next is None, last
        pages = [page async for page in v.directory_pages(limit=2)]
        assert [len(p.channels) for p in pages] == [2, 2, 1] and [p.next for p in pages] == [2, 4, None]
        seen = [c.id for p in pages for c in p.channels]
        assert sorted(seen) == sorted(listed) and hidden not in seen
        by_id = {c.id: c for p in pages for c in p.channels}
        assert (by_id[listed[3]].title, by_id[listed[3]].topic, by_id[listed[3]].members) == ("Channel 3", "topic 3", 1)
        assert by_id[listed[3]].messages == 0 and by_id[listed[3]].last_activity == 0
        # Activity moves a channel to the top of the directory.
        await alice.send(listed[0], "up")
        top = await eventually(lambda: v.directory(limit=1), lambda p: p.channels[0].id == listed[0],
                               "the active channel first")
        assert top.channels[0].messages == 1 and top.next == 1
        with pytest.raises(AgentChatError) as bad:
            await v.directory(limit=0)
        assert bad.value.code == "invalid_argument"
    finally:
        await v.close()
        await alice.close()


# ---------------------------------------------------------------- indicators


async def test_snapshot_then_coalesced_updates_without_any_content(broker) -> None:
    alice = await agent(broker.url, "alice")
    bob = await agent(broker.url, "bob")
    v = await viewer(broker.url)
    secret = f"the secret plan {os.urandom(6).hex()}"
    count = 40
    try:
        channel = await listed_channel(alice, "Coalesced", [bob.did], "a busy channel")
        subscription = await v.subscribe_indicators([channel])
        assert [c.id for c in subscription.snapshot] == [channel]
        snapshot = subscription.snapshot[0]
        assert (snapshot.listed, snapshot.title, snapshot.topic, snapshot.members) == (True, "Coalesced",
                                                                                     "a busy channel", 2)
        assert (snapshot.messages, snapshot.messages_last_minute, snapshot.peeks, snapshot.peeks_active) == (0, 0, 0, 0)
        started = time.monotonic()
        for i in range(count):
            await (alice if i % 2 else bob).send(channel, f"{secret} #{i}")
        updates: list[IndicatorUpdate] = []
        async with asyncio.timeout(15):
            async for update in subscription:
                updates.append(update)
                if subscription.latest[channel].messages == count:
                    break
        elapsed = time.monotonic() - started
        counts = [u.channels[0].messages for u in updates]
        assert counts == sorted(counts) and counts[-1] == count, counts  # the count only goes up
        # Coalesced: at most --indicator-rate (4) frames a second, not one per message.
        assert len(updates) < count and len(updates) <= 4 * elapsed + 2, (len(updates), elapsed)
        latest = subscription.latest[channel]
        assert latest.messages_last_minute == count and latest.online == 2
        assert latest.last_activity > 0 and latest.last_activity % 10_000 == 0
        # Nothing of the content, the senders or the ciphertexts reaches the viewer.
        received = "\n".join(v.received_frames)
        assert secret not in received and "secret plan" not in received
        for did in (alice.did, bob.did):
            assert did not in received
        for frame in indicator_frames(v):
            for item in frame["channels"]:
                assert set(item) <= {"id", "title", "topic", "listed", "members", "online", "messages",
                                     "messagesLastMinute", "lastActivity", "peeks", "peeksActive"}, item
        await subscription.close()
        assert subscription.ended and v.indicator_subscription is None
        assert [u async for u in subscription] == []
    finally:
        await v.close()
        await alice.close()
        await bob.close()


async def test_a_channel_unlisted_while_watched_comes_once_with_listed_false(broker) -> None:
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    try:
        first = await listed_channel(alice, "First")
        second = await listed_channel(alice, "Second")
        subscription = await v.subscribe_indicators([first, second])
        assert {c.id for c in subscription.snapshot} == {first, second}

        await alice.set_listing(first, False)
        update = await subscription.next_update(timeout=10)
        assert [(c.id, c.listed) for c in update.channels] == [(first, False)]
        assert update.channels[0] == ChannelIndicators(first, False)  # only the id: nothing else is public now
        assert not subscription.ended
        # Once only: later activity of the unlisted channel is not reported.
        await alice.send(first, "after unlisting")
        await alice.send(second, "still listed")
        news = await subscription.next_update(timeout=10)
        assert [c.id for c in news.channels] == [second] and news.channels[0].messages == 1
        with pytest.raises(AgentChatError) as refused:
            await v.subscribe_indicators([first])  # replaces the subscription: the old one ends
        assert refused.value.code == "not_found"
        assert subscription.ended and v.indicator_subscription is None

        # A subscription whose channels are all unlisted ends after saying so.
        only = await v.subscribe_indicators([second])
        await alice.set_listing(second, False)
        updates = [u async for u in only]
        assert [(c.id, c.listed) for u in updates for c in u.channels] == [(second, False)]
        assert only.ended
    finally:
        await v.close()
        await alice.close()


async def test_the_directory_subscription_sees_channels_listed_and_unlisted(broker) -> None:
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    try:
        before = await listed_channel(alice, "Before")
        directory = await v.subscribe_directory()
        assert directory.directory and before in {c.id for c in directory.snapshot}
        later = await listed_channel(alice, "Listed later")

        async def until(predicate: Any) -> ChannelIndicators:
            async with asyncio.timeout(10):
                async for update in directory:
                    for indicators in update.channels:
                        if predicate(indicators):
                            return indicators
            raise AssertionError("the directory subscription ended")

        listed = await until(lambda c: c.id == later)
        assert listed.listed and listed.title == "Listed later"
        await alice.set_listing(before, False)
        assert await until(lambda c: c.id == before) == ChannelIndicators(before, False)
        assert directory.latest[before].listed is False and not directory.ended
    finally:
        await v.close()
        await alice.close()


async def test_listed_false_reaches_a_channel_viewer_while_a_directory_viewer_watches(broker) -> None:
    """Once a broker bug: while a directory viewer was connected to the same broker process, a viewer subscribed to
    the channel itself was never sent listed:false."""
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    directory_viewer = await viewer(broker.url)
    try:
        channel = await listed_channel(alice, "Watched twice")
        subscription = await v.subscribe_indicators([channel])
        await directory_viewer.subscribe_directory()
        await alice.set_listing(channel, False)
        update = await subscription.next_update(timeout=3)
        assert [(c.id, c.listed) for c in update.channels] == [(channel, False)]
    finally:
        await v.close()
        await directory_viewer.close()
        await alice.close()


async def test_a_viewer_may_not_send_agent_frames(broker) -> None:
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    try:
        channel = await listed_channel(alice, "Agents only")
        subscription = await v.subscribe_indicators([channel])
        for frame in (frames.channel_list(), frames.history(channel), frames.peek_refuse(channel, "pk_" + "A" * 22)):
            with pytest.raises(AgentChatError) as refused:
                await v.request(frame)
            assert refused.value.code == "not_authenticated", frame
        assert (await v.ping()).broker_time > 0
        assert v.state is ConnectionState.CONNECTED
        # The fourth and fifth: the broker closes with 4001; the viewer does not reconnect, and its streams end with
        # the error.
        with pytest.raises(AgentChatError) as fourth:
            await v.request(frames.channel_describe(channel))
        assert fourth.value.code == "not_authenticated"
        with pytest.raises(AgentChatError):
            await v.request(frames.unread_list())
        await wait_for(lambda: v.state is ConnectionState.FAILED, "the viewer given up after 4001")
        assert v.failure is not None and v.failure.close_code == 4001
        with pytest.raises(AgentChatError) as ended:
            await subscription.next_update(timeout=5)
        assert ended.value.close_code == 4001
        # Channel ids are checked before anything is sent (a frame the broker cannot decode counts towards 4001).
        with pytest.raises(AgentChatError) as bad:
            await Viewer(broker.url).subscribe_indicators(["ch_short"])
        assert bad.value.code == "invalid_argument"
    finally:
        await v.close()
        await alice.close()


async def test_frames_over_the_viewer_budget_are_refused_with_their_id_as_ref(broker) -> None:
    """The broker answers a frame over the budget with a rate_limited error whose ref is the frame's id (as every
    error); the viewer fails that request with rate_limited at once. (Its own pacing keeps it under the default
    budget; here pacing is off.)"""
    v = await viewer(broker.url, frames_per_second=10_000, request_timeout=30)
    try:
        await v.directory(limit=1)  # a viewer now: 10 frames a second, bursts of 20
        started = time.monotonic()
        results = await asyncio.gather(*(v.ping() for _ in range(30)), return_exceptions=True)
        assert time.monotonic() - started < 10, "refused at once, not after the request timeout"
        refused = [r for r in results if isinstance(r, AgentChatError)]
        assert refused and all(r.code == "rate_limited" for r in refused), results
        assert len(refused) < 30
        sent = {f["id"] for f in v.sent_frames if f["type"] == "ping"}
        errors = [json.loads(raw) for raw in v.received_frames if '"rate_limited"' in raw]
        assert len(errors) == len(refused) and all(e.get("ref") in sent for e in errors), errors
        assert len({e["ref"] for e in errors}) == len(errors)
    finally:
        await v.close()


async def test_malformed_viewer_frames_count_towards_the_close_before_login(broker) -> None:
    """Before login the broker counts every frame it cannot decode, viewer frames included, towards the 4001 close
    (5 refused frames, never reset by frames served in between); a refusal of a well-formed frame does not count."""
    v = await viewer(broker.url, auto_reconnect=False)
    unknown = "ch_" + "A" * 22
    try:
        for n in range(1, 6):
            with pytest.raises(AgentChatError) as refused:
                await v.request({"type": "indicators.subscribe", "channels": ["ch_short"]})
            assert refused.value.code == "invalid_field"
            if n < 5:
                assert (await v.ping()).broker_time > 0
                with pytest.raises(AgentChatError) as not_listed:
                    await v.subscribe_indicators([unknown])
                assert not_listed.value.code == "not_found"
                assert v.state is ConnectionState.CONNECTED, n
        await wait_for(lambda: v.state is not ConnectionState.CONNECTED, "the broker closed the viewer")
        assert v.failure is not None and v.failure.close_code == 4001
    finally:
        await v.close()


# ---------------------------------------------------------------- paid peeks


async def test_sandbox_peek_granted_then_read_by_the_viewer(broker) -> None:
    alice = await agent(broker.url, "alice")
    bob = await agent(broker.url, "bob")
    v = await viewer(broker.url)
    other = await viewer(broker.url)
    texts = ["Prices at 09:00: 101.2 / 101.4", "Prices at 10:00: 101.6 / 101.7", "no change"]
    try:
        channel = await listed_channel(alice, "Peeked", [bob.did])
        sent = [await (alice if i % 2 == 0 else bob).send(channel, text) for i, text in enumerate(texts)]
        peek = await v.request_peek(channel)
        asked = peek.view
        assert (asked.phase, asked.sandbox, asked.price_cents, asked.refusal_fee_cents) == ("awaiting_payment", True,
                                                                                            500, 100)
        assert asked.token and asked.client_secret and asked.token == peek.token and asked.grant is None
        assert asked.viewer_key == peek.viewer_key and len(peek.viewer_key) == 32
        assert asked.token not in repr(asked) and asked.client_secret not in repr(asked)
        confirmed = await peek.confirm()
        assert confirmed.phase in ("pending", "awaiting_grant", "capturing", "active"), confirmed
        active = await peek.wait_for("active", timeout=30)
        assert active.phase == "active" and active.captured_cents == 500 and active.grant is not None
        assert active.grant.sender in (alice.did, bob.did)
        assert peek.grant_error is None and peek.grant_epoch == sent[-1].epoch

        # The last messages come with the grant, verified against their senders and decrypted.
        got = [await peek.next_message(timeout=10) for _ in texts]
        assert [m.offset for m in got] == [s.offset for s in sent]
        assert all(m.verified for m in got) and [m.text for m in got] == texts
        assert [m.sender for m in got] == [alice.did, bob.did, alice.did]
        # ... and live ones while the peek is active.
        live = await alice.send(channel, "live while peeked")
        message = await peek.next_message(timeout=10)
        assert (message.offset, message.text, message.verified) == (live.offset, "live while peeked", True)

        # Another process holding the token and the key resumes the peek (peek.status) and reads the same.
        again = await other.resume_peek(channel, peek.id, peek.token, peek.viewer_secret())
        assert again.phase in ("active", "ended")
        if again.phase == "active":
            resumed = await again.next_message(timeout=10)
            assert resumed.verified and resumed.offset == sent[0].offset and resumed.text == texts[0]

        # The peek ends: iteration stops after the final state.
        events = [event async for event in peek]
        assert isinstance(events[-1], PeekView) and events[-1].phase == "ended", events[-1:]
        assert peek.ended and peek.view.captured_cents == 500
        phases = [view.phase for view in peek.history]
        assert phases[0] == "awaiting_payment" and "active" in phases and phases[-1] == "ended"
    finally:
        await v.close()
        await other.close()
        await alice.close()
        await bob.close()


async def test_confirming_an_active_peek_starts_its_messages(broker) -> None:
    """peek.confirm on a peek that is active already (from another connection: a second page, a restart) answers
    the grant, and the connection receives the channel's last messages and live ones, without a peek.status."""
    from agentchat.viewer import ViewerPeek
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    other = await viewer(broker.url)
    try:
        channel = await listed_channel(alice, "Confirmed twice")
        first = await alice.send(channel, "before the peek")
        peek = await v.request_peek(channel)
        await peek.confirm()
        await peek.wait_for("active", timeout=30)
        again = ViewerPeek(other, channel, peek.id, peek.token, peek.viewer_secret())
        view = await again.confirm()
        assert view.phase == "active" and view.grant is not None and again.grant_epoch == first.epoch, view
        message = await again.next_message(timeout=10)
        assert (message.offset, message.text, message.verified) == (first.offset, "before the peek", True)
        live = await alice.send(channel, "live")
        message = await again.next_message(timeout=10)
        assert (message.offset, message.text) == (live.offset, "live")
        assert [f["type"] for f in other.sent_frames] == ["peek.confirm"]
    finally:
        await v.close()
        await other.close()
        await alice.close()


async def test_sandbox_peek_refused_costs_the_fee(broker) -> None:
    alice = await agent(broker.url, "alice", peek_policy=PeekPolicy.REFUSE)
    v = await viewer(broker.url)
    try:
        channel = await listed_channel(alice, "Private matters")
        await alice.send(channel, "nobody reads this")
        peek = await v.request_peek(channel)
        await peek.confirm()
        outcome = await peek.wait_for(*PEEK_PHASES_FINAL, "active", timeout=30)
        assert (outcome.phase, outcome.captured_cents, outcome.refusal_fee_cents, outcome.price_cents) == (
            "refused", 100, 100, 500), outcome
        assert outcome.grant is None and peek.grant_epoch is None
        events = [event async for event in peek]
        assert not [e for e in events if isinstance(e, ChannelMessage)]
        assert "nobody reads this" not in "\n".join(v.received_frames)
    finally:
        await v.close()
        await alice.close()


async def test_the_viewer_reconnects_and_resubscribes(broker) -> None:
    alice = await agent(broker.url, "alice")
    watcher = await viewer(broker.url)
    directory_watcher = await viewer(broker.url)
    try:
        first = await listed_channel(alice, "Stays")
        second = await listed_channel(alice, "Goes")
        subscription = await watcher.subscribe_indicators([first, second])
        directory = await directory_watcher.subscribe_directory()
        peek = await watcher.request_peek(first)
        await alice.send(first, "before the drop")
        await peek.confirm()
        await peek.wait_for("active", timeout=30)
        assert (await peek.next_message(timeout=10)).text == "before the drop"

        # Hold both viewers' reconnections until the second channel is unlisted.
        gate = asyncio.Event()
        for v in (watcher, directory_watcher):
            original = v._establish_once

            async def held(original=original) -> None:  # type: ignore[no-untyped-def]
                await gate.wait()
                await original()

            v._establish_once = held  # type: ignore[method-assign]
        drop(watcher)
        drop(directory_watcher)
        await wait_for(lambda: watcher.state is ConnectionState.RECONNECTING
                       and directory_watcher.state is ConnectionState.RECONNECTING, "both viewers reconnecting")
        await alice.set_listing(second, False)
        live = await alice.send(first, "while the viewer was away")
        gate.set()
        await wait_for(lambda: watcher.state is ConnectionState.CONNECTED
                       and directory_watcher.state is ConnectionState.CONNECTED, "both viewers reconnected")
        assert watcher.reconnections == 1 and directory_watcher.reconnections == 1

        # The channel subscription: the unlisted channel once with listed False, then the fresh snapshot.
        seen: dict[str, bool] = {}
        async with asyncio.timeout(15):
            async for update in subscription:
                if not update.resubscribed:
                    continue  # news from before the drop
                seen.update({c.id: c.listed for c in update.channels})
                if seen.keys() == {first, second}:
                    break
        assert seen == {first: True, second: False}
        assert subscription.latest[first].messages == 2
        # The directory subscription: its fresh snapshot, with the channel gone added as unlisted.
        async with asyncio.timeout(15):
            async for update in directory:
                if update.resubscribed:
                    break
        states = {c.id: c.listed for c in update.channels}
        assert states[first] is True and states[second] is False

        # The followed peek: asked again (peek.status); what was received is not repeated.
        message = await peek.next_message(timeout=10)
        assert (message.offset, message.text) == (live.offset, "while the viewer was away")
    finally:
        await watcher.close()
        await directory_watcher.close()
        await alice.close()


async def test_without_reconnection_the_streams_end_with_the_error(broker) -> None:
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url, auto_reconnect=False)
    try:
        channel = await listed_channel(alice, "Dropped")
        subscription = await v.subscribe_directory()
        drop(v)
        with pytest.raises(AgentChatError) as ended:
            async with asyncio.timeout(10):
                async for _ in subscription:
                    pass
        assert ended.value.code == "network_error"
        assert v.state is ConnectionState.DISCONNECTED
        with pytest.raises(AgentChatError) as not_connected:
            await v.directory()
        assert not_connected.value.code == "not_connected"
        await v.connect()  # a new connection, on request
        assert channel in [c.id for c in (await v.directory(limit=100)).channels]
    finally:
        await v.close()
        await alice.close()


# ---------------------------------------------------------------- without a broker


CHANNEL = "ch_FSIvPElWY3B9ipeksb7L2A"
PEEK = "pk_FSIvPElWY3B9ipeksb7L2A"


def active_view(peek_key: bytes, grant: dict[str, Any]) -> dict[str, Any]:
    return {"id": PEEK, "channel": CHANNEL, "phase": "active", "deadline": 1, "priceCents": 500,
            "refusalFeeCents": 100, "capturedCents": 500, "viewerKey": b64url_encode(peek_key), "sandbox": True,
            "grant": grant}


def message_item(sender: AgentIdentity, text: str, key: bytes, epoch: int, offset: int) -> dict[str, Any]:
    sealed = seal_message(sender, text.encode(), channel=CHANNEL, epoch=epoch, key=key,
                          client_message_id=f"m{offset}")
    return {"offset": offset, "ciphertext": sealed.ciphertext, "epoch": epoch, "id": sealed.client_message_id,
            "nonce": sealed.nonce, "sender": sender.did, "signature": sealed.signature, "ts": 1704067200000}


async def test_grants_and_messages_are_verified_before_they_are_used() -> None:
    from agentchat.viewer import ViewerPeek
    alice, mallory = AgentIdentity.generate("alice"), AgentIdentity.generate("mallory")
    v = Viewer("http://127.0.0.1:9")
    key = os.urandom(32)

    def fresh() -> ViewerPeek:
        return ViewerPeek(v, CHANNEL, PEEK, "token", os.urandom(32))

    good = fresh()
    good._following = True
    good._apply(active_view(good.viewer_key, wrap_grant(alice, channel=CHANNEL, peek=PEEK, epoch=4,
                                                         viewer_key=good.viewer_key, channel_key=key)))
    assert good.grant_error is None and good.grant_epoch == 4
    tampered = message_item(alice, "tampered", key, 4, 3)
    tampered["ciphertext"] = message_item(alice, "other", key, 4, 3)["ciphertext"]
    good._receive([message_item(alice, "hello", key, 4, 1), message_item(alice, "hello", key, 4, 1),
                   message_item(alice, "old epoch", os.urandom(32), 3, 2), tampered,
                   message_item(mallory, "wrong key", os.urandom(32), 4, 4)])
    events = [good._queue.get_nowait() for _ in range(good._queue.qsize())]
    assert isinstance(events[0], PeekView) and events[0].phase == "active"
    messages = [e for e in events if isinstance(e, ChannelMessage)]
    assert [m.offset for m in messages] == [1, 2, 3, 4]  # the repeated offset 1 once
    assert messages[0].verified and messages[0].text == "hello"
    assert [m.failure for m in messages[1:]] == ["key_unavailable", "bad_signature", "decryption_failed"]
    with pytest.raises(AgentChatError) as unreadable:
        _ = messages[1].text
    assert unreadable.value.code == "key_unavailable"

    # A grant for this peek and key, but signed by someone else than its sender: refused, nothing opens.
    forged = fresh()
    grant = wrap_grant(alice, channel=CHANNEL, peek=PEEK, epoch=4, viewer_key=forged.viewer_key, channel_key=key)
    grant["signature"] = b64url_encode(mallory.sign(grant_signed_bytes(
        CHANNEL, PEEK, 4, b64url_encode(forged.viewer_key), str(grant["ephemeralKey"]), str(grant["nonce"]),
        str(grant["ciphertext"]))))
    forged._apply(active_view(forged.viewer_key, grant))
    assert forged.grant_error is not None and forged.grant_error.code == "bad_signature"
    assert forged.grant_epoch is None
    forged._receive([message_item(alice, "hello", key, 4, 1)])
    assert [e.failure for e in [forged._queue.get_nowait() for _ in range(forged._queue.qsize())]
            if isinstance(e, ChannelMessage)] == ["key_unavailable"]

    # Signed by its sender for this key, but wrapped for another key: does not open.
    misdirected = fresh()
    elsewhere = wrap_grant(alice, channel=CHANNEL, peek=PEEK, epoch=4, viewer_key=fresh().viewer_key, channel_key=key)
    elsewhere["signature"] = b64url_encode(alice.sign(grant_signed_bytes(
        CHANNEL, PEEK, 4, b64url_encode(misdirected.viewer_key), str(elsewhere["ephemeralKey"]),
        str(elsewhere["nonce"]), str(elsewhere["ciphertext"]))))
    misdirected._apply(active_view(misdirected.viewer_key, elsewhere))
    assert misdirected.grant_error is not None and misdirected.grant_error.code == "decryption_failed"

    # A state of this peek for another viewer key is not taken.
    with pytest.raises(AgentChatError) as other_key:
        fresh()._apply(active_view(os.urandom(32), grant))
    assert other_key.value.code == "unexpected_response"
