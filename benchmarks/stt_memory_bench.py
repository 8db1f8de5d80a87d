"""Does a Whisper worker's memory stay flat over many decodes of real speech?

A job worker decodes windows of every length the streaming engine asks for: partial
windows of 2-6 s, finals of whole utterances, the 30 s fallback window, batches of one to
four sessions, beams of 1, 2 and 5. This script replays such a mix (seeded) through one
:class:`~alfred_daemon.engine.stt.WhisperTranscriber` on one thread, with ``malloc_trim``
after each decode as the worker does, and samples the process's anonymous resident memory
every ``--every`` decodes. Each variant runs in a fresh process because the settings it
compares (oneDNN's primitive cache capacity) are read once per process:

* ``onednn_default``: oneDNN's own cache of 1024 primitives;
* ``engine``: what the engine sets (``stt.ONEDNN_CACHE``).

Writes ``results/stt_memory_bench.{json,md}``: the memory series per variant and the CPU
seconds per decode (process time, so a busy machine changes it little).

    PYTHONPATH=. .venv/bin/python benchmarks/stt_memory_bench.py [--decodes 240]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
CORPUS = REPO / "tests" / "data" / "long"
VARIANTS = {"onednn_default": {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}, "engine": {}}


def _memory_mb() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("RssAnon", "VmRSS"):
                out[key] = int(value.split()[0]) // 1024
    return out


def run_variant(decodes: int, every: int, seed: int) -> dict[str, Any]:
    """One process's run: the seeded mix of decodes, memory every ``every`` decodes."""
    import numpy as np

    from alfred_daemon.engine.audio import read_wav
    from alfred_daemon.engine.config import SttConfig
    from alfred_daemon.engine.models import resolve_stt
    from alfred_daemon.engine.stt import DecodeRequest, WhisperTranscriber

    clips = json.loads((CORPUS / "manifest.json").read_text())["utterances"]
    audio = np.concatenate([read_wav(CORPUS / c["file"])[0] for c in clips])
    rng = random.Random(seed)
    cfg = SttConfig()
    stt = WhisperTranscriber(resolve_stt(None), threads=1)
    libc = ctypes.CDLL("libc.so.6")
    series = [{"decodes": 0, **_memory_mb()}]
    cpu0 = time.process_time()
    for i in range(decodes):
        batch = []
        for _ in range(rng.choice([1, 1, 2, 3, 4])):
            seconds = rng.uniform(0.5, 20.0)
            start = rng.randrange(0, audio.size - int(seconds * 16_000))
            batch.append(DecodeRequest(
                audio[start:start + int(seconds * 16_000)], cfg,
                beam_size=rng.choice([1, 2, 5]), align=rng.random() < 0.5,
                fallback=rng.random() < 0.3))
        stt.transcribe_many(batch)
        libc.malloc_trim(0)
        if (i + 1) % every == 0:
            series.append({"decodes": i + 1, **_memory_mb()})
    cpu = time.process_time() - cpu0
    return {"onednn_cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"),
            "series": series, "cpu_s_per_decode": round(cpu / decodes, 3)}


def _host() -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    vnni = "avx512_vnni" in Path("/proc/cpuinfo").read_text()
    return f"{model}, AVX-512 VNNI: {'yes' if vnni else 'no'}, {len(os.sched_getaffinity(0))} cores"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decodes", type=int, default=240)
    ap.add_argument("--every", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--variant", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:  # a child: print one JSON line
        print(json.dumps(run_variant(args.decodes, args.every, args.seed)))
        return
    t0 = time.time()
    procs = {}
    for name, extra in VARIANTS.items():  # concurrently: one thread each, 2 cores
        env = {k: v for k, v in os.environ.items() if k != "ONEDNN_PRIMITIVE_CACHE_CAPACITY"}
        env |= extra | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
                        "OPENBLAS_NUM_THREADS": "1"}
        procs[name] = subprocess.Popen(
            [sys.executable, __file__, "--variant", name, "--decodes", str(args.decodes),
             "--every", str(args.every), "--seed", str(args.seed)],
            env=env, stdout=subprocess.PIPE, text=True)
    results = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise SystemExit(f"variant {name} failed with exit code {proc.returncode}")
        results[name] = json.loads(out.strip().splitlines()[-1])
    doc = {"host": _host(), "decodes": args.decodes, "seed": args.seed,
           "wall_s": round(time.time() - t0), "variants": results}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "stt_memory_bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    lines = [f"# Whisper worker memory over {args.decodes} decodes (seed {args.seed})", "",
             f"Host: {doc['host']}. Command: `PYTHONPATH=. .venv/bin/python "
             f"benchmarks/stt_memory_bench.py --decodes {args.decodes}`", "",
             "Anonymous resident memory (MB) after n decodes of a mixed batch of real-speech "
             "windows (0.5-20 s, beams 1/2/5, batches of 1-4, 30 % with the 30 s fallback).",
             "", "| decodes | " + " | ".join(
                 f"{n} (oneDNN cache {r['onednn_cache']})" for n, r in results.items()) + " |",
             "|---|" + "---|" * len(results)]
    for row in range(len(next(iter(results.values()))["series"])):
        cells = [str(r["series"][row]["RssAnon"]) for r in results.values()]
        lines.append(f"| {next(iter(results.values()))['series'][row]['decodes']} | "
                     + " | ".join(cells) + " |")
    lines += ["", "CPU seconds per decode: " + ", ".join(
        f"{n} {r['cpu_s_per_decode']}" for n, r in results.items()) + "."]
    (RESULTS / "stt_memory_bench.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
