"""Trusting an encryption key: a member entry whose encryption key its registration signature does not vouch for
(substituted in Redis, as a broker or anyone with Redis access could) or that has no registration signature is
never sealed to: `member_key_unverified`, with `member` and `channel`, and nothing is published."""

from __future__ import annotations

import os
import subprocess

import pytest

from agentchat import AgentChatError, AgentIdentity, frames
from support import agent


def redis(broker, *args: str) -> str:
    """One command to the broker's embedded Redis, through its unix socket."""
    socket = os.path.join(broker.work, "data", "redis.sock")
    result = subprocess.run(["redis-cli", "-s", socket, *args], capture_output=True, text=True, timeout=10,
                            check=True)
    return result.stdout


def substitute_encryption_key(broker, did: str, key: bytes) -> None:
    quoted = '"' + "".join(f"\\x{b:02x}" for b in key) + '"'
    # redis-cli reads the \xNN escapes of a double-quoted argument only from its interactive syntax: use stdin.
    socket = os.path.join(broker.work, "data", "redis.sock")
    subprocess.run(["redis-cli", "-s", socket], input=f"HSET agentchat:agent:{{{did}}} encryptionKey {quoted}\n",
                   capture_output=True, text=True, timeout=10, check=True)


async def test_a_substituted_key_is_refused_and_nothing_is_sealed(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        attacker = AgentIdentity.generate()
        substitute_encryption_key(broker, bob.did, attacker.encryption_public_key)
        with pytest.raises(AgentChatError) as refused:
            await alice.create_channel("tampered", members=[bob.did])
        error = refused.value
        assert error.code == "member_key_unverified" and error.member == bob.did and error.channel
        assert bob.did in error.message
        described = await alice.describe(error.channel)  # the channel exists; its epoch has no keys
        assert described.keyed_epoch < described.epoch and alice.statistics.keys_published == 0
        with pytest.raises(AgentChatError) as again:
            await alice.send(error.channel, "for bob only")
        assert (again.value.code, again.value.member, again.value.channel) == (
            "member_key_unverified", bob.did, error.channel)
        assert (await alice.describe(error.channel)).keyed_epoch < described.epoch
    finally:
        await alice.close()
        await bob.close()


async def test_a_member_without_a_registration_signature_is_refused(broker) -> None:
    alice = await agent(broker.url)
    bob = await agent(broker.url)
    try:
        channel = await alice.create_channel("open", open=True)
        redis(broker, "HDEL", f"agentchat:agent:{{{alice.did}}}", "registrationSignature", "registrationTimestamp")
        # Bob joins, and checks every member before keying the new epoch: alice's entry has no signature now.
        with pytest.raises(AgentChatError) as refused:
            await bob.join(channel.id)
        assert (refused.value.code, refused.value.member, refused.value.channel) == (
            "member_key_unverified", alice.did, channel.id)
        described = await bob.describe(channel.id)
        assert bob.did in described.member_dids and described.keyed_epoch < described.epoch
        # The broker's word is not needed to see it: the entry lacks the fields.
        entry = next(m for m in described.members if m.did == alice.did)
        assert entry.registration_signature is None
        reply = await bob.request(frames.channel_describe(channel.id))
        assert "registrationSignature" not in next(m for m in reply["channel"]["members"] if m["did"] == alice.did)
    finally:
        await alice.close()
        await bob.close()
