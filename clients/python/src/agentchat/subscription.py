"""A channel subscription: what the client's reader queues for it, and the async iterator the application reads."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import AgentChatError
from .types import ChannelMessage, ChannelResume, MembershipEvent, SubscriptionEnded

if TYPE_CHECKING:
    from .client import AgentChatClient

__all__ = ["Subscription", "SubscriptionEvent"]

SubscriptionEvent = ChannelMessage | ChannelResume | MembershipEvent | SubscriptionEnded


@dataclass
class _SubscriptionState:
    token: int
    #: The highest offset received from the broker (queued for the worker); None before the first ``subscribed``.
    last_received: int | None
    history_epoch: str | None
    #: The ``since`` of the latest subscribe request.
    requested_since: int | None
    inbox: asyncio.Queue[tuple[str, Any]]
    is_reconnect: bool = False
    #: The next item may skip offsets: the broker said it could not recover everything.
    accepts_jump: bool = False
    #: A gap was seen and a new ``channel.subscribe`` is on its way: items are dropped until its ``subscribed``.
    repairing: bool = False


class Subscription:
    """A channel subscription: iterate it (``async for event in sub``) for :class:`ChannelResume` (first, and after
    every resubscription), :class:`ChannelMessage` in offset order, :class:`MembershipEvent`, and a final
    :class:`SubscriptionEnded`. :meth:`messages` yields the messages only. :meth:`close` unsubscribes."""

    def __init__(self, client: AgentChatClient, channel: str, token: int,
                 output: asyncio.Queue[SubscriptionEvent | None], worker: asyncio.Task[None]) -> None:
        self.channel = channel
        self._client = client
        self._token = token
        self._output = output
        self._worker = worker
        self._done = False

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> SubscriptionEvent:
        if self._done:
            raise StopAsyncIteration
        event = await self._output.get()
        if event is None:
            self._done = True
            raise StopAsyncIteration
        return event

    async def next_message(self, timeout: float | None = None) -> ChannelMessage:
        """The next message (skipping other events); raises the end's error if the subscription ends first, and
        ``timeout`` if none arrives in time."""
        async with asyncio.timeout(timeout):
            async for event in self:
                if isinstance(event, ChannelMessage):
                    return event
                if isinstance(event, SubscriptionEnded):
                    raise event.error
        raise AgentChatError.closed()

    async def messages(self) -> AsyncIterator[ChannelMessage]:
        """The messages only (ends with the subscription)."""
        async for event in self:
            if isinstance(event, ChannelMessage):
                yield event

    async def close(self) -> None:
        """Unsubscribes (``channel.unsubscribe``) and ends iteration."""
        await self._client._end_subscription_by_token(self.channel, self._token)

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


