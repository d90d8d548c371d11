"""Identity files: the Swift SDK's format both ways (through the real `agentchat` CLI), permissions, DIDs."""

from __future__ import annotations

import json
import os
import stat

import pytest

from agentchat import AgentChatClient, AgentChatError, AgentIdentity, did_from_signing_key, signing_key_from_did
from agentchat.encoding import b64url_decode, b64url_encode


def test_did_of_the_rfc_8037_key() -> None:
    key = b64url_decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
    assert key is not None
    did = did_from_signing_key(key)
    assert did == "did:agentchat:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw"
    assert signing_key_from_did(did) == key
    assert signing_key_from_did(did[:-1] + "x") != key
    assert signing_key_from_did("did:key:z6MktwupdmLXVVqTzCw4i46r4uGyosGXRnR3XjN4Zq7oMMsw") is None


def test_base64url_is_strict() -> None:
    assert b64url_decode("AQ") == b"\x01"
    for bad in ("AQ==", "A+", "A/", "A Q", "AR", "A"):  # padding, +, /, space, non-canonical bits, bad length
        assert b64url_decode(bad) is None, bad


def test_save_and_load_round_trip_with_modes(tmp_identity_dir: str) -> None:
    path = os.path.join(tmp_identity_dir, "nested", "id.json")
    identity = AgentIdentity.generate(name="alice")
    identity.registered_at = 1704067200000
    identity.server = "http://127.0.0.1:8080"
    identity.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    text = open(path).read()
    assert text.endswith("\n") and json.loads(text) == identity.file_json()
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")) + "\n"
    loaded = AgentIdentity.load(path)
    assert (loaded.did, loaded.name, loaded.registered_at, loaded.server) == (
        identity.did, "alice", 1704067200000, "http://127.0.0.1:8080")
    assert loaded.encryption_public_key == identity.encryption_public_key
    assert identity.did in repr(identity) and json.loads(text)["signingSeed"] not in repr(identity)
    with pytest.raises(AgentChatError) as exists:
        AgentIdentity.generate().save(path)
    assert exists.value.code == "identity_exists"
    assert AgentIdentity.load(path).did == identity.did  # not replaced
    other = AgentIdentity.generate()
    other.save(path, overwrite=True)
    assert AgentIdentity.load(path).did == other.did
    assert [n for n in os.listdir(os.path.dirname(path)) if ".tmp-" in n] == []


def test_load_refuses_insecure_missing_and_invalid_files(tmp_identity_dir: str) -> None:
    path = os.path.join(tmp_identity_dir, "id.json")
    with pytest.raises(AgentChatError) as missing:
        AgentIdentity.load(path)
    assert missing.value.code == "identity_not_found"
    identity = AgentIdentity.generate()
    identity.save(path)
    for mode in (0o640, 0o604, 0o660):
        os.chmod(path, mode)
        with pytest.raises(AgentChatError) as insecure:
            AgentIdentity.load(path)
        assert insecure.value.code == "identity_insecure"
    os.chmod(path, 0o600)
    with pytest.raises(AgentChatError) as directory:
        AgentIdentity.load(tmp_identity_dir)
    assert directory.value.code == "identity_insecure"

    def write(value: object) -> None:
        with open(path, "w") as f:
            f.write(value if isinstance(value, str) else json.dumps(value))
        os.chmod(path, 0o600)

    good = identity.file_json()
    other = AgentIdentity.generate()
    for bad in ("not json", [], {**good, "version": 2}, {**good, "signingSeed": "short"},
                {**good, "encryptionSecret": good["encryptionSecret"] + "="}, {**good, "did": other.did},
                {**good, "did": "did:agentchat:nope"}, {**good, "name": 7}, {**good, "registeredAt": "soon"}):
        write(bad)
        with pytest.raises(AgentChatError) as invalid:
            AgentIdentity.load(path)
        assert invalid.value.code == "identity_invalid", bad
        assert good["signingSeed"] not in invalid.value.message


async def test_a_keygen_identity_loads_and_logs_in_from_python(broker, tmp_identity_dir: str) -> None:
    path = os.path.join(tmp_identity_dir, "swift.json")
    made = broker.cli("keygen", "--name", "swift-made", identity=path)
    identity = AgentIdentity.load(path)
    assert identity.did == made["did"] and identity.name == "swift-made"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    client = AgentChatClient(identity, broker.url)
    try:
        profile = await client.register()  # Python registers the Swift-made identity...
        assert profile.did == made["did"] and profile.name == "swift-made"
        assert profile.encryption_key == b64url_encode(identity.encryption_public_key)
        await client.connect()
    finally:
        await client.close()
    whoami = broker.cli("whoami", identity=path)  # ...and the Swift CLI logs in with the same keys
    assert whoami["did"] == made["did"] and whoami["encryptionKey"] == profile.encryption_key


async def test_a_python_identity_works_with_the_swift_cli(broker, tmp_identity_dir: str) -> None:
    path = os.path.join(tmp_identity_dir, "deep", "python.json")
    identity = AgentIdentity.generate(name="python-made")
    identity.save(path)
    registered = broker.cli("register", identity=path)  # the Swift CLI registers the Python-made file
    assert registered["did"] == identity.did
    assert registered["encryptionKey"] == b64url_encode(identity.encryption_public_key)
    assert broker.cli("whoami", identity=path)["did"] == identity.did
    reloaded = AgentIdentity.load(path)  # whatever the CLI wrote back still loads here
    assert reloaded.did == identity.did
    client = AgentChatClient(reloaded, broker.url)
    try:
        assert (await client.connect()).did == identity.did
    finally:
        await client.close()
    os.chmod(path, 0o644)
    refused = broker.cli("whoami", identity=path, check=False)
    assert refused.returncode == 1 and "identity_insecure" in refused.stderr
