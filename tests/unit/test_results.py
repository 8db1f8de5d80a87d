"""The update step's bookkeeping (:class:`~alfred_daemon.runtime.results.ResultsApplier`),
without processes: which job results count as what in the daemon's counters."""

from __future__ import annotations

from alfred_daemon.engine.jobs import Job, JobKind, JobResult
from alfred_daemon.runtime.results import ResultsApplier
from alfred_daemon.runtime.stats import Counters, Figures


def _applier() -> ResultsApplier:
    # The supervisor provides these attributes; a result for a session that is gone (an
    # empty table) touches nothing else.
    applier = object.__new__(ResultsApplier)
    applier.counters = Counters()
    applier.figures = Figures()
    applier._by_key = {}
    return applier


def test_finals_that_took_the_30s_window_are_counted() -> None:
    applier = _applier()
    final = Job(JobKind.FINAL, job_id=1, ref_id=1, start=0, end=32_000)
    applier._on_job_result(7, JobResult(final, text="a", fallback=True), worker_id=0)
    applier._on_job_result(7, JobResult(final, text="b"), worker_id=0)
    applier._on_job_result(7, JobResult(final, error="RuntimeError: x"), worker_id=1)
    c = applier.counters
    assert (c.jobs_done, c.job_errors, c.final_fallbacks) == (3, 1, 1)
    assert [ok for _, ok in applier.figures.outcomes] == [True, True, False]
