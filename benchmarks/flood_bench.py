"""One abusive client next to well-behaved ones: does it cost them anything?

Runs the daemon with N real-time sessions of the load benchmark's realistic profile
(``load_bench.run_session``: real speech of every length, pauses over a noise floor) and an
*admission prober* that opens a new session every 2 s, streams 1 s of speech and closes,
twice per round, alternating: once alone (the baseline) and once with a *flood* -- one
more client streaming the same kind of audio 20x faster than real time for the whole run.
Rounds alternate baseline and flood so a drift of the machine hits both alike.

What it reports (``benchmarks/results/flood_bench.{json,md}``):

* the real-time sessions' p95 final latency and end of turn with and without the flood,
  and their ratio (the issue's bound: within 20 %);
* admission during the flood: probes admitted / refused (bound: all admitted);
* what happened to the flood: audio accepted vs wall time (how far it was throttled), how
  it ended (the status and sentence, if it was cut), frames dropped;
* the backpressure ladder: transitions during each run (a flood must not move it).

``python benchmarks/flood_bench.py [--sessions 4] [--seconds 60] [--rounds 2]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alfred_client import AsyncClient, StreamError
from load_bench import SessionResult, run_session, running_daemon, summarise
from load_report import host_info, host_line
from loadgen import FRAME_S, RATE, REPO, make_script, percentiles, stop_like_ctrl_c_on_sigterm

FLOOD_SPEED = 20.0
"""Real-time multiple the flood sends at (the issue's finding: 20x)."""
PROBE_EVERY_S = 2.0
PROBE_AUDIO_S = 1.0
BOUND_RATIO = 1.2
"""Real-time sessions' p95 with the flood over without it: at most this."""


@dataclass
class FloodResult:
    frames_sent: int = 0
    seconds: float = 0.0
    finals: int = 0
    frames_dropped: int = 0
    ended: str = "streamed to the end"

    @property
    def audio_s(self) -> float:
        return self.frames_sent * FRAME_S


@dataclass
class ProbeResult:
    admitted: int = 0
    refused: list[str] = field(default_factory=list)


def flood_frames(seconds: float) -> list[bytes]:
    """The flood's audio: the realistic profile (another seed), as much as ``FLOOD_SPEED``
    x real time can send in ``seconds``."""
    return make_script(9000, seconds * FLOOD_SPEED + 10, "realistic").frames


async def flood(target: str, seconds: float, all_frames: list[bytes],
                out: FloodResult) -> None:
    """Stream ``all_frames`` at ``FLOOD_SPEED`` x real time for ``seconds``."""
    t0 = time.monotonic()

    async def frames() -> AsyncIterator[bytes]:
        for k, frame in enumerate(all_frames):
            due = t0 + k * FRAME_S / FLOOD_SPEED
            now = time.monotonic()
            if now - t0 > seconds:
                return
            await asyncio.sleep(max(0.0, due - now))
            out.frames_sent = k + 1
            yield frame

    try:
        async with AsyncClient(target) as client:
            async for ev in client.stream(frames(), RATE, resume=False):
                if ev.type == "final_transcription":
                    out.finals += 1
                elif ev.type == "frames_dropped":
                    out.frames_dropped += int(ev.data.get("frames", 0))
    except StreamError as exc:
        out.ended = str(exc)
    out.seconds = time.monotonic() - t0


async def probe(target: str, seconds: float, out: ProbeResult) -> None:
    """Every ``PROBE_EVERY_S``, a new clean session: 1 s of speech at real time, then end."""
    speech = make_script(7000, 5.0, "realistic").frames[: round(PROBE_AUDIO_S / FRAME_S)]
    t_end = time.monotonic() + seconds

    async def frames() -> AsyncIterator[bytes]:
        for frame in speech:
            await asyncio.sleep(FRAME_S)
            yield frame

    while time.monotonic() < t_end:
        t_next = time.monotonic() + PROBE_EVERY_S
        try:
            async with AsyncClient(target) as client:
                async for _ in client.stream(frames(), RATE, resume=False):
                    pass
            out.admitted += 1
        except StreamError as exc:
            out.refused.append(str(exc))
        await asyncio.sleep(max(0.0, t_next - time.monotonic()))


async def start_flood(target: str, seconds: float, audio: Path
                      ) -> asyncio.subprocess.Process:
    """:func:`flood` in a process of its own: 20x real time is a thousand messages a second
    to serialise, which in this process would delay the real-time clients' own pacing and
    reading (their latencies would measure the benchmark, not the daemon). Its audio is
    made beforehand (``audio``), so that the process only reads it; it has connected and
    is streaming when this returns."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--flood-client", target, str(seconds), str(audio),
        stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    await asyncio.wait_for(proc.stdout.readline(), 60.0)  # "streaming"
    return proc


async def finish_flood(proc: asyncio.subprocess.Process, out: FloodResult) -> None:
    stdout, _ = await proc.communicate()
    for key, value in json.loads(stdout.decode().strip().splitlines()[-1]).items():
        setattr(out, key, value)


async def run(n: int, seconds: float, flood_audio: Path | None) -> dict[str, Any]:
    with_flood = flood_audio is not None
    scripts = [make_script(1000 + i, seconds, "realistic") for i in range(n)]
    async with running_daemon() as (target, _pid):
        results = [SessionResult() for _ in range(n)]
        flood_out, probe_out = FloodResult(), ProbeResult()
        # The probe runs in both kinds of run: its sessions are load too.
        extra = [probe(target, seconds, probe_out)]
        if flood_audio is not None:
            proc = await start_flood(target, seconds, flood_audio)
            extra.append(finish_flood(proc, flood_out))
        await asyncio.wait_for(asyncio.gather(
            *(run_session(target, s, r) for s, r in zip(scripts, results, strict=True)),
            *extra), timeout=seconds + 90)
        async with AsyncClient(target) as c:
            status = await c.status()
    row = summarise("alfred", n, seconds, results)
    row["flood"] = ({**asdict(flood_out), "audio_s": round(flood_out.audio_s, 1)}
                    if with_flood else None)
    row["probes"] = asdict(probe_out)
    row["backpressure_events"] = status["counters"]["backpressure_events"]
    row["daemon_counters"] = status["counters"]
    return row


def report(result: dict[str, Any]) -> str:
    lines = ["# Flood benchmark", "", host_line(result["host"]), "",
             f"`{result['command']}`", "",
             f"{result['sessions']} real-time sessions (realistic profile), "
             f"{result['seconds']:g} s per run, {result['rounds']} rounds of (baseline, "
             f"flood); the flood streams at {FLOOD_SPEED:g}x real time, a probe opens a new "
             f"session every {PROBE_EVERY_S:g} s.", "",
             "| | baseline | with flood | ratio | bound |", "|---|---|---|---|---|"]
    for metric, label in (("final_latency", "final p95 ms"), ("turn_latency",
                                                               "end of turn p95 ms"),
                          ("partial_lag", "partial lag p95 ms")):
        b, f = result["p95"]["baseline"][metric], result["p95"]["flood"][metric]
        ratio = f / b if b and f else None
        bound = f"<= {BOUND_RATIO:g}" if metric != "partial_lag" else ""
        lines.append(f"| {label} | {b:.0f} | {f:.0f} | "
                     f"{'' if ratio is None else f'{ratio:.2f}'} | {bound} |")
    lines += ["", "| run | flood audio s / wall s | flood ended | flood finals | probes "
              "admitted / refused | ladder transitions |", "|---|---|---|---|---|---|"]
    for i, row in enumerate(result["runs"]):
        fl, pr = row["flood"], row["probes"]
        kind = "flood" if fl else "baseline"
        if fl:
            lines.append(f"| {i + 1} {kind} | {fl['audio_s']:.0f} / {fl['seconds']:.0f} | "
                         f"{fl['ended']} | {fl['finals']} | {pr['admitted']} / "
                         f"{len(pr['refused'])} | {row['backpressure_events']} |")
        else:
            lines.append(f"| {i + 1} {kind} | | | | {pr['admitted']} / {len(pr['refused'])} "
                         f"| {row['backpressure_events']} |")
    lines += ["", f"Verdict: {result['verdict']}", ""]
    return "\n".join(lines)


def flood_client(target: str, seconds: float, audio: Path) -> int:
    data = audio.read_bytes()
    size = 2 * round(FRAME_S * RATE)
    frames = [data[i : i + size] for i in range(0, len(data), size)]
    out = FloodResult()
    print("streaming", flush=True)
    asyncio.run(flood(target, seconds, frames, out))
    print(json.dumps(asdict(out)))
    return 0


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--flood-client":
        return flood_client(sys.argv[2], float(sys.argv[3]), Path(sys.argv[4]))
    stop_like_ctrl_c_on_sigterm()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "flood.pcm"
        audio.write_bytes(b"".join(flood_frames(args.seconds)))
        for r in range(args.rounds):
            for with_flood in (False, True):
                print(f"round {r + 1}: {'flood' if with_flood else 'baseline'} ...",
                      flush=True)
                runs.append(asyncio.run(run(args.sessions, args.seconds,
                                            audio if with_flood else None)))
    # p95 over every latency of all runs of a kind.
    p95s: dict[str, dict[str, float | None]] = {}
    for kind, rows in (("baseline", [r for r in runs if not r["flood"]]),
                       ("flood", [r for r in runs if r["flood"]])):
        p95s[kind] = {m: _pooled_p95(rows, m)
                      for m in ("final_latency", "turn_latency", "partial_lag")}
    ratios = {m: (p95s["flood"][m] or 0) / p95s["baseline"][m]  # type: ignore[operator]
              for m in ("final_latency", "turn_latency") if p95s["baseline"][m]}
    refused = sum(len(r["probes"]["refused"]) for r in runs if r["flood"])
    ladder = sum(r["backpressure_events"] for r in runs if r["flood"])
    ok = all(v <= BOUND_RATIO for v in ratios.values()) and refused == 0
    verdict = (f"{'met' if ok else 'NOT met'}: final p95 ratio "
               f"{ratios.get('final_latency', float('nan')):.2f}, end of turn "
               f"{ratios.get('turn_latency', float('nan')):.2f} (bound {BOUND_RATIO:g}); "
               f"{refused} probes refused during floods; {ladder} ladder transitions in "
               "flood runs")
    result = {"host": host_info(), "command": " ".join(["python", *sys.argv]),
              "sessions": args.sessions, "seconds": args.seconds, "rounds": args.rounds,
              "flood_speed": FLOOD_SPEED, "p95": p95s, "ratios": ratios, "verdict": verdict,
              "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flood_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "flood_bench.md").write_text(report(result))
    print(report(result))
    return 0


def _pooled_p95(rows: list[dict[str, Any]], metric: str) -> float | None:
    value = percentiles([v for r in rows for v in r["raw"][metric]])["p95"]
    return None if value is None else float(value)


if __name__ == "__main__":
    raise SystemExit(main())
