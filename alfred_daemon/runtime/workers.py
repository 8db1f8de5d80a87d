"""Worker processes and their lanes: spawn, readiness, hang detection, the crash-loop
brake, kill -- and, when one ends, a report of exactly what it held.

A worker is a fresh interpreter (fork+exec of ``alfred_daemon.runtime.worker``) pinned to a
core, with two lanes (VAD, job). Its exit is noticed through its process fd, which the
event loop watches; a hung worker through its lanes' silence (``workers.heartbeat_timeout``)
or a request outliving ``processor.processing_timeout``, and it is SIGKILLed. Either way
the pool hands the supervisor the requests its lanes had out (:class:`InFlight`), then
respawns it on the same core when asked -- unless the brake says it is a crash loop.
Workers notice a dead supervisor through their death pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import pickle
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..engine.models import ModelPaths
from .config import RuntimeConfig
from .fairness import worker_suspect
from .protocol import Hello, JobRequest, VadRequest, lane_identity
from .scheduler import LaneKind, Task
from .worker import WorkerSpec

log = logging.getLogger(__name__)

MAX_START_FAILURES = 3
"""Deaths before ready, in a row, that make a worker a crash loop (see ``brake_reason``)."""


@dataclass(slots=True, eq=False)
class Lane:
    identity: bytes
    kind: LaneKind
    worker: WorkerHandle
    ready: bool = False
    request: VadRequest | JobRequest | None = None
    """The one request out on this lane: so what a dead worker was doing is known exactly."""
    tasks: list[Task] = field(default_factory=list)
    """The jobs of the request out on a job lane."""
    sent_at: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    busy_accum: float = 0.0
    """Seconds busy since the last tick (for the load figure)."""
    ahead_work: bool = False
    """The request out serves only sessions ahead of real time (runtime/fairness.py): spare
    capacity, not load."""

    @property
    def worker_id(self) -> int:
        return self.worker.worker_id

    @property
    def job_lane_busy(self) -> bool:
        return self.worker.lanes[LaneKind.JOB].request is not None

    def clear(self) -> None:
        self.request = None
        self.tasks = []
        self.ahead_work = False


@dataclass(slots=True, eq=False)
class WorkerHandle:
    worker_id: int
    incarnation: int
    core: int | None
    process: subprocess.Popen[bytes]
    pidfd: int
    """Readable once the process has exited (the event loop watches it)."""
    death_w: int
    """Write end of the death pipe; closing it (or our death) tells the worker to exit."""
    started: float = field(default_factory=time.monotonic)
    ready_at: float | None = None
    lanes: dict[LaneKind, Lane] = field(default_factory=dict)
    exited: bool = False
    load_ms: float = 0.0
    turn_kernels: str = ""
    jobs_done: int = 0
    vad_batches: int = 0
    last_exit: str = ""
    """Why the process ended (or was killed), for the log and a failed start's message."""
    killed_at: float | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def close_fds(self) -> None:
        for fd in (self.pidfd, self.death_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pidfd = self.death_w = -1

    @property
    def ready(self) -> bool:
        return self.ready_at is not None and not self.exited


@dataclass(slots=True)
class InFlight:
    """What a lost worker's lanes had out, taken off them: to re-run exactly that."""

    vad: list[VadRequest] = field(default_factory=list)
    tasks: list[Task] = field(default_factory=list)


class WorkerPool:
    """Every worker process and lane of the daemon.

    ``on_lost(worker, reason, in_flight)`` is called once per unexpected exit, after the
    worker's lanes are forgotten; the caller re-queues the work and calls :meth:`respawn`.
    """

    def __init__(self, config: Callable[[], RuntimeConfig], restarts: Callable[[], None],
                 on_lost: Callable[[WorkerHandle, str, InFlight], None]) -> None:
        self.config = config
        self._count_restart = restarts
        self._on_lost = on_lost
        self.workers: dict[int, WorkerHandle] = {}
        self.lanes: dict[bytes, Lane] = {}
        self.braked: dict[int, WorkerHandle] = {}
        """Dead workers the crash-loop brake has not let respawn yet."""
        self.stopping = False
        """Set while the daemon stops: exits from then on are expected, not failures."""
        self._incarnations = itertools.count(1)
        self._restart_times: deque[float] = deque()
        self._start_failures: dict[int, tuple[int, float]] = {}
        """Worker id -> (consecutive deaths before becoming ready, time of the last)."""
        self._spec: tuple[ModelPaths, str, str] | None = None

    def configure(self, models: ModelPaths, work_endpoint: str, state_endpoint: str) -> None:
        """What every worker spawned from now on loads and connects to."""
        self._spec = (models, work_endpoint, state_endpoint)

    # ------------------------------------------------------------------ queries

    def any_ready(self) -> bool:
        return any(w.ready for w in self.workers.values())

    def all_ready(self) -> bool:
        return all(w.ready for w in self.workers.values())

    def ready_job_lanes(self) -> Iterator[Lane]:
        return (ln for ln in self.lanes.values() if ln.kind is LaneKind.JOB and ln.ready)

    def pids(self) -> list[int]:
        return [w.pid for w in self.workers.values() if not w.exited]

    def suspect(self, w: WorkerHandle, now: float) -> bool:
        return worker_suspect(vad_silent_s=now - w.lanes[LaneKind.VAD].last_seen,
                              heartbeat_interval=self.config().workers.heartbeat_interval)

    # ------------------------------------------------------------------ lifecycle

    def spawn(self, worker_id: int, core: int | None) -> WorkerHandle:
        assert self._spec is not None
        models, work_endpoint, state_endpoint = self._spec
        cfg = self.config()
        incarnation = next(self._incarnations)
        spec = WorkerSpec(
            worker_id=worker_id, core=core, models=models,
            work_endpoint=work_endpoint, state_endpoint=state_endpoint,
            model_threads=cfg.workers.model_threads,
            heartbeat_interval=cfg.workers.heartbeat_interval,
            job_cost_multiplier=cfg.job_cost_multiplier,
            vad_cost_ms_per_window=cfg.vad_cost_ms_per_window,
            batch_processing=cfg.processor.batch_processing,
            log_level=logging.getLogger("alfred_daemon").getEffectiveLevel(),
            incarnation=incarnation,
        )
        death_r, death_w = os.pipe()
        os.set_inheritable(death_r, True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "alfred_daemon.runtime.worker", str(death_r)],
                stdin=subprocess.PIPE, pass_fds=(death_r,), close_fds=True,
            )
        finally:
            os.close(death_r)
        assert proc.stdin is not None
        proc.stdin.write(pickle.dumps(spec))
        proc.stdin.close()
        w = WorkerHandle(worker_id, incarnation, core, proc, os.pidfd_open(proc.pid), death_w)
        for kind in LaneKind:
            lane = Lane(lane_identity(worker_id, incarnation, kind), kind, w)
            w.lanes[kind] = lane
            self.lanes[lane.identity] = lane
        self.workers[worker_id] = w
        asyncio.get_running_loop().add_reader(w.pidfd, self._on_exit, w)
        log.info("worker %d spawned (pid %s, core %s)", worker_id, proc.pid, core)
        return w

    def on_hello(self, lane: Lane, msg: Hello) -> bool:
        """A lane has loaded its models; True when that made its whole worker ready."""
        lane.ready = True
        w = lane.worker
        w.load_ms = msg.load_ms
        w.turn_kernels = msg.turn_kernels
        if not (all(ln.ready for ln in w.lanes.values()) and w.ready_at is None):
            return False
        w.ready_at = time.monotonic()
        self._start_failures.pop(w.worker_id, None)
        log.info("worker %d (pid %d, core %s) ready in %.0f ms (models %.0f ms)",
                 w.worker_id, msg.pid, msg.core, (w.ready_at - w.started) * 1000, msg.load_ms)
        return True

    def _on_exit(self, w: WorkerHandle) -> None:
        asyncio.get_running_loop().remove_reader(w.pidfd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=0.5)
        code = w.process.returncode
        if w.exited:
            return
        w.exited = True
        if self.stopping:
            return
        reason = exit_reason(code)
        if w.last_exit:
            reason = f"{reason} ({w.last_exit})"
        w.last_exit = reason
        if w.ready_at is None:
            failures, _ = self._start_failures.get(w.worker_id, (0, 0.0))
            self._start_failures[w.worker_id] = (failures + 1, time.monotonic())
        log.error("worker %d (pid %s) exited: %s", w.worker_id, w.pid, reason)
        lost = InFlight()
        for lane in w.lanes.values():
            if isinstance(lane.request, VadRequest):
                lost.vad.append(lane.request)
            lost.tasks += lane.tasks
            lane.request, lane.tasks = None, []
        self._forget(w)
        w.close_fds()
        self._on_lost(w, reason, lost)

    def _forget(self, w: WorkerHandle) -> None:
        for lane in w.lanes.values():
            self.lanes.pop(lane.identity, None)
        if w.pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(w.pidfd)

    def respawn(self, w: WorkerHandle) -> None:
        """Start a replacement for ``w`` on its core, unless the brake holds it back (then
        :meth:`retry_braked` tries again on every tick)."""
        if self.stopping:
            return
        brake = self.brake_reason(w)
        if brake is not None:
            if w.worker_id not in self.braked:
                log.critical("worker %d not restarted: %s (crash loop); retrying when the "
                             "minute has passed", w.worker_id, brake)
            self.braked[w.worker_id] = w
            return
        self.braked.pop(w.worker_id, None)
        self._restart_times.append(time.monotonic())
        self._count_restart()
        self.spawn(w.worker_id, w.core)

    def retry_braked(self) -> None:
        for w in list(self.braked.values()):
            self.respawn(w)

    def brake_reason(self, w: WorkerHandle) -> str | None:
        """Why ``w`` must not be respawned now, or None. Two crash loops: too many restarts
        of any worker in the last minute (``workers.max_restarts_per_minute``), or this
        worker dying before ready ``MAX_START_FAILURES`` times in a row (a broken install
        fails the same way every time; at start that is fatal)."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > 60.0:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.config().workers.max_restarts_per_minute:
            return f"{len(self._restart_times)} restarts in the last minute"
        failures, last = self._start_failures.get(w.worker_id, (0, 0.0))
        if failures >= MAX_START_FAILURES and now - last < 60.0:
            return f"died before ready {failures} times in a row"
        return None

    def kill(self, w: WorkerHandle, why: str) -> None:
        if w.killed_at is not None and time.monotonic() - w.killed_at < 2.0:
            return  # its exit is on its way
        w.killed_at = time.monotonic()
        w.last_exit = why
        log.error("worker %d (pid %s) is hung (%s); killing it", w.worker_id, w.pid, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)

    def check(self, now: float) -> None:
        """Kill workers that look hung: not ready after ``workers.start_timeout``, a request
        older than ``processor.processing_timeout``, or a lane silent for longer than
        ``workers.heartbeat_timeout``."""
        cfg = self.config()
        for w in list(self.workers.values()):
            if w.exited:
                continue
            if w.ready_at is None:
                if now - w.started > cfg.workers.start_timeout:
                    self.kill(w, f"not ready after {cfg.workers.start_timeout:.0f} s")
                continue
            for lane in w.lanes.values():
                if lane.request is not None and now - lane.sent_at > \
                        cfg.processor.processing_timeout:
                    self.kill(w, f"{lane.kind} request running for {now - lane.sent_at:.1f} s")
                    break
                # An idle lane heartbeats, and a VAD lane also between the steps of a
                # batch, so a VAD lane is never silent for long, busy or not. A job lane
                # may decode for up to processing_timeout.
                if (lane.request is None or lane.kind is LaneKind.VAD) and \
                        now - lane.last_seen > cfg.workers.heartbeat_timeout:
                    self.kill(w, f"{lane.kind} lane silent for {now - lane.last_seen:.1f} s")
                    break

    async def reap(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for every worker to exit, kill the rest, forget all."""
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(w.alive() for w in self.workers.values()):
            await asyncio.sleep(0.05)
        for w in self.workers.values():
            self._forget(w)
            if w.alive():
                w.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(timeout=2.0)
            w.close_fds()
        self.workers.clear()
        self.lanes.clear()

    # ------------------------------------------------------------------ status

    def status(self, now: float, memory_by_pid: dict[int, float]) -> list[dict[str, Any]]:
        out = []
        for w in sorted(self.workers.values(), key=lambda w: w.worker_id):
            out.append({
                "id": w.worker_id, "pid": w.pid, "core": w.core,
                "state": "ready" if w.ready else ("exited" if w.exited else "starting"),
                "uptimeS": round(now - w.started, 1),
                "modelLoadMs": round(w.load_ms, 1),
                "smartTurnKernels": w.turn_kernels,
                "jobsDone": w.jobs_done, "vadBatches": w.vad_batches,
                "pssMB": round(memory_by_pid.get(w.pid, 0.0), 1),
                "lanes": {k.value: {"busy": ln.request is not None,
                                    "lastSeenS": round(now - ln.last_seen, 3)}
                          for k, ln in w.lanes.items()},
            })
        return out


def exit_reason(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
