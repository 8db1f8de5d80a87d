"""Did a change move the load benchmark? Two source trees, the same load, interleaved rounds.

A refactoring is meant to leave latency alone, but one run of ``load_bench.py`` per tree
cannot show it: past a host's capacity a few late decodes move a p95 by a second from one
run to the next. This script runs ``load_bench.py`` (alfred only, one profile, each N) from
two trees, ``--old`` (a worktree of the earlier commit) and ``--new`` (default: this
checkout), alternating the order by round (odd rounds old first, even rounds new first) so
that a drift of the machine hits both alike, and pools every round's raw latencies per tree
and N with ``load_report.pooled``. Beside the pooled p50/p95 it reports each run's p95 final
and daemon CPU, so that a difference can be set against the run-to-run spread.

``python benchmarks/ab_bench.py --old ../wt-old [--new .] [--sessions 4] [--seconds 120]
[--rounds 4] [--profile realistic] [--work DIR] [--out benchmarks/results]`` writes
``ab_bench_<profile>.{json,md}``; ``--pool-only`` re-reads the runs already in ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from load_report import fmt, host_info, host_line, pooled

HERE = Path(__file__).resolve().parent
METRICS = ("partial_lag", "final_latency", "turn_latency")
RUN_TIMEOUT_S = 1800


def run_once(tree: Path, args: argparse.Namespace, out: Path) -> int:
    """One ``load_bench.py`` run with the daemon and client imported from ``tree``."""
    env = dict(os.environ, PYTHONPATH=f"{tree}:{tree / 'clients' / 'python'}")
    cmd = [sys.executable, str(HERE / "load_bench.py"), "--systems", "alfred",
           "--sessions", args.sessions, "--profiles", args.profile,
           "--seconds", str(args.seconds), "--no-plot", "--out", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "run.log").open("w") as log:
        try:
            return subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=RUN_TIMEOUT_S, check=False).returncode
        except subprocess.TimeoutExpired:
            return -1


def load_rows(work: Path, side: str, profile: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(work.glob(f"{side}-*/load_bench_{profile}.json")):
        rnd = int(f.parent.name.split("-")[1])
        for r in json.loads(f.read_text())["rows"]:
            rows.append(dict(r, round=rnd))
    return rows


def summarise(work: Path, profile: str) -> dict[str, Any]:
    sides = {side: load_rows(work, side, profile) for side in ("old", "new")}
    ns = sorted({r["n"] for rows in sides.values() for r in rows})
    result: dict[str, Any] = {"profile": profile, "by_n": {}}
    for n in ns:
        entry: dict[str, Any] = {}
        for side, rows in sides.items():
            mine = [r for r in rows if r["n"] == n]
            entry[side] = {
                "pooled": {m: pooled(mine, "alfred", m, n) for m in METRICS},
                "runs": [{"round": r["round"],
                          "final_p95": r["final_latency"]["p95"],
                          "cpu_percent": r["cpu_percent"],
                          "frames_dropped": r["frames_dropped"],
                          "worker_restarts": r["worker_restarts"]} for r in mine],
            }
            p95s = [r["final_latency"]["p95"] for r in mine if r["final_latency"]["p95"]]
            entry[side]["final_p95_run_mean"] = float(np.mean(p95s)) if p95s else None
            entry[side]["final_p95_run_sd"] = float(np.std(p95s, ddof=1)) if len(p95s) > 1 else None
        result["by_n"][str(n)] = entry
    return result


def markdown(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    lines = [f"# A/B load benchmark, profile {summary['profile']}", "",
             host_line(meta["host"]), "",
             f"old: `{meta['old']}`, new: `{meta['new']}`; {meta['seconds']} s per run, "
             "rounds interleaved; p50 / p95 ms pooled over every round (count).", "",
             "| N | side | partial lag | final | end of turn | per-run final p95 | "
             "per-run daemon CPU % |", "|---|---|---|---|---|---|---|"]
    for n, entry in summary["by_n"].items():
        for side in ("old", "new"):
            e = entry[side]
            cells = [n, side]
            for m in METRICS:
                p = e["pooled"][m]
                cells.append(f"{fmt(p['p50'])} / {fmt(p['p95'])} ({p['count']})")
            cells.append(", ".join(fmt(r["final_p95"]) for r in e["runs"]))
            cells.append(", ".join(fmt(r["cpu_percent"]) for r in e["runs"]))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def git_head(tree: Path) -> str:
    """The tree's commit, with ``-dirty`` if it has uncommitted changes to tracked files:
    an A/B is usually run before the change under test is committed."""
    done = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty",
                           "--abbrev=7", "--exclude", "*"],
                          capture_output=True, text=True, check=False)
    return done.stdout.strip() or str(tree)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", type=Path, required=True, help="worktree of the earlier commit")
    ap.add_argument("--new", type=Path, default=HERE.parent)
    ap.add_argument("--sessions", default="4", help="comma-separated N, as load_bench.py")
    ap.add_argument("--seconds", type=int, default=120)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--profile", default="realistic", choices=("realistic", "harvard"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/alfred-ab"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--pool-only", action="store_true")
    args = ap.parse_args()
    if args.rounds < 1 or args.seconds < 10:
        print("--rounds must be at least 1 and --seconds at least 10", file=sys.stderr)
        return 2
    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    for side, tree in trees.items():
        if not (tree / "alfred_daemon").is_dir():
            print(f"--{side} {tree} is not an alfred-daemon source tree", file=sys.stderr)
            return 2
    if not args.pool_only:
        for rnd in range(1, args.rounds + 1):
            order = ("old", "new") if rnd % 2 else ("new", "old")
            for side in order:
                t0 = time.monotonic()
                rc = run_once(trees[side], args, args.work / f"{side}-{rnd}")
                print(f"round {rnd} {side}: rc={rc} in {time.monotonic() - t0:.0f} s", flush=True)
    summary = summarise(args.work, args.profile)
    meta = {"host": host_info(), "old": git_head(trees["old"]), "new": git_head(trees["new"]),
            "seconds": args.seconds, "rounds": args.rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"ab_bench_{args.profile}"
    stem.with_suffix(".json").write_text(json.dumps(dict(meta, **summary), indent=1))
    report = markdown(summary, meta)
    stem.with_suffix(".md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
