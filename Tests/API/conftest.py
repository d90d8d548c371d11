"""Shared pieces of the API description tests: the repository root, the two documents, the checker module, and a
real broker (agentchat-broker with its embedded Redis) for the live tests."""
import importlib.util
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import pytest
import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ALLOWED_ORIGIN = "http://allowed.example"
WEBHOOK_SECRET = "whsec_api_description_tests"
ADMIN_TOKEN = "admin-token-api-description-tests"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_api_descriptions",
                                                  os.path.join(ROOT, "scripts", "check-api-descriptions.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def checker():
    return load_checker()


@pytest.fixture(scope="session")
def openapi():
    with open(os.path.join(ROOT, "docs", "openapi.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="session")
def asyncapi():
    with open(os.path.join(ROOT, "docs", "asyncapi.yaml"), encoding="utf-8") as f:
        return yaml.safe_load(f)


def bin_dir():
    configured = os.environ.get("AGENTCHAT_BIN_DIR")
    if configured:
        return configured
    return subprocess.run(["swift", "build", "--show-bin-path"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


class Broker:
    """agentchat-broker on a free port with its own embedded Redis in a temporary directory."""

    def __init__(self, *args, healthy=True):
        self.work = tempfile.mkdtemp(prefix="agentchat-api-")
        self.process = subprocess.Popen(
            [os.path.join(bin_dir(), "agentchat-broker"), "--host", "127.0.0.1", "--port", "0",
             "--data-dir", self.work, "--log-level", "warning", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.url = None
        deadline = time.time() + 30
        while time.time() < deadline and self.url is None:
            line = self.process.stdout.readline()
            if "listening on " in line:
                self.url = line.split("listening on ")[1].strip()
            elif self.process.poll() is not None:
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("the broker did not start")
        # It listens before its Redis connection is up: ready once /health answers 200.
        while healthy and time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        if healthy:
            self.stop()
            raise RuntimeError("the broker's /health did not answer 200")

    @property
    def port(self):
        return int(self.url.rsplit(":", 1)[1])

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        shutil.rmtree(self.work, ignore_errors=True)


@pytest.fixture(scope="session")
def broker():
    # --register-rate 2: the hand-written registrations see 201, 409, then 429. Fuzzed registrations never reach
    # the rate limiter (it comes after the signature check, and random signatures do not verify).
    # --admin-token: the admin page and its API are served (and described); requests carry the token.
    b = Broker("--register-rate", "2", "--cors-origins", ALLOWED_ORIGIN, "--stripe-webhook-secret", WEBHOOK_SECRET,
               "--admin-token", ADMIN_TOKEN)
    yield b
    b.stop()
