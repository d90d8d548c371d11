"""The broker over TLS (--tls-cert/--tls-key), against real broker processes with embedded Redis.

A throwaway CA and server certificates are made with the `openssl` CLI in a temporary directory. The TLS clients are
Python's `ssl` module (raw requests, ALPN, the certificate served) and the Python SDK (clients/python, from the tree)
with `ClientConfig(ca_file=...)` over wss:// and https://.

The binaries come from $AGENTCHAT_BIN_DIR, default `swift build --show-bin-path` in the repository root.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(REPO, "clients", "python", "src"))
sys.path.insert(0, os.path.join(REPO, "clients", "python", "tests"))

from agentchat import AgentChatClient, AgentChatError, AgentIdentity, ClientConfig, ReconnectBackoff  # noqa: E402


def bin_dir() -> str:
    configured = os.environ.get("AGENTCHAT_BIN_DIR")
    if configured:
        return configured
    return subprocess.run([os.environ.get("SWIFT", "swift"), "build", "--show-bin-path"], cwd=REPO,
                          capture_output=True, text=True, check=True).stdout.strip()


def openssl(*args: str, cwd: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


class PKI:
    """A CA and server certificates it signs (P-256), for 127.0.0.1 and localhost."""

    def __init__(self, directory: str, name: str = "ca") -> None:
        self.directory = directory
        self.ca = os.path.join(directory, f"{name}.pem")
        self.ca_key = os.path.join(directory, f"{name}.key")
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", self.ca_key, "-out", self.ca, "-days", "2", "-subj", f"/CN=AgentChat test {name}",
                cwd=directory)

    def issue(self, stem: str, serial: int, common_name: str) -> tuple[str, str]:
        """Writes `stem`.pem (certificate) and `stem`.key (its key); returns their paths."""
        cert, key = os.path.join(self.directory, f"{stem}.pem"), os.path.join(self.directory, f"{stem}.key")
        csr, ext = os.path.join(self.directory, f"{stem}.csr"), os.path.join(self.directory, f"{stem}.ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key,
                "-out", csr, "-subj", f"/CN={common_name}", cwd=self.directory)
        openssl("x509", "-req", "-in", csr, "-CA", self.ca, "-CAkey", self.ca_key, "-set_serial", str(serial),
                "-days", "2", "-out", cert, "-extfile", ext, cwd=self.directory)
        return cert, key


class Broker:
    """One agentchat-broker process over TLS with its embedded Redis in its own data directory."""

    def __init__(self, work: str, cert: str, key: str, extra: list[str] | None = None,
                 env: dict[str, str] | None = None, log_level: str = "info") -> None:
        self.work = work
        self.log_path = os.path.join(work, f"broker-{time.monotonic_ns()}.log")
        arguments = [os.path.join(bin_dir(), "agentchat-broker"), "--host", "127.0.0.1", "--port", "0",
                     "--data-dir", os.path.join(work, "data"), "--log-level", log_level, "--register-rate", "10000",
                     *(["--tls-cert", cert] if cert else []), *(["--tls-key", key] if key else []), *(extra or [])]
        self.process = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=open(self.log_path, "w"), text=True,
                                        env={**os.environ, **(env or {})})
        self.port = 0
        self.announcement = ""
        deadline = time.monotonic() + 60
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if "listening on" in line:
                self.announcement = line.strip()
                self.port = int(line.strip().rsplit(":", 1)[1].strip("/"))
                return
            if not line:
                break
        raise RuntimeError(f"the broker did not start: {self.log()}")

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()[-4000:]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def run_broker_expecting_failure(arguments: list[str], env: dict[str, str] | None = None) -> str:
    """Runs the broker, which must exit non-zero before it listens; returns its stderr."""
    work = tempfile.mkdtemp(prefix="agentchat-tls-")
    try:
        result = subprocess.run([os.path.join(bin_dir(), "agentchat-broker"), "--host", "127.0.0.1", "--port", "0",
                                 "--data-dir", os.path.join(work, "data"), *arguments],
                                capture_output=True, text=True, timeout=60, env={**os.environ, **(env or {})})
        assert result.returncode != 0, result.stdout
        assert "listening on" not in result.stdout
        return result.stderr
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="module")
def pki() -> Iterator[PKI]:
    directory = tempfile.mkdtemp(prefix="agentchat-pki-")
    try:
        yield PKI(directory)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="module")
def broker(pki: PKI) -> Iterator[Broker]:
    cert, key = pki.issue("server", 1001, "agentchat-broker-1")
    work = tempfile.mkdtemp(prefix="agentchat-tls-")
    b = Broker(work, cert, key, log_level="debug")
    try:
        yield b
    finally:
        b.stop()
        shutil.rmtree(work, ignore_errors=True)


def client_context(pki: PKI, alpn: list[str] | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=pki.ca)
    context.set_alpn_protocols(alpn or ["http/1.1"])
    return context


def tls_socket(port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


def exchange(sock: ssl.SSLSocket, request: bytes) -> bytes:
    """Sends `request` and reads until the server closes."""
    sock.sendall(request)
    received = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError):
            break
        if not chunk:
            break
        received += chunk
    return received


def served_serial(port: int, pki: PKI) -> int:
    with tls_socket(port, client_context(pki)) as sock:
        return int(sock.getpeercert()["serialNumber"], 16)


# MARK: Serving


def test_https_health_and_announcement(broker: Broker, pki: PKI) -> None:
    assert broker.announcement.startswith("AgentChat broker listening on https://127.0.0.1:")
    connection = http.client.HTTPSConnection("127.0.0.1", broker.port, context=client_context(pki), timeout=10)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "healthy"
    finally:
        connection.close()


def test_a_client_that_does_not_trust_the_ca_is_refused(broker: Broker) -> None:
    other = tempfile.mkdtemp(prefix="agentchat-pki-other-")
    try:
        stranger = PKI(other, "stranger")
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_socket(broker.port, ssl.create_default_context(cafile=stranger.ca))
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_socket(broker.port, ssl.create_default_context())  # the system's CAs
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_plain_http_on_the_tls_port_gets_no_answer(broker: Broker) -> None:
    with socket.create_connection(("127.0.0.1", broker.port), timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while True:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        assert b"HTTP/1.1" not in received


def test_alpn_offers_http_1_1_only(broker: Broker, pki: PKI) -> None:
    with tls_socket(broker.port, client_context(pki, ["h2", "http/1.1"])) as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
    # A client that speaks only h2 never gets it: the handshake ends without ALPN (or is refused).
    try:
        with tls_socket(broker.port, client_context(pki, ["h2"])) as sock:
            assert sock.selected_alpn_protocol() is None
            response = exchange(sock, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            assert not response.startswith(b"\x00"), "an HTTP/2 frame came back"
            # The head gate answers the HTTP/2 preface as an HTTP/1.1 request of the wrong version.
            assert response.startswith(b"HTTP/1.1 505"), response[:200]
    except ssl.SSLError as refused:
        assert "NO_APPLICATION_PROTOCOL" in str(refused).upper()


def test_tls_1_1_is_refused(broker: Broker, pki: PKI) -> None:
    context = client_context(pki)
    # This client would speak TLS 1.1 (security level 0): the refusal must come from the broker, as an alert.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = ssl.TLSVersion.TLSv1_1
    context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises(ssl.SSLError) as refused:
        tls_socket(broker.port, context)
    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper(), refused.value


@pytest.mark.parametrize(("head", "status", "code"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
     400, "upgrade_not_supported"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", 400, None),
    (b"GET /health HTTP/1.0\r\n\r\n", None, None),
])
def test_the_head_gate_judges_heads_that_came_over_tls(broker: Broker, pki: PKI, head: bytes, status: int | None,
                                                       code: str | None) -> None:
    with tls_socket(broker.port, client_context(pki)) as sock:
        response = exchange(sock, head)
    status_line, _, rest = response.partition(b"\r\n")
    if status is None:
        # An HTTP/1.0 request passes the gate (and is answered by the broker, not refused).
        assert status_line.startswith(b"HTTP/1.1 200"), response[:200]
        return
    assert status_line.startswith(b"HTTP/1.1 %d" % status), response[:300]
    body = json.loads(rest.partition(b"\r\n\r\n")[2])
    if code is not None:
        assert body["error"]["code"] == code


def test_a_head_sent_in_pieces_over_tls_is_served(broker: Broker, pki: PKI) -> None:
    with tls_socket(broker.port, client_context(pki)) as sock:
        sock.sendall(b"GET /health HTT")
        time.sleep(0.2)
        response = exchange(sock, b"P/1.1\r\nHost: x\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 200"), response[:200]


# MARK: The Python SDK over TLS


async def sdk_agent(url: str, ca_file: str | None, name: str) -> AgentChatClient:
    config = ClientConfig(backoff=ReconnectBackoff(initial_delay=0.05, max_delay=0.5, max_attempts=3),
                          ca_file=ca_file)
    client = AgentChatClient(AgentIdentity.generate(name), url, config)
    await client.register()
    await client.connect()
    return client


def test_sdk_agents_log_in_and_exchange_a_message_over_wss(broker: Broker, pki: PKI) -> None:
    asyncio.run(asyncio.wait_for(sdk_message_over_wss(broker, pki), 60))


async def sdk_message_over_wss(broker: Broker, pki: PKI) -> None:
    alice = await sdk_agent(broker.url, pki.ca, "alice")
    bob = await sdk_agent(broker.url.replace("https://", "wss://"), pki.ca, "bob")
    try:
        channel = await alice.create_channel("over-tls", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        await anext(sub)
        receipt = await alice.send(channel.id, "hello over TLS")
        message = await sub.next_message(timeout=10)
        assert (message.offset, message.sender, message.text) == (receipt.offset, alice.did, "hello over TLS")
        await sub.close()
        # The broker knows each session's client by the TLS connection's address, not the relay's socketpair.
        log = broker.log()
        assert "session opened" in log and "peer=127.0.0.1" in log and "peer=unknown" not in log, log
    finally:
        await alice.close()
        await bob.close()


def test_large_messages_cross_the_relay_both_ways(broker: Broker, pki: PKI) -> None:
    asyncio.run(asyncio.wait_for(large_messages(broker, pki), 90))


async def large_messages(broker: Broker, pki: PKI) -> None:
    """~1.2 MB each way in 30 KB messages sent at once: more than a socketpair's buffer and many TLS records, so
    the relay's pauses (a full pair, a slow TLS side) are crossed."""
    alice = await sdk_agent(broker.url, pki.ca, "bulk-alice")
    bob = await sdk_agent(broker.url, pki.ca, "bulk-bob")
    try:
        channel = await alice.create_channel("bulk", members=[bob.did])
        sub = await bob.subscribe(channel.id)
        await anext(sub)
        payloads = [bytes([i]) * 30_000 for i in range(40)]
        receipts = await asyncio.gather(*(alice.send(channel.id, p) for p in payloads))
        received = {}
        while len(received) < len(payloads):
            message = await sub.next_message(timeout=20)
            received[message.offset] = message.plaintext
        assert sorted(received.values()) == sorted(payloads)
        assert {r.offset for r in receipts} == set(received)
        history = await bob.history(channel.id, limit=40)
        assert sorted(m.plaintext for m in history) == sorted(payloads)
        await sub.close()
    finally:
        await alice.close()
        await bob.close()


def test_a_tls_connection_outlives_the_handshake_timeout(broker: Broker, pki: PKI) -> None:
    """libwebsockets arms a 10 s timeout when a TLS handshake ends, which raw connections keep unless cleared."""
    async def scenario() -> None:
        agent = await sdk_agent(broker.url, pki.ca, "long-lived")
        try:
            connection = agent._ws
            await asyncio.sleep(11)
            channel = await agent.create_channel("still-up")
            assert channel.id and agent._ws is connection  # the same connection, not a reconnect
        finally:
            await agent.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_sdk_ca_file_from_the_environment_and_untrusted_brokers(broker: Broker, pki: PKI,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    asyncio.run(asyncio.wait_for(sdk_ca_file(broker, pki, monkeypatch), 60))


async def sdk_ca_file(broker: Broker, pki: PKI, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AgentChatError) as refused:
        await sdk_agent(broker.url, None, "no-ca")
    assert refused.value.code == "network_error"
    assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value)
    monkeypatch.setenv("AGENTCHAT_CA_FILE", pki.ca)
    carol = await sdk_agent(broker.url, None, "carol")
    await carol.close()
    with pytest.raises(AgentChatError) as missing:
        await sdk_agent(broker.url, os.path.join(pki.directory, "missing.pem"), "dave")
    assert missing.value.code == "invalid_argument"


# MARK: Reloading (SIGHUP)


def test_sighup_serves_a_new_certificate_to_new_connections_and_keeps_old_ones(pki: PKI) -> None:
    cert, key = pki.issue("reload", 2001, "first")
    work = tempfile.mkdtemp(prefix="agentchat-tls-")
    broker = Broker(work, cert, key)
    try:
        assert served_serial(broker.port, pki) == 2001

        async def scenario() -> None:
            alice = await sdk_agent(broker.url, pki.ca, "alice")
            bob = await sdk_agent(broker.url, pki.ca, "bob")
            try:
                channel = await alice.create_channel("reload", members=[bob.did])
                sub = await bob.subscribe(channel.id)
                await anext(sub)
                old_socket = bob._ws.transport.get_extra_info("ssl_object")  # type: ignore[union-attr]
                assert int(old_socket.getpeercert()["serialNumber"], 16) == 2001

                # The renewed certificate replaces the files in place (as certbot's renewal does with its links).
                new_cert, new_key = pki.issue("renewed", 2002, "second")
                shutil.copy(new_cert, cert)
                shutil.copy(new_key, key)
                broker.process.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                while served_serial(broker.port, pki) != 2002:
                    assert time.monotonic() < deadline, broker.log()
                    await asyncio.sleep(0.05)
                assert "reloaded the TLS certificate" in broker.log()

                # The connections made before the reload are still up and carry frames.
                receipt = await alice.send(channel.id, "after the reload")
                message = await sub.next_message(timeout=10)
                assert (message.offset, message.text) == (receipt.offset, "after the reload")
                assert bob._ws.transport.get_extra_info("ssl_object") is old_socket  # type: ignore[union-attr]

                # A bad new file keeps the current certificate and logs why.
                with open(cert, "w") as f:
                    f.write("not a certificate\n")
                broker.process.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                while "TLS reload failed" not in broker.log():
                    assert time.monotonic() < deadline, broker.log()
                    await asyncio.sleep(0.05)
                assert served_serial(broker.port, pki) == 2002
                os.remove(key)
                broker.process.send_signal(signal.SIGHUP)
                deadline = time.monotonic() + 20
                while "cannot read the TLS private key" not in broker.log():
                    assert time.monotonic() < deadline, broker.log()
                    await asyncio.sleep(0.05)
                assert served_serial(broker.port, pki) == 2002
                assert broker.process.poll() is None
                await sub.close()
            finally:
                await alice.close()
                await bob.close()

        asyncio.run(asyncio.wait_for(scenario(), 90))
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def test_several_processes_serve_tls_and_reload_on_sighup(pki: PKI) -> None:
    cert, key = pki.issue("workers", 3001, "workers-first")
    work = tempfile.mkdtemp(prefix="agentchat-tls-")
    broker = Broker(work, "", "", extra=["--processes", "2"],
                    env={"AGENTCHAT_TLS_CERT": cert, "AGENTCHAT_TLS_KEY": key})
    try:
        assert broker.announcement.startswith("AgentChat broker listening on https://")
        for _ in range(6):
            assert served_serial(broker.port, pki) == 3001
            connection = http.client.HTTPSConnection("127.0.0.1", broker.port, context=client_context(pki),
                                                     timeout=10)
            connection.request("GET", "/health")
            assert connection.getresponse().status == 200
            connection.close()

        async def login() -> None:
            agent = await sdk_agent(broker.url, pki.ca, "worker-agent")
            await agent.close()

        asyncio.run(login())
        new_cert, new_key = pki.issue("workers-renewed", 3002, "workers-second")
        shutil.copy(new_cert, cert)
        shutil.copy(new_key, key)
        broker.process.send_signal(signal.SIGHUP)
        # Every worker reloads: once one serves the new certificate, wait until a run of connections all do.
        deadline = time.monotonic() + 30
        streak = 0
        while streak < 10:
            assert time.monotonic() < deadline, broker.log()
            streak = streak + 1 if served_serial(broker.port, pki) == 3002 else 0
        assert broker.process.poll() is None
    finally:
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


# MARK: Startup errors


def test_startup_errors_name_the_problem(pki: PKI) -> None:
    cert, key = pki.issue("startup", 4001, "startup")
    other_cert, other_key = pki.issue("startup-other", 4002, "other")
    assert "--tls-cert needs --tls-key" in run_broker_expecting_failure(["--tls-cert", cert])
    assert "--tls-key needs --tls-cert" in run_broker_expecting_failure([], env={"AGENTCHAT_TLS_KEY": key})
    missing = os.path.join(pki.directory, "missing.pem")
    assert f"cannot read the TLS certificate {missing}" in run_broker_expecting_failure(
        ["--tls-cert", missing, "--tls-key", key])
    assert "the key does not belong to the certificate" in run_broker_expecting_failure(
        ["--tls-cert", cert, "--tls-key", other_key])
    garbage = os.path.join(pki.directory, "garbage.pem")
    with open(garbage, "w") as f:
        f.write("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert "cannot use the TLS certificate" in run_broker_expecting_failure(["--tls-cert", garbage, "--tls-key", key])
