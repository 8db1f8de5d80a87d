"""Messages of the ZeroMQ control plane, and the socket layout.

Sockets (all ``ipc://`` in the private runtime directory, see :mod:`.rundir`)
----------------------------------------------------------------------------

``work`` -- supervisor ROUTER (bind) <-> one DEALER per worker *lane* (connect).
    Every worker runs two lanes, each a thread with its own DEALER and identity
    ``w<id>.<incarnation>-vad`` / ``-job``: the VAD lane runs batched Silero over ring windows,
    the job lane runs Whisper and Smart Turn. The supervisor sends a lane at most one request at
    a time (a lane is either idle or owns exactly one request), so it always knows what is in
    flight where -- which is what lets it re-run a dead worker's work exactly once -- and no
    queue ever builds up inside ZeroMQ: the HWM (1000) is never approached. Scheduling
    (priorities, batching, which lane) is therefore entirely the supervisor's, in one place.
    Lanes answer with results and heartbeats (when idle, and a VAD lane also between the
    steps of a batch). ROUTER is set to ``ROUTER_MANDATORY`` so a send to a lane that
    vanished raises instead of dropping silently; sends are non-blocking (the supervisor's
    event loop never blocks on a worker).

``state`` -- supervisor PUB (bind) -> every lane SUB (connect).
    The supervisor re-publishes its whole control state (backpressure level, live ring
    names, a trim request counter) every second and on every change. PUB drops at the HWM and a
    slow-joining subscriber misses early messages, so nothing here is a one-off event: a
    lane that missed a message catches up with the next one. Lanes use it to drop cached
    ring mappings of closed sessions and to cap partial beams at the current level.

Audio never crosses these sockets: requests name a ring and a window or sample range.
Messages are pickled dataclasses. Pickle executes code on load, which is acceptable only
because both ends are this daemon and the sockets live in a 0700 directory of its user.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..engine.config import SttConfig
from ..engine.jobs import Job, JobResult
from ..engine.vad import VadState
from .ring import RingHandle

WORK_ENDPOINT = "work"
STATE_ENDPOINT = "state"
HWM = 1000


def lane_identity(worker_id: int, incarnation: int, lane: str) -> bytes:
    """Unique per process incarnation: a respawned worker must not inherit its
    predecessor's ROUTER routing entry (ROUTER refuses a duplicate identity)."""
    return f"w{worker_id}.{incarnation}-{lane}".encode()


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class VadItem:
    """Windows ``[first, first + count)`` of one session, with the session's VAD state as it
    was before ``first``. Shipping the ~1.3 KB state with the request is what makes VAD
    *not* session-affine: any idle lane can take any session, and a dead worker loses
    nothing (the supervisor still holds the state it sent)."""

    session_key: int
    ring: RingHandle
    first: int
    count: int
    state: VadState


@dataclass(frozen=True, slots=True)
class VadRequest:
    request_id: int
    items: tuple[VadItem, ...]


@dataclass(frozen=True, slots=True)
class JobItem:
    """One STT or Smart Turn job over ``job.start .. job.end`` of a session's ring."""

    session_key: int
    ring: RingHandle
    job: Job
    stt: SttConfig


@dataclass(frozen=True, slots=True)
class JobRequest:
    """Work for a job lane: one job, or several sessions' partials, which the worker
    decodes in shared Whisper batches (same results as one by one, ~2/3 of the cost)."""

    request_id: int
    items: tuple[JobItem, ...]


@dataclass(frozen=True, slots=True)
class Stop:
    """Finish nothing further; exit cleanly."""


# ----------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Hello:
    """First message of a lane: it has loaded its models and is ready."""

    worker_id: int
    lane: str
    pid: int
    core: int | None
    load_ms: float
    turn_kernels: str
    """Smart Turn's int8 kernels as chosen on this CPU (``fused``/``unfused``; empty
    without the model)."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """An idle lane (or a VAD lane between the steps of a batch) is alive."""

    worker_id: int
    lane: str


@dataclass(frozen=True, slots=True)
class VadItemResult:
    session_key: int
    first: int
    probs: npt.NDArray[np.float32]
    state: VadState
    error: str | None = None


@dataclass(frozen=True, slots=True)
class VadResult:
    request_id: int
    items: tuple[VadItemResult, ...]
    ms: float
    """Model time of the whole batch."""
    picked_up: float
    """``time.time()`` when the lane had the request decoded (the end of the handoff)."""


@dataclass(frozen=True, slots=True)
class JobReply:
    request_id: int
    results: tuple[tuple[int, JobResult], ...]
    """(session key, result) for each item of the request, in its order."""


# ----------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class ControlState:
    """Re-published periodically on the ``state`` channel (see module docstring)."""

    seq: int
    level: int
    live_rings: frozenset[str] = field(default_factory=frozenset)
    trim_generation: int = 0
    """Bumped by optimize(): lanes collect garbage and return freed heap to the OS."""


Message = (
    VadRequest | JobRequest | Stop | Hello | Heartbeat | VadResult | JobReply | ControlState
)


def dumps(msg: Message) -> bytes:
    return pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)


def loads(data: bytes) -> Message:
    msg: Message = pickle.loads(data)  # trusted peer: see the module docstring
    return msg
