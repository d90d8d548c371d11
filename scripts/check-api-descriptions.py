#!/usr/bin/env python3
"""Checks docs/openapi.yaml and docs/asyncapi.yaml against the code and the golden frames, so they cannot drift.

  python3 scripts/check-api-descriptions.py [REPO_ROOT]

Exits 1 and lists every problem found, 0 when there is none. What it checks:

- openapi.yaml is valid OpenAPI 3.1 (openapi-spec-validator), and its paths and methods are the broker's routes:
  those Sources/AgentChatCore/FrameRouter.swift adds, every file of Sources/Broker/Web (with `/` for
  index.html), and every file of Sources/Broker/Admin under `/admin/` (with `/admin` for index.html). HEAD is described wherever GET is (the router serves it). Its JSON examples match their schemas.
- asyncapi.yaml is a valid AsyncAPI 3.0 document: the `asyncapi3` models (PyPI; pydantic models of the 3.0
  specification, extensions must start with `x-`), plus checks of our own: `asyncapi: 3.0.0`, every `$ref`
  resolves, every operation names a channel of the document and messages of that channel (replies too), every
  channel message is used by an operation, message payloads are well-formed JSON Schema (draft 7).
- Every golden frame validates against the message of its `type` and direction: Tests/Golden/client/*.json
  against the messages of `send` operations (which refuse unknown fields), Tests/Golden/server/*.json against
  those of `receive` operations, closed for the check (a field the broker writes that the document does not
  describe fails). Every Tests/Golden/refused/<code>[.<variant>].json is refused, for the reason its name gives:
  not JSON (`bad_json`), not an object with a string type (`bad_frame`), no message for its type (`unknown_type`),
  or the schema errors map to the code (`required` → `missing_field`, `additionalProperties` → `unknown_field`,
  anything else → `invalid_field`).
- Every frame type has golden frames and a message, in both directions, and no message lacks golden frames.
- The frame types and their directions equal Sources/Protocol/FrameType.swift; the error codes in both documents
  equal Sources/Protocol/ErrorCode.swift; the close codes equal Sources/Protocol/CloseCode.swift.
"""
import copy
import json
import os
import re
import sys
import warnings

import jsonschema
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

ASYNCAPI_URI = "urn:agentchat:asyncapi"


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---- The Swift sources ----------------------------------------------------------------------------------------

def swift_error_codes(root):
    text = open(os.path.join(root, "Sources/Protocol/ErrorCode.swift"), encoding="utf-8").read()
    return re.findall(r'static let \w+ = ErrorCode\(rawValue: "([a-z_]+)"\)', text)


def swift_close_codes(root):
    text = open(os.path.join(root, "Sources/Protocol/CloseCode.swift"), encoding="utf-8").read()
    return [int(n) for n in re.findall(r"static let \w+ = CloseCode\(rawValue: (\d+)\)", text)]


def swift_frame_types(root):
    """{raw value: "client" | "server" | "both"} from FrameType.swift's cases and its `direction` switch."""
    text = open(os.path.join(root, "Sources/Protocol/FrameType.swift"), encoding="utf-8").read()
    enum = text[text.index("enum FrameType"):]
    body = enum[:enum.index("public enum Direction")]
    cases = {}
    for name, raw in re.findall(r"^\s*case (\w+)(?: = \"([^\"]+)\")?\s*$", body, re.M):
        cases[name] = raw or name
    switch = enum[enum.index("var direction"):]
    switch = switch[:switch.index("default:") + 40]
    directions = {}
    for names, value in re.findall(r"case ((?:\.\w+,?\s*)+):\s*\.(\w+)", switch):
        for name in re.findall(r"\.(\w+)", names):
            directions[name] = {"both": "both", "fromBroker": "server", "fromClient": "client"}[value]
    default = {"fromClient": "client", "fromBroker": "server"}[re.search(r"default:\s*\.(\w+)", switch).group(1)]
    return {raw: directions.get(name, default) for name, raw in cases.items()}


def swift_routes(root):
    """{path: set of methods} the broker serves, from FrameRouter.swift and the files of Sources/Broker/Web and
    Sources/Broker/Admin (the admin page, served when an admin token is configured)."""
    core = os.path.join(root, "Sources/AgentChatCore")
    router = open(os.path.join(core, "FrameRouter.swift"), encoding="utf-8").read()
    constants = {}
    for dirpath, _, names in os.walk(core):
        for name in names:
            if name.endswith(".swift"):
                text = open(os.path.join(dirpath, name), encoding="utf-8").read()
                for owner in re.findall(r"(?:struct|final class|class|enum) (\w+)", text):
                    for key, value in re.findall(r'static let (\w+) = "(/[^"]*)"', text):
                        constants[f"{owner}.{key}"] = value
    routes = {}
    for method, path in re.findall(r"router\.add\(\.(\w+), ([^)]+?)\)", router):
        path = path.strip()
        if path == "path":
            continue  # the static files, below
        value = path.strip('"') if path.startswith('"') else constants.get(path)
        if value is None:
            raise RuntimeError(f"FrameRouter.swift adds a route at {path}, a constant this script cannot find")
        routes.setdefault(value, set()).add(method.upper())
    web = os.path.join(root, "Sources/Broker/Web")
    for name in sorted(os.listdir(web)):
        if not name.startswith("."):
            routes.setdefault("/" + name, set()).add("GET")
            if name == "index.html":
                routes.setdefault("/", set()).add("GET")
    admin = os.path.join(root, "Sources/Broker/Admin")
    for name in sorted(os.listdir(admin)):
        if not name.startswith("."):
            routes.setdefault("/admin" if name == "index.html" else "/admin/" + name, set()).add("GET")
    return routes


# ---- OpenAPI --------------------------------------------------------------------------------------------------

HTTP_METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]


def check_openapi(doc, root):
    problems = []
    from openapi_spec_validator import validate
    try:
        validate(doc)
    except Exception as error:  # the validator raises its own error types
        problems.append(f"openapi.yaml is not valid OpenAPI: {str(error).splitlines()[0]}")
    if doc.get("openapi") != "3.1.0":
        problems.append(f"openapi.yaml: openapi is {doc.get('openapi')!r}, not 3.1.0")
    described = {}
    for path, item in (doc.get("paths") or {}).items():
        described[path] = {m.upper() for m in HTTP_METHODS if m in item}
    for path, methods in sorted(swift_routes(root).items()):
        if path not in described:
            problems.append(f"openapi.yaml: the broker serves {path} ({', '.join(sorted(methods))}), not described")
            continue
        expected = methods | ({"HEAD"} if "GET" in methods else set())
        if described[path] != expected:
            problems.append(f"openapi.yaml: {path} describes {sorted(described[path])}, the broker serves "
                            f"{sorted(expected)}")
    for path in sorted(set(described) - set(swift_routes(root))):
        problems.append(f"openapi.yaml: {path} is described, the broker does not serve it")
    enum = doc.get("components", {}).get("schemas", {}).get("ErrorCode", {}).get("enum")
    problems += compare_codes("openapi.yaml ErrorCode", enum, swift_error_codes(root))
    problems += check_openapi_examples(doc)
    return problems


def check_openapi_examples(doc):
    """Every example of a JSON body validates against the body's schema (the validator does not check them)."""
    problems = []
    registry = Registry().with_resource("urn:agentchat:openapi",
                                        Resource.from_contents(doc, default_specification=DRAFT202012))

    def walk(node, where):
        if isinstance(node, dict):
            for media, content in (node.get("content") or {}).items() if isinstance(node.get("content"), dict) else []:
                if media != "application/json" or not isinstance(content, dict) or "schema" not in content:
                    continue
                examples = ([content["example"]] if "example" in content else []) + [
                    e.get("value") for e in (content.get("examples") or {}).values()]
                validator = jsonschema.Draft202012Validator(rebase(content["schema"], "urn:agentchat:openapi"),
                                                            registry=registry)
                for example in examples:
                    for error in validator.iter_errors(example):
                        problems.append(f"openapi.yaml: {where}/content/{media}: the example {json.dumps(example)} "
                                        f"does not match the schema: {error.message}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for index, value in enumerate(node):
                walk(value, f"{where}/{index}")

    walk(doc, "#")
    return problems


def rebase(schema, uri):
    """A schema whose `#/…` references point into the document at `uri`."""
    if isinstance(schema, dict):
        return {k: (uri + v if k == "$ref" and isinstance(v, str) and v.startswith("#") else rebase(v, uri))
                for k, v in schema.items()}
    if isinstance(schema, list):
        return [rebase(v, uri) for v in schema]
    return schema


def compare_codes(where, described, actual):
    if described is None:
        return [f"{where}: no enum"]
    problems = []
    if len(set(described)) != len(described):
        problems.append(f"{where}: duplicate entries")
    for code in sorted(set(actual) - set(described), key=str):
        problems.append(f"{where}: {code} is in the Swift sources, not in the enum")
    for code in sorted(set(described) - set(actual), key=str):
        problems.append(f"{where}: {code} is in the enum, not in the Swift sources")
    return problems


# ---- AsyncAPI -------------------------------------------------------------------------------------------------

def resolve_pointer(doc, ref):
    if not ref.startswith("#/"):
        raise KeyError(f"{ref}: only references inside the document are used")
    node = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(part)]
        else:
            node = node[part]
    return node


def all_refs(node, where="#"):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield where, value
            else:
                yield from all_refs(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from all_refs(value, f"{where}/{index}")


class AsyncAPIMessages:
    """The message payload schemas of an AsyncAPI document, by direction and frame type."""

    def __init__(self, doc):
        self.doc = doc
        self.closed_doc = close_objects(copy.deepcopy(doc))
        self.client = {}  # frame type -> [message pointer]
        self.server = {}
        for op in (doc.get("operations") or {}).values():
            direction = self.client if op.get("action") == "send" else self.server
            for ref in op.get("messages", []):
                pointer = self.message_pointer(ref["$ref"])
                frame_type = self.frame_type(pointer)
                if pointer not in direction.setdefault(frame_type, []):
                    direction[frame_type].append(pointer)

    def message_pointer(self, ref):
        """A channel's message reference → the components message it refers to."""
        node = resolve_pointer(self.doc, ref)
        while "$ref" in node:
            ref = node["$ref"]
            node = resolve_pointer(self.doc, ref)
        return ref

    def frame_type(self, pointer):
        payload = resolve_pointer(self.doc, pointer)["payload"]
        return payload["properties"]["type"]["const"]

    def validator(self, pointer, closed=False):
        doc = self.closed_doc if closed else self.doc
        registry = Registry().with_resource(ASYNCAPI_URI, Resource.from_contents(doc, default_specification=DRAFT7))
        return jsonschema.Draft7Validator({"$ref": f"{ASYNCAPI_URI}{pointer}/payload"}, registry=registry)

    def errors(self, frame, direction, closed=False):
        """The validation errors of a frame against the message(s) of its type; None when there is no message."""
        pointers = (self.client if direction == "client" else self.server).get(frame.get("type"))
        if not pointers:
            return None
        best = None
        for pointer in pointers:
            errors = list(self.validator(pointer, closed).iter_errors(frame))
            if not errors:
                return []
            if best is None or len(errors) < len(best):
                best = errors
        return best


def close_objects(node):
    """Every object schema with `properties` and no `additionalProperties` gets `additionalProperties: false`."""
    if isinstance(node, dict):
        for value in node.values():
            close_objects(value)
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
    elif isinstance(node, list):
        for value in node:
            close_objects(value)
    return node


def check_asyncapi_structure(doc):
    problems = []
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from asyncapi3 import AsyncAPI3
        AsyncAPI3.model_validate(doc)
    except ImportError:
        problems.append("the asyncapi3 package (PyPI) is not installed")
    except Exception as error:  # pydantic's ValidationError
        lines = str(error).splitlines()
        problems.append("asyncapi.yaml is not a valid AsyncAPI 3.0 document (asyncapi3): " + " / ".join(lines[:6]))
    if doc.get("asyncapi") != "3.0.0":
        problems.append(f"asyncapi.yaml: asyncapi is {doc.get('asyncapi')!r}, not 3.0.0")
    for key in ("title", "version"):
        if not (doc.get("info") or {}).get(key):
            problems.append(f"asyncapi.yaml: info.{key} is missing")
    for where, ref in all_refs(doc):
        try:
            resolve_pointer(doc, ref)
        except (KeyError, IndexError, ValueError, TypeError):
            problems.append(f"asyncapi.yaml: {where}: $ref {ref} does not resolve")
    if problems:
        return problems
    channels = doc.get("channels") or {}
    used = set()
    for name, op in (doc.get("operations") or {}).items():
        if op.get("action") not in ("send", "receive"):
            problems.append(f"asyncapi.yaml: operation {name}: action {op.get('action')!r}")
        channel_ref = (op.get("channel") or {}).get("$ref", "")
        if not channel_ref.startswith("#/channels/") or channel_ref.count("/") != 2:
            problems.append(f"asyncapi.yaml: operation {name}: channel {channel_ref!r} is not a channel of the document")
            continue
        if not op.get("messages"):
            problems.append(f"asyncapi.yaml: operation {name} has no messages")
        groups = [(channel_ref, op.get("messages", []))]
        if "reply" in op:
            groups.append(((op["reply"].get("channel") or {}).get("$ref", ""), op["reply"].get("messages", [])))
        for channel, messages in groups:
            for message in messages:
                ref = message.get("$ref", "")
                if not ref.startswith(channel + "/messages/"):
                    problems.append(f"asyncapi.yaml: operation {name}: {ref} is not a message of {channel}")
                used.add(ref)
    for channel_name, channel in channels.items():
        for message_name in (channel.get("messages") or {}):
            ref = f"#/channels/{channel_name}/messages/{message_name}"
            if ref not in used:
                problems.append(f"asyncapi.yaml: {ref} is used by no operation")
    for name, message in ((doc.get("components") or {}).get("messages") or {}).items():
        payload = message.get("payload")
        try:
            jsonschema.Draft7Validator.check_schema(payload)
        except jsonschema.SchemaError as error:
            problems.append(f"asyncapi.yaml: message {name}: the payload is not a JSON Schema: {error.message}")
        if not (payload or {}).get("properties", {}).get("type", {}).get("const"):
            problems.append(f"asyncapi.yaml: message {name}: the payload has no `type` const")
        if message.get("name") != (payload or {}).get("properties", {}).get("type", {}).get("const"):
            problems.append(f"asyncapi.yaml: message {name}: `name` is not the frame type")
    return problems


def refusal_code(errors):
    """The error code the broker's codec gives for these schema errors (see the module docstring)."""
    codes = set()

    def leaves(error):
        if error.context:
            for child in error.context:
                yield from leaves(child)
        else:
            yield error

    for error in errors:
        for leaf in leaves(error):
            codes.add({"required": "missing_field", "additionalProperties": "unknown_field"}
                      .get(leaf.validator, "invalid_field"))
    return codes


def golden_frames(root, kind):
    folder = os.path.join(root, "Tests/Golden", kind)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".json"):
            with open(os.path.join(folder, name), "rb") as f:
                yield name, f.read()


def describe(errors):
    return "; ".join(f"{'/'.join(map(str, e.absolute_path)) or '(frame)'}: {e.message}" for e in errors[:3])


def check_golden(messages, root):
    problems = []
    seen = {"client": set(), "server": set()}
    for kind, direction in (("client", "client"), ("server", "server")):
        for name, raw in golden_frames(root, kind):
            frame = json.loads(raw)
            seen[direction].add(frame.get("type"))
            errors = messages.errors(frame, direction, closed=(direction == "server"))
            if errors is None:
                problems.append(f"Tests/Golden/{kind}/{name}: no {direction} message for type {frame.get('type')!r}")
            elif errors:
                problems.append(f"Tests/Golden/{kind}/{name} does not match its message: {describe(errors)}")
    for name, raw in golden_frames(root, "refused"):
        expected = name.split(".")[0]
        try:
            frame = json.loads(raw)
        except ValueError:
            got = {"bad_json"}
        else:
            if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
                got = {"bad_frame"}
            else:
                errors = messages.errors(frame, "client")
                if errors is None:
                    got = {"unknown_type"}
                elif not errors:
                    got = set()
                else:
                    got = refusal_code(errors)
        if not got:
            problems.append(f"Tests/Golden/refused/{name} is accepted by asyncapi.yaml; the broker refuses it "
                            f"({expected})")
        elif got != {expected}:
            problems.append(f"Tests/Golden/refused/{name}: asyncapi.yaml refuses it as {sorted(got)}, the broker as "
                            f"{expected}")
    for direction in ("client", "server"):
        described = set(getattr(messages, direction))
        for frame_type in sorted(described - seen[direction]):
            problems.append(f"asyncapi.yaml: the {direction} message {frame_type!r} has no golden frame in "
                            f"Tests/Golden/{direction}")
    return problems


def check_frame_types(messages, root):
    problems = []
    swift = swift_frame_types(root)
    for direction in ("client", "server"):
        described = set(getattr(messages, direction))
        in_swift = {t for t, d in swift.items() if d in (direction, "both")}
        for frame_type in sorted(in_swift - described):
            problems.append(f"asyncapi.yaml: FrameType.swift has {frame_type!r} ({direction} side), no message")
        for frame_type in sorted(described - in_swift):
            problems.append(f"asyncapi.yaml: {direction} message {frame_type!r} is not a {direction} frame type in "
                            f"FrameType.swift")
    return problems


def check_codes(doc, root):
    schemas = (doc.get("components") or {}).get("schemas") or {}
    return (compare_codes("asyncapi.yaml ErrorCode", (schemas.get("ErrorCode") or {}).get("enum"),
                          swift_error_codes(root))
            + compare_codes("asyncapi.yaml CloseCode", (schemas.get("CloseCode") or {}).get("enum"),
                            swift_close_codes(root)))


def check_all(root, openapi=None, asyncapi=None):
    """Every problem found, as text; empty when the documents agree with the code and the golden frames."""
    openapi = openapi if openapi is not None else load_yaml(os.path.join(root, "docs/openapi.yaml"))
    asyncapi = asyncapi if asyncapi is not None else load_yaml(os.path.join(root, "docs/asyncapi.yaml"))
    problems = check_openapi(openapi, root)
    structure = check_asyncapi_structure(asyncapi)
    problems += structure
    if any("does not resolve" in p for p in structure):
        return problems
    messages = AsyncAPIMessages(asyncapi)
    problems += check_golden(messages, root)
    problems += check_frame_types(messages, root)
    problems += check_codes(asyncapi, root)
    return problems


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    problems = check_all(root)
    for problem in problems:
        print(f"error: {problem}")
    if problems:
        print(f"check-api-descriptions: {len(problems)} problem(s)")
        return 1
    swift = swift_frame_types(root)
    golden = sum(1 for kind in ("client", "server", "refused") for _ in golden_frames(root, kind))
    print(f"check-api-descriptions: openapi.yaml and asyncapi.yaml agree with the code ({len(swift)} frame types, "
          f"{golden} golden frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
