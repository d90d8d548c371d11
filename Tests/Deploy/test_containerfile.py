"""deploy/Containerfile, read statically (no container engine runs here): its stages, the non-root user, the
health check and port, and that the runtime stage installs every library the broker links (ldd on the built
broker; the Swift runtime excepted, linked statically by the build stage's --static-swift-stdlib)."""
import re
import subprocess

import pytest

from conftest import DEPLOY

TEXT = (DEPLOY / "Containerfile").read_text()


def instructions() -> list:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", "\n".join(l for l in TEXT.splitlines() if not l.lstrip().startswith("#")))
    result = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            result.append((word.upper(), rest.strip()))
    return result


def stages() -> dict:
    result, current = {}, None
    for word, rest in instructions():
        if word == "FROM":
            match = re.fullmatch(r"(\S+) AS (\S+)", rest, re.I)
            assert match, f"every stage is named: FROM {rest}"
            current = match.group(2)
            result[current] = [("FROM", match.group(1))]
        elif current:
            result[current].append((word, rest))
    return result


def test_stages():
    s = stages()
    assert list(s) == ["build", "runtime"]
    assert s["build"][0][1] == "${SWIFT_IMAGE}"
    assert "ARG SWIFT_IMAGE=docker.io/library/swift:6.3-bookworm" in TEXT
    assert s["runtime"][0][1] == "docker.io/library/debian:12-slim"
    build = " ".join(rest for word, rest in s["build"] if word == "RUN")
    assert "swift build -c release --product agentchat-broker --static-swift-stdlib" in build
    runtime = dict((w, r) for w, r in s["runtime"] if w != "RUN")
    assert runtime["USER"] == "10001:10001"
    assert runtime["EXPOSE"] == "8080"
    assert "/health" in runtime["HEALTHCHECK"]
    assert runtime["ENTRYPOINT"] == '["/usr/local/lib/agentchat/agentchat-broker"]'
    assert runtime["COPY"] == "--from=build /out/ /usr/local/lib/agentchat/"
    assert "AgentChat_AgentChatBroker.resources" in build, "the viewer page's bundle goes with the binary"
    # No compiler or -dev package in the runtime image.
    runtime_run = " ".join(r for w, r in s["runtime"] if w == "RUN")
    assert "-dev" not in runtime_run and "swift" not in runtime_run


def runtime_packages() -> set:
    runtime_run = " ".join(r for w, r in stages()["runtime"] if w == "RUN")
    match = re.search(r"apt-get install -y --no-install-recommends (.*?)(&&|$)", runtime_run)
    assert match
    return set(match.group(1).split())


def owning_package(library: str) -> str:
    for candidate in (library, library.replace("/usr/lib/", "/lib/", 1), library.replace("/lib/", "/usr/lib/", 1)):
        result = subprocess.run(["dpkg", "-S", candidate], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.split(":")[0]
    pytest.fail(f"no Debian package owns {library}")


def test_runtime_stage_installs_every_library_the_broker_links(broker_binary):
    ldd = subprocess.run(["ldd", str(broker_binary)], capture_output=True, text=True, check=True).stdout
    libraries = re.findall(r"=> (/\S+)", ldd)
    assert any("libwebsockets" in l for l in libraries), ldd
    swift_runtime = [l for l in libraries if "/swift/" in l or "/usr/lib/swift" in l]
    system = [l for l in libraries if l not in swift_runtime]
    installed = runtime_packages()
    # What those packages pull in (apt-get installs Depends and Pre-Depends), resolved on this Debian 12.
    closure = subprocess.run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                              "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *sorted(installed)],
                             capture_output=True, text=True, check=True).stdout
    reachable = installed | {l.split()[-1] for l in closure.splitlines() if l.strip().startswith(("Depends:", "PreDepends:"))} \
        | {l.strip() for l in closure.splitlines() if l and not l.startswith(" ")}
    essential = {"libc6"}
    missing = {}
    for library in system:
        package = owning_package(library).split(":")[0]
        if package not in reachable and package not in essential:
            missing[library] = package
    assert not missing, f"linked but not installed in the runtime stage: {missing}"
    # The libraries the broker needs directly are named, not left to chance.
    for package in ("libwebsockets17", "libsodium23", "libhiredis0.14", "libuv1"):
        assert package in installed
