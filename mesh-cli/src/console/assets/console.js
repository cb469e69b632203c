// Agent Mesh console: calls the API of `mesh-cli console` with the bearer token typed in (kept
// in this tab's sessionStorage only). No framework, no build step.
"use strict";

const FIELDS = ["rate", "burst", "max_intents_per_hour", "max_intents_per_day", "max_cost_usd",
  "max_cost_usd_per_day", "on_breach", "allow_send", "deny_send", "allow_receive", "deny_receive",
  "degraded_after", "unreachable_after", "on_unreachable"];
const NUMBERS = new Set(["burst", "max_intents_per_hour", "max_intents_per_day", "max_cost_usd",
  "max_cost_usd_per_day"]);
const LISTS = new Set(["allow_send", "deny_send", "allow_receive", "deny_receive"]);
const $ = (sel) => document.querySelector(sel);

let token = sessionStorage.getItem("mesh-console-token") || "";
let feedAbort = null;
let refreshTimer = null;
let killTarget = null;

function headers(extra) {
  const h = Object.assign({}, extra || {});
  if (token) h["Authorization"] = "Bearer " + token;
  return h;
}

async function api(method, path, body) {
  const init = { method, headers: headers(body !== undefined ? { "Content-Type": "application/json" } : {}) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const res = await fetch(path, init);
  const data = await res.json().catch(() => ({ error: "answer is not JSON (" + res.status + ")" }));
  if (!res.ok) {
    const err = new Error(data.error || res.statusText);
    err.field = data.field; err.kind = data.kind; err.status = res.status;
    throw err;
  }
  return data;
}

function say(text, isError) {
  const m = $("#message");
  m.textContent = text;
  m.className = isError ? "error" : "";
}

function ago(ms) {
  if (!ms) return "-";
  const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
  if (s < 60) return s + "s ago";
  if (s < 3600) return Math.round(s / 60) + "m ago";
  return Math.round(s / 3600) + "h ago";
}

const dash = (v) => (v === null || v === undefined ? "-" : String(v));

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function renderAgents(status) {
  const tbody = $("#agents tbody");
  tbody.replaceChildren();
  $("#no-agents").hidden = status.agents.length > 0;
  for (const a of status.agents) {
    const tr = document.createElement("tr");
    tr.dataset.agent = a.agent;
    cell(tr, a.agent, "agent");
    cell(tr, a.state, "state state-" + a.state).title = a.reason ? a.reason + " (" + a.by + ")" : "";
    cell(tr, a.health, "health health-" + a.health);
    cell(tr, dash(a.instances), "instances");
    cell(tr, ago(a.last_heartbeat_unix_ms), "heartbeat");
    cell(tr, a.cost_today_usd == null ? "-" : "$" + a.cost_today_usd.toFixed(2), "cost");
    cell(tr, dash(a.intents_this_hour), "intents");
    cell(tr, dash(a.pending), "pending");
    cell(tr, dash(a.rejected), "rejected");
    const actions = cell(tr, "", "actions");
    const b = document.createElement("button");
    if (a.state === "active") {
      b.textContent = "Kill"; b.className = "kill danger";
      b.onclick = () => openKill(a.agent);
    } else {
      b.textContent = "Resume"; b.className = "resume";
      b.onclick = () => resume(a.agent);
    }
    actions.appendChild(b);
    const p = document.createElement("button");
    p.textContent = "Policy"; p.className = "policy";
    p.onclick = () => { $("#policy-key").value = a.agent; loadPolicy(); };
    actions.appendChild(p);
    tbody.appendChild(tr);
  }
  $("#refreshed").textContent = "updated " + new Date().toLocaleTimeString();
}

async function refresh() {
  try {
    renderAgents(await api("GET", "/api/agents"));
    $("#conn").textContent = "connected";
  } catch (e) {
    $("#conn").textContent = e.message;
  }
}

function openKill(agent) {
  killTarget = agent;
  $("#kill-agent").textContent = agent;
  $("#kill-reason").value = "";
  $("#kill-dialog").showModal();
  $("#kill-reason").focus();
}

async function kill(event) {
  event.preventDefault();
  const reason = $("#kill-reason").value.trim();
  if (!reason) { $("#kill-reason").reportValidity(); return; }
  $("#kill-dialog").close();
  say("killing " + killTarget + " …");
  try {
    const r = await api("POST", "/api/agents/" + encodeURIComponent(killTarget) + "/kill", { reason });
    say(r.summary + (r.complete ? "" : " — " + r.problem), !r.complete);
  } catch (e) { say(e.message, true); }
  refresh();
}

async function resume(agent) {
  say("resuming " + agent + " …");
  try {
    const r = await api("POST", "/api/agents/" + encodeURIComponent(agent) + "/resume", { reason: "resumed from the console" });
    say(r.summary + (r.complete ? "" : " — " + r.problem), !r.complete);
  } catch (e) { say(e.message, true); }
  refresh();
}

// ---- policy editor: one input per field; errors shown next to the field they name.

function buildFields() {
  const box = $("#policy-fields");
  for (const f of FIELDS) {
    const label = document.createElement("label");
    label.textContent = f;
    const input = document.createElement("input");
    input.name = f; input.id = "field-" + f;
    input.placeholder = LISTS.has(f) ? "globs, comma separated" : NUMBERS.has(f) ? "number" : "";
    const err = document.createElement("span");
    err.className = "field-error"; err.dataset.field = f;
    label.append(input, err);
    box.appendChild(label);
  }
}

function clearErrors() {
  $("#policy-error").textContent = "";
  for (const el of document.querySelectorAll("#policy-fields .field-error")) el.textContent = "";
  for (const el of document.querySelectorAll("#policy-fields input")) el.classList.remove("invalid");
}

function showError(e) {
  $("#policy-error").textContent = e.message;
  if (!e.field) return;
  const input = document.getElementById("field-" + e.field);
  const span = document.querySelector('.field-error[data-field="' + e.field + '"]');
  if (input) input.classList.add("invalid");
  if (span) span.textContent = e.message;
}

async function loadPolicy() {
  clearErrors();
  const key = $("#policy-key").value.trim();
  if (!key) return;
  try {
    const v = await api("GET", "/api/policies/" + encodeURIComponent(key));
    const p = (v.policy.record && v.policy.record.policy) || {};
    for (const f of FIELDS) {
      const val = p[f];
      document.getElementById("field-" + f).value = val === undefined ? "" : Array.isArray(val) ? val.join(", ") : String(val);
    }
    say("policy of " + key + (v.policy.record ? " loaded" : ": none set"));
  } catch (e) { showError(e); }
}

function formPolicy() {
  const p = {};
  for (const f of FIELDS) {
    const raw = document.getElementById("field-" + f).value.trim();
    if (!raw) continue;
    if (LISTS.has(f)) p[f] = raw.split(",").map((s) => s.trim()).filter(Boolean);
    else if (NUMBERS.has(f) && raw !== "" && !isNaN(Number(raw))) p[f] = Number(raw);
    else p[f] = raw; // a bad value goes as typed: the server names the field
  }
  return p;
}

async function savePolicy(event) {
  event.preventDefault();
  clearErrors();
  const key = $("#policy-key").value.trim();
  try {
    const r = await api("PUT", "/api/policies/" + encodeURIComponent(key), formPolicy());
    say(r.summary, !r.complete);
  } catch (e) { showError(e); }
}

async function removePolicy() {
  clearErrors();
  const key = $("#policy-key").value.trim();
  try {
    const r = await api("DELETE", "/api/policies/" + encodeURIComponent(key));
    say(r.summary, !r.complete);
    loadPolicy();
  } catch (e) { showError(e); }
}

// ---- live feed: Server-Sent Events read with fetch (EventSource cannot send a token).

function feedLine(kind, e, live) {
  const li = document.createElement("li");
  li.dataset.kind = kind; li.dataset.agent = e.agent;
  if (live) li.classList.add("live");
  const when = new Date(e.at_unix_ms).toLocaleTimeString();
  const k = document.createElement("span");
  k.className = "kind kind-" + kind; k.textContent = kind;
  li.append(when + " ", k, " " + e.agent + " by " + e.actor + (e.reason ? ": " + e.reason : ""));
  const feed = $("#feed");
  feed.prepend(li);
  while (feed.children.length > 200) feed.lastChild.remove();
}

async function startFeed() {
  if (feedAbort) feedAbort.abort();
  feedAbort = new AbortController();
  const q = new URLSearchParams();
  const agent = $("#feed-agent").value.trim();
  const kind = $("#feed-kind").value;
  if (agent) q.set("agent", agent);
  if (kind) q.set("kind", kind);
  $("#feed").replaceChildren();
  const state = $("#feed-state");
  try {
    const past = await api("GET", "/api/audit?limit=50&" + q);
    for (const e of past) feedLine(e.kind, e, false);
    const res = await fetch("/api/events?" + q, { headers: headers(), signal: feedAbort.signal });
    if (!res.ok) { state.textContent = "feed: " + ((await res.json()).error || res.status); return; }
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
        let name = "message", data = "";
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) name = line.slice(6).trim();
          else if (line.startsWith("data:")) data += line.slice(5).trim();
        }
        if (name === "ready") { state.textContent = "live"; state.dataset.live = "true"; continue; }
        if (!data) continue;
        try { feedLine(name, JSON.parse(data), true); } catch (_) { /* not an event */ }
        refresh();
      }
    }
    state.textContent = "feed ended";
  } catch (e) {
    if (e.name !== "AbortError") state.textContent = "feed: " + e.message;
  }
  state.dataset.live = "false";
}

function connect(event) {
  if (event) event.preventDefault();
  const typed = $("#token").value.trim();
  if (typed) { token = typed; sessionStorage.setItem("mesh-console-token", token); }
  refresh();
  startFeed();
  clearInterval(refreshTimer);
  refreshTimer = setInterval(refresh, 2000);
}

buildFields();
$("#login").addEventListener("submit", connect);
$("#kill-form").addEventListener("submit", kill);
$("#kill-cancel").addEventListener("click", () => $("#kill-dialog").close());
$("#policy-form").addEventListener("submit", savePolicy);
$("#policy-load").addEventListener("click", loadPolicy);
$("#policy-remove").addEventListener("click", removePolicy);
$("#feed-filters").addEventListener("submit", (e) => { e.preventDefault(); startFeed(); });
connect();
