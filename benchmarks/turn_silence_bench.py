"""Could Smart Turn be asked earlier in a pause? Its verdict against the silence it hears.

Usage::

    python benchmarks/turn_silence_bench.py [--cpu 0] [--out benchmarks/results]

The end-of-turn latency has a floor that no scheduling removes: the VAD's speech end comes
~80-150 ms after the clean one (Silero's probability falls slowly on a word's tail), the
engine asks Smart Turn once ``turn.silence_ms`` (200 ms, 224 on whole 32 ms windows) of the
pause has passed, and Smart Turn then takes its own time (``load_bench``'s latency budget).
Asking it *speculatively*, earlier in the pause, as the final decode is, takes that time
off (``turn.speculative``, on by default) -- if its answer on the shorter audio is as good.

This measures that, on the engine's real asks: every clip of ``tests/data/long``, the
Harvard sentences and jfk, each with 0.3 s before and 2.5 s after, under the load
benchmark's -50 dBFS pink noise floor, streamed through the engine's inline driver with
its defaults but ``turn.speculative`` off. For each TURN job the engine issued, Smart Turn
is run again on the same audio cut back to shorter pauses (96 ms: ``stt.postroll_ms``, when
the speculative ask goes out; 160 ms) and extended to a longer one (288 ms), and the
verdicts (probability > ``turn.threshold``) are compared. An ask at a clip's end has a
known right answer (complete: every clip ends on a finished sentence); one inside a clip
has not (a pause between two sentences is a complete turn too).

Writes ``turn_silence_bench.json`` (every probability) and ``turn_silence_bench.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from loadgen import noise_floor  # noqa: E402
from streaming_bench import host, pct, stream  # noqa: E402

from alfred_daemon.engine.audio import read_wav  # noqa: E402
from alfred_daemon.engine.config import EngineConfig, ms_to_samples  # noqa: E402
from alfred_daemon.engine.jobs import JobKind, Models  # noqa: E402
from alfred_daemon.engine.models import ModelsConfig, resolve_all  # noqa: E402
from alfred_daemon.engine.vad import WINDOW  # noqa: E402

OTHER_MS = (96, 160, 288)
"""Pauses to compare with the engine's ask, in ms of silence after the VAD's speech end
(multiples of the 32 ms VAD window). 288 ms, later than the engine's ask, shows how much a
verdict moves with the cut alone."""
END_WITHIN_S = 0.6
"""An ask this close after the clip's last sample is about the clip's end: a finished
sentence (all the corpus' clips end on one), so a right verdict there is "complete"."""


def clips(data: Path) -> list[Path]:
    manifest = json.loads((data / "long" / "manifest.json").read_text(encoding="utf-8"))
    return ([data / "long" / u["file"] for u in manifest["utterances"]]
            + sorted(data.glob("spk*_snt*.wav")) + [data / "jfk.wav"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpu", type=int, default=None)
    ap.add_argument("--data", type=Path, default=REPO / "tests" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    models = Models.load(resolve_all(ModelsConfig()), threads=1)
    if models.turn is None:
        print("no Smart Turn model", file=sys.stderr)
        return 2
    # The asks compared are the ones made when the VAD confirms the pause.
    cfg = EngineConfig().replace(turn={"speculative": False})
    # The engine asks once the pause reaches turn.silence_ms, on a window boundary.
    asked_ms = -(-ms_to_samples(cfg.turn.silence_ms) // WINDOW) * WINDOW * 1000 // 16_000
    threshold = cfg.turn.threshold
    asks: list[dict[str, Any]] = []
    model_ms: list[float] = []
    for i, path in enumerate(clips(args.data)):
        clip, rate = read_wav(path)
        if rate != 16_000:
            raise SystemExit(f"{path}: {rate} Hz, expected 16000")
        audio = np.concatenate([np.zeros(4_800, np.float32), clip.astype(np.float32),
                                np.zeros(40_000, np.float32)])
        audio = (audio + noise_floor(i, audio.size)).astype(np.float32)
        results, _ = stream(models, audio, cfg)
        for r in results:
            if r.job.kind is not JobKind.TURN or r.error is not None:
                continue
            clip_end = 4_800 + clip.size
            row: dict[str, Any] = {
                "clip": path.name, "end_s": round(r.job.end / 16_000, 3),
                "at_clip_end": clip_end <= r.job.end <= clip_end + END_WITHIN_S * 16_000,
                f"p_{asked_ms}": round(r.probability, 4)}
            for ms in OTHER_MS:
                cut = r.job.end + ms_to_samples(ms - asked_ms)
                t0 = time.perf_counter()
                p, _ = models.turn.predict(audio[r.job.start:cut])
                model_ms.append((time.perf_counter() - t0) * 1000)
                row[f"p_{ms}"] = round(p, 4)
            asks.append(row)
    lines = [f"# Smart Turn's verdict against the pause it hears ({len(asks)} asks)", "",
             f"Host: {host()['cpu']}, AVX-512 VNNI: {host()['avx512_vnni']}. The engine asks "
             f"at {asked_ms} ms of pause; verdict = probability > {threshold}. Smart Turn "
             f"time per ask here: p50 {pct(model_ms, 50):.0f} ms, p95 "
             f"{pct(model_ms, 95):.0f} ms.", "",
             f"| asked at | same verdict as at {asked_ms} ms | complete -> incomplete | "
             "incomplete -> complete | clip ends judged complete |", "|---|---|---|---|---|"]
    summary: dict[str, Any] = {}
    now = [a[f"p_{asked_ms}"] > threshold for a in asks]
    ends = [a for a in asks if a["at_clip_end"]]
    for ms in sorted((asked_ms, *OTHER_MS)):
        other = [a[f"p_{ms}"] > threshold for a in asks]
        lost = sum(n and not e for n, e in zip(now, other, strict=True))
        gained = sum(e and not n for n, e in zip(now, other, strict=True))
        same = len(asks) - lost - gained
        complete_ends = sum(a[f"p_{ms}"] > threshold for a in ends)
        summary[str(ms)] = {"same": same, "complete_to_incomplete": lost,
                            "incomplete_to_complete": gained,
                            "clip_ends_complete": complete_ends, "clip_ends": len(ends)}
        lines.append(f"| {ms} ms | {same} of {len(asks)} | {lost} | {gained} | "
                     f"{complete_ends} of {len(ends)} |")
    lines += ["", "Complete -> incomplete: a turn the engine ends now would wait for the 3 s "
              "silence fallback (or a second ask). Incomplete -> complete: a turn ended while "
              "the user is still mid-sentence."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "turn_silence_bench.json").write_text(json.dumps(
        {"host": host(), "asked_ms": asked_ms, "threshold": threshold, "summary": summary,
         "model_ms": [round(v, 1) for v in model_ms], "asks": asks}, indent=1) + "\n",
        encoding="utf-8")
    (args.out / "turn_silence_bench.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
