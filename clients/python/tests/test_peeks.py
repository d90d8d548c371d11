"""Paid peeks, the member side, with the broker's payment sandbox and short windows (conftest): a refusal by policy,
a grant the viewer verifies and opens (then reads the channel with it), the rotation after the peek ends, and the
members' earnings."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from agentchat import PeekEvent, PeekPolicy
from agentchat.crypto import open_message_ciphertext, unwrap_grant, verify_grant
from agentchat.encoding import b64url_decode, b64url_encode
from support import agent, eventually, wait_for


class Viewer:
    """A viewer page's side, over a raw WebSocket: asks for a peek, confirms the (sandbox) payment, follows it."""

    def __init__(self) -> None:
        self.secret = X25519PrivateKey.generate()
        self.public = self.secret.public_key().public_bytes(serialization.Encoding.Raw,
                                                            serialization.PublicFormat.Raw)
        self.peeks: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []

    async def run(self, url: str, channel: str, until: set[str]) -> dict[str, Any]:
        async with websockets.connect(url.replace("http://", "ws://") + "/", subprotocols=["agentchat.v1"],
                                      proxy=None, compression=None) as ws:
            assert json.loads(await ws.recv())["type"] == "hello"
            await ws.send(json.dumps({"type": "peek.request", "id": "v1", "channel": channel,
                                      "viewerKey": b64url_encode(self.public)}))
            created = json.loads(await ws.recv())
            assert created["type"] == "peek" and created["peek"]["phase"] == "awaiting_payment", created
            peek = created["peek"]
            await ws.send(json.dumps({"type": "peek.confirm", "id": "v2", "channel": channel, "peek": peek["id"],
                                      "token": peek["token"]}))
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] == "peek":
                    self.peeks.append(frame["peek"])
                elif frame["type"] == "messages":
                    self.messages.extend(frame["messages"])
                if frame["type"] == "peek" and frame["peek"]["phase"] in until:
                    if frame["peek"]["phase"] != "active":
                        return frame["peek"]
                    # Active: collect the replayed messages too, briefly.
                    try:
                        async with asyncio.timeout(2):
                            while True:
                                more = json.loads(await ws.recv())
                                if more["type"] == "messages":
                                    self.messages.extend(more["messages"])
                                    break
                    except TimeoutError:
                        pass
                    return frame["peek"]


async def collect(client, into: list[PeekEvent]) -> None:
    async for event in client.peek_events():
        into.append(event)


async def test_refusal_then_grant_then_rotation_and_earnings(broker) -> None:
    alice = await agent(broker.url, "alice")
    bob = await agent(broker.url, "bob")
    alice_events: list[PeekEvent] = []
    bob_events: list[PeekEvent] = []
    watchers = [asyncio.create_task(collect(alice, alice_events)), asyncio.create_task(collect(bob, bob_events))]
    try:
        channel = await alice.create_channel("Market makers", members=[bob.did])
        before = await alice.send(channel.id, "Prices at 09:00: 101.2 / 101.4")
        await alice.set_listing(channel.id, True, "Market makers", "prices, hourly")

        # 1. Alice refuses every peek of this channel: the viewer pays the 100-cent fee.
        alice.set_peek_policy(PeekPolicy.REFUSE, channel.id)
        assert alice.peek_policy(channel.id) is PeekPolicy.REFUSE and bob.peek_policy(channel.id) is PeekPolicy.GRANT
        refused = await Viewer().run(broker.url, channel.id, {"refused", "active", "cancelled", "failed"})
        assert (refused["phase"], refused["capturedCents"]) == ("refused", 100), refused
        await wait_for(lambda: any(e.kind == "refused" for e in alice_events), "alice's refusal event")
        assert any(e.kind == "update" and e.view is not None and e.view.phase == "pending" for e in bob_events)
        # 70% of 100 cents shared by the two members.
        earned = await eventually(lambda: alice.earnings(limit=10), lambda e: e.balance_cents == 35,
                                  "alice's share of the refusal fee")
        assert earned.entries[0].channel == channel.id and earned.entries[0].cents == 35

        # 2. Everyone grants (the default): a member's grant reaches the viewer, who verifies and opens it.
        alice.set_peek_policy(None, channel.id)
        viewer = Viewer()
        active = await viewer.run(broker.url, channel.id, {"active", "refused", "cancelled", "failed"})
        assert active["phase"] == "active" and active["capturedCents"] == 500, active
        grant = active["grant"]
        assert grant["sender"] in (alice.did, bob.did)
        assert verify_grant(grant, channel=channel.id, peek=active["id"], viewer_key=viewer.public)
        key = unwrap_grant(grant, channel=channel.id, peek=active["id"],
                           viewer_secret=viewer.secret.private_bytes(serialization.Encoding.Raw,
                                                                     serialization.PrivateFormat.Raw,
                                                                     serialization.NoEncryption()))
        assert key is not None and len(key) == 32
        forged = dict(grant, epoch=grant["epoch"] + 1)
        assert not verify_grant(forged, channel=channel.id, peek=active["id"], viewer_key=viewer.public)
        # The viewer reads the channel's message of the granted epoch with the key.
        item = next(m for m in viewer.messages if m["offset"] == before.offset)
        plaintext = open_message_ciphertext(b64url_decode(item["ciphertext"]) or b"", key=key,
                                            nonce=b64url_decode(item["nonce"]) or b"", channel=channel.id,
                                            epoch=item["epoch"], sender=item["sender"], client_message_id=item["id"])
        assert plaintext == "Prices at 09:00: 101.2 / 101.4".encode()
        granted = [e for e in alice_events + bob_events if e.kind == "granted"]
        assert granted and granted[0].epoch == grant["epoch"]

        # 3. The peek ends: the members move the channel to a new epoch the viewer's key does not open.
        await wait_for(lambda: any(e.kind == "rotated" for e in alice_events + bob_events), "a rotation", 20)
        rotated = next(e for e in alice_events + bob_events if e.kind == "rotated")
        assert rotated.epoch is not None and rotated.epoch > grant["epoch"]
        after = await alice.send(channel.id, "after the peek")
        assert after.epoch > grant["epoch"]
        assert [m.text for m in await bob.history(channel.id)][-1] == "after the peek"
        assert not [e for e in alice_events + bob_events if e.kind == "failed"], \
            [e.error for e in alice_events + bob_events if e.kind == "failed"]
        # 70% of 500 cents more, shared by two: 175 each.
        await eventually(bob.earnings, lambda e: e.balance_cents == 35 + 175, "bob's shares of fee and price")
    finally:
        for w in watchers:
            w.cancel()
        await alice.close()
        await bob.close()


async def test_ask_policy_lets_the_application_refuse(broker) -> None:
    from agentchat import PeekDecision, PeekView
    alice = await agent(broker.url, peek_policy=PeekPolicy.ASK)
    asked: list[PeekView] = []

    async def decide(view: PeekView) -> PeekDecision:
        asked.append(view)
        return PeekDecision.REFUSE

    alice.set_peek_decider(decide)
    try:
        channel = await alice.create_channel("asking")
        await alice.set_listing(channel.id, True, "Asking", "")
        outcome = await Viewer().run(broker.url, channel.id, {"refused", "active", "cancelled", "failed"})
        assert outcome["phase"] == "refused" and len(asked) == 1 and asked[0].channel == channel.id
    finally:
        await alice.close()
