"""The scheduler: which waiting work goes to which idle lane, and which work is urgent.

Pure policy: no sockets, no asyncio, no processes. The supervisor hands it the idle lanes
and a summary of the busy ones (:class:`Capacity`); it answers with a :class:`Plan` the
supervisor then sends. What it decides changes sessions only through two callbacks of
the supervisor's (shedding windows, skipping a partial), run as it decides.

Urgent and optional work
------------------------
This module is the runtime's one statement of it (:func:`rank`, :func:`owed`,
:func:`decision`):

* **owed** -- a final the client is waiting for, then a turn decision. They may take a
  reserved lane at once and their age counts as lag in the load figure.
* **optional** -- a speculation (a final or Smart Turn ask on a pause the VAD has not
  confirmed: it may be abandoned) and a partial. Their age is not lag.
  A speculation may take a reserved lane at once too: it is the decision the lane is
  kept for, started early, and it has only ~130 ms to finish before the VAD confirms.
  A partial takes one only after ``processor.reserve_patience_ms``; partials are skipped
  while the ladder pauses processing, and a queued partial is dropped once its utterance
  has paused (:meth:`Scheduler.take_superseded`).
* **spare** -- any work of a session ahead of real time (runtime/fairness.py): it ranks
  after all the above and runs only on lanes :func:`~.fairness.lanes_for_ahead_work` grants.

Outside the runtime the same distinction is also drawn by ``engine.jobs.JobKind`` (its
order is a priority), the API outbox (partials are sheddable events) and the worker (a
partial's beam is capped at level >= 1); those are other layers' and are left there.

VAD is not session-affine: a request batches every session with waiting windows, oldest
first, up to ``processor.max_batch_size``, and goes preferably to a worker whose job lane
is idle. Jobs are not affine either: each idle job lane takes the highest-ranked runnable
task, plus other sessions' queued partials to decode with it (``max_decode_batch``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from ..engine.jobs import Job, JobKind
from .backpressure import Level
from .config import ProcessorConfig
from .fairness import AHEAD_RANK, Standing, lanes_for_ahead_work
from .stats import Counters

MAX_VAD_WINDOWS_PER_ITEM = 64
"""Windows of one session in one VAD request: a long backlog is analysed in slices, so
other sessions' windows are not held up behind it."""

RANK_FINAL = 0
RANK_TURN = 1
RANK_SPECULATIVE = 2
RANK_SPECULATIVE_TURN = 3
"""A Smart Turn ask on an unconfirmed pause goes after a speculative final: the turn's end
waits for the final anyway, and the decode is the longer job. (A final speculated later
than its session's ask, behind a partial, would otherwise wait for the ask.)"""
RANK_PARTIAL = 4


class LaneKind(StrEnum):
    """What a worker lane runs. The value is the lane's name on the wire and in status."""

    VAD = "vad"
    JOB = "job"


def owed(rank: int) -> bool:
    """Whether work of this rank is owed to a client now (a final, a turn decision), as
    opposed to optional (a speculation, a partial) or spare (a session ahead of real time)."""
    return rank < RANK_SPECULATIVE


def decision(rank: int) -> bool:
    """Whether work of this rank is a final or turn decision, owed now or speculated on a
    pause the VAD has not confirmed yet: the work a reserved lane is kept for."""
    return rank < RANK_PARTIAL


def eligible(rank: int, waited: float, *, partials: bool, ahead: bool,
             patience: float) -> bool:
    """Whether a task of ``rank`` that has waited ``waited`` seconds may go to a lane that
    takes partials (or is reserved: ``partials=False``) and spare work (``ahead``)."""
    if rank >= AHEAD_RANK:
        return ahead and partials
    return partials or decision(rank) or waited >= patience


# ----------------------------------------------------------------------------- views


class CoreView(Protocol):
    """What the scheduler asks of a session's :class:`~..engine.session.SessionCore`."""

    @property
    def decision_pending(self) -> bool: ...
    @property
    def speaking(self) -> bool: ...
    def is_speculative(self, job: Job) -> bool: ...
    def wants(self, job: Job) -> bool: ...
    def superseded(self, job: Job) -> bool: ...


class SessionView(Protocol):
    """What the scheduler reads of a session (a :class:`~.live_session.LiveSession`)."""

    vad_in_flight: bool
    vad_worker: int

    @property
    def key(self) -> int: ...
    @property
    def core(self) -> CoreView: ...
    @property
    def vad_next(self) -> int: ...
    @property
    def queued_windows(self) -> int: ...
    @property
    def write_times(self) -> Sequence[tuple[float, float]]: ...


class LaneView(Protocol):
    """What the scheduler reads of an idle lane (a :class:`~.workers.Lane`)."""

    @property
    def kind(self) -> LaneKind: ...
    @property
    def worker_id(self) -> int: ...
    @property
    def job_lane_busy(self) -> bool:
        """Its worker's job lane has a request out."""
        ...


S = TypeVar("S", bound=SessionView)
L = TypeVar("L", bound=LaneView)


# ----------------------------------------------------------------------------- plans


@dataclass(slots=True)
class Task:
    seq: int
    """Queue order; a re-queued task keeps its own (see :func:`rank`)."""
    session_key: int
    job: Job
    queued_at: float
    spare: bool = False
    """Issued while its session was ahead of real time: spare-capacity work for good
    (runtime/fairness.py), even once the clock has caught up with the session's audio."""


@dataclass(frozen=True, slots=True)
class Capacity:
    """The job lanes as the scheduler needs to see them, busy ones included."""

    job_lanes: int
    """Ready job lanes, busy or idle."""
    real_time_running: bool
    """A job lane runs work of a session at real time."""
    ahead_running: int
    """Job lanes running spare work (sessions ahead of real time)."""
    busy: float
    """Busy fraction of the job lanes with real-time work, smoothed (runtime/load.py)."""
    level: Level


@dataclass(frozen=True, slots=True)
class VadSlice(Generic[S]):
    session: S
    first: int
    count: int


@dataclass(slots=True)
class Plan(Generic[L, S]):
    """What to send, in order: VAD requests first, then jobs."""

    vad: list[tuple[L, list[VadSlice[S]]]] = field(default_factory=list)
    jobs: list[tuple[L, list[Task]]] = field(default_factory=list)


# ----------------------------------------------------------------------------- scheduler


class Scheduler(Generic[S]):
    """The queue of jobs and the choice of work for idle lanes; see the module docstring.

    ``sessions``: open sessions by key (the supervisor's live mapping: a task whose
    session has gone is dropped when it comes up). ``processor``: the current processor
    config (it changes on SIGHUP). ``standing``: a session's fairness standing now.
    ``shed(s, n, reason)`` skips VAD of a session's oldest ``n`` queued windows (reported
    to its client); ``skip(s, job, why)`` answers a job without running it, then moves the
    session's new work along. They are how a decision here changes a session.
    """

    def __init__(self, sessions: Mapping[int, S], processor: Callable[[], ProcessorConfig],
                 standing: Callable[[S, float], Standing], *,
                 shed: Callable[[S, int, str], None], skip: Callable[[S, Job, str], None],
                 counters: Counters) -> None:
        self.sessions = sessions
        self.processor = processor
        self.standing = standing
        self.shed = shed
        self.skip = skip
        self.counters = counters
        self.queue: list[Task] = []
        self._seq = itertools.count()

    # ------------------------------------------------------------------ the queue

    def enqueue(self, s: S, jobs: Sequence[Job], now: float) -> None:
        """Queue a session's new jobs; a session ahead of real time issues spare work."""
        if jobs:
            spare = self.standing(s, now).ahead
            for job in jobs:
                self.queue.append(Task(next(self._seq), s.key, job, now, spare=spare))

    def requeue(self, task: Task, now: float) -> None:
        """Put back a task a dead worker held. It keeps its seq, so it runs before younger
        work of its rank; its time on the dead worker was not a wait for capacity, so its
        wait (for patience and lag) starts again now."""
        task.queued_at = now
        self.queue.append(task)

    def take_superseded(self, s: S) -> list[Task]:
        """Remove and return the session's queued partials whose utterance has paused: the
        final waits for every partial, so these would only delay it."""
        gone = [t for t in self.queue if t.session_key == s.key and s.core.superseded(t.job)]
        for task in gone:
            self.queue.remove(task)
        self.counters.partials_superseded += len(gone)
        return gone

    def owed_since(self, session_key: int) -> float | None:
        """When the session's oldest queued owed task was queued (None: nothing owed);
        optional work waiting is not lag."""
        return min((t.queued_at for t in self.queue if t.session_key == session_key
                    and owed(self.rank(t)[0])), default=None)

    def rank(self, task: Task) -> tuple[int, int]:
        """Scheduling order: finals owed to a client, turn decisions, speculations (finals,
        then Smart Turn asks, on an unconfirmed pause), partials; oldest first within each.
        A speculation ranks below a turn decision (which is owed now): it may yet be
        abandoned. It ranks as a final (or turn decision) again once the VAD confirms the
        speech end. All work of a session ahead of real time ranks after all work of the
        others (runtime/fairness.py)."""
        kind = task.job.kind
        if kind is JobKind.PARTIAL:
            rank = RANK_PARTIAL
        else:
            s = self.sessions.get(task.session_key)
            if s is not None and s.core.is_speculative(task.job):
                rank = RANK_SPECULATIVE if kind is JobKind.FINAL else RANK_SPECULATIVE_TURN
            else:
                rank = RANK_FINAL if kind is JobKind.FINAL else RANK_TURN
        return rank + AHEAD_RANK * task.spare, task.seq

    # ------------------------------------------------------------------ assignment

    def assign(self, idle: Sequence[L], capacity: Capacity, now: float) -> Plan[L, S]:
        """Give every idle lane work: VAD batches first, then jobs by rank.

        While some real-time session's speech has paused (a final, then a turn decision, is
        due within ~200 ms), ``processor.reserved_job_lanes`` idle job lanes are kept from
        partials that have not waited ``reserve_patience_ms``. At other times every lane
        may decode partials: a lane held for the whole run queues partials behind each
        other while its core idles."""
        plan: Plan[L, S] = Plan()
        # A VAD request goes preferably to a worker whose job lane is idle: it then has its
        # core to itself instead of preempting a decode.
        for lane in sorted((ln for ln in idle if ln.kind is LaneKind.VAD),
                           key=lambda ln: ln.job_lane_busy):
            batch = self._vad_batch(lane.worker_id, capacity.level, now)
            if not batch:
                break
            plan.vad.append((lane, batch))
        idle_jobs = [ln for ln in idle if ln.kind is LaneKind.JOB]
        if not idle_jobs:
            return plan
        proc = self.processor()
        real_time = [s for s in self.sessions.values() if not self.standing(s, now).ahead]
        reserve = 0
        if any(s.core.decision_pending for s in real_time):
            reserve = min(proc.reserved_job_lanes, capacity.job_lanes - 1)
        real_time_work = (
            any(s.core.speaking or s.core.decision_pending for s in real_time)
            or any(not t.spare for t in self.queue)
            or capacity.real_time_running)
        ahead_room = lanes_for_ahead_work(capacity.job_lanes, capacity.busy,
                                          real_time_work=real_time_work) - capacity.ahead_running
        for n_idle, lane in zip(range(len(idle_jobs), 0, -1), idle_jobs, strict=True):
            task = self._next_task(now, capacity.level, partials=n_idle > reserve,
                                   ahead=ahead_room > 0)
            if task is None:
                break
            if self.rank(task)[0] >= AHEAD_RANK:
                ahead_room -= 1
            tasks = [task]
            if task.job.kind is JobKind.PARTIAL:
                tasks += self._more_partials(task)
            plan.jobs.append((lane, tasks))
        return plan

    def _vad_batch(self, worker_id: int, level: Level, now: float) -> list[VadSlice[S]]:
        """Every session with waiting windows and none out, oldest window first, up to
        ``max_batch_size``. From ``DROP_FRAMES`` on, a session's backlog beyond a quarter
        of ``frame_queue_size`` is shed first, unless it is not load (runtime/fairness.py)."""
        proc = self.processor()
        limit = proc.max_batch_size if proc.batch_processing else 1
        shed_above = proc.frame_queue_size // 4 if level >= Level.DROP_FRAMES else None
        waiting = [s for s in self.sessions.values()
                   if not s.vad_in_flight and s.queued_windows > 0]
        waiting.sort(key=lambda s: s.write_times[0][0] if s.write_times else 0.0)
        batch: list[VadSlice[S]] = []
        for s in waiting[:limit]:
            if (shed_above is not None and s.queued_windows > shed_above
                    and self.standing(s, now).may_shed):
                self.shed(s, s.queued_windows - shed_above, "backpressure")
            batch.append(VadSlice(s, s.vad_next,
                                  min(s.queued_windows, MAX_VAD_WINDOWS_PER_ITEM)))
            # At most one VAD request per session is out: windows are analysed in order.
            s.vad_in_flight = True
            s.vad_worker = worker_id
        return batch

    def _next_task(self, now: float, level: Level, *, partials: bool = True,
                   ahead: bool = True) -> Task | None:
        """Take the most urgent runnable task (the queue holds a few tasks per session, so
        a linear scan is cheap). With ``partials=False`` (a reserved lane) only decisions
        (owed or speculated), or a partial that has waited ``processor.reserve_patience_ms``,
        are taken: under load, holding a lane idle for a decision that may come later
        starves partials of half the machine. With ``ahead=False`` spare work is not
        taken; a reserved lane never takes it."""
        patience = self.processor().reserve_patience_ms / 1000.0
        while self.queue:
            candidates = self.queue
            if not partials or not ahead:
                candidates = [t for t in self.queue if eligible(
                    self.rank(t)[0], now - t.queued_at, partials=partials, ahead=ahead,
                    patience=patience)]
                if not candidates:
                    return None
            task = min(candidates, key=self.rank)
            self.queue.remove(task)
            s = self.sessions.get(task.session_key)
            if s is None:
                continue  # session closed
            if not s.core.wants(task.job):
                self.counters.speculations_skipped += 1  # abandoned while queued: no decode
                continue
            if task.job.kind is JobKind.PARTIAL and level >= Level.PAUSE_PROCESSING:
                self.counters.partials_shed += 1
                self.skip(s, task.job, "partials paused")
                continue
            return task
        return None

    def _more_partials(self, first: Task) -> list[Task]:
        """Other sessions' queued partials to decode with ``first`` in one request, oldest
        first, up to ``processor.max_decode_batch`` in all (``batch_processing`` on).

        Only what is already waiting: a lone partial goes at once. The worker batches the
        ones of equal shape (window, prompt, budget), which costs ~2/3 of decoding them one
        by one; a final or turn decision is never held up by it (they go alone, and
        partials never take the last free lane while one is due)."""
        proc = self.processor()
        if not proc.batch_processing or proc.max_decode_batch <= 1:
            return []
        out: list[Task] = []
        sessions = {first.session_key}
        for task in sorted(self.queue, key=lambda t: t.seq):
            if len(out) + 1 >= proc.max_decode_batch:
                break
            s = self.sessions.get(task.session_key)
            if (task.job.kind is not JobKind.PARTIAL or task.session_key in sessions
                    or s is None or not s.core.wants(task.job)):
                continue
            self.queue.remove(task)
            sessions.add(task.session_key)
            out.append(task)
        return out
