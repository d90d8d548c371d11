"""An agent's identity: its Ed25519 signing key (whose public key is its DID) and its X25519 encryption key.

The identity file is the Swift SDK's format (``Sources/AgentChatClient/AgentIdentity.swift``): one compact JSON
object with sorted keys and a final newline, mode ``0600`` in a directory created with mode ``0700``::

    {"did":"did:agentchat:z6Mk…","encryptionSecret":"<b64url, 32 bytes>","name":"alice",
     "registeredAt":1704067200000,"server":"http://127.0.0.1:8080","signingSeed":"<b64url, 32 bytes>","version":1}

A file made by ``agentchat keygen`` loads here, and one saved here works with the ``agentchat`` CLI.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from typing import Any

import nacl.exceptions
import nacl.public
import nacl.signing

from .encoding import b64url_decode, b64url_encode, base58_decode, base58_encode
from .errors import AgentChatError, Codes

__all__ = ["AgentIdentity", "did_from_signing_key", "signing_key_from_did", "verify_signature",
           "default_identity_path", "FILE_VERSION"]

FILE_VERSION = 1
DID_PREFIX = "did:agentchat:z"
_MULTICODEC_ED25519 = b"\xed\x01"


def did_from_signing_key(public_key: bytes) -> str:
    """``did:agentchat:z`` + base58btc(0xED 0x01 ‖ 32-byte Ed25519 public key)."""
    if len(public_key) != 32:
        raise AgentChatError.invalid_argument("an Ed25519 public key is 32 bytes")
    return DID_PREFIX + base58_encode(_MULTICODEC_ED25519 + public_key)


def signing_key_from_did(did: str) -> bytes | None:
    """The Ed25519 public key read out of a DID; None when it is not a canonical ``did:agentchat`` DID."""
    if not isinstance(did, str) or not did.startswith(DID_PREFIX):
        return None
    raw = base58_decode(did[len(DID_PREFIX):])
    if raw is None or len(raw) != 34 or raw[:2] != _MULTICODEC_ED25519:
        return None
    key = raw[2:]
    return key if did_from_signing_key(key) == did else None


def verify_signature(did_or_key: str | bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification with a public key, or the key read out of a DID."""
    key = signing_key_from_did(did_or_key) if isinstance(did_or_key, str) else did_or_key
    if key is None or len(signature) != 64:
        return False
    try:
        nacl.signing.VerifyKey(key).verify(message, signature)
        return True
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        return False


def default_identity_path() -> str:
    """``$AGENTCHAT_IDENTITY``, else ``~/.agentchat/identity.json`` (as the CLI)."""
    return os.environ.get("AGENTCHAT_IDENTITY") or os.path.join(os.path.expanduser("~"), ".agentchat",
                                                                "identity.json")


class AgentIdentity:
    """An agent's two key pairs plus what it remembers about its registration.

    Private keys never leave the agent: ``repr`` shows only the DID.
    """

    def __init__(self, signing_seed: bytes, encryption_secret: bytes, *, name: str | None = None,
                 registered_at: int | None = None, server: str | None = None) -> None:
        if len(signing_seed) != 32 or len(encryption_secret) != 32:
            raise AgentChatError.invalid_argument("signing seed and encryption secret are 32 bytes each")
        self._signing = nacl.signing.SigningKey(bytes(signing_seed))
        self._encryption = nacl.public.PrivateKey(bytes(encryption_secret))
        #: The 32-byte Ed25519 public key.
        self.signing_public_key: bytes = bytes(self._signing.verify_key)
        #: The 32-byte X25519 public key.
        self.encryption_public_key: bytes = bytes(self._encryption.public_key)
        #: The agent's DID, a pure function of the signing public key.
        self.did: str = did_from_signing_key(self.signing_public_key)
        self.name = name
        self.registered_at = registered_at
        self.server = server

    @classmethod
    def generate(cls, name: str | None = None) -> AgentIdentity:
        """A new identity with fresh random keys."""
        return cls(os.urandom(32), bytes(nacl.public.PrivateKey.generate()), name=name)

    def sign(self, message: bytes) -> bytes:
        """A detached Ed25519 signature of ``message``."""
        return self._signing.sign(message).signature

    @property
    def encryption_private_key(self) -> nacl.public.PrivateKey:
        return self._encryption

    def __repr__(self) -> str:
        return f"AgentIdentity({self.did})"

    __str__ = __repr__

    # -- file

    def file_json(self) -> dict[str, Any]:
        """The identity file's object. Contains the private keys: never log it."""
        fields: dict[str, Any] = {
            "version": FILE_VERSION,
            "signingSeed": b64url_encode(bytes(self._signing)),
            "encryptionSecret": b64url_encode(bytes(self._encryption)),
            "did": self.did,
        }
        if self.name is not None:
            fields["name"] = self.name
        if self.registered_at is not None:
            fields["registeredAt"] = self.registered_at
        if self.server is not None:
            fields["server"] = self.server
        return fields

    @classmethod
    def from_file_json(cls, value: Any, path: str = "identity") -> AgentIdentity:
        """Parses an identity file's object (the checks of the Swift SDK)."""
        def invalid(why: str) -> AgentChatError:
            return AgentChatError.identity(Codes.IDENTITY_INVALID, f"{path}: {why}")

        if not isinstance(value, dict):
            raise invalid("not a JSON object")
        version = value.get("version")
        if not _is_integer(version):
            raise invalid('no integer "version"')
        if version != FILE_VERSION:
            raise invalid(f"unsupported version {version}")
        seed = b64url_decode(value.get("signingSeed"))
        if seed is None or len(seed) != 32:
            raise invalid('"signingSeed" must be 32 bytes of base64url')
        secret = b64url_decode(value.get("encryptionSecret"))
        if secret is None or len(secret) != 32:
            raise invalid('"encryptionSecret" must be 32 bytes of base64url')
        did = value.get("did")
        if not isinstance(did, str) or signing_key_from_did(did) is None:
            raise invalid('no valid "did"')
        identity = cls(seed, secret)
        if did != identity.did:
            raise invalid(f'"did" {did} does not match the signing key ({identity.did})')
        if "name" in value:
            if not isinstance(value["name"], str):
                raise invalid('"name" must be a string')
            identity.name = value["name"]
        if "registeredAt" in value:
            if not _is_integer(value["registeredAt"]):
                raise invalid('"registeredAt" must be an integer')
            identity.registered_at = int(value["registeredAt"])
        if "server" in value:
            if not isinstance(value["server"], str):
                raise invalid('"server" must be a string')
            identity.server = value["server"]
        return identity

    def save(self, path: str | None = None, *, overwrite: bool = False) -> str:
        """Writes the identity file atomically: missing directories are created with mode 0700, the JSON goes to a
        temporary file of mode 0600 beside ``path``, which is then renamed (or, without ``overwrite``, linked) into
        place, so an existing identity is never lost. Returns the path.

        Raises ``identity_exists`` if ``path`` exists and ``overwrite`` is false; ``identity_io_error``.
        """
        path = path or default_identity_path()
        directory = os.path.dirname(os.path.abspath(path))
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError as e:
            raise _io_error(f"mkdir {directory}", e) from None
        data = (json.dumps(self.file_json(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                + "\n").encode("utf-8")
        try:
            fd, temporary = tempfile.mkstemp(prefix=os.path.basename(path) + ".tmp-", dir=directory)
        except OSError as e:
            raise _io_error(f"create a temporary file beside {path}", e) from None
        committed = False
        try:
            try:
                os.fchmod(fd, 0o600)
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            except OSError as e:
                raise _io_error(f"write {temporary}", e) from None
            finally:
                os.close(fd)
            if overwrite:
                try:
                    os.rename(temporary, path)
                except OSError as e:
                    raise _io_error(f"rename {temporary} to {path}", e) from None
                committed = True
            else:
                try:
                    os.link(temporary, path)
                except FileExistsError:
                    raise AgentChatError.identity(
                        Codes.IDENTITY_EXISTS, f"{path} exists already; refusing to overwrite an identity") from None
                except OSError as e:
                    raise _io_error(f"link {temporary} to {path}", e) from None
        finally:
            if not committed:
                try:
                    os.unlink(temporary)
                except OSError:
                    pass
        return path

    @classmethod
    def load(cls, path: str | None = None) -> AgentIdentity:
        """Reads an identity file (ours or the Swift SDK's).

        Raises ``identity_not_found`` if there is no file; ``identity_insecure`` if group or others have any
        permission on it, or it is not a regular file; ``identity_invalid`` if it is not a valid identity.
        """
        path = path or default_identity_path()
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise AgentChatError.identity(
                Codes.IDENTITY_NOT_FOUND, f"no identity at {path} (create one with `agentchat keygen`)") from None
        except OSError as e:
            raise _io_error(f"stat {path}", e) from None
        if not stat.S_ISREG(info.st_mode):
            raise AgentChatError.identity(Codes.IDENTITY_INSECURE, f"{path} is not a regular file")
        permissions = info.st_mode & 0o777
        if permissions & 0o077:
            raise AgentChatError.identity(
                Codes.IDENTITY_INSECURE,
                f"{path} has mode {permissions:o}: it holds private keys and must not be accessible by group or "
                f"others (chmod 600 {path})")
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise _io_error(f"read {path}", e) from None
        try:
            value = json.loads(data.decode("utf-8"), object_pairs_hook=_no_duplicates)
        except (UnicodeDecodeError, ValueError) as e:
            raise AgentChatError.identity(Codes.IDENTITY_INVALID, f"{path}: not valid JSON ({e})") from None
        return cls.from_file_json(value, path)


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _io_error(what: str, error: OSError) -> AgentChatError:
    reason = os.strerror(error.errno) if error.errno else str(error)
    if error.errno == errno.EEXIST:
        reason = "exists"
    return AgentChatError.identity(Codes.IDENTITY_IO, f"cannot {what}: {reason}")
