#!/usr/bin/env python3
"""A fake AgentChat broker for developing and testing the viewer page (Sources/Broker/Web).

Standard library only. One port serves:
  GET /            -> Web/index.html        (with the broker's Content-Security-Policy)
  GET /<name>      -> Web/<name>
  WebSocket (any path, the protocol's subprotocol) -> the viewer side of protocol v1:
      hello, ping/pong, directory.list, indicators.subscribe (channels or directory), indicators.unsubscribe,
      coalesced indicator updates (--indicator-rate per second), listed:false removals;
      paid peeks: peek.request, peek.confirm, peek.status, `peek` frames on every change, and while a peek is active
      the channel's `messages` (its last 50, then live). The payment is the sandbox's (confirming authorises) unless
      the peek-settings hook says otherwise; the channel's agents are the tests, through the hooks below.
  Control hooks for tests (not part of the real broker), JSON answers:
      POST /_fake/activity?channel=ID&n=N   add N messages to a channel (404 if unknown)
      POST /_fake/channel?id=ID&title=T&topic=P&members=M&online=O   create or update and list a channel
      POST /_fake/unlist?channel=ID         unlist a channel (viewers get listed:false)
      GET  /_fake/state                     every channel's indicators
      POST /_fake/messages?channel=ID       body: a JSON array of messages as agents send them (sender, id, epoch,
                                            nonce, ciphertext, signature): stored with the next offsets, counted,
                                            and delivered to active peeks of the channel
      GET  /_fake/peeks                     every peek as members see it
      POST /_fake/peek/refuse?peek=ID       an agent refuses (pending only; else 409)
      POST /_fake/peek/grant?peek=ID        body: the grant JSON; an agent grants (awaiting_grant only; else 409)
      POST /_fake/peek/end?peek=ID          an active peek ends now
      POST /_fake/peek-settings?refusal=S&grant=S&duration=S&payment=S&sandbox=0|1&publishableKey=pk_…&fail=CODE
                                            windows in seconds; sandbox=0 with a publishableKey plays Stripe (the
                                            page cannot confirm); fail=CODE answers the next peek.request with it
      POST /_fake/disconnect                closes every WebSocket connection (1001), as a broker restart would

Usage:
  python3 Tests/Browser/fake_broker.py [--port 8099] [--demo] [--state-file F] [--web DIR]
      [--peek-refusal-window 60] [--peek-grant-window 300] [--peek-duration 600] [--peek-payment-window 900]
--demo seeds a few channels and makes random activity; without it the broker is quiet until the hooks are used.
--state-file keeps the channels across restarts (like Redis does for the real broker).

The protocol is not restated here: the subprotocol is read from its definition (WireProtocol.subprotocol in
Sources/Protocol/FrameType.swift), frame type names and the fields a viewer frame may carry from the golden frames
in Tests/Golden (Tests/Browser/test_fake_broker.py checks what this fake accepts and sends against them).
"""

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import signal
import struct
import sys
import time
import urllib.parse

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
GOLDEN_DIR = os.path.join(REPO, "Tests", "Golden")
FRAME_TYPE_SWIFT = os.path.join(REPO, "Sources", "Protocol", "FrameType.swift")


def read_subprotocol(path=FRAME_TYPE_SWIFT):
    """WireProtocol.subprotocol, read from its one definition in the Swift protocol module."""
    with open(path, encoding="utf-8") as f:
        found = re.search(r'static let subprotocol = "([^"\\]+)"', f.read())
    if not found:
        raise RuntimeError(f"no WireProtocol.subprotocol in {path}")
    return found.group(1)


def load_golden(folder, directory=GOLDEN_DIR):
    """The golden frames of Tests/Golden/<folder>: file name -> parsed frame."""
    path = os.path.join(directory, folder)
    frames = {}
    for name in sorted(os.listdir(path)):
        if name.endswith(".json"):
            with open(os.path.join(path, name), encoding="utf-8") as f:
                frames[name] = json.load(f)
    if not frames:
        raise RuntimeError(f"no golden frames in {path}")
    return frames


SUBPROTOCOL = read_subprotocol()
GOLDEN_CLIENT = load_golden("client")
GOLDEN_SERVER = load_golden("server")
# Broker frame types, as the golden frames name them: frame() refuses any other.
SERVER_TYPES = {f["type"] for f in GOLDEN_SERVER.values()}
# What a viewer (an unauthenticated connection) may send, each with the fields its golden frames carry.
VIEWER_FRAMES = {"ping", "directory.list", "indicators.subscribe", "indicators.unsubscribe", "peek.request",
                 "peek.confirm", "peek.status"}
ALLOWED_FIELDS = {t: set().union(*(f.keys() for f in GOLDEN_CLIENT.values() if f["type"] == t)) for t in VIEWER_FRAMES}
if not all(ALLOWED_FIELDS.values()):
    raise RuntimeError(f"no golden client frame for {[t for t, v in ALLOWED_FIELDS.items() if not v]}")
TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".txt": "text/plain; charset=utf-8",
}


MESSAGE_FIELDS = ("ciphertext", "epoch", "id", "nonce", "sender", "signature")
HISTORY_KEPT = 200
PEEK_HISTORY = 50            # messages of recent history an active peek starts with, as the real broker
PRICE_CENTS, REFUSAL_FEE_CENTS = 500, 100
SETTLE_SECONDS = 0.3         # how long `capturing` and `cancelling` last here
FINAL_PHASES = {"refused", "ended", "cancelled", "failed"}


def b64url(raw):
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def b64url_decode(text):
    """Strict base64url without padding; None when malformed."""
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return raw if b64url(raw) == text else None


class Peek:
    """A paid peek as the broker keeps it (docs/PROTOCOL.md, "Paid peeks")."""

    def __init__(self, pid, channel, viewer_key, token, sandbox=True, publishable_key=None):
        self.id = pid
        self.channel = channel
        self.viewer_key = viewer_key
        self.token = token
        self.sandbox = sandbox
        self.publishable_key = publishable_key
        self.phase = "awaiting_payment"
        self.deadline = None
        self.captured = 0
        self.reason = None
        self.grant = None
        self.timer = None
        self.followers = set()  # viewer connections following the peek

    def view(self, viewer=True):
        v = {"id": self.id, "channel": self.channel, "phase": self.phase, "priceCents": PRICE_CENTS,
             "refusalFeeCents": REFUSAL_FEE_CENTS, "capturedCents": self.captured, "viewerKey": self.viewer_key,
             "sandbox": self.sandbox}
        if self.deadline is not None:
            v["deadline"] = self.deadline
        if self.reason:
            v["reason"] = self.reason
        if viewer and self.publishable_key:
            v["publishableKey"] = self.publishable_key
        if viewer and self.grant and self.phase in ("active", "ended"):
            v["grant"] = self.grant
        return v


def frame(type_, **fields):
    """A broker frame of a type the golden frames know."""
    if type_ not in SERVER_TYPES:
        raise ValueError(f"not a broker frame type: {type_}")
    return {"type": type_, **fields}


def now_ms():
    return int(time.time() * 1000)


def compact(obj):
    return json.dumps(obj, separators=(",", ":"), sort_keys=True)


def new_channel_id():
    return "ch_" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")


class Channel:
    def __init__(self, cid, title, topic="", members=1, online=0, messages=0, listed=True):
        self.id = cid
        self.title = title
        self.topic = topic
        self.members = members
        self.online = online
        self.messages = messages
        self.listed = listed
        self.times = []  # message times (ms) within the last minute
        self.last_activity = 0
        self.peeks = 0
        self.peeks_active = 0
        self.history = []  # stored messages (as a `messages` frame carries them), the latest HISTORY_KEPT

    def store(self, message):
        """Appends an agent's message with the next offset; returns the stored message."""
        self.add_messages(1)
        stored = {"offset": self.messages, **{k: message[k] for k in MESSAGE_FIELDS}, "ts": now_ms()}
        self.history.append(stored)
        del self.history[:-HISTORY_KEPT]
        return stored

    def add_messages(self, n):
        t = now_ms()
        self.messages += n
        self.times.extend([t] * min(n, 100000))
        self.last_activity = t - t % 10000

    def last_minute(self):
        cutoff = now_ms() - 60000
        while self.times and self.times[0] <= cutoff:
            self.times.pop(0)
        return len(self.times)

    def indicators(self):
        if not self.listed:
            return {"id": self.id, "listed": False}
        return {"id": self.id, "title": self.title, "topic": self.topic, "listed": True, "members": self.members,
                "online": self.online, "messages": self.messages, "messagesLastMinute": self.last_minute(),
                "lastActivity": self.last_activity, "peeks": self.peeks, "peeksActive": self.peeks_active}

    def to_state(self):
        return {"id": self.id, "title": self.title, "topic": self.topic, "members": self.members,
                "online": self.online, "messages": self.messages, "listed": self.listed,
                "lastActivity": self.last_activity}

    @classmethod
    def from_state(cls, s):
        c = cls(s["id"], s["title"], s.get("topic", ""), s.get("members", 1), s.get("online", 0),
                s.get("messages", 0), s.get("listed", True))
        c.last_activity = s.get("lastActivity", 0)
        return c


class Viewer:
    def __init__(self, broker, writer):
        self.broker = broker
        self.writer = writer
        self.directory = False
        self.channels = set()
        self.dirty = {}  # id -> indicators, latest wins
        self.closed = False
        self.peeks = set()    # peeks this connection follows
        self.reading = set()  # channels whose messages it receives (active peeks)

    def subscribed(self, cid):
        return self.directory or cid in self.channels

    async def send(self, obj):
        if self.closed:
            return
        try:
            self.writer.write(ws_frame(0x1, compact(obj).encode()))
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            self.closed = True


class Broker:
    def __init__(self, web_dir, state_file=None, rate=4.0, demo=False, refusal_window=60.0, grant_window=300.0,
                 peek_duration=600.0, payment_window=900.0):
        self.peeks = {}
        self.peek_settings = {"refusal": refusal_window, "grant": grant_window, "duration": peek_duration,
                              "payment": payment_window, "sandbox": True, "publishableKey": None, "fail": None}
        self.web_dir = os.path.abspath(web_dir)
        self.state_file = state_file
        self.rate = rate
        self.demo = demo
        self.channels = {}
        self.viewers = set()
        self.writers = set()
        self.load()
        if demo and not self.channels:
            self.seed()

    # -- state
    def load(self):
        if self.state_file and os.path.exists(self.state_file):
            with open(self.state_file) as f:
                for s in json.load(f):
                    c = Channel.from_state(s)
                    self.channels[c.id] = c

    def save(self):
        if not self.state_file:
            return
        tmp = self.state_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump([c.to_state() for c in self.channels.values()], f)
        os.replace(tmp, self.state_file)

    def seed(self):
        for title, topic, members in [
            ("Market makers", "prices, hourly", 4),
            ("Research swarm", "literature review for protein folding papers", 12),
            ("Support triage", "routing customer tickets to specialist agents", 6),
            ("Night shift", "", 2),
            ("Translation relay", "EN ↔ JA ↔ DE, legal documents", 3),
        ]:
            c = Channel(new_channel_id(), title, topic, members, random.randint(0, members),
                        random.randint(0, 5000))
            if c.messages:
                c.last_activity = now_ms() - random.randint(0, 3600) * 1000
                c.last_activity -= c.last_activity % 10000
            self.channels[c.id] = c
        self.save()

    # -- changes
    def changed(self, c):
        ind = c.indicators()
        for v in self.viewers:
            if v.subscribed(c.id):
                v.dirty[c.id] = ind
        if not c.listed:
            for v in self.viewers:
                v.channels.discard(c.id)
        self.save()

    async def demo_loop(self):
        while True:
            await asyncio.sleep(random.uniform(0.3, 1.5))
            listed = [c for c in self.channels.values() if c.listed]
            if not listed:
                continue
            c = random.choice(listed)
            if random.random() < 0.15:
                c.online = max(0, min(c.members, c.online + random.choice([-1, 1])))
            else:
                c.add_messages(random.randint(1, 8))
            self.changed(c)

    async def minute_loop(self):
        """messagesLastMinute decays without new messages: refresh channels whose window moved."""
        last = {}
        while True:
            await asyncio.sleep(1)
            for c in self.channels.values():
                if not c.listed:
                    continue
                n = c.last_minute()
                if last.get(c.id, n) != n:
                    self.changed(c)
                last[c.id] = n

    async def flush_loop(self, viewer):
        interval = 1.0 / self.rate
        while not viewer.closed:
            await asyncio.sleep(interval)
            if viewer.dirty:
                batch = list(viewer.dirty.values())
                viewer.dirty.clear()
                await viewer.send(frame("indicators", channels=batch))

    # -- HTTP
    async def handle(self, reader, writer):
        self.writers.add(writer)
        try:
            await self.handle_inner(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self.writers.discard(writer)
            try:
                writer.close()
            except Exception:
                pass

    async def handle_inner(self, reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            try:
                method, target, _ = lines[0].split(" ", 2)
            except ValueError:
                return
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    k, v = line.split(":", 1)
                    headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0") or 0)
            body = await reader.readexactly(length) if length else b""
            if headers.get("upgrade", "").lower() == "websocket":
                await self.websocket(reader, writer, headers)
                return
            url = urllib.parse.urlsplit(target)
            await self.http(writer, method, url.path, urllib.parse.parse_qs(url.query), body)
            if headers.get("connection", "").lower() == "close":
                return

    def respond(self, writer, status, body, ctype="application/json", extra=None):
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
                  409: "Conflict"}.get(status, "OK")
        hdrs = {"Content-Type": ctype, "Content-Length": str(len(body)), "Cache-Control": "no-cache",
                "X-Content-Type-Options": "nosniff", "Content-Security-Policy": CSP,
                "Referrer-Policy": "no-referrer"}
        hdrs.update(extra or {})
        out = f"HTTP/1.1 {status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
        writer.write(out.encode() + body)

    def error(self, writer, status, code, message):
        self.respond(writer, status, compact({"error": {"code": code, "message": message}}).encode())

    async def http(self, writer, method, path, query, body=b""):
        q = {k: v[0] for k, v in query.items()}
        if path.startswith("/_fake/"):
            await self.control(writer, method, path, q, body)
        elif path == "/health":
            self.respond(writer, 200, compact({"status": "healthy", "timestamp": now_ms()}).encode())
        elif method not in ("GET", "HEAD"):
            self.error(writer, 405, "method_not_allowed", "GET only")
        else:
            name = "index.html" if path == "/" else path[1:]
            full = os.path.join(self.web_dir, name)
            if ("/" in name or name.startswith(".") or not os.path.isfile(full)):
                self.error(writer, 404, "not_found", "no such file")
            else:
                with open(full, "rb") as f:
                    body = f.read()
                ctype = TYPES.get(os.path.splitext(name)[1], "application/octet-stream")
                self.respond(writer, 200, b"" if method == "HEAD" else body, ctype)
        await writer.drain()

    async def control(self, writer, method, path, q, body=b""):
        if method != "POST" and path not in ("/_fake/state", "/_fake/peeks"):
            self.error(writer, 405, "method_not_allowed", "POST")
            return
        if path.startswith("/_fake/peek") or path in ("/_fake/messages", "/_fake/disconnect"):
            await self.peek_control(writer, path, q, body)
        elif path == "/_fake/state":
            self.respond(writer, 200, compact([c.indicators() for c in self.channels.values()]).encode())
        elif path == "/_fake/channel":
            cid = q.get("id") or new_channel_id()
            c = self.channels.get(cid) or Channel(cid, q.get("title", "Untitled"))
            c.title = q.get("title", c.title)
            c.topic = q.get("topic", c.topic)
            c.members = int(q.get("members", c.members))
            c.online = int(q.get("online", c.online))
            c.listed = True
            self.channels[cid] = c
            self.changed(c)
            self.respond(writer, 200, compact(c.indicators()).encode())
        elif path == "/_fake/activity":
            c = self.channels.get(q.get("channel", ""))
            if not c:
                self.error(writer, 404, "not_found", "no such channel")
                return
            c.add_messages(int(q.get("n", "1")))
            if "online" in q:
                c.online = int(q["online"])
            if c.listed:
                self.changed(c)
            else:
                self.save()
            self.respond(writer, 200, compact(c.indicators()).encode())
        elif path == "/_fake/unlist":
            c = self.channels.get(q.get("channel", ""))
            if not c:
                self.error(writer, 404, "not_found", "no such channel")
                return
            c.listed = False
            self.changed(c)
            self.respond(writer, 200, b"{}")
        else:
            self.error(writer, 404, "not_found", "no such hook")

    # -- paid peeks
    async def peek_control(self, writer, path, q, body):
        if path == "/_fake/peeks":
            self.respond(writer, 200, compact([p.view(viewer=False) for p in self.peeks.values()]).encode())
        elif path == "/_fake/peek-settings":
            for k in ("refusal", "grant", "duration", "payment"):
                if k in q:
                    self.peek_settings[k] = float(q[k])
            if "sandbox" in q:
                self.peek_settings["sandbox"] = q["sandbox"] not in ("0", "false")
            if "publishableKey" in q:
                self.peek_settings["publishableKey"] = q["publishableKey"] or None
            if "fail" in q:
                self.peek_settings["fail"] = q["fail"] or None
            self.respond(writer, 200, compact(self.peek_settings).encode())
        elif path == "/_fake/messages":
            c = self.channels.get(q.get("channel", ""))
            try:
                messages = json.loads(body or b"[]")
                assert isinstance(messages, list) and all(set(MESSAGE_FIELDS) <= set(m) for m in messages)
            except (ValueError, AssertionError):
                self.error(writer, 400, "bad_json", "a JSON array of messages")
                return
            if not c:
                self.error(writer, 404, "not_found", "no such channel")
                return
            stored = [c.store(m) for m in messages]
            self.changed(c)
            await self.deliver(c, stored)
            self.respond(writer, 200, compact({"offsets": [m["offset"] for m in stored]}).encode())
        elif path == "/_fake/disconnect":
            n = len(self.viewers)
            for v in list(self.viewers):
                v.closed = True
                try:
                    v.writer.write(ws_frame(0x8, struct.pack("!H", 1001)))
                    v.writer.close()
                except Exception:
                    pass
            self.respond(writer, 200, compact({"closed": n}).encode())
        elif path in ("/_fake/peek/refuse", "/_fake/peek/grant", "/_fake/peek/end"):
            p = self.peeks.get(q.get("peek", ""))
            if not p:
                self.error(writer, 404, "not_found", "no such peek")
                return
            if path.endswith("refuse"):
                if p.phase != "pending":
                    self.error(writer, 409, "peek_not_refusable", f"the peek is {p.phase}")
                    return
                self.settle(p, "capturing", REFUSAL_FEE_CENTS, "refused")
            elif path.endswith("grant"):
                if p.phase != "awaiting_grant":
                    self.error(writer, 409, "peek_not_grantable", f"the peek is {p.phase}")
                    return
                try:
                    p.grant = json.loads(body)
                except ValueError:
                    self.error(writer, 400, "bad_json", "the grant")
                    return
                self.settle(p, "capturing", PRICE_CENTS, "active")
            else:
                if p.phase != "active":
                    self.error(writer, 409, "invalid_field", f"the peek is {p.phase}")
                    return
                self.move(p, "ended")
            self.respond(writer, 200, b"{}")
        else:
            self.error(writer, 404, "not_found", "no such hook")

    def schedule(self, p, seconds, then):
        if p.timer:
            p.timer.cancel()
        p.deadline = now_ms() + int(seconds * 1000)
        p.timer = asyncio.get_running_loop().call_later(seconds, then)

    def move(self, p, phase, reason=None, tell=True):
        """A transition; everything that follows from it (deadlines, counters, frames to followers)."""
        if p.timer:
            p.timer.cancel()
            p.timer = None
        c = self.channels.get(p.channel)
        if p.phase == "active" and c:
            c.peeks_active = max(0, c.peeks_active - 1)
        p.phase = phase
        p.reason = reason or p.reason
        p.deadline = None
        if phase == "pending":
            self.schedule(p, self.peek_settings["refusal"], lambda: self.move(p, "awaiting_grant"))
        elif phase == "awaiting_grant":
            self.schedule(p, self.peek_settings["grant"], lambda: self.settle(p, "cancelling", 0, "cancelled",
                                                                              "no grant"))
        elif phase == "awaiting_payment":
            self.schedule(p, self.peek_settings["payment"], lambda: self.settle(p, "cancelling", 0, "cancelled",
                                                                                "unpaid"))
        elif phase == "active":
            self.schedule(p, self.peek_settings["duration"], lambda: self.move(p, "ended"))
            if c:
                c.peeks += 1
                c.peeks_active += 1
        if c and phase in ("active", "ended"):
            self.changed(c)
        if tell:
            asyncio.get_running_loop().create_task(self.tell(p))

    def settle(self, p, via, cents, phase, reason=None):
        """`capturing` or `cancelling` for a moment, then the outcome (what the gateway answers, here at once)."""
        self.move(p, via)

        def done():
            p.captured = cents
            self.move(p, phase, reason)
        p.timer = asyncio.get_running_loop().call_later(SETTLE_SECONDS, done)

    async def tell(self, p):
        for v in list(p.followers):
            if v.closed:
                p.followers.discard(v)
                continue
            await v.send(frame("peek", peek=p.view()))
            await self.follow_messages(v, p)

    async def follow_messages(self, viewer, p):
        """An active peek's follower reads the channel: its recent history once, then live messages."""
        c = self.channels.get(p.channel)
        if p.phase == "active" and c and p.channel not in viewer.reading:
            viewer.reading.add(p.channel)
            recent = c.history[-PEEK_HISTORY:]
            if recent:
                await viewer.send(frame("messages", channel=c.id, messages=recent))
        elif p.phase in FINAL_PHASES:
            viewer.reading.discard(p.channel)

    async def deliver(self, c, stored):
        if not stored:
            return
        for v in list(self.viewers):
            if c.id in v.reading:
                await v.send(frame("messages", channel=c.id, messages=stored))

    def seed_peek(self, pid, channel, viewer_key, token, phase="awaiting_payment"):
        """A peek with a known id and token (the golden frames' own)."""
        p = Peek(pid, channel, viewer_key, token, self.peek_settings["sandbox"], self.peek_settings["publishableKey"])
        p.phase = phase
        self.peeks[pid] = p
        return p

    async def on_peek_frame(self, viewer, t, request, err, reply):
        channel = request.get("channel")
        if not isinstance(channel, str):
            await viewer.send(err("missing_field", "channel"))
            return
        if t == "peek.request":
            key = b64url_decode(request.get("viewerKey"))
            if key is None or len(key) != 32:
                await viewer.send(err("invalid_field", "viewerKey: 32 bytes, base64url"))
                return
            c = self.channels.get(channel)
            if not c or not c.listed:
                await viewer.send(err("not_found", f"{channel} is not a listed channel"))
                return
            failure, self.peek_settings["fail"] = self.peek_settings["fail"], None
            if failure:
                await viewer.send(err(failure, "the fake was told to refuse this request"))
                return
            p = Peek("pk_" + b64url(os.urandom(16)), channel, request["viewerKey"], b64url(os.urandom(24)),
                     self.peek_settings["sandbox"], self.peek_settings["publishableKey"])
            self.peeks[p.id] = p
            self.move(p, "awaiting_payment", tell=False)
            p.followers.add(viewer)
            viewer.peeks.add(p.id)
            out = p.view()
            out["token"] = p.token
            out["clientSecret"] = f"pi_{'sandbox' if p.sandbox else 'fake'}_{b64url(os.urandom(6))}_secret_{b64url(os.urandom(6))}"
            await viewer.send(reply(frame("peek", peek=out)))
            return
        p = self.peeks.get(request.get("peek"))
        if not p or p.channel != channel or request.get("token") != p.token:
            await viewer.send(err("not_found", "no such peek"))
            return
        p.followers.add(viewer)
        viewer.peeks.add(p.id)
        if t == "peek.confirm" and p.phase == "awaiting_payment" and p.sandbox:
            self.move(p, "pending")
        await viewer.send(reply(frame("peek", peek=p.view())))
        await self.follow_messages(viewer, p)

    # -- WebSocket
    async def websocket(self, reader, writer, headers):
        offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
        key = headers.get("sec-websocket-key")
        if SUBPROTOCOL not in offered or not key:
            self.error(writer, 400, "subprotocol_required", "offer agentchat.v1")
            await writer.drain()
            return
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        writer.write(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n").encode())
        viewer = Viewer(self, writer)
        self.viewers.add(viewer)
        flusher = asyncio.create_task(self.flush_loop(viewer))
        try:
            challenge = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
            await viewer.send(frame("hello", broker="http://fake", challenge=challenge, expiresAt=now_ms() + 60000))
            message = b""
            while True:
                opcode, payload, fin = await read_ws_frame(reader)
                if opcode == 0x8:
                    writer.write(ws_frame(0x8, payload[:2]))
                    await writer.drain()
                    return
                if opcode == 0x9:
                    writer.write(ws_frame(0xA, payload))
                    await writer.drain()
                    continue
                if opcode == 0xA:
                    continue
                if opcode == 0x2:
                    await viewer.send(frame("error", code="binary_not_supported", message="text only"))
                    continue
                message += payload
                if not fin:
                    continue
                text, message = message.decode("utf-8"), b""
                await self.on_frame(viewer, text)
        finally:
            viewer.closed = True
            self.viewers.discard(viewer)
            for pid in viewer.peeks:
                if pid in self.peeks:
                    self.peeks[pid].followers.discard(viewer)
            flusher.cancel()

    async def on_frame(self, viewer, text):
        try:
            request = json.loads(text)
        except ValueError:
            await viewer.send(frame("error", code="bad_json", message="not JSON"))
            return
        if not isinstance(request, dict) or not isinstance(request.get("type"), str):
            await viewer.send(frame("error", code="bad_frame", message="not a frame"))
            return
        t, fid = request["type"], request.get("id")

        def err(code, message):
            e = frame("error", code=code, message=message)
            if isinstance(fid, str):
                e["ref"] = fid
            return e

        def reply(obj):
            if isinstance(fid, str):
                obj["ref"] = fid
            return obj

        if t not in VIEWER_FRAMES:
            await viewer.send(err("not_authenticated", f"{t} needs an authenticated connection"))
            return
        unknown = set(request) - ALLOWED_FIELDS[t]
        if unknown:
            await viewer.send(err("unknown_field", f"unknown field {sorted(unknown)[0]!r}"))
            return
        if t.startswith("peek."):
            await self.on_peek_frame(viewer, t, request, err, reply)
            return
        if t == "ping":
            await viewer.send(reply(frame("pong", time=now_ms())))
        elif t == "directory.list":
            limit, cursor = request.get("limit", 20), request.get("cursor", 0)
            if not isinstance(limit, int) or not 1 <= limit <= 100 or not isinstance(cursor, int) or cursor < 0:
                await viewer.send(err("invalid_field", "limit 1-100, cursor >= 0"))
                return
            listed = sorted((c for c in self.channels.values() if c.listed), key=lambda c: -c.last_activity)
            page = listed[cursor:cursor + limit]
            out = frame("directory", channels=[c.indicators() for c in page])
            if cursor + limit < len(listed):
                out["next"] = cursor + limit
            await viewer.send(reply(out))
        elif t == "indicators.subscribe":
            if request.get("directory") is True:
                viewer.directory = True
                snap = [c.indicators() for c in self.channels.values() if c.listed]
            else:
                ids = request.get("channels")
                if not isinstance(ids, list) or not ids or len(ids) > 100:
                    await viewer.send(err("invalid_field", "channels: 1-100 ids"))
                    return
                if any(not (isinstance(i, str) and i in self.channels and self.channels[i].listed) for i in ids):
                    await viewer.send(err("not_found", "no such listed channel"))
                    return
                viewer.channels.update(ids)
                snap = [self.channels[i].indicators() for i in ids]
            for c in snap:
                viewer.dirty.pop(c["id"], None)
            await viewer.send(reply(frame("indicators", channels=snap)))
        elif t == "indicators.unsubscribe":
            viewer.directory = False
            viewer.channels.clear()
            viewer.dirty.clear()
            await viewer.send(reply(frame("ok")))

    async def shutdown(self):
        for v in list(self.viewers):
            try:
                v.writer.write(ws_frame(0x8, struct.pack("!H", 1001)))
            except Exception:
                pass
        for w in list(self.writers):
            try:
                w.close()
            except Exception:
                pass


def ws_frame(opcode, payload):
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


async def read_ws_frame(reader):
    b1, b2 = await reader.readexactly(2)
    fin, opcode = bool(b1 & 0x80), b1 & 0x0F
    masked, n = bool(b2 & 0x80), b2 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    if n > 1 << 20:
        raise ConnectionError("frame too large")
    mask = await reader.readexactly(4) if masked else b"\0\0\0\0"
    data = bytearray(await reader.readexactly(n))
    for i in range(n):
        data[i] ^= mask[i % 4]
    return opcode, bytes(data), fin


async def main():
    here = HERE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8099)
    ap.add_argument("--web", default=os.path.join(here, "..", "..", "Sources", "Broker", "Web"))
    ap.add_argument("--state-file")
    ap.add_argument("--indicator-rate", type=float, default=4.0)
    ap.add_argument("--demo", action="store_true", help="seed channels and make random activity")
    ap.add_argument("--peek-refusal-window", type=float, default=60.0)
    ap.add_argument("--peek-grant-window", type=float, default=300.0)
    ap.add_argument("--peek-duration", type=float, default=600.0)
    ap.add_argument("--peek-payment-window", type=float, default=900.0)
    args = ap.parse_args()

    broker = Broker(args.web, args.state_file, args.indicator_rate, args.demo, args.peek_refusal_window,
                    args.peek_grant_window, args.peek_duration, args.peek_payment_window)
    server = await asyncio.start_server(broker.handle, args.host, args.port, reuse_address=True)
    tasks = [asyncio.create_task(broker.minute_loop())]
    if args.demo:
        tasks.append(asyncio.create_task(broker.demo_loop()))
    port = server.sockets[0].getsockname()[1]
    print(f"fake broker listening on http://{args.host}:{port}", flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    await broker.shutdown()
    for t in tasks:
        t.cancel()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
