// c2p-stream live page: one websocket to /ws on the same host; see the README for the messages.
"use strict";

const TIMELINE_CELLS = 60;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#b07aa1",
                 "#76b7b2", "#edc948", "#ff9da7", "#9c755f", "#bab0ac"];
const TREND_ARROWS = { rising: "↑", falling: "↓", flat: "→" };
const DIRECTION_DEG = { "north": 0, "north-east": 45, "east": 90, "south-east": 135,
                        "south": 180, "south-west": 225, "west": 270, "north-west": 315 };

const params = new URLSearchParams(location.search);
const streamFilter = params.get("stream");
const $ = (id) => document.getElementById(id);
let gaps = 0;
let ended = false;
let retryMs = 500;

function feedUrl() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const token = params.get("token");
  return `${scheme}://${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : "");
}

function setStatus(text, cls) {
  const el = $("status");
  el.textContent = text;
  el.className = `status ${cls}`;
}

function colour(cluster) { return PALETTE[cluster % PALETTE.length]; }

function showModel(model) {
  if (!model || typeof model !== "object") return;
  const parts = Object.entries(model)
    .filter(([, v]) => ["string", "number", "boolean"].includes(typeof v))
    .slice(0, 6).map(([k, v]) => `${k}=${v}`);
  $("model").textContent = parts.join("  ");
}

function drawContour(canvas, values, cluster) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#3a4150";
  ctx.beginPath(); ctx.moveTo(0, h / 2); ctx.lineTo(w, h / 2); ctx.stroke();
  if (!Array.isArray(values) || values.length < 2) return;
  const span = Math.max(0.2, ...values.map((v) => Math.abs(v || 0))) * 1.1;
  ctx.strokeStyle = colour(cluster);
  ctx.lineWidth = 2.5;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = (i / (values.length - 1)) * w;
    const y = h / 2 - ((v || 0) / span) * (h / 2);
    if (i === 0) ctx.moveTo(x, y); else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function showAttribute(prefix, label, letter) {
  const bars = $(`${prefix}-bars`);
  if (!label) {
    $(`${prefix}-name`).textContent = "no speech";
    $(`${prefix}-cluster`).textContent = "–";
    $(`${prefix}-cluster`).style.background = "";
    $(`${prefix}-trend`).textContent = "";
    drawContour($(`${prefix}-contour`), null, 0);
    bars.replaceChildren();
    return;
  }
  $(`${prefix}-name`).textContent = label.name;
  $(`${prefix}-cluster`).textContent = `${letter}${label.cluster + 1}`;
  $(`${prefix}-cluster`).style.background = colour(label.cluster);
  $(`${prefix}-trend`).textContent = TREND_ARROWS[label.trend] || "";
  $(`${prefix}-trend`).title = label.trend;
  drawContour($(`${prefix}-contour`), label.prototype, label.cluster);
  const rows = (label.probabilities || []).map((p, i) => {
    const row = document.createElement("div");
    row.className = "bar-row" + (i === label.cluster ? " chosen" : "");
    const name = document.createElement("span");
    name.className = "bar-name";
    name.textContent = `${letter}${i + 1}`;
    const track = document.createElement("span");
    track.className = "bar-track";
    const fill = document.createElement("span");
    fill.className = "bar-fill";
    fill.style.width = `${Math.max(0, Math.min(1, p || 0)) * 100}%`;
    fill.style.background = colour(i);
    track.append(fill);
    const value = document.createElement("span");
    value.className = "bar-value";
    value.textContent = (p || 0).toFixed(2);
    row.append(name, track, value);
    return row;
  });
  bars.replaceChildren(...rows);
}

function showDirection(direction) {
  $("direction").textContent = direction || "–";
  const deg = DIRECTION_DEG[direction];
  // SVG elements ignore the `hidden` property; use the display attribute.
  $("arrow").setAttribute("display", deg === undefined ? "none" : "inline");
  $("still").setAttribute("display", deg === undefined && direction ? "inline" : "none");
  if (deg !== undefined) $("arrow").setAttribute("transform", `rotate(${deg})`);
}

function pushCell(rowId, label, msg, letter) {
  const row = $(rowId);
  const cell = document.createElement("span");
  cell.className = "cell" + (label ? "" : " silent");
  if (label) cell.style.background = colour(label.cluster);
  cell.title = `#${msg.seq} ${msg.start_s}–${msg.end_s} s: ` +
    (label ? `${letter}${label.cluster + 1} ${label.name}` : "no speech");
  cell.textContent = label ? TREND_ARROWS[label.trend] || "" : "";
  row.append(cell);
  while (row.children.length > TIMELINE_CELLS) row.firstElementChild.remove();
}

function showLabels(msg) {
  if (streamFilter && msg.stream !== streamFilter) return;
  $("seq").textContent = msg.seq;
  $("window").textContent = `${msg.start_s.toFixed(0)}–${msg.end_s.toFixed(0)} s`;
  $("latency").textContent = msg.latency_ms == null ? "–" : `${msg.latency_ms.toFixed(0)} ms`;
  $("level").textContent = msg.level_dbfs == null ? "–" : `${msg.level_dbfs.toFixed(0)} dBFS`;
  $("skipped").textContent = msg.skipped_hops;
  const speech = msg.speech && msg.arousal && msg.valence;
  showAttribute("arousal", speech ? msg.arousal : null, "A");
  showAttribute("valence", speech ? msg.valence : null, "V");
  $("pairing").textContent = speech ? msg.pairing : "no speech";
  showDirection(speech ? msg.direction : null);
  pushCell("timeline-arousal", speech ? msg.arousal : null, msg, "A");
  pushCell("timeline-valence", speech ? msg.valence : null, msg, "V");
}

function onMessage(event) {
  let msg;
  try { msg = JSON.parse(event.data); } catch { return; }
  switch (msg.type) {
    case "hello": showModel(msg.model); setStatus("live", "live"); break;
    case "labels": showLabels(msg); break;
    case "gap": gaps += msg.dropped; $("gaps").textContent = gaps; break;
    case "end":
      ended = true;
      setStatus("ended", "ended");
      $("ended").textContent = `stream ended: ${msg.reason}`;
      $("ended").hidden = false;
      break;
  }
}

function connect() {
  const ws = new WebSocket(feedUrl());
  ws.onopen = () => { retryMs = 500; };
  ws.onmessage = onMessage;
  ws.onclose = (event) => {
    if (ended) return;
    // 1006 without a hello also covers a refused token (HTTP 401 before the upgrade).
    setStatus(`disconnected (${event.code}), retrying in ${Math.round(retryMs / 1000)} s`, "down");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 10000);
  };
}

connect();
