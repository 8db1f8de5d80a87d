"""The backpressure ladder: how the daemon degrades when it cannot keep up, and recovers.

A speech daemon that falls behind real time is worse than one that is briefly less accurate:
late finals break the voice agent's turn-taking. So under load the daemon walks down a ladder
of cheaper behaviours -- smaller beams and fewer partials, then skipping queued VAD windows,
then no partials at all -- one rung at a time, and climbs back up when load has stayed low.

Two things keep it from flapping:

* hysteresis: it degrades above ``threshold`` but recovers only below the lower
  ``recovery_threshold``; in between it stays where it is;
* pacing: at most one rung per ``step_interval_s`` in either direction, and a recovery needs
  ``recovery_hold_s`` of *continuous* low load, so one spike does not run down the whole
  ladder and one quiet moment does not undo it.

Everything here is pure: time is passed in (``now``, monotonic seconds), so the behaviour is
deterministic and testable without clocks or processes.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from ..engine.config import EngineConfig
from ..engine.errors import ConfigError

HISTORY_LEN = 100
"""Transitions kept in :attr:`Ladder.history` (enough for a health report, bounded memory)."""

MAX_LOAD = 2.0
"""Load figures are clamped to ``[0, MAX_LOAD]``: beyond twice capacity the exact figure
carries no extra decision value, and the clamp keeps averages and reports readable."""

MAX_PARTIAL_INTERVAL_MS = 10_000
"""Upper bound of ``stt.partial_interval_ms`` (the engine config rejects more)."""


class Level(enum.IntEnum):
    """Rungs of the ladder, ordered: a higher value is a more degraded state."""

    NORMAL = 0
    REDUCE_QUALITY = 1
    DROP_FRAMES = 2
    PAUSE_PROCESSING = 3

    @property
    def action(self) -> str:
        """Product-spec name of the rung's behaviour (``"none"`` for NORMAL)."""
        return _ACTIONS[self]

    @classmethod
    def from_action(cls, action: str) -> Level:
        """The level whose :attr:`action` is ``action``; ``KeyError`` if there is none."""
        for level, name in _ACTIONS.items():
            if name == action:
                return level
        raise KeyError(action)


_ACTIONS: dict[Level, str] = {
    Level.NORMAL: "none",
    Level.REDUCE_QUALITY: "reduce_quality",
    Level.DROP_FRAMES: "drop_frames",
    Level.PAUSE_PROCESSING: "pause_processing",
}

STEP_NAMES: tuple[str, ...] = tuple(level.action for level in Level if level is not Level.NORMAL)
"""The degradation steps an operator may configure, in ladder order."""


@dataclass(frozen=True, slots=True)
class BackpressureConfig:
    """The ``coordination`` section: thresholds and pacing of the ladder.

    Validated on construction; a bad value fails at start with a message naming the key.
    """

    threshold: float = 0.8
    """Load strictly above this steps one rung down the ladder."""
    recovery_threshold: float = 0.6
    """Load strictly below this (for ``recovery_hold_s``) steps one rung back up. The gap to
    ``threshold`` is the hysteresis band in which the ladder holds still."""
    degradation_steps: tuple[str, ...] = STEP_NAMES
    """The ladder's rungs below NORMAL, in order. An operator may configure a subset, e.g.
    ``("reduce_quality", "pause_processing")`` for a deployment that must never skip audio."""
    step_interval_s: float = 1.0
    """Minimum seconds between two transitions, in either direction."""
    recovery_hold_s: float = 2.0
    """Seconds load must stay continuously below ``recovery_threshold`` before one rung up."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.threshold) and 0.0 < self.threshold <= 1.5):
            raise ConfigError(
                f"coordination.threshold = {self.threshold!r} is out of range; "
                "it must be above 0 and at most 1.5"
            )
        if not (math.isfinite(self.recovery_threshold) and self.recovery_threshold > 0.0):
            raise ConfigError(
                f"coordination.recovery_threshold = {self.recovery_threshold!r} must be above 0"
            )
        if not self.recovery_threshold < self.threshold:
            raise ConfigError(
                f"coordination.recovery_threshold = {self.recovery_threshold!r} "
                f"must be below coordination.threshold ({self.threshold!r})"
            )
        for key, value in (
            ("coordination.step_interval_s", self.step_interval_s),
            ("coordination.recovery_hold_s", self.recovery_hold_s),
        ):
            if not (math.isfinite(value) and 0.0 <= value <= 3600.0):
                raise ConfigError(f"{key} = {value!r} is out of range; allowed 0 .. 3600")
        # The ops layer maps TOML arrays (lists) onto this field; store a tuple so the
        # config stays hashable and compares equal to one built in code.
        steps = tuple(self.degradation_steps)
        object.__setattr__(self, "degradation_steps", steps)
        key = "coordination.degradation_steps"
        if not steps:
            raise ConfigError(f"{key} is empty; give at least one of {', '.join(STEP_NAMES)}")
        for step in steps:
            if step not in STEP_NAMES:
                raise ConfigError(f"{key}: unknown step {step!r}; allowed {', '.join(STEP_NAMES)}")
        if len(set(steps)) != len(steps):
            raise ConfigError(f"{key} = {list(steps)!r} names a step twice")
        if [Level.from_action(s) for s in steps] != sorted(Level.from_action(s) for s in steps):
            raise ConfigError(
                f"{key} = {list(steps)!r} is out of ladder order; "
                f"the order is {', '.join(STEP_NAMES)}"
            )

    @property
    def levels(self) -> tuple[Level, ...]:
        """The configured rungs below NORMAL, as levels, in ladder order."""
        return tuple(Level.from_action(s) for s in self.degradation_steps)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One measurement of how close the pipeline is to falling behind; 1.0 = at capacity.

    :attr:`load` is the *maximum* of the components, not their mean: the pipeline is a chain,
    and any one saturated resource -- a full queue, growing lag, or workers busy all the
    time -- is enough to fall behind real time, however idle the others are. A mean would
    hide a saturated queue behind idle workers.
    """

    queue: float
    """Frames waiting / queue capacity."""
    lag: float
    """Lag behind real time / tolerated lag."""
    busy: float
    """Fraction of time the workers were busy, 0..1."""

    @property
    def load(self) -> float:
        """``max(queue, lag, busy)`` clamped to ``[0, 2]``.

        A NaN component (a measurement that is missing) is ignored; if all are NaN the
        result is NaN, which :meth:`Ladder.update` treats as "no information" and holds.
        """
        known = [v for v in (self.queue, self.lag, self.busy) if not math.isnan(v)]
        if not known:
            return math.nan
        return min(MAX_LOAD, max(0.0, *known))


@dataclass(frozen=True, slots=True)
class Transition:
    """One step of the ladder, kept in :attr:`Ladder.history` and reported to clients."""

    at: float
    """Monotonic time of the step."""
    previous: Level
    level: Level
    load: float
    """The load figure that caused the step."""

    @property
    def triggered(self) -> bool:
        """True if the step went down the ladder (degraded), False if it recovered."""
        return self.level > self.previous

    @property
    def action(self) -> str:
        """The action this step is about: the one entered when triggered, the one left
        (and no longer applied) when recovered."""
        return self.level.action if self.triggered else self.previous.action


class Ladder:
    """The ladder's state machine; feed it the load figure with :meth:`update`.

    It holds no clock: ``now`` is passed in, so behaviour is deterministic.
    """

    def __init__(self, config: BackpressureConfig) -> None:
        self.config = config
        self._rungs: tuple[Level, ...] = (Level.NORMAL, *config.levels)
        self._index = 0
        self._last_transition: float | None = None
        self._low_since: float | None = None
        self.triggered = 0
        """Steps down the ladder so far."""
        self.recovered = 0
        """Steps up the ladder so far."""
        self.history: deque[Transition] = deque(maxlen=HISTORY_LEN)

    @property
    def level(self) -> Level:
        """The current rung."""
        return self._rungs[self._index]

    @property
    def rungs(self) -> tuple[Level, ...]:
        """NORMAL followed by the configured rungs, in order."""
        return self._rungs

    def update(self, load: float, now: float) -> Transition | None:
        """Account for one load figure at monotonic time ``now``; return the step taken, if any.

        * ``load > threshold``: one rung down, if ``step_interval_s`` has passed since the
          last transition and there is a rung left.
        * ``load < recovery_threshold`` continuously for ``recovery_hold_s`` (the hold timer
          restarts whenever load is at or above ``recovery_threshold``): one rung up, if
          ``step_interval_s`` has passed since the last transition. The hold timer restarts
          after each step up, so every rung climbed needs its own quiet period at the new,
          more expensive rung.
        * otherwise (the hysteresis band, or a NaN figure): hold.
        """
        cfg = self.config
        if math.isnan(load) or load >= cfg.recovery_threshold:
            self._low_since = None
        elif self._low_since is None:
            self._low_since = now

        if not self._paced(now):
            return None
        if load > cfg.threshold and self._index < len(self._rungs) - 1:
            return self._step(+1, load, now)
        if (
            self._low_since is not None
            and now - self._low_since >= cfg.recovery_hold_s
            and self._index > 0
        ):
            return self._step(-1, load, now)
        return None

    def reset(self) -> None:
        """Back to NORMAL with pacing and hold timers cleared.

        The counters and history are lifetime statistics and are kept; no transition is
        recorded for the reset itself.
        """
        self._index = 0
        self._last_transition = None
        self._low_since = None

    def _paced(self, now: float) -> bool:
        return (
            self._last_transition is None
            or now - self._last_transition >= self.config.step_interval_s
        )

    def _step(self, direction: int, load: float, now: float) -> Transition:
        previous = self.level
        self._index += direction
        self._last_transition = now
        if direction > 0:
            self.triggered += 1
            self._low_since = None
        else:
            self.recovered += 1
            self._low_since = now
        transition = Transition(at=now, previous=previous, level=self.level, load=load)
        self.history.append(transition)
        return transition


def degrade(config: EngineConfig, level: Level) -> EngineConfig:
    """The engine config a session runs with at ``level``; effects accumulate down the ladder.

    ``config`` must be the session's own (undegraded) config: the result is derived from it
    afresh at every level, so recovering is just calling this again with the lower level.

    * NORMAL: ``config`` unchanged.
    * REDUCE_QUALITY: greedy decoding (``stt.beam_size`` and ``stt.partial_beam_size`` 1)
      and half as many partials (``stt.partial_interval_ms`` doubled, capped at 10 s).
      Beam search and partials are most of the STT cost; greedy finals lose a little accuracy
      but arrive on time. Speculative finals stay: they are what makes a final arrive
      with the speech end instead of a decode later, and the work lost when speech resumes
      (about one final in five under load) is cheaper than that delay (six realistic
      sessions on two cores: p95 final 942 ms with them, 1165 ms without).
    * DROP_FRAMES: the same config as REDUCE_QUALITY. Skipping queued VAD windows is done by
      the runtime's frame queue, not by engine config.
    * PAUSE_PROCESSING: additionally no partials (``stt.partials``), no per-window
      ``frame_events`` and no speculation (finals, Smart Turn asks); only what a voice
      agent cannot work without is left.

    Finals and turn detection are never disabled at any level: without them the agent cannot
    answer at all, so they are what the other work is shed to protect.
    """
    if level < Level.REDUCE_QUALITY:
        return config
    stt: dict[str, object] = {
        "beam_size": 1,
        "partial_beam_size": 1,
        "partial_interval_ms": min(MAX_PARTIAL_INTERVAL_MS, 2 * config.stt.partial_interval_ms),
    }
    if level < Level.PAUSE_PROCESSING:
        return config.replace(stt=stt)
    stt["partials"] = False
    stt["speculative_final"] = False
    return config.replace(stt=stt, turn={"speculative": False}, frame_events=False)
