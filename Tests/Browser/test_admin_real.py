#!/usr/bin/env python3
"""The read-only admin page (/admin) in headless Chromium against real brokers: a real redis-server, two
agentchat-broker processes on it with --admin-token, a logged-in agent (peek_agents.Agent: PyPI websockets,
cryptography, PyNaCl) that lists a channel, and one raw WebSocket that stays unauthenticated.

Checks: the page is never indexed (meta robots, X-Robots-Tag) and loads under its CSP without a violation; a wrong
token shows an error and no data; the right token fills in both brokers, connections by kind and the listed
channel; the token appears in no URL and in no browser storage. Takes a screenshot (AGENTCHAT_SCREENSHOT_DIR,
default /tmp).

  python3 Tests/Browser/test_admin_real.py [BIN_DIR]     # BIN_DIR: where swift build put the binaries
"""
import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

TOKEN = "admin-page-test-token-7f3a9c2e"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout=15):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def start_broker(bin_dir, redis_port, work, name):
    process = subprocess.Popen(
        [os.path.join(bin_dir, "agentchat-broker"), "--host", "127.0.0.1", "--port", "0",
         "--redis-url", f"redis://127.0.0.1:{redis_port}", "--data-dir", os.path.join(work, name),
         "--log-level", "warning", "--issuer", "agentchat-admin-test", "--admin-token", TOKEN],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        line = process.stdout.readline()
        if "listening on " in line:
            url = line.split("listening on ")[1].strip()
            while time.time() < deadline:
                try:
                    with urllib.request.urlopen(url + "/health", timeout=5) as r:
                        if r.status == 200:
                            return process, url
                except OSError:
                    time.sleep(0.1)
        if process.poll() is not None:
            break
    raise RuntimeError(f"broker {name} did not start")


def raw_websocket(port):
    """An unauthenticated WebSocket: the upgrade, then the broker's hello; kept open."""
    sock = socket.create_connection(("127.0.0.1", port), 5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Sec-WebSocket-Protocol: agentchat.v1\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101"), head[:80]
    return sock


def make_driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,900", "--force-color-profile=srgb", "--disable-extensions", "--no-first-run",
              "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    return webdriver.Chrome(service=service, options=opts)


def text(driver, element_id):
    return driver.find_element(By.ID, element_id).text


def submit_token(driver, token):
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "connect").click()


def check(bin_dir):
    work = tempfile.mkdtemp(prefix="agentchat-admin-")
    redis_port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", work],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    brokers, agent, stranger, driver = [], None, None, None
    try:
        wait_for_port(redis_port)
        brokers = [start_broker(bin_dir, redis_port, work, name) for name in ("first", "second")]
        first_url, second_url = brokers[0][1], brokers[1][1]
        from peek_agents import Agent
        agent = Agent(first_url, "admin-alice")
        channel = agent.create_channel("Admin room")["id"]
        agent.publish_keys(channel)
        agent.list_channel(channel, "Admin room", "seen by the admin page test")
        stranger = raw_websocket(int(second_url.rsplit(":", 1)[1]))

        # The HTTP side: never indexed.
        with urllib.request.urlopen(first_url + "/admin", timeout=10) as r:
            assert r.headers["X-Robots-Tag"] == "noindex, nofollow", r.headers
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]

        driver = make_driver()
        driver.get(first_url + "/admin")
        robots = driver.find_element(By.CSS_SELECTOR, 'meta[name="robots"]').get_attribute("content")
        assert robots == "noindex, nofollow", robots
        assert driver.find_element(By.ID, "status").get_attribute("hidden") is not None

        # A wrong token: an error, no data.
        submit_token(driver, TOKEN[:-1] + "x")
        WebDriverWait(driver, 15).until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "Wrong token" in text(driver, "error"), text(driver, "error")
        assert not driver.find_element(By.ID, "status").is_displayed()
        print("PASSED  wrong token shows an error")

        # The right one: both brokers, connections by kind, the listed channel.
        submit_token(driver, TOKEN)
        WebDriverWait(driver, 20).until(lambda d: d.find_element(By.ID, "status").is_displayed()
                                        and text(d, "brokers-count") == "2")
        assert not driver.find_element(By.ID, "error").is_displayed()
        rows = driver.find_elements(By.CSS_SELECTOR, "#brokers tr")
        addresses = sorted(row.find_elements(By.TAG_NAME, "td")[0].text for row in rows)
        expected = sorted(url.split("//", 1)[1] for url in (first_url, second_url))
        assert addresses == expected, (addresses, expected)
        WebDriverWait(driver, 20).until(lambda d: text(d, "connections-total") == "2")
        kinds = text(driver, "connections-kinds")
        assert kinds == "1 agents · 0 viewers · 1 unauthenticated", kinds
        assert text(driver, "channels-listed") == "1", text(driver, "channels-listed")
        assert text(driver, "redis-up") == "up", text(driver, "redis-up")
        facts = text(driver, "redis")
        assert "Memory used" in facts and "7." in facts, facts
        print("PASSED  the right token shows brokers, connections, channels and Redis")

        # The token is in no URL and in no storage; the page broke no CSP rule.
        assert TOKEN not in driver.current_url
        stored = driver.execute_script("return JSON.stringify(localStorage) + JSON.stringify(sessionStorage)"
                                       " + document.cookie")
        assert TOKEN not in stored, stored
        assert driver.find_element(By.ID, "token").get_attribute("value") == ""
        problems = [e["message"] for e in driver.get_log("browser")
                    if "Content Security Policy" in e["message"] or e["level"] == "SEVERE"
                    and "favicon" not in e["message"] and "401" not in e["message"]]
        assert not problems, problems
        print("PASSED  no token in URLs or storage, no CSP violation")

        shot = os.path.join(os.environ.get("AGENTCHAT_SCREENSHOT_DIR", "/tmp"), "agentchat-admin.png")
        driver.save_screenshot(shot)
        print("    screenshot: " + shot)
        return True
    finally:
        if driver:
            driver.quit()
        if stranger:
            stranger.close()
        if agent:
            agent.close()
        for process, _ in brokers:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        redis.terminate()
        redis.wait(10)
        shutil.rmtree(work, ignore_errors=True)


def main():
    bin_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.getcwd(), ".build", "debug")
    for path in (os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"),
                 os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")):
        if not shutil.which(path):
            print(f"missing {path}: apt-get install -y chromium chromium-driver", file=sys.stderr)
            return 2
    try:
        check(bin_dir)
    except Exception as error:  # one failure ends the run: report it plainly
        print(f"FAILED  {type(error).__name__}: {error}")
        return 1
    print("\nadmin page: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
