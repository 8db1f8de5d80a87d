"""The load figure the backpressure ladder moves on, and what a ladder step does.

Load is the worst of three fractions (:class:`~.backpressure.LoadSample`): the longest VAD
backlog of a session against ``processor.frame_queue_size``, the worst lag against
``max_lag_ms``, and how busy the job lanes are (smoothed over ~2 s). Only what the daemon
owes clients at real time counts (runtime/fairness.py): a session ahead of real time, or
stalled or catching up after a worker fault, is left out, and so are a suspect worker's
lanes and the spare work on any lane.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

from ..engine.events import BackpressureRecovered, BackpressureTriggered, PipelineHealth
from ..engine.session import samples_to_ms
from .backpressure import Level, LoadSample, Transition, degrade
from .live_session import LiveSession
from .workers import Lane

log = logging.getLogger(__name__)


class LoadMeter:
    """Busy time of the job lanes between ticks, smoothed, and the load sample."""

    def __init__(self, now: float) -> None:
        self.busy_ewma = 0.0
        """Busy fraction of the job lanes with real-time work, smoothed over ~2 s."""
        self.last_tick = now
        self.sample = LoadSample(0.0, 0.0, 0.0)

    def reset(self, now: float) -> None:
        self.last_tick = now
        self.busy_ewma = 0.0

    def lane_done(self, lane: Lane, now: float) -> None:
        """A lane's request came back: its busy time since the last tick counts, unless it
        was spare work (not load)."""
        if not lane.ahead_work:
            lane.busy_accum += now - max(lane.sent_at, self.last_tick)

    def tick(self, now: float, *, job_lanes: Sequence[Lane], all_lanes: Iterable[Lane],
             counted: Sequence[LiveSession], lag_ms: Callable[[LiveSession], float],
             frame_queue_size: int, max_lag_ms: float) -> LoadSample:
        """The load sample now. ``job_lanes``: the ready job lanes of workers not suspect
        (a suspect worker's lanes are neither capacity nor load: the heartbeat will have it
        killed, and its work re-run); ``counted``: the sessions whose backlog is load."""
        span = max(now - self.last_tick, 1e-3)
        busy = 0.0
        for lane in job_lanes:
            if lane.request is not None and not lane.ahead_work:
                lane.busy_accum += now - max(lane.sent_at, self.last_tick)
            busy += min(lane.busy_accum / span, 1.0)
        for lane in all_lanes:
            lane.busy_accum = 0.0
        # No ready job lane means no worker (health reports that), not a busy one.
        busy = busy / len(job_lanes) if job_lanes else 0.0
        alpha = min(1.0, span / 2.0)
        self.busy_ewma += alpha * (busy - self.busy_ewma)
        self.last_tick = now
        queue = max((s.queued_windows / frame_queue_size for s in counted), default=0.0)
        lag = max((lag_ms(s) for s in counted), default=0.0)
        self.sample = LoadSample(queue, lag / max_lag_ms, self.busy_ewma)
        return self.sample


def session_lag_ms(s: LiveSession, owed_since: float | None, now: float) -> float:
    """How far behind a session is: its oldest window not analysed, or its oldest owed job
    still queued (``Scheduler.owed_since``) if older. Optional work waiting is not lag."""
    lag = s.lag_ms(now)
    if owed_since is not None:
        lag = max(lag, (now - owed_since) * 1000.0)
    return lag


def apply_transition(t: Transition, sessions: Iterable[LiveSession],
                     pump: Callable[[LiveSession], None]) -> None:
    """A ladder step: every session runs its config degraded to the new level and is told."""
    log.warning("backpressure %s: %s -> %s (load %.2f)",
                "triggered" if t.triggered else "recovered", t.previous.action,
                t.level.action, t.load)
    for s in sessions:
        s.core.reconfigure(degrade(s.base_config, t.level))
        tell_backpressure(s, triggered=t.triggered, level=t.level, action=t.action,
                          load=t.load)
        pump(s)


def tell_backpressure(s: LiveSession, *, triggered: bool, level: Level, action: str,
                      load: float) -> None:
    """Post a ``backpressure_triggered`` / ``_recovered`` event to one session, at its
    current audio position: a ladder step (every session) or a flow-control wait of its
    own (``SessionApi.feed``)."""
    kind = BackpressureTriggered if triggered else BackpressureRecovered
    s.core.post(kind(audio_offset_ms=samples_to_ms(s.core.position), level=int(level),
                     action=action, load=round(load, 3)))


def health_events(sessions: Iterable[LiveSession], now: float, *, interval: float,
                  health: str, load: float, level: Level,
                  lag_ms: Callable[[LiveSession], float],
                  pump: Callable[[LiveSession], None]) -> None:
    """Every ``health_event_interval``, each session gets a ``pipeline_health`` event."""
    for s in sessions:
        if now - s.last_health_event >= interval:
            s.last_health_event = now
            s.core.post(PipelineHealth(
                audio_offset_ms=samples_to_ms(s.core.position), health=health,
                load=round(load, 3), lag_ms=round(lag_ms(s), 1),
                backpressure_level=int(level)))
            pump(s)
