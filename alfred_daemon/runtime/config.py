"""Runtime configuration: processes, queues, limits and housekeeping.

Section and knob names follow the product spec (``processor``, ``coordination``, ``limits``,
``alerts``) because operators of the earlier version configure them by those names; the ops
layer maps its TOML file onto these dataclasses. Validation happens on construction and the
message names the key and the allowed range.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..engine.config import EngineConfig, check_range
from ..engine.errors import ConfigError
from ..engine.models import ModelsConfig
from .backpressure import BackpressureConfig
from .health import AlertThresholds

DAEMON_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,63}")
"""What ``daemon_id`` may be: no '.', which separates it from the rest of a resume token."""


def usable_cores() -> list[int]:
    """CPUs this process may run on (cgroup/affinity aware, unlike ``os.cpu_count``)."""
    return sorted(os.sched_getaffinity(0))


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    batch_processing: bool = True
    """Run the VAD of many sessions in one ONNX call, and decode several sessions' waiting
    partials in shared Whisper calls (``False``: one session per call)."""
    max_batch_size: int = 32
    """Most sessions in one VAD batch."""
    max_decode_batch: int = 1
    """Most partials (of different sessions) in one job request. A batch of 2 costs ~2/3 of
    two separate decodes, but it holds its lane until the slowest is done, and a final or
    turn decision due meanwhile waits for all of them: six realistic sessions on two cores
    had a p95 partial lag of 517 ms with batches of up to 4 against 358 ms without, and no
    better finals (benchmarks/README.md). So off by default; raise it where cores are many
    and partials few."""
    processing_timeout: float = 10.0
    """Seconds a worker may spend on one job before it is considered hung and replaced."""
    max_concurrent_sessions: int = 32
    frame_queue_size: int = 100
    """Windows (32 ms each) a session may have waiting for VAD. Beyond it, at the
    ``drop_frames`` rung, the oldest are skipped (reported); at other rungs the session's
    ring holds them until it is full."""
    reserved_job_lanes: int = 1
    """Job lanes partials may not occupy while a final or turn decision is imminent (some
    session's speech paused): they stay free for it, so it does not wait behind a partial.
    Capped at the number of job lanes minus one; 0 lets partials take every lane."""
    reserve_patience_ms: float = 100.0
    """A partial that has waited this long may take a reserved lane after all: at light
    load the reservation costs nothing, under load an idle held lane is capacity partials
    need (at 16 sessions it left one worker half idle). Speculated finals and turn asks
    take a reserved lane at once: they are what it is kept for."""
    memory_optimization: bool = True
    """Trim buffers and return freed heap to the OS when ``limits.gcTriggerThreshold`` is
    crossed, not only on an explicit optimize."""

    def __post_init__(self) -> None:
        check_range("processor.max_batch_size", self.max_batch_size, 1, 256)
        check_range("processor.max_decode_batch", self.max_decode_batch, 1, 32)
        check_range("processor.processing_timeout", self.processing_timeout, 0.5, 600)
        check_range("processor.max_concurrent_sessions", self.max_concurrent_sessions, 1, 10_000)
        check_range("processor.frame_queue_size", self.frame_queue_size, 4, 10_000)
        check_range("processor.reserved_job_lanes", self.reserved_job_lanes, 0, 256)
        check_range("processor.reserve_patience_ms", self.reserve_patience_ms, 0, 60_000)


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    maxMemoryUsageMB: int = 1024  # noqa: N815 -- spec name
    """Daemon PSS (supervisor + workers) above which new sessions are refused."""
    targetFrameProcessingTime: float = 20.0  # noqa: N815 -- spec name
    """Milliseconds; the frame-time alert and the load figure use it."""
    maxSessionDuration: float = 4 * 3600.0  # noqa: N815 -- spec name
    """Seconds; a session older than this is closed with reason ``max_duration``."""
    cleanupInterval: float = 30.0  # noqa: N815 -- spec name
    """Seconds between housekeeping passes (idle sessions, memory)."""
    gcTriggerThreshold: float = 0.8  # noqa: N815 -- spec name
    """Fraction of maxMemoryUsageMB at which housekeeping collects garbage and trims."""
    idleSessionTimeout: float = 120.0  # noqa: N815 -- spec-style name
    """Seconds without a frame or control message after which a session is closed."""
    firstAudioTimeout: float = 5.0  # noqa: N815 -- spec-style name
    """Seconds after opening by which a session must have sent 1 s of audio, or it is
    closed as idle: a slot is for a stream, not for a session opened and left."""

    realtimeTolerance: float = 2.0  # noqa: N815 -- spec-style name
    """Seconds of audio a session may send beyond real time (jitter, a reconnect's resent
    audio) before its work is served only from spare capacity (runtime/fairness.py)."""
    backlogTimeout: float = 10.0  # noqa: N815 -- spec-style name
    """Seconds a frame may wait for room in its session's ring (audio a final still needs)
    before the stream is cut with RESOURCE_EXHAUSTED; meanwhile the client is throttled."""

    def __post_init__(self) -> None:
        check_range("limits.maxMemoryUsageMB", self.maxMemoryUsageMB, 64, 1_000_000)
        check_range("limits.targetFrameProcessingTime", self.targetFrameProcessingTime, 0.1, 1000)
        check_range("limits.maxSessionDuration", self.maxSessionDuration, 1, 30 * 86400)
        check_range("limits.cleanupInterval", self.cleanupInterval, 0.1, 86400)
        check_range("limits.gcTriggerThreshold", self.gcTriggerThreshold, 0.1, 1.0)
        check_range("limits.idleSessionTimeout", self.idleSessionTimeout, 1, 86400)
        check_range("limits.firstAudioTimeout", self.firstAudioTimeout, 1, 86400)
        check_range("limits.realtimeTolerance", self.realtimeTolerance, 0, 3600)
        check_range("limits.backlogTimeout", self.backlogTimeout, 0.1, 3600)


@dataclass(frozen=True, slots=True)
class WorkersConfig:
    count: int = 0
    """Worker processes; 0 = one per usable core."""
    model_threads: int = 1
    """ONNX Runtime / CTranslate2 threads per worker."""
    pin: bool = True
    """Pin worker i to the i-th usable core (before any model session is created)."""
    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 5.0
    """A lane silent this long is hung: a VAD lane busy or idle (it reports between the
    steps of a batch), a job lane when idle (a decode gets processing_timeout)."""
    start_timeout: float = 30.0
    """Seconds a new worker may take to load its models and say hello."""
    max_restarts_per_minute: int = 20
    """Crash-loop brake: beyond this the daemon stops respawning and reports failed."""

    def __post_init__(self) -> None:
        check_range("workers.count", self.count, 0, 256)
        check_range("workers.model_threads", self.model_threads, 1, 64)
        check_range("workers.heartbeat_interval", self.heartbeat_interval, 0.05, 10)
        check_range("workers.heartbeat_timeout", self.heartbeat_timeout,
               2 * self.heartbeat_interval, 600)
        check_range("workers.start_timeout", self.start_timeout, 1, 600)
        check_range("workers.max_restarts_per_minute", self.max_restarts_per_minute, 1, 10_000)

    def resolved_count(self) -> int:
        return self.count or len(usable_cores())


def _default_runtime_dir() -> str:
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return str(Path(base) / f"alfred-daemon-{os.getuid()}")


@dataclass(frozen=True, slots=True)
class RuntimeConfig:
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    coordination: BackpressureConfig = field(default_factory=BackpressureConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    alerts: AlertThresholds = field(default_factory=AlertThresholds)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    """Default per-session behaviour; a session may override it when opened."""
    runtime_dir: str = field(default_factory=_default_runtime_dir)
    """ZeroMQ ipc sockets and the instance lock (0700)."""
    shm_prefix: str = "alfred"
    """Prefix of the shared-memory segment names (``/dev/shm/<prefix>-<pid>-<session>``)."""
    ring_seconds: float = 40.0
    """Audio each session's ring holds: the longest utterance Whisper may need (25 s) plus
    pre-roll, the VAD queue and slack."""
    max_lag_ms: float = 1000.0
    """Lag behind real time that counts as full load (1.0) in the backpressure figure."""
    health_event_interval: float = 1.0
    """Seconds between PipelineHealth events to each session."""
    drain_grace: float = 10.0
    """Seconds SIGTERM waits for open utterances' finals before stopping workers."""
    job_cost_multiplier: float = 1.0
    """Test knob: workers stretch every job to this multiple of its real cost (sleeping),
    to simulate a slower machine. Never set it in production."""
    vad_cost_ms_per_window: float = 0.0
    """Test knob: extra milliseconds of VAD lane time per window (a slower CPU)."""
    daemon_id: str = ""
    """This daemon's name among several behind a load balancer (e.g. the pod name). When
    set, resume tokens start with ``<daemon_id>.``, gRPC streams and HTTP responses carry
    ``alfred-daemon-id`` so the balancer can route a resume back here, and the agent check
    names it; empty (one daemon) leaves tokens as they were."""

    def __post_init__(self) -> None:
        check_range("ring_seconds", self.ring_seconds, 30, 600)
        check_range("max_lag_ms", self.max_lag_ms, 50, 60_000)
        check_range("health_event_interval", self.health_event_interval, 0.1, 3600)
        check_range("drain_grace", self.drain_grace, 0, 600)
        check_range("job_cost_multiplier", self.job_cost_multiplier, 1.0, 100.0)
        check_range("vad_cost_ms_per_window", self.vad_cost_ms_per_window, 0.0, 1000.0)
        if self.daemon_id and not DAEMON_ID_RE.fullmatch(self.daemon_id):
            raise ConfigError(f"daemon_id = {self.daemon_id[:80]!r} must be 1-63 letters, "
                              "digits, '-' or '_' (it goes into tokens and HTTP headers)")
        if not self.shm_prefix.replace("_", "").isalnum():
            raise ConfigError(f"shm_prefix = {self.shm_prefix!r} must be alphanumeric")
