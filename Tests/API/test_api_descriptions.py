"""scripts/check-api-descriptions.py can fail: mutated golden frames (an extra field, a missing required field, a
value of the wrong type) fail validation against docs/asyncapi.yaml with the code the broker would give, and
mutated documents or Swift sources (a message, an error code, a frame type, a route, a $ref, an operation) are
reported. The unmutated tree passes."""
import copy
import glob
import json
import os
import shutil

import pytest

from conftest import ROOT

WRONG_TYPE = {str: 12345, int: "12345", float: "1.5", bool: "true", dict: [], list: {}}


def golden(kind):
    for path in sorted(glob.glob(os.path.join(ROOT, "Tests", "Golden", kind, "*.json"))):
        with open(path, "rb") as f:
            yield os.path.basename(path), json.loads(f.read())


@pytest.fixture(scope="module")
def messages(checker, asyncapi):
    return checker.AsyncAPIMessages(asyncapi)


def required_fields(messages, frame, direction):
    table = messages.client if direction == "client" else messages.server
    payload = messages.doc
    for part in table[frame["type"]][0][2:].split("/"):
        payload = payload[part]
    return [f for f in payload["payload"].get("required", []) if f != "type"]


def test_the_tree_passes(checker):
    assert checker.check_all(ROOT) == []


@pytest.mark.parametrize("name,frame", list(golden("client")))
def test_mutated_client_frames_fail(checker, messages, name, frame):
    assert messages.errors(frame, "client") == []
    extra = {**frame, "unexpectedField": 1}
    assert checker.refusal_code(messages.errors(extra, "client")) == {"unknown_field"}
    for field in required_fields(messages, frame, "client"):
        missing = {k: v for k, v in frame.items() if k != field}
        assert "missing_field" in checker.refusal_code(messages.errors(missing, "client")), field
    for field, value in frame.items():
        if field == "type":
            continue
        wrong = {**frame, field: WRONG_TYPE[type(value)]}
        assert "invalid_field" in checker.refusal_code(messages.errors(wrong, "client")), field


def test_auth_frames_need_one_credential(checker, messages):
    frames = dict(golden("client"))
    signature, token = frames["auth.json"], frames["auth.token.json"]
    both = {**signature, "token": token["token"]}
    assert messages.errors(both, "client")
    assert messages.errors({k: v for k, v in signature.items() if k != "did"}, "client")
    assert messages.errors({"type": "auth"}, "client")


@pytest.mark.parametrize("name,frame", list(golden("server")))
def test_mutated_server_frames_fail(checker, messages, name, frame):
    assert messages.errors(frame, "server", closed=True) == []
    # The document lets clients ignore unknown broker fields; the check closes it, so drift is caught.
    assert messages.errors({**frame, "unexpectedField": 1}, "server") == []
    assert messages.errors({**frame, "unexpectedField": 1}, "server", closed=True)
    for field in required_fields(messages, frame, "server"):
        assert messages.errors({k: v for k, v in frame.items() if k != field}, "server", closed=True), field
    for field, value in frame.items():
        if field != "type":
            assert messages.errors({**frame, field: WRONG_TYPE[type(value)]}, "server", closed=True), field


def test_a_nested_field_the_document_lacks_fails(messages):
    frame = dict(golden("server"))["channel.json"]
    frame = copy.deepcopy(frame)
    frame["channel"]["members"][0]["surprise"] = True
    assert messages.errors(frame, "server", closed=True)


def test_refused_frames_are_refused_for_their_reason(checker, messages):
    for name, raw in checker.golden_frames(ROOT, "refused"):
        code = name.split(".")[0]
        try:
            frame = json.loads(raw)
        except ValueError:
            assert code == "bad_json"
            continue
        if code in ("bad_frame", "unknown_type"):
            continue
        assert checker.refusal_code(messages.errors(frame, "client")) == {code}, name


# ---- Mutated documents -----------------------------------------------------------------------------------------

def problems_with(checker, openapi=None, asyncapi=None, **kw):
    return checker.check_all(ROOT, openapi=openapi, asyncapi=asyncapi)


def test_a_missing_message_is_reported(checker, openapi, asyncapi):
    doc = copy.deepcopy(asyncapi)
    del doc["operations"]["sendChannelJoin"]
    del doc["channels"]["connection"]["messages"]["channelJoin"]
    problems = problems_with(checker, openapi, doc)
    assert any("channel.join.json: no client message" in p for p in problems), problems
    assert any("FrameType.swift has 'channel.join'" in p for p in problems), problems


def test_a_message_without_golden_frames_is_reported(checker, openapi, asyncapi):
    doc = copy.deepcopy(asyncapi)
    message = copy.deepcopy(doc["components"]["messages"]["ping"])
    message["name"] = message["payload"]["properties"]["type"]["const"] = "teleport"
    doc["components"]["messages"]["teleport"] = message
    doc["channels"]["connection"]["messages"]["teleport"] = {"$ref": "#/components/messages/teleport"}
    doc["operations"]["sendTeleport"] = {"action": "send", "channel": {"$ref": "#/channels/connection"},
                                         "messages": [{"$ref": "#/channels/connection/messages/teleport"}]}
    problems = problems_with(checker, openapi, doc)
    assert any("'teleport' has no golden frame" in p for p in problems), problems
    assert any("'teleport' is not a client frame type" in p for p in problems), problems


def test_a_looser_schema_is_caught_by_the_refused_frames(checker, openapi, asyncapi):
    doc = copy.deepcopy(asyncapi)
    doc["components"]["messages"]["history"]["payload"]["properties"]["limit"]["maximum"] = 1000
    problems = problems_with(checker, openapi, doc)
    assert any("refused/invalid_field.json is accepted" in p for p in problems), problems


def test_a_stricter_schema_is_caught_by_the_golden_frames(checker, openapi, asyncapi):
    doc = copy.deepcopy(asyncapi)
    doc["components"]["schemas"]["Offset"]["maximum"] = 10
    problems = problems_with(checker, openapi, doc)
    assert any("message.ack.json does not match" in p for p in problems), problems


def test_error_code_drift_is_reported(checker, openapi, asyncapi):
    a, o = copy.deepcopy(asyncapi), copy.deepcopy(openapi)
    a["components"]["schemas"]["ErrorCode"]["enum"].append("made_up")
    o["components"]["schemas"]["ErrorCode"]["enum"].remove("not_found")
    problems = problems_with(checker, o, a)
    assert any("asyncapi.yaml ErrorCode: made_up is in the enum" in p for p in problems), problems
    assert any("openapi.yaml ErrorCode: not_found is in the Swift sources" in p for p in problems), problems
    a = copy.deepcopy(asyncapi)
    a["components"]["schemas"]["CloseCode"]["enum"].remove(4008)
    assert any("CloseCode: 4008" in p for p in problems_with(checker, openapi, a))


def test_structure_errors_are_reported(checker, openapi, asyncapi):
    doc = copy.deepcopy(asyncapi)
    doc["operations"]["sendPing"]["action"] = "publish"
    assert any("not a valid AsyncAPI 3.0 document" in p for p in problems_with(checker, openapi, doc))
    doc = copy.deepcopy(asyncapi)
    doc["components"]["messages"]["ok"]["payload"]["properties"]["ref"] = {"$ref": "#/components/schemas/Nope"}
    assert any("does not resolve" in p for p in problems_with(checker, openapi, doc))
    doc = copy.deepcopy(asyncapi)
    doc["operations"]["sendPing"]["reply"]["messages"].append({"$ref": "#/components/messages/hello"})
    assert any("is not a message of #/channels/connection" in p for p in problems_with(checker, openapi, doc))
    doc = copy.deepcopy(asyncapi)
    del doc["operations"]["receiveHello"]
    assert any("messages/hello is used by no operation" in p for p in problems_with(checker, openapi, doc))


def test_openapi_drift_is_reported(checker, openapi, asyncapi):
    doc = copy.deepcopy(openapi)
    del doc["paths"]["/peek.js"]
    assert any("serves /peek.js" in p for p in problems_with(checker, doc, asyncapi))
    doc = copy.deepcopy(openapi)
    del doc["paths"]["/api/v1/agents/register"]["options"]
    assert any("/api/v1/agents/register describes" in p for p in problems_with(checker, doc, asyncapi))
    doc = copy.deepcopy(openapi)
    doc["paths"]["/health"]["get"]["responses"]["503"]["content"]["application/json"]["example"]["reason"] = "?"
    assert any("the example" in p and "does not match" in p for p in problems_with(checker, doc, asyncapi))
    doc = copy.deepcopy(openapi)
    doc["paths"]["/health"]["get"]["responses"] = "nothing"
    assert any("not valid OpenAPI" in p for p in problems_with(checker, doc, asyncapi))


def test_swift_drift_is_reported(checker, tmp_path):
    """The Swift side of the comparison: a new error code, frame type or route in a copy of the tree."""
    for part in ("Sources/Protocol", "Sources/AgentChatCore", "Sources/Broker/Web", "Sources/Broker/Admin",
                 "Tests/Golden", "docs"):
        shutil.copytree(os.path.join(ROOT, part), tmp_path / part)
    root = str(tmp_path)
    assert checker.check_all(root) == []
    error_codes = tmp_path / "Sources/Protocol/ErrorCode.swift"
    error_codes.write_text(error_codes.read_text().replace(
        "    // Peeks.", '    public static let teapot = ErrorCode(rawValue: "teapot")\n    // Peeks.'))
    frame_types = tmp_path / "Sources/Protocol/FrameType.swift"
    frame_types.write_text(frame_types.read_text().replace("    case earnings\n",
                                                          '    case earnings\n    case teleport = "tele.port"\n'))
    os.remove(tmp_path / "Tests/Golden/server/cursor.json")
    (tmp_path / "Sources/Broker/Web/extra.js").write_text("//")
    (tmp_path / "Sources/Broker/Admin/extra.js").write_text("//")
    problems = checker.check_all(root)
    assert any("teapot is in the Swift sources" in p for p in problems), problems
    assert any("FrameType.swift has 'tele.port' (client side), no message" in p for p in problems), problems
    assert any("server message 'cursor' has no golden frame" in p for p in problems), problems
    assert any("serves /extra.js" in p for p in problems), problems
    assert any("serves /admin/extra.js" in p for p in problems), problems
