"""What the agent's client and the viewer share to reach a broker: its URL, TLS, opening the WebSocket with the
``agentchat.v1`` subprotocol, HTTP error bodies, and a fan-out of values to async iterators."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any, Generic, TypeVar

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.typing import Subprotocol

from .errors import AgentChatError, Category, Codes

__all__ = ["SUBPROTOCOL", "Broadcast", "BrokerURL", "now_ms", "http_error", "tls_context", "open_websocket"]

SUBPROTOCOL = "agentchat.v1"
T = TypeVar("T")


class Broadcast(Generic[T]):
    """Fans values out to any number of async iterators, each with its own queue of at most ``LIMIT`` values (an
    iterator nobody reads keeps the newest)."""

    _END: Any = object()
    LIMIT = 1024

    def __init__(self) -> None:
        self._queues: list[asyncio.Queue[Any]] = []
        self._finished = False

    def publish(self, value: T) -> None:
        for q in self._queues:
            if q.qsize() >= self.LIMIT:
                q.get_nowait()
            q.put_nowait(value)

    def finish(self) -> None:
        self._finished = True
        for q in self._queues:
            q.put_nowait(self._END)

    def stream(self) -> AsyncIterator[T]:
        """An iterator of every value published from now on (registered at once, not at the first ``anext``)."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        if self._finished:
            q.put_nowait(self._END)
        else:
            self._queues.append(q)
        return self._drain(q)

    async def _drain(self, q: asyncio.Queue[Any]) -> AsyncIterator[T]:
        try:
            while True:
                value = await q.get()
                if value is self._END:
                    return
                yield value
        finally:
            with contextlib.suppress(ValueError):
                self._queues.remove(q)


class BrokerURL:
    """A broker's address (``http``, ``ws``, ``https`` or ``wss``), and its HTTP and WebSocket URLs."""

    def __init__(self, text: str) -> None:
        parts = urllib.parse.urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "ws", "https", "wss"):
            raise AgentChatError(Codes.UNSUPPORTED_SCHEME, Category.INVALID_ARGUMENT,
                                 f"unsupported URL scheme {scheme!r} in {text}")
        if not parts.hostname:
            raise AgentChatError.invalid_argument(f"no host in {text}")
        #: https:// and wss:// use TLS (verified against ``ClientConfig.ca_file``, else the system's CAs).
        self.tls = scheme in ("https", "wss")
        try:
            port = parts.port or (443 if self.tls else 80)
        except ValueError:
            raise AgentChatError.invalid_argument(f"bad port in {text}") from None
        self.text = text
        host = parts.hostname
        self.netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.base_path = parts.path.rstrip("/")

    def http(self, endpoint: str) -> str:
        return f"{'https' if self.tls else 'http'}://{self.netloc}{self.base_path}{endpoint}"

    @property
    def websocket(self) -> str:
        return f"{'wss' if self.tls else 'ws'}://{self.netloc}{self.base_path}/"


def now_ms() -> int:
    return int(round(time.time() * 1000))


def http_error(status: int, headers: dict[str, str], payload: bytes) -> AgentChatError:
    """The :class:`AgentChatError` of an HTTP error answer: the body's ``error.code`` and ``message``, ``did`` for
    ``already_registered``, ``Retry-After``."""
    try:
        body = json.loads(payload)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    result = AgentChatError.server(code if isinstance(code, str) else f"http_{status}",
                                   message if isinstance(message, str) else f"HTTP {status}",
                                   http_status=status)
    did = (body.get("did") if isinstance(body, dict) else None) or \
        (error.get("did") if isinstance(error, dict) else None)
    if isinstance(did, str):
        result.existing_did = did
    retry = headers.get("retry-after", "").strip()
    if retry.isdigit():
        result.retry_after_seconds = int(retry)
    return result


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Verifies the broker's certificate and name against ``ca_file`` (else ``$AGENTCHAT_CA_FILE``, else the
    system's trusted CAs); HTTP/1.1 only."""
    ca_file = ca_file or os.environ.get("AGENTCHAT_CA_FILE") or None
    try:
        context = ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as e:
        raise AgentChatError.invalid_argument(f"cannot use the CA file {ca_file}: {e}") from None
    context.set_alpn_protocols(["http/1.1"])
    return context


async def open_websocket(url: BrokerURL, connect_timeout: float,
                         context: ssl.SSLContext | None) -> ClientConnection:
    """Opens the WebSocket offering ``agentchat.v1`` (``context`` for ``wss``); raises ``network_error``, the
    broker's code for a refused upgrade (e.g. ``subprotocol_required``), or ``unexpected_response`` when the
    subprotocol was not selected."""
    try:
        ws = await websockets.connect(
            url.websocket, subprotocols=[Subprotocol(SUBPROTOCOL)], open_timeout=connect_timeout,
            ping_interval=None, compression=None, proxy=None, max_size=None, close_timeout=2,
            ssl=context if url.tls else None)
    except websockets.exceptions.InvalidStatus as e:
        response = e.response
        raise http_error(response.status_code, {k.lower(): v for k, v in response.headers.raw_items()},
                         bytes(response.body or b"")) from None
    except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as e:
        raise AgentChatError.network(f"cannot open a WebSocket to {url.text}: {e!r}") from None
    if ws.subprotocol != SUBPROTOCOL:
        await ws.close()
        raise AgentChatError.protocol(f"the server did not select the {SUBPROTOCOL} subprotocol")
    return ws
