"""The supervisor: lifecycle and wiring of the daemon's runtime, and its three verbs.

It runs on the daemon's asyncio event loop, which the gRPC and HTTP layers share; they call
its public methods (the per-session ones are in :mod:`.sessions`). It never runs a model:
it turns client frames into ring windows, asks workers for VAD and jobs, feeds results into
each session's :class:`~alfred_daemon.engine.session.SessionCore` and hands the events to
the session's queue -- O(sessions) bookkeeping per call, so the loop stays responsive.

* **schedule, send** (``_dispatch``): the :class:`~.scheduler.Scheduler` plans work for the
  idle lanes; it goes out through the :class:`~.control_plane.ControlPlane`.
* **update** (:mod:`.results`): a result is applied to its session, whose new jobs and
  events move on (``_pump``); a lost worker's requests are re-run, its sessions told
  (``worker_recovered``), and it is respawned on its core -- during start too: only a
  tripped crash-loop brake (:mod:`.workers`) fails a start.
* **tick** (``_tick``, every ``TICK_S``): hang checks (:mod:`.workers`), the load figure and
  the ladder (:mod:`.load`), health events; once a second, :mod:`.housekeeping`.

Neither a fault nor a client faster than real time moves the shared ladder or sheds
anyone's audio (runtime/fairness.py), so neither changes another session's words.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..engine.jobs import Job, JobResult
from ..engine.models import ModelPaths, resolve_all
from . import rundir
from .backpressure import Ladder, LoadSample, Transition
from .config import RuntimeConfig, usable_cores
from .control_plane import ControlPlane
from .errors import DaemonUnavailableError, WorkersFailedError
from .health import Health, HealthMonitor
from .housekeeping import Housekeeping
from .live_session import LiveSession
from .load import LoadMeter, apply_transition, health_events
from .protocol import STATE_ENDPOINT, WORK_ENDPOINT, JobItem, JobRequest, Stop, VadItem, VadRequest
from .results import ResultsApplier
from .ring import sweep_stale
from .scheduler import Capacity, LaneKind, Scheduler
from .sessions import SUPPORTED_RATES
from .stats import Counters, DaemonFigures, DaemonState, Figures, daemon_status, session_status
from .worker import THREAD_ENV
from .workers import Lane, WorkerPool

__all__ = ["SUPPORTED_RATES", "DaemonState", "Supervisor"]  # imported from here by api/, cli

log = logging.getLogger(__name__)

TICK_S = 0.1
"""Hang checks, load, ladder: how often."""


class Supervisor(ResultsApplier):
    """Owns the daemon's processes and sessions; see the module docstring."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.state = DaemonState.STOPPED
        self.instance = uuid.uuid4().hex[:8]
        self.ladder = Ladder(self.config.coordination)
        self.monitor = HealthMonitor(self.config.alerts)
        self.counters = Counters()
        self.figures = Figures()
        self.model_paths: ModelPaths | None = None
        self.load = 0.0
        self.meter = LoadMeter(time.monotonic())
        self.memory_mb = 0.0
        self.memory_by_pid: dict[int, float] = {}
        self.started_at = 0.0

        self._sessions: dict[str, LiveSession] = {}
        self._by_key: dict[int, LiveSession] = {}
        self._keys = itertools.count(1)
        self._request_ids = itertools.count(1)
        self.control = ControlPlane()
        self.pool = WorkerPool(lambda: self.config, self._count_restart, self._on_worker_lost)
        self.scheduler: Scheduler[LiveSession] = Scheduler(
            self._by_key, lambda: self.config.processor, self._standing, shed=self._shed,
            skip=self._skip, counters=self.counters)
        self.housekeeping = Housekeeping(self)
        self._rundir: rundir.RuntimeDir | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._dispatch_pending = False
        self._health_listeners: list[Callable[[Health], None]] = []
        self._observers: list[Callable[[str, float], None]] = []

    # ================================================================== lifecycle

    async def start(self) -> None:
        """Take the runtime directory, sweep leftovers, verify models, start workers.

        Returns once every worker has loaded its models. Raises InstanceRunningError if
        another live daemon owns the runtime directory.
        """
        if self.state != DaemonState.STOPPED:
            raise DaemonUnavailableError(f"daemon is {self.state}")
        cfg = self.config
        self.state = DaemonState.STARTING
        self.pool.stopping = False
        try:
            self._rundir = rundir.acquire(Path(cfg.runtime_dir))
            swept = sweep_stale(cfg.shm_prefix)
            if swept:
                log.warning("removed %d shared-memory segments of a dead instance: %s",
                            len(swept), ", ".join(swept[:5]))
            # Hashing ~80 MB of weights takes a moment: keep the loop free.
            self.model_paths = await asyncio.to_thread(resolve_all, cfg.models)
            os.environ.update(THREAD_ENV)  # inherited by spawned workers at interpreter start
            work, state = (self._rundir.endpoint(e) for e in (WORK_ENDPOINT, STATE_ENDPOINT))
            self.control.bind(work, state)
            self.pool.configure(self.model_paths, work, state)
            cores = usable_cores()
            for i in range(cfg.workers.resolved_count()):
                self.pool.spawn(i, cores[i % len(cores)] if cfg.workers.pin else None)
            self._tasks = [
                asyncio.create_task(self.control.serve(self._on_frame), name="alfred-recv"),
                asyncio.create_task(self._tick_loop(), name="alfred-tick"),
                asyncio.create_task(self.housekeeping.run(), name="alfred-housekeeping"),
            ]
            await self._wait_workers_ready()
            self.meter.reset(time.monotonic())
            self.ladder.reset()
        except BaseException:
            await self._teardown()
            self.state = DaemonState.STOPPED
            raise
        self.started_at = time.monotonic()
        self.state = DaemonState.RUNNING
        # Health is judged from here on: before, missing workers are starting, not failed.
        # The first verdict is taken now so READY is never followed by a stale one.
        self.housekeeping.evaluate_health(self.started_at)
        log.info("daemon running: %d workers, runtime dir %s", len(self.pool.workers),
                 cfg.runtime_dir)

    async def _wait_workers_ready(self) -> None:
        """Wait until every worker is ready. A worker that dies or hangs (not ready after
        ``workers.start_timeout``) during start is respawned like one that dies later; only
        a tripped crash-loop brake makes the start fail, because a worker that keeps failing
        will not come up by waiting longer."""
        while not self.pool.all_ready():
            if self.pool.braked:
                w = next(iter(self.pool.braked.values()))
                raise WorkersFailedError(
                    f"worker {w.worker_id} keeps failing to start (last exit: "
                    f"{w.last_exit or 'unknown'}; {self.pool.brake_reason(w)}); "
                    "see its log lines above")
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: refuse new sessions, end each open session at its next utterance
        boundary (its finals and turn decision delivered) within ``grace`` seconds, stop
        workers, unlink every segment."""
        if self.state in (DaemonState.STOPPED, DaemonState.DRAINING):
            return
        grace = self.config.drain_grace if grace is None else grace
        self.state = DaemonState.DRAINING
        sessions = list(self._sessions.values())
        if sessions:
            log.info("draining %d sessions (grace %.1f s)", len(sessions), grace)
            results = await asyncio.gather(
                *(self._drain(s, grace) for s in sessions), return_exceptions=True)
            for s, res in zip(sessions, results, strict=True):
                if isinstance(res, BaseException):
                    log.warning("session %s did not drain: %s", s.session_id, res)
        await self._teardown()
        self.state = DaemonState.STOPPED
        log.info("daemon stopped")

    async def _teardown(self) -> None:
        self.pool.stopping = True  # worker exits from here on are expected, not failures
        for s in list(self._sessions.values()):
            self._close(s, "shutdown")
        for lane in self.pool.lanes.values():
            if lane.ready:
                self.control.send(lane.identity, Stop())
        await self.pool.reap(3.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        self.control.close()
        if self._rundir is not None:
            self._rundir.release()
            self._rundir = None

    def apply_config(self, config: RuntimeConfig) -> None:
        """Take what can change while running (SIGHUP): processor limits and batching,
        backpressure, limits, alert thresholds, lag and health intervals, drain grace, and
        engine defaults for new sessions. Worker count, models, runtime dir, shared-memory
        prefix and ring size keep their start-up values (the caller reports them)."""
        keep = self.config
        self.config = dataclasses.replace(
            config, workers=keep.workers, models=keep.models, runtime_dir=keep.runtime_dir,
            shm_prefix=keep.shm_prefix, ring_seconds=keep.ring_seconds,
            job_cost_multiplier=keep.job_cost_multiplier,
            vad_cost_ms_per_window=keep.vad_cost_ms_per_window, daemon_id=keep.daemon_id)
        self.ladder.config = config.coordination
        self.monitor.thresholds = config.alerts
        log.info("runtime config applied")

    def _count_restart(self) -> None:
        self.counters.worker_restarts += 1

    # ================================================================== schedule, send

    def _dispatch_soon(self) -> None:
        """Dispatch once the frames that arrived together are all written: a scan per frame
        costs O(sessions + queue) at every message of every session."""
        if not self._dispatch_pending:
            self._dispatch_pending = True
            asyncio.get_running_loop().call_soon(self._deferred_dispatch)

    def _deferred_dispatch(self) -> None:
        self._dispatch_pending = False
        self._dispatch()

    def _dispatch(self) -> None:
        """Give every idle lane work (the scheduler's plan), and send it."""
        if not self.control.is_open:
            return
        now = time.monotonic()
        lanes = self.pool.lanes.values()
        # Nothing new goes to a worker that looks hung: it would wait there until the
        # heartbeat has the worker killed and re-run.
        idle = [ln for ln in lanes if ln.ready and ln.request is None
                and not self.pool.suspect(ln.worker, now)]
        busy_jobs = [ln for ln in lanes if ln.kind is LaneKind.JOB and ln.request is not None]
        capacity = Capacity(
            job_lanes=sum(1 for _ in self.pool.ready_job_lanes()),
            real_time_running=any(not ln.ahead_work for ln in busy_jobs),
            ahead_running=sum(1 for ln in busy_jobs if ln.ahead_work),
            busy=self.meter.busy_ewma, level=self.ladder.level)
        plan = self.scheduler.assign(idle, capacity, now)
        for lane, batch in plan.vad:
            items = tuple(VadItem(v.session.key, v.session.ring.handle, v.first, v.count,
                                  v.session.vad_state) for v in batch)
            self._send_request(lane, VadRequest(next(self._request_ids), items))
        for lane, tasks in plan.jobs:
            job_items = []
            for t in tasks:
                s = self._by_key[t.session_key]
                t.job = s.core.extend(t.job)  # a queued partial shows the audio of now
                job_items.append(JobItem(t.session_key, s.ring.handle, t.job, s.core.config.stt))
            lane.tasks = tasks
            lane.ahead_work = all(t.spare for t in tasks)
            self._send_request(lane, JobRequest(next(self._request_ids), tuple(job_items)))

    def _send_request(self, lane: Lane, msg: VadRequest | JobRequest) -> None:
        lane.request = msg
        lane.sent_at = time.monotonic()
        # If the lane vanished since its last message, its worker is dying and the exit
        # callback re-queues this request with the rest.
        self.control.send(lane.identity, msg)

    def _skip(self, s: LiveSession, job: Job, why: str) -> None:
        """Answer a job without running it (the scheduler's decision), then move on."""
        s.core.on_result(JobResult.skip(job, why))
        self._pump(s)

    def _publish_state(self) -> None:
        self.control.publish(int(self.ladder.level),
                             (s.ring.name for s in self._sessions.values()),
                             self.housekeeping.trim_generation)

    # ================================================================== tick

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("housekeeping tick failed")

    def _tick(self, now: float) -> None:
        self.pool.check(now)
        self.pool.retry_braked()
        job_lanes = [ln for ln in self.pool.ready_job_lanes()
                     if not self.pool.suspect(ln.worker, now)]
        counted = [s for s in self._sessions.values()
                   if self._standing(s, now).counts_toward_load]
        sample = self.meter.tick(
            now, job_lanes=job_lanes, all_lanes=self.pool.lanes.values(), counted=counted,
            lag_ms=lambda s: self._session_lag_ms(s, now),
            frame_queue_size=self.config.processor.frame_queue_size,
            max_lag_ms=self.config.max_lag_ms)
        self.load = sample.load
        transition = self.ladder.update(self.load, now)
        if transition is not None:
            self._apply_transition(transition)
        health_events(self._sessions.values(), now, interval=self.config.health_event_interval,
                      health=self.health.value, load=self.load, level=self.ladder.level,
                      lag_ms=lambda s: self._session_lag_ms(s, now), pump=self._pump)

    def _apply_transition(self, t: Transition) -> None:
        self.counters.backpressure_events += 1
        apply_transition(t, self._sessions.values(), self._pump)
        self._publish_state()

    # ================================================================== status

    @property
    def load_sample(self) -> LoadSample:
        return self.meter.sample

    @property
    def transitions(self) -> deque[Transition]:
        """The ladder's recent steps (:attr:`Ladder.history`)."""
        return self.ladder.history

    @property
    def frame_times_ms(self) -> deque[float]:
        """Window write -> VAD result applied, ms."""
        return self.figures.frame_times_ms

    @property
    def handoff_ms(self) -> deque[float]:
        """Window write -> picked up by a worker's VAD lane, ms (wall clocks, same host)."""
        return self.figures.handoff_ms

    @property
    def health(self) -> Health:
        if self.state == DaemonState.RUNNING and not self.pool.any_ready():
            return Health.FAILED
        return self.monitor.health

    def on_health_change(self, listener: Callable[[Health], None]) -> None:
        self._health_listeners.append(listener)

    def _health_changed(self, health: Health) -> None:
        for listener in self._health_listeners:
            listener(health)

    def on_observation(self, observer: Callable[[str, float], None]) -> None:
        """Called with named measurements as they happen (``frame_ms``,
        ``partial_transcription_latency_ms``, ``final_transcription_latency_ms``,
        ``turn_ended_latency_ms``): the metrics layer turns them into histograms."""
        self._observers.append(observer)

    def _observe(self, name: str, value: float) -> None:
        for observer in self._observers:
            try:
                observer(name, value)
            except Exception:
                log.exception("observer failed")

    async def optimize(self, *, trigger_gc: bool = True, cleanup_sessions: bool = True,
                       optimize_buffers: bool = True) -> dict[str, Any]:
        """Garbage-collect, clean up idle sessions, trim buffers (here and in workers), and
        report what it freed (PSS before and after, measured)."""
        return await self.housekeeping.optimize(
            trigger_gc=trigger_gc, cleanup_sessions=cleanup_sessions,
            optimize_buffers=optimize_buffers)

    def average_frame_time(self) -> float:
        return self.figures.average_frame_time()

    def error_rate(self, now: float, window_s: float = 60.0) -> float:
        return self.figures.error_rate(now, window_s)

    def throughput(self, now: float, window_s: float = 5.0) -> float:
        return self.figures.throughput(now, window_s)

    def status(self) -> dict[str, Any]:
        """The spec's status shape plus per-worker and per-session detail."""
        now = time.monotonic()
        sample = self.meter.sample
        figures = DaemonFigures(
            state=self.state.value,
            uptime_s=now - self.started_at if self.started_at else 0.0,
            health=self.health.value, load=self.load, queue=sample.queue, lag=sample.lag,
            busy=sample.busy, memory_mb=self.memory_mb,
            memory_limit_mb=self.config.limits.maxMemoryUsageMB,
            sessions_active=len(self._sessions), frames_in_queue=self.frames_in_queue(),
            backpressure_level=self.ladder.level.action,
            average_frame_time=self.average_frame_time(), throughput=self.throughput(now),
            error_rate=self.error_rate(now))
        alerts = [{"name": a.name, "message": a.message, "value": a.value,
                   "threshold": a.threshold} for a in self.monitor.active.values()]
        return daemon_status(
            figures, self.counters, alerts=alerts, alert_counts=dict(self.monitor.counts),
            workers=self.pool.status(now, self.memory_by_pid),
            sessions=(session_status(s, now, self._session_lag_ms(s, now))
                      for s in self._sessions.values()))
