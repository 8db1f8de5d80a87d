"use strict";
// Charts drawn on canvas from the daemon's own history (one sample a second, the last hour).
const SERIES = [
  ["frameTime", "frame time", "ms"], ["throughput", "throughput", "frames/s"],
  ["load", "processing load", ""], ["memory", "memory (PSS)", "MB"],
  ["sessions", "sessions", ""], ["queue", "frames in queue", ""], ["lag", "max lag", "ms"],
];
const history = [];
const charts = {};
window.alfredMonitor = { updates: 0, history };  // for tests and curious operators

for (const [key, title, unit] of SERIES) {
  const box = document.createElement("div");
  box.className = "chart";
  const heading = document.createElement("h2");
  const name = document.createElement("span");
  name.textContent = title;
  const value = document.createElement("span");
  value.id = `v-${key}`;
  heading.append(name, value);
  const canvas = document.createElement("canvas");
  canvas.id = `c-${key}`;
  canvas.width = 720;
  canvas.height = 280;
  box.append(heading, canvas);
  document.getElementById("charts").appendChild(box);
  charts[key] = { canvas: box.querySelector("canvas"), unit };
}

function draw() {
  const last = history.slice(-600);  // 10 minutes on screen; the hour is kept
  for (const [key] of SERIES) {
    const { canvas, unit } = charts[key];
    const ctx = canvas.getContext("2d");
    const w = canvas.width, h = canvas.height, pad = 30;
    ctx.clearRect(0, 0, w, h);
    const values = last.map((s) => s[key]);
    const max = Math.max(1e-9, ...values) * 1.15;
    ctx.strokeStyle = "#2a323c"; ctx.fillStyle = "#6b7a89"; ctx.font = "18px system-ui";
    for (let i = 0; i <= 4; i++) {
      const y = h - pad - (h - 2 * pad) * i / 4;
      ctx.beginPath(); ctx.moveTo(pad + 40, y); ctx.lineTo(w - 10, y); ctx.stroke();
      ctx.fillText((max * i / 4).toFixed(max < 10 ? 2 : 0), 2, y + 6);
    }
    if (values.length > 1) {
      ctx.strokeStyle = "#4ea1ff"; ctx.lineWidth = 3; ctx.beginPath();
      values.forEach((v, i) => {
        const x = pad + 40 + (w - pad - 50) * i / Math.max(1, values.length - 1);
        const y = h - pad - (h - 2 * pad) * v / max;
        i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
      });
      ctx.stroke();
    }
    const cur = values.length ? values[values.length - 1] : 0;
    document.getElementById(`v-${key}`).textContent = `${(+cur).toFixed(2)} ${unit}`;
  }
}

function render(snap) {
  history.push(snap.sample);
  if (history.length > 3600) history.shift();
  window.alfredMonitor.updates += 1;
  window.alfredMonitor.last = snap;
  const banner = document.getElementById("banner");
  banner.className = snap.health;
  const alerts = snap.alerts.map((a) => a.message).join(" · ");
  banner.textContent = `health: ${snap.health}` + (alerts ? ` — ${alerts}` : "");
  document.getElementById("backpressure").textContent = `backpressure: ${snap.backpressure}`;
  const body = document.querySelector("#sessions tbody");
  // Every server-supplied string goes in as text: session ids come from clients.
  body.replaceChildren(...snap.sessions.map((s) => {
    const row = document.createElement("tr");
    for (const text of [String(s.id).slice(0, 12), s.transport, s.state,
                        `${(+s.durationS).toFixed(1)} s`,
                        s.worker ?? "-", s.lastEvent || "-", `${(+s.lagMs).toFixed(0)} ms`]) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      row.append(cell);
    }
    return row;
  }));
  draw();
}

// With tokens configured, open the page as /monitor#token=<token>: the fragment never
// leaves the browser, and the token goes out only as an Authorization header.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { Authorization: `Bearer ${token}` } : {};
// The voice console takes its token the same way: the link carries the fragment along.
document.getElementById("console-link").href = `/console${location.hash}`;
const banner = (text) => { document.getElementById("banner").textContent = text; };

// Server-Sent Events read with fetch (EventSource cannot send a header); reconnects.
async function follow() {
  for (;;) {
    try {
      const r = await fetch("/monitor/stream", { headers: auth });
      if (r.status === 401) { banner("a token is needed: open /monitor#token=…"); return; }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const line = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (line.startsWith("data: ")) render(JSON.parse(line.slice(6)));
        }
      }
    } catch (e) { /* the daemon restarted or the network dropped */ }
    banner("reconnecting…");
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

fetch("/monitor/history", { headers: auth }).then((r) => r.ok ? r.json() : []).then((past) => {
  history.push(...past);
  draw();
  follow();
});

document.getElementById("optimize").addEventListener("click", async () => {
  const out = document.getElementById("optimize-result");
  out.textContent = "optimizing…";
  const r = await fetch("/optimize", { method: "POST",
    headers: { "Content-Type": "application/json", ...auth },
    body: JSON.stringify({ triggerGC: true, cleanupSessions: true, optimizeBuffers: true }) });
  const done = await r.json();
  window.alfredMonitor.optimized = done;
  if (!r.ok) { out.textContent = done.error.message; return; }
  out.textContent = `freed ${done.freedMB} MB (${done.memoryBeforeMB} → ${done.memoryAfterMB} MB), ` +
    `${done.gcCollectedObjects} objects collected, ${done.sessionsCleanedUp} sessions cleaned up`;
});
