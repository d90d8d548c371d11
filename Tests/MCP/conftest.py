"""Fixtures for the `agentchat mcp` tests: a real redis-server, the real agentchat-broker binary, agents made with the
real `agentchat` CLI (keygen, register), and MCP sessions driven by the official MCP Python SDK over stdio.

The binaries come from AGENTCHAT_BIN_DIR (the Makefile passes `swift build --show-bin-path`)."""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

BIN_DIR = os.environ.get("AGENTCHAT_BIN_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", ".build", "debug")
AGENTCHAT = os.path.abspath(os.path.join(BIN_DIR, "agentchat"))
BROKER = os.path.abspath(os.path.join(BIN_DIR, "agentchat-broker"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def stop(process):
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Broker:
    """redis-server on its own port (so tests can reach into its data) and agentchat-broker on a free port."""

    def __init__(self):
        self.work = tempfile.mkdtemp(prefix="agentchat-mcp-")
        self.redis_port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.broker = None
        try:
            wait_for_port(self.redis_port, 10)
            self.broker = subprocess.Popen(
                [BROKER, "--host", "127.0.0.1", "--port", "0", "--redis-url", f"redis://127.0.0.1:{self.redis_port}",
                 "--data-dir", os.path.join(self.work, "data"), "--log-level", "warning", "--register-rate", "1000"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self.url = None
            deadline = time.time() + 30
            while time.time() < deadline and self.url is None:
                line = self.broker.stdout.readline()
                if "listening on" in line:
                    self.url = line.strip().rsplit(" ", 1)[-1].rstrip("/")
                elif not line and self.broker.poll() is not None:
                    break
            if self.url is None:
                raise RuntimeError("the broker did not start")
        except BaseException:
            self.close()
            raise

    def redis_cli(self, *args):
        result = subprocess.run(["redis-cli", "-p", str(self.redis_port), "--no-raw", *args],
                                capture_output=True, text=True, timeout=10)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def close(self):
        stop(self.broker)
        stop(self.redis)
        shutil.rmtree(self.work, ignore_errors=True)


class Agent:
    """An identity file made and registered with the Swift CLI."""

    def __init__(self, broker, name):
        self.broker = broker
        self.name = name
        self.identity = os.path.join(broker.work, f"{name}.json")
        self.cli("keygen", "--name", name)
        self.did = self.cli("register")
        assert self.did.startswith("did:agentchat:"), self.did

    def cli(self, *args):
        result = subprocess.run([AGENTCHAT, *args, "--server", self.broker.url, "--identity", self.identity],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"agentchat {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def server_parameters(self):
        return StdioServerParameters(
            command=AGENTCHAT,
            args=["mcp", "--identity", self.identity, "--server", self.broker.url, "--log-level", "info"])


@pytest.fixture(scope="session")
def broker():
    b = Broker()
    yield b
    b.close()


@pytest.fixture
def anyio_backend():
    return "asyncio"


_counter = [0]


@pytest.fixture
def make_agent(broker):
    def make(name):
        _counter[0] += 1
        return Agent(broker, f"{name}{_counter[0]}")
    return make


@contextlib.asynccontextmanager
async def mcp_session(agent):
    """An initialized MCP client session with `agentchat mcp` for `agent` (the server's stderr goes to a log file)."""
    log_path = os.path.join(agent.broker.work, f"{agent.name}.mcp.log")
    with open(log_path, "a") as errlog:
        async with stdio_client(agent.server_parameters(), errlog=errlog) as (read, write):
            async with ClientSession(read, write) as session:
                result = await session.initialize()
                session.init_result = result
                yield session
