"""Engine micro-benchmarks: VAD, trimmed vs 30 s Whisper decode, Smart Turn.

Usage::

    python benchmarks/engine_bench.py [--repeat 15] [--cpu 0] [--out benchmarks/results]

Runs every model on one thread, pinned to one core (``--cpu``, default the first usable
core), on real speech from ``tests/data``. Prints a table and writes
``engine_bench.json`` with every raw timing and ``engine_bench.txt`` with the table.
Targets (medians): VAD <= 0.2 ms per window per session; final decode of a <= 3 s
utterance <= 120 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from alfred_daemon.engine.audio import read_wav  # noqa: E402
from alfred_daemon.engine.config import SttConfig  # noqa: E402
from alfred_daemon.engine.jobs import Models  # noqa: E402
from alfred_daemon.engine.models import ModelsConfig, resolve_all  # noqa: E402
from alfred_daemon.engine.vad import WINDOW, VadState  # noqa: E402

Audio = npt.NDArray[np.float32]


def timed(fn: Callable[[], object], repeat: int, warmup: int = 2) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000.0)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {
        "median_ms": statistics.median(s),
        "p90_ms": s[min(len(s) - 1, int(0.9 * len(s)))],
        "min_ms": s[0],
        "n": len(s),
    }


def main() -> int:  # noqa: PLR0915  (one measurement run, read top to bottom)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--audio", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()

    cpu = args.cpu if args.cpu is not None else min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpu})  # before any model creates its thread pool
    models = Models.load(resolve_all(ModelsConfig()), threads=1)
    assert models.turn is not None

    def wav(name: str) -> Audio:
        return read_wav(args.audio / name)[0]

    silence = np.zeros(3200, np.float32)  # 200 ms of trailing silence, as a final sees it
    clips: dict[str, Audio] = {
        "2s": np.concatenate([wav("spk2_snt1.wav"), silence]),
        "3s": np.concatenate([wav("spk1_snt1.wav"), silence]),
        "5s": np.concatenate([wav("spk1_snt1.wav"), wav("spk2_snt1.wav"), silence]),
        "10s": np.concatenate([wav("jfk.wav")[:160_000], silence]),
    }
    report: dict[str, Any] = {
        "machine": {"cpu": platform.processor() or platform.machine(), "pinned_core": cpu,
                    "python": platform.python_version(), "threads_per_model": 1},
        "repeat": args.repeat,
    }

    # --- VAD
    speech = wav("jfk.wav")
    n_win = speech.size // WINDOW
    windows = speech[: n_win * WINDOW].reshape(n_win, WINDOW)
    state = VadState()
    idx = iter(range(10**9))

    def vad_one() -> None:
        models.vad.prob(state, windows[next(idx) % n_win])

    single = timed(vad_one, repeat=max(200, args.repeat * 20))
    report["vad_single"] = summary(single)
    batched: dict[str, Any] = {}
    for b in (16, 64):
        states = [VadState() for _ in range(b)]
        offsets = np.random.default_rng(0).integers(0, n_win - 1, size=b)

        def vad_batch(states: list[VadState] = states, offsets: Any = offsets) -> None:
            i = next(idx)
            models.vad.batch(states, windows[(offsets + i) % n_win])

        per_call = timed(vad_batch, repeat=max(100, args.repeat * 5))
        s = summary(per_call)
        s["per_session_median_ms"] = s["median_ms"] / b
        batched[f"x{b}"] = s
    report["vad_batched"] = batched

    # --- Whisper finals
    cfg = SttConfig()
    decode: dict[str, Any] = {}
    for name, clip in clips.items():
        row: dict[str, Any] = {"audio_s": round(clip.size / 16_000, 2)}
        for beam in (5, 1):
            def trimmed(c: Audio = clip, b: int = beam) -> object:
                return models.stt.transcribe(c, cfg, beam_size=b)

            row[f"trimmed_beam{beam}"] = summary(timed(trimmed, args.repeat))

        def padded(c: Audio = clip) -> object:
            return models.stt.transcribe_padded(c, beam_size=5)

        row["window30s_transcribe"] = summary(timed(padded, max(3, args.repeat // 3), warmup=1))
        row["text_trimmed"] = models.stt.transcribe(clip, cfg).text
        row["text_30s"] = models.stt.transcribe_padded(clip)
        decode[name] = row
    report["final_decode"] = decode

    # --- Smart Turn
    turn_audio = np.concatenate([wav("spk1_snt2.wav"), silence])
    report["smart_turn"] = summary(timed(lambda: models.turn.predict(turn_audio)  # type: ignore[union-attr]
                                         , args.repeat * 2))
    report["smart_turn_features"] = summary(timed(lambda: models.turn.features(turn_audio),  # type: ignore[union-attr]
                                                  args.repeat * 2))

    targets = {
        "vad_ms_per_window_single<=0.2": report["vad_single"]["median_ms"] <= 0.2,
        "vad_ms_per_window_batched16<=0.2": batched["x16"]["per_session_median_ms"] <= 0.2,
        "final_decode_3s_median<=120ms": decode["3s"]["trimmed_beam5"]["median_ms"] <= 120,
        "final_decode_2s_median<=120ms": decode["2s"]["trimmed_beam5"]["median_ms"] <= 120,
    }
    report["targets_met"] = targets

    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "engine_bench.json"
    out.write_text(json.dumps(report, indent=2))

    lines: list[str] = []
    shown = out.relative_to(REPO) if out.is_relative_to(REPO) else out
    lines.append(f"engine benchmark (1 thread, pinned to core {cpu}); raw figures in {shown}")
    lines.append(f"VAD single window          median {report['vad_single']['median_ms']:.3f} ms")
    for k, v in batched.items():
        lines.append(f"VAD batched {k:<4}           median {v['per_session_median_ms']:.3f} ms "
              f"per session ({v['median_ms']:.2f} ms per call)")
    lines.append(f"{'final decode':<12} {'audio':>6} {'trim b5':>9} {'trim b1':>9} {'30s win':>9}")
    for name, row in decode.items():
        lines.append(
            f"{name:<12} {row['audio_s']:>5.1f}s {row['trimmed_beam5']['median_ms']:>7.1f}ms "
            f"{row['trimmed_beam1']['median_ms']:>7.1f}ms "
            f"{row['window30s_transcribe']['median_ms']:>7.1f}ms")
    lines.append(f"Smart Turn                 median {report['smart_turn']['median_ms']:.1f} ms "
          f"(features {report['smart_turn_features']['median_ms']:.1f} ms)")
    for k, ok in targets.items():
        lines.append(f"target {k}: {'met' if ok else 'NOT met'}")
    text = "\n".join(lines) + "\n"
    (args.out / "engine_bench.txt").write_text(text)
    print(text, end="")
    return 0 if all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
