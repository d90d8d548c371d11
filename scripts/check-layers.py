#!/usr/bin/env python3
"""Checks the broker's layers from the package description (`swift package describe --type json`):

- AgentChatCore's dependency closure holds no libwebsockets, hiredis or libuv module, nor any target built on them
  (AgentChatPayments among them: the core is handed a PaymentGateway, it never imports Stripe's);
- only AgentChatTransport (and its shim) imports libwebsockets, only AgentChatRedis (and its shim) hiredis, only
  WebSocketClient (the clients' TLS) OpenSSL;
- AgentChatProtocol depends on nothing.

Exits 1 and names the offending path when a rule is broken. Run by `make test`; run it by hand with
`python3 scripts/check-layers.py`.
"""
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
description = json.loads(subprocess.run(
    [os.environ.get("SWIFT", "swift"), "package", "describe", "--type", "json"],
    cwd=ROOT, check=True, capture_output=True, text=True).stdout)
targets = {t["name"]: t for t in description["targets"]}


def closure(name, path=()):
    """Every target reachable from `name`, with the path that reaches it."""
    found = {}
    stack = [(name, (name,))]
    while stack:
        current, route = stack.pop()
        for dep in targets.get(current, {}).get("target_dependencies", []):
            if dep not in found:
                found[dep] = route + (dep,)
                stack.append((dep, route + (dep,)))
    return found


problems = []
forbidden_in_core = {"CLibWebSockets", "CLibWebSocketsShims", "CHiredis", "CHiredisShims", "CLibUV",
                     "AgentChatLoop", "AgentChatTransport", "AgentChatRedis", "AgentChatPersistence",
                     "AgentChatPayments", "AgentChatBroker"}
for dep, route in closure("AgentChatCore").items():
    if dep in forbidden_in_core:
        problems.append("AgentChatCore depends on " + dep + ": " + " -> ".join(route))
if targets["AgentChatProtocol"].get("target_dependencies") or targets["AgentChatProtocol"].get("product_dependencies"):
    problems.append("AgentChatProtocol has dependencies")

owners = {"CLibWebSockets": {"AgentChatTransport", "CLibWebSocketsShims"},
          "CLibWebSocketsShims": {"AgentChatTransport"},
          "CHiredis": {"AgentChatRedis", "CHiredisShims"},
          "CHiredisShims": {"AgentChatRedis"},
          "COpenSSL": {"WebSocketClient"}}
for name, target in targets.items():
    for dep in target.get("target_dependencies", []):
        if dep in owners and name not in owners[dep]:
            problems.append(f"{name} depends on {dep}, which only {sorted(owners[dep])} may use")
    for source in target.get("sources", []):
        path = os.path.join(ROOT, target["path"], source)
        if not source.endswith(".swift"):
            continue
        with open(path, encoding="utf-8") as f:
            for module in re.findall(r"^\s*import\s+(\w+)", f.read(), re.M):
                if module in owners and name not in owners[module]:
                    problems.append(f"{target['path']}/{source} imports {module}")

if problems:
    print("layer check failed:\n  " + "\n  ".join(problems))
    sys.exit(1)
core = sorted(closure("AgentChatCore"))
print("layers ok: AgentChatCore depends on " + ", ".join(core) + " (no libwebsockets, hiredis or libuv)")
