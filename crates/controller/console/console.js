// polydev console: the controller's live view and perspectives playground.
// Hand-written, no dependency, no build step. It builds every node with the DOM API (never
// HTML text), talks only to this origin, and keeps the API token in sessionStorage only.
// Streams are read with fetch and a stream reader (EventSource cannot send the token).
"use strict";

const TOKEN_KEY = "polydev.token";
const MAX_ROWS = 200;
const OUTCOME_COLORS = { succeeded: "ok", cancelled: "muted", failed: "bad" };

const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const n = document.createElement(tag);
  if (cls) n.className = cls;
  if (text !== undefined && text !== null) n.textContent = String(text);
  return n;
}

function svg(tag, attrs, text) {
  const n = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

// === token and API ===

class Unauthorized extends Error {}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const t = token();
  if (t) h.Authorization = "Bearer " + t;
  return h;
}

async function api(path, opts) {
  const o = Object.assign({}, opts || {});
  o.headers = headers(o.headers);
  o.cache = "no-store";
  const res = await fetch(path, o);
  if (res.status === 401) throw new Unauthorized();
  return res;
}

async function errorText(res) {
  try {
    const body = await res.json();
    if (body && body.error) return body.error.message || body.error.kind;
  } catch (_) { /* not JSON */ }
  return "HTTP " + res.status;
}

// Reads a server-sent-event response body; calls onEvent({event, data, id}) per event.
async function readSse(res, onEvent, signal) {
  const reader = res.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  let ev = { event: "message", data: [], id: null };
  const abort = () => reader.cancel().catch(() => {});
  if (signal) signal.addEventListener("abort", abort, { once: true });
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += decoder.decode(value, { stream: true });
      let nl;
      while ((nl = buf.search(/\r\n|\r|\n/)) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + (buf.startsWith("\r\n", nl) ? 2 : 1));
        if (line === "") {
          if (ev.data.length) onEvent({ event: ev.event, data: ev.data.join("\n"), id: ev.id });
          ev = { event: "message", data: [], id: null };
        } else if (!line.startsWith(":")) {
          const c = line.indexOf(":");
          const field = c < 0 ? line : line.slice(0, c);
          let val = c < 0 ? "" : line.slice(c + 1);
          if (val.startsWith(" ")) val = val.slice(1);
          if (field === "data") ev.data.push(val);
          else if (field === "event") ev.event = val;
          else if (field === "id") ev.id = val;
        }
      }
    }
  } finally {
    if (signal) signal.removeEventListener("abort", abort);
  }
}

function parse(data) {
  try { return JSON.parse(data); } catch (_) { return null; }
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// === formatting ===

function ms(v) {
  if (v === null || v === undefined) return "–";
  return v < 1000 ? Math.round(v) + " ms" : (v / 1000).toFixed(v < 10000 ? 2 : 1) + " s";
}

function clock(t) {
  if (!t) return "–";
  return new Date(t).toLocaleTimeString([], { hour12: false });
}

function tokens(x) {
  if (x.input_tokens === null || x.input_tokens === undefined) return "–";
  return x.input_tokens + " / " + x.output_tokens;
}

// === views and sign-in ===

const state = {
  feed: null,          // AbortController of the live feed
  executions: new Map(),
  stats: [],
  detail: null,        // AbortController of the open execution's stream
};

function show(view) {
  for (const id of ["login", "live", "playground"]) $(id).hidden = id !== view;
  $("nav-live").classList.toggle("active", view === "live");
  $("nav-playground").classList.toggle("active", view === "playground");
  $("signout").hidden = view === "login";
}

function route() {
  if (sessionStorage.getItem(TOKEN_KEY) === null) return show("login");
  show(location.hash === "#playground" ? "playground" : "live");
  if (!state.feed) connectFeed();
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.feed) state.feed.abort();
  state.feed = null;
  setConn("off", "not connected");
  $("login-error").textContent = message || "";
  $("token").value = "";
  show("login");
}

async function signIn(ev) {
  ev.preventDefault();
  const t = $("token").value.trim();
  $("login-error").textContent = "";
  sessionStorage.setItem(TOKEN_KEY, t);
  try {
    const res = await api("/v1/pool");
    if (!res.ok) throw new Error(await errorText(res));
    $("token").value = "";
    route();
  } catch (e) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("login-error").textContent = e instanceof Unauthorized
      ? "The controller refused this token (401 Unauthorized). Check POLYDEV_API_TOKEN and try again."
      : "Cannot reach the controller: " + e.message;
  }
}

function setConn(kind, text) {
  const c = $("conn");
  c.className = "conn " + kind;
  c.textContent = text;
}

// === live feed ===

async function connectFeed() {
  const ctl = new AbortController();
  state.feed = ctl;
  let backoff = 500;
  while (!ctl.signal.aborted) {
    try {
      setConn("wait", "connecting…");
      const res = await api("/v1/events", { headers: { Accept: "text/event-stream" }, signal: ctl.signal });
      if (!res.ok) throw new Error(await errorText(res));
      setConn("on", "live");
      backoff = 500;
      await readSse(res, onFeedEvent, ctl.signal);
    } catch (e) {
      if (e instanceof Unauthorized) {
        signOut("The controller no longer accepts this token (401 Unauthorized). Enter it again.");
        return;
      }
      if (ctl.signal.aborted) return;
    }
    setConn("off", "reconnecting…");
    await sleep(backoff);
    backoff = Math.min(backoff * 2, 10000);
  }
}

const RANK = { queued: 0, running: 1 };

function upsert(x) {
  const old = state.executions.get(x.id);
  // A feed event may repeat a state older than the snapshot it follows: never step back.
  if (old && (RANK[x.status] ?? 2) < (RANK[old.status] ?? 2)) return;
  state.executions.set(x.id, x);
}

function onFeedEvent(ev) {
  const d = parse(ev.data);
  if (!d) return;
  if (ev.event === "snapshot") {
    state.executions.clear();
    for (const x of d.executions || []) upsert(x);
    state.stats = (d.stats && d.stats.buckets) || [];
    showPool(d.pool);
    renderExecutions();
    renderCharts();
  } else if (ev.event === "execution") {
    upsert(d);
    scheduleRender();
  } else if (ev.event === "pool") {
    showPool(d);
  } else if (ev.event === "stats") {
    state.stats.push(d);
    if (state.stats.length > 120) state.stats.shift();
    renderCharts();
  }
}

// A busy controller sends many events a second: redraw the table at most every 150 ms.
let renderTimer = null;
function scheduleRender() {
  if (renderTimer !== null) return;
  renderTimer = setTimeout(() => { renderTimer = null; renderExecutions(); }, 150);
}

function showPool(p) {
  if (!p) return;
  $("m-running").textContent = p.running;
  $("m-limit").textContent = "limit " + p.limit;
  $("m-queued").textContent = p.queued;
  $("m-size").textContent = p.pool.size;
  $("m-idle").textContent = p.pool.idle;
  $("m-starting").textContent = p.pool.starting;
  $("m-hits").textContent = p.pool.hits;
  $("m-misses").textContent = p.pool.misses;
}

function renderExecutions() {
  const all = [...state.executions.values()]
    .sort((a, b) => b.created_at_ms - a.created_at_ms || (a.id < b.id ? 1 : -1));
  // Keep what is shown (and the open one); forget the rest.
  for (const x of all.slice(MAX_ROWS)) if (x.id !== state.detailId) state.executions.delete(x.id);
  const rows = all.slice(0, MAX_ROWS);
  const body = $("executions").tBodies[0];
  const fresh = document.createDocumentFragment();
  for (const x of rows) {
    const tr = el("tr");
    tr.dataset.id = x.id;
    tr.tabIndex = 0;
    tr.append(
      el("td", "time", clock(x.created_at_ms)),
      el("td", null, x.user_id),
      el("td", null, x.provider),
      el("td", "model", x.model),
    );
    const st = el("td", "status");
    st.append(el("span", "badge " + x.status, x.status));
    tr.append(
      st,
      el("td", "num", ms(x.ttft_ms)),
      el("td", "num", ms(x.duration_ms)),
      el("td", "num", tokens(x)),
      el("td", "error-kind", x.status === "succeeded" ? "" : (x.error_kind || "")),
    );
    if (state.detailId === x.id) tr.classList.add("selected");
    fresh.append(tr);
  }
  body.replaceChildren(fresh);
  $("exec-count").textContent = state.executions.size ? "(" + rows.length + ")" : "";
  $("exec-empty").hidden = rows.length > 0;
}

// === one execution's stream ===

// Follows /v1/executions/{id}/events from `after`, resuming with Last-Event-ID when the
// connection drops, until the terminal event. onEvent(type, data, seq) per event.
// Returns "ended", "gone" (events no longer retained), "missing" or "aborted".
async function follow(id, after, onEvent, signal, onNote) {
  let last = after;
  let failures = 0;
  while (!signal.aborted) {
    let ended = false;
    try {
      const h = { Accept: "text/event-stream" };
      if (last > 0) h["Last-Event-ID"] = String(last);
      const res = await api("/v1/executions/" + encodeURIComponent(id) + "/events", { headers: h, signal });
      if (res.status === 410) return "gone";
      if (res.status === 404) return "missing";
      if (!res.ok) throw new Error(await errorText(res));
      if (onNote) onNote(last > after ? "resumed after event " + last : "");
      failures = 0;
      await readSse(res, (ev) => {
        const seq = Number(ev.id);
        if (Number.isFinite(seq) && seq > 0) {
          if (seq <= last) return;
          last = seq;
        }
        const d = parse(ev.data) || {};
        if (ev.event === "end" || ev.event === "error") ended = true;
        onEvent(ev.event, d, seq);
      }, signal);
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
      if (signal.aborted) return "aborted";
      failures += 1;
    }
    if (ended) return "ended";
    if (signal.aborted) return "aborted";
    if (onNote) onNote("connection lost after event " + last + "; resuming…");
    await sleep(Math.min(500 * 2 ** failures, 5000));
  }
  return "aborted";
}

// Renders runtime events into a container; unknown event types are shown as they came.
function eventSink(parts) {
  return (type, d) => {
    switch (type) {
      case "start":
        break;
      case "text":
        parts.text.append(d.text || "");
        break;
      case "reasoning":
        parts.reasoningBox.hidden = false;
        if (d.text) parts.reasoning.append(d.text);
        if (d.signature) parts.reasoning.append(el("span", "sig", " [signature, " + d.signature.length + " chars]"));
        if (d.redacted) parts.reasoning.append(el("span", "sig", " [redacted reasoning]"));
        break;
      case "tool_call": {
        parts.tools.hidden = false;
        const li = el("li");
        li.append(el("code", "tool-name", d.name || "?"), el("code", "tool-args", d.arguments || ""));
        parts.tools.append(li);
        break;
      }
      case "refusal":
        parts.refusal.hidden = false;
        parts.refusal.append(d.text || "");
        break;
      case "usage":
      case "end":
      case "error":
        break;
      default:
        parts.other.hidden = false;
        parts.other.append(el("div", null, type + ": " + JSON.stringify(d)));
    }
  };
}

function closeDetail() {
  if (state.detail) state.detail.abort();
  state.detail = null;
  state.detailId = null;
  $("detail").hidden = true;
  renderExecutions();
}

async function openDetail(id) {
  closeDetail();
  const ctl = new AbortController();
  state.detail = ctl;
  state.detailId = id;
  renderExecutions();
  const x = state.executions.get(id) || { id };
  $("detail").hidden = false;
  $("detail-title").textContent = id;
  $("detail-meta").textContent = [x.user_id, x.provider, x.model].filter(Boolean).join(" · ");
  $("detail-note").textContent = "";
  const body = $("detail-body");
  body.replaceChildren();
  const parts = {
    reasoningBox: el("details", "reasoning-box"),
    reasoning: el("div", "reasoning"),
    text: el("div", "answer"),
    refusal: el("div", "refusal"),
    tools: el("ol", "tools"),
    other: el("div", "other"),
  };
  parts.reasoningBox.append(el("summary", null, "Reasoning"), parts.reasoning);
  parts.reasoningBox.hidden = parts.refusal.hidden = parts.tools.hidden = parts.other.hidden = true;
  const outcome = el("p", "outcome");
  body.append(parts.reasoningBox, parts.text, parts.refusal, parts.tools, parts.other, outcome);
  const sink = eventSink(parts);
  try {
    const r = await follow(id, 0, (type, d) => {
      sink(type, d);
      if (type === "usage") outcome.textContent = "tokens: " + d.input_tokens + " in, " + d.output_tokens + " out";
      if (type === "end") outcome.textContent = "finished: " + d.finish_reason + (d.ttft_ms !== undefined ? " · TTFT " + ms(d.ttft_ms) : "") + " · " + ms(d.duration_ms);
      if (type === "error") outcome.textContent = "error " + d.kind + ": " + (d.message || "");
    }, ctl.signal, (note) => { $("detail-note").textContent = note; });
    if (r === "gone") $("detail-note").textContent = "This execution's events are no longer kept in memory; its record: " + (x.status || "") + (x.error_kind ? " (" + x.error_kind + ")" : "") + ".";
    if (r === "missing") $("detail-note").textContent = "No such execution.";
  } catch (e) {
    if (e instanceof Unauthorized) signOut("The controller no longer accepts this token (401 Unauthorized). Enter it again.");
  }
}

// === charts (inline SVG) ===

const W = 360, H = 140, PAD_L = 48, PAD_B = 16, PAD_T = 8;

function frame(node, max, unit) {
  node.replaceChildren();
  const y0 = H - PAD_B;
  node.append(
    svg("line", { x1: PAD_L, y1: y0, x2: W, y2: y0, class: "axis" }),
    svg("text", { x: PAD_L - 4, y: PAD_T + 8, class: "tick end" }, fmtNum(max) + unit),
    svg("text", { x: PAD_L - 4, y: y0, class: "tick end" }, "0"),
  );
  const span = state.stats.length
    ? Math.round((state.stats[state.stats.length - 1].end_ms - state.stats[0].start_ms) / 60000)
    : 0;
  node.append(
    svg("text", { x: PAD_L, y: H - 2, class: "tick" }, span ? "−" + span + " min" : ""),
    svg("text", { x: W, y: H - 2, class: "tick end" }, "now"),
  );
  if (!state.stats.length) node.append(svg("text", { x: (W + PAD_L) / 2, y: H / 2, class: "tick mid" }, "collecting… (one bar per 5 s)"));
}

function fmtNum(v) {
  return v >= 100 ? Math.round(v) : v >= 10 ? v.toFixed(0) : v.toFixed(v >= 1 ? 1 : 2);
}

function xs(i, n) {
  const w = (W - PAD_L) / Math.max(n, 1);
  return { x: PAD_L + i * w, w };
}

function ys(v, max) {
  return H - PAD_B - (v / (max || 1)) * (H - PAD_B - PAD_T);
}

function outcomeClass(o) {
  return OUTCOME_COLORS[o] || (o === "succeeded" ? "ok" : "bad");
}

function legend(id, items) {
  const n = $(id);
  n.replaceChildren(...items.map(([cls, label]) => {
    const s = el("span", "key");
    s.append(el("i", "swatch " + cls), label);
    return s;
  }));
}

function renderCharts() {
  const b = state.stats;
  const secs = b.length ? (b[0].end_ms - b[0].start_ms) / 1000 : 5;
  // Executions per second by outcome: stacked bars (succeeded, cancelled, other failures).
  const groups = b.map((k) => {
    const g = { succeeded: 0, cancelled: 0, failed: 0 };
    for (const [o, n] of Object.entries(k.outcomes || {})) {
      if (o === "succeeded") g.succeeded += n;
      else if (o === "cancelled") g.cancelled += n;
      else g.failed += n;
    }
    return g;
  });
  const maxRate = Math.max(0.2, ...groups.map((g) => (g.succeeded + g.cancelled + g.failed) / secs));
  const c1 = $("chart-outcomes");
  frame(c1, maxRate, "/s");
  groups.forEach((g, i) => {
    const { x, w } = xs(i, 120);
    let acc = 0;
    for (const o of ["succeeded", "cancelled", "failed"]) {
      const v = g[o] / secs;
      if (!v) continue;
      const top = ys(acc + v, maxRate), bottom = ys(acc, maxRate);
      c1.append(svg("rect", { x: x + 0.5, y: top, width: Math.max(w - 1, 1), height: bottom - top, class: "fill " + outcomeClass(o) }));
      acc += v;
    }
  });
  legend("legend-outcomes", [["ok", "succeeded"], ["muted", "cancelled"], ["bad", "failed"]]);

  // TTFT percentiles: one polyline per percentile.
  const ttft = $("chart-ttft");
  const maxT = Math.max(10, ...b.map((k) => (k.ttft_ms ? k.ttft_ms.p99 : 0)));
  frame(ttft, maxT, " ms");
  for (const [p, cls] of [["p50", "ok"], ["p90", "warn"], ["p99", "bad"]]) {
    const pts = [];
    b.forEach((k, i) => {
      if (!k.ttft_ms) return;
      const { x, w } = xs(i, 120);
      pts.push((x + w / 2).toFixed(1) + "," + ys(k.ttft_ms[p], maxT).toFixed(1));
    });
    if (pts.length === 1) pts.push(pts[0]);
    if (pts.length) ttft.append(svg("polyline", { points: pts.join(" "), class: "line " + cls }));
  }
  legend("legend-ttft", [["ok", "p50"], ["warn", "p90"], ["bad", "p99"]]);

  // Running (bars) and queued (line) against the limit (dashed).
  const load = $("chart-load");
  const limit = b.length ? b[b.length - 1].limit : 0;
  const maxL = Math.max(1, limit, ...b.map((k) => k.running_max + k.queued_max));
  frame(load, maxL, "");
  b.forEach((k, i) => {
    const { x, w } = xs(i, 120);
    const top = ys(k.running_max, maxL);
    if (k.running_max) load.append(svg("rect", { x: x + 0.5, y: top, width: Math.max(w - 1, 1), height: H - PAD_B - top, class: "fill accent" }));
    if (k.queued_max) {
      const qt = ys(k.running_max + k.queued_max, maxL);
      load.append(svg("rect", { x: x + 0.5, y: qt, width: Math.max(w - 1, 1), height: top - qt, class: "fill warn" }));
    }
  });
  if (limit) {
    const y = ys(limit, maxL);
    load.append(svg("line", { x1: PAD_L, y1: y, x2: W, y2: y, class: "limit" }));
  }
  legend("legend-load", [["accent", "running (max per 5 s)"], ["warn", "queued"], ["limit-key", "limit " + (limit || "–")]]);
}

// === perspectives playground ===

const DEFAULT_TARGETS = ["openai", "anthropic", "google"];

function addTarget(provider) {
  const node = $("tpl-target").content.firstElementChild.cloneNode(true);
  node.querySelector(".t-provider").value = provider || "openai";
  node.querySelector(".t-remove").addEventListener("click", () => node.remove());
  $("pg-targets").append(node);
}

function makeColumn(i, t) {
  const node = $("tpl-column").content.firstElementChild.cloneNode(true);
  node.dataset.target = String(i);
  node.querySelector(".c-title").textContent = t.provider + (t.model ? " · " + t.model : "");
  const q = (c) => node.querySelector(c);
  return {
    node,
    id: null,
    seq: 0,
    started: performance.now(),
    firstAt: null,
    endAt: null,
    usage: null,
    done: false,
    status: q(".c-status"),
    stats: q(".c-stats"),
    error: q(".c-error"),
    cancel: q(".c-cancel"),
    sink: eventSink({
      text: q(".c-text"),
      reasoningBox: q(".c-reasoning-box"),
      reasoning: q(".c-reasoning"),
      refusal: q(".c-refusal"),
      tools: q(".c-tools"),
      other: q(".c-other"),
    }),
  };
}

function setStatus(col, status) {
  col.status.textContent = status;
  col.status.className = "badge c-status " + status;
  col.node.dataset.status = status;
}

function columnStats(col, finish) {
  const parts = [];
  if (col.firstAt !== null) parts.push("TTFT " + ms(col.firstAt - col.started));
  if (col.usage) {
    parts.push(col.usage.input_tokens + " in / " + col.usage.output_tokens + " out");
    const end = col.endAt || performance.now();
    const secs = col.firstAt !== null ? (end - col.firstAt) / 1000 : 0;
    if (secs > 0 && col.usage.output_tokens) parts.push((col.usage.output_tokens / secs).toFixed(1) + " tok/s");
  }
  if (finish) parts.push("finish: " + finish);
  col.stats.textContent = parts.join(" · ");
}

function onColumnEvent(col, type, d) {
  if (type === "start" && d.execution_id) {
    col.id = d.execution_id;
    col.node.dataset.executionId = d.execution_id;
    setStatus(col, "running");
  }
  if ((type === "text" || type === "reasoning" || type === "refusal" || type === "tool_call") && col.firstAt === null) {
    col.firstAt = performance.now();
  }
  col.sink(type, d);
  if (type === "usage") col.usage = d;
  if (type === "end") {
    col.done = true;
    col.endAt = performance.now();
    setStatus(col, "succeeded");
    col.cancel.disabled = true;
    columnStats(col, d.finish_reason);
    return;
  }
  if (type === "error") {
    col.done = true;
    col.endAt = performance.now();
    setStatus(col, d.kind === "cancelled" ? "cancelled" : "failed");
    if (d.kind !== "cancelled") col.error.textContent = d.kind + ": " + (d.message || "");
    col.cancel.disabled = true;
    columnStats(col, null);
    return;
  }
  columnStats(col, null);
}

async function cancelColumn(col) {
  if (!col.id || col.done) return;
  col.cancel.disabled = true;
  try {
    const res = await api("/v1/executions/" + encodeURIComponent(col.id), { method: "DELETE" });
    if (!res.ok && res.status !== 202) col.error.textContent = "cancel: " + (await errorText(res));
  } catch (e) {
    if (e instanceof Unauthorized) signOut("The controller no longer accepts this token (401 Unauthorized). Enter it again.");
  }
}

async function ask(ev) {
  ev.preventDefault();
  $("pg-error").textContent = "";
  const targets = [...document.querySelectorAll("#pg-targets .target")].map((n) => ({
    provider: n.querySelector(".t-provider").value,
    model: n.querySelector(".t-model").value.trim(),
    key: n.querySelector(".t-key").value,
  }));
  if (!targets.length) {
    $("pg-error").textContent = "Add at least one target.";
    return;
  }
  const body = {
    user_id: $("pg-user").value.trim() || "console",
    prompt: $("pg-prompt").value,
    targets: targets.map((t) => {
      const o = { provider: t.provider, credentials: { api_key: t.key } };
      if (t.model) o.model = t.model;
      return o;
    }),
  };
  const system = $("pg-system").value.trim();
  if (system) body.system = system;
  const max = parseInt($("pg-max").value, 10);
  if (max > 0) body.max_tokens = max;

  const cols = targets.map((t, i) => makeColumn(i, t));
  $("pg-columns").replaceChildren(...cols.map((c) => c.node));
  for (const c of cols) c.cancel.addEventListener("click", () => cancelColumn(c));
  $("pg-ask").disabled = true;
  const ctl = new AbortController();
  try {
    const res = await api("/v1/perspectives", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
      signal: ctl.signal,
    });
    if (!res.ok) {
      $("pg-error").textContent = "The controller refused the request: " + (await errorText(res));
      for (const c of cols) { setStatus(c, "failed"); c.cancel.disabled = true; }
      return;
    }
    for (const c of cols) setStatus(c, "queued");
    try {
      await readSse(res, (e) => {
        const d = parse(e.data);
        if (!d || e.event === "done") return;
        const col = cols[d.target];
        if (!col) return;
        if (d.seq) col.seq = d.seq;
        onColumnEvent(col, e.event, d);
      });
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
    }
    // The shared stream dropped before every target ended: resume each one on its own.
    await Promise.all(cols.filter((c) => !c.done && c.id).map((c) =>
      follow(c.id, c.seq, (type, d) => onColumnEvent(c, type, d), new AbortController().signal)));
  } catch (e) {
    if (e instanceof Unauthorized) signOut("The controller no longer accepts this token (401 Unauthorized). Enter it again.");
    else $("pg-error").textContent = "Request failed: " + e.message;
  } finally {
    $("pg-ask").disabled = false;
  }
}

// === wiring ===

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", signIn);
  $("signout").addEventListener("click", () => signOut(""));
  $("detail-close").addEventListener("click", closeDetail);
  $("pg-form").addEventListener("submit", ask);
  $("pg-add").addEventListener("click", () => addTarget("openai"));
  for (const p of DEFAULT_TARGETS) addTarget(p);
  const body = $("executions").tBodies[0];
  body.addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-id]");
    if (tr) openDetail(tr.dataset.id);
  });
  body.addEventListener("keydown", (e) => {
    const tr = e.target.closest("tr[data-id]");
    if (tr && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); openDetail(tr.dataset.id); }
  });
  window.addEventListener("hashchange", route);
  renderCharts();
  route();
});
