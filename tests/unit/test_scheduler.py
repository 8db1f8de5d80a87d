"""Unit tests of :class:`~alfred_daemon.runtime.scheduler.Scheduler`: the runtime's rules of
which work is urgent and which lane takes it, pinned without processes, sockets or models.

Sessions, their cores and lanes are small fakes with exactly the fields the scheduler reads;
time is passed in. Defaults of ``ProcessorConfig`` used below: ``reserved_job_lanes = 1``,
``reserve_patience_ms = 100``, ``max_batch_size = 32``, ``frame_queue_size = 100``,
``max_decode_batch = 1``.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pytest

from alfred_daemon.engine.jobs import Job, JobKind
from alfred_daemon.runtime.backpressure import Level
from alfred_daemon.runtime.config import ProcessorConfig
from alfred_daemon.runtime.fairness import AHEAD_RANK, Standing
from alfred_daemon.runtime.scheduler import (
    MAX_VAD_WINDOWS_PER_ITEM,
    RANK_FINAL,
    RANK_PARTIAL,
    RANK_SPECULATIVE,
    RANK_SPECULATIVE_TURN,
    RANK_TURN,
    Capacity,
    LaneKind,
    Plan,
    Scheduler,
    Task,
    eligible,
    owed,
)
from alfred_daemon.runtime.stats import Counters

NOW = 1000.0
PATIENCE_S = ProcessorConfig().reserve_patience_ms / 1000.0


@dataclass
class FakeCore:
    decision_pending: bool = False
    speaking: bool = False
    speculative: set[int] = field(default_factory=set)
    """Job ids of live speculations."""
    abandoned: set[int] = field(default_factory=set)
    """Job ids whose result is no longer wanted."""
    paused: set[int] = field(default_factory=set)
    """Job ids of partials whose utterance has paused."""

    def is_speculative(self, job: Job) -> bool:
        return job.job_id in self.speculative

    def wants(self, job: Job) -> bool:
        return job.job_id not in self.abandoned

    def superseded(self, job: Job) -> bool:
        return job.kind is JobKind.PARTIAL and job.job_id in self.paused


@dataclass
class FakeSession:
    key: int
    core: FakeCore = field(default_factory=FakeCore)
    queued_windows: int = 0
    vad_next: int = 0
    write_times: deque[tuple[float, float]] = field(default_factory=deque)
    vad_in_flight: bool = False
    vad_worker: int = -1
    ahead: bool = False
    stalled: bool = False


@dataclass
class FakeLane:
    kind: LaneKind
    worker_id: int
    job_lane_busy: bool = False


class Harness:
    """A scheduler over fake sessions, recording what it sheds and skips."""

    def __init__(self, n_sessions: int = 3, **processor: Any) -> None:
        self.proc = dataclasses.replace(ProcessorConfig(), **processor)
        self.sessions = {k: FakeSession(k) for k in range(1, n_sessions + 1)}
        self.counters = Counters()
        self.shed: list[tuple[int, int, str]] = []
        self.skipped: list[tuple[int, int, str]] = []
        self.sched: Scheduler[FakeSession] = Scheduler(
            self.sessions, lambda: self.proc, self._standing, shed=self._shed,
            skip=self._skip, counters=self.counters)
        self._ids = iter(range(1, 10_000))

    @staticmethod
    def _standing(s: FakeSession, now: float) -> Standing:
        return Standing(ahead=s.ahead, stalled=s.stalled, catching_up=False)

    def _shed(self, s: FakeSession, n: int, reason: str) -> None:
        self.shed.append((s.key, n, reason))
        s.queued_windows -= n
        s.vad_next += n

    def _skip(self, s: FakeSession, job: Job, why: str) -> None:
        self.skipped.append((s.key, job.job_id, why))

    def job(self, key: int, kind: JobKind, *, at: float = NOW, speculative: bool = False,
            spare: bool = False) -> Job:
        """Queue one job of session ``key`` (as its pump would), ``at`` a given time."""
        job = Job(kind, next(self._ids), 1, 0, 16_000)
        s = self.sessions[key]
        if speculative:
            s.core.speculative.add(job.job_id)
        ahead, s.ahead = s.ahead, spare
        self.sched.enqueue(s, [job], at)
        s.ahead = ahead
        return job

    def assign(self, n_job: int = 1, n_vad: int = 0, *, job_lanes: int | None = None,
               level: Level = Level.NORMAL, busy: float = 0.0,
               real_time_running: bool = False,
               ahead_running: int = 0) -> Plan[FakeLane, FakeSession]:
        idle = [FakeLane(LaneKind.VAD, i) for i in range(n_vad)]
        idle += [FakeLane(LaneKind.JOB, i) for i in range(n_job)]
        capacity = Capacity(job_lanes=n_job if job_lanes is None else job_lanes,
                            real_time_running=real_time_running,
                            ahead_running=ahead_running, busy=busy, level=level)
        return self.sched.assign(idle, capacity, NOW)


def job_ids(plan: Plan[FakeLane, FakeSession]) -> list[list[int]]:
    return [[t.job.job_id for t in tasks] for _, tasks in plan.jobs]


# ----------------------------------------------------------------------------- ranking


def test_rank_order_final_turn_speculation_partial() -> None:
    h = Harness()
    partial = h.job(1, JobKind.PARTIAL)
    spec = h.job(2, JobKind.FINAL, speculative=True)
    turn = h.job(3, JobKind.TURN)
    final = h.job(1, JobKind.FINAL)
    ranks = {t.job.job_id: h.sched.rank(t) for t in h.sched.queue}
    assert ranks[final.job_id][0] == RANK_FINAL == 0
    assert ranks[turn.job_id][0] == RANK_TURN == 1
    assert ranks[spec.job_id][0] == RANK_SPECULATIVE == 2
    assert ranks[partial.job_id][0] == RANK_PARTIAL == 4
    # One lane at a time: the same order.
    order = [job_ids(h.assign())[0][0] for _ in range(4)]
    assert order == [final.job_id, turn.job_id, spec.job_id, partial.job_id]
    assert h.assign().jobs == []


def test_speculation_ranks_as_final_once_adopted() -> None:
    h = Harness()
    turn = h.job(2, JobKind.TURN)
    spec = h.job(1, JobKind.FINAL, speculative=True)
    h.sessions[1].core.speculative.clear()  # the VAD confirmed the speech end
    assert job_ids(h.assign()) == [[spec.job_id]]
    assert job_ids(h.assign()) == [[turn.job_id]]


def test_a_speculative_turn_ask_goes_after_speculative_finals_until_adopted() -> None:
    h = Harness()
    partial = h.job(1, JobKind.PARTIAL)
    ask = h.job(2, JobKind.TURN, speculative=True)
    spec = h.job(2, JobKind.FINAL, speculative=True)  # issued later, behind a partial
    task = next(t for t in h.sched.queue if t.job is ask)
    assert h.sched.rank(task)[0] == RANK_SPECULATIVE_TURN
    assert [job_ids(h.assign())[0][0] for _ in range(3)] == [
        spec.job_id, ask.job_id, partial.job_id]

    h = Harness()
    partial = h.job(1, JobKind.PARTIAL)
    ask = h.job(2, JobKind.TURN, speculative=True)
    final = h.job(3, JobKind.FINAL)
    task = next(t for t in h.sched.queue if t.job is ask)
    h.sessions[2].core.speculative.clear()  # the VAD confirmed the pause: owed now
    assert h.sched.rank(task)[0] == RANK_TURN
    assert [job_ids(h.assign())[0][0] for _ in range(3)] == [
        final.job_id, ask.job_id, partial.job_id]


def test_oldest_first_within_a_kind() -> None:
    h = Harness()
    first = h.job(2, JobKind.PARTIAL)
    second = h.job(1, JobKind.PARTIAL)
    assert [job_ids(h.assign())[0][0] for _ in range(2)] == [first.job_id, second.job_id]


def test_spare_work_ranks_after_all_real_time_work() -> None:
    h = Harness()
    spare_final = h.job(1, JobKind.FINAL, spare=True)
    partial = h.job(2, JobKind.PARTIAL)
    task = next(t for t in h.sched.queue if t.job is spare_final)
    assert h.sched.rank(task) == (RANK_FINAL + AHEAD_RANK, task.seq)
    assert h.sched.rank(task) > max(h.sched.rank(t) for t in h.sched.queue if t is not task)
    # Real-time work is queued: the spare final waits, even with a lane idle.
    assert job_ids(h.assign(2)) == [[partial.job_id]]
    assert job_ids(h.assign(2)) == [[spare_final.job_id]]


@pytest.mark.parametrize(("rank", "waited", "partials", "ahead", "expected"), [
    (RANK_FINAL, 0.0, False, False, True),  # owed: a reserved lane takes it at once
    (RANK_TURN, 0.0, False, False, True),
    (RANK_SPECULATIVE, 0.0, False, True, True),  # a decision started early: at once too
    (RANK_SPECULATIVE_TURN, 0.0, False, True, True),
    (AHEAD_RANK + RANK_SPECULATIVE, 99.0, False, True, False),
    (RANK_PARTIAL, PATIENCE_S - 1e-6, False, True, False),
    (RANK_PARTIAL, PATIENCE_S, False, True, True),
    (RANK_PARTIAL, 0.0, True, False, True),  # ahead=False only keeps spare work out
    (AHEAD_RANK + RANK_FINAL, 0.0, True, True, True),
    (AHEAD_RANK + RANK_FINAL, 0.0, True, False, False),
    (AHEAD_RANK + RANK_FINAL, 99.0, False, True, False),  # never on a reserved lane
])
def test_eligibility(rank: int, waited: float, partials: bool, ahead: bool,
                     expected: bool) -> None:
    assert eligible(rank, waited, partials=partials, ahead=ahead,
                    patience=PATIENCE_S) is expected


def test_owed_is_final_and_turn_only() -> None:
    assert [owed(r) for r in (RANK_FINAL, RANK_TURN, RANK_SPECULATIVE, RANK_PARTIAL)] == [
        True, True, False, False]


# ----------------------------------------------------------------------------- reservation


def test_reserved_lane_kept_from_partials_while_a_decision_is_pending() -> None:
    h = Harness()
    h.sessions[3].core.decision_pending = True
    a = h.job(1, JobKind.PARTIAL)
    h.job(2, JobKind.PARTIAL)
    # Two idle lanes, one reserved: only the first takes a partial.
    assert job_ids(h.assign(2)) == [[a.job_id]]
    assert len(h.sched.queue) == 1


def test_no_reservation_without_a_pending_decision() -> None:
    h = Harness()
    a, b = h.job(1, JobKind.PARTIAL), h.job(2, JobKind.PARTIAL)
    assert job_ids(h.assign(2)) == [[a.job_id], [b.job_id]]


def test_a_pending_decision_of_a_session_ahead_reserves_nothing() -> None:
    h = Harness()
    h.sessions[3].core.decision_pending = True
    h.sessions[3].ahead = True
    a, b = h.job(1, JobKind.PARTIAL), h.job(2, JobKind.PARTIAL)
    assert job_ids(h.assign(2)) == [[a.job_id], [b.job_id]]


def test_reserved_lane_takes_owed_work_at_once() -> None:
    h = Harness()
    h.sessions[3].core.decision_pending = True
    h.job(1, JobKind.PARTIAL)
    turn = h.job(3, JobKind.TURN)
    final = h.job(2, JobKind.FINAL)
    assert job_ids(h.assign(2)) == [[final.job_id], [turn.job_id]]  # the 2nd is reserved


def test_reserved_lane_takes_a_partial_after_patience() -> None:
    h = Harness()
    h.sessions[3].core.decision_pending = True
    a = h.job(1, JobKind.PARTIAL, at=NOW - 1.0)
    b = h.job(2, JobKind.PARTIAL, at=NOW - 1.0)
    assert job_ids(h.assign(2)) == [[a.job_id], [b.job_id]]
    h.job(1, JobKind.PARTIAL, at=NOW - PATIENCE_S / 2)
    assert h.assign(1, job_lanes=2).jobs == []  # one idle lane of two: reserved
    h.sched.queue[0].queued_at = NOW - 1.0
    assert len(h.assign(1, job_lanes=2).jobs) == 1


def test_a_sessions_speculated_final_and_turn_ask_run_side_by_side() -> None:
    # One session paused: its final and Smart Turn ask are both speculated. Two idle lanes,
    # one reserved for the decision -- which is what these two are, started early, so
    # they take both lanes instead of running one after the other.
    h = Harness()
    h.sessions[2].core.decision_pending = True
    partial = h.job(1, JobKind.PARTIAL)
    spec = h.job(2, JobKind.FINAL, speculative=True)
    ask = h.job(2, JobKind.TURN, speculative=True)
    assert job_ids(h.assign(2)) == [[spec.job_id], [ask.job_id]]
    assert [t.job for t in h.sched.queue] == [partial]


def test_reservation_is_capped_to_leave_one_lane() -> None:
    h = Harness(reserved_job_lanes=4)
    h.sessions[3].core.decision_pending = True
    a = h.job(1, JobKind.PARTIAL)
    assert job_ids(h.assign(1, job_lanes=1)) == [[a.job_id]]  # single lane: no reserve
    b, c = h.job(1, JobKind.PARTIAL), h.job(2, JobKind.PARTIAL)
    assert job_ids(h.assign(3, job_lanes=3)) == [[b.job_id]]  # 3 lanes: 2 held
    assert job_ids(h.assign(3, job_lanes=3)) == [[c.job_id]]


# ----------------------------------------------------------------------------- spare work


def test_spare_work_waits_while_a_real_time_session_speaks() -> None:
    h = Harness()
    h.sessions[2].core.speaking = True
    h.job(1, JobKind.FINAL, spare=True)
    assert h.assign(2).jobs == []


@pytest.mark.parametrize("why", ["queued", "running", "busy"])
def test_spare_work_waits_for_real_time_work(why: str) -> None:
    h = Harness()
    h.job(1, JobKind.PARTIAL, spare=True)
    if why == "queued":
        h.job(2, JobKind.PARTIAL, at=NOW)
        assert len(h.assign(3).jobs) == 1  # the real-time one only
    else:
        plan = h.assign(2, job_lanes=3, real_time_running=why == "running",
                        busy=0.5 if why == "busy" else 0.0)
        assert plan.jobs == []


def test_spare_work_gets_all_lanes_but_one() -> None:
    h = Harness()
    for key in (1, 1, 1):
        h.job(key, JobKind.FINAL, spare=True)
    assert len(h.assign(3).jobs) == 2
    assert len(h.assign(1, job_lanes=3, ahead_running=2).jobs) == 0
    assert len(h.assign(1, job_lanes=1).jobs) == 1  # single lane: it may have it


def test_enqueue_marks_work_of_a_session_ahead_spare() -> None:
    h = Harness()
    h.sessions[1].ahead = True
    h.sched.enqueue(h.sessions[1], [Job(JobKind.FINAL, 1, 1, 0, 1), Job(JobKind.TURN, 2, 1, 0, 1)],
                    NOW)
    h.sched.enqueue(h.sessions[2], [Job(JobKind.FINAL, 1, 1, 0, 1)], NOW)
    assert [t.spare for t in h.sched.queue] == [True, True, False]


# ----------------------------------------------------------------------------- batches


def test_decode_batch_takes_other_sessions_partials_oldest_first() -> None:
    h = Harness(n_sessions=4, max_decode_batch=3)
    first = h.job(1, JobKind.PARTIAL)
    h.job(1, JobKind.PARTIAL)  # same session: not in the batch
    h.job(2, JobKind.FINAL)  # not a partial
    b = h.job(3, JobKind.PARTIAL)
    unwanted = h.job(4, JobKind.PARTIAL)
    h.sessions[4].core.abandoned.add(unwanted.job_id)
    c = h.job(2, JobKind.PARTIAL)
    plan = h.assign(2)
    assert job_ids(plan)[1] == [first.job_id, b.job_id, c.job_id]
    assert len(job_ids(plan)[0]) == 1  # the final, alone


@pytest.mark.parametrize("processor", [{"max_decode_batch": 1},
                                       {"max_decode_batch": 4, "batch_processing": False}])
def test_no_decode_batch_when_off(processor: dict[str, Any]) -> None:
    h = Harness(**processor)
    h.job(1, JobKind.PARTIAL)
    h.job(2, JobKind.PARTIAL)
    assert [len(t) for t in job_ids(h.assign())] == [1]


def waiting(h: Harness, key: int, windows: int, written_at: float) -> FakeSession:
    s = h.sessions[key]
    s.queued_windows = windows
    s.vad_next = 10 * key
    s.write_times = deque([(written_at, written_at)] * windows)
    return s


def test_vad_batch_oldest_first_capped_and_claimed() -> None:
    h = Harness(n_sessions=4, max_batch_size=2)
    waiting(h, 1, 3, NOW - 1)
    waiting(h, 2, 200, NOW - 3)
    waiting(h, 3, 5, NOW - 2)
    waiting(h, 4, 5, NOW - 4).vad_in_flight = True
    plan = h.assign(0, n_vad=2)
    (lane, batch), (lane2, batch2) = plan.vad
    assert [(v.session.key, v.first, v.count) for v in batch] == [
        (2, 20, MAX_VAD_WINDOWS_PER_ITEM), (3, 30, 5)]
    assert [v.session.key for v in batch2] == [1]
    assert all(h.sessions[k].vad_in_flight for k in (1, 2, 3))
    assert (h.sessions[2].vad_worker, h.sessions[1].vad_worker) == (lane.worker_id,
                                                                    lane2.worker_id)
    assert h.assign(0, n_vad=2).vad == []  # nothing left


def test_vad_batch_of_one_without_batch_processing() -> None:
    h = Harness(batch_processing=False)
    for key in (1, 2):
        waiting(h, key, 3, NOW - key)
    assert [[v.session.key for v in b] for _, b in h.assign(0, n_vad=1).vad] == [[2]]


def test_vad_prefers_a_worker_whose_job_lane_is_idle() -> None:
    h = Harness()
    waiting(h, 1, 3, NOW)
    busy, free = FakeLane(LaneKind.VAD, 0, job_lane_busy=True), FakeLane(LaneKind.VAD, 1)
    plan = h.sched.assign([busy, free], Capacity(1, False, 0, 0.0, Level.NORMAL), NOW)
    assert [lane for lane, _ in plan.vad] == [free]


def test_vad_sheds_backlog_beyond_a_quarter_of_the_queue_from_drop_frames() -> None:
    h = Harness(frame_queue_size=100)
    waiting(h, 1, 60, NOW - 2)
    waiting(h, 2, 60, NOW - 1).ahead = True  # not load: not shed
    plan = h.assign(0, n_vad=1, level=Level.DROP_FRAMES)
    assert h.shed == [(1, 35, "backpressure")]
    assert [(v.session.key, v.first, v.count) for v in plan.vad[0][1]] == [(1, 45, 25),
                                                                           (2, 20, 60)]
    h2 = Harness()
    waiting(h2, 1, 60, NOW)
    h2.assign(0, n_vad=1, level=Level.REDUCE_QUALITY)
    assert h2.shed == []


# ----------------------------------------------------------------------------- dropping


def test_partials_skipped_while_processing_is_paused() -> None:
    h = Harness()
    p = h.job(1, JobKind.PARTIAL)
    f = h.job(2, JobKind.FINAL)
    assert job_ids(h.assign(2, level=Level.PAUSE_PROCESSING)) == [[f.job_id]]
    assert h.skipped == [(1, p.job_id, "partials paused")]
    assert (h.counters.partials_shed, h.sched.queue) == (1, [])


def test_abandoned_speculation_and_closed_session_are_dropped_unrun() -> None:
    h = Harness()
    spec = h.job(1, JobKind.FINAL, speculative=True)
    h.sessions[1].core.abandoned.add(spec.job_id)
    h.job(2, JobKind.FINAL)
    del h.sessions[2]  # closed
    assert h.assign().jobs == []
    assert (h.counters.speculations_skipped, h.sched.queue) == (1, [])


def test_superseded_partials_are_taken_out() -> None:
    h = Harness()
    p = h.job(1, JobKind.PARTIAL)
    keep = h.job(2, JobKind.PARTIAL)
    h.sessions[1].core.paused.add(p.job_id)
    h.sessions[2].core.paused.add(keep.job_id)  # another session's: not asked about
    assert [t.job for t in h.sched.take_superseded(h.sessions[1])] == [p]
    assert [t.job for t in h.sched.queue] == [keep]
    assert h.counters.partials_superseded == 1


# ----------------------------------------------------------------------------- faults, lag


def test_a_dead_workers_task_is_requeued_first() -> None:
    h = Harness()
    old = h.job(1, JobKind.PARTIAL, at=NOW - 5)
    (_, (running,)), = h.assign().jobs
    assert running.job is old
    younger = h.job(2, JobKind.PARTIAL, at=NOW - 1)
    h.sched.requeue(running, NOW)
    assert running.queued_at == NOW  # its time on the dead worker was no wait
    assert [t.job for t in h.sched.queue] == [younger, old]
    assert job_ids(h.assign()) == [[old.job_id]]


def test_requeued_work_restarts_its_patience() -> None:
    h = Harness()
    h.sessions[3].core.decision_pending = True
    task = Task(0, 1, Job(JobKind.PARTIAL, 1, 1, 0, 1), NOW - 10)
    h.sched.requeue(task, NOW)
    assert h.assign(1, job_lanes=2).jobs == []


def test_owed_since_counts_finals_and_turns_only() -> None:
    h = Harness()
    h.job(1, JobKind.PARTIAL, at=NOW - 9)
    h.job(1, JobKind.FINAL, speculative=True, at=NOW - 8)
    assert h.sched.owed_since(1) is None
    h.job(1, JobKind.TURN, at=NOW - 3)
    h.job(1, JobKind.FINAL, at=NOW - 2)
    h.job(2, JobKind.FINAL, at=NOW - 7)
    assert h.sched.owed_since(1) == NOW - 3
    h.job(3, JobKind.FINAL, at=NOW - 6, spare=True)
    assert h.sched.owed_since(3) is None  # spare work is never owed
