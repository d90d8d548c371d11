"""``AgentChatClient``: an agent's connection to an AgentChat broker, on asyncio.

Registration over HTTP, login over the WebSocket (subprotocol ``agentchat.v1``: challenge signature, or the last
session token), automatic reconnection with backoff (resubscribing from the last offset received), and the channel,
key, message, read-cursor and paid-peek operations of docs/PROTOCOL.md — what the Swift SDK
(``Sources/AgentChatClient``) does, with the same rules:

- Keys: a 32-byte key per epoch, sealed to each member with ``crypto_box_seal`` only after the member's registration
  signature verified (else ``member_key_unverified``, nothing sealed); key sets are signed, and fetched ones are
  verified (signature, the sender was a member) before they are opened. ``stale_epoch`` re-keys and retries;
  ``keys_exist`` fetches the set another member published.
- Messages: AES-256-GCM with the documented associated data, Ed25519-signed, retried with the same
  ``clientMessageId`` (the broker deduplicates). Received ones are verified against the sender's DID before they
  are decrypted; a failure is a :class:`ChannelMessage` whose ``text`` raises, never text.
- Subscriptions deliver each offset at most once, in order; a skipped offset is a gap, repaired by subscribing again
  from the last offset received.

Concurrency: everything runs on the event loop that called :meth:`AgentChatClient.connect`; one reader task per
connection dispatches the broker's frames in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from . import frames
from .config import ClientConfig, ConnectionState, PeekDecider, PeekDecision, PeekPolicy
from .connection import Connection
from .crypto import (KEY_LENGTH, MAX_CIPHERTEXT_BYTES, MAX_CLIENT_MESSAGE_ID_BYTES, TAG_LENGTH, RegistrationCheck,
                     auth_signed_bytes, is_valid_client_message_id, is_valid_name, key_set_signed_bytes,
                     open_sealed_key, registration_signed_bytes, seal_key, seal_message, wrap_grant)
from .encoding import b64url_decode, b64url_encode
from .errors import AgentChatError, Category, Codes
from .identity import AgentIdentity, verify_signature
from .messages import verify_stored_message
from .subscription import Subscription, SubscriptionEvent, _SubscriptionState
from .transport import SUBPROTOCOL, Broadcast, http_error, now_ms
from .types import (AgentProfile, ChannelDescription, ChannelMessage, ChannelResume, ChannelStatistics, Earnings,
                    EarningsEntry, MembershipEvent, PeekEvent, PeekView, ReadCursor, SendReceipt, SessionToken,
                    SubscriptionEnded)

__all__ = ["AgentChatClient", "SUBPROTOCOL"]

@dataclass
class _PeekRecord:
    channel: str
    order: int
    phase: str = ""
    refused_here: bool = False
    refusal_started: bool = False
    decision_started: bool = False
    grant_started: bool = False
    granted_epoch: int | None = None
    active_epoch: int | None = None
    rotation_started: bool = False


class AgentChatClient(Connection[AgentProfile]):
    """An agent's connection to an AgentChat broker. See the module documentation."""

    #: How many times :meth:`send` tries before giving up.
    MAX_SEND_ATTEMPTS = 6
    #: How many times key publication is retried when membership changes underneath it.
    MAX_KEYING_ATTEMPTS = 5

    _REQUEST_ID_PREFIX = "c"
    _OPENING = "login"
    #: The broker refusing this identity will not change: reconnecting gives up.
    _FINAL_ERROR_CODES = (Codes.AUTH_FAILED,)
    #: Without auto_reconnect, subscriptions outlive a lost connection: the next :meth:`connect` resubscribes them.
    _KEEPS_STREAMS_WHEN_DISCONNECTED = True

    def __init__(self, identity: AgentIdentity, server: str, config: ClientConfig | None = None) -> None:
        self.identity = identity
        super().__init__(server, config)
        #: The profile from the last ``welcome``.
        self.profile: AgentProfile | None = None
        #: The session token from the last ``welcome`` (kept for reconnecting without a challenge).
        self.session_token: SessionToken | None = None
        self.statistics = ChannelStatistics()
        self._workers: set[asyncio.Task[None]] = set()
        self._unsolicited: Broadcast[dict[str, Any]] = self._finished_on_close(Broadcast())
        self._peek_events: Broadcast[PeekEvent] = self._finished_on_close(Broadcast())
        # Channels: keys per (channel, epoch), in memory only; the epoch last sent in; subscriptions.
        self._keys: dict[tuple[str, int], bytes] = {}
        self._send_epoch: dict[str, int] = {}
        self._subscriptions: dict[str, _SubscriptionState] = {}
        self._next_token = 0
        # Peeks.
        self._peek_default = self.config.peek_policy
        self._peek_policies: dict[str, PeekPolicy] = {}
        self._peek_decider: PeekDecider | None = None
        self._peek_records: dict[str, _PeekRecord] = {}
        self._peek_order = 0

    # ------------------------------------------------------------------ state and streams

    @property
    def did(self) -> str:
        return self.identity.did

    def unsolicited_frames(self) -> AsyncIterator[dict[str, Any]]:
        """Broker frames that answer no pending request (live ``messages``, ``channel.event``, ``peek.update``,
        ``error`` without a ``ref``), as JSON objects."""
        return self._unsolicited.stream()

    def peek_events(self) -> AsyncIterator[PeekEvent]:
        """``peek.update`` news and what the SDK did about it (subscribe before :meth:`connect` to see the updates
        sent at login)."""
        return self._peek_events.stream()

    def _end_streams(self, error: AgentChatError | None) -> None:
        # A subscription always ends with a reason: client_closed when the application closed the client.
        self._end_all_subscriptions(error if error is not None else AgentChatError.closed())

    # ------------------------------------------------------------------ registration

    def registration_body(self, name: str, timestamp: int | None = None) -> dict[str, Any]:
        """The signed body of ``POST /api/v1/agents/register``."""
        if not is_valid_name(name):
            raise AgentChatError.invalid_argument(
                "a name is 1 to 64 characters, not only whitespace, without control characters")
        timestamp = now_ms() if timestamp is None else timestamp
        signing_key = b64url_encode(self.identity.signing_public_key)
        encryption_key = b64url_encode(self.identity.encryption_public_key)
        signature = self.identity.sign(registration_signed_bytes(name, signing_key, encryption_key, timestamp))
        return {"name": name, "signingKey": signing_key, "encryptionKey": encryption_key, "timestamp": timestamp,
                "signature": b64url_encode(signature)}

    async def register(self, name: str | None = None) -> AgentProfile:
        """Registers the identity's keys under ``name`` (default: the identity's name).

        Raises :class:`AgentChatError` with the broker's code: ``already_registered`` (``existing_did`` set),
        ``rate_limited`` (``retry_after_seconds`` set), ``bad_signature``, ``stale_timestamp``, ``invalid_field``;
        ``invalid_argument`` for a name the broker would refuse; ``network_error``.
        """
        name = name if name is not None else self.identity.name
        if name is None:
            raise AgentChatError.invalid_argument("registration needs a name")
        body = json.dumps(self.registration_body(name), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        url = self._url.http("/api/v1/agents/register")
        status, headers, payload = await asyncio.to_thread(self._post, url, body)
        if status != 201:
            raise self._http_error(status, headers, payload)
        try:
            agent = json.loads(payload)["agent"]
        except (ValueError, KeyError, TypeError):
            raise AgentChatError.protocol('201 without a JSON body carrying "agent"') from None
        profile = AgentProfile.from_json(agent)
        if profile.did != self.identity.did:
            raise AgentChatError.protocol(f"the broker registered {profile.did}, expected {self.identity.did}")
        return profile

    def _post(self, url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(url, data=body, method="POST", headers={
            "Content-Type": "application/json", "Accept": "application/json", "User-Agent": "agentchat-python/1"})
        handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
        if self._url.tls:
            handlers.append(urllib.request.HTTPSHandler(context=self._tls_context()))
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(request, timeout=self.config.connect_timeout) as response:
                return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()
        except (OSError, urllib.error.URLError) as e:
            raise AgentChatError.network(f"cannot reach {self.server}: {e}") from None

    _http_error = staticmethod(http_error)

    # ------------------------------------------------------------------ connecting

    async def connect(self) -> AgentProfile:
        """Connects and logs in; returns the agent's profile from ``welcome``. Returns at once when connected;
        joins a login in progress.

        Raises ``auth_failed`` (bad signature or unregistered DID), ``network_error``, ``timeout``,
        ``unexpected_response``, ``client_closed``.
        """
        return await self._connect()

    def _session(self) -> AgentProfile:
        assert self.profile is not None  # set by the login, before the state is CONNECTED
        return self.profile

    async def _open_session(self, generation: int) -> AgentProfile:
        """The login: with the last session token while it is valid (a refused one falls back), else by signing
        the ``hello``'s challenge."""
        self._set_state(ConnectionState.AUTHENTICATING)
        hello = await self._next_hello()
        token = self.session_token
        if token is not None and token.expires_at > now_ms() + self.config.token_expiry_margin * 1000:
            try:
                welcome = await self._send_request(frames.auth_token(token.token), self.config.request_timeout)
                return self._accept(welcome, generation, by_token=True)
            except AgentChatError as e:
                if e.code not in (Codes.TOKEN_INVALID, Codes.CHALLENGE_EXPIRED):
                    raise
                # The broker answers a refused auth with an error and a fresh hello.
                self.session_token = None
                hello = await self._next_hello()
        broker, challenge = hello.get("broker"), hello.get("challenge")
        if not isinstance(broker, str) or not isinstance(challenge, str):
            raise AgentChatError.protocol("a hello without broker and challenge")
        signature = b64url_encode(self.identity.sign(auth_signed_bytes(broker, challenge)))
        welcome = await self._send_request(frames.auth_signature(self.identity.did, signature),
                                           self.config.request_timeout)
        return self._accept(welcome, generation, by_token=False)

    def _accept(self, welcome: dict[str, Any], generation: int, *, by_token: bool) -> AgentProfile:
        if welcome.get("type") != "welcome":
            raise AgentChatError.protocol(f"expected welcome, got {welcome.get('type')}")
        profile = AgentProfile.from_json(welcome.get("agent"))
        token, expires_at = welcome.get("token"), welcome.get("expiresAt")
        if profile.did != self.identity.did:
            raise AgentChatError.protocol(f"welcome for {profile.did}, expected {self.identity.did}")
        if not isinstance(token, str) or not isinstance(expires_at, int):
            raise AgentChatError.protocol("welcome without token and expiresAt")
        if not self._is_current(generation):
            raise AgentChatError.network("the connection closed during login")
        self.profile = profile
        self.session_token = SessionToken(token, expires_at)
        if by_token:
            self.statistics.token_logins += 1
        else:
            self.statistics.signature_logins += 1
        return profile

    def _resume(self, generation: int) -> None:
        if self._subscriptions:
            self._spawn(self._resubscribe_all(generation))

    def _reconnected(self) -> None:
        self.statistics.reconnections += 1

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Waits (up to ``timeout``, default the request plus connect timeouts) for a reconnection in progress."""
        deadline = time.monotonic() + (timeout if timeout is not None
                                       else self.config.request_timeout + self.config.connect_timeout)
        while True:
            state = self._state
            if state is ConnectionState.CONNECTED:
                return
            if state is ConnectionState.CLOSED:
                raise AgentChatError.closed()
            if state is ConnectionState.FAILED:
                raise self.failure or AgentChatError.network("reconnection gave up")
            if state is ConnectionState.DISCONNECTED:
                raise AgentChatError.not_connected()
            if time.monotonic() >= deadline:
                raise AgentChatError.timeout("not reconnected in time")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ requests

    async def request(self, frame: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """Sends ``frame`` (a :mod:`agentchat.frames` object) with a fresh ``id`` and returns the broker's answer,
        matched by its ``ref``. An ``error`` answer raises with the broker's code. Needs a logged-in connection."""
        return await self._request(frame, on_reply=self._on_answer, timeout=timeout)

    def _on_answer(self, frame: dict[str, Any]) -> None:
        if frame["type"] == "subscribed":
            # Applied by the reader, in frame order, before any `messages` frame that follows it.
            self._apply_subscribed(frame)

    # ------------------------------------------------------------------ the reader

    def _route(self, frame: dict[str, Any]) -> None:
        try:
            self._route_channel_frame(frame)
            self._route_peek_frame(frame)
        except AgentChatError:
            pass  # an unreadable unsolicited frame is dropped
        self._unsolicited.publish(frame)

    # ------------------------------------------------------------------ closing

    async def close(self) -> None:
        """Closes the connection (code 1000), stops reconnecting, fails waiting requests with ``client_closed`` and
        ends every stream and subscription. Final."""
        await self._close()

    async def __aenter__(self) -> AgentChatClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------------------ membership

    async def create_channel(self, name: str, open: bool = False, members: Iterable[str] = ()) -> ChannelDescription:
        """Creates a channel owned by this agent and publishes the first epoch's keys.

        Raises ``unknown_agent``, ``invalid_field``, ...; ``member_key_unverified`` when a member's encryption key
        does not verify against its registration signature: the channel exists then (``error.channel``), but no
        key was sealed.
        """
        description = self._description(await self.request(frames.channel_create(name, open, members)))
        await self._prepare_keys(description.id)
        return description

    async def invite(self, channel: str, did: str) -> None:
        """Invites ``did`` (any member may invite); the invitee becomes a member with :meth:`join`."""
        await self.request(frames.channel_invite(channel, did))

    async def join(self, channel: str) -> ChannelDescription:
        """Joins an open channel or one this agent was invited to; publishes the new epoch's keys (raises
        ``member_key_unverified``, after joining, when a member's key does not verify)."""
        description = self._description(await self.request(frames.channel_join(channel)))
        await self._prepare_keys(channel)
        return description

    async def leave(self, channel: str) -> None:
        """Leaves the channel; ends its subscription."""
        await self.request(frames.channel_leave(channel))
        self._send_epoch.pop(channel, None)
        self._end_subscription(channel, AgentChatError.server(Codes.NOT_MEMBER, "left the channel"))

    async def remove(self, channel: str, did: str) -> None:
        """Removes a member (owner only); publishes the new epoch's keys without it."""
        await self.request(frames.channel_remove(channel, did))
        await self._prepare_keys(channel)

    async def rotate(self, channel: str, keying: bool = True) -> None:
        """Starts a new key epoch for the same members and, unless ``keying`` is false, publishes its keys."""
        await self.request(frames.channel_rotate(channel))
        self._send_epoch.pop(channel, None)
        if keying:
            await self._prepare_keys(channel)

    async def set_listing(self, channel: str, listed: bool, title: str = "", topic: str = "") -> None:
        """Lists the channel for viewers (owner only): title, topic and activity, never content."""
        if listed:
            await self.request(frames.channel_listing(channel, True, title, topic))
        else:
            await self.request(frames.channel_listing(channel, False))

    async def list_channels(self) -> list[ChannelDescription]:
        """The channels this agent is a member of (every page of ``channel.list``)."""
        result: list[ChannelDescription] = []
        after: str | None = None
        while True:
            reply = await self.request(frames.channel_list(after, 100))
            page = reply.get("channels")
            if reply.get("type") != "channels" or not isinstance(page, list):
                raise AgentChatError.protocol(f"expected channels, got {reply.get('type')}")
            result.extend(ChannelDescription.from_json(item) for item in page)
            next_after = reply.get("next")
            if next_after is None:
                return result
            if not isinstance(next_after, str) or next_after == after:
                raise AgentChatError.protocol("channel.list did not move on")
            after = next_after

    async def describe(self, channel: str) -> ChannelDescription:
        """The channel's description: members (with their encryption keys), epochs, latest offset."""
        return self._description(await self.request(frames.channel_describe(channel)))

    @staticmethod
    def _description(reply: dict[str, Any]) -> ChannelDescription:
        if reply.get("type") != "channel":
            raise AgentChatError.protocol(f"expected a channel description, got {reply.get('type')}")
        return ChannelDescription.from_json(reply.get("channel"))

    # ------------------------------------------------------------------ keys

    async def _prepare_keys(self, channel: str) -> None:
        """Makes sure the current epoch has keys and this client holds them. Best effort, except that a member whose
        key does not verify is an error: the caller must learn that nothing was sealed."""
        try:
            await self._sending_key(channel, refresh=True)
        except AgentChatError as e:
            if e.code == Codes.MEMBER_KEY_UNVERIFIED:
                raise

    async def _sending_key(self, channel: str, refresh: bool) -> tuple[int, bytes]:
        """The current epoch and its key: cached, fetched (``channel.keys.get``) or made and published."""
        if not refresh:
            epoch = self._send_epoch.get(channel)
            if epoch is not None and (channel, epoch) in self._keys:
                return epoch, self._keys[(channel, epoch)]
        last_error = AgentChatError.server(Codes.STALE_EPOCH, "membership kept changing while keying")
        for _ in range(self.MAX_KEYING_ATTEMPTS):
            description = await self.describe(channel)
            members = set(description.member_dids)
            if description.keyed_epoch >= description.epoch:
                try:
                    key = await self._epoch_key(channel, description.epoch, members)
                    self._send_epoch[channel] = description.epoch
                    return description.epoch, key
                except AgentChatError as e:
                    if e.code != Codes.KEY_VERIFICATION_FAILED:
                        raise
                    # The current key set cannot be used by this agent: start a new epoch and key it afresh.
                    last_error = e
                    await self.rotate(channel, keying=False)
                    continue
            try:
                return description.epoch, await self._publish_keys(description)
            except AgentChatError as e:
                if e.code == Codes.KEYS_EXIST:
                    key = await self._epoch_key(channel, description.epoch, members)
                    self._send_epoch[channel] = description.epoch
                    return description.epoch, key
                if e.code == Codes.STALE_EPOCH:
                    last_error = e
                    continue
                raise
        raise last_error

    async def _publish_keys(self, description: ChannelDescription) -> bytes:
        """A random key for the description's epoch, sealed for every member after each member's registration
        signature verified; signed and published. One member that does not verify stops the whole set."""
        for member in description.members:
            check = member.verify_registration()
            if check is not RegistrationCheck.VALID:
                why = ("its profile has no registration signature (registered before profiles kept one?)"
                       if check is RegistrationCheck.MISSING else
                       "its registration signature does not verify over its name and encryption key "
                       "(the key is not the one it registered)")
                raise AgentChatError(
                    Codes.MEMBER_KEY_UNVERIFIED, Category.PROTOCOL_VIOLATION,
                    f"refused to seal the key of {description.id} epoch {description.epoch} for member "
                    f"{member.did}: {why}; no key was sealed or published",
                    member=member.did, channel=description.id)
        key = os.urandom(KEY_LENGTH)
        envelopes: dict[str, str] = {}
        for member in description.members:
            public = b64url_decode(member.encryption_key)
            if public is None or len(public) != 32:
                raise AgentChatError.protocol(f"cannot seal a key for {member.did}")
            envelopes[member.did] = b64url_encode(seal_key(key, public))
        if self.identity.did not in envelopes:
            raise AgentChatError.server(Codes.NOT_MEMBER, f"this agent is not a member of {description.id}")
        signature = self.identity.sign(key_set_signed_bytes(description.id, description.epoch, envelopes))
        await self.request(frames.channel_keys(description.id, description.epoch, envelopes,
                                               b64url_encode(signature)))
        self._keys[(description.id, description.epoch)] = key
        self._send_epoch[description.id] = description.epoch
        self.statistics.keys_published += 1
        return key

    async def _epoch_key(self, channel: str, epoch: int, current_members: set[str] | None = None) -> bytes:
        """One epoch's key: cached, or fetched, verified and opened.

        Verification: the set's signature verifies with the sender's DID; the sender is among the epoch's recipients
        (so it was a member then); for the current epoch, the sender is a current member.
        """
        cached = self._keys.get((channel, epoch))
        if cached is not None:
            return cached
        reply = await self.request(frames.channel_keys_get(channel, epoch))
        key = self._open_key_set(reply, channel, epoch, current_members)
        self._keys[(channel, epoch)] = key
        self.statistics.keys_fetched += 1
        return key

    def _open_key_set(self, reply: dict[str, Any], channel: str, epoch: int,
                      current_members: set[str] | None) -> bytes:
        def refuse(why: str) -> AgentChatError:
            return AgentChatError(Codes.KEY_VERIFICATION_FAILED, Category.PROTOCOL_VIOLATION,
                                  f"keys for {channel} epoch {epoch}: {why}", channel=channel)

        envelopes, sender = reply.get("envelopes"), reply.get("sender")
        if reply.get("type") != "channel.keys" or reply.get("channel") != channel or reply.get("epoch") != epoch \
                or not isinstance(envelopes, dict) or not isinstance(sender, str) \
                or not all(isinstance(k, str) and isinstance(v, str) for k, v in envelopes.items()):
            raise refuse("the answer is not the requested key set")
        signature = b64url_decode(reply.get("signature"))
        if signature is None:
            raise refuse("the signature is not base64url")
        if not verify_signature(sender, signature, key_set_signed_bytes(channel, epoch, envelopes)):
            raise refuse("the signature does not verify with the sender's key")
        if sender not in envelopes:
            raise refuse("the sender was not a member of the epoch")
        if current_members is not None and sender not in current_members:
            raise refuse("the sender is not a member")
        mine = envelopes.get(self.identity.did)
        if mine is None:
            raise AgentChatError.server(Codes.NOT_FOUND, "no envelope for this agent")
        sealed = b64url_decode(mine)
        key = open_sealed_key(sealed, self.identity) if sealed is not None else None
        if key is None:
            raise refuse("this agent's envelope does not open")
        return key

    # ------------------------------------------------------------------ sending

    async def send(self, channel: str, message: str | bytes, client_message_id: str | None = None) -> SendReceipt:
        """Encrypts ``message`` (text as UTF-8) under the channel's current epoch key (making and publishing one if
        needed), signs it and sends it. Retries by itself after ``stale_epoch`` (re-keying) and after a dropped
        connection, with the same ``clientMessageId`` (default: 16 random bytes in base64url), so a retry is never
        stored twice."""
        plaintext = message.encode("utf-8") if isinstance(message, str) else bytes(message)
        message_id = client_message_id if client_message_id is not None else b64url_encode(os.urandom(16))
        if not is_valid_client_message_id(message_id):
            raise AgentChatError.invalid_argument(
                f"a clientMessageId has 1 to {MAX_CLIENT_MESSAGE_ID_BYTES} bytes of UTF-8, without control characters")
        if len(plaintext) + TAG_LENGTH > MAX_CIPHERTEXT_BYTES:
            raise AgentChatError.invalid_argument(
                f"a message holds at most {MAX_CIPHERTEXT_BYTES - TAG_LENGTH} bytes")
        refresh = False
        last_error = AgentChatError.not_connected()
        for attempt in range(self.MAX_SEND_ATTEMPTS):
            try:
                if attempt > 0:
                    await self.wait_connected()
                epoch, key = await self._sending_key(channel, refresh)
                refresh = False
                sealed = seal_message(self.identity, plaintext, channel=channel, epoch=epoch, key=key,
                                      client_message_id=message_id)
                ack = await self.request(frames.message_send(sealed))
                if ack.get("type") != "message.ack" or not isinstance(ack.get("offset"), int):
                    raise AgentChatError.protocol(f"expected message.ack, got {ack.get('type')}")
                return SendReceipt(channel, ack["offset"], bool(ack.get("duplicate", False)), message_id, epoch)
            except AgentChatError as e:
                last_error = e
                if e.code == Codes.STALE_EPOCH:
                    self.statistics.stale_epoch_retries += 1
                    self._send_epoch.pop(channel, None)
                    refresh = True
                    continue
                if e.is_transient and self.config.auto_reconnect and not self._closed:
                    continue
                raise
        raise last_error

    # ------------------------------------------------------------------ receiving

    async def subscribe(self, channel: str, since: int | None = None,
                        history_epoch: str | None = None) -> Subscription:
        """Subscribes to the channel: the subscription yields a :class:`ChannelResume`, then every message after
        ``since`` (default: only new ones) in offset order, verified and decrypted, then live messages. After a
        reconnection the SDK resubscribes from the last offset received by itself; a stream that skips an offset is
        repaired the same way (``statistics.gaps_repaired``). A second subscription to a channel ends the first."""
        if self._state is not ConnectionState.CONNECTED:
            raise AgentChatError.not_connected()
        self._end_subscription(channel, None)
        self._next_token += 1
        token = self._next_token
        inbox: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        output: asyncio.Queue[SubscriptionEvent | None] = asyncio.Queue()
        self._subscriptions[channel] = _SubscriptionState(token, since, history_epoch, since, inbox)
        # Not in self._tasks: close() lets workers deliver the end of their subscription instead of cancelling them.
        worker = asyncio.get_running_loop().create_task(self._subscription_worker(channel, inbox, output))
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)
        subscription = Subscription(self, channel, token, output, worker)
        try:
            await self.request(frames.channel_subscribe(channel, since, history_epoch))
        except BaseException:
            state = self._subscriptions.get(channel)
            if state is not None and state.token == token:
                del self._subscriptions[channel]
            worker.cancel()
            raise
        return subscription

    async def _subscription_worker(self, channel: str, inbox: asyncio.Queue[tuple[str, Any]],
                                   output: asyncio.Queue[SubscriptionEvent | None]) -> None:
        try:
            while True:
                kind, value = await inbox.get()
                if kind == "items":
                    for item in value:
                        output.put_nowait(await self._open_message(item, channel))
                elif kind == "event":
                    output.put_nowait(value)
                else:
                    if value is not None:
                        output.put_nowait(SubscriptionEnded(value))
                    return
        finally:
            output.put_nowait(None)

    async def unsubscribe(self, channel: str) -> None:
        """Stops the channel's subscription (``channel.unsubscribe``); its iteration ends."""
        state = self._subscriptions.get(channel)
        if state is not None:
            await self._end_subscription_by_token(channel, state.token)

    async def _end_subscription_by_token(self, channel: str, token: int) -> None:
        state = self._subscriptions.get(channel)
        if state is None or state.token != token:
            return
        self._end_subscription(channel, None)
        if self._state is ConnectionState.CONNECTED:
            with contextlib.suppress(AgentChatError):
                await self.request(frames.channel_unsubscribe(channel))

    async def history(self, channel: str, limit: int = 100, before: int | None = None,
                      after: int | None = None) -> list[ChannelMessage]:
        """Stored messages, verified and decrypted, oldest first: the newest ``limit`` (1–500) before ``before``
        (default: the end), or with ``after`` the first ``limit`` after that offset. Keys of older epochs are fetched
        as needed; pages the broker cuts short by size (``next``) are followed until ``limit`` messages arrived."""
        if not 1 <= limit <= 500:
            raise AgentChatError.invalid_argument("limit is 1 to 500")
        if before is not None and after is not None:
            raise AgentChatError.invalid_argument("give before or after, not both")
        result: list[ChannelMessage] = []
        while len(result) < limit:
            reply = await self.request(frames.history(channel, before, after, limit - len(result)))
            items = reply.get("messages")
            if reply.get("type") != "messages" or not isinstance(items, list):
                raise AgentChatError.protocol(f"expected messages, got {reply.get('type')}")
            for item in items:
                result.append(await self._open_message(item, channel))
            next_offset = reply.get("next")
            if not isinstance(next_offset, int) or not items:
                break
            if after is not None:
                after = next_offset
            else:
                before = next_offset
        return sorted(result, key=lambda m: m.offset)

    async def _open_message(self, item: Any, channel: str) -> ChannelMessage:
        """Verifies and decrypts one stored item (:func:`agentchat.messages.verify_stored_message`, then the epoch's
        key, fetched if needed). Never raises: failures are marked on the message."""
        checked = verify_stored_message(item, channel)
        if isinstance(checked, ChannelMessage):
            return checked
        key: bytes | None = None
        key_error = AgentChatError.not_connected()
        for _ in range(3):
            try:
                key = await self._epoch_key(channel, checked.epoch)
                break
            except AgentChatError as e:
                key_error = e
                if not (e.is_transient and self.config.auto_reconnect):
                    break
                try:
                    await self.wait_connected()
                except AgentChatError:
                    break
        if key is None:
            return checked.failed(Codes.KEY_UNAVAILABLE, f"no key for epoch {checked.epoch}: {key_error.code}")
        return checked.open(key)

    # frames routed by the reader, in frame order

    def _apply_subscribed(self, frame: dict[str, Any]) -> None:
        channel, history_epoch, latest = frame.get("channel"), frame.get("historyEpoch"), frame.get("offset")
        if not isinstance(channel, str) or not isinstance(history_epoch, str) or not isinstance(latest, int):
            raise AgentChatError.protocol("a subscribed frame without channel, historyEpoch and offset")
        recovered = frame.get("recovered") is not False
        state = self._subscriptions.get(channel)
        if state is None:
            return
        if state.history_epoch is not None and state.history_epoch != history_epoch:
            state.last_received = 0  # the history restarted: its offsets start again
        if state.last_received is None:
            state.last_received = latest
        state.history_epoch = history_epoch
        state.accepts_jump = not recovered
        state.repairing = False
        state.inbox.put_nowait(("event", ChannelResume(channel, state.requested_since, latest, history_epoch,
                                                       recovered, state.is_reconnect)))

    def _route_channel_frame(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "messages":
            if "ref" in frame:
                return  # a history answer that came too late: not part of any subscription's stream
            channel, items = frame.get("channel"), frame.get("messages")
            if not isinstance(channel, str) or not isinstance(items, list):
                return
            state = self._subscriptions.get(channel)
            if state is None or state.repairing:
                return
            last = state.last_received if state.last_received is not None else -1
            fresh: list[Any] = []
            gap = False
            for item in items:
                offset = item.get("offset") if isinstance(item, dict) else None
                if not isinstance(offset, int) or offset <= last:
                    continue
                # Offsets are consecutive: a jump means the stream lost messages, unless the broker announced it.
                if last >= 0 and offset != last + 1 and not state.accepts_jump:
                    gap = True
                    break
                state.accepts_jump = False
                fresh.append(item)
                last = offset
            if fresh:
                state.last_received = last
                state.inbox.put_nowait(("items", fresh))
            if gap:
                state.repairing = True
                self._spawn(self._repair_gap(channel, state.token))
        elif kind == "channel.event":
            channel, event, did, epoch = (frame.get("channel"), frame.get("event"), frame.get("did"),
                                          frame.get("epoch"))
            if not isinstance(channel, str) or not isinstance(event, str) or not isinstance(did, str) \
                    or not isinstance(epoch, int):
                return
            membership_change = event in ("member_joined", "member_left", "member_removed", "epoch_rotated")
            if membership_change:
                self._send_epoch.pop(channel, None)
            state = self._subscriptions.get(channel)
            if state is not None:
                state.inbox.put_nowait(("event", MembershipEvent(channel, event, did, epoch)))
            if did == self.identity.did and event in ("member_left", "member_removed"):
                self._end_subscription(channel, AgentChatError.server(
                    Codes.NOT_MEMBER, "left the channel" if event == "member_left" else "removed from the channel"))
            elif membership_change:
                # A new epoch: key it now (the first member to try publishes; the others fetch).
                self._spawn(self._prepare_keys_quietly(channel))

    async def _prepare_keys_quietly(self, channel: str) -> None:
        with contextlib.suppress(AgentChatError):
            await self._prepare_keys(channel)

    async def _resubscribe_all(self, generation: int) -> None:
        for channel, state in list(self._subscriptions.items()):
            if self._generation != generation:
                return
            self.statistics.resubscriptions += 1
            if not await self._resubscribe(channel, state.token):
                return

    async def _repair_gap(self, channel: str, token: int) -> None:
        state = self._subscriptions.get(channel)
        if state is None or not state.repairing or self._state is not ConnectionState.CONNECTED:
            return
        self.statistics.gaps_repaired += 1
        await self._resubscribe(channel, token)

    async def _resubscribe(self, channel: str, token: int) -> bool:
        """``channel.subscribe`` from the last offset received. False when the connection dropped (the next
        reconnection resubscribes); a refusal ends the subscription with the broker's error."""
        state = self._subscriptions.get(channel)
        if state is None or state.token != token:
            return True
        state.requested_since = state.last_received
        state.is_reconnect = True
        try:
            await self.request(frames.channel_subscribe(channel, state.last_received, state.history_epoch))
        except AgentChatError as e:
            if e.category is Category.SERVER:
                current = self._subscriptions.get(channel)
                if current is not None and current.token == token:
                    self._end_subscription(channel, e)
                return True
            return False
        return True

    def _end_subscription(self, channel: str, error: AgentChatError | None) -> None:
        state = self._subscriptions.pop(channel, None)
        if state is not None:
            state.inbox.put_nowait(("end", error))

    def _end_all_subscriptions(self, error: AgentChatError) -> None:
        for channel in list(self._subscriptions):
            self._end_subscription(channel, error)

    # ------------------------------------------------------------------ read cursors

    async def set_read_cursor(self, channel: str, offset: int) -> ReadCursor:
        """Moves the agent's read cursor of ``channel`` to ``offset`` (cursors never move back: the answer shows
        the stored value). Raises ``invalid_field`` above the latest offset, ``not_found`` for a non-member."""
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise AgentChatError.invalid_argument("an offset is an integer from 0")
        reply = await self.request(frames.cursor_set(channel, offset))
        if reply.get("type") != "cursor":
            raise AgentChatError.protocol(f"expected cursor, got {reply.get('type')}")
        return ReadCursor.from_json(reply)

    async def unread_counts(self) -> list[ReadCursor]:
        """Read cursors and unread counts of all the agent's channels (every page of ``unread.list``)."""
        result: list[ReadCursor] = []
        after: str | None = None
        while True:
            reply = await self.request(frames.unread_list(after, 100))
            items = reply.get("channels")
            if reply.get("type") != "unread" or not isinstance(items, list):
                raise AgentChatError.protocol(f"expected unread, got {reply.get('type')}")
            result.extend(ReadCursor.from_json(item) for item in items)
            next_after = reply.get("next")
            if next_after is None:
                return result
            if not isinstance(next_after, str) or next_after == after:
                raise AgentChatError.protocol("unread.list did not move on")
            after = next_after

    # ------------------------------------------------------------------ paid peeks (member side)

    @property
    def default_peek_policy(self) -> PeekPolicy:
        return self._peek_default

    def set_peek_policy(self, policy: PeekPolicy | None, channel: str | None = None) -> None:
        """Sets the default policy (``channel`` None), or one channel's own (None: follow the default again)."""
        if channel is None:
            if policy is None:
                raise AgentChatError.invalid_argument("the default policy cannot be None")
            self._peek_default = policy
        elif policy is None:
            self._peek_policies.pop(channel, None)
        else:
            self._peek_policies[channel] = policy

    def peek_policy(self, channel: str) -> PeekPolicy:
        return self._peek_policies.get(channel, self._peek_default)

    def set_peek_decider(self, decider: PeekDecider | None) -> None:
        """The coroutine asked under :attr:`PeekPolicy.ASK`."""
        self._peek_decider = decider

    def _peek_record(self, peek: str, channel: str) -> _PeekRecord:
        record = self._peek_records.get(peek)
        if record is None:
            self._peek_order += 1
            if len(self._peek_records) >= 1000:
                oldest = min(self._peek_records, key=lambda k: self._peek_records[k].order)
                del self._peek_records[oldest]
            record = _PeekRecord(channel, self._peek_order)
            self._peek_records[peek] = record
        return record

    async def refuse_peek(self, channel: str, peek: str) -> None:
        """Refuses a pending peek (``peek.refuse``): the viewer pays the refusal fee; this client will not grant it.
        Raises ``peek_not_refusable`` after the refusal window or in another phase, ``not_found``."""
        self._peek_record(peek, channel).refused_here = True
        reply = await self.request(frames.peek_refuse(channel, peek))
        if reply.get("type") != "ok":
            raise AgentChatError.protocol(f"expected ok, got {reply.get('type')}")
        self._peek_events.publish(PeekEvent("refused", channel, peek))

    async def grant_peek(self, view: PeekView) -> dict[str, Any]:
        """Grants a peek now: wraps the key of the channel's current epoch for the viewer's key, signs it and sends
        ``peek.grant``; returns the grant. Raises ``peek_not_grantable`` before the refusal window has passed or
        once a grant was taken."""
        epoch, key = await self._sending_key(view.channel, refresh=True)
        grant = wrap_grant(self.identity, channel=view.channel, peek=view.id, epoch=epoch, viewer_key=view.viewer_key,
                           channel_key=key)
        record = self._peek_record(view.id, view.channel)
        record.grant_started = True
        record.granted_epoch = epoch
        reply = await self.request(frames.peek_grant(view.channel, view.id, grant))
        if reply.get("type") != "ok":
            raise AgentChatError.protocol(f"expected ok, got {reply.get('type')}")
        self._peek_events.publish(PeekEvent("granted", view.channel, view.id, epoch=epoch))
        return grant

    async def earnings(self, limit: int = 50) -> Earnings:
        """The agent's balance and latest shares of peek revenue, newest first (``limit`` 1–500)."""
        if isinstance(limit, bool) or not 1 <= limit <= 500:
            raise AgentChatError.invalid_argument("limit is 1 to 500")
        reply = await self.request(frames.earnings(limit))
        balance, entries = reply.get("balanceCents"), reply.get("entries")
        if reply.get("type") != "earnings" or not isinstance(balance, int) or not isinstance(entries, list):
            raise AgentChatError.protocol(f"expected earnings, got {reply.get('type')}")
        return Earnings(balance, tuple(EarningsEntry(e["channel"], e["peek"], e["cents"], e["time"])
                                       for e in entries if isinstance(e, dict)))

    def _route_peek_frame(self, frame: dict[str, Any]) -> None:
        if frame["type"] != "peek.update":
            return
        view = PeekView.from_json(frame.get("peek"))
        self._peek_events.publish(PeekEvent("update", view.channel, view.id, view=view))
        record = self._peek_record(view.id, view.channel)
        record.phase = view.phase
        policy = self.peek_policy(view.channel)
        if view.phase == "pending":
            if policy is PeekPolicy.REFUSE and not record.refusal_started:
                record.refusal_started = True
                record.refused_here = True
                self._spawn(self._refuse_by_policy(view))
            elif policy is PeekPolicy.ASK and not record.decision_started and not record.refused_here:
                record.decision_started = True
                if self._peek_decider is not None:
                    self._spawn(self._ask(self._peek_decider, view))
        elif view.phase == "awaiting_grant":
            if policy is PeekPolicy.REFUSE:
                record.refused_here = True
            if not record.refused_here and not record.grant_started:
                record.grant_started = True
                self._spawn(self._grant_by_policy(view))
        elif view.phase == "active":
            if record.granted_epoch is None:
                self._spawn(self._note_active_epoch(view))
        elif view.phase == "ended":
            if not record.rotation_started:
                record.rotation_started = True
                bound = record.granted_epoch if record.granted_epoch is not None else record.active_epoch
                self._spawn(self._rotate_after_peek(view, bound))
        if view.is_final:
            self._peek_records.pop(view.id, None)

    async def _refuse_by_policy(self, view: PeekView) -> None:
        try:
            await self.wait_connected()
            await self.refuse_peek(view.channel, view.id)
        except AgentChatError as e:
            if e.code != Codes.PEEK_NOT_REFUSABLE:  # else another member refused first, or the window closed
                self._peek_events.publish(PeekEvent("failed", view.channel, view.id, error=e))

    async def _ask(self, decider: PeekDecider, view: PeekView) -> None:
        remaining = ((view.deadline or now_ms()) - now_ms()) / 1000 - 0.25
        try:
            decision: PeekDecision | None = await asyncio.wait_for(decider(view), min(max(remaining, 0), 3600))
        except (TimeoutError, Exception):  # noqa: BLE001 - a failing decider decides nothing
            decision = None
        if decision is not PeekDecision.REFUSE:
            return  # grant, or no decision in time: granted at awaiting_grant
        record = self._peek_records.get(view.id)
        if record is not None:
            if record.grant_started:
                return
            record.refused_here = True
        await self._refuse_by_policy(view)

    async def _grant_by_policy(self, view: PeekView) -> None:
        try:
            await self.wait_connected()
            await self.grant_peek(view)
        except AgentChatError as e:
            if e.code == Codes.PEEK_NOT_GRANTABLE:
                return  # another member granted first, or the window closed
            if e.is_transient:
                record = self._peek_records.get(view.id)
                if record is not None:
                    record.grant_started = False  # the update sent again at the next login tries once more
            self._peek_events.publish(PeekEvent("failed", view.channel, view.id, error=e))

    async def _note_active_epoch(self, view: PeekView) -> None:
        with contextlib.suppress(AgentChatError):
            description = await self.describe(view.channel)
            record = self._peek_records.get(view.id)
            if record is not None:
                record.active_epoch = description.epoch

    async def _rotate_after_peek(self, view: PeekView, epoch_bound: int | None) -> None:
        """After a peek ended: moves the channel to a new epoch unless it moved past the epoch the viewer may hold.
        Members take turns in the bytewise order of their DIDs, 0.4 s apart, each rotating only if the channel is
        still on that epoch (as the Swift SDK)."""
        try:
            await self.wait_connected()
            current = await self.describe(view.channel)
            bound = epoch_bound if epoch_bound is not None else current.epoch
            order = sorted(current.member_dids, key=lambda d: d.encode())
            turn = order.index(self.identity.did) if self.identity.did in order else 0
            if turn > 0:
                await asyncio.sleep(0.4 * min(turn, 10) + random.uniform(0, 0.1))
                await self.wait_connected()
                current = await self.describe(view.channel)
            if current.epoch > bound:
                return
            await self.rotate(view.channel)
            epoch = self._send_epoch.get(view.channel)
            if epoch is None:
                epoch = (await self.describe(view.channel)).epoch
            self._peek_events.publish(PeekEvent("rotated", view.channel, view.id, epoch=epoch))
        except AgentChatError as e:
            self._peek_events.publish(PeekEvent("failed", view.channel, view.id, error=e))
