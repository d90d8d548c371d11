"""deploy/systemd and deploy/redis: systemd-analyze verify and security on the units, the hardening the brief asks
for, and the Redis configuration and ACL users that install.sh writes, run for real (redis-server with them, the
broker on its socket, an agent registering, sending and reading)."""
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import DEPLOY, run_install

UNITS = ("agentchat-broker.service", "agentchat-redis.service")


def unit_settings(text: str) -> dict:
    """Key → list of values over every section (later values after earlier ones)."""
    result: dict = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        result.setdefault(key, []).append(value)
    return result


def verifiable_copy(directory: pathlib.Path, broker_binary: pathlib.Path, drop_in: bool = False) -> list:
    """The units with their ExecStart binaries pointed at real files: systemd-analyze verify refuses a unit whose
    binary does not exist, and the broker is installed as /usr/local/lib/agentchat/agentchat-broker only on a
    server. redis-server and /bin/kill are real paths here. With drop_in, the port-443 drop-in is appended to the
    broker's unit (a repeated [Service] section merges as the drop-in would: verify does not read drop-in
    directories of units given by path)."""
    paths = []
    for name in UNITS:
        text = (DEPLOY / "systemd" / name).read_text()
        text = text.replace("/usr/local/lib/agentchat/agentchat-broker", str(broker_binary))
        if drop_in and name == "agentchat-broker.service":
            text += "\n" + (DEPLOY / "systemd/agentchat-broker-port-443.conf").read_text()
        path = directory / name
        path.write_text(text)
        paths.append(path)
    return paths


@pytest.mark.parametrize("drop_in", [False, True], ids=["units", "with-port-443-drop-in"])
def test_systemd_analyze_verify(tmp_path, broker_binary, drop_in):
    paths = verifiable_copy(tmp_path, broker_binary, drop_in)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", *map(str, paths)], capture_output=True,
                            text=True, timeout=60)
    # Unknown keys and bad values are only warnings (exit status 0): any output fails the test.
    assert result.returncode == 0 and result.stdout.strip() == "" and result.stderr.strip() == "", result.stderr


def test_verify_catches_a_broken_unit(tmp_path, broker_binary):
    """The check above can fail: a misspelt key and a missing binary are reported."""
    paths = verifiable_copy(tmp_path, broker_binary)
    broken = paths[0].read_text().replace("ProtectHome=yes", "ProtectHomes=yes")
    paths[0].write_text(broken)
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(paths[0])], capture_output=True, text=True)
    assert "Unknown key 'ProtectHomes'" in result.stderr
    paths[0].write_text(broken.replace(str(broker_binary), "/nonexistent/agentchat-broker"))
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(paths[0])], capture_output=True, text=True)
    assert result.returncode != 0 and "not executable" in result.stderr


# The exposure score is printed in the test log; the threshold only guards against a regression.
EXPOSURE_THRESHOLD = 2.5


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_security_offline(tmp_path, broker_binary, name):
    paths = dict(zip(UNITS, verifiable_copy(tmp_path, broker_binary)))
    result = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(paths[name])],
                            capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"{name}: systemd-analyze security exposure {score}")
    assert score <= EXPOSURE_THRESHOLD, result.stdout


def test_broker_unit_hardening():
    s = unit_settings((DEPLOY / "systemd/agentchat-broker.service").read_text())
    expected = {
        "User": "agentchat", "Group": "agentchat", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "NoNewPrivileges": "yes", "ReadWritePaths": "/var/lib/agentchat/broker",
        "CapabilityBoundingSet": "", "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter": "@system-service", "EnvironmentFile": "/etc/agentchat/agentchat.env",
        "Restart": "on-failure", "KillSignal": "SIGTERM", "ExecReload": "/bin/kill -HUP $MAINPID",
        "ExecStart": "/usr/local/lib/agentchat/agentchat-broker",
    }
    for key, value in expected.items():
        assert s.get(key) == [value], (key, s.get(key))
    assert "AmbientCapabilities" not in s
    assert int(s["LimitNOFILE"][0]) >= 65536
    # The drain: up to 3 s (one process), up to 10 s before the supervisor kills its workers.
    assert int(s["TimeoutStopSec"][0]) > 10
    # The env file's data directory is the one writable path.
    env = (DEPLOY / "agentchat.env.in").read_text()
    assert "AGENTCHAT_DATA_DIR=/var/lib/agentchat/broker\n" in env
    drop_in = unit_settings((DEPLOY / "systemd/agentchat-broker-port-443.conf").read_text())
    assert drop_in["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    assert drop_in["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]


def test_redis_unit_hardening():
    s = unit_settings((DEPLOY / "systemd/agentchat-redis.service").read_text())
    assert s["ExecStart"] == ["/usr/bin/redis-server /etc/agentchat/redis.conf"]
    assert s["User"] == ["agentchat-redis"] and s["Group"] == ["agentchat"]
    assert s["ReadWritePaths"] == ["/var/lib/agentchat/redis"]
    assert s["CapabilityBoundingSet"] == [""] and s["ProtectSystem"] == ["strict"]
    conf = (DEPLOY / "redis/agentchat-redis.conf").read_text()
    for line in ("appendonly yes", "appendfsync everysec", "bind 127.0.0.1 -::1", "port 0",
                 "unixsocket /run/agentchat-redis/redis.sock", "unixsocketperm 770", "dir /var/lib/agentchat/redis",
                 "aclfile /etc/agentchat/redis-users.acl", "supervised systemd"):
        assert re.search(rf"^{re.escape(line)}$", conf, re.M), line


def known_variables(broker_binary) -> set:
    help_text = subprocess.run([str(broker_binary), "--help"], capture_output=True, text=True, check=True).stdout
    return set(re.findall(r"env (AGENTCHAT_[A-Z_]+)", re.sub(r"\s+", " ", help_text)))


def test_env_template_names_only_variables_the_broker_knows(broker_binary):
    known = known_variables(broker_binary)
    assert {"AGENTCHAT_HOST", "AGENTCHAT_REDIS_URL", "AGENTCHAT_ISSUER", "AGENTCHAT_REDIS_PASSWORD_FILE",
            "AGENTCHAT_TLS_CERT", "AGENTCHAT_TLS_KEY", "AGENTCHAT_ADMIN_TOKEN"} <= known
    named = set(re.findall(r"^#?(AGENTCHAT_[A-Z_]+)=", (DEPLOY / "agentchat.env.in").read_text(), re.M))
    assert named <= known, named - known


def wait_for(condition, what: str, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def redis_cli(socket_path, *args, user=None, password=None):
    command = ["redis-cli", "-s", str(socket_path)]
    env = dict(os.environ)
    if user:
        command += ["--user", user]
        env["REDISCLI_AUTH"] = password
    return subprocess.run(command + list(args), capture_output=True, text=True, timeout=30, env=env)


def health(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None
    except OSError:
        return None, None


def test_installed_redis_and_broker_run_with_the_generated_configuration(tmp_path, staged_binary, cli_binary):
    """redis-server with the installed /etc/agentchat/redis.conf and ACL file (paths moved under the temporary
    root, `supervised no` instead of systemd), the broker with the installed agentchat.env (port 0 instead of
    8080; the password file under the root): /health 200, an agent registers, creates a channel, sends and reads;
    Redis's default user is off, the broker's user `agentchat` has no admin commands, `admin` has them; AOF is
    on."""
    root = tmp_path / "r"
    root.mkdir()
    run_install(root, staged_binary, "--domain", "chat.example.org", "--skip-system")
    run_dir = root / "run/agentchat-redis"
    run_dir.mkdir(parents=True)
    conf = (root / "etc/agentchat/redis.conf").read_text()
    conf = conf.replace("/run/agentchat-redis", str(run_dir)).replace("/var/lib/agentchat/redis",
                                                                     str(root / "var/lib/agentchat/redis"))
    conf = conf.replace("/etc/agentchat/redis-users.acl", str(root / "etc/agentchat/redis-users.acl"))
    conf = conf.replace("supervised systemd", "supervised no")
    conf_path = root / "etc/agentchat/redis-test.conf"
    conf_path.write_text(conf)
    settings = dict(line.split("=", 1) for line in (root / "etc/agentchat/agentchat.env").read_text().splitlines()
                    if line and not line.startswith("#"))
    socket_path = run_dir / "redis.sock"
    assert settings["AGENTCHAT_REDIS_URL"] == "unix:///run/agentchat-redis/redis.sock"

    redis = subprocess.Popen(["redis-server", str(conf_path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    broker = None
    try:
        admin_password = (root / "etc/agentchat/redis-admin-password").read_text().strip()
        wait_for(lambda: socket_path.exists() and redis_cli(socket_path, "PING", user="admin",
                                                            password=admin_password).stdout.strip() == "PONG",
                 "redis-server on its socket")
        assert oct(socket_path.stat().st_mode & 0o777) == "0o770"
        passwords = {user: (root / "etc/agentchat" / name).read_text().strip()
                     for user, name in (("agentchat", "redis-password"), ("admin", "redis-admin-password"))}
        # No login, no access: the default user is off.
        out = redis_cli(socket_path, "GET", "x")
        assert "NOAUTH" in out.stdout + out.stderr, out
        # The broker's user: ordinary commands, no admin or dangerous ones.
        assert redis_cli(socket_path, "SET", "agentchat:deploy-test", "1", user="agentchat",
                         password=passwords["agentchat"]).stdout.strip() == "OK"
        for command in (["CONFIG", "GET", "appendonly"], ["FLUSHALL"], ["SHUTDOWN"], ["KEYS", "*"], ["MONITOR"],
                        ["ACL", "SETUSER", "intruder", "on", "nopass", "+@all"]):
            out = redis_cli(socket_path, *command, user="agentchat", password=passwords["agentchat"])
            assert "NOPERM" in out.stdout + out.stderr, (command, out.stdout, out.stderr)
        for key, value in (("appendonly", "yes"), ("appendfsync", "everysec")):
            admin = redis_cli(socket_path, "CONFIG", "GET", key, user="admin", password=passwords["admin"])
            assert admin.stdout.split() == [key, value], admin.stdout + admin.stderr
        wrong = redis_cli(socket_path, "CONFIG", "GET", "appendonly", user="admin", password=passwords["agentchat"])
        assert "WRONGPASS" in wrong.stdout + wrong.stderr

        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCHAT_")}
        env.update(settings)
        env.update(AGENTCHAT_HOST="127.0.0.1", AGENTCHAT_PORT="0", AGENTCHAT_PROCESSES="1",
                   AGENTCHAT_REDIS_URL=f"unix://{socket_path}",
                   AGENTCHAT_REDIS_PASSWORD_FILE=str(root / "etc/agentchat/redis-password"),
                   AGENTCHAT_DATA_DIR=str(root / "var/lib/agentchat/broker"))
        broker = subprocess.Popen([str(root / "usr/local/lib/agentchat/agentchat-broker")], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = broker.stdout.readline()
        match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        port = int(match.group(1))
        wait_for(lambda: health(port)[0] == 200, "/health 200")
        assert health(port)[1]["status"] == "healthy"

        server = f"http://127.0.0.1:{port}"
        identity = tmp_path / "agent.json"

        def cli(*args):
            result = subprocess.run([str(cli_binary), *args, "--server", server, "--identity", str(identity)],
                                    capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (args, result.stdout, result.stderr)
            return result.stdout.strip()

        cli("keygen", "--name", "deploy-test")
        cli("register")
        channel = cli("channel", "create", "--name", "deploy")
        offset = cli("send", "--channel", channel, "hello from the deploy test")
        assert offset.isdigit(), offset
        # The CLI encrypts and decrypts; Redis holds ciphertext only.
        assert "hello from the deploy test" in cli("history", "--channel", channel)
        aof = list((root / "var/lib/agentchat/redis/appendonlydir").iterdir())
        assert any(p.name.endswith(".incr.aof") and p.stat().st_size > 0 for p in aof)
    finally:
        for process in (broker, redis):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
    assert broker.returncode == 0, "the broker did not stop cleanly on SIGTERM"

