// The voice console: the microphone over WebRTC (WHIP) to the daemon, its events back on
// the "events" data channel, rendered live. Every server string goes in as text.
"use strict";

// With tokens configured, open the page as /console#token=<token>: the fragment never
// leaves the browser, and the token goes out only as an Authorization header.
const token = new URLSearchParams(location.hash.slice(1)).get("token");
const auth = token ? { Authorization: `Bearer ${token}` } : {};
// Page options: ?processing= chooses the browser's voice processing: "echo" (default: echo
// cancellation only, so the bot's own voice from the speakers is not heard as the user),
// "all" (plus noise suppression and gain control: Whisper is trained on noisy speech, and
// their artefacts cost words), "off". Every other query parameter is a session parameter
// for /whip (partials=false, vad.minSilenceMs=300, ...).
const pageParams = new URLSearchParams(location.search);
const processing = pageParams.get("processing") || "echo";
pageParams.delete("processing");

const $ = (id) => document.getElementById(id);
$("monitor-link").href = `/monitor${location.hash}`;

const MAX_LOG = 300;
const GATHER_TIMEOUT_MS = 3000;
const CLOSE_TIMEOUT_MS = 30000;

// State the page keeps, readable by tests and by a curious person in the devtools.
const state = {
  phase: "idle", sessionId: null, resource: null, finals: [], turns: [], interruptions: 0,
  messages: 0, closed: null, error: null, health: null,
};
window.alfredConsole = state;

let pc = null;
let channel = null;
let stream = null;
let statusTimer = null;

function setState(text, isError = false) {
  $("state").textContent = text;
  $("state").className = isError ? "error" : "";
}

function fmtOffset(ms) { return `${(ms / 1000).toFixed(2)} s`; }

function logLine(text) {
  const li = document.createElement("li");
  li.textContent = text;
  const log = $("log");
  log.prepend(li);
  while (log.childElementCount > MAX_LOG) log.lastElementChild.remove();
}

function transcriptLine(cls, text, meta) {
  const li = document.createElement("li");
  li.className = cls;
  li.textContent = text;
  if (meta) {
    const span = document.createElement("span");
    span.className = "meta";
    span.textContent = `  ${meta}`;
    li.append(span);
  }
  $("transcript").append(li);
  li.scrollIntoView({ block: "nearest" });
}

function setPartial(stable, rest) {
  $("partial-stable").textContent = stable;
  $("partial-rest").textContent = rest;
}

function speech(cls, text) {
  $("speech").className = cls;
  $("speech").textContent = text;
}

// One message of the events channel: the WebSocket bridge's JSON (spec names, camelCase).
function onEvent(ev) {
  state.messages += 1;
  const at = typeof ev.audioOffsetMs === "number" ? fmtOffset(ev.audioOffsetMs) : "";
  switch (ev.type) {
    case "sessionStarted":
      state.sessionId = ev.sessionId;
      $("session").textContent = `session ${String(ev.sessionId).slice(0, 12)} (${ev.transport})`;
      logLine(`session started (${ev.sampleRate} Hz)`);
      break;
    case "speechStart":
      speech("speaking", "speaking");
      logLine(`${at} speech start`);
      break;
    case "speechEnd":
      speech("silent", "silence");
      logLine(`${at} speech end (${ev.durationMs} ms)`);
      break;
    case "partialTranscription": {
      // The stable part (words three hypotheses agreed on) is what every later partial
      // and the final start with; the rest may still change.
      const stable = String(ev.stableText || "");
      const text = String(ev.text || "");
      setPartial(stable, text.slice(stable.length));
      break;
    }
    case "finalTranscription":
      state.finals.push(String(ev.text));
      setPartial("", "");
      transcriptLine("final", String(ev.text), `${at} · decoded in ${Math.round(ev.processingMs)} ms`);
      logLine(`${at} final: ${ev.text}`);
      break;
    case "turnEnd": {
      const p = typeof ev.probability === "number" ? ev.probability.toFixed(2) : "-";
      state.turns.push({ probability: ev.probability ?? null, reason: ev.reason,
                         transcript: ev.transcript });
      transcriptLine("turn", `— end of turn (p=${p}, ${ev.reason})`, at);
      logLine(`${at} end of turn p=${p} (${ev.reason})`);
      break;
    }
    case "turnResumed":
      logLine(`${at} turn resumed`);
      break;
    case "interruption":
      state.interruptions += 1;
      speech("interrupted", "interruption!");
      transcriptLine("interruption", "⚡ interruption: the user spoke over the bot", at);
      logLine(`${at} interruption`);
      break;
    case "pipelineHealth":
      state.health = ev.health;
      $("health").textContent = `health ${ev.health} · load ${(+ev.load).toFixed(2)} · ` +
        `backpressure ${ev.backpressureLevel}`;
      $("lag").textContent = `lag ${Math.round(ev.lagMs)} ms`;
      break;
    case "sessionClosed":
      state.closed = ev.reason;
      logLine(`${at} session closed (${ev.reason})`);
      break;
    case "error":
      state.error = ev.message;
      setState(`error: ${ev.message}`, true);
      logLine(`error ${ev.code}: ${ev.message}`);
      break;
    default:
      logLine(`${at} ${ev.type}`);
  }
}

function waitForGathering(peer) {
  // Non-trickle WHIP: the offer goes out with its candidates, once gathered (bounded).
  return new Promise((resolve) => {
    if (peer.iceGatheringState === "complete") { resolve(); return; }
    const timer = setTimeout(resolve, GATHER_TIMEOUT_MS);
    peer.addEventListener("icegatheringstatechange", () => {
      if (peer.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
}

async function pollStatus() {
  if (!state.sessionId || state.closed) return;
  try {
    const r = await fetch(`/session/${encodeURIComponent(state.sessionId)}/status`,
                          { headers: auth });
    if (!r.ok) return;
    const s = await r.json();
    $("audio").textContent = `${(+s.audioS).toFixed(1)} s heard · ${s.windowsQueued} windows queued`;
    $("lag").textContent = `lag ${Math.round(s.lagMs)} ms`;
  } catch (e) {
    // The next poll tries again; the events channel says if the session ended.
  }
}

async function start() {
  $("start").disabled = true;
  state.phase = "starting";
  setState("asking for the microphone…");
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: {
      echoCancellation: processing !== "off",
      noiseSuppression: processing === "all",
      autoGainControl: processing === "all",
    } });
    pc = new RTCPeerConnection();
    pc.addTransceiver(stream.getAudioTracks()[0], { direction: "sendonly" });
    channel = pc.createDataChannel("events");
    channel.onmessage = (e) => {
      try { onEvent(JSON.parse(e.data)); } catch (err) { logLine(`unreadable message: ${err}`); }
    };
    pc.onconnectionstatechange = () => {
      if (!pc) return;
      const st = pc.connectionState;
      if (st === "connected") setState("live: speak, the daemon listens");
      else if (st === "failed") {
        setState("the WebRTC connection failed: can this browser reach the daemon's " +
                 "webrtc.host? (behind NAT: see the README on TURN)", true);
      } else if (state.phase === "live") setState(`live: ${st}`);
    };
    await pc.setLocalDescription(await pc.createOffer());
    setState("connecting…");
    await waitForGathering(pc);
    const query = pageParams.toString();
    const r = await fetch(`/whip${query ? `?${query}` : ""}`, {
      method: "POST", headers: { ...auth, "Content-Type": "application/sdp" },
      body: pc.localDescription.sdp,
    });
    if (r.status !== 201) {
      let message = `HTTP ${r.status}`;
      try { message = (await r.json()).error.message; } catch (e) { /* status only */ }
      if (r.status === 401) message = "a token is needed: open /console#token=…";
      throw new Error(message);
    }
    state.resource = r.headers.get("Location");
    await pc.setRemoteDescription({ type: "answer", sdp: await r.text() });
    state.phase = "live";
    setState("live: connecting the audio…");
    $("stop").disabled = false;
    $("bot").disabled = false;
    statusTimer = setInterval(pollStatus, 1000);
  } catch (err) {
    state.error = String(err.message || err);
    setState(`could not start: ${state.error}`, true);
    teardown();
    $("start").disabled = false;
  }
}

function waitClosed(ms) {
  return new Promise((resolve) => {
    const began = Date.now();
    const timer = setInterval(() => {
      if (state.closed !== null || Date.now() - began > ms) { clearInterval(timer); resolve(); }
    }, 100);
  });
}

function teardown() {
  if (statusTimer) clearInterval(statusTimer);
  statusTimer = null;
  if (pc) pc.close();
  pc = null;
  channel = null;
  if (stream) stream.getTracks().forEach((t) => t.stop());
  stream = null;
  $("stop").disabled = true;
  $("bot").disabled = true;
  $("bot").checked = false;
}

async function stop() {
  $("stop").disabled = true;
  state.phase = "stopping";
  setState("finishing: the last words and the end of turn…");
  try {
    // DELETE ends the session: its last finals and turn end arrive on the channel first.
    if (state.resource) await fetch(state.resource, { method: "DELETE", headers: auth });
    await waitClosed(CLOSE_TIMEOUT_MS);
  } finally {
    teardown();
    state.phase = "stopped";
    setState(`stopped (session ${state.closed ?? "ended"})`);
    $("start").disabled = false;
  }
}

function sendControl(action) {
  if (channel && channel.readyState === "open") {
    channel.send(JSON.stringify({ type: "control", action }));
    logLine(`sent ${action}`);
  }
}

$("start").addEventListener("click", () => {
  // A new run: the previous one's transcript stays on screen, its state is reset.
  Object.assign(state, { sessionId: null, resource: null, finals: [], turns: [],
                         interruptions: 0, closed: null, error: null });
  start();
});
$("stop").addEventListener("click", stop);
$("bot").addEventListener("change", (e) => {
  sendControl(e.target.checked ? "playback_started" : "playback_stopped");
});
