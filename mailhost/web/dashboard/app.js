// The mailhost dashboard: polls the HTTP API about once a second and redraws what changed.
// No framework and no build step; every value from the server goes into the page as text.
"use strict";

const API = {
  schemes: "/api/schemes",
  popLogins: "/api/pop-logins",
  events: "/api/events",
  clockAdvance: "/api/clock/advance",
  accounts: "/api/accounts",
  outbox: "/api/outbox/messages",
  mailbox: "/api/mailboxes/{address}/messages",
};

const POLL_MS = 1000;
const BOXES_EVERY_MS = 5000;
const EVENT_PAGE = 1000;
const FEED_MAX = 200;
const TOKEN_KEY = "mailhost-api-token";
const SCHEMES = [
  { key: "smtp-auth", name: "SMTP-Auth", how: "the client proves its account on the SMTP connection" },
  {
    key: "smtp-after-pop",
    name: "SMTP-after-POP",
    how: "a POP3 login from an IP lets anyone at that IP send for the window",
  },
];

const state = {
  cursor: 0,
  needToken: false,
  boxesAt: 0,
  boxesDirty: true,
  schemes: null,
};

class Unauthorised extends Error {}

// --- talking to the API ------------------------------------------------------------------

async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  if (response.status === 401) throw new Unauthorised("the API needs a token");
  const payload = response.status === 204 ? null : await response.json();
  if (!response.ok) {
    const message = payload && payload.error ? payload.error : "HTTP " + response.status;
    throw new Error(message);
  }
  return payload;
}

// --- small helpers ------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function utc(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  return d.toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}

function utcTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toISOString().slice(11, 19);
}

function duration(seconds) {
  let s = Math.max(0, Math.round(seconds));
  const days = Math.floor(s / 86400);
  s -= days * 86400;
  const hours = Math.floor(s / 3600);
  s -= hours * 3600;
  const minutes = Math.floor(s / 60);
  s -= minutes * 60;
  const parts = [];
  if (days) parts.push(days + " d");
  if (hours) parts.push(hours + " h");
  if (minutes && days === 0) parts.push(minutes + " min");
  if ((s || parts.length === 0) && days === 0 && hours === 0) parts.push(s + " s");
  return parts.join(" ");
}

function setStatus(text, kind) {
  const status = $("status");
  if (status.textContent !== text) status.textContent = text;
  status.dataset.kind = kind;
}

// --- schemes ------------------------------------------------------------------------------

function effective(spec, nowMs) {
  if (spec === "on") return { on: true, until: null };
  if (spec === "off") return { on: false, until: null };
  const until = Date.parse(spec.slice("until:".length));
  return { on: nowMs < until, until };
}

function buildSchemes() {
  const holder = $("schemes");
  for (const scheme of SCHEMES) {
    const id = "scheme-" + scheme.key;
    const toggle = el(
      "button",
      { type: "button", role: "switch", id: id + "-switch", "aria-checked": "false", class: "switch", "aria-labelledby": id + "-name" },
      el("span", { class: "track", "aria-hidden": "true" }, el("span", { class: "thumb" })),
      el("span", { class: "switch-text", id: id + "-state", "aria-hidden": "true" }, "…"),
    );
    toggle.addEventListener("click", () => toggleScheme(scheme.key, toggle));
    const input = el("input", { type: "datetime-local", id: id + "-until", step: "60", required: true });
    const form = el(
      "form",
      { class: "inline-form cutover-form" },
      el("label", { for: id + "-until" }, "Switch off at (UTC)"),
      input,
      el("button", { type: "submit" }, "Set cutover"),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      if (input.value) putSchemes({ [scheme.key]: "until:" + input.value + "Z" });
    });
    const card = el(
      "article",
      { class: "scheme", id: id, "aria-labelledby": id + "-name" },
      el("div", { class: "scheme-head" }, el("h3", { id: id + "-name" }, scheme.name), toggle),
      el("p", { class: "describe", id: id + "-describe" }, "…"),
      el("p", { class: "how" }, scheme.how + "."),
      el(
        "div",
        { class: "timeline", id: id + "-timeline", "aria-hidden": "true" },
        el("span", { class: "tl-span" }),
        el("span", { class: "tl-mark tl-now" }, el("span", {}, "now")),
        el("span", { class: "tl-mark tl-cut" }, el("span", {}, "cutover")),
      ),
      el("p", { class: "timeline-text", id: id + "-timeline-text" }, ""),
      form,
    );
    holder.append(card);
  }
}

function renderSchemes(data) {
  state.schemes = data;
  const nowMs = Date.parse(data.now);
  $("now").textContent = utc(data.now);
  $("now").setAttribute("datetime", data.now);
  $("pop-window").textContent = duration(data["pop-window"]);
  for (const scheme of SCHEMES) {
    const id = "scheme-" + scheme.key;
    const spec = data[scheme.key];
    const eff = effective(spec, nowMs);
    const toggle = $(id + "-switch");
    toggle.setAttribute("aria-checked", eff.on ? "true" : "false");
    toggle.disabled = false;
    $(id + "-state").textContent = eff.on ? (eff.until ? "On (until cutover)" : "On") : "Off";
    $(id).dataset.on = eff.on ? "true" : "false";
    $(id + "-describe").textContent = "State: " + data.describe[scheme.key];
    const timeline = $(id + "-timeline");
    const text = $(id + "-timeline-text");
    if (eff.until === null) {
      timeline.hidden = true;
      text.textContent = "No cutover scheduled.";
      continue;
    }
    timeline.hidden = false;
    const left = (eff.until - nowMs) / 1000;
    const span = Math.max(Math.abs(left), 600) / 0.6;
    const nowPos = left >= 0 ? 20 : 20 + (-left / span) * 100;
    const cutPos = left >= 0 ? 20 + (left / span) * 100 : 20;
    timeline.querySelector(".tl-now").style.left = nowPos + "%";
    timeline.querySelector(".tl-cut").style.left = cutPos + "%";
    const bar = timeline.querySelector(".tl-span");
    bar.style.left = Math.min(nowPos, cutPos) + "%";
    bar.style.width = Math.abs(cutPos - nowPos) + "%";
    timeline.dataset.passed = left < 0 ? "true" : "false";
    const cut = utc(new Date(eff.until).toISOString());
    text.textContent =
      left >= 0
        ? "Now " + utcTime(data.now) + " UTC → cutover " + cut + ": " + duration(left) + " left."
        : "Cutover " + cut + " passed " + duration(-left) + " ago.";
  }
}

async function putSchemes(change) {
  try {
    renderSchemes(await api("PUT", API.schemes, change));
    setStatus("Schemes changed: " + Object.keys(change).join(", ") + ".", "ok");
  } catch (error) {
    handleError(error);
  }
}

function toggleScheme(key, toggle) {
  const on = toggle.getAttribute("aria-checked") === "true";
  toggle.disabled = true;
  putSchemes({ [key]: on ? "off" : "on" }).finally(() => {
    toggle.disabled = false;
  });
}

// --- POP3 logins --------------------------------------------------------------------------

function renderLogins(data) {
  const byIp = new Map();
  for (const login of data.pop_logins) byIp.set(login.ip, login);
  const windowSeconds = state.schemes ? state.schemes["pop-window"] : 600;
  const body = $("logins").tBodies[0];
  const rows = [];
  for (const login of [...byIp.values()].reverse()) {
    const fraction = windowSeconds > 0 ? Math.min(1, login.seconds_left / windowSeconds) : 0;
    const fill = el("span", { class: "fill" });
    fill.style.width = (fraction * 100).toFixed(1) + "%";
    const left = login.live
      ? el("span", { class: "left" }, duration(login.seconds_left) + " left")
      : el("span", { class: "left expired" }, "✖ expired");
    rows.push(
      el(
        "tr",
        { "data-ip": login.ip, class: login.live ? "live" : "expired" },
        el("th", { scope: "row" }, login.ip),
        el("td", {}, login.account),
        el("td", {}, el("time", { datetime: login.granted_at, title: utc(login.granted_at) }, utcTime(login.granted_at))),
        el("td", { class: "window" }, el("span", { class: "bar", "aria-hidden": "true" }, fill), left),
      ),
    );
  }
  body.replaceChildren(...rows);
  $("logins").hidden = rows.length === 0;
  $("logins-empty").hidden = rows.length > 0;
}

// --- the decision feed --------------------------------------------------------------------

function schemeName(key, allowed = true) {
  const found = SCHEMES.find((s) => s.key === key);
  if (found) return found.name;
  return key || (allowed ? "none needed" : "none applied");
}

function decisionItem(event) {
  const risky = event.allowed && event.scheme === "smtp-after-pop";
  const account = event.authorised_account || event.smtp_auth_account || "—";
  const verdict = event.allowed ? "Allowed" : "Refused";
  const item = el(
    "li",
    { class: "decision " + (event.allowed ? "allowed" : "refused") + (risky ? " risky" : ""), "data-seq": event.seq },
    el(
      "p",
      { class: "verdict" },
      el("span", { class: "icon", "aria-hidden": "true" }, event.allowed ? "✔" : "✖"),
      el("strong", {}, verdict),
      " ",
      el("span", { class: "code" }, event.code + (event.enhanced ? " " + event.enhanced : "")),
      " ",
      el("time", { datetime: event.at }, utc(event.at)),
    ),
    el(
      "dl",
      {},
      el("dt", {}, "Scheme"),
      el("dd", {}, schemeName(event.scheme, event.allowed)),
      el("dt", {}, "IP"),
      el("dd", {}, event.ip),
      el("dt", {}, "Account"),
      el("dd", {}, account),
      el("dt", {}, "Mail"),
      el(
        "dd",
        {},
        (event.sender || "<>") + " → " + (event.recipient || "(sender check)") + " on " + event.role,
      ),
      el("dt", {}, "Reason"),
      el("dd", {}, event.reason || "—"),
    ),
  );
  if (risky) {
    item.append(
      el(
        "p",
        { class: "warning" },
        el("span", { class: "icon", "aria-hidden": "true" }, "⚠"),
        " anyone at this IP could have sent this",
      ),
    );
  }
  return item;
}

function addDecisions(found) {
  if (found.length === 0) return;
  const feed = $("feed");
  const items = found.slice(-FEED_MAX).reverse().map(decisionItem);
  feed.prepend(...items);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-empty").hidden = feed.children.length > 0;
}

async function readEvents() {
  const decisions = [];
  let stored = false;
  for (let page = 0; page < 20; page++) {
    const data = await api("GET", API.events + "?after=" + state.cursor + "&limit=" + EVENT_PAGE);
    for (const event of data.events) {
      if (event.kind === "smtp-decision") decisions.push(event);
      else if (event.kind === "message-stored") stored = true;
    }
    state.cursor = data.cursor;
    if (data.events.length < EVENT_PAGE) break;
  }
  addDecisions(decisions);
  if (stored) state.boxesDirty = true;
}

// --- mailboxes and the outbox -------------------------------------------------------------

function boxSection(title, messages) {
  const slug = "box-" + title.replace(/[^a-z0-9]+/gi, "-").toLowerCase();
  const section = el(
    "section",
    { class: "box", "aria-labelledby": slug },
    el("h3", { id: slug }, title, " ", el("span", { class: "count" }, "(" + messages.length + ")")),
  );
  if (messages.length === 0) {
    section.append(el("p", { class: "empty" }, "No messages."));
    return section;
  }
  const rows = messages
    .slice()
    .reverse()
    .map((m) =>
      el(
        "tr",
        {},
        el("th", { scope: "row" }, m.subject || "(no subject)"),
        el("td", {}, m.from || m.envelope_from || "<>"),
        el("td", {}, m.to || (m.envelope_to || []).join(", ")),
        el("td", {}, m.scheme ? schemeName(m.scheme) : "—"),
      ),
    );
  section.append(
    el(
      "div",
      { class: "table-wrap" },
      el(
        "table",
        {},
        el("caption", { class: "visually-hidden" }, "Messages in " + title + ", newest first"),
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            el("th", { scope: "col" }, "Subject"),
            el("th", { scope: "col" }, "From"),
            el("th", { scope: "col" }, "To"),
            el("th", { scope: "col" }, "Scheme"),
          ),
        ),
        el("tbody", {}, ...rows),
      ),
    ),
  );
  return section;
}

async function refreshBoxes() {
  const accounts = (await api("GET", API.accounts)).accounts;
  const boxes = await Promise.all(
    accounts.map((address) => api("GET", API.mailbox.replace("{address}", encodeURIComponent(address)))),
  );
  const outbox = await api("GET", API.outbox);
  const sections = accounts.map((address, i) => boxSection(address, boxes[i].messages));
  sections.push(boxSection("Outbox (relayed, never sent on)", outbox.messages));
  $("boxes").replaceChildren(...sections);
  state.boxesAt = Date.now();
  state.boxesDirty = false;
}

// --- the clock ----------------------------------------------------------------------------

async function advance(seconds) {
  try {
    const clock = await api("POST", API.clockAdvance, { seconds });
    setStatus("Clock advanced by " + duration(seconds) + " to " + utc(clock.now) + ".", "ok");
    state.boxesDirty = true;
  } catch (error) {
    handleError(error);
  }
}

// --- the loop -----------------------------------------------------------------------------

function handleError(error) {
  if (error instanceof Unauthorised) {
    state.needToken = true;
    $("token-panel").hidden = false;
    setStatus("Paused: the API needs a token.", "error");
    return;
  }
  setStatus("Cannot reach mailhost (" + error.message + "); retrying.", "error");
}

async function tick() {
  if (!state.needToken) {
    try {
      renderSchemes(await api("GET", API.schemes));
      renderLogins(await api("GET", API.popLogins));
      await readEvents();
      if (state.boxesDirty || Date.now() - state.boxesAt > BOXES_EVERY_MS) await refreshBoxes();
      document.body.dataset.ready = "true";
      setStatus("Live: updated " + new Date().toLocaleTimeString() + " (your time).", "ok");
    } catch (error) {
      handleError(error);
    }
  }
  setTimeout(tick, POLL_MS);
}

function start() {
  buildSchemes();
  for (const button of document.querySelectorAll("[data-advance]")) {
    button.addEventListener("click", () => advance(Number(button.dataset.advance)));
  }
  $("advance-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const minutes = Number($("advance-minutes").value);
    if (Number.isFinite(minutes) && minutes >= 0) advance(Math.round(minutes * 60));
  });
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value.trim());
    $("token-input").value = "";
    $("token-panel").hidden = true;
    state.needToken = false;
    setStatus("Token set; connecting…", "ok");
  });
  $("feed-empty").hidden = false;
  $("logins").hidden = true;
  tick();
}

document.addEventListener("DOMContentLoaded", start);
