"""Read cursors and unread counts (docs/PROTOCOL.md, "Read cursors") against the real broker."""

from __future__ import annotations

import pytest

from agentchat import AgentChatClient, AgentChatError, ClientConfig
from support import agent


async def test_cursor_moves_forward_only_and_counts_unread(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("cursors", members=[])
        for i in range(3):
            await alice.send(channel.id, f"m{i}")
        mine = {c.channel: c for c in await alice.unread_counts()}[channel.id]
        assert (mine.name, mine.read, mine.offset, mine.unread) == ("cursors", 0, 3, 3)  # started at 0 on create
        cursor = await alice.set_read_cursor(channel.id, 2)
        assert (cursor.channel, cursor.name, cursor.read, cursor.offset, cursor.unread) == (channel.id, None, 2, 3, 1)
        back = await alice.set_read_cursor(channel.id, 1)  # never moves back
        assert (back.read, back.unread) == (2, 1)
        with pytest.raises(AgentChatError) as past:
            await alice.set_read_cursor(channel.id, 4)
        assert past.value.code == "invalid_field"
        with pytest.raises(AgentChatError) as stranger:
            await bob.set_read_cursor(channel.id, 1)
        assert stranger.value.code == "not_found"
        # A joiner starts at the latest offset: what was said before it joined is not unread.
        await alice.invite(channel.id, bob.did)
        await bob.join(channel.id)
        assert {c.channel: c.unread for c in await bob.unread_counts()}[channel.id] == 0
        await alice.send(channel.id, "for bob")
        assert {c.channel: (c.read, c.unread) for c in await bob.unread_counts()}[channel.id] == (3, 1)
        # Another connection of the same agent sees the same cursor.
        twin = AgentChatClient(alice.identity, broker.url, ClientConfig())
        try:
            await twin.connect()
            assert {c.channel: c.read for c in await twin.unread_counts()}[channel.id] == 2
        finally:
            await twin.close()
        await bob.leave(channel.id)
        assert channel.id not in {c.channel for c in await bob.unread_counts()}
    finally:
        await alice.close()
        await bob.close()


async def test_unread_counts_and_channel_list_read_every_page(broker) -> None:
    alice = await agent(broker.url)
    try:
        made = [(await alice.create_channel(f"c{i}")).id for i in range(101)]  # the broker pages at 100
        counts = await alice.unread_counts()
        assert [c.channel for c in counts] == sorted(made, key=str.encode)
        assert {c.id for c in await alice.list_channels()} == set(made)
    finally:
        await alice.close()
