"""The A/B benchmark's pooling, without a daemon: each side's rounds pool per N, the run
list keeps each round's own p95, and the report names both sides. (The runs themselves:
``benchmarks/ab_bench.py``.)"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ..conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import ab_bench


def _row(n: int, finals: list[float], cpu: float) -> dict[str, Any]:
    raw = {"partial_lag": [100.0], "final_latency": finals, "turn_latency": [300.0]}
    return {"system": "alfred", "n": n, "raw": raw, "cpu_percent": cpu,
            "final_latency": {"p95": max(finals)}, "frames_dropped": 0, "worker_restarts": 0}


def _write(work: Path, side: str, rnd: int, rows: list[dict[str, Any]]) -> None:
    d = work / f"{side}-{rnd}"
    d.mkdir(parents=True)
    (d / "load_bench_realistic.json").write_text(json.dumps({"rows": rows}))


def test_rounds_pool_per_side_and_n(tmp_path: Path) -> None:
    _write(tmp_path, "old", 1, [_row(4, [100.0, 200.0], 130.0)])
    _write(tmp_path, "old", 2, [_row(4, [300.0, 400.0], 134.0)])
    _write(tmp_path, "new", 1, [_row(4, [1000.0] * 2, 140.0), _row(1, [50.0], 40.0)])
    summary = ab_bench.summarise(tmp_path, "realistic")
    assert set(summary["by_n"]) == {"1", "4"}
    old4 = summary["by_n"]["4"]["old"]
    assert old4["pooled"]["final_latency"]["count"] == 4
    assert old4["pooled"]["final_latency"]["p50"] == 250.0
    assert [r["final_p95"] for r in old4["runs"]] == [200.0, 400.0]
    assert old4["final_p95_run_mean"] == 300.0
    assert summary["by_n"]["4"]["new"]["pooled"]["final_latency"]["p50"] == 1000.0
    # N = 1 ran on one side only: the other side has nothing, not the other N's values.
    assert summary["by_n"]["1"]["old"]["pooled"]["final_latency"]["count"] == 0
    meta = {"host": {"model": "test cpu", "avx512_vnni": 0, "cores": 2},
            "old": "aaaa", "new": "bbbb", "seconds": 120, "rounds": 2}
    report = ab_bench.markdown(summary, meta)
    assert "old: `aaaa`, new: `bbbb`" in report
    assert "| 4 | old | 100 / 100 (2) | 250 / 385 (4) |" in report
