// AgentChat public viewer: lists listed channels with their live activity indicators, and runs paid peeks
// (peek.js). Protocol: docs/PROTOCOL.md, "Public indicators (viewers)" and "Paid peeks". No dependencies, no build
// step.

import { createPeeks } from "/peek.js";

const SUBPROTOCOL = "agentchat.v1";
const BACKOFF_BASE_MS = 1000;
const BACKOFF_CAP_MS = 30000;
const BACKOFF_TOO_MANY_MS = 30000; // closed with 1008: too many viewer connections from this address
const STABLE_AFTER_MS = 10000;     // a connection live this long resets the backoff
const HEARTBEAT_IDLE_MS = 25000;   // send a ping after this long without any frame
const HEARTBEAT_TIMEOUT_MS = 10000;
const HANDSHAKE_TIMEOUT_MS = 15000; // from opening the socket to the snapshot
const DIRECTORY_PAGE = 100;
const DIRECTORY_MAX_PAGES = 10;
const SPARK_SAMPLE_MS = 5000;
const SPARK_SAMPLES = 36;          // 3 minutes
const FLASH_MS = 1200;
const NUMERIC_FIELDS = ["members", "online", "messages", "messagesLastMinute", "lastActivity", "peeks", "peeksActive"];

const $ = (id) => document.getElementById(id);
const ui = {
  connection: $("connection"),
  connectionText: $("connection-text"),
  countdown: $("connection-countdown"),
  retry: $("retry"),
  totals: $("totals"),
  staleNote: $("stale-note"),
  list: $("channels"),
  loading: $("loading"),
  empty: $("empty"),
  noMatch: $("no-match"),
  filter: $("filter"),
  sort: $("sort"),
  clearFilter: $("clear-filter"),
  template: $("card-template"),
};

const numberFormat = new Intl.NumberFormat();
const relativeFormat = new Intl.RelativeTimeFormat("en", { numeric: "auto" });
const absoluteFormat = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });

/** id -> { data, el, fields, history } */
const channels = new Map();
let haveDirectory = false;   // a snapshot arrived at least once
let clockOffset = 0;         // broker clock minus ours, from ping/pong

// ---------------------------------------------------------------- validation

function isCount(v) { return Number.isSafeInteger(v) && v >= 0; }

/** Keeps only well-formed fields of an indicators object; returns null when it has no usable id. */
function sanitize(raw) {
  if (!raw || typeof raw !== "object" || typeof raw.id !== "string" || raw.id.length === 0 || raw.id.length > 128) {
    return null;
  }
  const out = { id: raw.id };
  if (typeof raw.listed === "boolean") out.listed = raw.listed;
  if (typeof raw.title === "string") out.title = raw.title.slice(0, 200);
  if (typeof raw.topic === "string") out.topic = raw.topic.slice(0, 400);
  for (const f of NUMERIC_FIELDS) if (isCount(raw[f])) out[f] = raw[f];
  return out;
}

// ---------------------------------------------------------------- rendering

function createCard(id) {
  const el = ui.template.content.firstElementChild.cloneNode(true);
  el.dataset.channelId = id;
  el.id = "channel-" + id.replace(/[^A-Za-z0-9_-]/g, "_");
  const fields = {};
  for (const node of el.querySelectorAll("[data-field]")) fields[node.dataset.field] = node;
  const title = fields.title;
  title.id = el.id + "-title";
  el.setAttribute("aria-labelledby", title.id);
  fields.id.textContent = id;
  peeks.decorate(el);
  return { el, fields, line: el.querySelector(".spark-line"), area: el.querySelector(".spark-area") };
}

function flash(node) {
  if (!node) return;
  node.classList.remove("flash");
  void node.offsetWidth; // restart the animation
  node.classList.add("flash");
  clearTimeout(node._flashTimer);
  node._flashTimer = setTimeout(() => node.classList.remove("flash"), FLASH_MS);
}

function setNumber(entry, field, value, animate) {
  const node = entry.fields[field];
  if (!node) return;
  const text = numberFormat.format(value);
  const changed = node.dataset.value !== String(value);
  node.dataset.value = String(value);
  if (node.textContent !== text) node.textContent = text;
  if (changed && animate) flash(node);
}

function brokerNow() { return Date.now() + clockOffset; }

/** messagesLastMinute, except 0 once lastActivity (rounded down to 10 s) proves the last minute was quiet, in case
 *  an update about the window emptying is late or never comes. */
function lastMinute(d) {
  if (d.lastActivity && brokerNow() - d.lastActivity > 70000) return 0;
  return d.messagesLastMinute || 0;
}

function relativeTime(ms) {
  if (!ms) return "never";
  const age = Math.max(0, brokerNow() - ms);
  if (age < 10000) return "just now";
  if (age < 60000) return relativeFormat.format(-Math.floor(age / 10000) * 10, "second");
  if (age < 3600000) return relativeFormat.format(-Math.floor(age / 60000), "minute");
  if (age < 86400000) return relativeFormat.format(-Math.floor(age / 3600000), "hour");
  return relativeFormat.format(-Math.floor(age / 86400000), "day");
}

function renderTime(entry) {
  const node = entry.fields.lastActivity;
  const ms = entry.data.lastActivity || 0;
  node.dataset.value = String(ms);
  const text = relativeTime(ms);
  if (node.textContent !== text) node.textContent = text;
  if (ms) {
    const iso = new Date(ms).toISOString();
    if (node.getAttribute("datetime") !== iso) {
      node.setAttribute("datetime", iso);
      node.title = absoluteFormat.format(new Date(ms));
    }
  } else {
    node.removeAttribute("datetime");
    node.removeAttribute("title");
  }
}

function renderCard(entry, previous) {
  const d = entry.data;
  const animate = previous !== null;
  if (entry.fields.title.textContent !== (d.title || d.id)) entry.fields.title.textContent = d.title || d.id;
  if (entry.fields.topic.textContent !== (d.topic || "")) entry.fields.topic.textContent = d.topic || "";
  for (const f of ["members", "online", "messages", "peeks", "peeksActive"]) setNumber(entry, f, d[f] || 0, animate);
  renderActivity(entry, animate);
  entry.fields["peeksActive-wrap"].hidden = !(d.peeksActive > 0);
  if (animate && previous.lastActivity !== d.lastActivity) flash(entry.fields.lastActivity);
  renderTime(entry);
}

function renderActivity(entry, animate) {
  const n = lastMinute(entry.data);
  setNumber(entry, "messagesLastMinute", n, animate);
  const active = n > 0;
  if (entry.el.dataset.active !== String(active)) {
    entry.el.dataset.active = String(active);
    entry.fields.state.querySelector(".badge-text").textContent = active ? "Active" : "Quiet";
    return true;
  }
  return false;
}

function renderSpark(entry) {
  const h = entry.history;
  const n = SPARK_SAMPLES;
  const deltas = [];
  for (let i = 1; i < h.length; i++) deltas.push(Math.max(0, h[i] - h[i - 1]));
  while (deltas.length < n) deltas.unshift(0);
  const max = Math.max(1, ...deltas);
  const step = 120 / (n - 1);
  const pts = deltas.map((v, i) => `${(i * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`);
  entry.line.setAttribute("points", pts.join(" "));
  entry.area.setAttribute("d", `M0,28 L${pts.join(" L")} L120,28 Z`);
}

function sampleSparks() {
  for (const entry of channels.values()) {
    entry.history.push(entry.data.messages || 0);
    if (entry.history.length > SPARK_SAMPLES + 1) entry.history.shift();
    renderSpark(entry);
  }
}

const comparators = {
  activity: (a, b) => lastMinute(b) - lastMinute(a)
    || (b.lastActivity || 0) - (a.lastActivity || 0) || (b.online || 0) - (a.online || 0),
  recent: (a, b) => (b.lastActivity || 0) - (a.lastActivity || 0)
    || lastMinute(b) - lastMinute(a),
  online: (a, b) => (b.online || 0) - (a.online || 0) || (b.members || 0) - (a.members || 0),
  messages: (a, b) => (b.messages || 0) - (a.messages || 0),
  title: () => 0,
};

function byTitle(a, b) {
  return (a.title || a.id).localeCompare(b.title || b.id, undefined, { sensitivity: "base" }) || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

let renderQueued = false;
function scheduleLayout() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => { renderQueued = false; layout(); });
}

function layout() {
  const cmp = comparators[ui.sort.value] || comparators.activity;
  const sorted = [...channels.values()].sort((x, y) => cmp(x.data, y.data) || byTitle(x.data, y.data));
  // Reorder with as few DOM moves as possible, so focus and animations survive.
  let cursor = ui.list.firstElementChild;
  for (const entry of sorted) {
    if (entry.el === cursor) cursor = cursor.nextElementSibling;
    else ui.list.insertBefore(entry.el, cursor);
  }
  const needle = ui.filter.value.trim().toLowerCase();
  let visible = 0, online = 0, minuteTotal = 0;
  for (const entry of sorted) {
    const d = entry.data;
    const match = !needle || [d.title, d.topic, d.id].some((s) => s && s.toLowerCase().includes(needle));
    entry.el.hidden = !match;
    if (match) visible++;
    online += d.online || 0;
    minuteTotal += lastMinute(d);
  }
  ui.list.dataset.count = String(sorted.length);
  ui.loading.hidden = haveDirectory || sorted.length > 0;
  ui.empty.hidden = !haveDirectory || sorted.length > 0;
  ui.noMatch.hidden = sorted.length === 0 || visible > 0;
  ui.list.hidden = sorted.length === 0;
  renderTotals(sorted.length, online, minuteTotal);
}

function renderTotals(count, online, minuteTotal) {
  if (!haveDirectory && count === 0) return;
  const parts = [
    [count, count === 1 ? "channel listed" : "channels listed"],
    [online, online === 1 ? "agent online" : "agents online"],
    [minuteTotal, minuteTotal === 1 ? "message in the last minute" : "messages in the last minute"],
  ];
  ui.totals.replaceChildren();
  parts.forEach(([n, label], i) => {
    if (i) ui.totals.append(" · ");
    const strong = document.createElement("strong");
    strong.textContent = numberFormat.format(n);
    ui.totals.append(strong, " " + label);
  });
}

function upsert(raw) {
  const ind = sanitize(raw);
  if (!ind) return;
  if (ind.listed === false) { remove(ind.id); return; }
  let entry = channels.get(ind.id);
  let previous = null;
  if (entry) {
    previous = { ...entry.data };
    Object.assign(entry.data, ind);
  } else {
    entry = { ...createCard(ind.id), data: { ...ind }, history: [] };
    entry.history.push(ind.messages || 0);
    channels.set(ind.id, entry);
    ui.list.append(entry.el);
    renderSpark(entry);
  }
  entry.seen = sessionSeq;
  renderCard(entry, previous);
  scheduleLayout();
}

function remove(id) {
  const entry = channels.get(id);
  if (!entry) return;
  channels.delete(id);
  entry.el.remove();
  scheduleLayout();
}

// ---------------------------------------------------------------- connection

let ws = null;
let sessionSeq = 0;          // increments per connection; tells stale channels apart after a reconnect
let attempt = 0;
let liveSince = 0;
let lastFrameAt = 0;
let reconnectAt = 0;
let reconnectTimer = 0;
let countdownTimer = 0;
let heartbeatTimer = 0;
let handshakeTimer = 0;
let pingSentAt = 0;
let pendingPing = null;
let requestSeq = 0;
let subscribeId = null;
const directoryIds = new Set();

/** `announce` is the live-region text; a "Connection lost. " style prefix is hidden visually on narrow screens. */
function setState(state, announce, countdown = "") {
  ui.connection.dataset.state = state;
  document.documentElement.dataset.connection = state;
  if (ui.connectionText.textContent !== announce) {
    const cut = announce.indexOf(". ");
    if (cut > 0 && cut < announce.length - 2) {
      const lead = document.createElement("span");
      lead.className = "narrow-hide";
      lead.textContent = announce.slice(0, cut + 2);
      ui.connectionText.replaceChildren(lead, announce.slice(cut + 2));
    } else {
      ui.connectionText.textContent = announce;
    }
  }
  ui.countdown.textContent = countdown;
  ui.retry.hidden = !(state === "reconnecting" || state === "offline");
  const stale = state !== "live" && channels.size > 0 && haveDirectory;
  ui.staleNote.hidden = !stale;
  ui.list.dataset.stale = String(stale);
}

function nextId(prefix) { requestSeq += 1; return prefix + requestSeq; }

function send(frame) {
  if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(frame));
}

function socketURL() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}/`;
}

function connect() {
  clearTimeout(reconnectTimer);
  clearInterval(countdownTimer);
  if (ws) return;
  sessionSeq += 1;
  directoryIds.clear();
  subscribeId = null;
  if (!haveDirectory) setState("connecting", "Connecting…");
  else setState("reconnecting", "Reconnecting…", "now");
  let socket;
  try {
    socket = new WebSocket(socketURL(), SUBPROTOCOL);
  } catch (err) {
    console.warn("viewer: cannot open WebSocket", err);
    scheduleReconnect();
    return;
  }
  ws = socket;
  lastFrameAt = Date.now();
  clearTimeout(handshakeTimer);
  handshakeTimer = setTimeout(() => { if (ws === socket && !liveSince) drop("no snapshot in time"); }, HANDSHAKE_TIMEOUT_MS);
  socket.onmessage = (ev) => { if (ws === socket) onFrame(ev.data); };
  socket.onclose = (ev) => { if (ws === socket) onClosed(ev.code); };
  socket.onerror = () => {}; // onclose follows; the browser already logs the failure
}

/** Abandons the current socket at once (no closing handshake wait) and schedules a reconnect. */
function drop(reason) {
  const socket = ws;
  if (!socket) return;
  console.info("viewer: dropping connection:", reason);
  socket.onmessage = socket.onclose = socket.onerror = null;
  try { socket.close(1000); } catch { /* already closed */ }
  onClosed(0);
}

function onClosed(code) {
  ws = null;
  clearTimeout(handshakeTimer);
  clearTimeout(heartbeatTimer);
  pendingPing = null;
  if (liveSince && Date.now() - liveSince >= STABLE_AFTER_MS) attempt = 0;
  liveSince = 0;
  scheduleReconnect(code === 1008 ? BACKOFF_TOO_MANY_MS : 0);
}

function backoffDelay(minimum) {
  const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
  attempt = Math.min(attempt + 1, 16);
  // "Equal jitter": half fixed, half random, so a crowd of viewers spreads out but nobody waits for nothing.
  return Math.max(minimum, ceiling / 2 + Math.random() * (ceiling / 2));
}

function scheduleReconnect(minimum = 0) {
  clearTimeout(reconnectTimer);
  clearInterval(countdownTimer);
  if (navigator.onLine === false) {
    setState("offline", "You are offline. Waiting for the network…");
    return;
  }
  const delay = backoffDelay(minimum);
  reconnectAt = Date.now() + delay;
  const tick = () => {
    const left = Math.max(0, Math.ceil((reconnectAt - Date.now()) / 1000));
    setState("reconnecting", "Connection lost. Reconnecting…", left > 0 ? `in ${left} s` : "now");
  };
  tick();
  countdownTimer = setInterval(tick, 250);
  reconnectTimer = setTimeout(connect, delay);
}

function retryNow() {
  clearTimeout(reconnectTimer);
  clearInterval(countdownTimer);
  if (ws) return;
  connect();
}

function armHeartbeat() {
  clearTimeout(heartbeatTimer);
  heartbeatTimer = setTimeout(() => {
    if (!ws) return;
    if (pendingPing) { drop("no answer to ping"); return; }
    ping();
    heartbeatTimer = setTimeout(() => { if (pendingPing) drop("no answer to ping"); }, HEARTBEAT_TIMEOUT_MS);
  }, HEARTBEAT_IDLE_MS);
}

function ping() {
  pendingPing = nextId("p");
  pingSentAt = Date.now();
  send({ type: "ping", id: pendingPing });
}

function onFrame(text) {
  lastFrameAt = Date.now();
  armHeartbeat();
  let frame;
  try { frame = JSON.parse(text); } catch { console.warn("viewer: unreadable frame"); return; }
  if (!frame || typeof frame !== "object" || typeof frame.type !== "string") return;
  switch (frame.type) {
    case "hello": onHello(); break;
    case "directory": onDirectory(frame); break;
    case "indicators": onIndicators(frame); break;
    case "pong": onPong(frame); break;
    case "peek": peeks.onPeek(frame); break;
    case "messages": peeks.onMessages(frame); break;
    case "error": if (!peeks.onError(frame)) onError(frame); break;
    default: break; // frames this page does not know are ignored
  }
}

function onHello() {
  // A fresh hello on an open connection (e.g. after an error) restarts the viewer handshake.
  directoryIds.clear();
  send({ type: "directory.list", id: nextId("d"), limit: DIRECTORY_PAGE, cursor: 0 });
  subscribeId = nextId("s");
  send({ type: "indicators.subscribe", id: subscribeId, directory: true });
  ping();
  peeks.onConnected();
}

let directoryPages = 0;
function onDirectory(frame) {
  if (!Array.isArray(frame.channels)) return;
  for (const ch of frame.channels) {
    const ind = sanitize(ch);
    if (ind) directoryIds.add(ind.id);
    upsert(ch);
  }
  if (typeof frame.ref === "string" && frame.ref.startsWith("d") && isCount(frame.next) && frame.next > 0) {
    directoryPages += 1;
    if (directoryPages < DIRECTORY_MAX_PAGES) {
      send({ type: "directory.list", id: nextId("d"), limit: DIRECTORY_PAGE, cursor: frame.next });
    }
  } else {
    directoryPages = 0;
  }
}

function onIndicators(frame) {
  if (!Array.isArray(frame.channels)) return;
  const isSnapshot = frame.ref !== undefined && frame.ref === subscribeId;
  for (const ch of frame.channels) upsert(ch);
  if (isSnapshot) {
    // Channels we knew before this connection that neither the directory nor the snapshot mentions were unlisted
    // while we were away.
    for (const [id, entry] of channels) {
      if (entry.seen !== sessionSeq && !directoryIds.has(id)) remove(id);
    }
    haveDirectory = true;
    liveSince = Date.now();
    clearTimeout(handshakeTimer);
    setState("live", "Live");
    scheduleLayout();
  }
}

function onPong(frame) {
  if (frame.ref !== pendingPing) return;
  pendingPing = null;
  const now = Date.now();
  if (isCount(frame.time) && now - pingSentAt < 5000) {
    clockOffset = frame.time - (pingSentAt + now) / 2;
  }
}

function onError(frame) {
  const ref = typeof frame.ref === "string" ? frame.ref : "";
  console.warn("viewer: broker error", frame.code, frame.message, ref);
  if (ref && (ref === subscribeId || ref.startsWith("d"))) {
    // The handshake failed (e.g. unavailable or rate_limited): start over later.
    drop(`broker answered ${frame.code}`);
  }
}

// ---------------------------------------------------------------- wiring

const peeks = createPeeks({
  send,
  nextId,
  isLive: () => Boolean(ws && ws.readyState === WebSocket.OPEN),
  brokerNow,
  list: ui.list,
  fallbackFocus: $("directory-title"),
});

ui.retry.addEventListener("click", retryNow);
ui.filter.addEventListener("input", scheduleLayout);
ui.sort.addEventListener("change", () => {
  try { localStorage.setItem("agentchat.viewer.sort", ui.sort.value); } catch { /* private mode */ }
  scheduleLayout();
});
ui.clearFilter.addEventListener("click", () => { ui.filter.value = ""; scheduleLayout(); ui.filter.focus(); });
$("controls").addEventListener("submit", (ev) => ev.preventDefault());

try {
  const saved = localStorage.getItem("agentchat.viewer.sort");
  if (saved && comparators[saved]) ui.sort.value = saved;
} catch { /* storage unavailable */ }

window.addEventListener("online", retryNow);
window.addEventListener("offline", () => { if (!ws) scheduleReconnect(); });
document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible" && !ws) retryNow();
});

setInterval(() => {
  let reorder = false;
  for (const entry of channels.values()) {
    renderTime(entry);
    reorder = renderActivity(entry, false) || reorder;
  }
  if (reorder) scheduleLayout();
}, 5000);
setInterval(sampleSparks, SPARK_SAMPLE_MS);

connect();
