"""The fuzzing campaign's fast subset: benchmarks/fuzz_campaign.py's strategies and checks
(:func:`fuzz_campaign.campaign`) with a small count against one real daemon. Zero crashes,
hangs, HTTP 5xx, gRPC UNKNOWN/INTERNAL, WebSocket 1011, config loader exceptions and log
tracebacks, then the daemon alive, ready, and transcribing jfk.wav. The full run (100,000
inputs) is ``python benchmarks/fuzz_campaign.py``; its figures are in benchmarks/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ..conftest import REPO
from ..grpc_helpers import running_daemon

sys.path.insert(0, str(REPO / "benchmarks"))

from fuzz_campaign import Target, campaign

SEED = 7
INPUTS = 1500


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_fuzz_campaign_subset(tmp_path: Path) -> None:
    with running_daemon(tmp_path, workers=1) as d:
        report = campaign(Target(d.target, d.http_port, d.log, d.pid), SEED, INPUTS,
                          minutes=1.0, log=lambda _: None)
    total = report.total
    assert total.inputs >= INPUTS // 2, f"only {total.inputs} inputs within the time cap"
    assert not report.problems(), "\n".join(report.problems())
    for name, tally in report.surfaces.items():
        assert tally.inputs > 0, f"{name}: no input sent"
