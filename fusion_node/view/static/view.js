// fusion view: follows the server's event stream (Server-Sent Events) and draws the rig.
"use strict";

const $ = (id) => document.getElementById(id);
const camera = $("camera");
const cctx = camera.getContext("2d");
const radarTop = $("radar-top");
const rctx = radarTop.getContext("2d");
const spectro = $("spectrogram");
const sctx = spectro.getContext("2d");

const state = { picture: null, projected: null, labels: [], t0: null, latency: {}, stats: {} };
const STAGES = ["receive", "sync_wait", "preprocess", "encode_camera", "encode_radar", "encode_audio",
                "head", "publish", "e2e"];

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child);
  return node;
}

function seconds(tNs) {
  if (tNs === null || tNs === undefined) return "";
  if (state.t0 === null) state.t0 = tNs;
  return "+" + ((tNs - state.t0) / 1e9).toFixed(1) + " s";
}

// Doppler colour: approaching (negative) red, receding blue, static grey-green.
function dopplerColour(v) {
  const a = Math.min(1, Math.abs(v) / 2);
  if (v < -0.05) return `rgb(255, ${Math.round(200 - 150 * a)}, ${Math.round(80 - 60 * a)})`;
  if (v > 0.05) return `rgb(${Math.round(120 - 80 * a)}, ${Math.round(180 - 60 * a)}, 255)`;
  return "rgb(150, 230, 160)";
}

// Spectrogram palette: dark blue -> purple -> orange -> pale yellow.
const STOPS = [[0, 0, 8], [60, 15, 110], [180, 50, 100], [250, 140, 40], [255, 250, 190]];
function palette(v) {
  const x = (v / 255) * (STOPS.length - 1);
  const i = Math.min(STOPS.length - 2, Math.floor(x));
  const f = x - i;
  const c = STOPS[i].map((s, k) => Math.round(s + (STOPS[i + 1][k] - s) * f));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

function drawCamera() {
  const img = state.picture;
  if (!img) return;
  if (camera.width !== img.naturalWidth || camera.height !== img.naturalHeight) {
    camera.width = img.naturalWidth;
    camera.height = img.naturalHeight;
  }
  cctx.drawImage(img, 0, 0, camera.width, camera.height);
  const proj = state.projected;
  let shown = 0;
  if (proj && proj.points.length) {
    const sx = camera.width / proj.image_size[0], sy = camera.height / proj.image_size[1];
    for (const [u, v, range, doppler] of proj.points) {
      const r = Math.max(3, 9 - range);
      cctx.beginPath();
      cctx.arc(u * sx, v * sy, r, 0, 2 * Math.PI);
      cctx.fillStyle = dopplerColour(doppler);
      cctx.globalAlpha = 0.85;
      cctx.fill();
      cctx.globalAlpha = 1;
      cctx.strokeStyle = "#000";
      cctx.stroke();
      shown += 1;
    }
  }
  camera.dataset.radarPoints = String(shown);
  // The event's labels as tags on the picture (events classify the scene; they carry no boxes).
  let y = 12;
  cctx.font = "bold 18px system-ui, sans-serif";
  for (const d of state.labels) {
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const w = cctx.measureText(text).width + 16;
    cctx.fillStyle = "rgba(79, 179, 255, 0.85)";
    cctx.fillRect(12, y, w, 28);
    cctx.fillStyle = "#001423";
    cctx.fillText(text, 20, y + 20);
    y += 34;
  }
}

function drawRadarTop(points) {
  const w = radarTop.width, h = radarTop.height, maxRange = 10;
  rctx.fillStyle = "#000";
  rctx.fillRect(0, 0, w, h);
  rctx.strokeStyle = "#2a3038";
  rctx.fillStyle = "#7d8791";
  rctx.font = "10px system-ui, sans-serif";
  for (let r = 2; r <= maxRange; r += 2) {
    rctx.beginPath();
    rctx.arc(w / 2, h - 4, (r / maxRange) * (h - 8), Math.PI, 2 * Math.PI);
    rctx.stroke();
    rctx.fillText(`${r} m`, w / 2 + 3, h - 4 - (r / maxRange) * (h - 8) + 10);
  }
  const scale = (h - 8) / maxRange;
  for (const [x, yFwd, doppler] of points) {
    rctx.beginPath();
    rctx.arc(w / 2 + x * scale, h - 4 - yFwd * scale, 3, 0, 2 * Math.PI);
    rctx.fillStyle = dopplerColour(doppler);
    rctx.fill();
  }
}

function showLabels(ev) {
  const list = $("labels");
  list.replaceChildren();
  if (!ev.labels.length) list.append(el("li", { class: "none" }, "no detection"));
  for (const d of ev.labels) {
    const bar = el("div", { class: "bar" }, el("div", { style: `width: ${Math.round(d.score * 100)}%` }));
    list.append(el("li", {}, el("span", {}, d.label), bar, el("span", {}, d.score.toFixed(2))));
  }
  const alerts = $("alerts");
  alerts.replaceChildren(...ev.alerts.map((a) => el("span", {}, a)));
  const cons = ev.consistency === null || ev.consistency === undefined ? "" : ` consistency ${ev.consistency.toFixed(2)}`;
  const missing = ev.missing.length ? ` missing ${ev.missing.join(", ")}` : "";
  $("event-info").textContent = `event ${ev.seq} ${seconds(ev.t_ref_ns)}${cons}${missing}`;
}

function showLatency() {
  const body = $("latency").tBodies[0];
  body.replaceChildren();
  const stages = STAGES.filter((s) => s in state.latency || s in state.stats);
  const top = Math.max(1, ...stages.map((s) => state.latency[s] || 0));
  for (const s of stages) {
    const last = state.latency[s];
    const pct = state.stats[s];
    const bar = el("div", { class: "bar", style: `width: ${Math.round(((last || 0) / top) * 100)}%` });
    body.append(el("tr", { "data-stage": s }, el("td", {}, s), el("td", { style: "width: 40%" }, bar),
      el("td", { class: "num" }, last === undefined ? "-" : last.toFixed(2)),
      el("td", { class: "num" }, pct ? `${pct.p50.toFixed(1)} / ${pct.p99.toFixed(1)}` : "")));
  }
}

function showSensors(stats) {
  const body = $("sensors").tBodies[0];
  body.replaceChildren();
  for (const [sid, s] of Object.entries(stats.sensors)) {
    // A sensor that ended its stream on purpose (a finished recording, a stop) is not a dead one.
    const state = s.alive ? "alive" : s.ended ? `ended (${s.ended.replace("_", " ")})` : "dead";
    body.append(el("tr", { class: s.alive || s.ended ? "" : "dead" }, el("td", {}, sid), el("td", {}, s.kind),
      el("td", { class: "num" }, `${(s.rate_hz || 0).toFixed(1)} Hz`),
      el("td", { class: "num" }, `dropped ${s.dropped} rejected ${s.rejected}`),
      el("td", {}, state)));
  }
}

function addTimeline(item) {
  const list = $("timeline");
  const snap = item.snapshot ? el("img", { src: `snapshot/${item.snapshot}.jpg`, alt: "snapshot" }) : el("span");
  const score = item.score === null || item.score === undefined ? "" : ` ${item.score.toFixed(2)}`;
  list.prepend(el("li", { class: item.kind }, el("span", {}, seconds(item.t_ns)), el("span", {}, item.kind),
    el("span", {}, item.what + score), snap));
  while (list.children.length > 50) list.lastChild.remove();
}

function connect() {
  const events = new EventSource("events");
  const status = $("status");
  events.onopen = () => { status.textContent = "live"; status.className = "status on"; };
  events.onerror = () => { status.textContent = "reconnecting"; status.className = "status off"; };
  events.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    $("rig").textContent = hello.rigs.map((r) => `${r.rig}: ${r.sensors.map((s) => s.id).join(", ")}`).join(" | ");
    $("timeline").replaceChildren();
    for (const item of hello.timeline) addTimeline(item);
  });
  events.addEventListener("frame", (e) => {
    const d = JSON.parse(e.data);
    const img = new Image();
    img.onload = () => {
      state.picture = img;
      drawCamera();
      camera.dataset.frames = String(Number(camera.dataset.frames) + 1);
      $("camera-info").textContent = `${d.sensor_id} ${d.width || img.naturalWidth}x${d.height || img.naturalHeight}`;
    };
    img.src = "data:image/jpeg;base64," + d.jpeg;
  });
  events.addEventListener("radar", (e) => {
    const d = JSON.parse(e.data);
    state.projected = d.projected || null;
    drawRadarTop(d.points);
    drawCamera();
    radarTop.dataset.frames = String(Number(radarTop.dataset.frames) + 1);
    $("radar-info").textContent = `${d.sensor_id}: ${d.points.length} points` +
      (d.projected ? `, ${d.projected.points.length} in the picture` : ", no calibration: not projected");
  });
  events.addEventListener("audio", (e) => {
    const d = JSON.parse(e.data);
    const fill = $("audio-level").firstElementChild;
    fill.style.width = `${Math.max(0, Math.min(100, (d.level_db + 60) / 60 * 100))}%`;
    $("audio-info").textContent = `${d.sensor_id} ${d.level_db.toFixed(1)} dBFS peak ${d.peak.toFixed(2)}`;
    const n = d.columns.length;
    if (!n) return;
    sctx.drawImage(spectro, -n, 0);
    const bandH = spectro.height / d.columns[0].length;
    d.columns.forEach((col, i) => {
      const x = spectro.width - n + i;
      col.forEach((v, b) => {
        sctx.fillStyle = palette(v);
        sctx.fillRect(x, spectro.height - (b + 1) * bandH, 1, Math.ceil(bandH));
      });
    });
    spectro.dataset.columns = String(Number(spectro.dataset.columns) + n);
  });
  events.addEventListener("fused", (e) => {
    const ev = JSON.parse(e.data);
    state.labels = ev.labels;
    state.latency = ev.latency_ms;
    showLabels(ev);
    showLatency();
    drawCamera();
  });
  events.addEventListener("stats", (e) => {
    const stats = JSON.parse(e.data);
    state.stats = stats.latency_ms;
    showSensors(stats);
    showLatency();
  });
  events.addEventListener("timeline", (e) => addTimeline(JSON.parse(e.data)));
}

connect();
