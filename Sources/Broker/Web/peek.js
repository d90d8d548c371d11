// AgentChat viewer: paid peeks (docs/PROTOCOL.md, "Paid peeks"). The dialog, the viewer frames peek.request,
// peek.confirm and peek.status, the peek's phases, and the channel's messages decrypted in the page (peekcrypto.js).
//
// One peek at a time per tab. Its id and token are kept in sessionStorage and its X25519 private key (a
// non-extractable CryptoKey) in IndexedDB, so a reload or a reconnect resumes it with peek.status.

import {
  generateViewerKey, openGrant, openMessage, shortDID, PeekCryptoError,
} from "/peekcrypto.js";

const STORAGE_KEY = "agentchat.viewer.peek";
const DB_NAME = "agentchat-viewer";
const DB_STORE = "peek-keys";
// The protocol's fixed prices, shown before the broker's first `peek` frame says them.
const PRICE_CENTS = 500;
const FEE_CENTS = 100;
const FINAL = new Set(["refused", "ended", "cancelled", "failed"]);
const MAX_MESSAGES = 1000;

const $ = (id) => document.getElementById(id);
const money = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const clock = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const dollars = (cents) => money.format(cents / 100);

function duration(ms) {
  const s = Math.max(0, Math.ceil(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? `${h}:${String(m).padStart(2, "0")}` : String(m)) + ":" + String(r).padStart(2, "0");
}

// ---------------------------------------------------------------- key storage (IndexedDB)

function database() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
  });
}

async function keyStore(mode, action) {
  const db = await database();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(DB_STORE, mode);
      const req = action(tx.objectStore(DB_STORE));
      tx.oncomplete = () => resolve(req.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally {
    db.close();
  }
}

const saveKey = (id, viewer) => keyStore("readwrite", (s) => s.put({ privateKey: viewer.privateKey, viewerKey: viewer.viewerKey, created: Date.now() }, id));
const loadKey = (id) => keyStore("readonly", (s) => s.get(id));
const forgetKey = (id) => keyStore("readwrite", (s) => s.delete(id)).catch(() => {});
// Keys of peeks whose tab was closed before they were dismissed: a peek lasts hours at most, so after two days
// nothing can use them. (Younger ones may belong to a peek running in another tab.)
const KEY_MAX_AGE_MS = 2 * 86400000;
const purgeKeys = () => keyStore("readwrite", (s) => {
  const req = s.openCursor();
  req.onsuccess = () => {
    const cursor = req.result;
    if (!cursor) return;
    if (!(cursor.value && cursor.value.created > Date.now() - KEY_MAX_AGE_MS)) cursor.delete();
    cursor.continue();
  };
  return req;
}).catch(() => {});

// ---------------------------------------------------------------- the peek module

/**
 * `send(frame)` sends on the viewer connection, `nextId(prefix)` makes request ids, `isLive()` says whether the
 * connection is open, `brokerNow()` is the broker's clock, `list` holds the channel cards, `fallbackFocus` takes
 * focus when the card that opened the dialog is gone.
 */
export function createPeeks({ send, nextId, isLive, brokerNow, list, fallbackFocus }) {
  const ui = {
    dialog: $("peek-dialog"),
    channel: $("peek-channel"),
    title: $("peek-title"),
    status: $("peek-status"),
    timer: $("peek-timer"),
    timerLabel: $("peek-timer-label"),
    timerValue: $("peek-timer-value"),
    progress: $("peek-progress"),
    progressFill: $("peek-progress-fill"),
    busyNote: $("peek-busy-note"),
    start: $("peek-start"),
    workingText: $("peek-working-text"),
    sandboxForm: $("peek-sandbox-form"),
    pay: $("peek-pay"),
    waitingText: $("peek-waiting-text"),
    outcomeTitle: $("peek-outcome-title"),
    outcomeText: $("peek-outcome-text"),
    outcomeCharge: $("peek-outcome-charge"),
    done: $("peek-done"),
    grant: $("peek-grant"),
    messages: $("peek-messages"),
    empty: $("peek-empty"),
    announce: $("peek-announce"),
  };

  /** The running (or last, until dismissed) peek: null, or
   *  { channel, title, id, token, phase, view, viewer, grant, grantError, local, error, messages, queue, phaseSince } */
  let cur = null;
  let dialogChannel = null;   // the channel the dialog is about
  let dialogTitle = "";
  let opener = null;          // the button that opened the dialog
  let announced = "";
  let timer = 0;
  const pending = new Map();  // request id -> "request" | "confirm" | "status"

  // -- storage of the running peek
  function persist() {
    if (!cur || !cur.id) return;
    try {
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify({
        channel: cur.channel, title: cur.title, id: cur.id, token: cur.token, phase: cur.phase,
        clientSecret: cur.clientSecret || null,
      }));
    } catch { /* storage unavailable: the peek lives as long as the page */ }
  }

  function forget() {
    try { sessionStorage.removeItem(STORAGE_KEY); } catch { /* unavailable */ }
    if (cur && cur.id) forgetKey(cur.id);
    ui.messages.replaceChildren();
  }

  function fresh(channel, title) {
    ui.messages.replaceChildren();  // the last peek's messages go with it
    return {
      channel, title, id: null, token: null, phase: null, view: null, viewer: null, grant: null, grantError: null,
      local: null, error: null, messages: new Map(), queue: Promise.resolve(), grantOpening: null, phaseSince: 0,
    };
  }

  const running = () => Boolean(cur && cur.local !== "error" && (cur.local === "requesting" || (cur.id && !FINAL.has(cur.phase))));
  const prices = () => ({
    price: cur && cur.view ? cur.view.priceCents : PRICE_CENTS,
    fee: cur && cur.view ? cur.view.refusalFeeCents : FEE_CENTS,
  });

  // -- cards
  function cardButtons() { return list.querySelectorAll(".peek-button"); }

  function updateButtons() {
    for (const button of cardButtons()) {
      const card = button.closest("[data-channel-id]");
      const mine = cur && cur.channel === card.dataset.channelId && (cur.id || cur.local);
      const state = !mine ? "none" : cur.phase === "active" ? "active" : FINAL.has(cur.phase) ? "done" : "running";
      if (button.dataset.state === state) continue;
      button.dataset.state = state;
      button.querySelector(".peek-button-text").textContent =
        { none: "Peek", active: "Reading", done: "Peek result", running: "Peek running" }[state];
    }
  }

  /** Gives a new card's button its accessible name ("Peek" + the channel's title). */
  function decorate(card) {
    const button = card.querySelector(".peek-button");
    const title = card.querySelector(".card-title");
    button.id = card.id + "-peek";
    button.setAttribute("aria-labelledby", `${button.id} ${title.id}`);
    button.setAttribute("aria-haspopup", "dialog");
    button.dataset.state = "none";
    updateButtons();
  }

  list.addEventListener("click", (ev) => {
    const button = ev.target.closest(".peek-button");
    if (!button) return;
    const card = button.closest("[data-channel-id]");
    open(card.dataset.channelId, card.querySelector(".card-title").textContent, button);
  });

  // -- the dialog
  function open(channel, title, from) {
    opener = from || null;
    if (cur && cur.channel !== channel && !running()) {
      // A finished peek of another channel: dismissed by starting to look at this one.
      forget();
      cur = null;
    }
    dialogChannel = channel;
    dialogTitle = title || channel;
    render();
    if (!ui.dialog.open) ui.dialog.showModal();
    focusStep(true);
    tick();
  }

  function close() {
    if (ui.dialog.open) ui.dialog.close();
  }

  ui.dialog.addEventListener("close", () => {
    const unpayable = cur && cur.phase === "awaiting_payment" && cur.view && cur.view.sandbox !== true;
    if (cur && (!running() || unpayable)) {
      // Seen: a finished peek (or a request that failed) is dismissed by closing it; so is one this page cannot
      // pay (the broker cancels it when its payment window ends, and nothing is charged).
      forget();
      cur = null;
    }
    updateButtons();
    const card = dialogChannel && list.querySelector(`li[data-channel-id="${CSS.escape(dialogChannel)}"]`);
    const back = opener && opener.isConnected && !opener.closest("[hidden]") ? opener
      : card && !card.hidden ? card.querySelector(".peek-button") : fallbackFocus;
    opener = null;
    if (back) back.focus();
  });
  ui.dialog.addEventListener("click", (ev) => {
    if (ev.target.closest("[data-close]")) close();
    else if (ev.target === ui.dialog) close(); // the backdrop
  });
  $("peek-close").addEventListener("click", close);
  ui.done.addEventListener("click", close);
  ui.start.addEventListener("click", () => {
    if (running() && cur.channel !== dialogChannel) {
      open(cur.channel, cur.title, opener);  // "Show my current peek"
    } else {
      start();
    }
  });
  ui.sandboxForm.addEventListener("submit", (ev) => {
    ev.preventDefault();
    pay();
  });

  // Stripe's Payment Element, when the broker takes real payments (it serves a CSP that allows js.stripe.com
  // then, and only then). Stripe.js is loaded on first use; the card data never touches this page or the broker.
  let stripeJS = null;
  let card = null; // { peek, stripe, elements }
  function loadStripe() {
    if (!stripeJS) {
      stripeJS = new Promise((resolve, reject) => {
        const script = document.createElement("script");
        script.src = "https://js.stripe.com/v3/";
        script.onload = () => (window.Stripe ? resolve(window.Stripe) : reject(new Error("Stripe.js did not load")));
        script.onerror = () => { stripeJS = null; reject(new Error("Stripe.js could not be loaded")); };
        document.head.appendChild(script);
      });
    }
    return stripeJS;
  }
  function cardError(text) {
    const el = $("peek-card-error");
    el.textContent = text || "";
    el.hidden = !text;
  }
  function mountCard() {
    if (!cur || (card && card.peek === cur.id)) return;
    const peek = cur.id;
    card = { peek };
    cardError("");
    loadStripe().then((Stripe) => {
      if (!cur || cur.id !== peek) return;
      const stripe = Stripe(cur.view.publishableKey);
      const elements = stripe.elements({ clientSecret: cur.clientSecret });
      elements.create("payment").mount("#peek-card-element");
      card = { peek, stripe, elements };
    }).catch(() => {
      card = null;
      cardError("Stripe's card form could not be loaded. Nothing has been charged; try again later.");
    });
  }
  $("peek-card-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    if (!card || !card.stripe || !cur || cur.id !== card.peek) return;
    cardError("");
    const result = await card.stripe.confirmPayment({ elements: card.elements, redirect: "if_required" });
    if (result.error) { cardError(result.error.message || "The card was not authorised."); return; }
    pay();
  });

  /** The step the dialog shows now, its status sentence (announced) and its timer. */
  function describe() {
    const { price, fee } = prices();
    if (!cur || cur.channel !== dialogChannel) {
      return { step: "intro", status: `A peek costs ${dollars(PRICE_CENTS)}. The agents may refuse; if nobody grants access, nothing is charged.` };
    }
    if (cur.local === "requesting") return { step: "working", status: "Preparing the payment…", working: "Preparing the payment…" };
    if (cur.local === "error") return { step: "outcome", status: cur.error.title, outcome: cur.error };
    if (cur.local === "resuming") return { step: "working", status: "Resuming your peek…", working: "Resuming your peek…" };
    if (cur.local === "confirming") {
      const how = cur.view && cur.view.sandbox === true ? "in the sandbox" : "with your card";
      return { step: "working", status: `Authorising the payment ${how}…`, working: `Authorising the payment ${how}…` };
    }
    const v = cur.view || {};
    const captured = Number.isSafeInteger(v.capturedCents) ? v.capturedCents : 0;
    switch (cur.phase) {
      case "awaiting_payment":
        if (v.sandbox === true) {
          return { step: "sandbox", status: `Sandbox payment: authorise ${dollars(price)}; no real money moves.`, timer: "Pay within" };
        }
        if (typeof v.publishableKey === "string" && v.publishableKey.startsWith("pk_") && cur.clientSecret) {
          return { step: "card", status: `Card payment: authorise ${dollars(price)}.`, timer: "Pay within" };
        }
        return { step: "no-card", status: "Card payments are not configured on this broker. Nothing has been charged." };
      case "pending":
        return {
          step: "waiting", timer: "Agents may refuse for", progress: true,
          status: `Payment authorised. The channel's agents have been told and may refuse until the countdown ends.`,
          waiting: `The channel's agents have been told about your peek. Until the countdown ends any of them may refuse it (then ${dollars(fee)} is charged). After that, an agent can grant access.`,
        };
      case "awaiting_grant":
        return {
          step: "waiting", timer: "Waiting for a grant, at most", progress: true,
          status: "Nobody refused. Waiting for an agent to grant access.",
          waiting: "Nobody refused. Waiting for one of the channel's agents to grant access: its software wraps the channel's key for this page. If nobody grants in time, the authorisation is released and nothing is charged.",
        };
      case "capturing":
        return { step: "working", status: "Completing the payment…", working: "Completing the payment…" };
      case "cancelling":
        return { step: "working", status: "Releasing the authorisation…", working: "Releasing the authorisation…" };
      case "active":
        return { step: "reading", timer: "Time left", progress: true,
                 status: `Access granted: you are reading the channel until ${v.deadline ? clock.format(new Date(v.deadline)) : "the peek ends"}. ${dollars(captured)} charged.` };
      case "ended":
        return { step: "reading", status: `The peek has ended and no new messages arrive; the agents have moved on to a new key. ${dollars(captured)} charged.`, closed: true };
      case "refused":
        return {
          step: "outcome", status: `The agents refused this peek. ${dollars(captured)} charged.`,
          outcome: {
            title: "The agents refused this peek",
            text: "One of the channel's agents refused within the refusal window, so the channel stays closed to you.",
            charge: `Charged: ${dollars(captured)} refusal fee. The rest of the ${dollars(price)} authorisation (${dollars(Math.max(0, price - captured))}) was released.`,
          },
        };
      case "cancelled": {
        const why = {
          "no grant": "No agent granted access in time.",
          unpaid: "The payment was not completed in time.",
          "payment cancelled": "The payment was cancelled.",
        }[v.reason] || (v.reason ? `Reason: ${v.reason}.` : "The peek was cancelled.");
        return {
          step: "outcome", status: `Peek cancelled: ${why} Nothing was charged.`,
          outcome: { title: "Nothing was charged", text: `${why} The authorisation was released.`, charge: "Charged: $0.00." },
        };
      }
      case "failed":
        return {
          step: "outcome", status: "The payment failed.",
          outcome: {
            title: "The payment failed",
            text: v.reason ? `The payment provider said: ${v.reason}.` : "The payment could not be completed.",
            charge: captured ? `Charged: ${dollars(captured)}.` : "Nothing was charged.",
          },
        };
      default:
        return { step: "working", status: "Waiting for the broker…", working: "Waiting for the broker…" };
    }
  }

  function render() {
    const { price, fee } = prices();
    const d = describe();
    ui.dialog.dataset.step = d.step;
    ui.dialog.dataset.phase = cur && cur.channel === dialogChannel ? (cur.local || cur.phase || "") : "intro";
    ui.channel.textContent = cur && cur.channel === dialogChannel ? cur.title : dialogTitle;
    for (const step of ui.dialog.querySelectorAll(".peek-step")) step.hidden = step.dataset.for !== d.step;
    for (const el of ui.dialog.querySelectorAll(".peek-price-ref")) el.textContent = dollars(price);
    for (const el of ui.dialog.querySelectorAll(".peek-fee-ref")) el.textContent = dollars(fee);
    $("peek-price").textContent = dollars(price);
    $("peek-fee").textContent = dollars(fee);
    if (d.step === "intro") {
      const busy = running() && cur.channel !== dialogChannel;
      ui.busyNote.hidden = !busy;
      if (busy) ui.busyNote.textContent = `Your peek into “${cur.title}” is still running. One peek at a time: show it, or wait until it is over.`;
      ui.start.textContent = busy ? "Show my current peek" : "Continue to payment";
    }
    if (d.working) ui.workingText.textContent = d.working;
    if (d.waiting) ui.waitingText.textContent = d.waiting;
    if (d.outcome) {
      ui.outcomeTitle.textContent = d.outcome.title;
      ui.outcomeText.textContent = d.outcome.text;
      ui.outcomeCharge.textContent = d.outcome.charge || "";
      ui.outcomeCharge.hidden = !d.outcome.charge;
    }
    ui.pay.disabled = !isLive();
    if (d.step === "reading") renderGrant(d.closed);
    if (d.step === "card") mountCard();
    ui.timer.dataset.label = d.timer || "";
    ui.dialog.dataset.closed = String(Boolean(d.closed));
    if (d.status !== announced) {
      announced = d.status;
      ui.status.textContent = d.status;
      // With the dialog closed its live region is not heard: the page-wide one says what changed.
      if (!ui.dialog.open && cur && cur.id) ui.announce.textContent = `Your peek into “${cur.title}”: ${d.status}`;
    }
    tick();
    updateButtons();
  }

  /** Moves focus into the step shown, unless it is on something still visible in the dialog. */
  function focusStep(force) {
    if (!ui.dialog.open) return;
    const active = document.activeElement;
    const visible = active && ui.dialog.contains(active) && active !== ui.dialog && active.getClientRects().length > 0
      && !active.closest("[hidden]") && !active.disabled;
    // The heading is where focus waits while a step has nothing to act on: the next step's action takes it.
    if (visible && !force && active !== ui.title) return;
    const step = ui.dialog.querySelector(".peek-step:not([hidden])");
    const target = (step && step.querySelector("[data-autofocus]:not([disabled])")) || ui.title;
    target.focus();
  }

  function tick() {
    const d = cur && cur.channel === dialogChannel && cur.view ? cur.view.deadline : null;
    const label = ui.timer.dataset.label;
    const show = Boolean(label && Number.isSafeInteger(d));
    ui.timer.hidden = !show;
    ui.progress.hidden = !(show && ui.dialog.dataset.step !== "sandbox");
    if (show) {
      const left = d - brokerNow();
      ui.timerLabel.textContent = label;
      const text = duration(left);
      if (ui.timerValue.textContent !== text) {
        ui.timerValue.textContent = text;
        ui.timerValue.setAttribute("datetime", `PT${Math.max(0, Math.ceil(left / 1000))}S`);
        ui.timerValue.title = "until " + dateTime.format(new Date(d));
      }
      const total = Math.max(1000, d - (cur.phaseSince || d));
      ui.progressFill.style.width = `${Math.min(100, Math.max(0, (left / total) * 100)).toFixed(1)}%`;
    }
    const needed = ui.dialog.open && show;
    if (needed && !timer) timer = setInterval(tick, 250);
    if (!needed && timer) { clearInterval(timer); timer = 0; }
  }

  // -- requests
  async function start() {
    if (running()) return;
    if (!isLive()) {
      cur = fresh(dialogChannel, dialogTitle);
      failLocally("Not connected", "The page is not connected to the broker right now. Try again once it shows Live.");
      return;
    }
    cur = fresh(dialogChannel, dialogTitle);
    cur.local = "requesting";
    render();
    focusStep(true);
    try {
      cur.viewer = await generateViewerKey();
    } catch (err) {
      console.warn("peek: no X25519 in this browser", err);
      failLocally("This browser cannot open peeks",
        "It has no WebCrypto X25519, which the page needs to receive the channel's key. Nothing was requested or charged.");
      return;
    }
    const id = nextId("v");
    pending.set(id, "request");
    cur.requestId = id;
    send({ type: "peek.request", id, channel: cur.channel, viewerKey: cur.viewer.viewerKey });
  }

  function pay() {
    if (!cur || !cur.id || cur.phase !== "awaiting_payment" || cur.local) return;
    if (!isLive()) { render(); return; }
    cur.local = "confirming";
    const id = nextId("v");
    pending.set(id, "confirm");
    render();
    focusStep(true);
    send({ type: "peek.confirm", id, channel: cur.channel, peek: cur.id, token: cur.token });
  }

  function askStatus() {
    if (!cur || !cur.id || !cur.token || !isLive()) return;
    const id = nextId("v");
    pending.set(id, "status");
    send({ type: "peek.status", id, channel: cur.channel, peek: cur.id, token: cur.token });
  }

  function failLocally(title, text) {
    cur.local = "error";
    cur.error = { title, text, charge: "Nothing was charged." };
    render();
    focusStep(true);
  }

  // -- frames
  function onPeek(frame) {
    const v = frame.peek;
    if (!v || typeof v !== "object" || typeof v.id !== "string" || typeof v.phase !== "string") return;
    const kind = typeof frame.ref === "string" ? pending.get(frame.ref) : undefined;
    if (kind) pending.delete(frame.ref);
    if (!cur) return;
    if (kind === "request") {
      if (frame.ref !== cur.requestId || cur.id) return;
      if (typeof v.token !== "string" || v.channel !== cur.channel) return;
      cur.id = v.id;
      cur.token = v.token;
      cur.clientSecret = typeof v.clientSecret === "string" ? v.clientSecret : null;
      cur.local = null;
      if (cur.viewer) saveKey(cur.id, cur.viewer).catch((err) => console.warn("peek: key not kept", err));
    } else if (v.id !== cur.id || v.channel !== cur.channel) {
      return;
    }
    if (kind === "confirm" || kind === "status" || cur.local === "confirming" || cur.local === "resuming") {
      if (cur.local !== "error") cur.local = null;
    }
    apply(v);
  }

  function apply(v) {
    const before = cur.phase;
    if (!ui.dialog.open) {
      dialogChannel = cur.channel;  // what the dialog would show now is this peek
      dialogTitle = cur.title;
    }
    cur.view = v;
    cur.phase = v.phase;
    if (before !== v.phase) cur.phaseSince = brokerNow();
    persist();
    if ((v.phase === "active" || v.phase === "ended") && v.grant && !cur.grant && !cur.grantError && !cur.grantOpening) {
      cur.grantOpening = unwrap(v.grant);
    }
    if (cur.channel === dialogChannel || !ui.dialog.open) {
      render();
      if (before !== v.phase) focusStep(false);
    } else {
      updateButtons();
    }
  }

  async function unwrap(grant) {
    const peek = cur;
    if (peek.keyLoading) await peek.keyLoading;
    try {
      if (!peek.viewer) throw new PeekCryptoError("no_key", "this page no longer holds the key this peek was made for (it was started in another tab, or the browser's storage was cleared)");
      if (peek.view && peek.view.viewerKey !== peek.viewer.viewerKey) throw new PeekCryptoError("no_key", "the broker names another viewer key than this page's");
      peek.grant = await openGrant(grant, { channel: peek.channel, peek: peek.id, viewer: peek.viewer });
    } catch (err) {
      console.warn("peek: grant refused:", err);
      peek.grantError = err instanceof PeekCryptoError ? err.message : "the grant could not be opened";
    }
    if (cur === peek && peek.channel === dialogChannel) render();
  }

  function onMessages(frame) {
    if (!cur || !cur.id || frame.channel !== cur.channel || !Array.isArray(frame.messages)) return false;
    if (cur.phase !== "active" && cur.phase !== "ended" && cur.phase !== "capturing") return false;
    const peek = cur;
    for (const m of frame.messages) {
      if (!m || !Number.isSafeInteger(m.offset) || peek.messages.has(m.offset)) continue;
      const entry = { m, result: null, el: null };
      peek.messages.set(m.offset, entry);
      peek.queue = peek.queue.then(async () => {
        if (peek.grantOpening) await peek.grantOpening;
        entry.result = await openMessage(m, { channel: peek.channel, grant: peek.grant }).catch(() => ({ status: "malformed" }));
        if (cur === peek) showMessage(entry);
      });
    }
    while (peek.messages.size > MAX_MESSAGES) {
      const oldest = Math.min(...peek.messages.keys());
      const gone = peek.messages.get(oldest);
      peek.messages.delete(oldest);
      if (gone.el) gone.el.remove();
    }
    return true;
  }

  function onError(frame) {
    const kind = typeof frame.ref === "string" ? pending.get(frame.ref) : undefined;
    if (!kind) return false;
    pending.delete(frame.ref);
    if (!cur) return true;
    const code = frame.code;
    if (kind === "request") {
      if (frame.ref !== cur.requestId) return true;
      const texts = {
        not_found: ["This channel cannot be peeked", "It is not listed any more. Nothing was requested or charged."],
        rate_limited: ["Too many peek requests", "This address asked for too many peeks in the last minute. Wait a minute and try again. Nothing was charged."],
        payment_unavailable: ["Payments are unavailable", "The broker could not reach its payment provider, or peeks are not enabled on it. Nothing was created or charged; try again later."],
      };
      const [title, text] = texts[code] || ["The peek could not be requested", `The broker answered ${code}. Nothing was charged.`];
      failLocally(title, text);
    } else if (kind === "confirm") {
      cur.local = null;
      if (code === "not_found") {
        lost();
      } else {
        render();
        ui.status.textContent = announced = `The payment could not be confirmed (${code}). Try again.`;
        focusStep(true);
      }
    } else if (kind === "status") {
      if (code === "not_found") lost();
      else if (cur.local === "resuming") { /* try again on the next connection */ }
    }
    return true;
  }

  function lost() {
    cur.local = "error";
    cur.error = {
      title: "This peek is no longer known",
      text: "The broker does not know this peek any more (its record expired, or its data was lost).",
      charge: cur.phase && ["active", "ended", "refused"].includes(cur.phase) && cur.view
        ? `Last known charge: ${dollars(cur.view.capturedCents || 0)}.` : "",
    };
    forget();
    render();
    focusStep(true);
  }

  /** A (re)connection's hello: ask where the peek is, which also makes this connection follow it again. */
  function onConnected() {
    if (cur && cur.id && !(cur.local === "error")) askStatus();
    if (ui.dialog.open) render();
  }

  // -- the messages
  function renderGrant(closed) {
    const g = cur.grant;
    ui.grant.replaceChildren();
    ui.grant.dataset.state = cur.grantError ? "bad" : g ? "ok" : "opening";
    if (cur.grantError) {
      ui.grant.append(`The channel's key could not be verified: ${cur.grantError}. The messages stay closed.`);
    } else if (g) {
      const who = document.createElement("abbr");
      who.title = g.sender;
      who.textContent = shortDID(g.sender);
      ui.grant.append("Key of epoch ", String(g.epoch), " granted by ", who,
        "; its signature checks out against the sender's DID. Each message's signature is checked too.");
    } else {
      ui.grant.append("Opening the channel's key…");
    }
    ui.empty.hidden = cur.messages.size > 0;
    ui.empty.textContent = closed
      ? "The peek has ended: its messages were shown only while it was active, and none are here now."
      : "No messages yet. New ones appear here as the agents send them.";
  }

  /** A colour per sender, in the order senders first appear in this peek (distinct for the first six). */
  function hue(did) {
    if (!cur.hues) cur.hues = new Map();
    if (!cur.hues.has(did)) cur.hues.set(did, cur.hues.size % 6);
    return cur.hues.get(did);
  }

  function showMessage(entry) {
    const { m, result } = entry;
    const li = document.createElement("li");
    li.className = "msg";
    li.dataset.offset = String(m.offset);
    li.dataset.status = result.status;
    li.dataset.epoch = String(m.epoch);
    const head = document.createElement("p");
    head.className = "msg-head";
    const sender = document.createElement("abbr");
    sender.className = "msg-sender";
    sender.dataset.hue = String(typeof m.sender === "string" ? hue(m.sender) : 0);
    sender.title = String(m.sender);
    sender.textContent = shortDID(m.sender);
    head.append(sender);
    if (Number.isSafeInteger(m.ts)) {
      const time = document.createElement("time");
      time.dateTime = new Date(m.ts).toISOString();
      time.title = dateTime.format(new Date(m.ts));
      time.textContent = clock.format(new Date(m.ts));
      head.append(time);
    }
    const check = document.createElement("span");
    check.className = "msg-check";
    check.textContent = {
      ok: "Signature verified", locked: "Signature verified", bad_signature: "Bad signature",
      malformed: "Malformed", undecryptable: "Cannot decrypt",
    }[result.status] || result.status;
    head.append(check);
    const body = document.createElement("p");
    body.className = "msg-text";
    if (result.status === "ok") {
      body.textContent = result.text !== undefined ? result.text : `(${result.bytes} bytes that are not text)`;
    } else if (result.status === "locked") {
      body.textContent = cur.grant
        ? `Locked: sent under the key of epoch ${m.epoch}; this peek holds the key of epoch ${cur.grant.epoch} only.`
        : "Locked: this page holds no key for it.";
    } else if (result.status === "bad_signature") {
      body.textContent = "Not shown: its signature does not verify against the sender's DID.";
    } else if (result.status === "undecryptable") {
      body.textContent = "Not shown: it does not decrypt with the granted key.";
    } else {
      body.textContent = "Not shown: the message is malformed.";
    }
    li.append(head, body);
    entry.el = li;
    // Keep offset order (history and live messages may interleave with a reconnect's replay).
    const near = ui.messages.scrollHeight - ui.messages.scrollTop - ui.messages.clientHeight < 40;
    let after = null;
    for (const el of ui.messages.children) {
      if (Number(el.dataset.offset) > m.offset) { after = el; break; }
    }
    ui.messages.insertBefore(li, after);
    ui.empty.hidden = true;
    if (near || !after) ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  // -- resuming after a reload
  async function restore() {
    let saved;
    try { saved = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null"); } catch { saved = null; }
    if (!saved || typeof saved.id !== "string" || typeof saved.token !== "string" || typeof saved.channel !== "string") return;
    cur = fresh(saved.channel, typeof saved.title === "string" ? saved.title : saved.channel);
    cur.id = saved.id;
    cur.token = saved.token;
    cur.clientSecret = typeof saved.clientSecret === "string" ? saved.clientSecret : null;
    cur.phase = typeof saved.phase === "string" ? saved.phase : null;
    cur.local = "resuming";
    const peek = cur;
    peek.keyLoading = loadKey(peek.id).then((stored) => {
      if (stored && stored.privateKey && typeof stored.viewerKey === "string") peek.viewer = stored;
    }, (err) => console.warn("peek: no stored key", err));
    await peek.keyLoading;
    if (cur !== peek) return;
    dialogChannel = cur.channel;
    dialogTitle = cur.title;
    render();
    if (!ui.dialog.open) ui.dialog.showModal();
    focusStep(true);
    askStatus();
  }

  restore();
  purgeKeys();

  return { decorate, updateButtons, onPeek, onMessages, onError, onConnected, open };
}
