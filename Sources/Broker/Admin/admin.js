// AgentChat admin page: polls GET /admin/api/status with the token the operator pasted (kept in memory only, sent
// only as Authorization: Bearer) and fills the tables. Read-only; no inline script (the page's CSP forbids it).

const POLL_MS = 5000;
let token = null;
let timer = null;

const $ = (id) => document.getElementById(id);

function text(id, value) {
  $(id).textContent = value;
}

function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function time(ms) {
  if (!ms) return "–";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function ago(ms, now) {
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  return `${seconds} s ago`;
}

function showError(message) {
  const error = $("error");
  error.textContent = message;
  error.hidden = false;
}

function cell(row, value) {
  const td = document.createElement("td");
  td.textContent = value;
  row.appendChild(td);
  return td;
}

function render(status) {
  const now = status.generatedAt;
  text("updated", `Updated ${time(now)}`);
  text("window", `(seen within ${status.liveWindowSeconds} s)`);
  text("brokers-count", number(status.brokers.length));
  const c = status.connections;
  text("connections-total", number(c.total));
  text("connections-kinds", `${number(c.agent)} agents · ${number(c.viewer)} viewers · ${number(c.unauthenticated)} unauthenticated`);
  text("channels-listed", number(status.channels.listed));
  text("channels-subscribed", `${number(status.channels.subscribed)} with subscribers (summed over brokers)`);
  text("rate-messages", number(status.rates.messagesStored, 1));
  text("rate-deliveries", `${number(status.rates.deliveries, 1)} deliveries/s · ${number(status.rates.framesReceived, 1)} frames in/s`);
  const redis = status.redis;
  text("redis-up", redis.up ? "up" : "DOWN");
  $("redis-up").dataset.state = redis.up ? "ok" : "bad";
  text("redis-detail", `${redis.latencyMilliseconds === null ? "–" : number(redis.latencyMilliseconds, 2)} ms · ${number(redis.reconnects)} reconnects`);

  const body = $("brokers");
  body.replaceChildren();
  for (const b of status.brokers) {
    const row = document.createElement("tr");
    row.dataset.broker = b.id;
    cell(row, b.address);
    cell(row, b.process === null ? "–" : String(b.process));
    cell(row, String(b.pid));
    cell(row, b.version);
    cell(row, time(b.startedAt));
    cell(row, ago(b.seenAt, now));
    cell(row, number(b.connections.agent));
    cell(row, number(b.connections.viewer));
    cell(row, number(b.connections.unauthenticated));
    cell(row, number(b.rates.messagesStored, 1));
    cell(row, number(b.rates.framesReceived, 1));
    cell(row, number(b.rates.framesSent, 1));
    cell(row, b.redisUp ? "up" : "down").dataset.state = b.redisUp ? "ok" : "bad";
    body.appendChild(row);
  }

  const facts = $("redis");
  facts.replaceChildren();
  const rows = [
    ["Up (this broker's connection)", redis.up ? "yes" : "no"],
    ["Last PING round trip", redis.latencyMilliseconds === null ? "–" : `${number(redis.latencyMilliseconds, 3)} ms`],
    ["Reconnects (this broker)", number(redis.reconnects)],
    ["Memory used", redis.usedMemoryHuman ?? "–"],
    ["Max memory", redis.maxMemoryBytes ? `${number(redis.maxMemoryBytes)} bytes` : "no limit"],
    ["Clients", number(redis.connectedClients)],
    ["Version", redis.version ?? "–"],
    ["Role", redis.role ?? "–"],
    ["Uptime", redis.uptimeSeconds === null ? "–" : `${number(redis.uptimeSeconds)} s`],
  ];
  for (const [name, value] of rows) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    facts.append(dt, dd);
  }

  const log = $("errors");
  log.replaceChildren();
  for (const line of status.recentErrors.slice().reverse()) {
    const li = document.createElement("li");
    li.dataset.level = line.level;
    li.textContent = `${time(line.time)} ${line.level} ${line.logger}: ${line.message}`;
    log.appendChild(li);
  }
  $("errors-empty").hidden = status.recentErrors.length > 0;
}

async function poll() {
  let response;
  try {
    response = await fetch("/admin/api/status", {
      headers: { Authorization: `Bearer ${token}` },
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
  } catch (error) {
    showError(`The broker did not answer: ${error.message}`);
    return;
  }
  if (response.status === 401) {
    token = null;
    clearInterval(timer);
    timer = null;
    $("status").hidden = true;
    $("login").hidden = false;
    showError("Wrong token: the broker refused it (401 unauthorized).");
    return;
  }
  if (!response.ok) {
    showError(`The broker answered ${response.status}.`);
    return;
  }
  const status = await response.json();
  $("error").hidden = true;
  $("login").hidden = true;
  $("status").hidden = false;
  render(status);
}

$("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const input = $("token");
  token = input.value.trim();
  input.value = "";
  if (!token) return;
  clearInterval(timer);
  poll();
  timer = setInterval(poll, POLL_MS);
});
