"""Counters, rolling figures and the status dicts the daemon reports.

The dicts built here are a public API: HTTP ``/pipeline/status`` and ``/metrics``, the
monitor and the clients read their keys, so a key is never renamed or dropped.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .live_session import LiveSession

class DaemonState(StrEnum):
    """The daemon's lifecycle; the value is what status and the health endpoints show."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


HISTORY = 10_000
"""Samples kept of each rolling figure."""


@dataclass(slots=True)
class Counters:
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
    final_fallbacks: int = 0
    """Finals whose decode still looped after the guarded re-decode and were decoded again on
    the 30 s window. Each costs 0.3-1.5 s more: a final latency tail is either these or
    queueing, and this count says which."""
    partials_shed: int = 0
    partials_superseded: int = 0
    """Queued partials dropped because their utterance paused: the final waits for them."""
    decode_batches: int = 0
    """Job requests that carried several sessions' partials."""
    batched_partials: int = 0
    """Partials of such requests that shared a model call with another (equal shape)."""
    speculations_skipped: int = 0
    """Speculations (finals, Smart Turn asks) abandoned while still queued (never run)."""
    jobs_discarded: int = 0
    """Jobs whose result was no longer wanted when it came back (abandoned speculations
    that were already running, duplicates of re-run jobs): wasted work."""
    vad_batches: int = 0
    vad_errors: int = 0
    windows_analysed: int = 0
    alerts_raised: int = 0


class Figures:
    """Rolling measurements: frame times, handoffs, outcomes, analysed windows."""

    def __init__(self) -> None:
        self.frame_times_ms: deque[float] = deque(maxlen=HISTORY)
        """Window write -> VAD result applied, ms."""
        self.handoff_ms: deque[float] = deque(maxlen=HISTORY)
        """Window write -> picked up by a worker's VAD lane, ms (wall clocks, same host)."""
        self.outcomes: deque[tuple[float, bool]] = deque(maxlen=HISTORY)
        """(time, succeeded) of every VAD item and job result: the error rate."""
        self.analysed_at: deque[tuple[float, int]] = deque(maxlen=HISTORY)
        """(time, windows) of every VAD item applied: the throughput."""

    def average_frame_time(self) -> float:
        recent = list(self.frame_times_ms)[-500:]
        return float(np.mean(recent)) if recent else 0.0

    def error_rate(self, now: float, window_s: float = 60.0) -> float:
        recent = [ok for t, ok in self.outcomes if now - t <= window_s]
        return (recent.count(False) / len(recent)) if recent else 0.0

    def throughput(self, now: float, window_s: float = 5.0) -> float:
        n = sum(k for t, k in self.analysed_at if now - t <= window_s)
        return n / window_s


@dataclass(frozen=True, slots=True)
class DaemonFigures:
    """The daemon-wide figures of :func:`daemon_status`, gathered by the supervisor."""

    state: str
    uptime_s: float
    health: str
    load: float
    queue: float
    lag: float
    busy: float
    memory_mb: float
    memory_limit_mb: float
    sessions_active: int
    frames_in_queue: int
    backpressure_level: str
    average_frame_time: float
    throughput: float
    error_rate: float


def daemon_status(f: DaemonFigures, counters: Counters, *, alerts: list[dict[str, Any]],
                  alert_counts: dict[str, int], workers: list[dict[str, Any]],
                  sessions: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The spec's status shape plus per-worker and per-session detail."""
    c = counters
    return {
        "state": f.state,
        "uptimeS": round(f.uptime_s, 1),
        "pipelineState": {
            "health": f.health,
            "processingLoad": round(f.load, 3),
            "memoryUsage": round(f.memory_mb, 1),
            "sessionsActive": f.sessions_active,
            "framesInQueue": f.frames_in_queue,
            "backpressureLevel": f.backpressure_level,
        },
        "performanceMetrics": {
            "averageFrameTime": round(f.average_frame_time, 3),
            "throughput": round(f.throughput, 1),
            "errorRate": round(f.error_rate, 4),
            "memoryEfficiency": round(max(0.0, 1.0 - f.memory_mb / f.memory_limit_mb), 3),
        },
        "resourceOptimization": {
            "gcTriggered": c.gc_triggered,
            "sessionsCleanedUp": c.sessions_cleaned_up,
            "memoryOptimizations": c.memory_optimizations,
            "backpressureEvents": c.backpressure_events,
        },
        "load": {"queue": round(f.queue, 3), "lag": round(f.lag, 3), "busy": round(f.busy, 3)},
        "alerts": alerts,
        "alertCounts": alert_counts,
        "counters": dataclasses.asdict(c),
        "workers": workers,
        "sessions": list(sessions),
    }


def session_status(s: LiveSession, now: float, lag_ms: float) -> dict[str, Any]:
    """One session's status: its own record plus its lag (VAD and owed jobs) and config."""
    out = s.status(now)
    out["lagMs"] = round(lag_ms, 1)
    out["config"] = {"beamSize": s.core.config.stt.beam_size,
                     "partials": s.core.config.stt.partials}
    return out
