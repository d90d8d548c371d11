"""Fixtures: a real agentchat-broker with its own embedded Redis (a fresh data directory), the Swift CLI beside it,
and async tests run with asyncio.run (no plugin needed).

The binaries come from $AGENTCHAT_BIN_DIR, default `swift build --show-bin-path` in the repository root.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(os.path.dirname(HERE), "src")
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
# `make test-python` installs the package (pip install ./clients/python) and tests that install; otherwise the tree's
# code is tested, never a stale install.
INSTALLED = os.environ.get("AGENTCHAT_TEST_INSTALLED") == "1"
if not INSTALLED:
    sys.path.insert(0, SOURCE)

# Short peek windows (seconds) so the paid-peek tests run in a few seconds.
PEEK_REFUSAL_WINDOW = 1
PEEK_GRANT_WINDOW = 20
PEEK_DURATION = 3


def bin_dir() -> str:
    configured = os.environ.get("AGENTCHAT_BIN_DIR")
    if configured:
        return configured
    swift = os.environ.get("SWIFT", "swift")
    return subprocess.run([swift, "build", "--show-bin-path"], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.strip()


class Broker:
    """One agentchat-broker process with its embedded Redis in its own data directory."""

    def __init__(self, binaries: str, extra: list[str] | None = None) -> None:
        self.binary = os.path.join(binaries, "agentchat-broker")
        self.cli_binary = os.path.join(binaries, "agentchat")
        for path in (self.binary, self.cli_binary):
            if not os.access(path, os.X_OK):
                raise RuntimeError(f"missing {path}: build it (swift build --product agentchat-broker "
                                   f"--product agentchat) or set AGENTCHAT_BIN_DIR")
        self.work = tempfile.mkdtemp(prefix="agentchat-python-")
        self.extra = extra or []
        self.port = 0
        self.process: subprocess.Popen[str] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts the broker (on the port it had before, after a stop) and waits until /health answers 200."""
        self.process = subprocess.Popen(
            [self.binary, "--host", "127.0.0.1", "--port", str(self.port), "--data-dir",
             os.path.join(self.work, "data"), "--log-level", "warning", "--register-rate", "10000",
             "--peek-refusal-window", str(PEEK_REFUSAL_WINDOW), "--peek-grant-window", str(PEEK_GRANT_WINDOW),
             "--peek-duration", str(PEEK_DURATION), *self.extra],
            stdout=subprocess.PIPE, stderr=open(os.path.join(self.work, "broker.log"), "a"), text=True)
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "listening on" in line:
                self.port = int(line.strip().rsplit(":", 1)[1].strip("/"))
                break
            if self.process.poll() is not None or not line:
                raise RuntimeError(f"the broker did not start: {self.log()}")
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("the broker's /health never answered 200")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process is not None and process.stdout is not None:
            process.stdout.close()

    def log(self) -> str:
        with open(os.path.join(self.work, "broker.log"), errors="replace") as f:
            return f.read()[-2000:]

    def cli(self, *args: str, identity: str, json_output: bool = True, timeout: float = 60,
            check: bool = True, lines: bool = False) -> Any:
        """Runs the Swift CLI (`agentchat`) against this broker; with json_output, parses its stdout: one object, or
        with `lines` a list of one object per line (`history`, `listen`)."""
        command = [self.cli_binary, *args, "--server", self.url, "--identity", identity]
        if json_output:
            command.append("--json")
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"agentchat {' '.join(args)} exited {result.returncode}: {result.stderr.strip()}")
        if not json_output or not check:
            return result
        if lines:
            return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        return json.loads(result.stdout)

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="session")
def binaries() -> str:
    return bin_dir()


@pytest.fixture(scope="session")
def broker(binaries: str) -> Iterator[Broker]:
    """A broker shared by the tests that do not stop it."""
    b = Broker(binaries)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def own_broker(binaries: str) -> Iterator[Broker]:
    """A broker of this test alone (it may stop and restart it)."""
    b = Broker(binaries)
    try:
        yield b
    finally:
        b.cleanup()


@pytest.fixture
def tmp_identity_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="agentchat-identity-")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Runs `async def` tests in a fresh event loop, with a 90 s safety net."""
    function = pyfuncitem.obj
    if not inspect.iscoroutinefunction(function):
        return None
    arguments = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}

    async def run() -> None:
        async with asyncio.timeout(90):
            await function(**arguments)

    asyncio.run(run())
    return True
