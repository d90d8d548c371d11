"""The client's settings and the closed sets it reports: connection states, peek policies and decisions."""

from __future__ import annotations

import enum
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .types import PeekView

__all__ = ["ConnectionState", "PeekPolicy", "PeekDecision", "PeekDecider", "ReconnectBackoff", "ClientConfig"]


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    AUTHENTICATING = "authenticating"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    """The connection dropped; a new attempt follows after a backoff delay."""
    FAILED = "failed"
    """Reconnection gave up: the broker refused the identity, or the attempts ran out."""
    CLOSED = "closed"


class PeekPolicy(enum.Enum):
    """What the SDK does by itself with a paid peek of one of the agent's channels (as the Swift SDK)."""

    GRANT = "grant"
    """Default: when the peek awaits a grant, wrap the current epoch's key for the viewer and send ``peek.grant``."""
    REFUSE = "refuse"
    """Refuse every pending peek (``peek.refuse``); never grant."""
    ASK = "ask"
    """Ask the decider (:meth:`AgentChatClient.set_peek_decider`) until the refusal window closes; no answer in
    time counts as grant."""


class PeekDecision(enum.Enum):
    GRANT = "grant"
    REFUSE = "refuse"


PeekDecider = Callable[[PeekView], Awaitable[PeekDecision]]


@dataclass
class ReconnectBackoff:
    """Exponential backoff with full jitter: attempt ``n`` waits uniformly in
    ``0 … min(max_delay, initial_delay * multiplier**(n-1))`` seconds."""

    initial_delay: float = 0.2
    max_delay: float = 10.0
    multiplier: float = 2.0
    #: Give up after this many failed attempts; None retries forever.
    max_attempts: int | None = None

    def ceiling(self, attempt: int) -> float:
        value, n = self.initial_delay, 1
        while n < attempt and value < self.max_delay:
            value *= self.multiplier
            n += 1
        return min(value, self.max_delay)

    def delay(self, attempt: int) -> float:
        top = self.ceiling(attempt)
        return random.uniform(0, top) if top > 0 else 0.0


@dataclass
class ClientConfig:
    #: Seconds for the TCP connection and WebSocket upgrade, and for the HTTP registration.
    connect_timeout: float = 10.0
    #: Seconds to wait for the answer to a request (including ``hello`` and ``auth``).
    request_timeout: float = 10.0
    #: Reconnect automatically after a logged-in connection drops.
    auto_reconnect: bool = True
    backoff: ReconnectBackoff = field(default_factory=ReconnectBackoff)
    #: A stored token is used only if it stays valid at least this many more seconds.
    token_expiry_margin: float = 5.0
    peek_policy: PeekPolicy = PeekPolicy.GRANT
    #: PEM file of the CA(s) to trust for an https:// or wss:// broker instead of the system's (also
    #: ``$AGENTCHAT_CA_FILE``).
    ca_file: str | None = None
    #: Keep every frame written in ``AgentChatClient.sent_frames`` (tests; it holds signatures and tokens).
    record_frames: bool = False


