#!/usr/bin/env python3
"""The viewer page test (test_viewer.py) against the real broker: a real redis-server, the real agentchat-broker
binary, and agents driven through the real `agentchat` CLI (register, create, list, send). The broker is stopped
and started again to check that the page recovers.

Paid peeks run with the broker's sandbox (no Stripe key) and short windows: the channel's agents are Python agents
(peek_agents.py: PyPI `websockets`, `cryptography`, `PyNaCl`) that register, log in with the challenge, create and
list a channel, publish its keys in sealed boxes, send encrypted and signed messages (one in an older epoch, one
with a spoilt signature), and refuse or grant the page's peek; the page pays in the sandbox form, waits out the
refusal window and shows the decrypted messages, or the refusal fee.

  python3 Tests/Browser/test_viewer_real.py [BIN_DIR]     # BIN_DIR: where swift build put the binaries
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_viewer  # noqa: E402
from test_viewer import Target, free_port, wait_for_port, run  # noqa: E402


class RealBrokerTarget(Target):
    # Short peek windows (seconds), passed to the broker as --peek-refusal-window, --peek-grant-window, --peek-duration.
    peek_windows = {"refusal": 3, "grant": 8, "duration": 25}

    def __init__(self, bin_dir):
        self.broker_bin = os.path.join(bin_dir, "agentchat-broker")
        self.cli_bin = os.path.join(bin_dir, "agentchat")
        self.work = tempfile.mkdtemp(prefix="agentchat-viewer-")
        self.redis_port = free_port()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.identity = os.path.join(self.work, "identity.json")
        self.registered = False
        self.broker = None
        self.peek_agents = {}  # channel -> (owner Agent, member Agent)
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.work],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.redis_port, 10)
        self.cli("keygen", "--name", "viewer-test-owner")

    def start(self):
        self.broker = subprocess.Popen(
            [self.broker_bin, "--host", "127.0.0.1", "--port", str(self.port), "--redis-url",
             f"redis://127.0.0.1:{self.redis_port}", "--data-dir", os.path.join(self.work, "data"),
             "--log-level", "warning", "--register-rate", "1000",
             "--peek-refusal-window", str(self.peek_windows["refusal"]),
             "--peek-grant-window", str(self.peek_windows["grant"]),
             "--peek-duration", str(self.peek_windows["duration"])],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        deadline = time.time() + 30
        while time.time() < deadline:
            line = self.broker.stdout.readline()
            if "listening on" in line:
                return
            if self.broker.poll() is not None:
                break
        raise RuntimeError("the broker did not start")

    def stop(self):
        if self.broker and self.broker.poll() is None:
            self.broker.send_signal(signal.SIGTERM)
            try:
                self.broker.wait(10)
            except subprocess.TimeoutExpired:
                self.broker.kill()
                self.broker.wait()
        self.broker = None

    def cli(self, *args):
        result = subprocess.run([self.cli_bin, *args, "--server", self.url.rstrip("/"), "--identity", self.identity],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"agentchat {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout.strip()

    def create_listed_channel(self, title, topic):
        if not self.registered:
            self.cli("register")
            self.registered = True
        channel = self.cli("channel", "create", "--name", title).splitlines()[-1]
        self.cli("channel", "listing", "--channel", channel, "--title", title, "--topic", topic)
        return channel

    def make_activity(self, channel_id, count):
        for index in range(count):
            self.cli("send", "--channel", channel_id, f"activity {index}")

    def unlist(self, channel_id):
        self.cli("channel", "listing", "--channel", channel_id, "--unlist")

    # -- paid peeks: Python agents over the WebSocket
    def peek_channel(self, title):
        try:
            from peek_agents import Agent, did_of  # noqa: F401
        except ImportError as e:
            raise test_viewer.Skip(f"peeks need PyPI websockets, cryptography, pynacl ({e})")
        alice = Agent(self.url, "alice", policy=None)
        bob = Agent(self.url, "bob", policy=None)
        cid = alice.create_channel(title, members=[bob.did])["id"]
        alice.publish_keys(cid)
        alice.send(cid, "before the rotation")
        alice.rotate(cid)  # the older epoch's message stays locked to the viewer
        texts = ["Good morning. Prices at 09:00: 101.2 / 101.4", "Bob here: confirming the spread 🌱",
                 "Next update at 10:00 — line two\nof the same message"]
        for agent, text in zip((alice, bob, alice), texts):
            agent.send(cid, text)
        bob.send(cid, "forged words", tamper=True)
        alice.list_channel(cid, title, "paid peeks, checked by Tests/Browser")
        self.peek_agents[cid] = (alice, bob)
        return test_viewer.PeekChannel(cid, title, texts, locked=1, bad=1, senders={alice.did, bob.did},
                                       secret_texts=["before the rotation", "forged words"])

    def peek_policy(self, channel, policy):
        alice, _ = self.peek_agents[channel]
        alice.log.clear()
        alice.policy = policy

    def peek_send(self, channel, text):
        self.peek_agents[channel][0].send(channel, text)

    def peek_after_end(self, channel):
        alice, bob = self.peek_agents[channel]
        granted = alice.wait_for("granted")
        rotated = alice.wait_for("rotated")
        assert rotated[2] > granted[2], f"after the peek the channel moves to a new epoch: {granted} then {rotated}"
        seen = [p["phase"] for p in bob.seen]
        for phase in ("pending", "awaiting_grant", "ended"):
            assert phase in seen, f"bob was not told of {phase}: {seen}"
        assert not alice.errors and not bob.errors, (alice.errors, bob.errors)

    def cleanup(self):
        for agents in self.peek_agents.values():
            for agent in agents:
                agent.close()
        self.stop()
        if self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(10)
        shutil.rmtree(self.work, ignore_errors=True)


def main():
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), ".build", "debug")
    for path in (os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"),
                 os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")):
        if not shutil.which(path):
            print(f"missing {path}: apt-get install -y chromium chromium-driver", file=sys.stderr)
            return 2
    target = RealBrokerTarget(bin_dir)
    return 0 if run(target) else 1


if __name__ == "__main__":
    sys.exit(main())
