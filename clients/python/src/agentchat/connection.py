"""The connection core the agent's client (:class:`agentchat.AgentChatClient`) and the viewer
(:class:`agentchat.Viewer`) share: one WebSocket to a broker at a time, and what keeps it going.

- Opening: the WebSocket (:func:`agentchat.transport.open_websocket`), then the broker's ``hello`` and whatever the
  connection does before it is CONNECTED (:meth:`Connection._open_session`: the client logs in, the viewer only
  reads the ``hello``). :meth:`Connection._connect` joins an opening in progress and cuts a backoff delay short.
- Requests: a fresh ``id`` per frame (a prefix per kind of connection), the answer matched by its ``ref``, an
  ``error`` answer raised with the broker's code, ``timeout`` when no answer comes in time. A request may ask for a
  callback run by the reader on its answer, in frame order (before any frame that follows the answer).
- The reader: one task per WebSocket dispatches the frames in order: answers to their requests, ``hello`` to whoever
  waits for it, anything else to :meth:`Connection._route`.
- Connection loss: waiting requests fail with ``network_error`` (with the close code); then, unless the close code is
  one after which reconnecting would only be refused again, the connection reconnects with ``config.backoff`` (with
  ``config.auto_reconnect``) until it gives up (state FAILED, ``failure``), or it stays DISCONNECTED.
- Closing: final; waiting requests fail with ``client_closed``, tasks are cancelled and every stream ends.

Where the client and the viewer differ, they say so through the hooks (the methods that raise
``NotImplementedError`` here, and the no-op ones) and the class attributes below; the state machine, the request
bookkeeping, the reader, the reconnect loop and closing are this module's alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection

from . import frames
from .config import ClientConfig, ConnectionState
from .errors import AgentChatError
from .transport import Broadcast, BrokerURL, open_websocket, tls_context
from .types import Pong

__all__ = ["Connection"]

#: What opening a connection returns (the client: its profile; the viewer: nothing).
R = TypeVar("R")
T = TypeVar("T")

#: Run by the reader on a successful answer, in frame order; an :class:`AgentChatError` it raises fails the request.
ReplyHook = Callable[[dict[str, Any]], None]


@dataclass
class _Pending:
    future: asyncio.Future[dict[str, Any]]
    on_reply: ReplyHook | None


class Connection(Generic[R]):
    """A connection to a broker that reconnects: see the module documentation. Subclasses implement the hooks."""

    #: The prefix of request ids (``c1``, ``c2``, ... for the client; ``v1``, ... for the viewer).
    _REQUEST_ID_PREFIX: ClassVar[str] = "r"
    #: What opening is called in the ``network_error`` of an unexpected failure ("<what> failed: ...").
    _OPENING: ClassVar[str] = "connecting"
    #: Close codes after which reconnecting would only be refused again: the connection fails at once.
    _FINAL_CLOSE_CODES: ClassVar[tuple[int, ...]] = ()
    #: Error codes of a failed reconnection attempt after which the next attempts would fail the same way.
    _FINAL_ERROR_CODES: ClassVar[tuple[str, ...]] = ()
    #: Without ``auto_reconnect``, a lost connection leaves the streams open (a later connect() restores them)
    #: instead of ending them with the error.
    _KEEPS_STREAMS_WHEN_DISCONNECTED: ClassVar[bool] = False

    def __init__(self, server: str, config: ClientConfig | None) -> None:
        self.server = server
        self._url = BrokerURL(server)
        self.config = config or ClientConfig()
        self._ssl_context: ssl.SSLContext | None = None
        self._state = ConnectionState.DISCONNECTED
        #: Why the connection gave up (state FAILED).
        self.failure: AgentChatError | None = None
        #: Every frame sent (with ``config.record_frames``).
        self.sent_frames: list[dict[str, Any]] = []
        self._ws: ClientConnection | None = None
        self._generation = 0
        self._next_request = 0
        self._pending: dict[str, _Pending] = {}
        self._hello: dict[str, Any] | None = None
        self._hello_waiter: asyncio.Future[dict[str, Any]] | None = None
        self._connect_task: asyncio.Task[R] | None = None
        self._reconnect_task: asyncio.Task[None] | None = None
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._broadcasts: list[Broadcast[Any]] = []
        self._states: Broadcast[ConnectionState] = self._finished_on_close(Broadcast())

    # ------------------------------------------------------------------ hooks

    async def _open_session(self, generation: int) -> R:
        """After the WebSocket opened (connection ``generation``, whose reader runs): reads the ``hello``
        (:meth:`_next_hello`) and does what comes before CONNECTED; raises to abandon the connection."""
        raise NotImplementedError

    def _session(self) -> R:
        """What :meth:`_connect` returns when already connected."""
        raise NotImplementedError

    def _resume(self, generation: int) -> None:
        """Just CONNECTED (again): restores what the application had on the previous connection."""

    def _route(self, frame: dict[str, Any]) -> None:
        """A frame that answers no pending request and is not a ``hello`` (in frame order)."""

    def _end_streams(self, error: AgentChatError | None) -> None:
        """Ends what the application iterates: with ``error`` when the connection failed (or was lost without
        reconnecting), None when the application closed it."""

    def _received(self, raw: str | bytes) -> None:
        """Every frame as the broker wrote it, before it is read."""

    async def _pace(self) -> None:
        """Waits before a request is sent, if frames must be spaced out."""

    def _reconnected(self) -> None:
        """A reconnection succeeded."""

    # ------------------------------------------------------------------ state and streams

    @property
    def state(self) -> ConnectionState:
        return self._state

    def state_changes(self) -> AsyncIterator[ConnectionState]:
        """Every state change from now on (``CONNECTING``, ``AUTHENTICATING`` (the agent's login), ``CONNECTED``,
        ``RECONNECTING``, ``DISCONNECTED``, ``FAILED``, ``CLOSED``)."""
        return self._states.stream()

    def _finished_on_close(self, broadcast: Broadcast[T]) -> Broadcast[T]:
        """``broadcast``, whose iterators :meth:`_close` ends (in the order of these calls)."""
        self._broadcasts.append(broadcast)
        return broadcast

    def _set_state(self, state: ConnectionState) -> None:
        if state is not self._state:
            self._state = state
            self._states.publish(state)

    def _spawn(self, coroutine: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ------------------------------------------------------------------ connecting

    async def _connect(self) -> R:
        if self._closed:
            raise AgentChatError.closed()
        if self._connected():
            return self._session()
        if self._reconnect_task is not None and not self._establishing:
            # A reconnection is waiting out its backoff: connect now instead.
            self._reconnect_task.cancel()
            self._reconnect_task = None
        try:
            return await self._establish_once()
        except AgentChatError:
            if not self._closed and self._reconnect_task is None and not self._establishing \
                    and not self._connected():
                self._set_state(ConnectionState.DISCONNECTED)
            raise

    def _connected(self) -> bool:
        return self._state is ConnectionState.CONNECTED

    @property
    def _establishing(self) -> bool:
        return self._connect_task is not None and not self._connect_task.done()

    async def _establish_once(self) -> R:
        if not self._establishing:
            self._connect_task = asyncio.get_running_loop().create_task(self._establish())
        assert self._connect_task is not None
        try:
            return await asyncio.shield(self._connect_task)
        except AgentChatError:
            raise
        except asyncio.CancelledError:
            if self._closed:
                raise AgentChatError.closed() from None
            raise
        except Exception as e:  # noqa: BLE001 - whatever broke the opening is a network failure to the caller
            raise AgentChatError.network(f"{self._OPENING} failed: {e!r}") from None

    async def _establish(self) -> R:
        self._set_state(ConnectionState.CONNECTING)
        ws = await open_websocket(self._url, self.config.connect_timeout,
                                  self._tls_context() if self._url.tls else None)
        if self._closed:
            await ws.close()
            raise AgentChatError.closed()
        self._generation += 1
        generation = self._generation
        self._ws = ws
        self._hello = None
        self._spawn(self._read(ws, generation))
        try:
            session = await self._open_session(generation)
        except BaseException as e:
            if self._generation == generation:
                self._generation += 1
                self._ws = None
                self._fail_pending(e if isinstance(e, AgentChatError) else AgentChatError.network("cancelled"))
            with contextlib.suppress(Exception):
                await ws.close()
            raise
        self._set_state(ConnectionState.CONNECTED)
        self._resume(generation)
        return session

    def _is_current(self, generation: int) -> bool:
        """Connection ``generation`` is still the open one."""
        return generation == self._generation and self._ws is not None

    def _tls_context(self) -> ssl.SSLContext:
        """Verifies the broker's certificate and name against ``config.ca_file`` (else ``$AGENTCHAT_CA_FILE``,
        else the system's trusted CAs); HTTP/1.1 only."""
        if self._ssl_context is None:
            self._ssl_context = tls_context(self.config.ca_file)
        return self._ssl_context

    async def _next_hello(self) -> dict[str, Any]:
        if self._hello is not None:
            hello, self._hello = self._hello, None
            return hello
        if self._ws is None:
            raise AgentChatError.not_connected()
        waiter: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._hello_waiter = waiter
        try:
            async with asyncio.timeout(self.config.request_timeout):
                return await waiter
        except TimeoutError:
            raise AgentChatError.timeout(f"no hello within {self.config.request_timeout} s") from None
        finally:
            if self._hello_waiter is waiter:
                self._hello_waiter = None

    # ------------------------------------------------------------------ requests

    async def ping(self) -> Pong:
        start = time.monotonic()
        reply = await self._request(frames.ping())
        if reply.get("type") != "pong" or not isinstance(reply.get("time"), int):
            raise AgentChatError.protocol(f"expected pong, got {reply.get('type')}")
        return Pong(reply["time"], time.monotonic() - start)

    async def _request(self, frame: dict[str, Any], *, on_reply: ReplyHook | None = None,
                       timeout: float | None = None) -> dict[str, Any]:
        """A request on the CONNECTED connection (after :meth:`_pace`); ``timeout`` defaults to
        ``config.request_timeout``."""
        if self._state is not ConnectionState.CONNECTED or self._ws is None:
            raise AgentChatError.closed() if self._closed else AgentChatError.not_connected()
        await self._pace()
        if self._ws is None or self._state is not ConnectionState.CONNECTED:
            raise AgentChatError.closed() if self._closed else AgentChatError.not_connected()
        return await self._send_request(frame, timeout if timeout is not None else self.config.request_timeout,
                                        on_reply)

    async def _send_request(self, frame: dict[str, Any], timeout: float,
                            on_reply: ReplyHook | None = None) -> dict[str, Any]:
        """Sends ``frame`` with a fresh ``id`` on the open WebSocket, whatever the state (the login's requests
        come before CONNECTED), and returns its answer."""
        ws = self._ws
        if ws is None:
            raise AgentChatError.not_connected()
        self._next_request += 1
        request_id = f"{self._REQUEST_ID_PREFIX}{self._next_request}"
        frame = {**frame, "id": request_id}
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = _Pending(future, on_reply)
        try:
            await self._write(ws, frame)
            async with asyncio.timeout(timeout):
                return await future
        except TimeoutError:
            raise AgentChatError.timeout(f"no answer to {frame['type']} within {timeout} s") from None
        finally:
            self._pending.pop(request_id, None)

    async def _write(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        if self.config.record_frames:
            self.sent_frames.append(json.loads(json.dumps(frame)))
        try:
            await ws.send(json.dumps(frame, separators=(",", ":"), ensure_ascii=False))
        except websockets.exceptions.ConnectionClosed:
            raise AgentChatError.network("the connection is closed") from None

    # ------------------------------------------------------------------ the reader

    async def _read(self, ws: ClientConnection, generation: int) -> None:
        close_code: int | None = None
        reason = ""
        try:
            async for raw in ws:
                if generation != self._generation:
                    return
                self._received(raw)
                try:
                    frame = json.loads(raw)
                except ValueError:
                    continue  # a broker frame that is not JSON: nothing to answer it with
                if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                    continue
                self._dispatch(frame)
        except websockets.exceptions.ConnectionClosed:
            pass
        except Exception as e:  # noqa: BLE001 - any failure of the socket ends the connection
            reason = repr(e)
        finally:
            received = ws.protocol.close_rcvd
            if received is not None:
                close_code, reason = received.code, received.reason or "closed by the broker"
            self._on_closed(generation, close_code, reason or "connection lost")

    def _dispatch(self, frame: dict[str, Any]) -> None:
        kind, ref = frame["type"], frame.get("ref")
        pending = self._pending.pop(ref, None) if isinstance(ref, str) else None
        if pending is not None:
            if pending.future.done():
                return
            if kind == "error":
                code, message = frame.get("code"), frame.get("message")
                pending.future.set_exception(AgentChatError.server(code if isinstance(code, str) else "error",
                                                                   message if isinstance(message, str) else ""))
                return
            if pending.on_reply is not None:
                try:
                    pending.on_reply(frame)
                except AgentChatError as e:
                    pending.future.set_exception(e)
                    return
            pending.future.set_result(frame)
        elif kind == "hello":
            if self._hello_waiter is not None and not self._hello_waiter.done():
                self._hello_waiter.set_result(frame)
                self._hello_waiter = None
            else:
                self._hello = frame
        else:
            self._route(frame)

    def _on_closed(self, generation: int, close_code: int | None, reason: str) -> None:
        if generation != self._generation:
            return
        was_connected = self._state is ConnectionState.CONNECTED
        self._generation += 1
        self._ws = None
        text = f"connection closed ({close_code}): {reason}" if close_code else f"connection closed: {reason}"
        error = AgentChatError.network(text, close_code=close_code)
        self._fail_pending(error)
        if self._closed or not was_connected:
            return
        if close_code in self._FINAL_CLOSE_CODES:
            self._give_up(error)
        elif self.config.auto_reconnect:
            self._start_reconnecting()
        else:
            if not self._KEEPS_STREAMS_WHEN_DISCONNECTED:
                self._end_streams(error)
            self._set_state(ConnectionState.DISCONNECTED)

    def _fail_pending(self, error: AgentChatError) -> None:
        waiting, self._pending = self._pending, {}
        for pending in waiting.values():
            if not pending.future.done():
                pending.future.set_exception(error)
        if self._hello_waiter is not None and not self._hello_waiter.done():
            self._hello_waiter.set_exception(error)
        self._hello_waiter = None
        self._hello = None

    # ------------------------------------------------------------------ reconnecting

    def _start_reconnecting(self) -> None:
        self._set_state(ConnectionState.RECONNECTING)  # at once: nothing may take the old connection as live
        if self._reconnect_task is None:
            self._reconnect_task = self._spawn(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempt = 0
        try:
            while not self._closed:
                attempt += 1
                limit = self.config.backoff.max_attempts
                if limit is not None and attempt > limit:
                    self._give_up(AgentChatError.network(f"gave up reconnecting after {limit} attempts"))
                    return
                self._set_state(ConnectionState.RECONNECTING)
                await asyncio.sleep(self.config.backoff.delay(attempt))
                if self._closed:
                    return
                try:
                    await self._establish_once()
                    self._reconnected()
                    return
                except AgentChatError as e:
                    if self._closed:
                        return
                    if e.code in self._FINAL_ERROR_CODES:
                        self._give_up(e)
                        return
        finally:
            if self._reconnect_task is asyncio.current_task():
                self._reconnect_task = None

    def _give_up(self, error: AgentChatError) -> None:
        """State FAILED, for good: ``failure`` is ``error``, and every stream ends with it."""
        self.failure = error
        self._end_streams(error)
        self._set_state(ConnectionState.FAILED)

    # ------------------------------------------------------------------ closing

    async def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        ws, self._ws = self._ws, None
        self._generation += 1
        self._fail_pending(AgentChatError.closed())
        self._end_streams(None)
        self._set_state(ConnectionState.CLOSED)
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        if self._connect_task is not None and not self._connect_task.done():
            self._connect_task.cancel()
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        for task in list(self._tasks):
            if task is not current:
                with contextlib.suppress(BaseException):
                    await task
        for broadcast in self._broadcasts:
            broadcast.finish()
