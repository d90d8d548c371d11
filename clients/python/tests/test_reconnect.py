"""Login, token reconnection, resuming subscriptions without gaps or duplicates, gap repair, send retries."""

from __future__ import annotations

import asyncio

import pytest

from agentchat import (AgentChatClient, AgentChatError, AgentIdentity, ChannelMessage, ChannelResume,
                       ConnectionState, SessionToken)
from support import agent, drop, wait_for


async def collect(sub, count: int, timeout: float = 20) -> tuple[list[ChannelMessage], list[ChannelResume]]:
    messages: list[ChannelMessage] = []
    resumes: list[ChannelResume] = []
    async with asyncio.timeout(timeout):
        async for event in sub:
            if isinstance(event, ChannelResume):
                resumes.append(event)
            elif isinstance(event, ChannelMessage):
                messages.append(event)
                if len(messages) == count:
                    break
    return messages, resumes


async def test_unregistered_identity_is_refused(broker) -> None:
    client = AgentChatClient(AgentIdentity.generate("nobody"), broker.url)
    try:
        with pytest.raises(AgentChatError) as refused:
            await client.connect()
        assert refused.value.code == "auth_failed"
        assert client.state is ConnectionState.DISCONNECTED
        with pytest.raises(AgentChatError) as not_connected:
            await client.describe("ch_AAAAAAAAAAAAAAAAAAAAAA")
        assert not_connected.value.code == "not_connected"
    finally:
        await client.close()
    with pytest.raises(AgentChatError) as closed:
        await client.connect()
    assert closed.value.code == "client_closed"


async def test_token_reconnect_after_the_connection_drops(broker) -> None:
    alice = await agent(broker.url)
    try:
        token = alice.session_token
        assert token is not None and alice.statistics.signature_logins == 1
        states: list[ConnectionState] = []

        async def watch() -> None:
            async for state in alice.state_changes():
                states.append(state)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0)
        drop(alice)
        await wait_for(lambda: alice.statistics.token_logins == 1 and alice.state is ConnectionState.CONNECTED,
                       "a login with the session token")
        assert alice.statistics.signature_logins == 1  # no challenge signed again
        assert states[:2] == [ConnectionState.RECONNECTING, ConnectionState.CONNECTING]
        assert states[-1] is ConnectionState.CONNECTED
        # The broker answers a token login with the same token while most of its lifetime is left: kept.
        assert alice.session_token == token
        assert (await alice.ping()).broker_time > 0
        watcher.cancel()
    finally:
        await alice.close()


async def test_a_refused_token_falls_back_to_the_challenge(broker) -> None:
    alice = await agent(broker.url)
    try:
        assert alice.session_token is not None
        alice.session_token = SessionToken(alice.session_token.token[:-4] + "AAAA", alice.session_token.expires_at)
        drop(alice)
        await wait_for(lambda: alice.statistics.signature_logins == 2 and alice.state is ConnectionState.CONNECTED,
                       "a login by signature after token_invalid")
        assert alice.statistics.token_logins == 0
        assert alice.session_token is not None and alice.session_token.token.endswith("AAAA") is False
    finally:
        await alice.close()


async def test_resume_after_a_drop_has_no_gap_and_no_duplicate(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("resume", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        for i in range(1, 6):
            await alice.send(channel.id, f"m{i}")
        first, _ = await collect(sub, 5)
        drop(bob)
        for i in range(6, 11):  # sent while bob is away
            await alice.send(channel.id, f"m{i}")
        rest, resumes = await collect(sub, 5)
        received = first + rest
        assert [m.offset for m in received] == list(range(1, 11))
        assert [m.text for m in received] == [f"m{i}" for i in range(1, 11)]
        assert len(resumes) == 1 and resumes[0].is_reconnect and resumes[0].since == 5 and resumes[0].recovered
        assert bob.statistics.resubscriptions == 1 and bob.statistics.token_logins == 1
        await alice.send(channel.id, "m11")  # and live again
        (last,), _ = await collect(sub, 1)
        assert (last.offset, last.text) == (11, "m11")
    finally:
        await alice.close()
        await bob.close()


async def test_a_skipped_offset_is_repaired_by_subscribing_again(broker) -> None:
    """The broker never skips; the test makes the client lose one `messages` frame, as a faulty path would."""
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("gaps", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        real_dispatch = bob._dispatch
        lost: list[int] = []

        def lossy(frame):  # type: ignore[no-untyped-def]
            offsets = [m.get("offset") for m in frame.get("messages", [])] if frame.get("type") == "messages" else []
            if 3 in offsets and "ref" not in frame and not lost:
                lost.extend(offsets)
                return
            real_dispatch(frame)

        bob._dispatch = lossy  # type: ignore[method-assign]
        for i in range(1, 7):
            await alice.send(channel.id, f"m{i}")
        messages, resumes = await collect(sub, 6)
        assert lost, "the test dropped nothing"
        assert [m.offset for m in messages] == [1, 2, 3, 4, 5, 6]
        assert bob.statistics.gaps_repaired == 1
        assert any(r.is_reconnect and r.since == 2 for r in resumes)
    finally:
        await alice.close()
        await bob.close()


async def test_send_while_the_connection_is_down_is_retried_once(broker) -> None:
    alice = await agent(broker.url)
    try:
        channel = await alice.create_channel("retry")
        drop(alice)
        receipt = await alice.send(channel.id, "sent across a reconnection", client_message_id="retry-1")
        assert receipt.offset == 1 and not receipt.duplicate
        again = await alice.send(channel.id, "sent across a reconnection", client_message_id="retry-1")
        assert again.offset == 1 and again.duplicate
        assert [m.text for m in await alice.history(channel.id)] == ["sent across a reconnection"]
    finally:
        await alice.close()


async def test_resume_across_a_broker_restart(own_broker) -> None:
    alice = await agent(own_broker.url)
    bob = await agent(own_broker.url)
    try:
        channel = await alice.create_channel("restart", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        for i in range(1, 4):
            await alice.send(channel.id, f"m{i}")
        first, _ = await collect(sub, 3)
        await asyncio.to_thread(own_broker.stop)
        await wait_for(lambda: bob.state is not ConnectionState.CONNECTED
                       and alice.state is not ConnectionState.CONNECTED, "both clients see the drop")
        await asyncio.to_thread(own_broker.start)  # same port, same data directory (Redis AOF, token keys)
        for i in range(4, 7):
            await alice.send(channel.id, f"m{i}")  # waits for the reconnection, then sends
        rest, resumes = await collect(sub, 3, timeout=40)
        assert [m.offset for m in first + rest] == [1, 2, 3, 4, 5, 6]
        assert [m.text for m in first + rest] == [f"m{i}" for i in range(1, 7)]
        assert resumes[-1].is_reconnect and resumes[-1].recovered
        assert bob.statistics.token_logins >= 1 and alice.statistics.token_logins >= 1
    finally:
        await alice.close()
        await bob.close()


async def test_close_ends_subscriptions_and_fails_requests(broker) -> None:
    alice = await agent(broker.url)
    channel = await alice.create_channel("closing")
    sub = await alice.subscribe(channel.id)
    await alice.close()
    events = [event async for event in sub]
    assert isinstance(events[0], ChannelResume)
    assert events[-1].error.code == "client_closed"  # type: ignore[union-attr]
    assert alice.state is ConnectionState.CLOSED
    with pytest.raises(AgentChatError) as closed:
        await alice.send(channel.id, "too late")
    assert closed.value.code == "client_closed"


async def test_without_auto_reconnect_a_drop_disconnects(broker) -> None:
    alice = await agent(broker.url, auto_reconnect=False)
    try:
        drop(alice)
        await wait_for(lambda: alice.state is ConnectionState.DISCONNECTED, "disconnected")
        with pytest.raises(AgentChatError) as refused:
            await alice.ping()
        assert refused.value.code == "not_connected"
        await alice.connect()  # by hand, with the token
        assert alice.statistics.token_logins == 1
    finally:
        await alice.close()
