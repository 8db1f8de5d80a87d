"""Real-time load, alfred-daemon vs Pipecat: latency percentiles, drops, CPU and PSS vs N.

Usage (``make bench-load`` installs the ``bench`` extra first)::

    python benchmarks/load_bench.py [--profiles realistic,harvard] [--systems alfred,pipecat]
        [--sessions 1,2,4,6,8,10,12,16] [--pipecat-sessions 1,2,4,6,8,10,12]
        [--seconds 40] [--out benchmarks/results]

Both systems get the same audio: session i streams ``loadgen.make_script(1000 + i, S,
profile)`` in 20 ms frames at real-time pace. The ``realistic`` profile (default): real
utterances of 0.4-16 s from ``tests/data/long`` and the Harvard sentences in a seeded order,
1-2 s pauses, a -50 dBFS pink noise floor under everything; ``harvard``: the ten Harvard
sentences, 0.8-2.0 s of digital silence between them (``loadgen`` explains both). Frame k is
due at ``t0 + k x 20 ms``; every latency is measured from that scheduled time (a real
transport delivers audio in real time whether or not the receiver keeps up), on the
client's wall clock:

* partial lag: arrival minus the due time of the last frame the partial covers;
* final latency: arrival minus the due time of the utterance's last speech frame, measured on
  the clean clip (``loadgen.speech_ends``), not taken from either system's VAD;
* end-of-turn latency: arrival of the turn decision (alfred: TurnEnded; Pipecat: the user
  turn handed to the LLM) minus the due time of the turn's last speech frame. Turns Smart
  Turn judged complete are what the bound applies to; turns ended by the 3 s silence
  fallback are counted and reported separately (same model in both systems, so that share
  measures the model on this corpus, not the system);
* frame round trip (alfred, per-window events on): FrameProcessed arrival minus the due time
  of the window's last frame.

Finals and turns are also reported per utterance-length band (``loadgen.BANDS``: seconds of
speech since the previous pause; a turn is banded by its last utterance).

alfred: for each N a fresh ``alfred-daemon serve`` (loopback, free ports) and N gRPC
clients in this process. Frames dropped are the daemon's own ``frames_dropped`` events;
frames unaccounted for (written - analysed - dropped - queued, from each session's status at
its end) must be 0. Pipecat: ``pipecat_runner.py`` runs N pipelines in one process, the way
Pipecat runs them. Both: CPU % and PSS of the system's whole process tree (psutil).

Two judgements (``load_report``): the largest N within the absolute bounds (p95 partial
lag <= 250 ms, final <= 400 ms, end of turn <= 400 ms, 0 frames dropped, no errors; Pipecat
has no partials, so that bound does not apply to it), and the relative one: bounds are
Pipecat's own p95 final and end of turn at N = 1 of the same run +20 %, each system's largest
N within them, their ratio, and alfred's p95s at N = 6 over N = 1. Per profile, writes
``load_bench_<profile>.json`` (every raw figure), ``.md`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alfred_client import AsyncClient, SessionOptions, StreamError
from alfred_client import pb as alfred_pb
from load_report import (
    host_info,
    host_line,
    judge,
    largest_within,
    markdown,
    plot,
    pss_at,
    relative_judgement,
)
from loadgen import (
    BANDS,
    BOUNDS,
    FRAME_S,
    PROFILES,
    RATE,
    REPO,
    Script,
    band,
    make_script,
    percentiles,
    stop_like_ctrl_c_on_sigterm,
)

from alfred_daemon.engine.models import ModelsConfig, resolve_all

LATENCIES = ("partial_lag", "final_latency", "turn_latency", "frame_rtt")
BUDGET = ("vad_fall", "end_confirmed", "final_after_end", "turn_after_end")
"""Where an attributed final's latency goes (alfred), in order and summing to it: the VAD's
speech end after the clean one; SpeechEnded's arrival after that (``vad.min_silence_ms``
and the pipeline); the final's arrival after SpeechEnded. And a model-ended turn's arrival
after its last utterance's SpeechEnded."""
TAIL_S = 4.0
"""Silence streamed after each session's script (see ``run_session``)."""
COLLAPSE_MS = 5_000.0
"""A system whose final p95 passes this has collapsed: larger N are not run."""


@dataclass
class SessionResult:
    partial_lag: list[float] = field(default_factory=list)
    final_latency: list[float] = field(default_factory=list)
    turn_latency: list[float] = field(default_factory=list)
    """Turns the model judged complete."""
    final_speech_ms: list[int | None] = field(default_factory=list)
    """Length of the utterance each final latency belongs to (same order)."""
    turn_speech_ms: list[int | None] = field(default_factory=list)
    """Length of the last utterance of each model-ended turn (same order)."""
    fallback_turn_latency: list[float] = field(default_factory=list)
    """Turns ended by the silence fallback."""
    final_model_ms: list[float] = field(default_factory=list)
    """Each final's own ``processing_ms``: the model time spent on it (its decodes)."""
    vad_fall: list[float] = field(default_factory=list)
    end_confirmed: list[float] = field(default_factory=list)
    final_after_end: list[float] = field(default_factory=list)
    turn_after_end: list[float] = field(default_factory=list)
    """These four: see ``BUDGET``."""
    frame_rtt: list[float] = field(default_factory=list)
    frames_sent: int = 0
    frames_dropped: int = 0
    frame_events_shed: int = 0
    """Per-window events the daemon's outbox shed because the client read too slowly
    (``events_shed``)."""
    paused_ms: float = 0.0
    """Audio the daemon analysed at ``pause_processing``, which turns per-window events
    off (from a ``backpressure_triggered`` to it until the next backpressure event or the
    end). Each window has its frame event, was shed, or falls in such a stretch."""
    pause_stretches: int = 0
    unmatched_finals: int = 0
    unmatched_turns: int = 0
    unaccounted: int | None = None
    send_lag_ms_max: float = 0.0
    errors: list[str] = field(default_factory=list)


def last_frame(offset_ms: float) -> int:
    """Index of the 20 ms frame holding the audio that ends at ``offset_ms``."""
    return max(0, math.ceil(offset_ms / (FRAME_S * 1000)) - 1)


async def run_session(target: str, script: Script, res: SessionResult,  # noqa: PLR0912, PLR0915  (one branch per event type timed, as webrtc_bench times them)
                      frame_event_every: int = 1) -> None:
    """One gRPC session streaming ``script`` at real-time pace, timed into ``res``; a
    ``frame_processed`` event every ``frame_event_every`` windows (the frame round trip)."""
    frames = script.frames
    t0 = time.monotonic() + 0.05

    def due(k: int) -> float:
        return t0 + k * FRAME_S

    async def paced() -> AsyncIterator[bytes]:
        # The script, then TAIL_S more at the same pace, as a live call goes on after the
        # last words: the last utterance's final and turn arrive as they would mid-call (the
        # Pipecat runner does the same), not forced by the end of the stream. What follows
        # is the script's own tail: its noise floor continued (digital silence for harvard).
        for k in range(len(frames) + round(TAIL_S / FRAME_S)):
            await asyncio.sleep(max(0.0, due(k) - time.monotonic()))
            res.send_lag_ms_max = max(res.send_lag_ms_max, (time.monotonic() - due(k)) * 1000)
            yield frames[k] if k < len(frames) else script.tail_frame(k - len(frames))
        res.frames_sent = len(frames)
        await asyncio.sleep(0.3)  # let the last windows be analysed before the status read
        try:
            status = json.loads((await client._stub.GetSessionStatus(
                alfred_pb.GetSessionStatusRequest(session_id=client.session_id))).json)
            res.unaccounted = (status["windowsWritten"] - status["windowsAnalysed"]
                               - status["windowsDropped"] - status["windowsQueued"])
        except Exception as exc:  # the figure is then missing, which the report shows
            res.errors.append(f"status: {exc}")

    paused_at: float | None = None
    last_end: int | None = None
    """Speech end of the latest utterance, None if its final could not be attributed: a
    turn is timed from its *last* utterance or not at all (never from an older one)."""
    ended: dict[int, tuple[float, float]] = {}
    """SpeechEnded per utterance id: (arrival, due time of its speech end's frame)."""
    last_ended_at: float | None = None
    async with AsyncClient(target) as client:
        try:
            async for ev in client.stream(paced(), RATE,
                                          options=SessionOptions(
                                              frame_event_every=frame_event_every)):
                now = time.monotonic()
                if ev.type == "frame_processed":
                    res.frame_rtt.append((now - due(last_frame(ev.audio_offset_ms))) * 1000)
                elif ev.type == "partial_transcription":
                    res.partial_lag.append((now - due(last_frame(ev.audio_offset_ms))) * 1000)
                elif ev.type == "speech_ended":
                    ended[int(ev.data["utterance_id"])] = (
                        now, due(last_frame(ev.audio_offset_ms)))
                elif ev.type == "final_transcription":
                    res.final_model_ms.append(ev.processing_ms)
                    last_end = script.utterance_end_for(last_frame(ev.audio_offset_ms))
                    ended_at = ended.pop(int(ev.data.get("utterance_id", -1)), None)
                    last_ended_at = None
                    if last_end is None:
                        res.unmatched_finals += 1  # e.g. the first piece of a split utterance
                    else:
                        res.final_latency.append((now - due(last_end)) * 1000)
                        res.final_speech_ms.append(script.speech_ms_for(last_end))
                        if ended_at is not None:
                            last_ended_at, vad_end_due = ended_at
                            res.vad_fall.append((vad_end_due - due(last_end)) * 1000)
                            res.end_confirmed.append((last_ended_at - vad_end_due) * 1000)
                            res.final_after_end.append((now - last_ended_at) * 1000)
                elif ev.type == "turn_ended":
                    if last_end is None:
                        res.unmatched_turns += 1
                        continue
                    latency = (now - due(last_end)) * 1000
                    reason = ev.data.get("reason")
                    if reason == "model":
                        res.turn_latency.append(latency)
                        res.turn_speech_ms.append(script.speech_ms_for(last_end))
                        if last_ended_at is not None:
                            res.turn_after_end.append((now - last_ended_at) * 1000)
                    elif reason == "silence_fallback":
                        res.fallback_turn_latency.append(latency)
                elif ev.type == "frames_dropped":
                    res.frames_dropped += int(ev.data.get("frames", 0))
                elif ev.type == "events_shed":
                    res.frame_events_shed += int(ev.data.get("frame_events", 0))
                elif ev.type in ("backpressure_triggered", "backpressure_recovered"):
                    if paused_at is not None:
                        res.paused_ms += ev.audio_offset_ms - paused_at
                        paused_at = None
                    if ev.data.get("action") == "pause_processing":
                        paused_at = ev.audio_offset_ms
                        res.pause_stretches += 1
                elif ev.type == "session_closed" and paused_at is not None:
                    res.paused_ms += ev.audio_offset_ms - paused_at
                    paused_at = None
        except StreamError as exc:
            res.errors.append(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TreeSampler:
    """CPU % and PSS of a process and its descendants, sampled every second while running
    (CPU also at start and stop; a process that exits in between keeps its last sample)."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.pss_mb: list[float] = []
        self._cpu_start: dict[str, float] = {}
        self._t_start = 0.0
        self.cpu_by_process: dict[str, float] = {}
        self._last_cpu: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def _tree(self) -> list[psutil.Process]:
        with contextlib.suppress(psutil.Error):
            return [self.root, *self.root.children(recursive=True)]
        return []

    def _cpu_by_process(self) -> dict[str, float]:
        """CPU seconds so far per process of the tree, keyed ``name[pid]``."""
        out: dict[str, float] = {}
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                args = p.cmdline()
                role = "worker" if any(a.endswith("runtime.worker") for a in args) else p.name()
                out[f"{role}[{p.pid}]"] = t.user + t.system
        return out

    def _sample_pss(self) -> None:
        total = 0.0
        for p in self._tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss / 2**20
        if total:
            self.pss_mb.append(total)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._last_cpu.update(self._cpu_by_process())
            await asyncio.to_thread(self._sample_pss)

    def start(self) -> None:
        self._cpu_start = self._cpu_by_process()
        self._t_start = time.monotonic()
        self._task = asyncio.create_task(self._loop())

    def stop(self) -> float:
        """Stop sampling; returns the tree's CPU % since :meth:`start` (100 = one core).
        The share of each process is left in :attr:`cpu_by_process`."""
        if self._task is not None:
            self._task.cancel()
        self._sample_pss()
        elapsed = max(1e-6, time.monotonic() - self._t_start)
        # A process that has exited since the last sample keeps its last reading.
        end = self._last_cpu | self._cpu_by_process()
        self.cpu_by_process = {k: round((v - self._cpu_start.get(k, 0.0)) / elapsed * 100.0, 1)
                               for k, v in end.items()}
        return sum(self.cpu_by_process.values())


def summarise(system: str, n: int, seconds: float, results: list[SessionResult]) -> dict[str, Any]:
    merged = {k: [v for r in results for v in getattr(r, k)]
              for k in (*LATENCIES, "fallback_turn_latency", *BUDGET)}
    row: dict[str, Any] = {"system": system, "n": n, "seconds": seconds}
    for k, vals in merged.items():
        row[k] = percentiles(vals)
    row["frames_sent"] = sum(r.frames_sent for r in results)
    row["frames_dropped"] = sum(r.frames_dropped for r in results)
    row["frame_events_shed"] = sum(r.frame_events_shed for r in results)
    row["paused_ms"] = round(sum(r.paused_ms for r in results))
    row["pause_stretches"] = sum(r.pause_stretches for r in results)
    row["frames_unaccounted"] = (sum(r.unaccounted for r in results if r.unaccounted is not None)
                                 if all(r.unaccounted is not None for r in results) else None)
    row["send_lag_ms_max"] = max((r.send_lag_ms_max for r in results), default=0.0)
    row["unmatched_finals"] = sum(r.unmatched_finals for r in results)
    row["unmatched_turns"] = sum(r.unmatched_turns for r in results)
    row["errors"] = [e for r in results for e in r.errors]
    row["raw"] = {k: [round(v, 1) for v in vals] for k, vals in merged.items()}  # 0.1 ms
    row["bands"] = {}
    for metric, lengths in (("final_latency", "final_speech_ms"),
                            ("turn_latency", "turn_speech_ms")):
        pairs = [(ms, v) for r in results
                 for ms, v in zip(getattr(r, lengths), getattr(r, metric), strict=True)]
        row["raw"][lengths] = [ms for ms, _ in pairs]
        for label, _, _ in BANDS:
            vals = [v for ms, v in pairs if ms is not None and band(ms) == label]
            row["bands"].setdefault(label, {})[metric] = percentiles(vals)
    return row


@contextlib.asynccontextmanager
async def running_daemon(*extra: str, http_port: int | None = None,
                         ) -> AsyncIterator[tuple[str, int]]:
    """``alfred-daemon serve`` on loopback ports with a private runtime dir, up once its
    gRPC status answers (bounded: 60 s); yields (gRPC target, pid). SIGTERM on exit.
    ``http_port``: the HTTP port to serve on (default: any free one), for callers that use
    the HTTP surface too (benchmarks/webrtc_bench.py)."""
    workdir = Path(tempfile.mkdtemp(prefix="alfred-load-"))
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "alfred-daemon"), "serve",
         "--listen", f"127.0.0.1:{port}", "--http-port", str(http_port or free_port()),
         "--runtime-dir", str(workdir / "run"), "--log-level", "warning", *extra],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = f"127.0.0.1:{port}"
    try:
        for _ in range(300):  # bounded: 60 s
            try:
                async with AsyncClient(target) as c:
                    await asyncio.wait_for(c.status(), 1.0)
                break
            except Exception:
                await asyncio.sleep(0.2)
        yield target, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)


async def run_alfred(n: int, seconds: float, profile: str) -> dict[str, Any]:
    async with running_daemon() as (target, pid):
        sampler = TreeSampler(pid)
        scripts = [make_script(1000 + i, seconds, profile) for i in range(n)]
        results = [SessionResult() for _ in range(n)]
        sampler.start()
        me = psutil.Process()
        me.cpu_percent(None)
        await asyncio.wait_for(
            asyncio.gather(*(run_session(target, s, r)
                             for s, r in zip(scripts, results, strict=True))),
            timeout=seconds + 60)
        cpu = sampler.stop()
        client_cpu = me.cpu_percent(None)
        async with AsyncClient(target) as c:
            status = await c.status()
    row = summarise("alfred", n, seconds, results)
    row["cpu_percent"] = cpu
    row["cpu_by_process"] = sampler.cpu_by_process
    row["client_cpu_percent"] = client_cpu
    row["pss_mb_peak"] = max(sampler.pss_mb, default=None)
    row["worker_restarts"] = status["counters"]["worker_restarts"]
    row["daemon_counters"] = status["counters"]
    return row


async def run_pipecat(n: int, seconds: float, python: str, profile: str
                      ) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="pipecat-load-")) / "result.json"
    models = resolve_all(ModelsConfig())  # the very files the daemon loads
    proc = await asyncio.create_subprocess_exec(
        python, str(REPO / "benchmarks" / "pipecat_runner.py"), "--sessions", str(n),
        "--seconds", str(seconds), "--profile", profile, "--out", str(out),
        "--whisper", str(models.stt), "--smart-turn", str(models.turn),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    sampler = TreeSampler(proc.pid)
    cpu = None
    try:
        deadline = time.monotonic() + 120 + 10 * n  # model loading, bounded
        while time.monotonic() < deadline:
            line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
            if not line or line.strip() == b"STREAMING":
                break
        sampler.start()
        while True:  # the runner ends itself (seconds + its own bounded tail)
            line = await asyncio.wait_for(proc.stdout.readline(), seconds + 90)
            if not line or line.strip() == b"DONE":
                break
        cpu = sampler.stop()
        await asyncio.wait_for(proc.wait(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    data = json.loads(out.read_text())
    shutil.rmtree(out.parent, ignore_errors=True)
    results = []
    for s in data["sessions"]:
        r = SessionResult(final_latency=s["final_latency"], turn_latency=s["turn_latency"],
                          fallback_turn_latency=s.get("fallback_turn_latency", []),
                          final_speech_ms=s["final_speech_ms"],
                          turn_speech_ms=s["turn_speech_ms"],
                          frames_sent=s["frames_sent"], errors=s["errors"])
        r.send_lag_ms_max = s.get("push_lag_ms_max", 0.0)
        r.unmatched_finals = s.get("unmatched_finals", 0)
        r.unmatched_turns = s.get("unmatched_turns", 0)
        results.append(r)
    row = summarise("pipecat", n, seconds, results)
    row["frames_unaccounted"] = None  # Pipecat keeps no such count
    row["cpu_percent"] = cpu
    row["cpu_by_process"] = sampler.cpu_by_process
    row["pss_mb_peak"] = max(sampler.pss_mb, default=None)
    row["worker_restarts"] = None
    row["pipecat"] = {k: v for k, v in data.items() if k != "sessions"}
    row["pipecat_sessions"] = [{k: v for k, v in s.items() if not isinstance(v, list)}
                               for s in data["sessions"]]
    return row


def sweep(system: str, ns: list[int], run: Callable[[int], dict[str, Any]],
          deadline: float, rows: list[dict[str, Any]]) -> None:
    for n in ns:
        if time.monotonic() > deadline:
            print(f"{system}: time budget spent, N >= {n} not run", flush=True)
            break
        t = time.monotonic()
        row = run(n)
        row["wall_s"] = round(time.monotonic() - t, 1)
        judge(row)
        rows.append(row)
        print(markdown([row]).splitlines()[2], f"({row['wall_s']} s)", flush=True)
        final_p95 = row["final_latency"]["p95"]
        if final_p95 is None or final_p95 > COLLAPSE_MS:
            print(f"{system}: collapsed at N={n} (final p95 {final_p95} ms); "
                  "larger N not run", flush=True)
            break


def run_profile(profile: str, args: argparse.Namespace, host: dict[str, Any]) -> str:
    """Sweep every system over its N on one profile; write its JSON, Markdown and plot.
    Returns the Markdown."""
    systems = args.systems.split(",")
    started = time.monotonic()
    deadline = started + args.budget_min * 60
    rows: list[dict[str, Any]] = []
    print(f"== profile {profile} ==", flush=True)
    if "alfred" in systems:
        ns = [int(x) for x in args.sessions.split(",")]
        sweep("alfred", ns, lambda n: asyncio.run(run_alfred(n, args.seconds, profile)),
              deadline, rows)
    if "pipecat" in systems:
        ns = [int(x) for x in args.pipecat_sessions.split(",")]
        sweep("pipecat", ns,
              lambda n: asyncio.run(run_pipecat(n, args.seconds, args.pipecat_python, profile)),
              deadline, rows)
    relative = relative_judgement(rows)
    largest = {s: largest_within(rows, s) for s in systems}
    meta = {"profile": profile, "seconds": args.seconds, "bounds": BOUNDS,
            "bands": {label: [lo, None if math.isinf(hi) else hi] for label, lo, hi in BANDS},
            "host": host, "cpus": host["cores"], "wall_s": round(time.monotonic() - started, 1),
            "largest_n": largest,
            "pss_mb_at_largest_n": {s: pss_at(rows, s, n) for s, n in largest.items()},
            "largest_n_but_turn": {s: largest_within(rows, s, frozenset({"turn_p95"}))
                                   for s in systems},
            "relative": relative}
    stem = args.out / f"load_bench_{profile}"
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = markdown(rows, relative)
    stem.with_suffix(".md").write_text(
        f"# Load benchmark, {profile} profile ({args.seconds:.0f} s per N, "
        f"{meta['wall_s'] / 60:.1f} min)\n\n{host_line(host)}\n\n" + text)
    if not args.no_plot:
        plot(rows, stem.with_suffix(".png"),
             f"alfred-daemon vs Pipecat, {profile} profile, real-time pace, "
             f"{host['cores']} cores ({host['cpu']})")
    return text


def main() -> int:
    stop_like_ctrl_c_on_sigterm()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--profiles", "--profile", dest="profiles", default="realistic",
                    help=f"audio profile(s), comma-separated, run in turn: {', '.join(PROFILES)}")
    ap.add_argument("--systems", default="alfred,pipecat")
    ap.add_argument("--sessions", default="1,2,4,6,8,10,12,16", help="alfred's N")
    ap.add_argument("--pipecat-sessions", default="1,2,4,6,8,10,12", help="Pipecat's N")
    ap.add_argument("--seconds", type=float, default=40.0, help="streaming time per N")
    ap.add_argument("--budget-min", type=float, default=19.0,
                    help="per profile: stop starting new N after this many minutes")
    ap.add_argument("--pipecat-python", default=sys.executable,
                    help="interpreter with the bench extra (pipecat-ai) installed")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--no-plot", action="store_true",
                    help="skip the PNG (for the test suite's smoke run: no matplotlib there)")
    args = ap.parse_args()
    profiles = args.profiles.split(",")
    if unknown := [p for p in profiles if p not in PROFILES]:
        ap.error(f"unknown profile(s) {', '.join(unknown)}; choose from {', '.join(PROFILES)}")
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    host = host_info()
    print(host_line(host), flush=True)
    for profile in profiles:
        print(run_profile(profile, args, host), end="", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
