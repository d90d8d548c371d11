"""Shared fixtures of the deployment tests (deploy/): paths, the broker binary, an install into a temporary root."""
import os
import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
BUNDLE = "AgentChat_AgentChatBroker.resources"


def bin_dir() -> pathlib.Path:
    """Where agentchat-broker and agentchat are: AGENTCHAT_BIN_DIR (the Makefile sets it to SwiftPM's debug bin)."""
    value = os.environ.get("AGENTCHAT_BIN_DIR")
    if not value:
        pytest.fail("set AGENTCHAT_BIN_DIR to the directory with agentchat-broker and agentchat (make test-deploy does)")
    path = pathlib.Path(value)
    for name in ("agentchat-broker", "agentchat"):
        if not os.access(path / name, os.X_OK):
            pytest.fail(f"{path / name} is not an executable")
    return path


@pytest.fixture(scope="session")
def broker_binary() -> pathlib.Path:
    return bin_dir() / "agentchat-broker"


@pytest.fixture(scope="session")
def cli_binary() -> pathlib.Path:
    return bin_dir() / "agentchat"


def run_install(root: pathlib.Path, binary: pathlib.Path, *extra: str, check: bool = True):
    return subprocess.run(
        ["sh", str(DEPLOY / "install.sh"), "--binary", str(binary), "--root", str(root), *extra],
        capture_output=True, text=True, check=check, timeout=60,
    )


@pytest.fixture
def staged_binary(tmp_path, broker_binary) -> pathlib.Path:
    """A copy of the broker in a directory of its own, with its resource bundle beside it when the build has one."""
    directory = tmp_path / "build"
    directory.mkdir()
    shutil.copy2(broker_binary, directory / "agentchat-broker")
    bundle = broker_binary.parent / BUNDLE
    (directory / BUNDLE / "Web").mkdir(parents=True)
    if bundle.is_dir():
        shutil.rmtree(directory / BUNDLE)
        shutil.copytree(bundle, directory / BUNDLE)
    else:
        (directory / BUNDLE / "Web" / "index.html").write_text("<!doctype html><title>t</title>\n")
    return directory / "agentchat-broker"


def snapshot(root: pathlib.Path) -> dict:
    """Every path under root with its type, mode, size, mtime and content (files) or target (links)."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        key = str(path.relative_to(root))
        if path.is_symlink():
            result[key] = ("link", os.readlink(path))
        elif path.is_dir():
            result[key] = ("dir", oct(st.st_mode & 0o7777), st.st_mtime_ns)
        else:
            result[key] = ("file", oct(st.st_mode & 0o7777), st.st_mtime_ns, path.read_bytes())
    return result
