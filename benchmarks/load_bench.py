"""Real-time load, alfred-daemon vs Pipecat: latency percentiles, drops, CPU and PSS vs N.

Usage (``make bench-load`` installs the ``bench`` extra first)::

    python benchmarks/load_bench.py [--systems alfred,pipecat]
        [--sessions 1,2,4,6,8,10,12,16] [--pipecat-sessions 1,2,4,6,8,10,12]
        [--seconds 40] [--out benchmarks/results]

Both systems get the same audio: session i streams ``loadgen.make_script(1000 + i)`` --
real utterances from ``tests/data`` in a seeded order, 0.8-2.0 s pauses -- in 20 ms
frames at real-time pace. Frame k is due at ``t0 + k x 20 ms``; every latency is measured
from that scheduled time (a real transport delivers audio in real time whether or not the
receiver keeps up), on the client's wall clock:

* partial lag: arrival minus the due time of the last frame the partial covers;
* final latency: arrival minus the due time of the utterance's last speech frame, measured on
  the clip itself (``loadgen.speech_end``), not taken from either system's VAD;
* end-of-turn latency: arrival of the turn decision (alfred: TurnEnded; Pipecat: the user
  turn handed to the LLM) minus the due time of the turn's last speech frame. Turns Smart
  Turn judged complete are what the bound applies to; turns ended by the 3 s silence
  fallback are counted and reported separately (same model in both systems, so that share
  measures the model on this corpus, not the system);
* frame round trip (alfred, per-window events on): FrameProcessed arrival minus the due time
  of the window's last frame.

alfred: for each N a fresh ``alfred-daemon serve`` (loopback, free ports) and N gRPC
clients in this process. Frames dropped are the daemon's own ``frames_dropped`` events;
frames unaccounted for (written - analysed - dropped - queued, from each session's status at
its end) must be 0. Pipecat: ``pipecat_runner.py`` runs N pipelines in one process, the way
Pipecat runs them. Both: CPU % and PSS of the system's whole process tree (psutil).

The largest N within the bounds (p95 partial lag <= 250 ms, final <= 400 ms, end of turn
<= 300 ms, 0 frames dropped, no errors) is reported per system; Pipecat has no partials, so
that bound does not apply to it. Writes ``load_bench.json`` (every raw figure),
``load_bench.md`` and ``load_bench.png``.
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
from loadgen import (
    BOUNDS,
    FRAME_S,
    RATE,
    REPO,
    Script,
    make_script,
    percentiles,
)

from alfred_daemon.engine.models import ModelsConfig, resolve_all

LATENCIES = ("partial_lag", "final_latency", "turn_latency", "frame_rtt")
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
    fallback_turn_latency: list[float] = field(default_factory=list)
    """Turns ended by the silence fallback."""
    frame_rtt: list[float] = field(default_factory=list)
    frames_sent: int = 0
    frames_dropped: int = 0
    unmatched_finals: int = 0
    unmatched_turns: int = 0
    unaccounted: int | None = None
    send_lag_ms_max: float = 0.0
    errors: list[str] = field(default_factory=list)


def last_frame(offset_ms: float) -> int:
    """Index of the 20 ms frame holding the audio that ends at ``offset_ms``."""
    return max(0, math.ceil(offset_ms / (FRAME_S * 1000)) - 1)


async def run_session(target: str, script: Script, res: SessionResult) -> None:
    frames = script.frames
    t0 = time.monotonic() + 0.05

    def due(k: int) -> float:
        return t0 + k * FRAME_S

    async def paced() -> AsyncIterator[bytes]:
        # The script, then TAIL_S of silence at the same pace, as a live call goes on after
        # the last words: the last utterance's final and turn arrive as they would mid-call
        # (the Pipecat runner does the same), not forced by the end of the stream.
        silence = bytes(len(frames[0]))
        for k in range(len(frames) + round(TAIL_S / FRAME_S)):
            await asyncio.sleep(max(0.0, due(k) - time.monotonic()))
            res.send_lag_ms_max = max(res.send_lag_ms_max, (time.monotonic() - due(k)) * 1000)
            yield frames[k] if k < len(frames) else silence
        res.frames_sent = len(frames)
        await asyncio.sleep(0.3)  # let the last windows be analysed before the status read
        try:
            status = json.loads((await client._stub.GetSessionStatus(
                alfred_pb.GetSessionStatusRequest(session_id=client.session_id))).json)
            res.unaccounted = (status["windowsWritten"] - status["windowsAnalysed"]
                               - status["windowsDropped"] - status["windowsQueued"])
        except Exception as exc:  # the figure is then missing, which the report shows
            res.errors.append(f"status: {exc}")

    last_end: int | None = None
    """Speech end of the latest utterance, None if its final could not be attributed: a
    turn is timed from its *last* utterance or not at all (never from an older one)."""
    async with AsyncClient(target) as client:
        try:
            async for ev in client.stream(paced(), RATE,
                                          options=SessionOptions(frame_event_every=1)):
                now = time.monotonic()
                if ev.type == "frame_processed":
                    res.frame_rtt.append((now - due(last_frame(ev.audio_offset_ms))) * 1000)
                elif ev.type == "partial_transcription":
                    res.partial_lag.append((now - due(last_frame(ev.audio_offset_ms))) * 1000)
                elif ev.type == "final_transcription":
                    last_end = script.utterance_end_for(last_frame(ev.audio_offset_ms))
                    if last_end is None:
                        res.unmatched_finals += 1  # e.g. the first piece of a split utterance
                    else:
                        res.final_latency.append((now - due(last_end)) * 1000)
                elif ev.type == "turn_ended":
                    if last_end is None:
                        res.unmatched_turns += 1
                        continue
                    latency = (now - due(last_end)) * 1000
                    reason = ev.data.get("reason")
                    if reason == "model":
                        res.turn_latency.append(latency)
                    elif reason == "silence_fallback":
                        res.fallback_turn_latency.append(latency)
                elif ev.type == "frames_dropped":
                    res.frames_dropped += int(ev.data.get("frames", 0))
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
              for k in (*LATENCIES, "fallback_turn_latency")}
    row: dict[str, Any] = {"system": system, "n": n, "seconds": seconds}
    for k, vals in merged.items():
        row[k] = percentiles(vals)
    row["frames_sent"] = sum(r.frames_sent for r in results)
    row["frames_dropped"] = sum(r.frames_dropped for r in results)
    row["frames_unaccounted"] = (sum(r.unaccounted for r in results if r.unaccounted is not None)
                                 if all(r.unaccounted is not None for r in results) else None)
    row["send_lag_ms_max"] = max((r.send_lag_ms_max for r in results), default=0.0)
    row["unmatched_finals"] = sum(r.unmatched_finals for r in results)
    row["unmatched_turns"] = sum(r.unmatched_turns for r in results)
    row["errors"] = [e for r in results for e in r.errors]
    row["raw"] = {k: [round(v, 1) for v in vals] for k, vals in merged.items()}  # 0.1 ms
    return row


def judge(row: dict[str, Any]) -> None:
    """Set ``within_bounds`` (and why not) on a finished row."""
    failed = []
    checks = {"final_p95": row["final_latency"]["p95"], "turn_p95": row["turn_latency"]["p95"]}
    if row["system"] == "alfred":
        checks["partial_lag_p95"] = row["partial_lag"]["p95"]
    for key, value in checks.items():
        if value is None or value > BOUNDS[key]:
            failed.append(key)
    if row["frames_dropped"]:
        failed.append("frames_dropped")
    if row["errors"]:
        failed.append("errors")
    row["within_bounds"] = not failed
    row["outside_bounds"] = failed


async def run_alfred(n: int, seconds: float) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="alfred-load-"))
    port = free_port()
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "alfred-daemon"), "serve",
         "--listen", f"127.0.0.1:{port}", "--http-port", str(free_port()),
         "--runtime-dir", str(workdir / "run"), "--log-level", "warning"],
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
        sampler = TreeSampler(proc.pid)
        scripts = [make_script(1000 + i, seconds) for i in range(n)]
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
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    row = summarise("alfred", n, seconds, results)
    row["cpu_percent"] = cpu
    row["cpu_by_process"] = sampler.cpu_by_process
    row["client_cpu_percent"] = client_cpu
    row["pss_mb_peak"] = max(sampler.pss_mb, default=None)
    row["worker_restarts"] = status["counters"]["worker_restarts"]
    row["daemon_counters"] = status["counters"]
    return row


async def run_pipecat(n: int, seconds: float, python: str) -> dict[str, Any]:
    out = Path(tempfile.mkdtemp(prefix="pipecat-load-")) / "result.json"
    models = resolve_all(ModelsConfig())  # the very files the daemon loads
    proc = await asyncio.create_subprocess_exec(
        python, str(REPO / "benchmarks" / "pipecat_runner.py"), "--sessions", str(n),
        "--seconds", str(seconds), "--out", str(out),
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


def fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| system | N | partial lag p50/p95/p99 | final p50/p95/p99 | end of turn "
            "p50/p95/p99 | fallback turns | unattributed finals / turns | frame RTT p50/p95/p99 | "
            "CPU % | PSS MB | dropped | unaccounted | within bounds |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        cells = [r["system"], str(r["n"])]
        for k in ("partial_lag", "final_latency", "turn_latency"):
            d = r[k]
            cells.append(f"{fmt(d['p50'])} / {fmt(d['p95'])} / {fmt(d['p99'])}")
        fb, model = r["fallback_turn_latency"]["count"], r["turn_latency"]["count"]
        cells.append(f"{fb} of {fb + model}")
        cells.append(f"{r['unmatched_finals']} / {r['unmatched_turns']}")
        d = r["frame_rtt"]
        cells.append(f"{fmt(d['p50'])} / {fmt(d['p95'])} / {fmt(d['p99'])}")
        cells += [fmt(r["cpu_percent"]), fmt(r["pss_mb_peak"]), str(r["frames_dropped"]),
                  "-" if r["frames_unaccounted"] is None else str(r["frames_unaccounted"]),
                  "yes" if r["within_bounds"] else "no (" + ", ".join(r["outside_bounds"]) + ")"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Latencies in ms. End of turn: turns Smart Turn judged complete; fallback "
                 "turns (ended by 3 s of silence) are counted, not included. Unattributed: "
                 "finals whose audio end is not within 300 ms of an utterance's speech end "
                 "(mostly the utterance each session's script cuts off at its end; also the "
                 "first piece of an utterance the VAD split) and turns whose last final was "
                 "such a one; counted, not timed.")
    pc = [r for r in rows if r["system"] == "pipecat"]
    if pc:
        lines += ["", "Pipecat, per N: what the latencies above do not show.", "",
                  "| N | turns handed on stale (without their last final) | finals never "
                  "delivered | event-loop push lag max ms | model load s |",
                  "|---|---|---|---|---|"]
        for r in pc:
            per = r["pipecat_sessions"]
            lines.append(f"| {r['n']} | {sum(x.get('stale_turns', 0) for x in per)} | "
                         f"{sum(x.get('finals_undelivered', 0) for x in per)} | "
                         f"{fmt(r['send_lag_ms_max'])} | {r['pipecat'].get('load_s', 0):.1f} |")
    for system in dict.fromkeys(r["system"] for r in rows):
        lines.append(f"- Largest N within bounds, {system}: **{largest_within(rows, system)}**"
                     f" (all bounds but end of turn: "
                     f"{largest_within(rows, system, frozenset({'turn_p95'}))})")
    return "\n".join(lines) + "\n"


def largest_within(rows: list[dict[str, Any]], system: str,
                   waive: frozenset[str] = frozenset()) -> int | None:
    """Largest N of an unbroken run of passing N from the smallest (a lucky pass after a
    failure does not count); bounds named in ``waive`` are not held against a row."""
    best = None
    for r in sorted((r for r in rows if r["system"] == system), key=lambda r: r["n"]):
        if set(r["outside_bounds"]) - waive:
            break
        best = r["n"]
    return best


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("final_latency", "final", "final_p95"), ("turn_latency", "end of turn",
              "turn_p95"), ("partial_lag", "partial lag", "partial_lag_p95")]
    fig, all_axes = plt.subplots(1, 4, figsize=(21, 5))
    axes, mem = all_axes[:3], all_axes[3]
    colours = {"alfred": "tab:blue", "pipecat": "tab:orange"}
    styles = {"p50": ":", "p95": "-", "p99": "--"}
    for ax, (key, title, bound) in zip(axes, panels, strict=True):
        for system, colour in colours.items():
            sys_rows = sorted((r for r in rows if r["system"] == system), key=lambda r: r["n"])
            for q, style in styles.items():
                pts = [(r["n"], r[key][q]) for r in sys_rows if r[key][q] is not None]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, marker="o", markersize=3,
                            color=colour, label=f"{system} {q}")
        ax.axhline(BOUNDS[bound], color="grey", linewidth=0.8)
        ax.set_title(f"{title} (bound: p95 <= {BOUNDS[bound]:.0f} ms)")
        ax.set_xlabel("concurrent sessions (N)")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    top = max(ax.get_ylim()[1] for ax in axes)
    for ax in axes:
        ax.set_ylim(30, top)
    axes[0].set_ylabel("latency, ms (log)")
    axes[0].legend(fontsize=8)
    for system, colour in colours.items():
        sys_rows = sorted((r for r in rows if r["system"] == system), key=lambda r: r["n"])
        pts = [(r["n"], r["pss_mb_peak"]) for r in sys_rows if r["pss_mb_peak"] is not None]
        if pts:
            mem.plot(*zip(*pts, strict=True), "-", marker="o", markersize=3, color=colour,
                     label=f"{system} PSS peak")
        pts = [(r["n"], r["cpu_percent"] * 10) for r in sys_rows if r["cpu_percent"]]
        if pts:
            mem.plot(*zip(*pts, strict=True), ":", marker="s", markersize=3, color=colour,
                     label=f"{system} CPU % x 10")
    mem.set_title("memory (PSS of the process tree) and CPU")
    mem.set_xlabel("concurrent sessions (N)")
    mem.set_ylabel("MB  /  CPU % x 10 (100 % = one core)")
    mem.grid(True, alpha=0.3)
    mem.legend(fontsize=8)
    fig.suptitle("alfred-daemon vs Pipecat, real speech at real-time pace, 2 cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
            print(f"{system}: collapsed at N={n} (final p95 {fmt(final_p95)} ms); "
                  "larger N not run", flush=True)
            break


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--systems", default="alfred,pipecat")
    ap.add_argument("--sessions", default="1,2,4,6,8,10,12,16", help="alfred's N")
    ap.add_argument("--pipecat-sessions", default="1,2,4,6,8,10,12", help="Pipecat's N")
    ap.add_argument("--seconds", type=float, default=40.0, help="streaming time per N")
    ap.add_argument("--budget-min", type=float, default=19.0,
                    help="stop starting new N after this many minutes")
    ap.add_argument("--pipecat-python", default=sys.executable,
                    help="interpreter with the bench extra (pipecat-ai) installed")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--no-plot", action="store_true",
                    help="skip the PNG (for the test suite's smoke run: no matplotlib there)")
    args = ap.parse_args()
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    systems = args.systems.split(",")
    started = time.monotonic()
    deadline = started + args.budget_min * 60
    rows: list[dict[str, Any]] = []
    if "alfred" in systems:
        ns = [int(x) for x in args.sessions.split(",")]
        sweep("alfred", ns, lambda n: asyncio.run(run_alfred(n, args.seconds)), deadline, rows)
    if "pipecat" in systems:
        ns = [int(x) for x in args.pipecat_sessions.split(",")]
        sweep("pipecat", ns,
              lambda n: asyncio.run(run_pipecat(n, args.seconds, args.pipecat_python)),
              deadline, rows)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"seconds": args.seconds, "bounds": BOUNDS, "cpus": len(os.sched_getaffinity(0)),
            "wall_s": round(time.monotonic() - started, 1),
            "largest_n": {s: largest_within(rows, s) for s in systems},
            "largest_n_but_turn": {s: largest_within(rows, s, frozenset({"turn_p95"}))
                                   for s in systems}}
    (args.out / "load_bench.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = markdown(rows)
    (args.out / "load_bench.md").write_text(
        f"# Load benchmark ({args.seconds:.0f} s per N, {meta['cpus']} cores, "
        f"{meta['wall_s'] / 60:.1f} min)\n\n" + text)
    if not args.no_plot:
        plot(rows, args.out / "load_bench.png")
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
