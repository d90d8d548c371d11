"""Every frame the SDK writes has the shape of the golden client frame of its type (Tests/Golden/client): built
through the SDK's frame builders from the golden values (equal byte for byte as JSON objects), and as really sent
by the SDK to a real broker during a scenario that uses every agent request, and one that uses every viewer request
(keys and value types; optional fields may be absent)."""

from __future__ import annotations

import json
import os
from typing import Any

from agentchat import AgentChatError, frames
from agentchat.crypto import SealedMessage
from support import agent, drop, viewer, wait_for

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "..", "..", "Tests", "Golden", "client")
#: Frames only a viewer (agentchat.Viewer, or the viewer page) sends.
VIEWER_TYPES = {"directory.list", "indicators.subscribe", "indicators.unsubscribe", "peek.request", "peek.confirm",
                "peek.status"}


def golden() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name in sorted(os.listdir(GOLDEN)):
        if name.endswith(".json"):
            with open(os.path.join(GOLDEN, name)) as f:
                out.append((name, json.load(f)))
    return out


def shape(value: Any) -> str:
    """A value's JSON type; arrays and objects with the types of their elements (object keys are data)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + "|".join(sorted({shape(v) for v in value})) + "]"
    return "{" + "|".join(sorted({shape(v) for v in value.values()})) + "}"


def fields(frame: dict[str, Any]) -> dict[str, str]:
    return {k: shape(v) for k, v in frame.items()}


def build(g: dict[str, Any]) -> dict[str, Any]:
    """The golden frame rebuilt through the SDK's builder of its type, from its values."""
    t, i = g["type"], g.get("id")
    if t == "auth":
        return frames.auth_token(g["token"], id=i) if "token" in g else frames.auth_signature(g["did"],
                                                                                            g["signature"], id=i)
    if t == "message.send":
        return frames.message_send(SealedMessage(g["channel"], g["epoch"], g["clientMessageId"], g["nonce"],
                                                 g["ciphertext"], g["signature"]), id=i)
    builders: dict[str, Any] = {
        "ping": lambda: frames.ping(id=i),
        "channel.create": lambda: frames.channel_create(g["name"], g["open"], g["members"], id=i),
        "channel.invite": lambda: frames.channel_invite(g["channel"], g["did"], id=i),
        "channel.join": lambda: frames.channel_join(g["channel"], id=i),
        "channel.leave": lambda: frames.channel_leave(g["channel"], id=i),
        "channel.remove": lambda: frames.channel_remove(g["channel"], g["did"], id=i),
        "channel.rotate": lambda: frames.channel_rotate(g["channel"], id=i),
        "channel.list": lambda: frames.channel_list(g.get("after"), g.get("limit"), id=i),
        "channel.describe": lambda: frames.channel_describe(g["channel"], id=i),
        "channel.listing": lambda: frames.channel_listing(g["channel"], g["listed"], g.get("title"), g.get("topic"),
                                                          id=i),
        "channel.keys": lambda: frames.channel_keys(g["channel"], g["epoch"], g["envelopes"], g["signature"], id=i),
        "channel.keys.get": lambda: frames.channel_keys_get(g["channel"], g["epoch"], id=i),
        "channel.subscribe": lambda: frames.channel_subscribe(g["channel"], g.get("since"), g.get("historyEpoch"),
                                                              id=i),
        "channel.unsubscribe": lambda: frames.channel_unsubscribe(g["channel"], id=i),
        "history": lambda: frames.history(g["channel"], g.get("before"), g.get("after"), g.get("limit"), id=i),
        "cursor.set": lambda: frames.cursor_set(g["channel"], g["offset"], id=i),
        "unread.list": lambda: frames.unread_list(g.get("after"), g.get("limit"), id=i),
        "peek.refuse": lambda: frames.peek_refuse(g["channel"], g["peek"], id=i),
        "peek.grant": lambda: frames.peek_grant(g["channel"], g["peek"], g["grant"], id=i),
        "earnings": lambda: frames.earnings(g.get("limit"), id=i),
        "directory.list": lambda: frames.directory_list(g.get("limit"), g.get("cursor"), id=i),
        "indicators.subscribe": lambda: (frames.indicators_subscribe_directory(id=i) if g.get("directory")
                                         else frames.indicators_subscribe(g["channels"], id=i)),
        "indicators.unsubscribe": lambda: frames.indicators_unsubscribe(id=i),
        "peek.request": lambda: frames.peek_request(g["channel"], g["viewerKey"], id=i),
        "peek.confirm": lambda: frames.peek_confirm(g["channel"], g["peek"], g["token"], id=i),
        "peek.status": lambda: frames.peek_status(g["channel"], g["peek"], g["token"], id=i),
    }
    return builders[t]()  # type: ignore[no-any-return]


def test_every_frame_is_built_as_the_golden_one() -> None:
    all_golden = golden()
    assert all_golden, f"no golden frames in {GOLDEN}"
    for name, g in all_golden:
        built = build(g)
        assert fields(built) == fields(g), name
        assert built == g, name
    agent_types = {g["type"] for _, g in all_golden if g["type"] not in VIEWER_TYPES}
    assert agent_types == set(frames.BUILDERS), (
        f"golden types without a builder: {agent_types - set(frames.BUILDERS)}; "
        f"builders without a golden frame: {set(frames.BUILDERS) - agent_types}")
    viewer_types = {g["type"] for _, g in all_golden if g["type"] in VIEWER_TYPES} | {"ping"}
    assert viewer_types == set(frames.VIEWER_BUILDERS), (
        f"golden viewer types without a builder: {viewer_types - set(frames.VIEWER_BUILDERS)}; "
        f"viewer builders without a golden frame: {set(frames.VIEWER_BUILDERS) - viewer_types}")
    # Both forms of indicators.subscribe have their golden frame.
    subscribe = [g for _, g in all_golden if g["type"] == "indicators.subscribe"]
    assert {"directory" in g for g in subscribe} == {True, False}


async def test_what_the_sdk_sends_to_a_real_broker_has_the_golden_shapes(broker) -> None:
    alice = await agent(broker.url, "alice")
    bob = await agent(broker.url, "bob")
    carol = await agent(broker.url, "carol")
    try:
        await alice.ping()
        channel = await alice.create_channel("golden", members=[bob.did])
        await alice.send(channel.id, "hello")
        assert [m.text for m in await bob.history(channel.id, after=0)] == ["hello"]  # bob: channel.keys.get
        await alice.invite(channel.id, carol.did)
        await carol.join(channel.id)
        assert channel.id in [c.id for c in await alice.list_channels()]
        await alice.set_listing(channel.id, True, "Golden", "shapes")
        await alice.set_listing(channel.id, False)
        await alice.set_read_cursor(channel.id, 1)
        await alice.unread_counts()
        await alice.earnings(limit=20)
        try:
            await alice.refuse_peek(channel.id, "pk_FSIvPElWY3B9ipeksb7L2A")
        except AgentChatError as e:
            assert e.code in ("not_found", "peek_not_refusable")
        sub = await alice.subscribe(channel.id, since=0, history_epoch=channel.history_epoch)
        assert (await sub.next_message(timeout=10)).text == "hello"
        await sub.close()
        await alice.rotate(channel.id)
        await alice.remove(channel.id, carol.did)
        await bob.leave(channel.id)
        logins = alice.statistics.token_logins
        drop(alice)
        await wait_for(lambda: alice.statistics.token_logins == logins + 1, "a login by token")
    finally:
        for c in (alice, bob, carol):
            await c.close()
    shapes: dict[str, list[dict[str, str]]] = {}
    for _, g in golden():
        shapes.setdefault(g["type"], []).append(fields(g))
    sent_types = set()
    for frame in alice.sent_frames + bob.sent_frames + carol.sent_frames:
        sent_types.add(frame["type"])
        sent = fields(frame)
        assert sent.get("id") == "string", frame
        assert any(all(candidate.get(k) == v for k, v in sent.items()) for candidate in shapes[frame["type"]]), \
            f"{frame['type']} {sent} fits none of {shapes[frame['type']]}"
    # peek.grant is covered by tests/test_peeks.py against the real broker.
    assert sent_types == set(frames.BUILDERS) - {"peek.grant"}, set(frames.BUILDERS) - sent_types


async def test_what_the_viewer_sends_to_a_real_broker_has_the_golden_shapes(broker) -> None:
    alice = await agent(broker.url, "alice")
    v = await viewer(broker.url)
    resumed = await viewer(broker.url)
    try:
        channel = await alice.create_channel("golden viewer")
        await alice.set_listing(channel.id, True, "Golden viewer", "shapes")
        await v.ping()
        await v.directory(limit=20, cursor=0)
        await v.subscribe_indicators([channel.id])
        await v.subscribe_directory()  # unsubscribes first
        await v.unsubscribe_indicators()
        peek = await v.request_peek(channel.id)
        await peek.confirm()
        await peek.status()
        await resumed.resume_peek(channel.id, peek.id, peek.token, peek.viewer_secret())
    finally:
        await v.close()
        await resumed.close()
        await alice.close()
    shapes: dict[str, list[dict[str, str]]] = {}
    for _, g in golden():
        shapes.setdefault(g["type"], []).append(fields(g))
    sent = v.sent_frames + resumed.sent_frames
    for frame in sent:
        got = fields(frame)
        assert got.get("id") == "string", frame
        candidates = shapes[frame["type"]]
        assert any(all(candidate.get(k) == val for k, val in got.items()) and set(candidate) == set(got)
                   for candidate in candidates), f"{frame['type']} {got} fits none of {candidates}"
    assert {f["type"] for f in sent} == set(frames.VIEWER_BUILDERS)
    assert {"directory" in f for f in sent if f["type"] == "indicators.subscribe"} == {True, False}
