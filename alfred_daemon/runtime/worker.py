"""The worker process: one per core, two lanes, models loaded once.

A worker is a fresh interpreter (``python -m alfred_daemon.runtime.worker``, started by the
supervisor with fork+exec): it inherits no threads, sockets or ONNX Runtime pools from a
parent that has them, and -- unlike multiprocessing's ``spawn`` -- it does not re-import the
embedding application's ``__main__``. Its :class:`WorkerSpec` arrives pickled on stdin.
In order:

1. pin itself to its core with ``sched_setaffinity`` -- *before* any ONNX Runtime or
   CTranslate2 session exists, because their thread pools take their CPU set at creation;
2. start the death watch: a thread blocked on the read end of a pipe whose write end only
   the supervisor holds. When the supervisor dies -- even by SIGKILL -- the kernel closes
   it, the read returns EOF and the worker exits at once: no orphans;
3. load the three models (each with ``model_threads`` threads, no spinning);
4. run two lanes, each a thread with its own DEALER socket (see :mod:`.protocol`):

   * the **VAD lane** runs batched Silero over ring windows. It is separate so that a
     100 ms Whisper decode never delays a 0.1 ms VAD window: both lanes share the core,
     and the kernel wakes the short one as soon as its request arrives (ONNX Runtime and
     CTranslate2 release the GIL while computing);
   * the **job lane** runs Whisper decodes and Smart Turn evaluations.

Each lane heartbeats from its own loop, between requests, so a lane stuck inside a model
call falls silent and the supervisor replaces the whole worker. The VAD lane also beats
between the steps of a batch (each one ONNX call of milliseconds): a batch behind a long
backlog on a starved CPU is slow, not stuck. A decode is one call that cannot report; the
supervisor gives it ``processor.processing_timeout``.

What is shared with other processes: the rings (shared memory, read-only here except the
VAD read index) and the model *files* (page cache). The weights themselves are private:
ONNX Runtime and CTranslate2 copy and re-layout them into their own heap (int8 packing),
so each worker carries its own ~150 MB; ``benchmarks/runtime_bench.py`` measures PSS.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import zmq

from ..engine.config import SttConfig
from ..engine.jobs import Job, JobKind, JobResult, Models, run_jobs
from ..engine.models import ModelPaths
from .memory import malloc_trim
from .protocol import (
    ControlState,
    Heartbeat,
    Hello,
    JobReply,
    JobRequest,
    Message,
    Stop,
    VadItemResult,
    VadRequest,
    VadResult,
    dumps,
    lane_identity,
    loads,
)
from .ring import RingError, RingHandle, RingReader

log = logging.getLogger(__name__)

VAD_READER = 0
"""Ring reader index consumed by VAD (the supervisor keeps index 1 for retention)."""

JOB_LANE_NICE = 5
"""Decode threads yield to the VAD lane (weight 335 against 1024) but are not starved by
other work on the core: see :func:`_deprioritise`."""
EXIT_PARENT_GONE = 70
EXIT_LOAD_FAILED = 71


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """Everything a worker needs, picklable (it crosses the spawn boundary)."""

    worker_id: int
    core: int | None
    models: ModelPaths
    work_endpoint: str
    state_endpoint: str
    model_threads: int = 1
    heartbeat_interval: float = 0.5
    job_cost_multiplier: float = 1.0
    vad_cost_ms_per_window: float = 0.0
    batch_processing: bool = True
    log_level: int = logging.INFO
    incarnation: int = 0


THREAD_ENV = {
    # numpy's OpenBLAS and any OpenMP runtime would otherwise start a thread per core in
    # every worker; the supervisor sets these before spawning so they apply at import.
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "ORT_DISABLE_TELEMETRY": "1",
    # glibc gives each thread that allocates its own malloc arena (lanes, ZeroMQ, model
    # pools), and memory freed into one is not reused by another: two arenas took ~15 MB
    # off the daemon's peak PSS at no measured cost in decode time (benchmarks/README.md).
    "MALLOC_ARENA_MAX": "2",
}


def worker_main(spec: WorkerSpec, death_fd: int) -> None:
    """Entry point of a worker process."""
    logging.basicConfig(
        level=spec.log_level, stream=sys.stderr,
        format=f"%(asctime)s worker-{spec.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    # Ctrl-C in a terminal reaches the whole process group; shutdown is the supervisor's
    # decision, it will send Stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.core is not None:
        os.sched_setaffinity(0, {spec.core})
    # The job lane runs Python between its model calls (features, tokens, text); by default
    # a thread waiting for the GIL gets it only after 5 ms, which would make a 0.1 ms VAD
    # request wait behind a decode. 0.5 ms bounds that wait at a negligible switching cost.
    sys.setswitchinterval(0.0005)
    threading.Thread(target=_watch_parent, args=(death_fd,), name="death-watch",
                     daemon=True).start()
    t0 = time.perf_counter()
    threads_before = _thread_ids()
    try:
        models = Models.load(spec.models, threads=spec.model_threads)
    except Exception as exc:
        # One line: the cause is a model file or the install, named by the message, not a
        # fault in this code that a traceback would locate; three of these trip the brake.
        log.error("worker %d could not load its models: %s: %s", spec.worker_id,
                  type(exc).__name__, str(exc).replace("\n", " "))
        os._exit(EXIT_LOAD_FAILED)
    load_ms = (time.perf_counter() - t0) * 1000.0
    # CTranslate2 computes on threads of its own (created by the model load), not on the
    # job lane's thread: they get the job lane's lower priority too.
    for tid in _thread_ids() - threads_before:
        _deprioritise(tid)
    # Everything allocated so far (models, tokenizer, imported modules) lives as long as the
    # process. Freezing it keeps the cyclic GC from walking it on every full collection --
    # a full collection otherwise holds the GIL for milliseconds, stalling the VAD lane.
    gc.collect()
    gc.freeze()
    ctx = zmq.Context(io_threads=1)
    turn_kernels = models.turn.kernels.value if models.turn is not None else ""
    log.info("worker %d: models loaded in %.0f ms (Smart Turn int8 kernels: %s)",
             spec.worker_id, load_ms, turn_kernels or "no model")
    vad_lane = _Lane(ctx, spec, "vad", load_ms, _VadWork(models, spec),
                     turn_kernels=turn_kernels)
    job_lane = _Lane(ctx, spec, "job", load_ms, _JobWork(models, spec),
                     turn_kernels=turn_kernels)
    vad_thread = threading.Thread(target=vad_lane.loop, name="vad-lane", daemon=True)
    vad_thread.start()
    job_lane.loop()
    vad_thread.join(timeout=2.0)
    ctx.destroy(linger=0)


def _deprioritise(tid: int) -> None:
    """Make a decode thread yield its core to latency work.

    Both lanes of a worker share one core. A decode is throughput work; a VAD request is
    latency work (every 32 ms window of every session waits for it), so decode threads
    run niced. Not SCHED_IDLE, although it hands the core to a waking VAD lane sooner: a
    SCHED_IDLE thread gets ~0.3 % of a core that any other process keeps busy, so on a
    shared host (or beside the test runner) decodes on that core stalled until the hang
    detector killed the worker, again and again. Niced, a decode on a contended core
    runs ~4x slower instead, and the scheduler's load figure sees it. Lowering a thread's
    own priority needs no privilege.
    """
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, JOB_LANE_NICE)


def _thread_ids() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def _watch_parent(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 64):  # only EOF (every write end closed) ends this
            pass
    # The supervisor is gone (or told us to go by closing the pipe): nobody will read our
    # results and nobody owns the rings any more. Exit without cleanup handlers.
    os._exit(EXIT_PARENT_GONE)


class _RingCache:
    """Attached rings of live sessions, dropped when the session is gone.

    Attaching costs a shm_open+mmap; a VAD batch every 32 ms must not pay it per session.
    The supervisor's periodic ControlState lists the live rings, so a mapping of a closed
    session is released within a heartbeat even if no request mentions it again.
    """

    def __init__(self, reader: int | None) -> None:
        self._reader = reader
        self._rings: dict[str, RingReader] = {}

    def get(self, handle: RingHandle) -> RingReader:
        ring = self._rings.get(handle.name)
        if ring is None:
            ring = RingReader.attach(handle, self._reader)
            self._rings[handle.name] = ring
        return ring

    def keep_only(self, live: frozenset[str]) -> None:
        for name in [n for n in self._rings if n not in live]:
            self._rings.pop(name).close()

    def close(self) -> None:
        self.keep_only(frozenset())


class _VadWork:
    def __init__(self, models: Models, spec: WorkerSpec) -> None:
        self.models = models
        self.spec = spec
        self.rings = _RingCache(VAD_READER)

    def run(self, msg: Message, level: int, beat: Callable[[], None]) -> Message | None:
        if not isinstance(msg, VadRequest):
            return None
        picked_up = time.time()
        t0 = time.perf_counter()
        results: list[VadItemResult] = []
        batch: list[tuple[int, np.ndarray, VadItemResult]] = []
        for item in msg.items:
            try:
                ring = self.rings.get(item.ring)
                at = ring.read_seq(VAD_READER)
                if at != item.first:
                    raise RingError(f"VAD read index is {at}, request starts at {item.first}")
                _, windows = ring.next_windows(item.count)
                if windows.shape[0] != item.count:
                    raise RingError(f"only {windows.shape[0]} of {item.count} windows written")
            except (RingError, ValueError, OSError) as exc:
                results.append(VadItemResult(item.session_key, item.first,
                                             np.zeros(0, np.float32), item.state,
                                             error=f"{type(exc).__name__}: {exc}"))
                continue
            res = VadItemResult(item.session_key, item.first,
                                np.zeros(item.count, np.float32), item.state)
            batch.append((item.count, windows.astype(np.float32) / np.float32(32768.0), res))
            results.append(res)
        self._run_batched(batch, beat)
        ms = (time.perf_counter() - t0) * 1000.0
        n_windows = sum(c for c, _, _ in batch)
        _stretch(ms, self.spec.job_cost_multiplier, self.spec.vad_cost_ms_per_window * n_windows,
                 beat)
        return VadResult(msg.request_id, tuple(results), ms, picked_up)

    def _run_batched(self, batch: list[tuple[int, np.ndarray, VadItemResult]],
                     beat: Callable[[], None]) -> None:
        """Step t evaluates window t of every session that has one, in one ONNX call
        (or one call per session with ``batch_processing`` off). A batch behind a long
        backlog can take seconds on a starved CPU, so each step reports progress: the
        supervisor judges a VAD lane hung by its silence, and a step is milliseconds."""
        vad = self.models.vad
        longest = max((c for c, _, _ in batch), default=0)
        for t in range(longest):
            beat()
            active = [(w, r) for c, w, r in batch if c > t]
            if self.spec.batch_processing:
                probs = vad.batch([r.state for _, r in active],
                                  np.stack([w[t] for w, _ in active]))
                for (_, r), p in zip(active, probs, strict=True):
                    r.probs[t] = p
            else:
                for w, r in active:
                    r.probs[t] = vad.prob(r.state, np.ascontiguousarray(w[t]))


class _JobWork:
    def __init__(self, models: Models, spec: WorkerSpec) -> None:
        self.models = models
        self.spec = spec
        self.rings = _RingCache(None)

    def run(self, msg: Message, level: int, beat: Callable[[], None]) -> Message | None:
        """A decode is one model call that cannot report progress (``beat`` is unused):
        the supervisor gives a busy job lane ``processing_timeout`` instead."""
        if not isinstance(msg, JobRequest):
            return None
        t0 = time.perf_counter()
        results: dict[int, JobResult] = {}
        runnable: list[tuple[int, Job, npt.NDArray[np.float32], SttConfig]] = []
        for i, item in enumerate(msg.items):
            job = item.job
            if level >= 1 and job.kind is JobKind.PARTIAL and job.beam_size > 1:
                # The supervisor already degrades sessions' configs; this also covers
                # partials issued just before the level changed.
                job = dataclasses.replace(job, beam_size=1)
            try:
                pcm = self.rings.get(item.ring).read_range(job.start, job.end)
            except (RingError, ValueError, OSError) as exc:
                results[i] = JobResult(item.job, error=f"audio unavailable: "
                                       f"{type(exc).__name__}: {exc}")
            else:
                runnable.append((i, job, pcm.astype(np.float32) / np.float32(32768.0),
                                 item.stt))
        done = run_jobs(self.models, [(job, audio, cfg) for _, job, audio, cfg in runnable])
        for (i, _, _, _), result in zip(runnable, done, strict=True):
            results[i] = dataclasses.replace(result, job=msg.items[i].job)
        _stretch((time.perf_counter() - t0) * 1000.0, self.spec.job_cost_multiplier, 0.0)
        return JobReply(msg.request_id, tuple((item.session_key, results[i])
                                              for i, item in enumerate(msg.items)))


def _stretch(ms: float, multiplier: float, extra_ms: float,
             beat: Callable[[], None] | None = None) -> None:
    """Test knob: make work look ``multiplier`` times as expensive (plus ``extra_ms``),
    reporting progress through ``beat`` as the real work it stands for would."""
    delay = ms * (multiplier - 1.0) + extra_ms
    end = time.monotonic() + delay / 1000.0
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.1) if beat is not None else left)
        if beat is not None:
            beat()


class _Lane:
    """One request at a time: receive, run, reply; heartbeat and follow state when idle."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], spec: WorkerSpec, name: str,
                 load_ms: float, work: _VadWork | _JobWork, *, turn_kernels: str) -> None:
        self.ctx = ctx
        self.spec = spec
        self.name = name
        self.load_ms = load_ms
        self.turn_kernels = turn_kernels
        self.work = work
        self.level = 0
        self.trim_generation = 0
        self._dealer: zmq.Socket[bytes] | None = None
        self._last_sent = time.monotonic()

    def beat(self) -> None:
        """Heartbeat if one is due; called between requests and, by VAD work, between
        steps of one (same thread as every other send on the dealer)."""
        if self._dealer is not None and \
                time.monotonic() - self._last_sent >= self.spec.heartbeat_interval:
            self._dealer.send(dumps(Heartbeat(self.spec.worker_id, self.name)))
            self._last_sent = time.monotonic()

    def loop(self) -> None:
        spec = self.spec
        if self.name == "job":
            _deprioritise(threading.get_native_id())
        dealer = self.ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.IDENTITY, lane_identity(spec.worker_id, spec.incarnation, self.name))
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(spec.work_endpoint)
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.setsockopt(zmq.LINGER, 0)
        sub.connect(spec.state_endpoint)
        poller = zmq.Poller()
        poller.register(dealer, zmq.POLLIN)
        poller.register(sub, zmq.POLLIN)
        dealer.send(dumps(Hello(spec.worker_id, self.name, os.getpid(), spec.core,
                                self.load_ms, self.turn_kernels)))
        interval_ms = int(spec.heartbeat_interval * 1000)
        self._dealer = dealer
        self._last_sent = time.monotonic()
        try:
            while True:
                ready = dict(poller.poll(interval_ms))
                if sub in ready:
                    self._follow_state(sub)
                if dealer in ready:
                    msg = loads(dealer.recv())
                    if isinstance(msg, Stop):
                        return
                    reply = self.work.run(msg, self.level, self.beat)
                    if reply is not None:
                        dealer.send(dumps(reply))
                        self._last_sent = time.monotonic()
                    if self.name == "job":
                        # A decode frees its buffers into malloc's arenas, which keep them
                        # resident: measured here, a worker's PSS peaks at ~245 MB without
                        # this and ~142 MB with it, for ~2 ms per job (after the reply, so
                        # the result is not delayed).
                        malloc_trim()
                self.beat()
        finally:
            self._dealer = None
            self.work.rings.close()
            dealer.close(linger=0)
            sub.close(linger=0)

    def _follow_state(self, sub: zmq.Socket[bytes]) -> None:
        state: ControlState | None = None
        while True:  # only the newest state matters
            try:
                msg = loads(sub.recv(zmq.NOBLOCK))
            except zmq.Again:
                break
            if isinstance(msg, ControlState):
                state = msg
        if state is None:
            return
        self.level = state.level
        self.work.rings.keep_only(state.live_rings)
        if state.trim_generation != self.trim_generation:
            self.trim_generation = state.trim_generation
            gc.collect()
            malloc_trim()


def main() -> None:
    """``python -m alfred_daemon.runtime.worker DEATH_FD`` with the pickled spec on stdin."""
    death_fd = int(sys.argv[1])
    spec = pickle.loads(sys.stdin.buffer.read())  # from our own supervisor, see protocol
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("worker: stdin did not carry a WorkerSpec")
    worker_main(spec, death_fd)


if __name__ == "__main__":
    # Run through the package module, not this ``__main__`` copy: the pickled spec names
    # ``alfred_daemon.runtime.worker.WorkerSpec``.
    from alfred_daemon.runtime.worker import main as package_main

    package_main()
