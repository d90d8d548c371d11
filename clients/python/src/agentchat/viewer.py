"""``Viewer``: a viewer's connection to an AgentChat broker (docs/PROTOCOL.md, "Public indicators (viewers)" and
"Paid peeks"), on asyncio. What the viewer page does, for programs:

- No login: the WebSocket (subprotocol ``agentchat.v1``) answers with ``hello``, and the viewer sends viewer frames
  instead of ``auth``: ``directory.list``, ``indicators.subscribe`` / ``indicators.unsubscribe``, ``peek.request``,
  ``peek.confirm``, ``peek.status`` (and ``ping``). Anything else is refused by the broker with
  ``not_authenticated`` (and after 5 such frames the broker closes the connection with 4001).
- Indicators: pages of the directory of listed channels, and subscriptions that yield a snapshot, then coalesced
  updates; a channel that stops being listed is reported once with ``listed`` False.
- Paid peeks: the viewer's X25519 key pair is made here (its private key never leaves the process); once a peek is
  active, the member's grant is verified (Ed25519, against the sender's DID) and opened (X25519, HKDF-SHA256,
  AES-256-GCM) and every message the viewer receives is verified and decrypted by the same code the agent's client
  uses (:mod:`agentchat.messages`).

Connection loss: requests waiting for an answer fail with ``network_error``. With ``ClientConfig.auto_reconnect``
(the default) the viewer reconnects with the configured backoff, then subscribes to the indicators again (the fresh
snapshot is yielded as an :class:`IndicatorUpdate` with ``resubscribed`` True) and asks ``peek.status`` for every
peek it follows (the broker then sends an active peek's last messages again; those already received are skipped by
offset). It does not reconnect after the broker closed with 1008 (too many viewer connections from this address)
or 4001 (too many frames before logging in). When it does not reconnect, or gives up (``backoff.max_attempts``),
every open stream ends by raising that :class:`AgentChatError` (``network_error`` with ``close_code``).
:meth:`Viewer.close` ends them without an error.

Frames: the broker allows a viewer ``--viewer-frames-per-second`` (default 10, bursts of 20) and drops frames over
that with a ``rate_limited`` error whose ``ref`` is the dropped frame's ``id``; the viewer paces what it sends to
``frames_per_second`` (default 10, bursts of 10) so that it stays under the default budget, and a request whose
frame was dropped anyway fails with ``rate_limited``. Channel and peek ids are checked before they are sent
(``invalid_argument``), since the broker counts every viewer frame it cannot decode towards the 5 refused frames
that close a connection that has not logged in (a count never reset, however long the viewer stays connected).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Generic, Self, TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from . import frames
from .config import ClientConfig, ConnectionState
from .connection import Connection
from .crypto import KEY_LENGTH, unwrap_grant, verify_grant
from .encoding import b64url_decode, b64url_encode
from .errors import AgentChatError, Category, Codes
from .messages import verify_stored_message
from .types import ChannelIndicators, ChannelMessage, DirectoryPage, IndicatorUpdate, PeekGrant, PeekView

__all__ = ["Viewer", "IndicatorSubscription", "ViewerPeek", "ViewerPeekEvent"]

#: What :class:`ViewerPeek` yields: the peek's state (every ``peek`` frame, answers included) and the channel's
#: messages while it is active.
ViewerPeekEvent = PeekView | ChannelMessage

_MAX_SUBSCRIBE_CHANNELS = 100
_RAW_PUBLIC = (serialization.Encoding.Raw, serialization.PublicFormat.Raw)
T = TypeVar("T")


def _check_id(value: object, prefix: str, what: str) -> str:
    """An id as the broker reads one (``prefix`` and 22 base64url characters of 16 bytes). Checked here because the
    broker counts a viewer frame it cannot decode towards closing the connection (4001 after 5)."""
    if not isinstance(value, str) or not value.startswith(prefix) or len(value) != 25:
        raise AgentChatError.invalid_argument(f"not a {what} id: {value!r}")
    raw = b64url_decode(value[3:])
    if raw is None or len(raw) != 16:
        raise AgentChatError.invalid_argument(f"not a {what} id: {value!r}")
    return value


def _check_channel(channel: object) -> str:
    return _check_id(channel, "ch_", "channel")


def _check_peek(peek: object) -> str:
    return _check_id(peek, "pk_", "peek")


@dataclass
class _End:
    error: AgentChatError | None


class _Stream(Generic[T]):
    """What the reader queues for the application and the application iterates, until it ends (once): without an
    error iteration stops; with one, iteration raises it."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue()
        self._ended = False
        self._done = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        if self._done:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._done = True
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        return item

    @property
    def ended(self) -> bool:
        return self._ended

    def _end(self, error: AgentChatError | None) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_End(error))


class _Pacer:
    """A token bucket for the frames the viewer sends: waits instead of letting the broker drop a frame."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = time.monotonic()

    async def take(self) -> None:
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return
            await asyncio.sleep((1 - self.tokens) / self.rate)


class IndicatorSubscription(_Stream[IndicatorUpdate]):
    """A subscription to public indicators (:meth:`Viewer.subscribe_indicators`, :meth:`Viewer.subscribe_directory`).

    ``snapshot`` is the broker's answer; iterating yields :class:`IndicatorUpdate` as they come (``latest`` keeps the
    newest indicators of every channel). A channel that stops being listed comes once with ``listed`` False; a
    subscription to given channels ends (iteration stops) once none of them is listed any more. :meth:`close` (or
    :meth:`Viewer.unsubscribe_indicators`) ends it; a lost connection the viewer does not recover from ends it by
    raising the :class:`AgentChatError`.
    """

    def __init__(self, viewer: Viewer, channels: tuple[str, ...] | None) -> None:
        super().__init__()
        self._viewer = viewer
        #: True for the whole directory (every listed channel, including ones listed later).
        self.directory = channels is None
        #: The channels asked for (empty for the directory).
        self.channels: tuple[str, ...] = channels or ()
        self.snapshot: tuple[ChannelIndicators, ...] = ()
        #: The newest indicators of every channel this subscription has reported (listed or not).
        self.latest: dict[str, ChannelIndicators] = {}
        #: Channels currently listed, as far as this subscription knows.
        self._listed: set[str] = set()
        #: The answer to the (re)subscription on the current connection arrived: updates may follow.
        self._ready = False

    async def next_update(self, timeout: float | None = None) -> IndicatorUpdate:
        """The next update; raises ``timeout`` when none comes in time, ``client_closed`` when the subscription
        ended, or the error that ended it."""
        try:
            async with asyncio.timeout(timeout):
                return await self.__anext__()
        except TimeoutError:
            raise AgentChatError.timeout(f"no indicator update within {timeout} s") from None
        except StopAsyncIteration:
            raise AgentChatError.closed() from None

    async def close(self) -> None:
        """Unsubscribes (``indicators.unsubscribe``) if this is the viewer's current subscription; ends iteration."""
        if self._viewer._indicators is self:
            await self._viewer.unsubscribe_indicators()
        else:
            self._end(None)

    async def __aenter__(self) -> IndicatorSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # the reader's side

    def _take_snapshot(self, frame: dict[str, Any], resubscribed: bool) -> None:
        items = frame.get("channels")
        if frame.get("type") != "indicators" or not isinstance(items, list):
            raise AgentChatError.protocol(f"expected indicators, got {frame.get('type')}")
        channels = [ChannelIndicators.from_json(item) for item in items]
        if not resubscribed:
            self.snapshot = tuple(channels)
            for indicators in channels:
                self._note(indicators)
        else:
            # Channels that were listed before the connection dropped and are missing now were unlisted meanwhile.
            present = {c.id for c in channels}
            gone = [ChannelIndicators(channel, False) for channel in sorted(self._listed - present)]
            self._publish(IndicatorUpdate(tuple(channels) + tuple(gone), resubscribed=True))
        self._ready = True

    def _update(self, frame: dict[str, Any]) -> None:
        items = frame.get("channels")
        if not self._ready or self._ended or not isinstance(items, list):
            return
        changed: list[ChannelIndicators] = []
        for item in items:
            try:
                changed.append(ChannelIndicators.from_json(item))
            except AgentChatError:
                continue  # a malformed entry is dropped; the next update carries the channel whole again
        if changed:
            self._publish(IndicatorUpdate(tuple(changed)))

    def _publish(self, update: IndicatorUpdate) -> None:
        for indicators in update.channels:
            self._note(indicators)
        self._queue.put_nowait(update)
        if not self.directory and not self._listed:
            self._end(None)  # none of the channels is listed any more: the broker sends nothing more
            if self._viewer._indicators is self:
                self._viewer._indicators = None

    def _note(self, indicators: ChannelIndicators) -> None:
        self.latest[indicators.id] = indicators
        if indicators.listed:
            self._listed.add(indicators.id)
        else:
            self._listed.discard(indicators.id)


class ViewerPeek(_Stream[ViewerPeekEvent]):
    """A paid peek this viewer asked for (:meth:`Viewer.request_peek`) or resumed (:meth:`Viewer.resume_peek`).

    :meth:`confirm` and :meth:`status` make the connection follow the peek. Iterating yields every
    :class:`PeekView` the broker sends about it (answers included) and, while it is active, the channel's messages
    as :class:`ChannelMessage`: verified against the sender's DID, and decrypted when they belong to the granted
    epoch (others are ``key_unavailable``: a grant covers one epoch). Messages come in offset order, each once.
    Iteration stops after the peek's final phase (``refused``, ``ended``, ``cancelled``, ``failed``).

    When the peek becomes active the grant is verified and opened at once: ``grant_epoch`` is then set, or
    ``grant_error`` (``bad_signature``: not signed by its sender for this peek and key; ``decryption_failed``: it
    does not open with this viewer's key), and the messages are all ``key_unavailable``.
    """

    def __init__(self, viewer: Viewer, channel: str, peek: str, token: str, viewer_secret: bytes) -> None:
        super().__init__()
        self._viewer = viewer
        self.channel = channel
        self.id = peek
        self._token = token
        self._secret = viewer_secret
        #: The viewer's X25519 public key, as sent in ``peek.request``.
        self.viewer_key: bytes = X25519PrivateKey.from_private_bytes(viewer_secret).public_key() \
            .public_bytes(*_RAW_PUBLIC)
        #: Every state the broker reported, oldest first.
        self.history: list[PeekView] = []
        self.grant: PeekGrant | None = None
        self.grant_epoch: int | None = None
        self.grant_error: AgentChatError | None = None
        self._key: bytes | None = None
        self._last_offset = 0
        #: ``peek.confirm`` or ``peek.status`` was sent: the broker tells this connection of every change.
        self._following = False
        self._changed = asyncio.Event()
        self._end_error: AgentChatError | None = None

    def __repr__(self) -> str:
        phase = self.history[-1].phase if self.history else None
        return f"ViewerPeek(id={self.id!r}, channel={self.channel!r}, phase={phase!r})"

    @property
    def token(self) -> str:
        """Proves the peek is this viewer's (keep it with :meth:`viewer_secret` to resume it). A password."""
        return self._token

    def viewer_secret(self) -> bytes:
        """The viewer's X25519 private key of this peek (32 bytes): what :meth:`Viewer.resume_peek` needs to open
        the grant in another process. Keep it secret."""
        return self._secret

    @property
    def view(self) -> PeekView:
        """The newest state the broker reported."""
        if not self.history:
            raise AgentChatError(Codes.NOT_CONNECTED, Category.STATE, f"no state of peek {self.id} yet")
        return self.history[-1]

    @property
    def phase(self) -> str | None:
        return self.history[-1].phase if self.history else None

    async def confirm(self) -> PeekView:
        """``peek.confirm``: the payment was confirmed (in the broker's sandbox this authorises it). The connection
        follows the peek from now on (an active peek's last messages are sent, as after :meth:`status`). Raises
        ``not_found`` (wrong token), ``network_error``, ..."""
        return await self._ask(frames.peek_confirm(self.channel, self.id, self._token))

    async def status(self) -> PeekView:
        """``peek.status``: where the peek is; the connection follows it from now on (an active peek's last
        messages are sent again, and skipped here when already received)."""
        return await self._ask(frames.peek_status(self.channel, self.id, self._token))

    async def wait_for(self, *phases: str, timeout: float | None = None) -> PeekView:
        """The first state the broker reported in one of ``phases`` (earlier ones count), or the final state if the
        peek ended without reaching one (check its ``phase``). Raises ``timeout``, or the error that ended the
        stream."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for view in self.history:
                        if view.phase in phases:
                            return view
                    if self.history and self.history[-1].is_final:
                        return self.history[-1]
                    if self._ended:
                        raise self._end_error or AgentChatError.closed()
                    await self._changed.wait()
        except TimeoutError:
            raise AgentChatError.timeout(f"peek {self.id} not in {', '.join(phases)} within {timeout} s") from None

    async def next_message(self, timeout: float | None = None) -> ChannelMessage:
        """The next message (skipping states); raises ``timeout``, ``client_closed`` once the peek ended, or the
        error that ended the stream."""
        try:
            async with asyncio.timeout(timeout):
                async for event in self:
                    if isinstance(event, ChannelMessage):
                        return event
        except TimeoutError:
            raise AgentChatError.timeout(f"no message within {timeout} s") from None
        raise AgentChatError.closed()

    async def messages(self) -> AsyncIterator[ChannelMessage]:
        """The messages only (ends with the peek)."""
        async for event in self:
            if isinstance(event, ChannelMessage):
                yield event

    async def _ask(self, frame: dict[str, Any]) -> PeekView:
        self._following = True
        if not self._ended:
            self._viewer._peeks[self.id] = self
        reply = await self._viewer._request(frame, on_reply=self._on_reply)
        return PeekView.from_json(reply.get("peek"))

    # the reader's side

    def _on_reply(self, frame: dict[str, Any]) -> None:
        if frame.get("type") != "peek":
            raise AgentChatError.protocol(f"expected peek, got {frame.get('type')}")
        self._apply(frame.get("peek"))

    def _apply(self, obj: Any) -> None:
        view = PeekView.from_json(obj)
        if view.id != self.id or view.channel != self.channel:
            raise AgentChatError.protocol(f"a state of peek {view.id} of {view.channel} for peek {self.id}")
        if view.viewer_key != self.viewer_key:
            raise AgentChatError.protocol(f"peek {self.id}: the broker reports another viewer key")
        if self._ended:
            return
        self.history.append(view)
        if view.grant is not None and self._key is None and self.grant_error is None:
            self._open_grant(view.grant)
        self._queue.put_nowait(view)
        if view.is_final:
            self._end(None)
        self._pulse()

    def _open_grant(self, grant: PeekGrant) -> None:
        self.grant = grant
        wire = grant.to_json()
        if grant.epoch <= 0 or not verify_grant(wire, channel=self.channel, peek=self.id, viewer_key=self.viewer_key):
            self.grant_error = AgentChatError(Codes.BAD_SIGNATURE, Category.PROTOCOL_VIOLATION,
                                              f"the grant of peek {self.id} is not signed by its sender "
                                              f"{grant.sender} for this peek and viewer key", channel=self.channel)
            return
        key = unwrap_grant(wire, channel=self.channel, peek=self.id, viewer_secret=self._secret)
        if key is None or len(key) != KEY_LENGTH:
            self.grant_error = AgentChatError(Codes.DECRYPTION_FAILED, Category.PROTOCOL_VIOLATION,
                                              f"the grant of peek {self.id} does not open with this viewer's key",
                                              channel=self.channel)
            return
        self._key = key
        self.grant_epoch = grant.epoch

    def _receive(self, items: list[Any]) -> None:
        if self._ended:
            return
        for item in items:
            offset = item.get("offset") if isinstance(item, dict) else None
            if not isinstance(offset, int) or isinstance(offset, bool) or offset <= self._last_offset:
                continue  # sent again after a peek.status (or not a message at all)
            self._last_offset = offset
            self._queue.put_nowait(self._open(item))
        self._pulse()

    def _open(self, item: Any) -> ChannelMessage:
        checked = verify_stored_message(item, self.channel)
        if isinstance(checked, ChannelMessage):
            return checked
        if self._key is None:
            why = self.grant_error.message if self.grant_error is not None else "no grant yet"
            return checked.failed(Codes.KEY_UNAVAILABLE, f"no key for epoch {checked.epoch}: {why}")
        if checked.epoch != self.grant_epoch:
            return checked.failed(Codes.KEY_UNAVAILABLE,
                                  f"the peek's grant covers epoch {self.grant_epoch}, not {checked.epoch}")
        return checked.open(self._key)

    def _pulse(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _end(self, error: AgentChatError | None) -> None:
        if self._ended:
            return
        self._end_error = error
        super()._end(error)
        if self._viewer._peeks.get(self.id) is self:
            del self._viewer._peeks[self.id]
        self._pulse()


class Viewer(Connection[None]):
    """A viewer's connection to an AgentChat broker. See the module documentation.

    ``config`` is the agent's :class:`ClientConfig`; the viewer uses ``connect_timeout``, ``request_timeout``,
    ``auto_reconnect``, ``backoff``, ``ca_file`` and ``record_frames`` (then ``sent_frames`` and
    ``received_frames`` keep every frame, for tests).

        async with Viewer("http://127.0.0.1:8080") as viewer:
            async for page in viewer.directory_pages():
                print([c.title for c in page.channels])
    """

    _REQUEST_ID_PREFIX = "v"
    #: The broker closed with 1008 (too many viewer connections from this address) or 4001 (too many frames before
    #: logging in): reconnecting would only be refused again.
    _FINAL_CLOSE_CODES = (1008, 4001)

    def __init__(self, server: str, config: ClientConfig | None = None, *, frames_per_second: float = 10.0) -> None:
        super().__init__(server, config)
        if not frames_per_second > 0:
            raise AgentChatError.invalid_argument("frames_per_second must be positive")
        self._pacer = _Pacer(frames_per_second, max(1.0, frames_per_second))
        if self._url.tls:
            self._tls_context()  # at once: an unusable CA file is an error of the constructor
        #: The broker's identity, from its ``hello``.
        self.broker: str | None = None
        #: Successful reconnections.
        self.reconnections = 0
        #: Every frame received, as the broker wrote it (with ``record_frames``).
        self.received_frames: list[str] = []
        self._indicators: IndicatorSubscription | None = None
        self._peeks: dict[str, ViewerPeek] = {}

    # ------------------------------------------------------------------ state

    @property
    def indicator_subscription(self) -> IndicatorSubscription | None:
        """The current indicator subscription, if any."""
        return self._indicators

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> None:
        """Opens the WebSocket and waits for the broker's ``hello``; returns at once when connected, joins a
        connection in progress. Raises ``network_error``, ``timeout``, ``unexpected_response``, ``client_closed``,
        or the broker's code for a refused upgrade."""
        await self._connect()

    def _session(self) -> None:
        return None

    async def _open_session(self, generation: int) -> None:
        hello = await self._next_hello()
        broker = hello.get("broker")
        self.broker = broker if isinstance(broker, str) else None
        if not self._is_current(generation):
            raise AgentChatError.network("the connection closed while opening")

    def _resume(self, generation: int) -> None:
        if self._indicators is not None or any(p._following for p in self._peeks.values()):
            self._spawn(self._restore(generation))

    def _reconnected(self) -> None:
        self.reconnections += 1

    # ------------------------------------------------------------------ requests

    async def request(self, frame: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Sends ``frame`` (a :mod:`agentchat.frames` object) with a fresh ``id`` and returns the broker's answer,
        matched by its ``ref``. An ``error`` answer raises with the broker's code (a frame a viewer may not send:
        ``not_authenticated``; a frame the broker dropped for the frame budget: ``rate_limited``). No answer within
        ``timeout`` (default ``request_timeout``) raises ``timeout``."""
        return await self._request(frame, timeout=timeout)

    async def _pace(self) -> None:
        await self._pacer.take()

    # ------------------------------------------------------------------ the directory

    async def directory(self, limit: int = 20, cursor: int = 0) -> DirectoryPage:
        """One page of ``directory.list``: up to ``limit`` (1–100) listed channels from ``cursor``, most recently
        active first, and the ``next`` cursor (None after the last page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 100:
            raise AgentChatError.invalid_argument("limit is 1 to 100")
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor <= 1_000_000:
            raise AgentChatError.invalid_argument("cursor is 0 to 1,000,000")
        reply = await self._request(frames.directory_list(limit, cursor))
        items, next_cursor = reply.get("channels"), reply.get("next")
        if reply.get("type") != "directory" or not isinstance(items, list) \
                or not (next_cursor is None or (isinstance(next_cursor, int) and not isinstance(next_cursor, bool))):
            raise AgentChatError.protocol(f"expected directory, got {reply.get('type')}")
        return DirectoryPage(tuple(ChannelIndicators.from_json(item) for item in items), next_cursor)

    async def directory_pages(self, limit: int = 20) -> AsyncIterator[DirectoryPage]:
        """Every page of the directory, from the first, following ``next``. (The cursor is a position in an order
        that moves with activity: a channel may show up on two pages, or on none, when activity reorders the
        directory between two pages.)"""
        cursor = 0
        while True:
            page = await self.directory(limit, cursor)
            yield page
            if page.next is None:
                return
            if page.next <= cursor:
                raise AgentChatError.protocol("directory.list did not move on")
            cursor = page.next

    # ------------------------------------------------------------------ indicators

    async def subscribe_indicators(self, channels: Iterable[str]) -> IndicatorSubscription:
        """Subscribes to the indicators of some listed channels (at most 100): the answer is the subscription, with
        the broker's ``snapshot``; iterate it for updates. An unlisted or unknown channel raises ``not_found`` and
        nothing is subscribed. Replaces the viewer's current indicator subscription (which ends)."""
        ids = tuple(dict.fromkeys(_check_channel(c) for c in channels))
        if not ids or len(ids) > _MAX_SUBSCRIBE_CHANNELS:
            raise AgentChatError.invalid_argument(f"give 1 to {_MAX_SUBSCRIBE_CHANNELS} channel ids")
        return await self._subscribe(IndicatorSubscription(self, ids))

    async def subscribe_directory(self) -> IndicatorSubscription:
        """Subscribes to the whole directory: every listed channel, including ones listed later. The snapshot holds
        every listed channel. Replaces the viewer's current indicator subscription (which ends)."""
        return await self._subscribe(IndicatorSubscription(self, None))

    async def unsubscribe_indicators(self) -> None:
        """``indicators.unsubscribe``: stops all indicator updates; the current subscription's iteration ends."""
        subscription, self._indicators = self._indicators, None
        if subscription is not None:
            subscription._end(None)
        if self._state is ConnectionState.CONNECTED:
            reply = await self._request(frames.indicators_unsubscribe())
            if reply.get("type") != "ok":
                raise AgentChatError.protocol(f"expected ok, got {reply.get('type')}")

    async def _subscribe(self, subscription: IndicatorSubscription) -> IndicatorSubscription:
        if self._indicators is not None:
            await self.unsubscribe_indicators()
        self._indicators = subscription
        try:
            frame = (frames.indicators_subscribe_directory() if subscription.directory
                     else frames.indicators_subscribe(subscription.channels))
            await self._request(frame, on_reply=lambda reply: subscription._take_snapshot(reply, resubscribed=False))
        except BaseException:
            if self._indicators is subscription:
                self._indicators = None
            subscription._end(None)
            raise
        return subscription

    @staticmethod
    def _resubscribe_frame(subscription: IndicatorSubscription) -> dict[str, Any]:
        """The directory, or the channels asked for that are still listed as far as the subscription knows."""
        if subscription.directory:
            return frames.indicators_subscribe_directory()
        return frames.indicators_subscribe([c for c in subscription.channels if c in subscription._listed])

    async def _listed_channels(self) -> set[str]:
        listed: set[str] = set()
        async for page in self.directory_pages(limit=100):
            listed.update(c.id for c in page.channels if c.listed)
        return listed

    # ------------------------------------------------------------------ paid peeks

    async def request_peek(self, channel: str, viewer_secret: bytes | None = None) -> ViewerPeek:
        """``peek.request``: starts a paid peek of a listed channel with a fresh X25519 key pair (or
        ``viewer_secret``, a 32-byte X25519 private key). The peek is ``awaiting_payment``; :meth:`ViewerPeek.confirm`
        next (in the broker's sandbox that authorises the payment). Raises ``not_found`` (not listed),
        ``rate_limited`` (10 requests a minute per address), ``payment_unavailable``."""
        _check_channel(channel)
        if viewer_secret is None:
            secret = X25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
        elif len(viewer_secret) != 32:
            raise AgentChatError.invalid_argument("an X25519 private key is 32 bytes")
        else:
            secret = bytes(viewer_secret)
        public = X25519PrivateKey.from_private_bytes(secret).public_key().public_bytes(*_RAW_PUBLIC)
        reply = await self._request(frames.peek_request(channel, b64url_encode(public)))
        if reply.get("type") != "peek":
            raise AgentChatError.protocol(f"expected peek, got {reply.get('type')}")
        view = PeekView.from_json(reply.get("peek"))
        if view.token is None:
            raise AgentChatError.protocol("the answer to peek.request has no token")
        peek = ViewerPeek(self, channel, view.id, view.token, secret)
        peek._apply(reply.get("peek"))
        if not peek.ended:
            self._peeks[peek.id] = peek
        return peek

    async def resume_peek(self, channel: str, peek: str, token: str, viewer_secret: bytes) -> ViewerPeek:
        """A peek asked for earlier (by this or another process), from its id, token and the viewer's private key:
        sends ``peek.status`` and follows it. Raises ``not_found`` for a wrong token."""
        _check_channel(channel)
        _check_peek(peek)
        if not isinstance(token, str) or not 0 < len(token.encode("utf-8")) <= 64:
            raise AgentChatError.invalid_argument("a peek token is 1 to 64 bytes")
        if len(viewer_secret) != 32:
            raise AgentChatError.invalid_argument("an X25519 private key is 32 bytes")
        handle = ViewerPeek(self, channel, peek, token, bytes(viewer_secret))
        try:
            await handle.status()
        except BaseException:
            if self._peeks.get(peek) is handle:
                del self._peeks[peek]
            raise
        return handle

    # ------------------------------------------------------------------ the reader

    def _received(self, raw: str | bytes) -> None:
        if self.config.record_frames:
            self.received_frames.append(raw if isinstance(raw, str) else raw.decode("utf-8", "replace"))

    def _route(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "indicators":
            if self._indicators is not None:
                self._indicators._update(frame)
        elif kind == "peek":
            obj = frame.get("peek")
            peek_id = obj.get("id") if isinstance(obj, dict) else None
            handle = self._peeks.get(peek_id) if isinstance(peek_id, str) else None
            if handle is not None:
                try:
                    handle._apply(obj)
                except AgentChatError as e:
                    handle._end(e)
        elif kind == "messages":
            channel, items = frame.get("channel"), frame.get("messages")
            if isinstance(channel, str) and isinstance(items, list):
                for handle in list(self._peeks.values()):
                    if handle.channel == channel and handle._following:
                        handle._receive(items)

    def _end_streams(self, error: AgentChatError | None) -> None:
        subscription, self._indicators = self._indicators, None
        if subscription is not None:
            subscription._end(error)
        for handle in list(self._peeks.values()):
            handle._end(error)

    # ------------------------------------------------------------------ reconnecting

    async def _restore(self, generation: int) -> None:
        """After a reconnection: the indicator subscription and the followed peeks again, on the new connection. A
        network failure leaves them to the next reconnection; a refusal ends them with the broker's error."""
        subscription = self._indicators
        if subscription is not None and not subscription.ended:
            subscription._ready = False
            try:
                await self._resubscribe(subscription)
            except AgentChatError as e:
                if e.category is not Category.SERVER:
                    return
                if self._indicators is subscription:
                    self._indicators = None
                subscription._end(e)
        for handle in list(self._peeks.values()):
            if self._generation != generation:
                return
            if not handle._following or handle.ended:
                continue
            try:
                await handle.status()
            except AgentChatError as e:
                if e.category is not Category.SERVER:
                    return
                handle._end(e)

    async def _resubscribe(self, subscription: IndicatorSubscription) -> None:
        for _ in range(3):
            try:
                await self._request(self._resubscribe_frame(subscription),
                                    on_reply=lambda frame: subscription._take_snapshot(frame, resubscribed=True))
                return
            except AgentChatError as e:
                if e.code != Codes.NOT_FOUND or subscription.directory:
                    raise
            # Some of the channels were unlisted while the connection was down: the directory tells which.
            listed = await self._listed_channels()
            gone = sorted(subscription._listed - listed)
            if gone:
                subscription._publish(IndicatorUpdate(tuple(ChannelIndicators(c, False) for c in gone),
                                                      resubscribed=True))
            if subscription.ended:
                return
        raise AgentChatError.server(Codes.NOT_FOUND, "the channels kept being unlisted while resubscribing")

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Closes the connection (code 1000), stops reconnecting, fails waiting requests with ``client_closed`` and
        ends the indicator subscription and every peek's stream (without an error). Final."""
        await self._close()

    async def __aenter__(self) -> Viewer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
