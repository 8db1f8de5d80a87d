"""Streaming transcription cost by utterance length: is a partial's cost flat, is CPU per
second of audio flat?

Usage::

    python benchmarks/streaming_bench.py [--cpu 0] [--scale 3] [--out benchmarks/results]

Everything runs through the engine's inline driver (``Session``, as ``alfred-daemon
transcribe`` does), one model thread pinned to one core, audio fed in 20 ms frames as fast
as it is processed. Two measurements:

* **Partial decode time by utterance length.** Continuous utterances of ~2, 8, 16 and 60 s,
  made of LJSpeech clips from ``tests/data/long`` with their leading and trailing silences
  cut, decoded with ``vad.min_silence_ms = 2000`` so that each stays one utterance (the
  clips' own short pauses stay in). Every partial job's decode time (encode + decode, as
  the worker reports it) is recorded. Target: p95 of each band within 1.5x of the 2 s
  band's.
* **CPU per second of audio by clip length.** Every clip of ``tests/data/long`` with the
  default configuration (the VAD splits at its pauses, as for a user), process CPU time of
  the whole stream (VAD, partials, finals, Smart Turn; model loading excluded). Target: the
  16 s passage (LibriSpeech 1221-135766-0001) within 1.3x of clips under 3 s.

Writes ``streaming_bench.json`` (every job time) and ``streaming_bench.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alfred_daemon.engine.audio import float_to_pcm16, read_wav  # noqa: E402
from alfred_daemon.engine.config import EngineConfig, SttConfig, VadConfig  # noqa: E402
from alfred_daemon.engine.jobs import JobKind, JobResult, Models  # noqa: E402
from alfred_daemon.engine.models import ModelsConfig, resolve_all  # noqa: E402
from alfred_daemon.engine.session import Session  # noqa: E402

Audio = npt.NDArray[np.float32]
FRAME_BYTES = 640  # 20 ms at 16 kHz, LINEAR16
PASSAGE = "sherpa_1221-135766-0001.wav"
"""The 16 s passage of acceptance item 2 (LibriSpeech test-clean 1221-135766-0001)."""
BANDS_S = (2.0, 8.0, 16.0, 60.0)


def host() -> dict[str, Any]:
    flags = ""
    model = ""
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("flags") and not flags:
                flags = line
            elif line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
    return {"cpu": model, "avx512_vnni": " avx512_vnni" in flags, "avx2": " avx2" in flags,
            "cores": len(os.sched_getaffinity(0)), "python": platform.python_version()}


def stream(models: Models, audio: Audio, config: EngineConfig | None = None
           ) -> tuple[list[JobResult], float]:
    """Stream ``audio`` through a Session; every job result and the CPU seconds it took."""
    results: list[JobResult] = []
    session = Session(models, config, on_job=results.append)
    pcm = float_to_pcm16(np.concatenate([audio, np.zeros(16_000, np.float32)]))
    t0 = time.process_time()
    for i in range(0, len(pcm), FRAME_BYTES):
        session.push(pcm[i : i + FRAME_BYTES])
    session.close()
    return results, time.process_time() - t0


def trimmed(audio: Audio) -> Audio:
    loud = np.nonzero(np.abs(audio) > 0.02 * float(np.max(np.abs(audio))))[0]
    return audio[max(0, int(loud[0]) - 800) : int(loud[-1]) + 800]


def continuous(clips: list[Audio], seconds: float, start: int) -> Audio:
    """About ``seconds`` of speech from consecutive clips (from ``start``), silences cut."""
    parts: list[Audio] = []
    total, i = 0, start
    while total < seconds * 16_000:
        part = trimmed(clips[i % len(clips)])
        parts.append(part)
        total += part.size
        i += 1
    return np.concatenate(parts)[: int(seconds * 16_000)]


def ratio_interval(values: list[float], base: list[float], n: int = 2_000,
                   seed: int = 0) -> tuple[float, float]:
    """90 % bootstrap interval of p95(values) / p95(base): the sampling noise of a ratio of
    two p95s taken from a hundred-odd partials each."""
    rng = np.random.default_rng(seed)
    v, b = np.asarray(values), np.asarray(base)
    ratios = (np.percentile(rng.choice(v, (n, v.size)), 95, axis=1)
              / np.percentile(rng.choice(b, (n, b.size)), 95, axis=1))
    return float(np.percentile(ratios, 5)), float(np.percentile(ratios, 95))


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:  # noqa: PLR0915  (one measurement run, read top to bottom)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--audio", type=Path, default=REPO / "tests" / "data" / "long")
    ap.add_argument("--scale", type=int, default=1,
                    help="utterances per band times this (more partials, a steadier p95)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    ap.add_argument("--stt", action="append", default=[], metavar="KEY=VALUE",
                    help="override an stt knob (number or true/false), e.g. "
                    "partial_prompt_tokens=32")
    args = ap.parse_args()
    stt = SttConfig()
    for item in args.stt:
        key, _, value = item.partition("=")
        if not hasattr(stt, key):
            ap.error(f"--stt {item}: SttConfig has no knob {key!r}")
        current = getattr(stt, key)
        parsed: Any = (value.lower() in ("1", "true", "yes") if isinstance(current, bool)
                       else type(current)(value))
        stt = dataclasses.replace(stt, **{key: parsed})
    machine = host()  # before pinning, which would make it count one core
    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # before any model creates its thread pool
    models = Models.load(resolve_all(ModelsConfig()), threads=1)
    manifest = json.loads((args.audio / "manifest.json").read_text())
    corpus = {u["file"]: read_wav(args.audio / u["file"])[0] for u in manifest["utterances"]}
    lj = [corpus[name] for name in sorted(corpus) if name.startswith("coqui_LJ")]
    stream(models, lj[0][:48_000])  # warm-up: first calls allocate

    report: dict[str, Any] = {"host": machine, "cpu_pinned": cpu, "stt_overrides": args.stt,
                              "bands": {}, "clips": []}
    one = EngineConfig(vad=VadConfig(min_silence_ms=2_000), stt=stt)
    base_p95 = None
    for seconds in BANDS_S:
        # Enough partials per band for a p95 (a 2 s utterance has one or two).
        repeats = args.scale * (
            2 if seconds >= 60 else (4 if seconds >= 16 else (8 if seconds >= 8 else 120)))
        partials: list[float] = []
        finals: list[float] = []
        windows: list[float] = []
        cpu_s = audio_s = 0.0
        for r in range(repeats):
            audio = continuous(lj, seconds, start=3 * r)
            results, spent = stream(models, audio, one)
            cpu_s += spent
            audio_s += audio.size / 16_000
            for res in results:
                if res.job.kind is JobKind.PARTIAL and res.error is None:
                    partials.append(res.ms)
                    windows.append(res.job.samples / 16_000)
                elif res.job.kind is JobKind.FINAL:
                    finals.append(res.ms)
        p95 = pct(partials, 95)
        base_p95 = base_p95 or p95
        report["bands"][f"{seconds:.0f}s"] = {
            "utterances": repeats, "partials": len(partials),
            "partial_ms_p50": pct(partials, 50), "partial_ms_p95": p95,
            "partial_p95_vs_2s": p95 / base_p95,
            "partial_window_s_max": max(windows, default=0.0),
            "final_ms_p50": pct(finals, 50), "final_ms_max": max(finals, default=0.0),
            "cpu_s_per_audio_s": cpu_s / audio_s,
            "partial_ms": partials, "final_ms": finals,
        }
        print(f"{seconds:4.0f} s utterances: partial p50 {pct(partials, 50):6.1f} ms, "
              f"p95 {p95:6.1f} ms ({p95 / base_p95:.2f}x 2 s), window max "
              f"{max(windows, default=0.0):.1f} s, CPU {cpu_s / audio_s:.3f} s/s", flush=True)

    for name in sorted(corpus):
        audio = corpus[name]
        _, spent = stream(models, audio, EngineConfig(stt=stt))
        report["clips"].append({"file": name, "seconds": audio.size / 16_000,
                                "cpu_s": spent})
    short = [c for c in report["clips"] if c["seconds"] < 3.0]
    short_rate = sum(c["cpu_s"] for c in short) / sum(c["seconds"] for c in short)
    passage = next(c for c in report["clips"] if c["file"] == PASSAGE)
    passage_rate = passage["cpu_s"] / passage["seconds"]
    by_band = {}
    for lo, hi in ((0, 3), (3, 5), (5, 10), (10, 40)):
        sel = [c for c in report["clips"] if lo <= c["seconds"] < hi]
        by_band[f"{lo}-{hi} s"] = (sum(c["cpu_s"] for c in sel)
                                   / sum(c["seconds"] for c in sel), len(sel))
    report["cpu_per_audio_s"] = {"short_clips": short_rate, "passage_16s": passage_rate,
                                 "ratio": passage_rate / short_rate,
                                 "by_band": {k: v[0] for k, v in by_band.items()}}
    base = report["bands"][f"{BANDS_S[0]:.0f}s"]["partial_ms"]
    for b in report["bands"].values():
        b["partial_p95_vs_2s_interval"] = ratio_interval(b["partial_ms"], base)
    flat = max(b["partial_p95_vs_2s"] for b in report["bands"].values())
    report["targets"] = {"partial_p95_within_1.5x": flat <= 1.5,
                         "passage_cpu_within_1.3x_of_short": passage_rate <= 1.3 * short_rate}
    print(f"CPU per audio second: clips < 3 s {short_rate:.3f}, 16 s passage "
          f"{passage_rate:.3f} ({passage_rate / short_rate:.2f}x)")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming_bench.json").write_text(json.dumps(report, indent=1))
    h = report["host"]
    lines = [
        "# Streaming cost by utterance length",
        "",
        f"Host: {h['cpu']}, {h['cores']} cores, AVX-512 VNNI: {h['avx512_vnni']}; one model "
        f"thread pinned to core {cpu}. `python benchmarks/streaming_bench.py"
        + "".join(f" --stt {o}" for o in args.stt) + "`.",
        "",
        "Partial decode time (encode + decode, per job) in continuous utterances:",
        "",
        "| utterance | partials | p50 ms | p95 ms | p95 vs 2 s (90 % interval) | "
        "largest window s | final p50 ms | CPU s per audio s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, b in report["bands"].items():
        lines.append(
            f"| {name} (x{b['utterances']}) | {b['partials']} | {b['partial_ms_p50']:.0f} | "
            f"{b['partial_ms_p95']:.0f} | {b['partial_p95_vs_2s']:.2f}x "
            f"({b['partial_p95_vs_2s_interval'][0]:.2f}-"
            f"{b['partial_p95_vs_2s_interval'][1]:.2f}) | "
            f"{b['partial_window_s_max']:.1f} | {b['final_ms_p50']:.0f} | "
            f"{b['cpu_s_per_audio_s']:.3f} |")
    lines += ["", "The interval: 5th and 95th percentile of the ratio over 2,000 bootstrap "
              "resamples of both bands' partials, i.e. how far the p95s' sampling noise alone "
              "moves it.", "",
              "CPU seconds per second of audio, every clip of tests/data/long, default "
              "config:", "", "| clip length | clips | CPU s per audio s |", "|---|---|---|"]
    for band, (rate, n) in by_band.items():
        lines.append(f"| {band} | {n} | {rate:.3f} |")
    lines += ["", f"16 s passage ({PASSAGE}): {passage_rate:.3f} s/s = "
              f"{passage_rate / short_rate:.2f}x the clips under 3 s ({short_rate:.3f}).",
              "", "Targets: " + ", ".join(f"{k}: {'met' if v else 'NOT met'}"
                                         for k, v in report["targets"].items()), ""]
    (args.out / "streaming_bench.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
