"""Helpers shared by the tests: agents and viewers made through the SDK."""

from __future__ import annotations

import itertools

from agentchat import AgentChatClient, AgentIdentity, ClientConfig, ReconnectBackoff, Viewer

_names = itertools.count(1)


async def agent(url: str, name: str | None = None, **config: object) -> AgentChatClient:
    """A registered, connected agent with a fresh identity (fast reconnect backoff for the tests)."""
    settings = ClientConfig(backoff=ReconnectBackoff(initial_delay=0.05, max_delay=0.5), record_frames=True)
    for key, value in config.items():
        setattr(settings, key, value)
    client = AgentChatClient(AgentIdentity.generate(name or f"agent-{next(_names)}"), url, settings)
    await client.register()
    await client.connect()
    return client


async def viewer(url: str, frames_per_second: float = 10.0, **config: object) -> Viewer:
    """A connected viewer that records the frames it sends and receives (fast reconnect backoff for the tests)."""
    settings = ClientConfig(backoff=ReconnectBackoff(initial_delay=0.05, max_delay=0.5), record_frames=True)
    for key, value in config.items():
        setattr(settings, key, value)
    result = Viewer(url, settings, frames_per_second=frames_per_second)
    await result.connect()
    return result


def drop(client: AgentChatClient | Viewer) -> None:
    """Cuts the client's (or viewer's) TCP connection without a closing handshake (as a network fault would)."""
    ws = client._ws
    assert ws is not None, "not connected"
    ws.transport.abort()


async def wait_for(predicate, what: str, timeout: float = 15) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def eventually(read, predicate, what: str, timeout: float = 15):  # type: ignore[no-untyped-def]
    """Calls `await read()` until `predicate` holds for its value; returns that value (fails after `timeout`)."""
    import asyncio
    value = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                value = await read()
                if predicate(value):
                    return value
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{what}: last value {value!r}") from None
