"""deploy/install.sh: its dry run, an install into a temporary root (--root --skip-system), idempotence, errors,
and shellcheck."""
import shutil
import stat
import subprocess

import pytest

from conftest import DEPLOY, run_install, snapshot

DOMAIN = "chat.example.org"

# What a first install must do, as the lines it prints (with or without "(dry run)").
EVERY_STEP = [
    "useradd --system agentchat",
    "useradd --system agentchat-redis",
    "mkdir /etc/agentchat", "chmod 0750 /etc/agentchat", "chown root:agentchat /etc/agentchat",
    "mkdir /var/lib/agentchat/broker", "chmod 0750 /var/lib/agentchat/broker",
    "chown agentchat:agentchat /var/lib/agentchat/broker",
    "mkdir /var/lib/agentchat/redis", "chown agentchat-redis:agentchat /var/lib/agentchat/redis",
    "install /usr/local/lib/agentchat/agentchat-broker",
    "install /usr/local/lib/agentchat/AgentChat_AgentChatBroker.resources/",
    "ln -sfn /usr/local/lib/agentchat/agentchat-broker /usr/local/bin/agentchat-broker",
    "install /etc/systemd/system/agentchat-redis.service",
    "install /etc/systemd/system/agentchat-broker.service",
    "install /etc/agentchat/redis.conf", "chmod 0640 /etc/agentchat/redis.conf",
    "write /etc/agentchat/agentchat.env", "chmod 0640 /etc/agentchat/agentchat.env",
    "chown root:agentchat /etc/agentchat/agentchat.env",
    "write /etc/agentchat/redis-password", "chmod 0640 /etc/agentchat/redis-password",
    "chown root:agentchat /etc/agentchat/redis-password",
    "write /etc/agentchat/redis-admin-password", "chmod 0600 /etc/agentchat/redis-admin-password",
    "chown root:root /etc/agentchat/redis-admin-password",
    "write /etc/agentchat/redis-users.acl", "chmod 0640 /etc/agentchat/redis-users.acl",
    "systemctl daemon-reload",
    "systemctl enable --now agentchat-redis.service agentchat-broker.service",
]


def test_dry_run_prints_every_step_and_changes_nothing(tmp_path, staged_binary):
    root = tmp_path / "root"
    root.mkdir()
    result = run_install(root, staged_binary, "--domain", DOMAIN, "--dry-run")
    lines = result.stdout.splitlines()
    assert "dry run" in lines[0]
    actions = [line.removeprefix("+ (dry run) ") for line in lines if line.startswith("+ (dry run) ")]
    for step in EVERY_STEP:
        assert any(a.startswith(step) for a in actions), f"dry run does not print {step!r}:\n{result.stdout}"
    # Packages: either the install it would run, or that they are there (this machine has them).
    assert any("apt-get install" in line or line.startswith("= packages installed") for line in lines)
    assert not [line for line in lines if line.startswith("+ ") and not line.startswith("+ (dry run) ")]
    assert list(root.iterdir()) == []
    # No generated password is printed (they are 64 hex digits).
    import re
    assert not re.search(r"[0-9a-f]{64}", result.stdout + result.stderr)


def test_install_into_root_creates_the_tree_and_a_second_run_changes_nothing(tmp_path, staged_binary):
    root = tmp_path / "root"
    root.mkdir()
    first = run_install(root, staged_binary, "--domain", DOMAIN, "--skip-system")
    modes = {
        "etc/agentchat": 0o750,
        "etc/agentchat/agentchat.env": 0o640,
        "etc/agentchat/redis.conf": 0o640,
        "etc/agentchat/redis-users.acl": 0o640,
        "etc/agentchat/redis-password": 0o640,
        "etc/agentchat/redis-admin-password": 0o600,
        "var/lib/agentchat": 0o750,
        "var/lib/agentchat/broker": 0o750,
        "var/lib/agentchat/redis": 0o750,
        "usr/local/lib/agentchat/agentchat-broker": 0o755,
        "etc/systemd/system/agentchat-broker.service": 0o644,
        "etc/systemd/system/agentchat-redis.service": 0o644,
    }
    for relative, mode in modes.items():
        assert stat.S_IMODE((root / relative).stat().st_mode) == mode, relative
    assert (root / "usr/local/bin/agentchat-broker").is_symlink()
    assert (root / "usr/local/lib/agentchat/AgentChat_AgentChatBroker.resources/Web").is_dir()
    assert (root / "usr/local/lib/agentchat/agentchat-broker").read_bytes() == staged_binary.read_bytes()
    for name in ("agentchat-broker.service", "agentchat-redis.service"):
        assert (root / "etc/systemd/system" / name).read_bytes() == (DEPLOY / "systemd" / name).read_bytes()
    # Owners are noted (not applied: --skip-system), one line per path.
    for owner in ("chown root:agentchat /etc/agentchat/agentchat.env",
                  "chown agentchat:agentchat /var/lib/agentchat/broker",
                  "chown agentchat-redis:agentchat /var/lib/agentchat/redis"):
        assert f"- (skipped: --skip-system) {owner}" in first.stdout

    env = (root / "etc/agentchat/agentchat.env").read_text()
    settings = dict(line.split("=", 1) for line in env.splitlines() if line and not line.startswith("#"))
    assert settings["AGENTCHAT_ISSUER"] == f"https://{DOMAIN}"
    assert settings["AGENTCHAT_REDIS_USERNAME"] == "agentchat"
    assert settings["AGENTCHAT_REDIS_PASSWORD_FILE"] == "/etc/agentchat/redis-password"
    assert "@" not in env, "a template placeholder was left"
    acl = (root / "etc/agentchat/redis-users.acl").read_text()
    import hashlib
    passwords = {}
    for user, name in (("agentchat", "redis-password"), ("admin", "redis-admin-password")):
        password = (root / "etc/agentchat" / name).read_text()
        assert password.endswith("\n") and password.count("\n") == 1
        password = password.strip()
        assert len(password) == 64 and int(password, 16) >= 0
        assert password not in acl and password not in env
        assert f"user {user} on #{hashlib.sha256(password.encode()).hexdigest()} " in acl
        passwords[user] = password
    assert passwords["agentchat"] != passwords["admin"]
    assert "user default off" in acl.splitlines()

    before = snapshot(root)
    second = run_install(root, staged_binary, "--domain", DOMAIN, "--skip-system")
    assert [line for line in second.stdout.splitlines() if line.startswith("+")] == []
    assert second.stdout.splitlines()[-1] == "Nothing changed."
    assert snapshot(root) == before

    # Another domain later: the written configuration (and its secret) is kept, with a note.
    third = run_install(root, staged_binary, "--domain", "other.example.org", "--skip-system")
    assert "keeps AGENTCHAT_ISSUER=https://chat.example.org" in third.stderr
    assert snapshot(root) == before


def test_a_changed_unit_is_replaced_and_the_secrets_kept(tmp_path, staged_binary):
    root = tmp_path / "root"
    root.mkdir()
    run_install(root, staged_binary, "--domain", DOMAIN, "--skip-system")
    secrets = {name: (root / "etc/agentchat" / name).read_bytes()
               for name in ("agentchat.env", "redis-password", "redis-admin-password", "redis-users.acl")}
    unit = root / "etc/systemd/system/agentchat-broker.service"
    unit.write_text("[Service]\nExecStart=/bin/false\n")
    (root / "var/lib/agentchat/broker").chmod(0o777)
    result = run_install(root, staged_binary, "--skip-system")
    actions = [line for line in result.stdout.splitlines() if line.startswith("+")]
    assert actions == ["+ chmod 0750 /var/lib/agentchat/broker",
                       f"+ install /etc/systemd/system/agentchat-broker.service (from {DEPLOY}/systemd/agentchat-broker.service)"]
    assert unit.read_bytes() == (DEPLOY / "systemd/agentchat-broker.service").read_bytes()
    for name, content in secrets.items():
        assert (root / "etc/agentchat" / name).read_bytes() == content, name


def test_port_443_drop_in(tmp_path, staged_binary):
    root = tmp_path / "root"
    root.mkdir()
    run_install(root, staged_binary, "--domain", DOMAIN, "--skip-system", "--port-443")
    drop_in = root / "etc/systemd/system/agentchat-broker.service.d/port-443.conf"
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in drop_in.read_text()


@pytest.mark.parametrize("arguments, message", [
    ([], "--binary is required"),
    (["--binary", "/nonexistent/agentchat-broker"], "is not an executable file"),
    (["--binary", "BINARY", "--domain", "bad domain!"], "is not a DNS name"),
    (["--binary", "BINARY", "--bogus"], "unknown argument: --bogus"),
    (["--binary", "BINARY", "--root", "/nonexistent-root"], "is not a directory"),
    (["--binary", "BINARY", "--root", "ROOT", "--skip-system"], "--domain is required"),
])
def test_bad_arguments_are_refused_with_a_clear_error(tmp_path, staged_binary, arguments, message):
    root = tmp_path / "root"
    root.mkdir()
    arguments = [str(staged_binary) if a == "BINARY" else str(root) if a == "ROOT" else a for a in arguments]
    result = subprocess.run(["sh", str(DEPLOY / "install.sh"), *arguments], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert message in result.stderr
    assert list(root.iterdir()) == []


def test_shellcheck():
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed (Debian package shellcheck; make test-deploy installs it)")
    result = subprocess.run(["shellcheck", "--shell=sh", str(DEPLOY / "install.sh")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
