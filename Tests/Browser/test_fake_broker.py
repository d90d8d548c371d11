#!/usr/bin/env python3
"""The fake broker (fake_broker.py, which the viewer page's browser test runs against) against the protocol's
golden frames (Tests/Golden): it offers the subprotocol of WireProtocol.subprotocol, accepts every golden viewer
frame (the peek frames included), and every frame it sends has the type name, keys and value types of a golden
broker frame; a peek's objects and a `messages` frame's stored messages have the keys of the golden ones.

Standard library only (unittest); no browser. Run from the repository root:

    python3 Tests/Browser/test_fake_broker.py
"""

import asyncio
import base64
import json
import os
import re
import struct
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_broker  # noqa: E402

# Keys a broker frame has or not by circumstance: `ref` when it answers a request (an `indicators` snapshot does,
# an update does not), `next` when more pages follow.
OPTIONAL_KEYS = {"ref", "next"}
# Keys of a peek object by circumstance (docs/PROTOCOL.md, "Viewer frames"): `reason` for a cancelled or failed peek,
# `publishableKey` with Stripe, `token` and `clientSecret` in the answer to peek.request, `grant` once active.
PEEK_OPTIONAL = {"reason", "publishableKey", "token", "clientSecret", "grant", "deadline"}


def shape(value):
    """A value's JSON type; arrays and objects with the types of their elements (object keys are data)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "[" + "|".join(sorted({shape(v) for v in value})) + "]"
    return "{" + "|".join(sorted({shape(v) for v in value.values()})) + "}"


def fits(mine, theirs):
    """Whether a value has the JSON type of the golden one; a list's elements each the type of some golden
    element (an empty list fits any list)."""
    if isinstance(mine, list) and isinstance(theirs, list):
        return {shape(v) for v in mine} <= {shape(v) for v in theirs}
    return shape(mine) == shape(theirs)


def masked_text_frame(payload):
    """A client's text frame (FIN, masked, as RFC 6455 requires of clients)."""
    mask = os.urandom(4)
    n = len(payload)
    head = struct.pack("!BB", 0x81, 0x80 | n) if n < 126 else struct.pack("!BBH", 0x81, 0x80 | 126, n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


class ViewerConnection:
    """A raw WebSocket viewer connection to the fake broker; keeps every frame it receives."""

    def __init__(self, reader, writer, response):
        self.reader, self.writer, self.response = reader, writer, response
        self.received = []

    @classmethod
    async def open(cls, port, subprotocol):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                      f"Sec-WebSocket-Protocol: {subprotocol}\r\n\r\n").encode())
        response = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        return cls(reader, writer, response)

    async def send(self, payload):
        self.writer.write(masked_text_frame(payload))
        await self.writer.drain()

    async def next_frame(self, timeout=5):
        while True:
            opcode, payload, _ = await asyncio.wait_for(fake_broker.read_ws_frame(self.reader), timeout)
            if opcode == 0x1:
                frame = json.loads(payload)
                self.received.append(frame)
                return frame

    async def answer_to(self, ref, timeout=5):
        """Frames until the one with `ref` (frames in between are kept too)."""
        while True:
            frame = await self.next_frame(timeout)
            if frame.get("ref") == ref:
                return frame

    def close(self):
        self.writer.close()


class FakeBrokerAgainstGoldenFrames(unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self):
        self.broker = fake_broker.Broker(os.path.join(fake_broker.HERE, "no-web"), rate=20.0)
        # The channels the golden viewer frames name, listed.
        for frame in fake_broker.GOLDEN_SERVER["directory.json"]["channels"]:
            self.broker.channels[frame["id"]] = fake_broker.Channel(frame["id"], "Market makers", "prices, hourly",
                                                                    members=2, online=1, messages=57)
        # The peek the golden peek.confirm and peek.status name, with its token.
        golden_peek = fake_broker.GOLDEN_SERVER["peek.json"]["peek"]
        self.broker.seed_peek(golden_peek["id"], golden_peek["channel"], golden_peek["viewerKey"],
                              golden_peek["token"])
        self.server = await asyncio.start_server(self.broker.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def asyncTearDown(self):
        self.server.close()
        await self.broker.shutdown()
        await self.server.wait_closed()

    def assert_fits_golden(self, frame):
        """Type name, keys and value types of a golden broker frame of its type (optional keys aside)."""
        self.assertIn(frame.get("type"), fake_broker.SERVER_TYPES, frame)
        candidates = [g for g in fake_broker.GOLDEN_SERVER.values() if g["type"] == frame["type"]]
        problems = []
        for golden in candidates:
            missing = set(golden) - set(frame) - OPTIONAL_KEYS
            extra = set(frame) - set(golden) - OPTIONAL_KEYS
            differing = [k for k in set(frame) & set(golden) if not fits(frame[k], golden[k])]
            if not (missing or extra or differing):
                break
            problems.append(f"{missing=} {extra=} {differing=}")
        else:
            self.fail(f"{frame} fits no golden {frame['type']} frame: {problems}")
        # Channel entries (directory, indicators): the keys of a golden entry, listed or not.
        golden_entries = {frozenset(e) for g in candidates for e in g.get("channels", []) if isinstance(e, dict)}
        for entry in frame.get("channels", []):
            self.assertIn(frozenset(entry), golden_entries, f"channel entry {entry}")
        # Stored messages: exactly the golden message's keys.
        golden_messages = {frozenset(m) for g in candidates for m in g.get("messages", [])}
        for message in frame.get("messages", []):
            self.assertIn(frozenset(message), golden_messages, f"message {message}")
        # A peek: the golden peek's keys, those that depend on the phase aside; a grant has a golden grant's keys.
        if "peek" in frame:
            golden_peeks = [g["peek"] for g in candidates]
            required = set.intersection(*(set(p) for p in golden_peeks)) - PEEK_OPTIONAL
            allowed = set.union(*(set(p) for p in golden_peeks)) | PEEK_OPTIONAL
            self.assertLessEqual(required, set(frame["peek"]), frame)
            self.assertLessEqual(set(frame["peek"]), allowed, frame)
            if "grant" in frame["peek"]:
                golden_grant = fake_broker.GOLDEN_SERVER["peek.active.json"]["peek"]["grant"]
                self.assertEqual(set(frame["peek"]["grant"]), set(golden_grant))
                self.assertTrue(all(fits(frame["peek"]["grant"][k], golden_grant[k]) for k in golden_grant))

    def test_the_subprotocol_is_the_protocols(self):
        with open(fake_broker.FRAME_TYPE_SWIFT, encoding="utf-8") as f:
            declared = re.findall(r'static let subprotocol = "([^"]+)"', f.read())
        self.assertEqual(declared, [fake_broker.SUBPROTOCOL])

    async def test_accepts_every_golden_viewer_frame_and_answers_with_golden_shapes(self):
        viewer = await ViewerConnection.open(self.port, fake_broker.SUBPROTOCOL)
        try:
            self.assertTrue(viewer.response.startswith("HTTP/1.1 101"), viewer.response)
            self.assertIn(f"Sec-WebSocket-Protocol: {fake_broker.SUBPROTOCOL}\r\n", viewer.response)
            hello = await viewer.next_frame()
            self.assertEqual(hello["type"], "hello")
            viewer_frames = {name: f for name, f in fake_broker.GOLDEN_CLIENT.items()
                             if f["type"] in fake_broker.VIEWER_FRAMES}
            self.assertEqual({f["type"] for f in viewer_frames.values()}, fake_broker.VIEWER_FRAMES)
            for name, golden in viewer_frames.items():
                await viewer.send(json.dumps(golden).encode())
                answer = await viewer.answer_to(golden["id"])
                self.assertNotEqual(answer["type"], "error", f"{name} refused: {answer}")
            # A coalesced update (no ref) after some activity.
            await viewer.send(json.dumps(fake_broker.GOLDEN_CLIENT["indicators.subscribe.directory.json"]).encode())
            await viewer.answer_to("s2")
            channel = next(iter(self.broker.channels.values()))
            channel.add_messages(3)
            self.broker.changed(channel)
            update = await viewer.next_frame()
            self.assertEqual((update["type"], "ref" in update), ("indicators", False), update)
            # Refusals: an unknown field, an agent's frame.
            await viewer.send(json.dumps({"type": "ping", "id": "x1", "extra": 1}).encode())
            self.assertEqual((await viewer.answer_to("x1"))["code"], "unknown_field")
            await viewer.send(json.dumps(fake_broker.GOLDEN_CLIENT["channel.join.json"]).encode())
            self.assertEqual((await viewer.answer_to("j1"))["code"], "not_authenticated")
            types = {f["type"] for f in viewer.received}
            self.assertEqual(types, {"hello", "pong", "directory", "indicators", "ok", "error", "peek"})
            for frame in viewer.received:
                self.assert_fits_golden(frame)
        finally:
            viewer.close()

    async def test_a_peek_through_its_phases_in_golden_shapes(self):
        """Request, confirm (the sandbox authorises), the refusal window, a grant, the channel's messages, the
        end; then a refused peek and one nobody grants. Every frame is checked against the golden ones."""
        channel = fake_broker.GOLDEN_SERVER["peek.json"]["peek"]["channel"]
        golden_message = fake_broker.GOLDEN_SERVER["messages.json"]["messages"][0]
        self.broker.channels[channel].store({k: golden_message[k] for k in fake_broker.MESSAGE_FIELDS})
        self.broker.peek_settings.update(refusal=0.2, grant=0.4, duration=0.5)
        viewer = await ViewerConnection.open(self.port, fake_broker.SUBPROTOCOL)
        try:
            await viewer.next_frame()

            async def request_and_pay(n):
                await viewer.send(json.dumps({**fake_broker.GOLDEN_CLIENT["peek.request.json"], "id": f"q{n}"}).encode())
                view = (await viewer.answer_to(f"q{n}"))["peek"]
                self.assertEqual((view["phase"], view["sandbox"], view["priceCents"]), ("awaiting_payment", True, 500))
                self.assertTrue(view["token"] and view["clientSecret"])
                await viewer.send(json.dumps({"type": "peek.confirm", "id": f"c{n}", "channel": channel,
                                              "peek": view["id"], "token": view["token"]}).encode())
                self.assertEqual((await viewer.answer_to(f"c{n}"))["peek"]["phase"], "pending")
                return self.broker.peeks[view["id"]]

            async def until(peek, phase):
                while True:
                    frame = await viewer.next_frame()
                    if frame["type"] == "peek" and frame["peek"]["phase"] == phase and frame["peek"]["id"] == peek.id:
                        return frame["peek"]

            granted = await request_and_pay(1)
            await until(granted, "awaiting_grant")
            grant = fake_broker.GOLDEN_CLIENT["peek.grant.json"]["grant"]
            granted.grant = grant
            self.broker.settle(granted, "capturing", fake_broker.PRICE_CENTS, "active")
            active = await until(granted, "active")
            self.assertEqual((active["capturedCents"], active["grant"]), (500, grant))
            history = await viewer.next_frame()
            self.assertEqual((history["type"], len(history["messages"])), ("messages", 1), history)
            ended = await until(granted, "ended")
            self.assertEqual(ended["capturedCents"], 500)

            refused = await request_and_pay(2)
            self.broker.settle(refused, "capturing", fake_broker.REFUSAL_FEE_CENTS, "refused")
            self.assertEqual((await until(refused, "refused"))["capturedCents"], 100)

            ignored = await request_and_pay(3)
            cancelled = await until(ignored, "cancelled")
            self.assertEqual((cancelled["capturedCents"], cancelled["reason"]), (0, "no grant"))

            # A wrong token is as good as no peek; a bad key is refused.
            await viewer.send(json.dumps({**fake_broker.GOLDEN_CLIENT["peek.status.json"], "token": "nope"}).encode())
            self.assertEqual((await viewer.answer_to("v3"))["code"], "not_found")
            await viewer.send(json.dumps({**fake_broker.GOLDEN_CLIENT["peek.request.json"], "viewerKey": "abc"}).encode())
            self.assertEqual((await viewer.answer_to("v1"))["code"], "invalid_field")
            self.assertEqual({f["type"] for f in viewer.received}, {"hello", "peek", "messages", "error"})
            for frame in viewer.received:
                self.assert_fits_golden(frame)
        finally:
            viewer.close()

    async def test_refuses_a_connection_without_the_subprotocol(self):
        viewer = await ViewerConnection.open(self.port, "agentchat.v0")
        try:
            self.assertTrue(viewer.response.startswith("HTTP/1.1 400"), viewer.response)
        finally:
            viewer.close()

    def test_emits_only_golden_frame_types(self):
        with self.assertRaises(ValueError):
            fake_broker.frame("teleport")


if __name__ == "__main__":
    unittest.main(verbosity=2)
