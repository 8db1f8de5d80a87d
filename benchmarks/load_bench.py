"""Real-time load on the daemon over gRPC: latency percentiles, drops, CPU and PSS vs N.

Usage::

    python benchmarks/load_bench.py [--sessions 1,2,4,6,8,10,12,16] [--seconds 40]
                                    [--out benchmarks/results]

For each N a fresh ``alfred-daemon serve`` is started (loopback, free ports) and N clients
stream real speech from ``../shared/audio`` -- utterances in a seeded order separated by
0.8-2.0 s pauses -- in 20 ms frames at real-time pace for ``--seconds``. Latencies are wall
clock on the client, against the audio, not the daemon's own events:

* partial lag: arrival minus the send time of the last audio the partial covers (its offset);
* final latency: arrival minus the send time of the utterance's last speech frame, where the
  speech end is measured on the clip itself (last 10 ms above -45 dBFS relative to its peak);
* end-of-turn latency: TurnEnded arrival minus the send time of the last speech frame of the
  turn's last utterance.

Also: frames the daemon reported dropped, frames unaccounted for (sent minus analysed minus
dropped, from the daemon's session status -- must be 0), errors, the daemon tree's CPU % and
PSS (psutil), worker restarts. The largest N within the bounds (p95 partial lag <= 250 ms,
p95 final <= 400 ms, p95 end of turn <= 300 ms, 0 frames dropped) is reported.

Writes ``load_bench.json`` (every raw figure) and ``load_bench.md``. The Pipecat side of the
comparison is not part of this script yet.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "clients" / "python"))

from alfred_client import AsyncClient, StreamError  # noqa: E402
from alfred_client import pb as alfred_pb  # noqa: E402

from alfred_daemon.engine.audio import read_wav  # noqa: E402

SHARED_AUDIO = Path(os.environ.get("ALFRED_SHARED_AUDIO", REPO.parent / "shared" / "audio"))
RATE = 16_000
FRAME = 320  # 20 ms
BOUNDS = {"partial_lag_p95": 250.0, "final_p95": 400.0, "turn_p95": 300.0}


def speech_end(clip: npt.NDArray[np.float32]) -> int:
    """Sample index where the clip's speech ends (last 10 ms frame above -45 dB of peak)."""
    hop = RATE // 100
    frames = clip[: clip.size // hop * hop].reshape(-1, hop)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-12
    loud = np.nonzero(20 * np.log10(rms / rms.max()) > -45.0)[0]
    return int((loud[-1] + 1) * hop) if loud.size else clip.size


@dataclass
class Script:
    pcm: bytes
    speech_ends: list[int]
    """Frame index of each utterance's last speech frame."""


def make_script(seed: int, seconds: float) -> Script:
    manifest = json.loads((SHARED_AUDIO / "manifest.json").read_text())
    clips = [read_wav(SHARED_AUDIO / u["file"])[0] for u in manifest["utterances"]]
    rng = random.Random(seed)
    parts: list[npt.NDArray[np.float32]] = [np.zeros(int(rng.uniform(0, 1) * RATE), np.float32)]
    pos = parts[0].size
    ends: list[int] = []
    while pos < seconds * RATE:
        clip = clips[rng.randrange(len(clips))]
        ends.append((pos + speech_end(clip)) // FRAME)
        pause = np.zeros(int(rng.uniform(0.8, 2.0) * RATE), np.float32)
        parts += [clip, pause]
        pos += clip.size + pause.size
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    pcm = (np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    n_frames = len(pcm) // (FRAME * 2)
    return Script(pcm, [e for e in ends if e < n_frames])


@dataclass
class SessionResult:
    partial_lag: list[float] = field(default_factory=list)
    final_latency: list[float] = field(default_factory=list)
    turn_latency: list[float] = field(default_factory=list)
    frames_sent: int = 0
    frames_dropped: int = 0
    unaccounted: int | None = None
    errors: list[str] = field(default_factory=list)


async def run_session(target: str, script: Script, res: SessionResult) -> None:
    sent_at: list[float] = []
    frames = [script.pcm[i : i + FRAME * 2] for i in range(0, len(script.pcm), FRAME * 2)]

    async def paced() -> AsyncIterator[bytes]:
        t0 = time.monotonic()
        for k, frame in enumerate(frames):
            sent_at.append(time.monotonic())
            yield frame
            await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
        res.frames_sent = len(frames)
        await asyncio.sleep(0.3)  # let the last windows be analysed before the status read
        try:
            status = json.loads((await client._stub.GetSessionStatus(
                alfred_pb.GetSessionStatusRequest(session_id=client.session_id))).json)
            res.unaccounted = (status["windowsWritten"] - status["windowsAnalysed"]
                               - status["windowsDropped"] - status["windowsQueued"])
        except Exception as exc:  # the figure is then missing, which the report shows
            res.errors.append(f"status: {exc}")

    def sent(offset_ms: float) -> float | None:
        k = min(int(offset_ms / 20), len(sent_at) - 1)
        return sent_at[k] if k >= 0 and sent_at else None

    ends = list(script.speech_ends)
    last_final_end: int | None = None
    async with AsyncClient(target) as client:
        try:
            async for ev in client.stream(paced(), RATE):
                now = time.monotonic()
                if ev.type == "partial_transcription":
                    t = sent(ev.audio_offset_ms)
                    if t is not None:
                        res.partial_lag.append((now - t) * 1000)
                elif ev.type == "final_transcription":
                    # The utterance whose labelled speech end is nearest the final's offset.
                    frame = int(ev.audio_offset_ms / 20)
                    if ends:
                        end = min(ends, key=lambda e: abs(e - frame))
                        if end < len(sent_at) and abs(end - frame) < 50:
                            res.final_latency.append((now - sent_at[end]) * 1000)
                            last_final_end = end
                elif ev.type == "turn_ended" and last_final_end is not None and \
                        ev.data.get("reason") != "forced":
                    res.turn_latency.append((now - sent_at[last_final_end]) * 1000)
                elif ev.type == "frames_dropped":
                    res.frames_dropped += int(ev.data.get("frames", 0))
        except StreamError as exc:
            res.errors.append(str(exc))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


async def run_n(n: int, seconds: float) -> dict[str, Any]:
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
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            p.cpu_percent(None)
        scripts = [make_script(1000 + i, seconds) for i in range(n)]
        results = [SessionResult() for _ in range(n)]
        pss: list[float] = []

        async def sample() -> None:
            while True:
                await asyncio.sleep(2.0)
                total = 0.0
                for p in tree:
                    with contextlib.suppress(psutil.Error):
                        total += p.memory_full_info().pss / 2**20
                pss.append(total)

        sampler = asyncio.create_task(sample())
        await asyncio.gather(*(run_session(target, s, r)
                               for s, r in zip(scripts, results, strict=True)))
        sampler.cancel()
        cpu = sum(p.cpu_percent(None) for p in tree if p.is_running())
        async with AsyncClient(target) as c:
            status = await c.status()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(workdir, ignore_errors=True)
    merged = {k: [v for r in results for v in getattr(r, k)]
              for k in ("partial_lag", "final_latency", "turn_latency")}
    row: dict[str, Any] = {"n": n, "seconds": seconds}
    for k, vals in merged.items():
        row[k] = {f"p{q}": pct(vals, q) for q in (50, 95, 99)} | {"count": len(vals)}
    row["frames_sent"] = sum(r.frames_sent for r in results)
    row["frames_dropped"] = sum(r.frames_dropped for r in results)
    row["frames_unaccounted"] = (sum(r.unaccounted for r in results if r.unaccounted is not None)
                                 if all(r.unaccounted is not None for r in results) else None)
    row["errors"] = [e for r in results for e in r.errors]
    row["cpu_percent"] = cpu
    row["pss_mb_peak"] = max(pss, default=None)
    row["worker_restarts"] = status["counters"]["worker_restarts"]
    row["raw"] = merged
    p95 = {"partial_lag_p95": row["partial_lag"]["p95"], "final_p95": row["final_latency"]["p95"],
           "turn_p95": row["turn_latency"]["p95"]}
    row["within_bounds"] = (all(v is not None and v <= BOUNDS[k] for k, v in p95.items())
                            and row["frames_dropped"] == 0 and not row["errors"])
    return row


def markdown(rows: list[dict[str, Any]]) -> str:
    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    lines = ["| N | partial lag p50/p95/p99 ms | final p50/p95/p99 ms | end of turn "
             "p50/p95/p99 ms | CPU % | PSS MB | dropped | unaccounted | within bounds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cells = [str(r["n"])]
        for k in ("partial_lag", "final_latency", "turn_latency"):
            d = r[k]
            cells.append(f"{f(d['p50'])} / {f(d['p95'])} / {f(d['p99'])}")
        cells += [f"{r['cpu_percent']:.0f}", f(r["pss_mb_peak"]), str(r["frames_dropped"]),
                  str(r["frames_unaccounted"]), "yes" if r["within_bounds"] else "no"]
        lines.append("| " + " | ".join(cells) + " |")
    best = max((r["n"] for r in rows if r["within_bounds"]), default=None)
    lines.append("")
    lines.append(f"Largest N within bounds (p95 partial lag <= 250 ms, final <= 400 ms, end of "
                 f"turn <= 300 ms, 0 dropped): **{best}**")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", default="1,2,4,6,8,10,12,16")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sessions.split(",")):
        row = asyncio.run(run_n(n, args.seconds))
        rows.append(row)
        print(markdown([row]).splitlines()[2], flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load_bench.json").write_text(json.dumps(rows, indent=1))
    text = markdown(rows)
    (args.out / "load_bench.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
