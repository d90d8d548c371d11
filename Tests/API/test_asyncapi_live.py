"""docs/asyncapi.yaml's client messages against the broker's own decoder: every golden client frame, and mutations
of it derived from its schema (an extra field, each required field missing, each field of the wrong type, each
bound and length just inside and just outside, each pattern just missed), sent to a real broker on an authenticated
connection. Where the schema refuses a frame the broker must refuse it with the code the schema's errors map to
(scripts/check-api-descriptions.py `refusal_code`); where the schema accepts it, the broker must not answer with a
decoding error. So the schemas say exactly what the codec accepts, not only what the golden frames happen to hold.
(Checks that need state or keys, a signature that must verify, an offset past the channel's end, are beyond a
schema; the probes use channels that do not exist, which the broker answers not_found after decoding, and sign
`channel.keys` for real since its signature is checked first.)
"""
import base64
import copy
import glob
import json
import os
import time

import pytest
import requests
from nacl.signing import SigningKey
from websockets.sync.client import connect

from conftest import ROOT, Broker

DECODING_ERRORS = {"bad_json", "bad_frame", "unknown_type", "missing_field", "invalid_field", "unknown_field"}
WRONG_TYPE = {str: 12345, int: "12345", float: "1.5", bool: "true", dict: [], list: {}}


def b64(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Agent:
    """A registered agent logged in over the WebSocket (challenge signature)."""

    def __init__(self, broker, ws):
        key = SigningKey.generate()
        timestamp = int(time.time() * 1000)
        signing, encryption = b64(bytes(key.verify_key)), b64(os.urandom(32))
        signed = "\n".join(["agentchat-register-v1", "schema-probe", signing, encryption, str(timestamp)]).encode()
        response = requests.post(broker.url + "/api/v1/agents/register", timeout=10, json={
            "name": "schema-probe", "signingKey": signing, "encryptionKey": encryption, "timestamp": timestamp,
            "signature": b64(key.sign(signed).signature)})
        assert response.status_code == 201, response.text
        self.did = response.json()["did"]
        self.key = key
        self.ws = ws
        self.received = []  # every broker frame on this connection, for the server schemas
        hello = self.receive()
        assert hello["type"] == "hello"
        proof = key.sign(f"agentchat-auth-v1\n{hello['broker']}\n{hello['challenge']}".encode()).signature
        self.ws.send(json.dumps({"type": "auth", "id": "login", "did": self.did, "signature": b64(proof)}))
        welcome = self.receive()
        assert welcome["type"] == "welcome", welcome

    def receive(self):
        frame = json.loads(self.ws.recv(timeout=10))
        self.received.append(frame)
        return frame

    def sign_keys(self, frame):
        """`channel.keys` signed by this agent (the broker checks the signature before anything else)."""
        signed = f"agentchat-keys-v1\n{frame['channel']}\n{frame['epoch']}\n" + "".join(
            f"{did} {envelope}\n" for did, envelope in sorted(frame["envelopes"].items()))
        return {**frame, "signature": b64(self.key.sign(signed.encode()).signature)}

    def ask(self, frame, id_readable):
        """Sends one frame and returns the broker's answer to it (frames pushed meanwhile are skipped)."""
        self.ws.send(json.dumps(frame))
        while True:
            try:
                answer = self.receive()
            except TimeoutError:
                raise AssertionError(f"no answer to {json.dumps(frame)[:300]}") from None
            assert answer.get("code") != "rate_limited", f"dropped: {json.dumps(frame)[:200]}"
            if id_readable and answer.get("ref") == frame["id"]:
                return answer
            if not id_readable and answer.get("type") == "error" and "ref" not in answer:
                return answer


def deref(doc, schema):
    while "$ref" in schema:
        target = doc
        for part in schema["$ref"][2:].split("/"):
            target = target[part]
        schema = target
    return schema


def mutations(doc, payload, frame):
    """(label, frame) pairs around `frame`, derived from its message's payload schema."""
    yield "as is", frame
    yield "an extra field", {**frame, "zz": 1}
    for field in payload.get("required", []):
        if field != "type":
            yield f"without {field}", {k: v for k, v in frame.items() if k != field}
    for field, value in frame.items():
        if field != "type":
            yield f"{field} of the wrong type", {**frame, field: WRONG_TYPE[type(value)]}
    for field, schema in payload["properties"].items():
        if field == "type":
            continue
        schema = deref(doc, schema)
        if schema.get("type") == "integer":
            for bound, steps in (("minimum", (-1, 0)), ("maximum", (0, 1))):
                if bound in schema:
                    for step in steps:
                        yield f"{field} = {schema[bound] + step}", {**frame, field: schema[bound] + step}
        if schema.get("type") == "string":
            if "maxLength" in schema:
                for n in (schema["maxLength"], schema["maxLength"] + 1):
                    yield f"{field} of {n} characters", {**frame, field: "a" * n}
            if schema.get("minLength", 0) > 0:
                yield f"{field} one character short", {**frame, field: "a" * (schema["minLength"] - 1)}
            if isinstance(frame.get(field), str) and ("pattern" in schema or "allOf" in schema):
                yield f"{field} one character short", {**frame, field: frame[field][:-1]}
                yield f"{field} one character long", {**frame, field: frame[field] + "A"}
                yield f"{field} with a space", {**frame, field: frame[field][:-1] + " "}
        if schema.get("type") == "array" and isinstance(frame.get(field), list) and frame[field]:
            if "maxItems" in schema:
                for n in (schema["maxItems"], schema["maxItems"] + 1):
                    yield f"{field} with {n} items", {**frame, field: [frame[field][0]] * n}
            yield f"{field} empty", {**frame, field: []}
            yield f"{field} holding a number", {**frame, field: [1]}


def client_cases(checker, asyncapi):
    messages = checker.AsyncAPIMessages(asyncapi)
    for path in sorted(glob.glob(os.path.join(ROOT, "Tests", "Golden", "client", "*.json"))):
        with open(path, "rb") as f:
            frame = json.load(f)
        pointer = messages.client[frame["type"]][0]
        payload = deref(asyncapi, {"$ref": pointer})["payload"]
        for label, mutated in mutations(asyncapi, payload, frame):
            yield os.path.basename(path), label, mutated, messages


@pytest.fixture(scope="module")
def frame_broker():
    # Its own broker: the session broker's registration budget (--register-rate 2) belongs to test_openapi_live.
    # The first viewer frame (directory.list) gives a connection the viewers' frame budget; raised so that the
    # hundreds of probes below are answered, not dropped with rate_limited.
    b = Broker("--viewer-frames-per-second", "100000", "--frames-per-second", "100000")
    yield b
    b.stop()


def compare(broker, checker, asyncapi):
    """Sends every probe; returns (disagreements, probes sent, probes the schema refuses)."""
    disagreements, seen, refused = [], 0, 0
    with connect(f"ws://127.0.0.1:{broker.port}/", subprotocols=["agentchat.v1"], open_timeout=10,
                 max_size=None) as ws:
        agent = Agent(broker, ws)
        for name, label, frame, messages in client_cases(checker, asyncapi):
            errors = messages.errors(frame, "client")
            expected = checker.refusal_code(errors) if errors else set()
            if not errors and frame["type"] == "channel.keys" and "signature" not in label:
                frame = agent.sign_keys(frame)
            id_readable = isinstance(frame.get("id"), str) and len(frame["id"].encode()) <= 64
            answer = agent.ask(frame, id_readable)
            got = answer.get("code") if answer.get("type") == "error" else None
            seen += 1
            if expected:
                refused += 1
                if got not in expected:
                    disagreements.append(f"{name}, {label}: the schema refuses it ({sorted(expected)}), "
                                         f"the broker answers {got or answer.get('type')}")
            elif got in DECODING_ERRORS:
                disagreements.append(f"{name}, {label}: the schema accepts it, the broker refuses it ({got}: "
                                     f"{answer.get('message')})")
        # The broker's answers (hello, welcome, pong, channel, channels, earnings, directory, indicators, error
        # with many codes…) against the server messages, closed: a field the document does not describe fails.
        server = checker.AsyncAPIMessages(asyncapi)
        for answer in agent.received:
            errors = server.errors(answer, "server", closed=True)
            if errors is None or errors:
                disagreements.append(f"the broker sent {json.dumps(answer)[:200]}, which does not match its server "
                                     f"message: {checker.describe(errors) if errors else 'no message'}")
        global RECEIVED_TYPES
        RECEIVED_TYPES = {answer.get("type") for answer in agent.received}
    return disagreements, seen, refused


RECEIVED_TYPES = set()


def test_client_schemas_agree_with_the_broker(frame_broker, checker, asyncapi):
    disagreements, seen, refused = compare(frame_broker, checker, asyncapi)
    assert not disagreements, f"{len(disagreements)} of {seen} frames:\n" + "\n".join(disagreements)
    # Both sides of the comparison were exercised.
    assert refused > seen / 2 and seen - refused > 30, (seen, refused)
    assert {"hello", "welcome", "pong", "error", "channel", "channels", "earnings", "directory", "indicators",
            "ok"} <= RECEIVED_TYPES, RECEIVED_TYPES


def test_a_schema_looser_or_stricter_than_the_broker_is_caught(frame_broker, checker, asyncapi):
    doc = copy.deepcopy(asyncapi)
    doc["components"]["messages"]["history"]["payload"]["properties"]["limit"]["maximum"] = 501
    doc["components"]["messages"]["channelCreate"]["payload"]["properties"]["members"]["maxItems"] = 99
    disagreements, _, _ = compare(frame_broker, checker, doc)
    assert any(d.startswith("history.json, limit = 501: the schema accepts it") for d in disagreements), disagreements
    assert any(d.startswith("channel.create.json, members with 100 items: the schema refuses it")
               for d in disagreements), disagreements
