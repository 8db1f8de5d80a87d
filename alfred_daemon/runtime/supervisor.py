"""The supervisor: the one object that owns every worker, session, ring and counter.

It runs on the daemon's asyncio event loop (the gRPC and HTTP layers share that loop and call
the public coroutine methods below). It never runs a model: it turns client frames into
ring windows, asks workers for VAD and jobs, feeds results into each session's
:class:`~alfred_daemon.engine.session.SessionCore`, and hands the events to the session's
queue. Everything it does per call is O(sessions) bookkeeping, so the loop stays responsive
while workers compute.

Scheduling (``_dispatch``)
--------------------------
* **VAD is not session-affine.** A session's Silero state (~1.3 KB) travels with its VAD
  request and comes back with the result, so any idle VAD lane can take any session, and at
  most one VAD request per session is out at a time (windows are analysed in order). A
  request batches every session with waiting windows, oldest first, up to
  ``processor.max_batch_size`` -- batching is adaptive: light load gives small, immediate
  batches; heavy load gives big, cheap ones.
* **Jobs are not affine either.** Whisper decodes and Smart Turn runs read the ring, so any
  idle job lane takes the highest-priority queued job of any session: finals, then turn
  decisions, then partials, oldest first within a kind. A slow decode of one session
  delays others by at most one job, never their VAD (separate lanes).
* **Urgent work does not queue behind partials.** While any session's speech has paused
  (a final, then a turn decision, is due within ~200 ms), ``processor.reserved_job_lanes``
  lanes are kept from partials (unless one has waited ``processor.reserve_patience_ms``:
  under load a held lane is lost capacity); speculative finals (see the engine's session
  module) start in that pause, so the final is usually decoded when the pause is confirmed.
* **A partial shows the audio of when it starts**, not of when it was queued
  (:meth:`SessionCore.extend`): under load the wait in the queue does not age it. A queued
  partial whose utterance has paused is dropped (:meth:`SessionCore.superseded`): the
  final would wait for it.
* Each lane has at most one request outstanding, so the supervisor always knows exactly
  what a dead worker was doing and re-queues exactly that.

Faults
------
Worker exit is noticed through its process sentinel (an fd the event loop watches), a hung
worker through its lanes' silence (``workers.heartbeat_timeout``) or a request outliving
``processor.processing_timeout``; it is SIGKILLed. Either way its VAD requests are rewound
(the ring's VAD read index goes back to the request's first window and the session keeps
the state it sent), its jobs go back to the front of the queue, the affected sessions get a
``worker_recovered`` event, and a replacement is spawned on the same core -- during start
too: only a tripped crash-loop brake fails a start. The windows that piled up behind a hung
worker are caught up on, never shed, and neither the hang nor the catch-up counts as load
(runtime/fairness.py), so a fault changes no other session's words. Workers notice a dead
supervisor through their death pipe.

Fairness
--------
A session whose client sends faster than real time is served from spare capacity only
(runtime/fairness.py) and throttled through its own connection (:meth:`Supervisor.feed`),
so one client cannot push the shared ladder for all.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import itertools
import logging
import math
import os
import pickle
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import zmq
import zmq.asyncio

from ..engine.audio import StreamResampler
from ..engine.config import SAMPLE_RATE, EngineConfig
from ..engine.errors import InvalidAudioError
from ..engine.events import (
    BackpressureRecovered,
    BackpressureTriggered,
    Event,
    FinalTranscription,
    FramesDropped,
    PartialTranscription,
    PipelineHealth,
    SessionClosed,
    TurnEnded,
    WorkerRecovered,
)
from ..engine.jobs import Job, JobKind, JobResult
from ..engine.models import ModelPaths, resolve_all
from ..engine.session import SessionCore, samples_to_ms
from ..engine.vad import WINDOW
from . import rundir
from .backpressure import Ladder, Level, LoadSample, Transition, degrade
from .config import RuntimeConfig, usable_cores
from .errors import (
    AdmissionError,
    DaemonUnavailableError,
    SessionBackloggedError,
    SessionNotFoundError,
    SharedMemoryFullError,
    WorkersFailedError,
)
from .fairness import AHEAD_RANK, Standing, lanes_for_ahead_work, worker_suspect
from .health import Alert, Health, HealthInputs, HealthMonitor
from .live_session import RETAIN_READER, VAD_READER, LiveSession
from .memory import malloc_trim, total_pss_mb
from .protocol import (
    HWM,
    STATE_ENDPOINT,
    WORK_ENDPOINT,
    ControlState,
    Heartbeat,
    Hello,
    JobItem,
    JobReply,
    JobRequest,
    Message,
    Stop,
    VadItem,
    VadRequest,
    VadResult,
    dumps,
    lane_identity,
    loads,
)
from .ring import RingWriter, segment_name, sweep_stale
from .worker import THREAD_ENV, WorkerSpec

log = logging.getLogger(__name__)

SUPPORTED_RATES = (8_000, 16_000, 24_000, 44_100, 48_000)
MAX_VAD_WINDOWS_PER_ITEM = 64
TICK_S = 0.1
"""Housekeeping period: hang checks, load, ladder."""
HISTORY = 10_000
RANK_SPECULATIVE = 2
RANK_PARTIAL = 3
PACE_MARGIN_S = 0.5
"""How far beyond ``limits.realtimeTolerance`` a paced session is held (``feed``)."""
MAX_START_FAILURES = 3
"""Deaths before ready, in a row, that make a worker a crash loop (see ``_brake_reason``)."""


class DaemonState:
    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


# ----------------------------------------------------------------------------- handles


@dataclass(slots=True, eq=False)
class Lane:
    identity: bytes
    kind: str
    """"vad" or "job"."""
    worker: WorkerHandle
    ready: bool = False
    request: VadRequest | JobRequest | None = None
    tasks: list[_Task] = field(default_factory=list)
    """The jobs of the request out on a job lane."""
    sent_at: float = 0.0
    last_seen: float = field(default_factory=time.monotonic)
    busy_accum: float = 0.0
    """Seconds busy since the last tick (for the load figure)."""
    ahead_work: bool = False
    """The request out serves only sessions ahead of real time (runtime/fairness.py): spare
    capacity, not load."""


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
    lanes: dict[str, Lane] = field(default_factory=dict)
    exited: bool = False
    load_ms: float = 0.0
    turn_kernels: str = ""
    jobs_done: int = 0
    vad_batches: int = 0
    last_exit: str = ""
    killed_at: float | None = None
    """Why the process ended (or was killed), for the log and a failed start's message."""

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
class _Task:
    seq: int
    """Queue order; a re-queued task keeps its own (see :meth:`Supervisor._rank`)."""
    session_key: int
    job: Job
    queued_at: float = field(default_factory=time.monotonic)
    spare: bool = False
    """Issued while its session was ahead of real time: spare-capacity work for good
    (runtime/fairness.py), even once the clock has caught up with the session's audio."""


@dataclass(slots=True)
class _Counters:
    sessions_opened: int = 0
    sessions_refused: int = 0
    sessions_cleaned_up: int = 0
    gc_triggered: int = 0
    memory_optimizations: int = 0
    backpressure_events: int = 0
    frames_dropped: int = 0
    worker_restarts: int = 0
    jobs_rerun: int = 0
    jobs_done: int = 0
    job_errors: int = 0
    partials_shed: int = 0
    partials_superseded: int = 0
    """Queued partials dropped because their utterance paused: the final waits for them."""
    decode_batches: int = 0
    """Job requests that carried several sessions' partials."""
    batched_partials: int = 0
    """Partials of such requests that shared a model call with another (equal shape)."""
    speculations_skipped: int = 0
    """Speculative finals abandoned while still queued (never decoded)."""
    jobs_discarded: int = 0
    """Jobs whose result was no longer wanted when it came back (abandoned speculative
    finals that were already running, duplicates of re-run jobs): wasted work."""
    vad_batches: int = 0
    vad_errors: int = 0
    windows_analysed: int = 0
    alerts_raised: int = 0


# ----------------------------------------------------------------------------- supervisor


class Supervisor:
    """Owns the daemon's processes and sessions; see the module docstring."""

    def __init__(self, config: RuntimeConfig | None = None) -> None:
        self.config = config or RuntimeConfig()
        self.state = DaemonState.STOPPED
        self.instance = uuid.uuid4().hex[:8]
        self.ladder = Ladder(self.config.coordination)
        self.monitor = HealthMonitor(self.config.alerts)
        self.counters = _Counters()
        self.model_paths: ModelPaths | None = None
        self.load = 0.0
        self.load_sample = LoadSample(0.0, 0.0, 0.0)
        self.memory_mb = 0.0
        self.memory_by_pid: dict[int, float] = {}
        self.started_at = 0.0

        self._rundir: rundir.RuntimeDir | None = None
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._workers: dict[int, WorkerHandle] = {}
        self._lanes: dict[bytes, Lane] = {}
        self._incarnations = itertools.count(1)
        self._restart_times: deque[float] = deque()
        self._braked: dict[int, WorkerHandle] = {}
        """Dead workers the crash-loop brake has not let respawn yet."""
        self._start_failures: dict[int, tuple[int, float]] = {}
        """Worker id -> (consecutive deaths before becoming ready, time of the last)."""
        self._sessions: dict[str, LiveSession] = {}
        self._by_key: dict[int, LiveSession] = {}
        self._keys = itertools.count(1)
        self._request_ids = itertools.count(1)
        self._task_seq = itertools.count()
        self._queue: list[_Task] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._dispatch_pending = False
        self._control_seq = 0
        self._trim_generation = 0
        self._busy_ewma = 0.0
        self._last_tick = time.monotonic()
        self.frame_times_ms: deque[float] = deque(maxlen=HISTORY)
        """Window write -> VAD result applied, ms."""
        self.handoff_ms: deque[float] = deque(maxlen=HISTORY)
        """Window write -> picked up by a worker's VAD lane, ms (wall clocks, same host)."""
        self._outcomes: deque[tuple[float, bool]] = deque(maxlen=HISTORY)
        self._analysed_at: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        self.alerts: deque[Alert] = deque(maxlen=200)
        self.transitions: deque[Transition] = deque(maxlen=200)
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
        self._stopping = False
        try:
            self._rundir = rundir.acquire(Path(cfg.runtime_dir))
            swept = sweep_stale(cfg.shm_prefix)
            if swept:
                log.warning("removed %d shared-memory segments of a dead instance: %s",
                            len(swept), ", ".join(swept[:5]))
            # Hashing ~80 MB of weights takes a moment: keep the loop free.
            self.model_paths = await asyncio.to_thread(resolve_all, cfg.models)
            os.environ.update(THREAD_ENV)  # inherited by spawned workers at interpreter start
            self._ctx = zmq.asyncio.Context()
            self._router = self._ctx.socket(zmq.ROUTER)
            self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
            self._router.setsockopt(zmq.SNDHWM, HWM)
            self._router.setsockopt(zmq.RCVHWM, HWM)
            self._router.setsockopt(zmq.LINGER, 0)
            self._router.bind(self._rundir.endpoint(WORK_ENDPOINT))
            self._pub = self._ctx.socket(zmq.PUB)
            self._pub.setsockopt(zmq.SNDHWM, HWM)
            self._pub.setsockopt(zmq.LINGER, 0)
            self._pub.bind(self._rundir.endpoint(STATE_ENDPOINT))
            cores = usable_cores()
            for i in range(cfg.workers.resolved_count()):
                core = cores[i % len(cores)] if cfg.workers.pin else None
                self._spawn(i, core)
            self._tasks = [
                asyncio.create_task(self._recv_loop(), name="alfred-recv"),
                asyncio.create_task(self._tick_loop(), name="alfred-tick"),
                asyncio.create_task(self._slow_loop(), name="alfred-housekeeping"),
            ]
            await self._wait_workers_ready()
            self._last_tick = time.monotonic()
            self._busy_ewma = 0.0
            self.ladder.reset()
        except BaseException:
            await self._teardown()
            self.state = DaemonState.STOPPED
            raise
        self.started_at = time.monotonic()
        self.state = DaemonState.RUNNING
        # Health is judged from here on: before, missing workers are starting, not failed.
        # The first verdict is taken now so READY is never followed by a stale one.
        self._evaluate_health(self.started_at)
        log.info("daemon running: %d workers, runtime dir %s", len(self._workers),
                 cfg.runtime_dir)

    async def _wait_workers_ready(self) -> None:
        """Wait until every worker is ready. A worker that dies or hangs (not ready after
        ``workers.start_timeout``) during start is respawned like one that dies later; only
        a tripped crash-loop brake makes the start fail, because a worker that keeps failing
        will not come up by waiting longer."""
        while not all(w.ready for w in self._workers.values()):
            if self._braked:
                w = next(iter(self._braked.values()))
                raise WorkersFailedError(
                    f"worker {w.worker_id} keeps failing to start (last exit: "
                    f"{w.last_exit or 'unknown'}; {self._brake_reason(w)}); "
                    "see its log lines above")
            await asyncio.sleep(0.05)

    async def stop(self, grace: float | None = None) -> None:
        """Drain and stop: refuse new sessions, let open utterances finish (their finals and
        turn decisions) within ``grace`` seconds, stop workers, unlink every segment."""
        if self.state in (DaemonState.STOPPED, DaemonState.DRAINING):
            return
        grace = self.config.drain_grace if grace is None else grace
        self.state = DaemonState.DRAINING
        sessions = list(self._sessions.values())
        if sessions:
            log.info("draining %d sessions (grace %.1f s)", len(sessions), grace)
            results = await asyncio.gather(
                *(self._finish(s, "shutdown", grace) for s in sessions), return_exceptions=True)
            for s, res in zip(sessions, results, strict=True):
                if isinstance(res, BaseException):
                    log.warning("session %s did not drain: %s", s.session_id, res)
        await self._teardown()
        self.state = DaemonState.STOPPED
        log.info("daemon stopped")

    async def _teardown(self) -> None:
        self._stopping = True  # worker exits from here on are expected, not failures
        for s in list(self._sessions.values()):
            self._close(s, "shutdown")
        for lane in self._lanes.values():
            if lane.ready:
                self._send(lane, Stop())
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(w.alive() for w in self._workers.values()):
            await asyncio.sleep(0.05)
        for w in self._workers.values():
            self._forget_worker(w)
            if w.alive():
                w.process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                w.process.wait(timeout=2.0)
            w.close_fds()
        self._workers.clear()
        self._lanes.clear()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._router = self._pub = self._ctx = None
        if self._rundir is not None:
            self._rundir.release()
            self._rundir = None

    # ================================================================== sessions API

    def open_session(self, config: EngineConfig | None = None, *,
                     sample_rate: int = SAMPLE_RATE, session_id: str | None = None,
                     owner: str = "", transport: str = "") -> str:
        """Admit a session; returns its id. Raises AdmissionError with the reason, or
        DaemonUnavailableError while starting/draining. ``owner``: the name of the token
        it was opened with (counted by :meth:`sessions_of`, shown in its status);
        ``transport``: how its audio arrives (``grpc``, ``websocket``, ``http``,
        ``webrtc``), shown in its status and the monitor's session table."""
        cfg = self.config
        if self.state != DaemonState.RUNNING:
            raise DaemonUnavailableError(f"daemon is {self.state}; not accepting sessions")
        if sample_rate not in SUPPORTED_RATES:
            raise InvalidAudioError(
                f"sample rate {sample_rate} Hz is not supported; use one of "
                + ", ".join(str(r) for r in SUPPORTED_RATES))
        refusal = self._admission_refusal()
        if refusal is not None:
            self.counters.sessions_refused += 1
            raise AdmissionError(*refusal)
        sid = session_id or uuid.uuid4().hex
        if sid in self._sessions:
            raise ValueError(f"session {sid} already exists")
        key = next(self._keys)
        n_slots = int(cfg.ring_seconds * SAMPLE_RATE / WINDOW)
        try:
            ring = RingWriter.create(segment_name(cfg.shm_prefix, f"{self.instance}-{key}"),
                                     n_slots)
        except SharedMemoryFullError as exc:
            # Already an admission refusal (RESOURCE_EXHAUSTED / 503 with its sentence);
            # counted and logged like the others, so that operators see why.
            self.counters.sessions_refused += 1
            log.warning("session refused: %s", exc)
            raise
        ring.register_reader(VAD_READER)
        ring.register_reader(RETAIN_READER)
        base = config or cfg.engine
        assert self.model_paths is not None
        core = SessionCore(degrade(base, self.ladder.level),
                           turn_model=self.model_paths.turn is not None)
        s = LiveSession(
            key=key, session_id=sid, core=core, base_config=base, ring=ring,
            sample_rate=sample_rate,
            resampler=StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None,
            events=asyncio.Queue(), owner=owner, transport=transport,
        )
        self._sessions[sid] = s
        self._by_key[key] = s
        self.counters.sessions_opened += 1
        self._publish_state()
        log.info("session %s opened (%d Hz%s, %d active%s)", sid, sample_rate,
                 f", {transport}" if transport else "", len(self._sessions),
                 f", token {owner}" if owner else "")
        return sid

    def sessions_of(self, owner: str) -> int:
        """Open sessions (not closing) opened with the token named ``owner``."""
        return sum(1 for s in self._sessions.values() if s.owner == owner and not s.closing)

    def _admission_refusal(self) -> tuple[str, str] | None:
        cfg = self.config
        if len(self._sessions) >= cfg.processor.max_concurrent_sessions:
            return ("session_limit", f"session limit reached ({len(self._sessions)} of "
                    f"processor.max_concurrent_sessions = "
                    f"{cfg.processor.max_concurrent_sessions})")
        if self.ladder.level >= Level.PAUSE_PROCESSING:
            return ("overloaded", f"daemon is overloaded (load {self.load:.2f}, backpressure "
                    f"at {self.ladder.level.action}); retry later")
        if not any(w.ready for w in self._workers.values()):
            return ("no_workers", "no worker is running")
        if self.memory_mb > cfg.limits.maxMemoryUsageMB:
            return ("memory", f"memory {self.memory_mb:.0f} MB is above "
                    f"limits.maxMemoryUsageMB = {cfg.limits.maxMemoryUsageMB}")
        return None

    def push(self, session_id: str, frame: bytes | npt.NDArray[np.generic], *,
             sample_rate: int | None = None) -> int:
        """Accept one frame of audio (any length). Returns the windows it completed.

        Raises InvalidAudioError (bad frame; the session is unaffected),
        SessionNotFoundError, or SessionBackloggedError (the frame was not accepted).
        """
        s = self._get(session_id)
        if s.closing:
            raise SessionNotFoundError(f"session {session_id} is closing")
        try:
            windows = s.windows_from(frame, sample_rate)
        except InvalidAudioError:
            s.rejected_frames += 1
            raise
        s.frames_received += 1
        s.last_activity = time.monotonic()
        if s.first_audio_at is None:
            s.first_audio_at = s.last_activity
        self._write(s, windows)
        self._dispatch_soon()
        return len(windows)

    def _dispatch_soon(self) -> None:
        """Dispatch once the frames that arrived together are all written: a scan per frame
        costs O(sessions + queue) at every message of every session."""
        if not self._dispatch_pending:
            self._dispatch_pending = True
            asyncio.get_running_loop().call_soon(self._deferred_dispatch)

    def _deferred_dispatch(self) -> None:
        self._dispatch_pending = False
        self._dispatch()

    async def feed(self, session_id: str, frame: bytes | npt.NDArray[np.generic], *,
                   sample_rate: int | None = None) -> int:
        """:meth:`push` with flow control, for transports; the transport does not read while
        this waits, so the client is throttled by its own connection. Two waits:

        * a session more than ``limits.realtimeTolerance`` ahead of real time is paced to
          real time while another session streams at it (alone, it may go as fast as the
          daemon takes it: it delays nobody);
        * a frame that finds the session's ring full of audio its finals still need waits
          for room for up to ``limits.backlogTimeout``; then SessionBackloggedError with a
          sentence.

        Waiting, not shedding: the audio of a client that is ahead is not lost, only slowed
        down."""
        timeout = self.config.limits.backlogTimeout
        deadline = time.monotonic() + timeout
        while True:
            s = self._get(session_id)
            if s.closing:
                raise SessionNotFoundError(f"session {session_id} is closing")
            now = time.monotonic()
            early = s.ahead_s(now) - self.config.limits.realtimeTolerance - PACE_MARGIN_S
            if early > 0 and self._real_time_peers(s, now):
                # Paced to real time while others stream at it: every message costs the
                # event loop all sessions share, whatever its work's rank. Held a margin
                # above the tolerance, so that it stays ahead (its work spare) while paced.
                # Pacing is not a wait for room: it does not count towards the timeout.
                s.paced = True
                await asyncio.sleep(early)
                deadline = time.monotonic() + timeout
                continue
            need = s.max_windows(frame, sample_rate)
            if s.ring.free_slots() >= need or need > s.ring.n_slots:
                return self.push(session_id, frame, sample_rate=sample_rate)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                s.rejected_frames += 1
                why = ("the client sends audio faster than real time and the daemon has no "
                       "spare capacity for it; send it at real time"
                       if self._standing(s, time.monotonic()).ahead else
                       "the daemon cannot keep up with this session")
                raise SessionBackloggedError(
                    f"session {s.session_id} had no room for audio for {timeout:g} s "
                    f"(its ring holds {self.config.ring_seconds:g} s its finals still "
                    f"need): {why}")
            s.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.progress.wait(), min(remaining, 0.2))

    def _real_time_peers(self, s: LiveSession, now: float) -> bool:
        """Whether another session streams at real time (has sent audio within the last
        second and is not ahead itself): then a session ahead of real time is paced."""
        return any(t is not s and not t.closing and now - t.last_activity < 1.0
                   and not self._standing(t, now).ahead for t in self._sessions.values())

    def _write(self, s: LiveSession, windows: npt.NDArray[np.int16]) -> None:
        n = len(windows)
        if n == 0:
            return
        if s.ring.free_slots() < n:
            self._shed(s, n - s.ring.free_slots(), "ring_full")
        if s.ring.free_slots() < n:
            s.rejected_frames += 1
            raise SessionBackloggedError(
                f"session {s.session_id} has {s.queued_windows} windows waiting and "
                f"{s.ring.n_slots} slots of audio still needed; frame not accepted")
        mono, wall = time.monotonic(), time.time()
        if s.arrival.size != s.ring.n_slots:
            s.arrival = np.zeros(s.ring.n_slots, np.float64)
        for w in windows:
            k = s.ring.write(w)
            s.write_times.append((mono, wall))
            s.arrival[k % s.ring.n_slots] = mono
        s.windows_written += n

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

    def touch(self, session_id: str) -> None:
        """A keepalive: the session is not idle."""
        self._get(session_id).last_activity = time.monotonic()

    def set_playback(self, session_id: str, active: bool) -> None:
        s = self._get(session_id)
        s.core.set_playback(active)
        s.last_activity = time.monotonic()

    def force_end_of_turn(self, session_id: str) -> None:
        s = self._get(session_id)
        s.core.force_end_of_turn()
        s.last_activity = time.monotonic()
        self._pump(s)

    def flush(self, session_id: str) -> None:
        s = self._get(session_id)
        s.core.flush()
        s.last_activity = time.monotonic()
        self._pump(s)

    def reconfigure(self, session_id: str, config: EngineConfig) -> None:
        s = self._get(session_id)
        s.base_config = config
        s.core.reconfigure(degrade(config, self.ladder.level))

    async def finish_session(self, session_id: str, timeout: float | None = None) -> None:
        """End of input: analyse what is queued, finalise, end the open turn, deliver every
        event, then close (last event ``session_closed`` with reason ``finished``)."""
        s = self._get(session_id)
        await self._finish(s, "finished", self.config.drain_grace if timeout is None
                           else timeout)

    def close_session(self, session_id: str, reason: str = "client") -> None:
        """Drop a session now (client went away): no further events except session_closed."""
        self._close(self._get(session_id), reason)

    async def events(self, session_id: str) -> AsyncIterator[Event]:
        """The session's events in order, ending after ``session_closed``."""
        s = self._get(session_id)
        while True:
            ev = await s.events.get()
            if ev is None:
                return
            yield ev

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def _get(self, session_id: str) -> LiveSession:
        s = self._sessions.get(session_id)
        if s is None:
            # The id is the caller's: quoted, and cut short (it may be a megabyte long).
            shown = session_id if len(session_id) <= 64 else session_id[:64] + "..."
            raise SessionNotFoundError(f"no open session {shown!r}")
        return s

    async def _finish(self, s: LiveSession, reason: str, timeout: float) -> None:
        if s.closing:
            return
        s.closing = True
        deadline = time.monotonic() + timeout
        try:
            with contextlib.suppress(SessionBackloggedError):
                self._write(s, s.tail_windows())
            self._dispatch()
            await self._wait(s, lambda: s.queued_windows == 0 and not s.vad_in_flight,
                             deadline)
            s.core.flush()
            s.core.force_end_of_turn()
            self._pump(s)
            await self._wait(s, lambda: not s.core.in_flight, deadline)
            self._pump(s)
        except TimeoutError:
            log.warning("session %s: %s did not complete within %.1f s; closing anyway",
                        s.session_id, reason, timeout)
        finally:
            self._close(s, reason)

    async def _wait(self, s: LiveSession, done: Callable[[], bool], deadline: float) -> None:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            s.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.progress.wait(), min(remaining, 0.2))

    def _close(self, s: LiveSession, reason: str) -> None:
        if s.closed_reason is not None:
            return
        s.closed_reason = reason
        s.closing = True
        self._sessions.pop(s.session_id, None)
        self._by_key.pop(s.key, None)
        s.core.post(SessionClosed(audio_offset_ms=samples_to_ms(s.core.position),
                                  reason=reason))
        for ev in s.core.drain_events():
            self._deliver(s, ev)
        s.events.put_nowait(None)
        # Workers may still hold a mapping (it stays valid after unlink); they drop it when
        # the next control state no longer lists the ring.
        s.ring.close()
        with contextlib.suppress(FileNotFoundError):
            s.ring.unlink()
        self._publish_state()
        log.info("session %s closed (%s)", s.session_id, reason)

    # ================================================================== scheduling

    def _pump(self, s: LiveSession) -> None:
        """Move a session's new jobs to the queue and its ready events to its client."""
        if s.closed_reason is not None:
            return
        for task in [t for t in self._queue if t.session_key == s.key
                     and s.core.superseded(t.job)]:
            self._queue.remove(task)
            self.counters.partials_superseded += 1
            s.core.on_result(JobResult.skip(task.job, "superseded by the final"))
        jobs = s.core.take_jobs()
        if jobs:
            spare = self._standing(s, time.monotonic()).ahead
            for job in jobs:
                self._queue.append(_Task(next(self._task_seq), s.key, job, spare=spare))
        for ev in s.core.drain_events():
            self._deliver(s, ev)
        s.ring.set_reader(RETAIN_READER, min(s.core.retain_from() // WINDOW, s.ring.write_seq))

    def _deliver(self, s: LiveSession, ev: Event) -> None:
        if isinstance(ev, PartialTranscription | FinalTranscription | TurnEnded):
            # Latency as a voice agent feels it: from the arrival of the audio the event
            # refers to (its offset) to the event being handed to the client.
            arrived = s.arrival_of(ev.audio_offset_ms)
            if arrived is not None:
                self._observe(f"{ev.TYPE}_latency_ms", (time.monotonic() - arrived) * 1000)
        s.events.put_nowait(ev)
        s.events_sent += 1
        s.last_event = ev.TYPE
        s.last_event_at = time.monotonic()

    def _dispatch(self) -> None:
        """Give every idle lane work: VAD batches first, then jobs by priority."""
        if self._router is None:
            return
        now = time.monotonic()
        # Nothing new goes to a worker that looks hung: it would wait there until the
        # heartbeat has the worker killed and re-run.
        idle = [ln for ln in self._lanes.values() if ln.ready and ln.request is None
                and not self._suspect(ln.worker, now)]
        # A VAD request goes preferably to a worker whose job lane is idle: it then has its
        # core to itself instead of preempting a decode.
        for lane in sorted((ln for ln in idle if ln.kind == "vad"),
                           key=lambda ln: ln.worker.lanes["job"].request is not None):
            items = self._vad_batch(lane.worker.worker_id)
            if not items:
                break
            self._send_request(lane, VadRequest(next(self._request_ids), items, time.time()))
        idle_jobs = [ln for ln in idle if ln.kind == "job"]
        if not idle_jobs:
            return
        job_lanes = sum(1 for ln in self._lanes.values() if ln.kind == "job" and ln.ready)
        # Reserved lanes are held back from partials only while some session is about to
        # need a final or a turn decision (speech paused, not yet confirmed or judged). At
        # other times every lane may decode partials: with one lane held for the whole
        # run, partials queued behind each other from four sessions on (p95 partial lag
        # 470 ms at six sessions) while the held lane's core idled.
        real_time = [s for s in self._sessions.values() if not self._standing(s, now).ahead]
        reserve = 0
        if any(s.core.decision_pending for s in real_time):
            reserve = min(self.config.processor.reserved_job_lanes, job_lanes - 1)
        real_time_work = (
            any(s.core.speaking or s.core.decision_pending for s in real_time)
            or any(not t.spare for t in self._queue)
            or any(ln.kind == "job" and ln.request is not None and not ln.ahead_work
                   for ln in self._lanes.values()))
        ahead_room = lanes_for_ahead_work(job_lanes, self._busy_ewma,
                                          real_time_work=real_time_work) - sum(
            1 for ln in self._lanes.values()
            if ln.kind == "job" and ln.request is not None and ln.ahead_work)
        for n_idle, lane in zip(range(len(idle_jobs), 0, -1), idle_jobs, strict=True):
            task = self._next_task(partials=n_idle > reserve, ahead=ahead_room > 0)
            if task is None:
                break
            if self._rank(task)[0] >= AHEAD_RANK:
                ahead_room -= 1
            tasks = [task]
            if task.job.kind is JobKind.PARTIAL:
                tasks += self._more_partials(task)
            self._send_tasks(lane, tasks)

    def _send_tasks(self, lane: Lane, tasks: list[_Task]) -> None:
        items = []
        for t in tasks:
            s = self._by_key[t.session_key]
            t.job = s.core.extend(t.job)  # a queued partial shows the audio of now
            items.append(JobItem(t.session_key, s.ring.handle, t.job, s.core.config.stt))
        lane.tasks = tasks
        lane.ahead_work = all(t.spare for t in tasks)
        self._send_request(lane, JobRequest(next(self._request_ids), tuple(items)))

    def _more_partials(self, first: _Task) -> list[_Task]:
        """Other sessions' queued partials to decode with ``first`` in one request, oldest
        first, up to ``processor.max_decode_batch`` in all (``batch_processing`` on).

        Only what is already waiting: a lone partial goes at once. The worker batches the
        ones of equal shape (window, prompt, budget), which costs ~2/3 of decoding them one
        by one; a final or turn decision is never held up by it (they go alone, and
        partials never take the last free lane while one is due)."""
        proc = self.config.processor
        if not proc.batch_processing or proc.max_decode_batch <= 1:
            return []
        out: list[_Task] = []
        sessions = {first.session_key}
        for task in sorted(self._queue, key=lambda t: t.seq):
            if len(out) + 1 >= proc.max_decode_batch:
                break
            s = self._by_key.get(task.session_key)
            if (task.job.kind is not JobKind.PARTIAL or task.session_key in sessions
                    or s is None or not s.core.wants(task.job)):
                continue
            self._queue.remove(task)
            sessions.add(task.session_key)
            out.append(task)
        return out

    def _vad_batch(self, worker_id: int) -> tuple[VadItem, ...]:
        limit = self.config.processor.max_batch_size if self.config.processor.batch_processing \
            else 1
        shed_above = (self.config.processor.frame_queue_size // 4
                      if self.ladder.level >= Level.DROP_FRAMES else None)
        waiting = [s for s in self._sessions.values()
                   if not s.vad_in_flight and s.queued_windows > 0]
        waiting.sort(key=lambda s: s.write_times[0][0] if s.write_times else 0.0)
        items: list[VadItem] = []
        now = time.monotonic()
        for s in waiting[:limit]:
            if (shed_above is not None and s.queued_windows > shed_above
                    and self._standing(s, now).may_shed):
                self._shed(s, s.queued_windows - shed_above, "backpressure")
            count = min(s.queued_windows, MAX_VAD_WINDOWS_PER_ITEM)
            items.append(VadItem(s.key, s.ring.handle, s.vad_next, count, s.vad_state))
            s.vad_in_flight = True
            s.vad_worker = worker_id
        return tuple(items)

    def _shed(self, s: LiveSession, n: int, reason: str) -> None:
        """Skip VAD of the oldest ``n`` queued windows: counted, reported, never silent."""
        n = min(n, s.queued_windows)
        if n <= 0 or s.vad_in_flight:
            return
        first = s.vad_next
        s.vad_next += n
        s.ring.set_reader(VAD_READER, s.vad_next)
        for _ in range(n):
            s.write_times.popleft()
        s.core.on_skipped(n)
        s.windows_dropped += n
        self.counters.frames_dropped += n
        end_ms = samples_to_ms(s.vad_next * WINDOW)
        s.core.post(FramesDropped(audio_offset_ms=end_ms, start_ms=samples_to_ms(first * WINDOW),
                                  end_ms=end_ms, frames=n, reason=reason))
        self._pump(s)

    def _next_task(self, *, partials: bool = True, ahead: bool = True) -> _Task | None:
        """Take the most urgent runnable job (see :meth:`_rank`; the queue holds a few tasks
        per session, so a linear scan is cheap). With ``partials=False`` (the lane is one of
        the reserved ones) only an owed final, a turn decision, or optional work that has
        waited ``processor.reserve_patience_ms`` is taken: under load, holding a lane idle
        for a decision that may come later starves partials of half the machine. With
        ``ahead=False`` work of sessions ahead of real time is not taken (they have as many
        lanes as :func:`~.fairness.lanes_for_ahead_work` allows); a reserved lane never
        takes it."""
        patience = self.config.processor.reserve_patience_ms / 1000.0
        while self._queue:
            candidates = self._queue
            if not partials or not ahead:
                now = time.monotonic()
                candidates = [t for t in self._queue if self._eligible(
                    self._rank(t)[0], now - t.queued_at, partials=partials, ahead=ahead,
                    patience=patience)]
                if not candidates:
                    return None
            task = min(candidates, key=self._rank)
            self._queue.remove(task)
            s = self._by_key.get(task.session_key)
            if s is None:
                continue  # session closed
            if not s.core.wants(task.job):
                self.counters.speculations_skipped += 1  # abandoned while queued: no decode
                continue
            if task.job.kind is JobKind.PARTIAL and self.ladder.level >= Level.PAUSE_PROCESSING:
                self.counters.partials_shed += 1
                s.core.on_result(JobResult.skip(task.job, "partials paused"))
                self._pump(s)
                continue
            return task
        return None

    @staticmethod
    def _eligible(rank: int, waited: float, *, partials: bool, ahead: bool,
                  patience: float) -> bool:
        if rank >= AHEAD_RANK:
            return ahead and partials
        return partials or rank < RANK_SPECULATIVE or waited >= patience

    def _rank(self, task: _Task) -> tuple[int, int]:
        """Scheduling order: finals owed to a client, turn decisions, speculative finals,
        partials; oldest first within each. A speculation ranks below a turn decision
        (which is owed now) and, like a partial, takes a reserved lane only once it has
        waited ``processor.reserve_patience_ms``: it may yet be abandoned. It ranks as a
        final again once the VAD confirms the speech end. All work of a session ahead of
        real time ranks after all work of the others (runtime/fairness.py)."""
        if task.job.kind is JobKind.FINAL:
            s = self._by_key.get(task.session_key)
            rank = (RANK_SPECULATIVE if s is not None and s.core.is_speculative(task.job)
                    else 0)
        else:
            rank = 1 if task.job.kind is JobKind.TURN else RANK_PARTIAL
        return rank + AHEAD_RANK * task.spare, task.seq

    def _standing(self, s: LiveSession, now: float) -> Standing:
        holder = self._workers.get(s.vad_worker) if s.vad_in_flight else None
        return Standing.of(
            ahead_s=math.inf if s.paced else s.ahead_s(now),
            tolerance_s=self.config.limits.realtimeTolerance,
            vad_on_suspect=holder is not None and self._suspect(holder, now),
            catching_up=s.vad_next < s.catch_up_to)

    def _send_request(self, lane: Lane, msg: VadRequest | JobRequest) -> None:
        lane.request = msg
        lane.sent_at = time.monotonic()
        if not self._send(lane, msg):
            # The lane vanished between its last message and now: its worker is dying and
            # the sentinel callback will re-queue this request with the rest.
            pass

    def _send(self, lane: Lane, msg: Message) -> bool:
        assert self._router is not None
        # zmq.asyncio tries a non-blocking send at once and reports failure (EHOSTUNREACH
        # from ROUTER_MANDATORY for a vanished lane, EAGAIN at the HWM) on the returned
        # future instead of raising.
        fut = self._router.send_multipart([lane.identity, dumps(msg)], flags=zmq.NOBLOCK)
        assert isinstance(fut, asyncio.Future)
        exc = fut.exception() if fut.done() else None
        if exc is not None:
            log.warning("cannot reach %s: %s", lane.identity.decode(), exc)
            return False
        return True

    # ================================================================== results

    async def _recv_loop(self) -> None:
        assert self._router is not None
        while True:
            identity, payload = await self._router.recv_multipart()
            lane = self._lanes.get(identity)
            if lane is None:
                continue  # a lane of a worker already written off
            lane.last_seen = time.monotonic()
            try:
                self._on_message(lane, loads(payload))
            except Exception:
                log.exception("failed to apply a message from %s", identity.decode())
            self._dispatch()

    def _on_message(self, lane: Lane, msg: Message) -> None:
        if isinstance(msg, Hello):
            lane.ready = True
            w = lane.worker
            w.load_ms = msg.load_ms
            w.turn_kernels = msg.turn_kernels
            if all(ln.ready for ln in w.lanes.values()) and w.ready_at is None:
                w.ready_at = time.monotonic()
                self._start_failures.pop(w.worker_id, None)
                log.info("worker %d (pid %d, core %s) ready in %.0f ms (models %.0f ms)",
                         w.worker_id, msg.pid, msg.core, (w.ready_at - w.started) * 1000,
                         msg.load_ms)
                self._publish_state()
        elif isinstance(msg, Heartbeat):
            pass
        elif isinstance(msg, VadResult | JobReply):
            req = lane.request
            if req is None or req.request_id != msg.request_id:
                return  # not what this lane owes us (cannot happen with one request each)
            self._lane_done(lane)
            if isinstance(msg, VadResult):
                lane.worker.vad_batches += 1
                self._on_vad_result(msg, lane.worker.worker_id)
            else:
                lane.worker.jobs_done += 1
                self._on_job_reply(msg, lane.worker.worker_id)

    def _lane_done(self, lane: Lane) -> None:
        now = time.monotonic()
        if not lane.ahead_work:
            lane.busy_accum += now - max(lane.sent_at, self._last_tick)
        lane.request = None
        lane.tasks = []
        lane.ahead_work = False

    def _on_vad_result(self, msg: VadResult, worker_id: int) -> None:
        self.counters.vad_batches += 1
        now = time.monotonic()
        per_window = msg.ms / max(1, sum(len(i.probs) for i in msg.items))
        for item in msg.items:
            s = self._by_key.get(item.session_key)
            if s is None:
                continue
            s.vad_in_flight = False
            s.progress.set()
            try:
                if item.error is not None:
                    # The worker could not read the windows. Rewind so the next request
                    # starts at the same place; if that keeps failing the session errors.
                    self.counters.vad_errors += 1
                    self._outcomes.append((now, False))
                    s.errors += 1
                    s.ring.set_reader(VAD_READER, s.vad_next)
                    log.warning("session %s: VAD failed: %s", s.session_id, item.error)
                    if s.errors > 10:
                        self._close(s, "error")
                    continue
                self._outcomes.append((now, True))
                s.vad_state = item.state
                s.last_worker = worker_id
                # The health figure leaves out the frames of a client ahead of real time:
                # it queues its own windows, which says nothing about the daemon's health.
                # The metric (observers) has every frame.
                timed = self._standing(s, now).counts_toward_load
                for p in item.probs:
                    mono, written = s.write_times.popleft()
                    self._observe("frame_ms", (now - mono) * 1000.0)
                    if timed:
                        self.frame_times_ms.append((now - mono) * 1000.0)
                        self.handoff_ms.append((msg.picked_up - written) * 1000.0)
                    s.core.on_vad(float(p), per_window)
                n = len(item.probs)
                s.vad_next += n
                s.windows_analysed += n
                self.counters.windows_analysed += n
                self._analysed_at.append((now, n))
                self._pump(s)
            except Exception:
                log.exception("session %s: applying VAD results failed", s.session_id)
                self._close(s, "error")

    def _on_job_reply(self, msg: JobReply, worker_id: int) -> None:
        if len(msg.results) > 1:
            self.counters.decode_batches += 1
            self.counters.batched_partials += sum(r.batch > 1 for _, r in msg.results)
        for session_key, result in msg.results:
            self._on_job_result(session_key, result, worker_id)

    def _on_job_result(self, session_key: int, result: JobResult, worker_id: int) -> None:
        self.counters.jobs_done += 1
        ok = result.error is None
        if not ok:
            self.counters.job_errors += 1
        self._outcomes.append((time.monotonic(), ok))
        s = self._by_key.get(session_key)
        if s is None:
            return
        s.last_worker = worker_id
        if not s.core.wants(result.job):
            self.counters.jobs_discarded += 1
        try:
            s.core.on_result(result)
            self._pump(s)
        except Exception:
            log.exception("session %s: applying a job result failed", s.session_id)
            self._close(s, "error")
        s.progress.set()

    # ================================================================== workers

    def _spawn(self, worker_id: int, core: int | None) -> WorkerHandle:
        assert self._rundir is not None and self.model_paths is not None
        cfg = self.config
        incarnation = next(self._incarnations)
        spec = WorkerSpec(
            worker_id=worker_id, core=core, models=self.model_paths,
            work_endpoint=self._rundir.endpoint(WORK_ENDPOINT),
            state_endpoint=self._rundir.endpoint(STATE_ENDPOINT),
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
        for kind in ("vad", "job"):
            lane = Lane(lane_identity(worker_id, incarnation, kind), kind, w)
            w.lanes[kind] = lane
            self._lanes[lane.identity] = lane
        self._workers[worker_id] = w
        asyncio.get_running_loop().add_reader(w.pidfd, self._on_worker_exit, w)
        log.info("worker %d spawned (pid %s, core %s)", worker_id, proc.pid, core)
        return w

    def _on_worker_exit(self, w: WorkerHandle) -> None:
        asyncio.get_running_loop().remove_reader(w.pidfd)
        with contextlib.suppress(subprocess.TimeoutExpired):
            w.process.wait(timeout=0.5)
        code = w.process.returncode
        if w.exited:
            return
        w.exited = True
        if not self._stopping:
            reason = _exit_reason(code)
            if w.last_exit:
                reason = f"{reason} ({w.last_exit})"
            w.last_exit = reason
            if w.ready_at is None:
                failures, _ = self._start_failures.get(w.worker_id, (0, 0.0))
                self._start_failures[w.worker_id] = (failures + 1, time.monotonic())
            log.error("worker %d (pid %s) exited: %s", w.worker_id, w.pid, reason)
            self._recover(w, reason)

    def _recover(self, w: WorkerHandle, reason: str) -> None:
        """Re-queue exactly what the dead worker owned, tell its sessions, respawn it."""
        affected: dict[int, list[int]] = {}  # session key -> [jobs, windows]
        for lane in w.lanes.values():
            req, tasks = lane.request, lane.tasks
            lane.request, lane.tasks = None, []
            if isinstance(req, VadRequest):
                for item in req.items:
                    s = self._by_key.get(item.session_key)
                    if s is None:
                        continue
                    # The worker may or may not have advanced the shared read index before
                    # dying; the supervisor's vad_next is the truth. The state it sent is
                    # still s.vad_state (results replace it, requests only copy it).
                    s.ring.set_reader(VAD_READER, s.vad_next)
                    s.vad_in_flight = False
                    # What piled up meanwhile is caught up on, not shed: a fault is not load.
                    s.catch_up_to = max(s.catch_up_to, s.ring.write_seq)
                    affected.setdefault(s.key, [0, 0])[1] += item.count
            for task in tasks:
                if task.session_key in self._by_key:
                    # Original seq: ranks before younger tasks. Its time on the dead worker
                    # was not a wait for capacity, so the load figure does not count it.
                    task.queued_at = time.monotonic()
                    self._queue.append(task)
                    self.counters.jobs_rerun += 1
                    affected.setdefault(task.session_key, [0, 0])[0] += 1
        self._forget_worker(w)
        w.close_fds()
        for key, (jobs, frames) in affected.items():
            s = self._by_key[key]
            s.core.post(WorkerRecovered(audio_offset_ms=samples_to_ms(s.core.position),
                                        worker_id=w.worker_id, reason=reason,
                                        rerun_jobs=jobs, rerun_frames=frames))
            self._pump(s)
        self._respawn(w)
        self._dispatch()

    def _forget_worker(self, w: WorkerHandle) -> None:
        for lane in w.lanes.values():
            self._lanes.pop(lane.identity, None)
        if w.pidfd >= 0:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(w.pidfd)

    def _respawn(self, w: WorkerHandle) -> None:
        if self._stopping:
            return
        brake = self._brake_reason(w)
        if brake is not None:
            if w.worker_id not in self._braked:
                log.critical("worker %d not restarted: %s (crash loop); retrying when the "
                             "minute has passed", w.worker_id, brake)
            self._braked[w.worker_id] = w
            return
        self._braked.pop(w.worker_id, None)
        self._restart_times.append(time.monotonic())
        self.counters.worker_restarts += 1
        self._spawn(w.worker_id, w.core)

    def _brake_reason(self, w: WorkerHandle) -> str | None:
        """Why ``w`` must not be respawned now, or None. Two crash loops: too many restarts
        of any worker in the last minute (``workers.max_restarts_per_minute``), or this
        worker dying before ready ``MAX_START_FAILURES`` times in a row (a broken install
        fails the same way every time; at start that is fatal)."""
        now = time.monotonic()
        while self._restart_times and now - self._restart_times[0] > 60.0:
            self._restart_times.popleft()
        if len(self._restart_times) >= self.config.workers.max_restarts_per_minute:
            return f"{len(self._restart_times)} restarts in the last minute"
        failures, last = self._start_failures.get(w.worker_id, (0, 0.0))
        if failures >= MAX_START_FAILURES and now - last < 60.0:
            return f"died before ready {failures} times in a row"
        return None

    def _suspect(self, w: WorkerHandle, now: float) -> bool:
        return worker_suspect(vad_silent_s=now - w.lanes["vad"].last_seen,
                              heartbeat_interval=self.config.workers.heartbeat_interval)

    def _kill(self, w: WorkerHandle, why: str) -> None:
        if w.killed_at is not None and time.monotonic() - w.killed_at < 2.0:
            return  # its exit is on its way
        w.killed_at = time.monotonic()
        w.last_exit = why
        log.error("worker %d (pid %s) is hung (%s); killing it", w.worker_id, w.pid, why)
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, signal.SIGKILL)

    def _check_workers(self, now: float) -> None:
        cfg = self.config
        for w in list(self._workers.values()):
            if w.exited:
                continue
            if w.ready_at is None:
                if now - w.started > cfg.workers.start_timeout:
                    self._kill(w, f"not ready after {cfg.workers.start_timeout:.0f} s")
                continue
            for lane in w.lanes.values():
                if lane.request is not None and now - lane.sent_at > \
                        cfg.processor.processing_timeout:
                    self._kill(w, f"{lane.kind} request running for {now - lane.sent_at:.1f} s")
                    break
                # An idle lane heartbeats, and a VAD lane also between the steps of a
                # batch, so a VAD lane is never silent for long, busy or not. A job lane
                # may decode for up to processing_timeout.
                if (lane.request is None or lane.kind == "vad") and \
                        now - lane.last_seen > cfg.workers.heartbeat_timeout:
                    self._kill(w, f"{lane.kind} lane silent for {now - lane.last_seen:.1f} s")
                    break

    # ================================================================== housekeeping

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                self._tick(time.monotonic())
            except Exception:
                log.exception("housekeeping tick failed")

    def _tick(self, now: float) -> None:
        self._check_workers(now)
        for w in list(self._braked.values()):
            self._respawn(w)
        # Busy fraction of the job lanes over this tick, smoothed over ~2 s.
        # A suspect worker's lanes (runtime/fairness.py) are neither capacity nor load: the
        # heartbeat will have it killed, and its work re-run.
        job_lanes = [ln for ln in self._lanes.values() if ln.kind == "job" and ln.ready
                     and not self._suspect(ln.worker, now)]
        span = max(now - self._last_tick, 1e-3)
        busy = 0.0
        for lane in job_lanes:
            if lane.request is not None and not lane.ahead_work:
                lane.busy_accum += now - max(lane.sent_at, self._last_tick)
            busy += min(lane.busy_accum / span, 1.0)
        for lane in self._lanes.values():
            lane.busy_accum = 0.0
        # No ready job lane means no worker (health reports that), not a busy one.
        busy = busy / len(job_lanes) if job_lanes else 0.0
        alpha = min(1.0, span / 2.0)
        self._busy_ewma += alpha * (busy - self._busy_ewma)
        self._last_tick = now
        fq = self.config.processor.frame_queue_size
        counted = [s for s in self._sessions.values()
                   if self._standing(s, now).counts_toward_load]
        queue = max((s.queued_windows / fq for s in counted), default=0.0)
        lag = max((self._session_lag_ms(s, now) for s in counted), default=0.0)
        self.load_sample = LoadSample(queue, lag / self.config.max_lag_ms, self._busy_ewma)
        self.load = self.load_sample.load
        transition = self.ladder.update(self.load, now)
        if transition is not None:
            self._apply_transition(transition)
        self._health_events(now)

    def _session_lag_ms(self, s: LiveSession, now: float) -> float:
        lag = s.lag_ms(now)
        # Only what is owed counts: a queued partial or speculation is optional work.
        oldest = min((t.queued_at for t in self._queue if t.session_key == s.key
                      and self._rank(t)[0] < RANK_SPECULATIVE), default=None)
        if oldest is not None:
            lag = max(lag, (now - oldest) * 1000.0)
        return lag

    def _apply_transition(self, t: Transition) -> None:
        self.counters.backpressure_events += 1
        self.transitions.append(t)
        log.warning("backpressure %s: %s -> %s (load %.2f)",
                    "triggered" if t.triggered else "recovered", t.previous.action,
                    t.level.action, t.load)
        for s in self._sessions.values():
            s.core.reconfigure(degrade(s.base_config, t.level))
            offset = samples_to_ms(s.core.position)
            if t.triggered:
                s.core.post(BackpressureTriggered(audio_offset_ms=offset, level=int(t.level),
                                                  action=t.action, load=round(t.load, 3)))
            else:
                s.core.post(BackpressureRecovered(audio_offset_ms=offset, level=int(t.level),
                                                  action=t.action, load=round(t.load, 3)))
            self._pump(s)
        self._publish_state()

    def _health_events(self, now: float) -> None:
        interval = self.config.health_event_interval
        for s in self._sessions.values():
            if now - s.last_health_event >= interval:
                s.last_health_event = now
                s.core.post(PipelineHealth(
                    audio_offset_ms=samples_to_ms(s.core.position), health=self.health.value,
                    load=round(self.load, 3), lag_ms=round(self._session_lag_ms(s, now), 1),
                    backpressure_level=int(self.ladder.level)))
                self._pump(s)

    async def _slow_loop(self) -> None:
        """Once a second: control state, memory, health, alerts; cleanup on its interval."""
        last_cleanup = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                self._publish_state()
                await self._measure_memory()
                self._evaluate_health(time.monotonic())
                now = time.monotonic()
                self.counters.sessions_cleaned_up += self._close_unfed(now)
                if now - last_cleanup >= self.config.limits.cleanupInterval:
                    last_cleanup = now
                    self._cleanup_sessions(now)
                    limits = self.config.limits
                    if (self.config.processor.memory_optimization and self.memory_mb
                            > limits.gcTriggerThreshold * limits.maxMemoryUsageMB):
                        self.counters.gc_triggered += 1
                        self._release_memory()
            except Exception:
                log.exception("housekeeping failed")

    def _publish_state(self) -> None:
        if self._pub is None:
            return
        self._control_seq += 1
        state = ControlState(self._control_seq, int(self.ladder.level),
                             frozenset(s.ring.name for s in self._sessions.values()),
                             self._trim_generation)
        with contextlib.suppress(zmq.ZMQError):
            self._pub.send(dumps(state), flags=zmq.NOBLOCK)

    def _pids(self) -> list[int]:
        return [os.getpid()] + [w.pid for w in self._workers.values() if not w.exited]

    async def _measure_memory(self) -> None:
        by_pid = await asyncio.to_thread(total_pss_mb, self._pids())
        self.memory_by_pid = by_pid
        self.memory_mb = sum(by_pid.values())

    def _evaluate_health(self, now: float) -> None:
        if self.state != DaemonState.RUNNING:
            # Starting or draining on purpose: workers missing then are not a fault, and an
            # operator's alerting must not page on every deploy.
            return
        expected = len(self._workers)
        alive = sum(1 for w in self._workers.values() if w.ready)
        # alerts.memory_mb is the spec's per-daemon figure from its single-process days; the
        # comparable figure now is the largest process (one worker carries the models).
        # The whole tree is held to limits.maxMemoryUsageMB (admission, GC trigger).
        largest = max(self.memory_by_pid.values(), default=0.0)
        inputs = HealthInputs(
            frame_time_ms=self.average_frame_time(), memory_mb=largest, load=self.load,
            error_rate=self.error_rate(now), queue_frames=sum(
                s.queued_windows for s in self._sessions.values()
                if self._standing(s, now).counts_toward_load),
            workers_alive=alive, workers_expected=max(expected,
                                                      self.config.workers.resolved_count()),
            level=self.ladder.level)
        before = self.monitor.health
        for alert in self.monitor.evaluate(inputs, now):
            self.alerts.append(alert)
            if alert.active:
                self.counters.alerts_raised += 1
        if self.monitor.health != before:
            log.warning("health %s -> %s", before.value, self.monitor.health.value)
            for listener in self._health_listeners:
                listener(self.monitor.health)

    def _close_unfed(self, now: float) -> int:
        """Close sessions that have not had a second of audio ``limits.firstAudioTimeout``
        after they opened: each holds a slot of ``max_concurrent_sessions``, and a client
        that opens sessions with one frame each could otherwise fill every slot for the
        whole ``idleSessionTimeout``."""
        closed = 0
        for s in list(self._sessions.values()):
            if (not s.closing and now - s.created > self.config.limits.firstAudioTimeout
                    and s.ring.write_seq * WINDOW < SAMPLE_RATE):
                self._close(s, "idle")
                closed += 1
        return closed

    def _cleanup_sessions(self, now: float) -> int:
        limits = self.config.limits
        cleaned = self._close_unfed(now)
        for s in list(self._sessions.values()):
            if s.closing:
                continue
            if now - s.created > limits.maxSessionDuration:
                task = asyncio.create_task(
                    self._finish(s, "max_duration", self.config.drain_grace))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                cleaned += 1
            elif now - s.last_activity > limits.idleSessionTimeout:
                self._close(s, "idle")
                cleaned += 1
        self.counters.sessions_cleaned_up += cleaned
        return cleaned

    def _release_memory(self) -> int:
        collected = gc.collect()
        for s in self._sessions.values():
            s.pending = s.pending.copy()
        malloc_trim()
        self._trim_generation += 1
        self.counters.memory_optimizations += 1
        self._publish_state()
        return collected

    async def optimize(self, *, trigger_gc: bool = True, cleanup_sessions: bool = True,
                       optimize_buffers: bool = True) -> dict[str, Any]:
        """Garbage-collect, clean up idle sessions, trim buffers (here and in workers), and
        report what it freed (PSS before and after, measured)."""
        await self._measure_memory()
        before = self.memory_mb
        done: dict[str, Any] = {"triggerGC": trigger_gc, "cleanupSessions": cleanup_sessions,
                                "optimizeBuffers": optimize_buffers}
        if trigger_gc:
            self.counters.gc_triggered += 1
            done["gcCollectedObjects"] = gc.collect()
        if cleanup_sessions:
            done["sessionsCleanedUp"] = self._cleanup_sessions(time.monotonic())
        if optimize_buffers:
            self._release_memory()
            await asyncio.sleep(max(0.3, 2 * self.config.workers.heartbeat_interval))
        await self._measure_memory()
        done["memoryBeforeMB"] = round(before, 1)
        done["memoryAfterMB"] = round(self.memory_mb, 1)
        done["freedMB"] = round(max(0.0, before - self.memory_mb), 1)
        return done

    # ================================================================== status

    @property
    def health(self) -> Health:
        if self.state == DaemonState.RUNNING and not any(
                w.ready for w in self._workers.values()):
            return Health.FAILED
        return self.monitor.health

    def on_health_change(self, listener: Callable[[Health], None]) -> None:
        self._health_listeners.append(listener)

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

    def frames_in_queue(self) -> int:
        return sum(s.queued_windows for s in self._sessions.values())

    def average_frame_time(self) -> float:
        recent = list(self.frame_times_ms)[-500:]
        return float(np.mean(recent)) if recent else 0.0

    def error_rate(self, now: float, window_s: float = 60.0) -> float:
        recent = [ok for t, ok in self._outcomes if now - t <= window_s]
        return (recent.count(False) / len(recent)) if recent else 0.0

    def throughput(self, now: float, window_s: float = 5.0) -> float:
        n = sum(k for t, k in self._analysed_at if now - t <= window_s)
        return n / window_s

    def session_status(self, session_id: str) -> dict[str, Any]:
        return self._session_status(self._get(session_id), time.monotonic())

    def _session_status(self, s: LiveSession, now: float) -> dict[str, Any]:
        out = s.status(now)
        out["lagMs"] = round(self._session_lag_ms(s, now), 1)  # VAD and job queue lag
        out["config"] = {"beamSize": s.core.config.stt.beam_size,
                         "partials": s.core.config.stt.partials}
        return out

    def status(self) -> dict[str, Any]:
        """The spec's status shape plus per-worker and per-session detail."""
        now = time.monotonic()
        c = self.counters
        limit = self.config.limits.maxMemoryUsageMB
        workers = []
        for w in sorted(self._workers.values(), key=lambda w: w.worker_id):
            workers.append({
                "id": w.worker_id, "pid": w.pid, "core": w.core,
                "state": "ready" if w.ready else ("exited" if w.exited else "starting"),
                "uptimeS": round(now - w.started, 1),
                "modelLoadMs": round(w.load_ms, 1),
                "smartTurnKernels": w.turn_kernels,
                "jobsDone": w.jobs_done, "vadBatches": w.vad_batches,
                "pssMB": round(self.memory_by_pid.get(w.pid, 0.0), 1),
                "lanes": {k: {"busy": ln.request is not None,
                              "lastSeenS": round(now - ln.last_seen, 3)}
                          for k, ln in w.lanes.items()},
            })
        return {
            "state": self.state,
            "uptimeS": round(now - self.started_at, 1) if self.started_at else 0.0,
            "pipelineState": {
                "health": self.health.value,
                "processingLoad": round(self.load, 3),
                "memoryUsage": round(self.memory_mb, 1),
                "sessionsActive": len(self._sessions),
                "framesInQueue": self.frames_in_queue(),
                "backpressureLevel": self.ladder.level.action,
            },
            "performanceMetrics": {
                "averageFrameTime": round(self.average_frame_time(), 3),
                "throughput": round(self.throughput(now), 1),
                "errorRate": round(self.error_rate(now), 4),
                "memoryEfficiency": round(max(0.0, 1.0 - self.memory_mb / limit), 3),
            },
            "resourceOptimization": {
                "gcTriggered": c.gc_triggered,
                "sessionsCleanedUp": c.sessions_cleaned_up,
                "memoryOptimizations": c.memory_optimizations,
                "backpressureEvents": c.backpressure_events,
            },
            "load": {"queue": round(self.load_sample.queue, 3),
                     "lag": round(self.load_sample.lag, 3),
                     "busy": round(self.load_sample.busy, 3)},
            "alerts": [{"name": a.name, "message": a.message, "value": a.value,
                        "threshold": a.threshold} for a in self.monitor.active.values()],
            "alertCounts": dict(self.monitor.counts),
            "counters": dataclasses.asdict(c),
            "workers": workers,
            "sessions": [self._session_status(s, now) for s in self._sessions.values()],
        }


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
