#!/usr/bin/env python3
"""The viewer page test (test_viewer.py) against the real broker: a real redis-server, the real agentchat-broker
binary, and agents driven through the real `agentchat` CLI (register, create, list, send). The broker is stopped
and started again to check that the page recovers.

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
             "--log-level", "warning", "--register-rate", "1000"],
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

    def cleanup(self):
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
