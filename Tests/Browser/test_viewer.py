#!/usr/bin/env python3
"""Headless-browser test of the AgentChat public viewer page (Sources/Broker/Web).

Drives Debian's chromium + chromium-driver through Selenium (`apt-get install -y chromium chromium-driver`,
`pip install selenium`); nothing is downloaded at run time.

Against the fake broker (default; the test starts and restarts Tests/Browser/fake_broker.py itself):

    python3 Tests/Browser/test_viewer.py

Against a real broker, tell the test how to reach it and how to act on it (shell commands, run with `sh -c`):

    AGENTCHAT_VIEWER_URL=http://127.0.0.1:8080/      the page (the broker serves it at /)
    AGENTCHAT_SETUP_CMD='…'      creates a channel, lists it, prints its id as the last line of stdout
                                 (or AGENTCHAT_CHANNEL_ID=ch_… for a channel that is listed already)
    AGENTCHAT_ACTIVITY_CMD='…'   sends $COUNT messages to channel $CHANNEL_ID (both given in the environment)
    AGENTCHAT_STOP_CMD='…'       stops the broker (it may return at once; the test waits for the page to notice)
    AGENTCHAT_START_CMD='…'      starts it (again) and returns once it accepts connections; run first only if
                                 nothing answers at AGENTCHAT_VIEWER_URL
    AGENTCHAT_UNLIST_CMD='…'     optional: unlists $CHANNEL_ID (enables the removal test)

Other variables: AGENTCHAT_SCREENSHOT_DIR (default /tmp), CHROMIUM_BINARY (/usr/bin/chromium),
CHROMEDRIVER (/usr/bin/chromedriver), AGENTCHAT_KEEP_BROWSER_LOG=1 (print the browser log at the end).

A Python harness can also import this module and call run(target) with its own Target subclass.
Prints one line per check and `N passed, N failed, N skipped`; exits 1 when anything failed.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

from selenium.common.exceptions import ElementNotInteractableException
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
EXPECTED_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SHOTS = os.environ.get("AGENTCHAT_SCREENSHOT_DIR", "/tmp")


class Skip(Exception):
    pass


# ---------------------------------------------------------------- targets

class Target:
    """What the test needs from a broker. Subclass for other setups."""
    url = None

    def start(self):
        """Start the broker (first start and restarts) and return once it accepts connections."""

    def stop(self):
        """Stop the broker."""

    def create_listed_channel(self, title, topic):
        """Create and list a channel; return its id."""
        raise Skip("this target cannot create channels")

    def make_activity(self, channel_id, count):
        """Make `count` messages happen on the channel."""
        raise NotImplementedError

    def unlist(self, channel_id):
        raise Skip("this target cannot unlist channels")

    def can_restart(self):
        return True


class FakeBrokerTarget(Target):
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.state = tempfile.NamedTemporaryFile(prefix="agentchat-fake-", suffix=".json", delete=False).name
        os.unlink(self.state)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "fake_broker.py"), "--port", str(self.port), "--state-file",
             self.state], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port, 10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def hook(self, path, **params):
        url = f"{self.url}_fake/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=5) as r:
            return json.load(r)

    def create_listed_channel(self, title, topic):
        return self.hook("channel", title=title, topic=topic, members=3, online=2)["id"]

    def make_activity(self, channel_id, count):
        self.hook("activity", channel=channel_id, n=count)

    def unlist(self, channel_id):
        self.hook("unlist", channel=channel_id)

    def cleanup(self):
        self.stop()
        if os.path.exists(self.state):
            os.unlink(self.state)


class CommandTarget(Target):
    def __init__(self, env):
        self.env = env
        self.url = env["AGENTCHAT_VIEWER_URL"]
        if not self.url.endswith("/"):
            self.url += "/"

    def _run(self, name, extra=None, capture=False):
        cmd = self.env.get(name)
        if not cmd:
            raise Skip(f"{name} is not set")
        env = dict(os.environ, **(extra or {}))
        res = subprocess.run(["sh", "-c", cmd], env=env, capture_output=True, text=True, timeout=120)
        if res.returncode != 0:
            raise AssertionError(f"{name} exited {res.returncode}: {res.stderr.strip()[-500:]}")
        return res.stdout

    def start(self):
        # The first start only when nothing answers at the URL yet (the broker may be running already).
        if self.env.get("AGENTCHAT_START_CMD") and not reachable(self.url):
            self._run("AGENTCHAT_START_CMD")

    def stop(self):
        self._run("AGENTCHAT_STOP_CMD")

    def can_restart(self):
        return bool(self.env.get("AGENTCHAT_STOP_CMD") and self.env.get("AGENTCHAT_START_CMD"))

    def create_listed_channel(self, title, topic):
        if self.env.get("AGENTCHAT_CHANNEL_ID") and not self.env.get("AGENTCHAT_SETUP_CMD"):
            return self.env["AGENTCHAT_CHANNEL_ID"]
        out = self._run("AGENTCHAT_SETUP_CMD", {"TITLE": title, "TOPIC": topic})
        return out.strip().splitlines()[-1].strip()

    def make_activity(self, channel_id, count):
        self._run("AGENTCHAT_ACTIVITY_CMD", {"CHANNEL_ID": channel_id, "COUNT": str(count)})

    def unlist(self, channel_id):
        self._run("AGENTCHAT_UNLIST_CMD", {"CHANNEL_ID": channel_id})


def reachable(url):
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


# ---------------------------------------------------------------- browser

# Runs before any page script (injected by DevTools, so the page's CSP does not apply to it).
RECORDER = """
window.__cspViolations = [];
window.__errors = [];
document.addEventListener('securitypolicyviolation', e => window.__cspViolations.push(
  e.violatedDirective + ' ' + (e.blockedURI || '') + ' ' + (e.sourceFile || '') + ':' + (e.lineNumber || '')));
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)));
window.addEventListener('unhandledrejection', e => window.__errors.push('unhandled rejection: ' + e.reason));
"""

# WCAG contrast of every visible text run against the background actually behind it.
CONTRAST_JS = r"""
function parse(c) {
  let m = c.match(/^rgba?\(([^)]+)\)$/);
  if (m) { const p = m[1].split(/[ ,\/]+/).filter(Boolean).map(Number); return [p[0], p[1], p[2], p.length > 3 ? p[3] : 1]; }
  m = c.match(/^color\(srgb ([^)]+)\)$/);
  if (m) { const p = m[1].split(/[ \/]+/).filter(Boolean).map(Number); return [p[0]*255, p[1]*255, p[2]*255, p.length > 3 ? p[3] : 1]; }
  return null;
}
function over(top, bottom) {
  const a = top[3];
  return [top[0]*a + bottom[0]*(1-a), top[1]*a + bottom[1]*(1-a), top[2]*a + bottom[2]*(1-a), 1];
}
function background(el) {
  const layers = [];
  for (let n = el; n; n = n.parentElement) {
    const c = parse(getComputedStyle(n).backgroundColor);
    if (c && c[3] > 0) { layers.push(c); if (c[3] >= 1) break; }
  }
  let base = [255, 255, 255, 1];
  if (!layers.length || layers[layers.length - 1][3] < 1) {
    base = matchMedia('(prefers-color-scheme: dark)').matches ? [18, 18, 18, 1] : [255, 255, 255, 1];
  }
  for (let i = layers.length - 1; i >= 0; i--) base = over(layers[i], base);
  return base;
}
function lum(c) {
  const f = v => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); };
  return 0.2126 * f(c[0]) + 0.7152 * f(c[1]) + 0.0722 * f(c[2]);
}
const bad = [];
const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
let checked = 0;
while (walker.nextNode()) {
  const t = walker.currentNode;
  if (!t.textContent.trim()) continue;
  const el = t.parentElement;
  if (!el || !el.getClientRects().length || el.closest('[hidden],template,.visually-hidden')) continue;
  const cs = getComputedStyle(el);
  if (cs.visibility === 'hidden' || parseFloat(cs.opacity) === 0) continue;
  let fg = parse(cs.color);
  if (!fg) continue;
  const bg = background(el);
  if (fg[3] < 1) fg = over(fg, bg);
  const l1 = lum(fg), l2 = lum(bg);
  const ratio = (Math.max(l1, l2) + 0.05) / (Math.min(l1, l2) + 0.05);
  const size = parseFloat(cs.fontSize), weight = parseInt(cs.fontWeight, 10);
  const large = size >= 24 || (size >= 18.66 && weight >= 700);
  const need = large ? 3 : 4.5;
  checked++;
  if (ratio < need) bad.push(`${ratio.toFixed(2)} < ${need}: "${t.textContent.trim().slice(0, 40)}" (${cs.color} on ${bg.map(Math.round)})`);
}
return {checked, bad};
"""


def make_driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,800", "--hide-scrollbars", "--force-color-profile=srgb",
              "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver"))
    driver = webdriver.Chrome(service=service, options=opts)
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER})
    return driver


# ---------------------------------------------------------------- the checks

class Viewer:
    def __init__(self, target, driver):
        self.t = target
        self.d = driver
        self.log = []          # every browser log entry seen
        self.allow_ws_failures = False
        self.channel = None
        self.second = None

    # -- helpers
    def read_log(self):
        entries = self.d.get_log("browser")
        self.log.extend(entries)
        return entries

    def errors(self):
        self.read_log()
        out = []
        for e in self.log:
            if e.get("level") != "SEVERE":
                continue
            msg = e.get("message", "")
            if self.allow_ws_failures and re.search(r"WebSocket connection to '.*' failed|ERR_CONNECTION_REFUSED", msg):
                continue
            out.append(msg)
        out += [f"page error: {m}" for m in self.d.execute_script("return window.__errors || []")]
        return out

    def csp_violations(self):
        self.read_log()
        out = list(self.d.execute_script("return window.__cspViolations || []"))
        out += [e["message"] for e in self.log if "Content Security Policy" in e.get("message", "")]
        return out

    def wait(self, what, fn, timeout=10, interval=0.1):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            try:
                last = fn()
                if last:
                    return last
            except Exception as e:  # element not there yet
                last = e
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")

    def state(self):
        return self.d.find_element(By.ID, "connection").get_attribute("data-state")

    def card(self, cid):
        return self.d.find_element(By.CSS_SELECTOR, f'li[data-channel-id="{cid}"]')

    def cards(self, cid):
        return self.d.find_elements(By.CSS_SELECTOR, f'li[data-channel-id="{cid}"]')

    def value(self, cid, field):
        el = self.card(cid).find_element(By.CSS_SELECTOR, f'[data-field="{field}"]')
        return int(el.get_attribute("data-value"))

    def text(self, cid, field):
        return self.card(cid).find_element(By.CSS_SELECTOR, f'[data-field="{field}"]').text

    def set_viewport(self, width, height, dark=False, mobile=False):
        self.d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile})
        self.d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-color-scheme", "value": "dark" if dark else "light"}]})
        time.sleep(0.4)

    def shot(self, name):
        os.makedirs(SHOTS, exist_ok=True)
        path = os.path.join(SHOTS, f"agentchat-viewer-{name}.png")
        self.d.save_screenshot(path)
        return path

    def no_flash(self):
        self.wait("highlights to fade", lambda: not self.d.find_elements(By.CSS_SELECTOR, ".flash"), 5)

    # -- checks, in order
    def test_static_files_served_with_csp(self):
        with urllib.request.urlopen(self.t.url, timeout=5) as r:
            csp = r.headers.get("Content-Security-Policy")
            ctype = r.headers.get("Content-Type", "")
            body = r.read().decode()
        assert csp == EXPECTED_CSP, f"Content-Security-Policy of /: {csp!r}"
        assert ctype.startswith("text/html"), ctype
        assert "<script" in body and "app.js" in body
        for name, want in (("app.js", "javascript"), ("app.css", "text/css"), ("favicon.svg", "image/svg+xml")):
            with urllib.request.urlopen(self.t.url + name, timeout=5) as r:
                got = r.headers.get("Content-Type", "")
                assert want in got, f"/{name} served as {got!r}"

    def test_page_loads_live_without_errors(self):
        self.set_viewport(1280, 800)
        self.d.get(self.t.url)
        assert "AgentChat" in self.d.title
        self.wait("connection state live", lambda: self.state() == "live", 10)
        status = self.d.find_element(By.ID, "connection-text")
        assert status.get_attribute("aria-live") == "polite"
        assert status.text == "Live", status.text
        intro = self.d.find_element(By.CSS_SELECTOR, "main .intro").text
        assert "end-to-end encrypted" in intro and "activity" in intro
        assert len(self.d.find_elements(By.TAG_NAME, "h1")) == 1
        time.sleep(0.5)
        assert not self.csp_violations(), self.csp_violations()
        assert not self.errors(), self.errors()

    def test_listed_channel_appears_live(self):
        self.channel = self.t.create_listed_channel("Browser test channel", "checked by Tests/Browser")
        # No reload: it must arrive through the directory subscription (fake) or be there already (real).
        self.wait("the channel's card", lambda: self.cards(self.channel), 10)
        self.wait("the channel's title", lambda: self.text(self.channel, "title") == "Browser test channel"
                  if not os.environ.get("AGENTCHAT_CHANNEL_ID") else self.text(self.channel, "title"), 5)
        for f in ("members", "online", "messages", "messagesLastMinute", "peeks", "lastActivity"):
            v = self.value(self.channel, f)
            assert v >= 0, f"{f} = {v}"
        card = self.card(self.channel)
        assert card.tag_name == "li" and card.find_element(By.XPATH, "..").tag_name == "ul"

    def test_counters_change_live(self):
        before = self.value(self.channel, "messages")
        self.t.make_activity(self.channel, 5)
        self.wait("messages to grow by 5", lambda: self.value(self.channel, "messages") >= before + 5, 10)
        assert self.value(self.channel, "messagesLastMinute") >= 5
        self.wait("last activity to be recent", lambda: self.text(self.channel, "lastActivity") in
                  ("just now", "10 seconds ago", "20 seconds ago"), 5)
        assert self.card(self.channel).get_attribute("data-active") == "true"
        # Several bursts: each one shows up without a reload.
        for i in range(3):
            before = self.value(self.channel, "messages")
            self.t.make_activity(self.channel, 2)
            self.wait(f"burst {i + 1}", lambda: self.value(self.channel, "messages") >= before + 2, 10)
        shown = self.text(self.channel, "messages").replace(",", "").replace("\u202f", "").replace(".", "")
        assert shown == str(self.value(self.channel, "messages")), shown
        assert not self.errors(), self.errors()

    def test_sorted_by_activity(self):
        ids = [e.get_attribute("data-channel-id") for e in
               self.d.find_elements(By.CSS_SELECTOR, "#channels > li:not([hidden])")]
        rates = [self.value(i, "messagesLastMinute") for i in ids]
        assert rates == sorted(rates, reverse=True), rates

    def test_second_channel_appears_and_unlisting_removes_it(self):
        self.second = self.t.create_listed_channel("Second channel", "")
        if self.second == self.channel:
            raise Skip("the setup command returns the same channel every time")
        self.wait("the second card", lambda: self.cards(self.second), 10)
        self.t.unlist(self.second)
        self.wait("the second card to go", lambda: not self.cards(self.second), 10)
        assert self.cards(self.channel)

    def test_contrast_light_and_dark(self):
        problems = []
        for dark in (False, True):
            self.set_viewport(1280, 800, dark=dark)
            self.no_flash()
            res = self.d.execute_script(CONTRAST_JS)
            assert res["checked"] > 20, res
            problems += [("dark " if dark else "light ") + b for b in res["bad"]]
        self.set_viewport(1280, 800)
        assert not problems, "\n".join(problems)

    def test_reduced_motion_respected(self):
        anim = "return getComputedStyle(document.querySelector('.connection-dot')).animationName"
        assert self.d.execute_script(anim) != "none", "the live dot should pulse normally"
        self.d.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
            {"name": "prefers-reduced-motion", "value": "reduce"}]})
        try:
            time.sleep(0.2)
            assert self.d.execute_script(anim) == "none"
            before = self.value(self.channel, "messages")
            self.t.make_activity(self.channel, 1)
            self.wait("an update", lambda: self.value(self.channel, "messages") > before, 10)
            names = self.d.execute_script("return [...document.querySelectorAll('*')]"
                                          ".map(e => getComputedStyle(e).animationName).filter(n => n !== 'none')")
            assert not names, names
        finally:
            self.set_viewport(1280, 800)

    def test_screenshots_desktop_and_phone(self):
        self.t.make_activity(self.channel, 3)
        if isinstance(self.t, FakeBrokerTarget):
            # A realistic directory for the pictures: a few more channels with different activity.
            for title, topic, n in (("Market makers", "prices, hourly", 37),
                                    ("Research swarm", "literature review for protein folding papers", 9),
                                    ("Night shift", "", 0)):
                cid = self.t.create_listed_channel(title, topic)
                if n:
                    self.t.make_activity(cid, n)
            time.sleep(1.5)
        paths = []
        for dark in (False, True):
            self.set_viewport(1280, 800, dark=dark)
            paths.append(self.shot("desktop-" + ("dark" if dark else "light")))
        for dark in (False, True):
            self.set_viewport(360, 740, dark=dark, mobile=True)
            overflow = self.d.execute_script("return document.documentElement.scrollWidth")
            assert overflow <= 360, f"horizontal overflow on a 360 px screen: {overflow}"
            paths.append(self.shot("phone-" + ("dark" if dark else "light")))
        self.set_viewport(1280, 800)
        print("    screenshots: " + ", ".join(paths))

    def test_keyboard_focus_visible(self):
        from selenium.webdriver.common.keys import Keys
        from selenium.webdriver.common.action_chains import ActionChains
        self.d.get(self.t.url)  # a fresh load: Tab starts from the top of the document
        self.wait("connection state live", lambda: self.state() == "live", 10)
        self.wait("the channel's card", lambda: self.cards(self.channel), 5)
        ActionChains(self.d).send_keys(Keys.TAB).perform()
        first = self.d.switch_to.active_element
        assert first.get_attribute("class") == "skip-link", first.get_attribute("outerHTML")[:80]
        ActionChains(self.d).send_keys(Keys.TAB).perform()
        el = self.d.switch_to.active_element
        assert el.get_attribute("id") == "filter", el.get_attribute("outerHTML")[:80]
        outline = self.d.execute_script("const s = getComputedStyle(arguments[0]);"
                                        "return s.outlineStyle + ' ' + s.outlineWidth", el)
        assert outline.startswith("solid") and outline != "solid 0px", outline
        label = self.d.find_element(By.CSS_SELECTOR, 'label[for="filter"]').text
        assert label
        self.d.execute_script("arguments[0].blur()", el)

    def test_reconnects_after_restart(self):
        if not self.t.can_restart():
            raise Skip("no way to restart this broker (set AGENTCHAT_STOP_CMD and AGENTCHAT_START_CMD)")
        self.allow_ws_failures = True
        self.t.stop()
        self.wait("state reconnecting", lambda: self.state() == "reconnecting", 15)
        self.wait("a countdown", lambda: re.fullmatch(r"in \d+ s|now",
                                                       self.d.find_element(By.ID, "connection-countdown").text), 5)
        assert "Reconnecting" in self.d.find_element(By.ID, "connection-text").text
        assert self.d.find_element(By.ID, "stale-note").is_displayed()
        assert self.d.find_element(By.ID, "retry").is_displayed()
        assert self.cards(self.channel), "the cards stay while reconnecting"
        time.sleep(2.5)  # let a failed attempt or two happen, so backoff is exercised
        self.shot("desktop-reconnecting")
        for dark in (False, True):  # the warning colours must keep AA contrast too
            self.set_viewport(1280, 800, dark=dark)
            res = self.d.execute_script(CONTRAST_JS)
            assert not res["bad"], ("dark: " if dark else "light: ") + "; ".join(res["bad"])
        self.set_viewport(360, 740, mobile=True)
        width = self.d.execute_script("return document.documentElement.scrollWidth")
        assert width <= 360, f"horizontal overflow on a 360 px screen while reconnecting: {width}"
        self.shot("phone-reconnecting")
        self.set_viewport(1280, 800)
        self.t.start()
        self.wait("state live again", lambda: self.state() == "live", 40)
        assert not self.d.find_element(By.ID, "stale-note").is_displayed()
        assert self.cards(self.channel)
        before = self.value(self.channel, "messages")
        self.t.make_activity(self.channel, 4)
        self.wait("messages to grow after the restart", lambda: self.value(self.channel, "messages") >= before + 4, 10)
        assert not self.errors(), self.errors()
        assert not self.csp_violations(), self.csp_violations()

    def test_retry_now_button(self):
        if not self.t.can_restart():
            raise Skip("no way to restart this broker")
        retry = self.d.find_element(By.ID, "retry")
        # The broker takes a moment to start; on a busy machine the page's own backoff timer can fire in that moment
        # and reconnect without the button (which then hides). That is right, but tests nothing: try again.
        for _ in range(4):
            self.t.stop()
            self.wait("state reconnecting", lambda: self.state() == "reconnecting", 15)
            time.sleep(4)  # several failed attempts: the countdown grows
            self.t.start()
            self.wait("the Retry now button, or live", lambda: retry.is_displayed() or self.state() == "live", 10)
            if self.state() == "live" or not retry.is_displayed():
                continue
            t0 = time.time()
            try:
                retry.click()
            except ElementNotInteractableException:  # an attempt of the page's own began in between
                continue
            self.wait("live right after Retry now", lambda: self.state() == "live", 5)
            assert time.time() - t0 < 5
            return
        raise AssertionError("the page reconnected on its own every time before Retry now could be clicked")

    def test_empty_state(self):
        if not isinstance(self.t, FakeBrokerTarget):
            raise Skip("needs a broker whose every channel this test may unlist")
        for ch in json.load(urllib.request.urlopen(self.t.url + "_fake/state", timeout=5)):
            if ch.get("listed"):
                self.t.unlist(ch["id"])
        self.wait("the empty state", lambda: self.d.find_element(By.ID, "empty").is_displayed(), 10)
        assert not self.d.find_elements(By.CSS_SELECTOR, "#channels > li")
        self.set_viewport(360, 740, mobile=True)
        self.shot("phone-empty")
        self.set_viewport(1280, 800)
        assert not self.errors(), self.errors()


ORDER = [
    "test_static_files_served_with_csp",
    "test_page_loads_live_without_errors",
    "test_listed_channel_appears_live",
    "test_counters_change_live",
    "test_second_channel_appears_and_unlisting_removes_it",
    "test_sorted_by_activity",
    "test_keyboard_focus_visible",
    "test_contrast_light_and_dark",
    "test_reduced_motion_respected",
    "test_screenshots_desktop_and_phone",
    "test_reconnects_after_restart",
    "test_retry_now_button",
    "test_empty_state",
]


def run(target):
    passed = failed = skipped = 0
    driver = None
    viewer = None
    try:
        target.start()
        driver = make_driver()
        viewer = Viewer(target, driver)
        for name in ORDER:
            t0 = time.time()
            try:
                getattr(viewer, name)()
            except Skip as e:
                skipped += 1
                print(f"SKIPPED {name}: {e}")
                continue
            except Exception as e:
                failed += 1
                print(f"FAILED  {name} ({time.time() - t0:.1f} s): {type(e).__name__}: {e}")
                if os.environ.get("AGENTCHAT_TRACEBACK"):
                    traceback.print_exc()
                try:
                    print("    screenshot: " + viewer.shot("failure-" + name))
                except Exception:
                    pass
                continue
            passed += 1
            print(f"PASSED  {name} ({time.time() - t0:.1f} s)")
        if os.environ.get("AGENTCHAT_KEEP_BROWSER_LOG"):
            viewer.read_log()
            for e in viewer.log:
                print("    browser:", e.get("level"), e.get("message"))
    finally:
        if driver:
            driver.quit()
        if hasattr(target, "cleanup"):
            target.cleanup()
    print(f"\n{passed} passed, {failed} failed, {skipped} skipped")
    return failed == 0 and passed > 0


def main():
    for path in (os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium"),
                 os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")):
        if not shutil.which(path):
            print(f"missing {path}: apt-get install -y chromium chromium-driver", file=sys.stderr)
            return 2
    target = CommandTarget(os.environ) if os.environ.get("AGENTCHAT_VIEWER_URL") else FakeBrokerTarget()
    return 0 if run(target) else 1


if __name__ == "__main__":
    sys.exit(main())
