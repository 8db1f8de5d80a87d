"""A Pipecat 1.14 voice agent on alfred-daemon vs on Pipecat's own local models, per turn.

Usage (main virtualenv; Pipecat runs in ``.venv-pipecat``, built by ``make setup``)::

    .venv/bin/python benchmarks/pipecat_plugin_bench.py [--pipecat-python .venv-pipecat/bin/python]
        [--gap 5] [--out benchmarks/results/pipecat_plugin_bench]

The same speech clips, one after the other at real-time pace, go through the same Pipecat
pipeline (``benchmarks/pipecat_plugin_runner.py``: input transport -> STT -> user aggregator
-> LLM stub) twice, one system at a time:

(A) ``alfred``: ``AlfredSTTService`` + its user-turn strategies, against a daemon started
    here (2 workers; the steady-ladder settings of the gRPC tests, so backpressure does not
    degrade it on a shared host);
(B) ``local``: ``SileroVADAnalyzer`` + ``WhisperSTTService`` (tiny.en, int8, CPU, the
    daemon's model files) + ``LocalSmartTurnAnalyzerV3`` in ``TurnAnalyzerUserTurnStopStrategy``.

Per clip (= one user turn: each clip is followed by ``--gap`` s of the noise floor):

* end-of-turn latency: from the clip's speech end (measured on the clean audio, not by
  either VAD) to the arrival at the LLM stub of the ``LLMContextFrame`` carrying the user
  turn complete with its transcript -- the first one handed over once the aggregator held
  the clip's last final (one handed over before is a ``stale_turn``: the agent would answer
  without the last words), the moment an agent starts answering the whole turn;
* final-transcript latency: from the speech end to the arrival at the user aggregator of
  the last ``TranscriptionFrame`` of the clip;
* WER of the turn text(s) against the clip's transcript; turns handed over before the
  speech end (a turn ended at a pause inside the clip) are counted as ``early_turns``.

Writes ``OUT.json`` and ``OUT.md`` (host: CPU model, ``grep -c avx512_vnni /proc/cpuinfo``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import jiwer
import numpy as np

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data"
JFK_REFERENCE = ("and so my fellow americans ask not what your country can do for you "
                 "ask what you can do for your country")
BENCH_CLIPS = [
    "long/sherpa_1221-135766-0001.wav",  # 16.3 s streamed, no pause: the long utterance
    "long/deepgram_preamble.wav",        # 18.6 s monologue with pauses inside sentences
    "long/coqui_LJ001-0014.wav",
    "long/coqui_LJ001-0001.wav",
    "long/openseq2seq_wsj-47rc0206.wav",
    "long/speechbrain_LJ050-0131.wav",
    "long/coqui_LJ001-0010.wav",
    "long/deepspeech_LDC93S1.wav",
    "spk1_snt1.wav",
    "spk2_snt3.wav",
]
"""Clips of the load bench's realistic pool (their speech ends are measurable: see
``loadgen.EXCLUDED``), 2-19 s, read and spontaneous; none with numbers in its transcript
(the WER here does not normalise Whisper's digits)."""


def references() -> dict[str, str]:
    """Transcripts by file name: tests/data/manifest.json, long/manifest.json, jfk.wav."""
    refs = {"jfk.wav": JFK_REFERENCE}
    for manifest in (DATA / "manifest.json", DATA / "long" / "manifest.json"):
        for u in json.loads(manifest.read_text())["utterances"]:
            refs[str(u["file"])] = str(u["transcript"])
    return refs


def wer(reference: str, hypothesis: str) -> float:
    from alfred_daemon.engine.text import norm_text

    return float(jiwer.wer(norm_text(reference), norm_text(hypothesis) or "-"))


def run_pipeline(python: Path, system: str, clips: list[Path], *, target: str = "",
                 gap: float = 4.5, rate: int = 16000, barge_in: bool = False,
                 timeout: float = 600.0) -> dict[str, Any]:
    """Run ``pipecat_plugin_runner.py`` in the Pipecat virtualenv; its JSON result."""
    with tempfile.TemporaryDirectory(prefix="pipecat-plugin-") as tmp:
        out = Path(tmp) / "result.json"
        cmd = [str(python), str(REPO / "benchmarks" / "pipecat_plugin_runner.py"),
               "--system", system, "--out", str(out), "--gap", str(gap), "--rate", str(rate),
               *(["--target", target] if target else []),
               *(["--barge-in"] if barge_in else []), *map(str, clips)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              check=False, cwd=tmp)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{system} runner failed ({done.returncode}):\n"
                               f"{done.stderr[-4000:]}")
        result: dict[str, Any] = json.loads(out.read_text())
        result["stderr_tail"] = done.stderr[-2000:]
        return result


def per_clip(result: dict[str, Any], refs: dict[str, str]) -> list[dict[str, Any]]:
    """Each clip's turns, finals, interim count, latencies (ms) and WER."""
    out = []
    for clip in result["clips"]:
        start, end, stop = clip["start_s"], clip["speech_end_s"], clip["end_s"]
        turns = [(t, x) for t, x in result["turns"] if start < t <= stop]
        finals = [(t, x) for t, x in result["finals"] if start < t <= stop]
        late_finals = [t for t, _ in finals if t >= end]
        # The turn is complete with its transcript once the aggregator holds the clip's
        # last final: a turn handed over after the speech end but before that final is
        # stale (its text lacks the last words), and the one after it completes the clip.
        complete_from = late_finals[-1] if late_finals else end
        complete = [t for t, _ in turns if t >= complete_from]
        text = " ".join(x for _, x in turns)
        out.append({
            "file": clip["file"], "speech_s": round(end - start, 3), "text": text,
            "turns": len(turns), "early_turns": sum(1 for t, _ in turns if t < end),
            "stale_turns": sum(1 for t, _ in turns if end <= t < complete_from),
            "finals": len(finals),
            "interims": sum(1 for t, _ in result["interims"] if start < t <= stop),
            "turn_latency_ms": (complete[0] - end) * 1000.0 if complete else None,
            "final_latency_ms": (late_finals[-1] - end) * 1000.0 if late_finals else None,
            "wer": wer(refs[Path(clip["file"]).name], text),
        })
    return out


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    return {"p50": float(np.percentile(values, 50)) if values else None,
            "p95": float(np.percentile(values, 95)) if values else None,
            "max": max(values) if values else None, "count": len(values)}


def summary(clips: list[dict[str, Any]], refs: dict[str, str]) -> dict[str, Any]:
    turn = [c["turn_latency_ms"] for c in clips if c["turn_latency_ms"] is not None]
    final = [c["final_latency_ms"] for c in clips if c["final_latency_ms"] is not None]
    ref = " ".join(refs[Path(c["file"]).name] for c in clips)
    return {"end_of_turn_ms": percentiles(turn), "final_ms": percentiles(final),
            "turns_missing": sum(c["turn_latency_ms"] is None for c in clips),
            "early_turns": sum(c["early_turns"] for c in clips),
            "stale_turns": sum(c["stale_turns"] for c in clips),
            "wer": wer(ref, " ".join(c["text"] for c in clips))}


def host() -> dict[str, Any]:
    cpu = ""
    vnni = 0
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("model name") and not cpu:
                cpu = line.split(":", 1)[1].strip()
            vnni += line.startswith("flags") and " avx512_vnni" in line
    return {"cpu": cpu, "avx512_vnni_count": vnni, "cores": len(os.sched_getaffinity(0)),
            "load_avg_1m_at_start": os.getloadavg()[0]}


def report(doc: dict[str, Any]) -> str:
    h = doc["host"]
    lines = [
        "# Pipecat 1.14 pipeline: alfred-daemon plugin vs local models",
        "",
        f"Host: {h['cpu']}, {h['cores']} cores, `grep -c avx512_vnni /proc/cpuinfo` = "
        f"{h['avx512_vnni_count']}, 1-min load average {h['load_avg_1m_at_start']:.2f} at "
        "start (shared host). "
        f"{len(doc['clips'])} clips, real-time pace, one pipeline at a time, {doc['gap_s']} s "
        "of noise floor after each clip. Latencies from the clip's speech end (measured on "
        "the clean audio). `python benchmarks/pipecat_plugin_bench.py`.",
        "",
        "| pipeline | end of turn p50 | p95 | max | final p50 | p95 | max | missing turns "
        "| early turns | stale turns | WER |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (("alfred", "(A) AlfredSTTService + alfred turn strategies"),
                        ("local", "(B) Silero + WhisperSTTService + LocalSmartTurnV3")):
        s = doc["systems"][name]["summary"]
        t, f = s["end_of_turn_ms"], s["final_ms"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.0f} ms"

        lines.append(f"| {label} | {ms(t['p50'])} | {ms(t['p95'])} | {ms(t['max'])} | "
                     f"{ms(f['p50'])} | {ms(f['p95'])} | {ms(f['max'])} | "
                     f"{s['turns_missing']} | {s['early_turns']} | {s['stale_turns']} | "
                     f"{100 * s['wer']:.1f} % |")
    lines += ["", "Conditions of each run (the host is shared: other test suites ran meanwhile):",
              ""]
    for name in ("alfred", "local"):
        raw = doc["systems"][name]["raw"]
        lag = raw.get("daemon_lag_ms") or []
        lines.append(f"* {name}: the runner's frame pushes were up to "
                     f"{raw['push_lag_max_ms']:.0f} ms late (event loop starved)"
                     + (f"; daemon lag behind real time up to {max(lag):.0f} ms" if lag else "")
                     + (f"; 1-min load average {raw['load_avg_1m']:.2f} at its end"
                        if "load_avg_1m" in raw else ""))
    reasons = [t["reason"] for t in doc["systems"]["alfred"]["raw"]["daemon_turns"]]
    lines += ["* the daemon's turn ends: " + ", ".join(
        f"{reasons.count(r)} {r}" for r in sorted(set(reasons))),
        "", "A turn (or final) that arrives after the next clip has started is counted in "
        "that clip's window: a system lagging more than the gap loses the turn for its clip "
        "('-') and shifts text into the next one (per-clip WER, not the total).",
        "", "Per clip (end of turn / final, ms):", "",
              "| clip | speech s | alfred | local |", "| --- | --- | --- | --- |"]
    a, b = doc["systems"]["alfred"]["clips"], doc["systems"]["local"]["clips"]
    for ca, cb in zip(a, b, strict=True):
        def cell(c: dict[str, Any]) -> str:
            t, f = c["turn_latency_ms"], c["final_latency_ms"]
            notes = [f"{c[k]} {k.split('_')[0]}" for k in ("early_turns", "stale_turns")
                     if c[k]]
            return (f"{'-' if t is None else round(t)} / {'-' if f is None else round(f)}"
                    + (f" ({', '.join(notes)})" if notes else ""))
        lines.append(f"| {ca['file']} | {ca['speech_s']:.1f} | {cell(ca)} | {cell(cb)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    sys.path.insert(0, str(REPO))
    from tests.grpc_helpers import STEADY_LADDER_ENV, running_daemon

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--pipecat-python", type=Path, default=REPO / ".venv-pipecat/bin/python")
    ap.add_argument("--gap", type=float, default=5.0)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/pipecat_plugin_bench")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite OUT.md from OUT.json, without running anything")
    args = ap.parse_args()
    refs = references()
    doc: dict[str, Any]
    if args.report_only:  # the figures again from the raw records (e.g. a changed metric)
        doc = json.loads(args.out.with_suffix(".json").read_text())
        for s in doc["systems"].values():
            s["clips"] = per_clip(s["raw"], refs)
            s["summary"] = summary(s["clips"], refs)
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        args.out.with_suffix(".md").write_text(report(doc))
        return 0
    if not args.pipecat_python.is_file():
        raise SystemExit(f"{args.pipecat_python} missing: `make setup` builds .venv-pipecat")
    # The runner starts in another directory; absolute(), not resolve(): the venv's python
    # is a symlink whose target is not the venv.
    args.pipecat_python = args.pipecat_python.absolute()
    clips = [DATA / c for c in BENCH_CLIPS]
    doc = {"host": host(), "gap_s": args.gap, "clips": BENCH_CLIPS, "systems": {}}
    with tempfile.TemporaryDirectory(prefix="pipecat-plugin-bench-") as tmp, \
            running_daemon(Path(tmp), workers=2, env=STEADY_LADDER_ENV) as daemon:
        result = run_pipeline(args.pipecat_python, "alfred", clips, target=daemon.target,
                              gap=args.gap)
        result["load_avg_1m"] = os.getloadavg()[0]
        doc["systems"]["alfred"] = {"raw": result, "clips": per_clip(result, refs)}
    result = run_pipeline(args.pipecat_python, "local", clips, gap=args.gap)
    result["load_avg_1m"] = os.getloadavg()[0]
    doc["systems"]["local"] = {"raw": result, "clips": per_clip(result, refs)}
    for s in doc["systems"].values():
        s["summary"] = summary(s["clips"], refs)
        s["errors"] = s["raw"]["errors"]
        s["load_s"] = s["raw"]["load_s"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
    args.out.with_suffix(".md").write_text(report(doc))
    print(report(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
