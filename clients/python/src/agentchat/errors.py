"""The SDK's one error type, carrying the broker's error code."""

from __future__ import annotations

import enum

__all__ = ["AgentChatError", "Category", "Codes", "MessageVerificationError"]


class Category(enum.Enum):
    """What kind of failure an :class:`AgentChatError` is, independent of the exact code."""

    SERVER = "server"
    """The broker answered and refused (HTTP error status or ``error`` frame); ``code`` is its code."""
    NETWORK = "network"
    """The broker could not be reached, the connection broke, or it did not answer in time."""
    PROTOCOL_VIOLATION = "protocol_violation"
    """The broker answered something this client does not accept (including keys or messages that fail
    verification)."""
    IDENTITY = "identity"
    """The local identity file is missing, unreadable, insecure or malformed."""
    INVALID_ARGUMENT = "invalid_argument"
    """The caller passed an invalid argument, detected before anything was sent."""
    STATE = "state"
    """The client was closed, or is not connected."""


class Codes:
    """Codes the client produces itself, and the broker codes it acts on (docs/PROTOCOL.md, "Error codes")."""

    NETWORK_ERROR = "network_error"
    TIMEOUT = "timeout"
    UNEXPECTED_RESPONSE = "unexpected_response"
    INVALID_ARGUMENT = "invalid_argument"
    IDENTITY_NOT_FOUND = "identity_not_found"
    IDENTITY_EXISTS = "identity_exists"
    IDENTITY_INSECURE = "identity_insecure"
    IDENTITY_INVALID = "identity_invalid"
    IDENTITY_IO = "identity_io_error"
    NOT_CONNECTED = "not_connected"
    CLOSED = "client_closed"
    UNSUPPORTED_SCHEME = "unsupported_scheme"
    KEY_VERIFICATION_FAILED = "key_verification_failed"
    MEMBER_KEY_UNVERIFIED = "member_key_unverified"
    CRYPTO_ERROR = "crypto_error"
    # Why a received message is not text (MessageVerificationError).
    BAD_SIGNATURE = "bad_signature"
    DECRYPTION_FAILED = "decryption_failed"
    KEY_UNAVAILABLE = "key_unavailable"
    MALFORMED_MESSAGE = "malformed_message"
    # Broker codes.
    ALREADY_REGISTERED = "already_registered"
    RATE_LIMITED = "rate_limited"
    AUTH_FAILED = "auth_failed"
    CHALLENGE_EXPIRED = "challenge_expired"
    TOKEN_INVALID = "token_invalid"
    NOT_FOUND = "not_found"
    FORBIDDEN = "forbidden"
    NOT_MEMBER = "not_member"
    STALE_EPOCH = "stale_epoch"
    KEYS_EXIST = "keys_exist"
    UNKNOWN_AGENT = "unknown_agent"
    UNAVAILABLE = "unavailable"
    PEEK_NOT_REFUSABLE = "peek_not_refusable"
    PEEK_NOT_GRANTABLE = "peek_not_grantable"


class AgentChatError(Exception):
    """Why an SDK call failed.

    ``code`` is stable and machine-readable: for a refusal by the broker it is the broker's own code (the ``code`` of
    an HTTP error body or of an ``error`` frame); for failures on this side one of :class:`Codes`. The message never
    contains key material or tokens.
    """

    def __init__(self, code: str, category: Category, message: str = "", *, http_status: int | None = None,
                 existing_did: str | None = None, retry_after_seconds: int | None = None,
                 close_code: int | None = None, member: str | None = None, channel: str | None = None) -> None:
        super().__init__(f"{code}: {message}" if message else code)
        self.code = code
        self.category = category
        self.message = message
        self.http_status = http_status
        #: For ``already_registered``: the DID the signing key is registered under.
        self.existing_did = existing_did
        #: For HTTP 429: the ``Retry-After`` delay in seconds.
        self.retry_after_seconds = retry_after_seconds
        #: For a closed connection: the WebSocket close code, when the broker sent one.
        self.close_code = close_code
        #: For ``member_key_unverified``: the member whose encryption key could not be verified.
        self.member = member
        #: For ``member_key_unverified``: the channel whose key was not sealed.
        self.channel = channel

    @classmethod
    def server(cls, code: str, message: str, *, http_status: int | None = None) -> AgentChatError:
        return cls(code, Category.SERVER, message, http_status=http_status)

    @classmethod
    def network(cls, message: str, *, close_code: int | None = None) -> AgentChatError:
        return cls(Codes.NETWORK_ERROR, Category.NETWORK, message, close_code=close_code)

    @classmethod
    def protocol(cls, message: str) -> AgentChatError:
        return cls(Codes.UNEXPECTED_RESPONSE, Category.PROTOCOL_VIOLATION, message)

    @classmethod
    def invalid_argument(cls, message: str) -> AgentChatError:
        return cls(Codes.INVALID_ARGUMENT, Category.INVALID_ARGUMENT, message)

    @classmethod
    def identity(cls, code: str, message: str) -> AgentChatError:
        return cls(code, Category.IDENTITY, message)

    @classmethod
    def not_connected(cls) -> AgentChatError:
        return cls(Codes.NOT_CONNECTED, Category.STATE, "not connected")

    @classmethod
    def closed(cls) -> AgentChatError:
        return cls(Codes.CLOSED, Category.STATE, "the client was closed")

    @classmethod
    def timeout(cls, message: str) -> AgentChatError:
        return cls(Codes.TIMEOUT, Category.NETWORK, message)

    @property
    def is_transient(self) -> bool:
        """A network failure, no connection, or ``unavailable``: retrying later may succeed."""
        return self.category is Category.NETWORK or self.code in (Codes.NOT_CONNECTED, Codes.UNAVAILABLE)

    def __repr__(self) -> str:
        return f"AgentChatError(code={self.code!r}, category={self.category.value}, message={self.message!r})"


class MessageVerificationError(AgentChatError):
    """A received message that failed verification or decryption, raised when its text is asked for.

    ``code`` is ``bad_signature`` (the Ed25519 signature does not verify against the sender's DID),
    ``decryption_failed`` (AES-GCM authentication failed), ``key_unavailable`` (no key for its epoch) or
    ``malformed_message``.
    """

    def __init__(self, code: str, message: str, *, channel: str, offset: int) -> None:
        super().__init__(code, Category.PROTOCOL_VIOLATION, message, channel=channel)
        self.offset = offset
