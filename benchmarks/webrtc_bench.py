"""What WebRTC costs in latency: final and end-of-turn latency over WebRTC (WHIP, Opus) vs
gRPC (LINEAR16) for the same audio, at N concurrent sessions.

For each N (default 1 and 4) and each path, a fresh ``alfred-daemon serve``
(``load_bench.running_daemon``) gets N sessions; in round r (from 0) session i streams
``loadgen.make_script(1000 + 100 r + i, S, profile)`` (the load benchmark's realistic profile by
default: real speech of every length, pauses, a noise floor) in 20 ms frames at real-time
pace, then ``load_bench.TAIL_S`` of its tail, then ends (gRPC: half-close; WebRTC: DELETE).
The gRPC sessions are ``load_bench.run_session`` itself; the WebRTC ones
(:func:`run_webrtc_session`) are an aiortc peer (``alfred_daemon.whip_client``) whose
track hands frame k's Opus packet (encoded before the run, as a browser encodes on its own
machine) to the sender at ``t0 + k x 20 ms``, and they are measured the same way, from each
frame's due time on the client's clock, with the same per-window events on both paths
(``frameEventEvery``, default every 5th window: 10 a second, which the frame round trip
is measured on; a session's default is none) so both daemons do the same work:

* final latency: arrival of the final minus the due time of its utterance's last speech
  frame (``loadgen.speech_ends``, measured on the clean clip);
* end-of-turn latency: turns Smart Turn ended (``reason model``), from the same frame;
* partial lag: arrival minus the due time of the last frame the partial covers.

WebRTC's figures include everything the transport adds: SRTP, the
daemon's jitter buffer (``api/webrtc_audio.py``), the decode and the 48 -> 16 kHz
resampling. The issue's bound: WebRTC adds at most 60 ms to the p95 of both. Both paths of
a round stream the same scripts; each round other ones (more utterances behind the p95);
rounds alternate the order of the two paths, so a drift of the machine hits both alike.

``python benchmarks/webrtc_bench.py [--sessions 1,4] [--seconds 40] [--rounds 1]
[--frame-event-every 5] [--name webrtc_bench]`` writes
``benchmarks/results/NAME.{json,md}``; ``--render NAME`` rewrites ``NAME.md`` from
``NAME.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load_bench import (
    TAIL_S,
    SessionResult,
    TreeSampler,
    free_port,
    last_frame,
    run_session,
    running_daemon,
    summarise,
)
from load_report import fmt, host_info, host_line, pooled
from loadgen import FRAME_S, PROFILES, RATE, REPO, Script, make_script, stop_like_ctrl_c_on_sigterm

from alfred_daemon.whip_client import PcmTrack, WhipError, connect, to_pcm48

DAEMON_SIDE = {"final": "final_transcription_latency_ms", "turn": "turn_ended_latency_ms",
               "partial": "partial_transcription_latency_ms"}
"""The daemon's own latency histograms (arrival of the audio -> event handed to the
transport), read from ``/metrics.json`` at the end of a run: what of a path's latency is
spent inside the daemon, as opposed to on the way in and out."""
BOUND_MS = 60.0
"""WebRTC may add at most this to the p95 final and end-of-turn latency (the issue)."""
PATHS = ("grpc", "webrtc")


async def run_webrtc_session(  # noqa: PLR0912, PLR0915  (one branch per event type timed, as load_bench times them)
        base_url: str, script: Script, track: PcmTrack, res: SessionResult,
        frame_event_every: int = 1) -> None:
    """One session over WebRTC, ``script`` sent as ``track`` (:func:`script_track`),
    timed as ``load_bench.run_session`` times gRPC's."""
    frames = script.frames
    try:
        session = await connect(base_url, track,
                                params={"frameEventEvery": str(frame_event_every)})
    except WhipError as exc:
        res.errors.append(f"offer: {exc}")
        return

    def due(k: int) -> float:
        return track.due(k)

    async def finish() -> None:
        # The script and its tail at real-time pace (the track paces itself), then the
        # status read load_bench does, then DELETE: the last events follow on the channel.
        limit = len(frames) * FRAME_S + TAIL_S + 60.0
        for _ in range(int(limit / 0.05)):
            if track.audio_sent:
                break
            await asyncio.sleep(0.05)
        res.frames_sent = len(frames)
        await asyncio.sleep(0.3)
        sid = session_id.get("id")
        try:
            async with aiohttp.ClientSession() as http, \
                    http.get(f"{base_url}/session/{sid}/status") as resp:
                status = await resp.json()
            res.unaccounted = (status["windowsWritten"] - status["windowsAnalysed"]
                               - status["windowsDropped"] - status["windowsQueued"])
        except Exception as exc:  # the figure is then missing, which the report shows
            res.errors.append(f"status: {exc}")
        await session.delete()

    session_id: dict[str, str] = {}
    last_end: int | None = None
    ender = asyncio.create_task(finish())
    try:
        async for item in session.events(timeout=30.0):
            m, now = item.message, item.at
            kind = m.get("type")
            offset = float(m.get("audioOffsetMs", 0))
            if kind == "sessionStarted":
                session_id["id"] = str(m["sessionId"])
            elif kind == "frameProcessed":
                res.frame_rtt.append((now - due(last_frame(offset))) * 1000)
            elif kind == "partialTranscription":
                res.partial_lag.append((now - due(last_frame(offset))) * 1000)
            elif kind == "finalTranscription":
                res.final_model_ms.append(float(m.get("processingMs", 0.0)))
                last_end = script.utterance_end_for(last_frame(offset))
                if last_end is None:
                    res.unmatched_finals += 1
                else:
                    res.final_latency.append((now - due(last_end)) * 1000)
                    res.final_speech_ms.append(script.speech_ms_for(last_end))
            elif kind == "turnEnd":
                if last_end is None:
                    res.unmatched_turns += 1
                    continue
                latency = (now - due(last_end)) * 1000
                if m.get("reason") == "model":
                    res.turn_latency.append(latency)
                    res.turn_speech_ms.append(script.speech_ms_for(last_end))
                elif m.get("reason") == "silence_fallback":
                    res.fallback_turn_latency.append(latency)
            elif kind == "framesDropped":
                res.frames_dropped += int(m.get("frames", 0))
            elif kind == "error":
                res.errors.append(str(m.get("message")))
            elif kind == "sessionClosed" and m.get("reason") != "finished":
                res.errors.append(f"session closed: {m.get('reason')}")
    except TimeoutError:
        res.errors.append("no event for 30 s")
    finally:
        ender.cancel()
        await asyncio.gather(ender, return_exceptions=True)
        res.send_lag_ms_max = track.late_max_s * 1000
        track.stop()
        await session.close()


def script_track(script: Script) -> PcmTrack:
    """The script and its tail as a WebRTC track, Opus-encoded up front: a browser encodes
    on its own machine, and the gRPC path's clients send ready PCM too."""
    tail = [script.tail_frame(k) for k in range(round(TAIL_S / FRAME_S))]
    audio = np.frombuffer(b"".join(script.frames + tail), "<i2").astype(np.float32) / 32768.0
    return PcmTrack(to_pcm48(audio, RATE), encode_ahead=True)


async def run_path(path: str, n: int, seconds: float, profile: str, *,
                   seed: int = 1000, frame_event_every: int = 1) -> dict[str, Any]:
    """N sessions of ``path`` on a fresh daemon, session i streaming script ``seed + i``;
    load_bench's row for them."""
    http_port = free_port()
    async with running_daemon(http_port=http_port) as (target, pid):
        sampler = TreeSampler(pid)
        scripts = [make_script(seed + i, seconds, profile) for i in range(n)]
        results = [SessionResult() for _ in range(n)]
        tracks = [script_track(s) for s in scripts] if path == "webrtc" else []
        me = psutil.Process()
        me.cpu_percent(None)
        sampler.start()
        base_url = f"http://127.0.0.1:{http_port}"
        sessions = ([run_session(target, s, r, frame_event_every)
                     for s, r in zip(scripts, results, strict=True)] if path == "grpc"
                    else [run_webrtc_session(base_url, s, t, r, frame_event_every)
                          for s, t, r in zip(scripts, tracks, results, strict=True)])
        await asyncio.wait_for(asyncio.gather(*sessions), timeout=seconds + 90)
        inside = await daemon_side_means(base_url)
        row = summarise(path, n, seconds, results)
        row["daemon_side_mean_ms"] = inside
        model = [v for r in results for v in r.final_model_ms]
        row["final_model_ms_mean"] = round(float(np.mean(model)), 1) if model else None
        row["cpu_percent"] = sampler.stop()
        row["client_cpu_percent"] = me.cpu_percent(None)
        row["pss_mb_peak"] = max(sampler.pss_mb, default=None)
    return row


async def daemon_side_means(base_url: str) -> dict[str, float | None]:
    """Mean of each :data:`DAEMON_SIDE` histogram, ms (None: nothing observed)."""
    async with aiohttp.ClientSession() as http, \
            http.get(f"{base_url}/metrics.json") as resp:
        latency = (await resp.json())["latencyMs"]
    return {key: round(latency[name]["mean"], 1) if latency[name]["count"] else None
            for key, name in DAEMON_SIDE.items()}


def mean_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r["daemon_side_mean_ms"][key] for r in rows
              if r.get("daemon_side_mean_ms", {}).get(key) is not None]
    return float(np.mean(values)) if values else None


def model_ms(rows: list[dict[str, Any]]) -> float | None:
    """Mean over rows of the finals' model time (each final's ``processingMs``): how long
    the workers took to decode, which CPU taken by other processes lengthens."""
    values = [r["final_model_ms_mean"] for r in rows if r.get("final_model_ms_mean") is not None]
    return float(np.mean(values)) if values else None


def summary(rows: list[dict[str, Any]], ns: list[int]) -> tuple[list[dict[str, Any]], str]:
    table = ["| N | path | final p50 / p95 (finals) | end of turn p50 / p95 (turns) | "
             "partial lag p95 | frame round trip p50 / p95 | in the daemon: final / partial "
             "mean | finals' model time mean | frames dropped | daemon / client CPU % | "
             "errors |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts: list[dict[str, Any]] = []
    for n in ns:
        figures: dict[str, dict[str, Any]] = {}
        for path in PATHS:
            mine = [r for r in rows if r["system"] == path and r["n"] == n]
            if not mine:
                continue
            fin = pooled(rows, path, "final_latency", n)
            turn = pooled(rows, path, "turn_latency", n)
            lag = pooled(rows, path, "partial_lag", n)
            rtt = pooled(rows, path, "frame_rtt", n)
            figures[path] = {"final": fin, "turn": turn}
            table.append(
                f"| {n} | {path} | {fmt(fin['p50'])} / {fmt(fin['p95'])} ({fin['count']}) "
                f"| {fmt(turn['p50'])} / {fmt(turn['p95'])} ({turn['count']}) "
                f"| {fmt(lag['p95'])} "
                f"| {fmt(rtt['p50'])} / {fmt(rtt['p95'])} "
                f"| {fmt(mean_of(mine, 'final'))} / {fmt(mean_of(mine, 'partial'))} "
                f"| {fmt(model_ms(mine))} "
                f"| {sum(r['frames_dropped'] for r in mine)} "
                f"| {np.mean([r['cpu_percent'] for r in mine]):.0f} / "
                f"{np.mean([r['client_cpu_percent'] for r in mine]):.0f} "
                f"| {sum(len(r['errors']) for r in mine)} |")
        if len(figures) == 2:
            added = {m: (None if figures["webrtc"][m]["p95"] is None
                         or figures["grpc"][m]["p95"] is None
                         else figures["webrtc"][m]["p95"] - figures["grpc"][m]["p95"])
                     for m in ("final", "turn")}
            verdicts.append({"n": n, "added_p95_ms": added,
                             "within_bound": all(v is not None and v <= BOUND_MS
                                                 for v in added.values())})
    lines = [*table, ""]
    for v in verdicts:
        a = v["added_p95_ms"]
        lines.append(f"* N = {v['n']}: WebRTC adds {fmt(a['final'])} ms to the p95 final and "
                     f"{fmt(a['turn'])} ms to the p95 end of turn "
                     f"({'within' if v['within_bound'] else 'OVER'} the {BOUND_MS:.0f} ms "
                     "bound).")
    return verdicts, "\n".join(lines) + "\n"


def main() -> int:
    stop_like_ctrl_c_on_sigterm()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--sessions", default="1,4", help="N, comma-separated")
    ap.add_argument("--seconds", type=float, default=40.0, help="streaming time per run")
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs of each (path, N); odd rounds run gRPC first, even WebRTC")
    ap.add_argument("--profile", default="realistic", choices=PROFILES)
    ap.add_argument("--frame-event-every", type=int, default=5,
                    help="a frame_processed event every K windows on both paths (default 5)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--name", default="webrtc_bench", help="the results' file stem")
    ap.add_argument("--render", metavar="NAME",
                    help="only rewrite OUT/NAME.md from OUT/NAME.json")
    args = ap.parse_args()
    if args.render:
        stem = args.out / args.render
        doc = json.loads(stem.with_suffix(".json").read_text())
        ns = sorted({int(r["n"]) for r in doc["rows"]})
        stem.with_suffix(".md").write_text(report(doc["meta"], summary(doc["rows"], ns)[1]))
        return 0
    if not 1 <= args.rounds <= 10 or not 5.0 <= args.seconds <= 600.0:
        ap.error("--rounds is 1 to 10 and --seconds 5 to 600")
    if not 1 <= args.frame_event_every <= 1000:
        ap.error("--frame-event-every is 1 to 1000")
    ns = [int(x) for x in args.sessions.split(",")]
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    args.out.mkdir(parents=True, exist_ok=True)
    host = host_info()
    print(host_line(host), flush=True)
    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    for rnd in range(args.rounds):
        for n in ns:
            for path in (PATHS if rnd % 2 == 0 else PATHS[::-1]):
                t = time.monotonic()
                row = asyncio.run(run_path(path, n, args.seconds, args.profile,
                                           seed=1000 + 100 * rnd,
                                           frame_event_every=args.frame_event_every))
                row["round"] = rnd + 1
                row["wall_s"] = round(time.monotonic() - t, 1)
                rows.append(row)
                print(f"round {rnd + 1} N={n} {path}: final p95 "
                      f"{fmt(row['final_latency']['p95'])} ms, end of turn p95 "
                      f"{fmt(row['turn_latency']['p95'])} ms, errors {row['errors'][:3]}",
                      flush=True)
    verdicts, text = summary(rows, ns)
    meta = {"profile": args.profile, "seconds": args.seconds, "rounds": args.rounds,
            "frame_event_every": args.frame_event_every,
            "bound_ms": BOUND_MS, "host": host,
            "wall_s": round(time.monotonic() - started, 1), "verdicts": verdicts}
    stem = args.out / args.name
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    text = report(meta, text)
    stem.with_suffix(".md").write_text(text)
    print(text, flush=True)
    return 0


def report(meta: dict[str, Any], table: str) -> str:
    """The human-readable report: what was run, how it is measured, the table."""
    every = meta.get("frame_event_every", 1)
    return (f"# WebRTC vs gRPC latency ({meta['profile']} profile, {meta['seconds']:.0f} s per "
            f"run, {meta['rounds']} round(s), {meta['wall_s'] / 60:.1f} min)\n\n"
            f"{host_line(meta['host'])}\n\nLatencies in ms from each frame's due time on "
            "the client (method: benchmarks/webrtc_bench.py). Fresh daemon per run. "
            f"Per-window events (frame_processed) every {every} window(s) on both paths. "
            "Frame round trip: a window's frame_processed event, from its frame's due time. "
            "In the daemon: its own histograms' means, from the audio's arrival to the "
            "event handed to the transport.\n\n" + table)


if __name__ == "__main__":
    sys.exit(main())
