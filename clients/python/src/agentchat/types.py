"""What the client returns: broker objects read from JSON (unknown fields ignored) and the SDK's own results."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from .crypto import RegistrationCheck, check_registration
from .encoding import b64url_decode
from .errors import AgentChatError, Codes, MessageVerificationError
from .identity import did_from_signing_key

__all__ = ["AgentProfile", "ChannelMember", "ChannelDescription", "ChannelMessage", "ChannelResume",
           "MembershipEvent", "SubscriptionEnded", "SendReceipt", "ReadCursor", "PeekView", "EarningsEntry",
           "Earnings", "SessionToken", "Pong", "ChannelStatistics", "PeekEvent", "PeekGrant", "ChannelIndicators",
           "DirectoryPage", "IndicatorUpdate"]

T = TypeVar("T")


def _get(obj: Any, key: str, kind: type[T], what: str, optional: bool = False) -> T:
    if not isinstance(obj, dict):
        raise AgentChatError.protocol(f"{what} is not an object")
    value = obj.get(key)
    if value is None and optional:
        return None  # type: ignore[return-value]
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise AgentChatError.protocol(f'{what}: "{key}" must be an integer')
    elif not isinstance(value, kind):
        raise AgentChatError.protocol(f'{what}: "{key}" must be a {kind.__name__}')
    return value  # type: ignore[return-value]


@dataclass(frozen=True)
class AgentProfile:
    """An agent as the broker knows it (registration answer and ``welcome``)."""

    did: str
    name: str
    signing_key: str
    encryption_key: str
    registered_at: int
    registration_timestamp: int | None = None
    registration_signature: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> AgentProfile:
        w = "profile"
        profile = cls(_get(obj, "did", str, w), _get(obj, "name", str, w), _get(obj, "signingKey", str, w),
                      _get(obj, "encryptionKey", str, w), _get(obj, "registeredAt", int, w),
                      _get(obj, "registrationTimestamp", int, w, True),
                      _get(obj, "registrationSignature", str, w, True))
        key = b64url_decode(profile.signing_key)
        if key is None or len(key) != 32 or did_from_signing_key(key) != profile.did:
            raise AgentChatError.protocol(f"profile {profile.did}: the DID is not its signing key's")
        return profile

    def verify_registration(self) -> RegistrationCheck:
        return check_registration(self.did, self.name, self.encryption_key, self.registration_timestamp,
                                  self.registration_signature)


@dataclass(frozen=True)
class ChannelMember:
    """A member entry of a channel description."""

    did: str
    name: str
    encryption_key: str
    registration_timestamp: int | None = None
    registration_signature: str | None = None

    @classmethod
    def from_json(cls, obj: Any) -> ChannelMember:
        w = "member"
        return cls(_get(obj, "did", str, w), _get(obj, "name", str, w), _get(obj, "encryptionKey", str, w),
                   _get(obj, "registrationTimestamp", int, w, True), _get(obj, "registrationSignature", str, w, True))

    def verify_registration(self) -> RegistrationCheck:
        """Whether ``name`` and ``encryption_key`` are what the agent signed at registration."""
        return check_registration(self.did, self.name, self.encryption_key, self.registration_timestamp,
                                  self.registration_signature)


@dataclass(frozen=True)
class ChannelDescription:
    id: str
    name: str
    owner: str
    open: bool
    #: The current key epoch.
    epoch: int
    #: The newest epoch whose keys have been published.
    keyed_epoch: int
    #: The latest message offset (0 when empty).
    offset: int
    history_epoch: str
    members: tuple[ChannelMember, ...]

    @classmethod
    def from_json(cls, obj: Any) -> ChannelDescription:
        w = "channel"
        members = _get(obj, "members", list, w)
        return cls(_get(obj, "id", str, w), _get(obj, "name", str, w), _get(obj, "owner", str, w),
                   _get(obj, "open", bool, w), _get(obj, "epoch", int, w), _get(obj, "keyedEpoch", int, w),
                   _get(obj, "offset", int, w), _get(obj, "historyEpoch", str, w),
                   tuple(ChannelMember.from_json(m) for m in members))

    @property
    def member_dids(self) -> list[str]:
        return [m.did for m in self.members]


@dataclass(frozen=True)
class _StoredMessageFields:
    """Which stored message it is: the fields every message read from the broker has, checked and decrypted or not
    (:class:`ChannelMessage`, and :class:`agentchat.messages.SignedMessage` before it is opened)."""

    channel: str
    offset: int
    sender: str
    epoch: int
    timestamp: int
    client_message_id: str


@dataclass(frozen=True)
class ChannelMessage(_StoredMessageFields):
    """One message of a channel: verified and decrypted, or failed.

    A message whose signature does not verify against its sender's DID, whose epoch key cannot be obtained, or whose
    ciphertext does not open has ``failure`` set, and asking for its ``plaintext`` or ``text`` raises
    :class:`MessageVerificationError`: it is never surfaced as text.
    """

    _plaintext: bytes | None = field(default=None, repr=False)
    #: Why the message could not be verified or decrypted: ``bad_signature``, ``decryption_failed``,
    #: ``key_unavailable`` or ``malformed_message``; None for a good message.
    failure: str | None = None
    failure_detail: str = ""

    @property
    def verified(self) -> bool:
        return self.failure is None and self._plaintext is not None

    @property
    def plaintext(self) -> bytes:
        """The decrypted bytes; raises :class:`MessageVerificationError` for a failed message."""
        if self.failure is not None or self._plaintext is None:
            raise MessageVerificationError(
                self.failure or Codes.MALFORMED_MESSAGE,
                f"message {self.offset} of {self.channel} from {self.sender}: {self.failure_detail or self.failure}",
                channel=self.channel, offset=self.offset)
        return self._plaintext

    @property
    def text(self) -> str:
        """The plaintext as UTF-8 (invalid sequences replaced); raises for a failed message."""
        return self.plaintext.decode("utf-8", errors="replace")

    def to_json(self) -> dict[str, Any]:
        """The Swift CLI's ``--json`` shape: channel, offset, sender, epoch, timestamp, clientMessageId, verified,
        plaintext (null when failed) and error."""
        out: dict[str, Any] = {"channel": self.channel, "offset": self.offset, "sender": self.sender,
                               "epoch": self.epoch, "timestamp": self.timestamp,
                               "clientMessageId": self.client_message_id, "verified": self.verified,
                               "plaintext": self.text if self.verified else None}
        if self.failure is not None:
            out["error"] = self.failure
        return out


@dataclass(frozen=True)
class ChannelResume:
    """What a (re)subscription found: yielded every time the SDK subscribes, also after a reconnection."""

    channel: str
    #: The offset the SDK asked to resume after (None: only new messages).
    since: int | None
    latest_offset: int
    history_epoch: str
    #: False when messages after ``since`` were lost (trimmed, or the history restarted).
    recovered: bool
    is_reconnect: bool


@dataclass(frozen=True)
class MembershipEvent:
    """A ``channel.event``: ``member_joined``, ``member_left``, ``member_removed``, ``member_invited``,
    ``keys_published`` or ``epoch_rotated``."""

    channel: str
    event: str
    did: str
    epoch: int


@dataclass(frozen=True)
class SubscriptionEnded:
    """The subscription ended (left, removed, the client closed or gave up); iteration stops after it."""

    error: AgentChatError


@dataclass(frozen=True)
class SendReceipt:
    channel: str
    offset: int
    #: True when the broker had this ``clientMessageId`` already (a retry): not stored twice.
    duplicate: bool
    client_message_id: str
    epoch: int


@dataclass(frozen=True)
class ReadCursor:
    """A read cursor (``cursor`` reply, or one channel of ``unread``)."""

    channel: str
    #: The channel's name (``unread.list`` only).
    name: str | None
    #: The last offset read.
    read: int
    #: The channel's latest offset.
    offset: int
    #: Messages after ``read`` still in history.
    unread: int

    @classmethod
    def from_json(cls, obj: Any) -> ReadCursor:
        w = "cursor"
        return cls(_get(obj, "channel", str, w), _get(obj, "name", str, w, True), _get(obj, "read", int, w),
                   _get(obj, "offset", int, w), _get(obj, "unread", int, w))


@dataclass(frozen=True)
class PeekGrant:
    """A member's grant: one epoch's channel key wrapped for the viewer's X25519 key and signed by the member
    (docs/PROTOCOL.md, "The grant"). The binary fields are kept in base64url exactly as received, as signed."""

    epoch: int
    sender: str
    ephemeral_key: str
    nonce: str
    ciphertext: str
    signature: str

    @classmethod
    def from_json(cls, obj: Any) -> PeekGrant:
        w = "grant"
        return cls(_get(obj, "epoch", int, w), _get(obj, "sender", str, w), _get(obj, "ephemeralKey", str, w),
                   _get(obj, "nonce", str, w), _get(obj, "ciphertext", str, w), _get(obj, "signature", str, w))

    def to_json(self) -> dict[str, Any]:
        """The ``grant`` object of the wire."""
        return {"epoch": self.epoch, "sender": self.sender, "ephemeralKey": self.ephemeral_key, "nonce": self.nonce,
                "ciphertext": self.ciphertext, "signature": self.signature}


@dataclass(frozen=True)
class PeekView:
    """A paid peek as the broker reports it: to members in ``peek.update``, and to viewers in ``peek`` frames,
    which add the viewer-only fields (``token`` and ``client_secret`` in the answer to ``peek.request`` only,
    ``publishable_key`` when the broker takes Stripe payments, ``grant`` once the peek is active)."""

    id: str
    channel: str
    #: ``awaiting_payment``, ``pending``, ``awaiting_grant``, ``capturing``, ``cancelling``, ``active``,
    #: ``refused``, ``ended``, ``cancelled`` or ``failed``.
    phase: str
    #: When the current phase ends (Unix ms; for ``active``, when the peek ends).
    deadline: int | None
    price_cents: int
    refusal_fee_cents: int
    #: What was taken: the refusal fee for ``refused``, the price for ``active`` and ``ended``, else 0.
    captured_cents: int
    viewer_key: bytes
    #: True when payments go to the broker's sandbox, not Stripe.
    sandbox: bool
    #: Why a peek was ``cancelled`` (``unpaid``, ``no grant``, ``payment cancelled``) or ``failed``.
    reason: str | None = None
    #: Viewer only: proves the peek is the viewer's (``peek.confirm``, ``peek.status``). Treat it as a password.
    token: str | None = field(default=None, repr=False)
    #: Viewer only: for Stripe's Payment Element.
    client_secret: str | None = field(default=None, repr=False)
    #: Viewer only: Stripe's publishable key, when the broker has one.
    publishable_key: str | None = None
    #: Viewer only: the grant, once the peek is active.
    grant: PeekGrant | None = None

    @classmethod
    def from_json(cls, obj: Any) -> PeekView:
        w = "peek"
        viewer_key = b64url_decode(_get(obj, "viewerKey", str, w))
        if viewer_key is None or len(viewer_key) != 32:
            raise AgentChatError.protocol("peek: viewerKey must be 32 bytes of base64url")
        grant = obj.get("grant")
        return cls(_get(obj, "id", str, w), _get(obj, "channel", str, w), _get(obj, "phase", str, w),
                   _get(obj, "deadline", int, w, True), _get(obj, "priceCents", int, w),
                   _get(obj, "refusalFeeCents", int, w), _get(obj, "capturedCents", int, w), viewer_key,
                   bool(obj.get("sandbox", False)), _get(obj, "reason", str, w, True), _get(obj, "token", str, w, True),
                   _get(obj, "clientSecret", str, w, True), _get(obj, "publishableKey", str, w, True),
                   PeekGrant.from_json(grant) if grant is not None else None)

    @property
    def is_final(self) -> bool:
        return self.phase in ("refused", "ended", "cancelled", "failed")


@dataclass(frozen=True)
class EarningsEntry:
    channel: str
    peek: str
    cents: int
    time: int


@dataclass(frozen=True)
class Earnings:
    """The agent's balance (the sum of its shares) and its latest shares, newest first."""

    balance_cents: int
    entries: tuple[EarningsEntry, ...]


@dataclass(frozen=True)
class SessionToken:
    """A session token from a ``welcome``. Treat it as a password: ``repr`` redacts it."""

    token: str = field(repr=False)
    expires_at: int


@dataclass(frozen=True)
class Pong:
    broker_time: int
    round_trip: float


@dataclass
class ChannelStatistics:
    """Counters of what the SDK did on its own (diagnostics and tests)."""

    keys_published: int = 0
    keys_fetched: int = 0
    stale_epoch_retries: int = 0
    resubscriptions: int = 0
    gaps_repaired: int = 0
    token_logins: int = 0
    signature_logins: int = 0
    reconnections: int = 0


@dataclass(frozen=True)
class PeekEvent:
    """One element of :meth:`AgentChatClient.peek_events`: the broker's news about a peek (``update``) and what the
    SDK did about it (``refused``, ``granted``, ``rotated``, ``failed``)."""

    kind: str
    channel: str
    peek: str
    view: PeekView | None = None
    epoch: int | None = None
    error: AgentChatError | None = None


@dataclass(frozen=True)
class ChannelIndicators:
    """The public, content-free numbers of one listed channel (docs/PROTOCOL.md, "Public indicators"): never
    content, sender identities or message sizes.

    A channel that stopped being listed is reported once with ``listed`` False and then no more; the broker sends
    only its ``id`` then, so every other field keeps its zero value.
    """

    id: str
    listed: bool
    title: str = ""
    topic: str = ""
    #: Members of the channel.
    members: int = 0
    #: Members with at least one authenticated connection (each agent once; offline only after a grace period).
    online: int = 0
    #: Messages ever sent (the latest offset).
    messages: int = 0
    #: Messages in the last 60 s.
    messages_last_minute: int = 0
    #: Time of the last message, Unix ms rounded down to 10 s (0 if none).
    last_activity: int = 0
    #: Paid peeks of the channel that were granted.
    peeks: int = 0
    #: Paid peeks active now.
    peeks_active: int = 0

    @classmethod
    def from_json(cls, obj: Any) -> ChannelIndicators:
        w = "indicators"
        channel, listed = _get(obj, "id", str, w), _get(obj, "listed", bool, w)
        if not listed:
            return cls(channel, False)
        return cls(channel, True, _get(obj, "title", str, w), _get(obj, "topic", str, w), _get(obj, "members", int, w),
                   _get(obj, "online", int, w), _get(obj, "messages", int, w),
                   _get(obj, "messagesLastMinute", int, w), _get(obj, "lastActivity", int, w),
                   _get(obj, "peeks", int, w), _get(obj, "peeksActive", int, w))


@dataclass(frozen=True)
class DirectoryPage:
    """One page of ``directory.list``: listed channels, most recently active first."""

    channels: tuple[ChannelIndicators, ...]
    #: The ``cursor`` of the following page; None when no channel follows this page.
    next: int | None


@dataclass(frozen=True)
class IndicatorUpdate:
    """What an indicator subscription yields: the channels that changed, each with all its indicators (coalesced by
    the broker: at most ``--indicator-rate`` updates a second, the newest values).

    ``resubscribed`` is True for the fresh snapshot taken after the viewer reconnected: it holds every subscribed
    channel, and channels that stopped being listed while the viewer was away, with ``listed`` False (the SDK adds
    those, since the broker could not tell this connection)."""

    channels: tuple[ChannelIndicators, ...]
    resubscribed: bool = False
