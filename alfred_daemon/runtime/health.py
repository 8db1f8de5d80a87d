"""Pipeline health: one coarse state for clients and operators, plus threshold alerts.

Clients need one word to decide whether to trust the daemon's timing (``healthy`` ..
``failed``); operators need to know *which* limit was crossed and when. The monitor turns a
periodic snapshot of the pipeline's figures into both, and reports alerts as edges (raised,
cleared) so a sustained problem is logged once rather than on every evaluation.

Alerts have no hysteresis of their own: the figures that matter for degradation already go
through the backpressure ladder's, and an alert flapping is visible, not harmful.

Pure: time is passed in (``now``, monotonic seconds) and the only side effect is logging.
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass

from ..engine.errors import ConfigError
from .backpressure import Level

log = logging.getLogger(__name__)


class Health(enum.StrEnum):
    """Coarse pipeline state, worst first in severity: failed > overloaded > stressed."""

    HEALTHY = "healthy"
    STRESSED = "stressed"
    OVERLOADED = "overloaded"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class AlertThresholds:
    """The ``alerts`` section: an alert is raised when its figure is strictly above these."""

    frame_time_ms: float = 20.0
    """Average time from a window entering its ring to its VAD result being applied, ms."""
    memory_mb: float = 300.0
    """PSS of the largest daemon process, in MB. (The spec set 300 MB for a single-process
    daemon; with one worker per core the whole tree is several times that and is held to
    ``limits.maxMemoryUsageMB`` instead.)"""
    load: float = 0.8
    """The backpressure load figure (1.0 = at capacity)."""
    error_rate: float = 0.05
    """Failed jobs / jobs in the recent window; a fraction, so at most 1."""
    queue_frames: int = 100
    """Windows waiting for VAD, summed over sessions."""

    def __post_init__(self) -> None:
        for key, value in (
            ("frame_time_ms", self.frame_time_ms),
            ("memory_mb", self.memory_mb),
            ("load", self.load),
            ("error_rate", self.error_rate),
            ("queue_frames", self.queue_frames),
        ):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"alerts.{key} = {value!r} must be a number above 0")
        if self.error_rate > 1:
            raise ConfigError(
                f"alerts.error_rate = {self.error_rate!r} is out of range; it is a fraction "
                "of jobs, allowed above 0 .. 1"
            )


@dataclass(frozen=True, slots=True)
class HealthInputs:
    """A snapshot of the pipeline's figures, taken by the runtime once per health period."""

    frame_time_ms: float
    """Average window time (ring write to VAD result applied) in the recent period, ms."""
    memory_mb: float
    """PSS of the largest daemon process."""
    load: float
    """The backpressure load figure."""
    error_rate: float
    """Failed jobs / jobs in the recent window."""
    queue_frames: int
    workers_alive: int
    workers_expected: int
    level: Level
    """The backpressure ladder's current level."""


ALERT_NAMES: tuple[str, ...] = ("frame_time", "memory", "load", "error_rate", "queue")
"""Every alert the monitor knows, in evaluation (and report) order."""


_FORMATS: dict[str, tuple[str, float, int, str]] = {
    # name: (subject, scale, decimals of the value, unit)
    "frame_time": ("average frame time", 1.0, 1, " ms"),
    "memory": ("memory", 1.0, 1, " MB"),
    "load": ("load", 1.0, 2, ""),
    "error_rate": ("error rate", 100.0, 1, "%"),
    "queue": ("queue", 1.0, 0, " frames"),
}


@dataclass(frozen=True, slots=True)
class Alert:
    """An alert edge: raised (``active``) or cleared, with the figure that caused it."""

    name: str
    """One of :data:`ALERT_NAMES`."""
    value: float
    threshold: float
    active: bool
    """True when raised, False when cleared."""
    at: float
    """Monotonic time of the evaluation that saw the edge."""

    @property
    def message(self) -> str:
        """One human sentence, e.g. ``average frame time 25.1 ms is above 20 ms``."""
        subject, scale, decimals, unit = _FORMATS[self.name]
        verb = "is above" if self.active else "is back at or below"
        value = f"{self.value * scale:.{decimals}f}{unit}"
        threshold = f"{self.threshold * scale:g}{unit}"
        return f"{subject} {value} {verb} {threshold}"


class HealthMonitor:
    """Evaluates :class:`HealthInputs` snapshots into a :class:`Health` state and alert edges.

    The health rule, first match wins:

    * FAILED: workers are expected but none is alive -- nothing can be processed.
    * OVERLOADED: the ladder is at DROP_FRAMES or below (audio or features are being shed),
      or load is at or above capacity (1.0).
    * STRESSED: any alert is active, the ladder is degraded at all (REDUCE_QUALITY), or some
      workers are missing.
    * HEALTHY otherwise.
    """

    def __init__(self, thresholds: AlertThresholds) -> None:
        self.thresholds = thresholds
        self.health = Health.HEALTHY
        self.since = 0.0
        """Monotonic time the current health state began (first evaluation until a change)."""
        self.transitions = 0
        """Health state changes so far."""
        self.active: dict[str, Alert] = {}
        """Alerts currently raised, by name, as they were raised (value and time of raising)."""
        self.counts: dict[str, int] = dict.fromkeys(ALERT_NAMES, 0)
        """Times each alert was raised."""
        self._evaluated = False

    def evaluate(self, inputs: HealthInputs, now: float) -> list[Alert]:
        """Update alerts and health from ``inputs``; return the alert edges since last call.

        A figure strictly above its threshold raises the alert (once, until it clears); a
        figure at or below it clears an active alert. A NaN figure (a missing measurement)
        leaves its alert as it is.
        """
        t = self.thresholds
        figures: dict[str, tuple[float, float]] = {
            "frame_time": (inputs.frame_time_ms, t.frame_time_ms),
            "memory": (inputs.memory_mb, t.memory_mb),
            "load": (inputs.load, t.load),
            "error_rate": (inputs.error_rate, t.error_rate),
            "queue": (float(inputs.queue_frames), float(t.queue_frames)),
        }
        edges: list[Alert] = []
        for name in ALERT_NAMES:
            value, threshold = figures[name]
            if math.isnan(value):
                continue
            above = value > threshold
            if above == (name in self.active):
                continue
            alert = Alert(name=name, value=value, threshold=threshold, active=above, at=now)
            edges.append(alert)
            if above:
                self.active[name] = alert
                self.counts[name] += 1
                log.warning("alert %s raised: %s", name, alert.message)
            else:
                del self.active[name]
                log.info("alert %s cleared: %s", name, alert.message)

        health = self._classify(inputs)
        if health != self.health:
            self.health = health
            self.transitions += 1
            self.since = now
        elif not self._evaluated:
            self.since = now
        self._evaluated = True
        return edges

    def _classify(self, inputs: HealthInputs) -> Health:
        if inputs.workers_expected > 0 and inputs.workers_alive == 0:
            return Health.FAILED
        if inputs.level >= Level.DROP_FRAMES or inputs.load >= 1.0:
            return Health.OVERLOADED
        if (
            self.active
            or inputs.level >= Level.REDUCE_QUALITY
            or inputs.workers_alive < inputs.workers_expected
        ):
            return Health.STRESSED
        return Health.HEALTHY
