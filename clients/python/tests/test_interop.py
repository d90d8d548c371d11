"""A Swift agent (the `agentchat` CLI) and a Python agent in one channel, each reading and verifying what the
other sent, with keys made by each side."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess

from agentchat import AgentIdentity, ChannelMessage
from support import agent


def swift_agent(broker, directory: str, name: str) -> tuple[str, str]:
    path = os.path.join(directory, f"{name}.json")
    broker.cli("keygen", "--name", name, identity=path)
    did = broker.cli("register", identity=path)["did"]
    return path, did


async def test_python_and_swift_read_each_other(broker, tmp_identity_dir: str) -> None:
    swift, swift_did = swift_agent(broker, tmp_identity_dir, "swift-bob")
    alice = await agent(broker.url, "python-alice")
    try:
        # Python creates the channel and keys epoch 1 (sealed to the Swift agent after checking its registration).
        channel = await alice.create_channel("interop", members=[swift_did])
        sent = await alice.send(channel.id, "from python: héllo 🐍")
        # The Swift CLI fetches the Python-signed key set, verifies it and the message, and decrypts.
        history = broker.cli("history", "--channel", channel.id, identity=swift, lines=True)
        assert isinstance(history, list) and len(history) == 1
        (seen,) = history
        assert seen["offset"] == sent.offset and seen["sender"] == alice.did and seen["verified"] is True
        assert seen["plaintext"] == "from python: héllo 🐍" and seen["clientMessageId"] == sent.client_message_id
        # The Swift agent answers; Python verifies the Swift signature and decrypts.
        sub = await alice.subscribe(channel.id, since=sent.offset)
        answer = await asyncio.to_thread(broker.cli, "send", "--channel", channel.id, "from swift: 🦅",
                                         identity=swift)
        message = await sub.next_message(timeout=20)
        assert (message.offset, message.sender, message.text, message.verified) == (
            answer["offset"], swift_did, "from swift: 🦅", True)
        assert answer["offset"] == sent.offset + 1
        # `agentchat listen` receives a live Python message (from the offset after the last one, so no race).
        listen = subprocess.Popen(
            [broker.cli_binary, "listen", "--channel", channel.id, "--from", str(message.offset + 1), "--count", "1",
             "--json", "--server", broker.url, "--identity", swift],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            live = await alice.send(channel.id, "live from python")
            out, err = await asyncio.to_thread(listen.communicate, timeout=30)
        finally:
            if listen.poll() is None:
                listen.kill()
                listen.wait()
        assert listen.returncode == 0, err
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        received = [line for line in lines if "offset" in line]
        assert [(m["offset"], m["plaintext"], m["verified"], m["sender"]) for m in received] == [
            (live.offset, "live from python", True, alice.did)]
        await sub.close()
    finally:
        await alice.close()


async def test_python_opens_keys_published_by_a_swift_agent(broker, tmp_identity_dir: str) -> None:
    alice = await agent(broker.url, "python-alice")
    swift, swift_did = swift_agent(broker, tmp_identity_dir, "swift-carol")
    try:
        # The Swift agent creates the channel with the Python agent in it, and keys epoch 1 itself.
        created = broker.cli("channel", "create", "--name", "swift-owned", "--member", alice.did, identity=swift)
        channel_id = created["id"]
        broker.cli("send", "--channel", channel_id, "keyed by swift", identity=swift)
        (message,) = await alice.history(channel_id)
        assert isinstance(message, ChannelMessage) and message.verified
        assert (message.sender, message.text) == (swift_did, "keyed by swift")
        assert alice.statistics.keys_fetched == 1 and alice.statistics.keys_published == 0
        # Python sends in the Swift-keyed epoch; the Swift agent reads it.
        await alice.send(channel_id, "python in a swift epoch")
        texts = [m["plaintext"] for m in broker.cli("history", "--channel", channel_id, identity=swift, lines=True)]
        assert texts == ["keyed by swift", "python in a swift epoch"]
        # A tampered message from Python is refused by the Swift reader (verified false, no plaintext).
        from agentchat import frames
        from agentchat.crypto import seal_message
        epoch, key = await alice._sending_key(channel_id, refresh=False)
        sealed = seal_message(alice.identity, b"forged", channel=channel_id, epoch=epoch, key=key,
                              client_message_id="forged-1")
        frame = frames.message_send(sealed)
        frame["signature"] = frame["signature"][:-2] + ("A" if frame["signature"][-2] != "A" else "Q") + "A"
        await alice.request(frame)
        last = broker.cli("history", "--channel", channel_id, identity=swift, lines=True)[-1]
        assert last["verified"] is False and last["plaintext"] is None
    finally:
        await alice.close()
    assert AgentIdentity.load(swift).did == swift_did
