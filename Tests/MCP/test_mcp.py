"""`agentchat mcp` driven by the official MCP Python SDK (and, for the JSON-RPC edge cases, by raw lines on its
stdin) against a real broker and Redis: the handshake, the tool list, every tool, bad arguments, two MCP agents
exchanging messages through one channel while one waits, a Swift-CLI agent's message read and verified, a tampered
stored message reported as unverified, and a paid peek refused."""
import base64
import json
import os
import subprocess
import time

import anyio
import pytest

from conftest import AGENTCHAT, mcp_session

pytestmark = pytest.mark.anyio

TOOLS = {"whoami", "list_channels", "read_messages", "send_message", "create_channel", "invite", "join_channel",
         "leave_channel", "describe_channel", "wait_for_messages", "pending_peeks", "refuse_peek"}


async def call(session, name, arguments=None):
    """Calls a tool; returns (is_error, structured content, text)."""
    result = await session.call_tool(name, arguments or {})
    text = "".join(block.text for block in result.content if block.type == "text")
    return bool(result.is_error), result.structured_content, text


async def ok(session, name, arguments=None):
    is_error, structured, text = await call(session, name, arguments)
    assert not is_error, f"{name}: {text}"
    assert json.loads(text) == structured, "the text block is the structured content, serialized"
    return structured


async def refused(session, name, arguments, code):
    is_error, structured, text = await call(session, name, arguments)
    assert is_error, f"{name} {arguments}: expected {code}, got {text}"
    assert structured["error"]["code"] == code, text
    assert text.startswith(f"error {code}: "), text
    return structured["error"]


# -- the handshake and the tool list

async def test_initialize_and_tool_list(make_agent):
    alice = make_agent("alice")
    async with mcp_session(alice) as session:
        init = session.init_result
        assert init.protocol_version == "2025-11-25"
        assert init.server_info.name == "agentchat"
        assert init.capabilities.tools is not None
        assert "list_channels" in init.instructions
        tools = (await session.list_tools()).tools
        assert {tool.name for tool in tools} == TOOLS
        for tool in tools:
            assert tool.description and len(tool.description) > 60, tool.name
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["additionalProperties"] is False, tool.name
            for name in schema.get("required", []):
                assert name in schema["properties"], (tool.name, name)
            for name, prop in schema["properties"].items():
                assert prop.get("description") or prop.get("items"), (tool.name, name)
                if prop["type"] == "integer":
                    assert "minimum" in prop, (tool.name, name)
        by_name = {tool.name: tool.input_schema for tool in tools}
        assert by_name["read_messages"]["required"] == ["channel"]
        assert by_name["read_messages"]["properties"]["max_messages"]["maximum"] == 100
        assert by_name["wait_for_messages"]["properties"]["timeout_seconds"]["minimum"] == 1
        assert by_name["wait_for_messages"]["properties"]["timeout_seconds"]["maximum"] == 300
        assert sorted(by_name["send_message"]["required"]) == ["channel", "text"]
        assert await session.send_ping() is not None


def raw_exchange(agent, lines, expect):
    """Writes `lines` to a fresh `agentchat mcp` and reads `expect` response lines; every stdout line must be JSON."""
    process = subprocess.Popen(
        [AGENTCHAT, "mcp", "--identity", agent.identity, "--server", agent.broker.url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        process.stdin.write(b"".join(line.encode() + b"\n" for line in lines))
        process.stdin.flush()
        responses = []
        while len(responses) < expect:
            line = process.stdout.readline()
            assert line, f"stdout closed after {responses}"
            responses.append(json.loads(line))
        process.stdin.close()
        assert process.wait(30) == 0
        assert process.stdout.read() == b"", "nothing but responses on stdout"
        return responses
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def by_id(responses):
    return {json.dumps(r.get("id")): r for r in responses}


async def test_json_rpc_errors_and_version_negotiation(make_agent):
    alice = make_agent("alice")

    def initialize(request_id, version):
        return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "initialize",
                           "params": {"protocolVersion": version, "capabilities": {},
                                      "clientInfo": {"name": "raw", "version": "0"}}})
    for version, expected in [("2025-11-25", "2025-11-25"), ("2025-06-18", "2025-06-18"),
                              ("2025-03-26", "2025-03-26"), ("2099-01-01", "2025-11-25")]:
        [reply] = raw_exchange(alice, [initialize(1, version)], 1)
        assert reply["result"]["protocolVersion"] == expected, (version, reply)
        assert reply["result"]["serverInfo"]["name"] == "agentchat"

    lines = [
        initialize(1, "2025-11-25"),
        '{"jsonrpc":"2.0","method":"notifications/initialized"}',
        "this is not json",
        '{"jsonrpc":"2.0","id":2}',
        '{"jsonrpc":"1.0","id":3,"method":"ping"}',
        '{"jsonrpc":"2.0","id":4,"method":"no/such/method"}',
        '{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"arguments":{}}}',
        '{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"no_such_tool"}}',
        '{"jsonrpc":"2.0","id":7,"method":"tools/call","params":[1,2]}',
        '{"jsonrpc":"2.0","id":8,"method":"ping"}',
        '{"jsonrpc":"2.0","id":"s9","method":"tools/call","params":{"name":"whoami"}}',
        '{"jsonrpc":"2.0","id":true,"method":"ping"}',
        '[]',
        '{"jsonrpc":"2.0","method":"notifications/unknown"}',
    ]
    responses = raw_exchange(alice, lines, 12)
    nulls = [r for r in responses if r.get("id") is None]
    assert sorted(r["error"]["code"] for r in nulls) == [-32700, -32600, -32600], nulls
    replies = by_id([r for r in responses if r.get("id") is not None])
    assert replies["2"]["error"]["code"] == -32600
    assert replies["3"]["error"]["code"] == -32600
    assert replies["4"]["error"]["code"] == -32601
    assert replies["5"]["error"]["code"] == -32602
    assert replies["6"]["error"]["code"] == -32602
    assert replies["7"]["error"]["code"] == -32602
    assert replies["8"]["result"] == {}
    whoami = replies['"s9"']["result"]
    assert whoami["isError"] is False and whoami["structuredContent"]["did"] == alice.did
    for reply in responses:
        assert reply["jsonrpc"] == "2.0"


# -- the tools, one agent at a time

async def test_client_probing_for_newer_revisions_falls_back(make_agent):
    """The SDK's own `Client` (mode auto) probes `server/discover` first; -32601 sends it to `initialize`."""
    from mcp import Client
    alice = make_agent("alice")
    async with Client(alice.server_parameters()) as client:
        assert client.protocol_version == "2025-11-25"
        result = await client.call_tool("whoami", {})
        assert not result.is_error and result.structured_content["did"] == alice.did


async def test_unreachable_broker_and_missing_identity(make_agent, broker):
    alice = make_agent("alice")
    # No broker behind the URL: the server still starts, and each tool says what is wrong.
    alice.broker = type("Nowhere", (), {"url": "http://127.0.0.1:1", "work": broker.work})()
    async with mcp_session(alice) as session:
        assert {tool.name for tool in (await session.list_tools()).tools} == TOOLS
        error = await refused(session, "list_channels", {}, "network_error")
        assert error["message"]
    # No identity file: exit status 1, a message on stderr, nothing on stdout.
    result = subprocess.run([AGENTCHAT, "mcp", "--identity", os.path.join(broker.work, "missing.json"),
                             "--server", broker.url], input=b"", capture_output=True, timeout=30)
    assert result.returncode == 1 and result.stdout == b"" and b"missing.json" in result.stderr


async def test_every_tool(make_agent):
    alice, bob, carol = make_agent("alice"), make_agent("bob"), make_agent("carol")
    async with mcp_session(alice) as session:
        me = await ok(session, "whoami")
        assert me["did"] == alice.did and me["name"] == alice.name and me["broker"] == alice.broker.url

        created = await ok(session, "create_channel", {"name": "ops", "members": [bob.did]})
        channel = created["channel"]
        assert channel.startswith("ch_") and created["owner"] == alice.did and created["open"] is False
        assert {m["did"] for m in created["members"]} == {alice.did, bob.did}

        listed = await ok(session, "list_channels")
        [entry] = [c for c in listed["channels"] if c["channel"] == channel]
        assert entry == {"channel": channel, "name": "ops", "offset": 0, "read": 0, "unread": 0}

        sent = await ok(session, "send_message", {"channel": channel, "text": "hello, ops"})
        assert sent == {"channel": channel, "offset": 1}
        # Its own message is read already.
        listed = await ok(session, "list_channels")
        assert [c["unread"] for c in listed["channels"] if c["channel"] == channel] == [0]
        second = await ok(session, "send_message", {"channel": channel, "text": "second"})
        assert second["offset"] == 2

        history = await ok(session, "read_messages", {"channel": channel, "mode": "range", "after": 0})
        assert [(m["offset"], m["text"], m["sender"], m["senderName"]) for m in history["messages"]] == [
            (1, "hello, ops", alice.did, alice.name), (2, "second", alice.did, alice.name)]
        assert history["remaining"] == 0 and history["latestOffset"] == 2
        latest = await ok(session, "read_messages", {"channel": channel, "mode": "range", "max_messages": 1})
        assert [m["offset"] for m in latest["messages"]] == [2]
        assert latest["remaining"] == 1 and latest["next"] == {"before": 2}
        older = await ok(session, "read_messages", {"channel": channel, "mode": "range", "before": 2})
        assert [m["text"] for m in older["messages"]] == ["hello, ops"]

        described = await ok(session, "describe_channel", {"channel": channel})
        assert described["name"] == "ops" and described["latestOffset"] == 2

        await ok(session, "invite", {"channel": channel, "did": carol.did})
        async with mcp_session(carol) as carol_session:
            joined = await ok(carol_session, "join_channel", {"channel": channel})
            assert carol.did in {m["did"] for m in joined["members"]}
            # A new member starts with nothing unread (it cannot decrypt what came before).
            listed = await ok(carol_session, "list_channels")
            assert [(c["unread"], c["read"]) for c in listed["channels"]] == [(0, 2)]
            left = await ok(carol_session, "leave_channel", {"channel": channel})
            assert left == {"ok": True, "channel": channel}
            await refused(carol_session, "describe_channel", {"channel": channel}, "not_found")
            await refused(carol_session, "read_messages", {"channel": channel}, "not_found")

        peeks = await ok(session, "pending_peeks")
        assert peeks == {"peeks": [], "defaultPolicy": "grant"}
        await refused(session, "refuse_peek", {"channel": channel, "peek": "pk_" + "A" * 22}, "not_found")

        timed_out = await ok(session, "wait_for_messages", {"channels": [channel], "timeout_seconds": 1})
        assert timed_out == {"channels": [], "timedOut": True}


async def test_budget_and_cursor(make_agent):
    alice, bob = make_agent("alice"), make_agent("bob")
    channel = alice.cli("channel", "create", "--name", "budget", "--member", bob.did)
    for index in range(5):
        alice.cli("send", "--channel", channel, f"message {index} " + "x" * 140)  # 150 characters
    async with mcp_session(bob) as session:
        # Bob was a member from the start: all five are unread.
        listed = await ok(session, "list_channels")
        assert [c["unread"] for c in listed["channels"]] == [5]
        first = await ok(session, "read_messages", {"channel": channel, "max_chars": 320})
        assert [m["offset"] for m in first["messages"]] == [1, 2]
        assert first["remaining"] == 3 and first["read"] == 2
        rest = await ok(session, "read_messages", {"channel": channel, "max_messages": 2})
        assert [m["offset"] for m in rest["messages"]] == [3, 4] and rest["remaining"] == 1
        # One message over the budget alone is cut, and says so.
        cut = await ok(session, "read_messages", {"channel": channel, "max_chars": 100, "max_messages": 3})
        [message] = cut["messages"]
        assert message["offset"] == 5 and message["text"] == "message 4 " + "x" * 90
        assert message["truncatedFromChars"] == 150
        assert cut["remaining"] == 0
        empty = await ok(session, "read_messages", {"channel": channel})
        assert empty["messages"] == [] and empty["remaining"] == 0 and empty["read"] == 5


async def test_bad_arguments_are_tool_errors(make_agent):
    alice = make_agent("alice")
    async with mcp_session(alice) as session:
        channel = (await ok(session, "create_channel", {"name": "args"}))["channel"]
        bad = [
            ("read_messages", {}),
            ("read_messages", {"channel": "general"}),
            ("read_messages", {"channel": 42}),
            ("read_messages", {"channel": channel, "max_messages": 0}),
            ("read_messages", {"channel": channel, "max_messages": 101}),
            ("read_messages", {"channel": channel, "max_messages": 2.5}),
            ("read_messages", {"channel": channel, "max_chars": 10}),
            ("read_messages", {"channel": channel, "mode": "everything"}),
            ("read_messages", {"channel": channel, "after": 3}),
            ("read_messages", {"channel": channel, "mode": "range", "after": 5, "before": 6}),
            ("read_messages", {"channel": channel, "chanel": channel}),
            ("send_message", {"channel": channel}),
            ("send_message", {"channel": channel, "text": ""}),
            ("send_message", {"channel": channel, "text": "x" * 40000}),
            ("create_channel", {"name": ""}),
            ("create_channel", {"name": "x", "members": ["bob"]}),
            ("create_channel", {"name": "x", "members": "did:agentchat:z"}),
            ("create_channel", {"name": "x", "open": "yes"}),
            ("invite", {"channel": channel, "did": "not a did"}),
            ("wait_for_messages", {"timeout_seconds": 0}),
            ("wait_for_messages", {"timeout_seconds": 301}),
            ("wait_for_messages", {"channels": ["nope"]}),
            ("refuse_peek", {"channel": channel, "peek": "nope"}),
            ("whoami", {"verbose": True}),
        ]
        for name, arguments in bad:
            await refused(session, name, arguments, "invalid_argument")
        # Still healthy afterwards.
        assert (await ok(session, "whoami"))["did"] == alice.did


# -- agents together

async def test_two_mcp_agents_and_a_cli_agent(make_agent):
    alice, bob, carol = make_agent("alice"), make_agent("bob"), make_agent("carol")
    async with mcp_session(alice) as a, mcp_session(bob) as b:
        channel = (await ok(a, "create_channel", {"name": "pair", "members": [bob.did, carol.did]}))["channel"]
        # Bob waits; Alice sends once Bob's wait is under way.
        results = {}

        async def bob_waits():
            results["wait"] = await ok(b, "wait_for_messages", {"timeout_seconds": 60})

        async with anyio.create_task_group() as group:
            group.start_soon(bob_waits)
            await anyio.sleep(1)
            # Bob's session answers other calls while it waits; a second wait is refused meanwhile.
            assert (await ok(b, "whoami"))["did"] == bob.did
            await refused(b, "wait_for_messages", {"timeout_seconds": 1}, "busy")
            sent = await ok(a, "send_message", {"channel": channel, "text": "ping from alice"})
        assert results["wait"]["timedOut"] is False
        assert results["wait"]["channels"] == [
            {"channel": channel, "name": "pair", "count": 1, "firstOffset": sent["offset"]}]

        read = await ok(b, "read_messages", {"channel": channel})
        [message] = read["messages"]
        assert message["text"] == "ping from alice" and message["sender"] == alice.did
        assert message["senderName"] == alice.name and "verified" not in message
        assert read["remaining"] == 0

        # Alice's own message does not wake her: she waits for Bob's answer.
        async def alice_waits():
            results["alice"] = await ok(a, "wait_for_messages", {"channels": [channel], "timeout_seconds": 60})

        async with anyio.create_task_group() as group:
            group.start_soon(alice_waits)
            await anyio.sleep(1)
            await ok(b, "send_message", {"channel": channel, "text": "pong from bob"})
        assert results["alice"]["channels"][0]["count"] == 1
        reply = await ok(a, "read_messages", {"channel": channel})
        assert [(m["text"], m["sender"]) for m in reply["messages"]] == [("pong from bob", bob.did)]

        # Unread messages already there: wait returns at once. Carol writes with the Swift CLI.
        offset = int(carol.cli("send", "--channel", channel, "hello from the swift cli"))
        waited = await ok(b, "wait_for_messages", {"timeout_seconds": 300})
        assert waited["channels"] == [{"channel": channel, "name": "pair", "count": 1, "firstOffset": offset}]
        read = await ok(b, "read_messages", {"channel": channel})
        assert [(m["offset"], m["text"], m["sender"], m["senderName"]) for m in read["messages"]] == [
            (offset, "hello from the swift cli", carol.did, carol.name)]


async def test_cancelled_wait_frees_the_session(make_agent):
    alice = make_agent("alice")
    async with mcp_session(alice) as session:
        await ok(session, "create_channel", {"name": "quiet"})
        with anyio.move_on_after(1):
            await call(session, "wait_for_messages", {"timeout_seconds": 120})
            raise AssertionError("the wait returned although nothing arrived")
        # The client cancelled the call (notifications/cancelled): the next wait is not refused as busy.
        deadline = time.time() + 10
        while True:
            is_error, structured, text = await call(session, "wait_for_messages", {"timeout_seconds": 1})
            if not is_error or time.time() > deadline:
                break
            await anyio.sleep(0.2)
        assert not is_error, text
        assert structured == {"channels": [], "timedOut": True}


async def test_tampered_message_is_reported_unverified(make_agent):
    alice, bob = make_agent("alice"), make_agent("bob")
    channel = alice.cli("channel", "create", "--name", "tamper", "--member", bob.did)
    alice.cli("send", "--channel", channel, "genuine one")
    alice.cli("send", "--channel", channel, "the broker will alter this")
    broker = alice.broker
    key = f"agentchat:ch:{{{channel}}}:log"
    entries = json.loads(subprocess.run(
        ["redis-cli", "-p", str(broker.redis_port), "--json", "XRANGE", key, "-", "+"],
        capture_output=True, text=True, timeout=10, check=True).stdout)
    assert len(entries) == 2
    # Rewrite the stream with the second message's ciphertext altered (one byte flipped), ids unchanged.
    commands = [["DEL", key]]
    for entry_id, fields in entries:
        pairs = dict(zip(fields[0::2], fields[1::2]))
        if entry_id == entries[1][0]:
            item = json.loads(pairs["m"])  # the stored message, as the broker keeps it (ChannelStore)
            raw = bytearray(base64.urlsafe_b64decode(item["ciphertext"] + "=" * (-len(item["ciphertext"]) % 4)))
            raw[0] ^= 1
            item["ciphertext"] = base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
            pairs["m"] = json.dumps(item, separators=(",", ":"))
        commands.append(["XADD", key, entry_id, *[item for pair in pairs.items() for item in pair]])
    for command in commands:
        subprocess.run(["redis-cli", "-p", str(broker.redis_port), *command], capture_output=True, text=True,
                       timeout=10, check=True)
    async with mcp_session(bob) as session:
        read = await ok(session, "read_messages", {"channel": channel})
        first, second = read["messages"]
        assert first["text"] == "genuine one"
        assert "text" not in second and second["verified"] is False
        assert "failed verification" in second["error"] and "bad_signature" in second["error"]
        assert "alter" not in json.dumps(read)


async def test_paid_peek_is_listed_and_refused(make_agent):
    from websockets.sync.client import connect
    alice = make_agent("alice")
    channel = alice.cli("channel", "create", "--name", "listed")
    alice.cli("channel", "listing", "--channel", channel, "--title", "Listed", "--topic", "peek me")
    # Alice's policy would grant: refuse_peek is what stops it.
    async with mcp_session(alice) as session:
        viewer_key = base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("=")
        with connect("ws" + alice.broker.url[4:] + "/", subprotocols=["agentchat.v1"], open_timeout=10) as ws:
            def request(frame):
                ws.send(json.dumps(frame))
                while True:
                    answer = json.loads(ws.recv(timeout=10))
                    if answer.get("ref") == frame["id"]:
                        assert answer["type"] != "error", answer
                        return answer
            peek = request({"type": "peek.request", "id": "v1", "channel": channel, "viewerKey": viewer_key})["peek"]
            request({"type": "peek.confirm", "id": "v2", "channel": channel, "peek": peek["id"],
                     "token": peek["token"]})
            deadline = time.time() + 20
            listed = []
            while time.time() < deadline and not listed:
                listed = (await ok(session, "pending_peeks"))["peeks"]
                if not listed:
                    await anyio.sleep(0.2)
            [entry] = listed
            assert entry["peek"] == peek["id"] and entry["channel"] == channel
            assert entry["phase"] == "pending" and entry["refusable"] is True and entry["policy"] == "grant"
            assert entry["priceCents"] == 500 and entry["refusalFeeCents"] == 100
            assert await ok(session, "refuse_peek", {"channel": channel, "peek": peek["id"]}) == {
                "ok": True, "channel": channel, "peek": peek["id"]}
            deadline = time.time() + 20
            while time.time() < deadline and (await ok(session, "pending_peeks"))["peeks"]:
                await anyio.sleep(0.2)
            assert (await ok(session, "pending_peeks"))["peeks"] == []
            phase = request({"type": "peek.status", "id": "v3", "channel": channel, "peek": peek["id"],
                             "token": peek["token"]})["peek"]["phase"]
            assert phase in ("capturing", "refused"), phase
            await refused(session, "refuse_peek", {"channel": channel, "peek": peek["id"]}, "peek_not_refusable")


# -- the three ways to be an agent, in one channel

async def test_python_mcp_and_swift_agents_share_one_encrypted_channel(make_agent):
    """An MCP-driven agent creates a channel with a Python SDK agent and a Swift CLI agent; each writes once, and
    each reads and verifies what the other two wrote (keys made by the MCP agent's Swift SDK, opened by Python)."""
    from agentchat import AgentChatClient, AgentIdentity

    mcp_agent, swift = make_agent("mcp"), make_agent("swift")
    python = AgentChatClient(AgentIdentity.generate("python"), mcp_agent.broker.url)
    await python.register()
    await python.connect()
    try:
        async with mcp_session(mcp_agent) as session:
            channel = (await ok(session, "create_channel",
                                {"name": "three ways", "members": [python.identity.did, swift.did]}))["channel"]
            from_mcp = (await ok(session, "send_message", {"channel": channel, "text": "from mcp"}))["offset"]
            from_python = (await python.send(channel, "from python")).offset
            from_swift = int(swift.cli("send", "--channel", channel, "from swift"))
            assert sorted([from_mcp, from_python, from_swift]) == [1, 2, 3]
            everyone = {from_mcp: ("from mcp", mcp_agent.did), from_python: ("from python", python.identity.did),
                        from_swift: ("from swift", swift.did)}

            # The MCP agent reads the other two (its own message was read already when it sent it).
            read = await ok(session, "read_messages", {"channel": channel})
            assert {m["offset"]: (m["text"], m["sender"]) for m in read["messages"]} == {
                offset: everyone[offset] for offset in (from_python, from_swift)}
            assert all("verified" not in m for m in read["messages"])

            # Python verifies and decrypts what the MCP agent and the Swift CLI wrote.
            history = await python.history(channel)
            assert all(m.verified for m in history)
            assert {m.offset: (m.text, m.sender) for m in history} == everyone

            # The Swift CLI does the same for the MCP agent's and Python's messages.
            lines = [json.loads(line) for line in swift.cli("history", "--channel", channel, "--json").splitlines()
                     if line.strip()]
            assert all(line["verified"] is True for line in lines)
            assert {line["offset"]: (line["plaintext"], line["sender"]) for line in lines} == everyone
    finally:
        await python.close()
