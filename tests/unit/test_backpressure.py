"""The backpressure ladder: pacing, hysteresis, recovery hold, config validation, degrade()."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from alfred_daemon.engine.config import EngineConfig, SttConfig, TurnConfig, VadConfig
from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.runtime.backpressure import (
    BackpressureConfig,
    Ladder,
    Level,
    LoadSample,
    Transition,
    degrade,
)

HIGH = 0.9  # above the default threshold (0.8)
BAND = 0.7  # inside the hysteresis band (0.6 .. 0.8)
LOW = 0.5  # below the default recovery threshold (0.6)


def run_down(ladder: Ladder, rungs: int, start: float = 0.0) -> float:
    """Step ``rungs`` rungs down, one per step interval; return the time of the last step."""
    t = start
    for i in range(rungs):
        t = start + i * ladder.config.step_interval_s
        assert ladder.update(HIGH, t) is not None
    return t


# --- Level -------------------------------------------------------------------------------


def test_level_actions_are_the_spec_names() -> None:
    assert [lv.action for lv in Level] == [
        "none",
        "reduce_quality",
        "drop_frames",
        "pause_processing",
    ]
    assert [int(lv) for lv in Level] == [0, 1, 2, 3]


def test_level_from_action_round_trips_and_rejects_unknown() -> None:
    for lv in Level:
        assert Level.from_action(lv.action) is lv
    with pytest.raises(KeyError):
        Level.from_action("shed_everything")


# --- BackpressureConfig --------------------------------------------------------------------


def test_config_defaults() -> None:
    cfg = BackpressureConfig()
    assert cfg.threshold == 0.8
    assert cfg.recovery_threshold == 0.6
    assert cfg.degradation_steps == ("reduce_quality", "drop_frames", "pause_processing")
    assert cfg.levels == (Level.REDUCE_QUALITY, Level.DROP_FRAMES, Level.PAUSE_PROCESSING)
    assert cfg.step_interval_s == 1.0
    assert cfg.recovery_hold_s == 2.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"recovery_threshold": 0.9},
            "coordination.recovery_threshold = 0.9 must be below coordination.threshold (0.8)",
        ),
        (
            {"recovery_threshold": 0.8},
            "coordination.recovery_threshold = 0.8 must be below coordination.threshold (0.8)",
        ),
        ({"recovery_threshold": 0.0}, "coordination.recovery_threshold = 0.0 must be above 0"),
        ({"recovery_threshold": -0.1}, "coordination.recovery_threshold = -0.1"),
        ({"threshold": 1.6}, "coordination.threshold = 1.6 is out of range"),
        ({"threshold": 0.0}, "coordination.threshold = 0.0 is out of range"),
        ({"threshold": math.nan}, "coordination.threshold = nan is out of range"),
        ({"step_interval_s": -1.0}, "coordination.step_interval_s = -1.0 is out of range"),
        ({"recovery_hold_s": math.inf}, "coordination.recovery_hold_s = inf is out of range"),
        ({"degradation_steps": ()}, "coordination.degradation_steps is empty"),
        (
            {"degradation_steps": ("reduce_quality", "go_faster")},
            "coordination.degradation_steps: unknown step 'go_faster'",
        ),
        (
            {"degradation_steps": ("none",)},
            "coordination.degradation_steps: unknown step 'none'",
        ),
        (
            {"degradation_steps": ("reduce_quality", "reduce_quality")},
            "names a step twice",
        ),
        (
            {"degradation_steps": ("pause_processing", "reduce_quality")},
            "is out of ladder order",
        ),
    ],
)
def test_config_validation_names_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        BackpressureConfig(**kwargs)
    assert message in str(info.value)


def test_config_accepts_the_edges_of_its_ranges() -> None:
    cfg = BackpressureConfig(
        threshold=1.5, recovery_threshold=1.4, step_interval_s=0.0, recovery_hold_s=0.0
    )
    assert (cfg.threshold, cfg.recovery_threshold) == (1.5, 1.4)
    assert (cfg.step_interval_s, cfg.recovery_hold_s) == (0.0, 0.0)


def test_config_stores_a_list_of_steps_as_a_tuple() -> None:
    # TOML arrays arrive as lists; the config must stay hashable and equal to a coded one.
    cfg = BackpressureConfig(degradation_steps=["reduce_quality", "pause_processing"])  # type: ignore[arg-type]
    assert cfg.degradation_steps == ("reduce_quality", "pause_processing")
    assert cfg == BackpressureConfig(degradation_steps=("reduce_quality", "pause_processing"))
    assert hash(cfg) == hash(
        BackpressureConfig(degradation_steps=("reduce_quality", "pause_processing"))
    )


# --- LoadSample ----------------------------------------------------------------------------


def test_load_is_the_maximum_component() -> None:
    assert LoadSample(queue=0.95, lag=0.1, busy=0.2).load == 0.95
    assert LoadSample(queue=0.1, lag=0.7, busy=0.2).load == 0.7
    assert LoadSample(queue=0.1, lag=0.1, busy=0.85).load == 0.85


def test_load_is_clamped() -> None:
    assert LoadSample(queue=5.0, lag=0.0, busy=0.0).load == 2.0
    assert LoadSample(queue=math.inf, lag=0.0, busy=0.0).load == 2.0
    assert LoadSample(queue=-1.0, lag=-0.5, busy=-2.0).load == 0.0


def test_load_ignores_a_missing_component() -> None:
    assert LoadSample(queue=math.nan, lag=0.3, busy=0.4).load == 0.4
    assert math.isnan(LoadSample(queue=math.nan, lag=math.nan, busy=math.nan).load)


# --- Transition ----------------------------------------------------------------------------


def test_transition_direction_and_action() -> None:
    down = Transition(at=1.0, previous=Level.NORMAL, level=Level.REDUCE_QUALITY, load=0.9)
    assert down.triggered is True
    assert down.action == "reduce_quality"
    up = Transition(at=5.0, previous=Level.DROP_FRAMES, level=Level.REDUCE_QUALITY, load=0.4)
    assert up.triggered is False
    assert up.action == "drop_frames"  # the action that stopped applying


# --- Ladder: degrading ---------------------------------------------------------------------


def test_a_new_ladder_is_normal() -> None:
    ladder = Ladder(BackpressureConfig())
    assert ladder.level is Level.NORMAL
    assert (ladder.triggered, ladder.recovered, len(ladder.history)) == (0, 0, 0)


def test_first_overload_steps_down_immediately() -> None:
    ladder = Ladder(BackpressureConfig())
    assert ladder.rungs[0] is Level.NORMAL
    assert ladder.triggered == 0
    tr = ladder.update(HIGH, 100.0)
    assert tr == Transition(at=100.0, previous=Level.NORMAL, level=Level.REDUCE_QUALITY, load=HIGH)
    assert ladder.level is Level.REDUCE_QUALITY


def test_steps_down_one_rung_per_step_interval() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0))
    seen: list[tuple[float, Level]] = []
    for i in range(41):  # 0.0 .. 4.0 s every 0.1 s, load pinned high
        t = round(i * 0.1, 1)
        tr = ladder.update(HIGH, t)
        if tr is not None:
            seen.append((t, tr.level))
    assert seen == [
        (0.0, Level.REDUCE_QUALITY),
        (1.0, Level.DROP_FRAMES),
        (2.0, Level.PAUSE_PROCESSING),
    ]
    assert ladder.level is Level.PAUSE_PROCESSING  # bottom: stays, no further transitions
    assert ladder.triggered == 3


def test_a_spike_does_not_skip_rungs() -> None:
    ladder = Ladder(BackpressureConfig())
    transitions = [ladder.update(2.0, 10.0 + i * 0.01) for i in range(50)]
    taken = [tr for tr in transitions if tr is not None]
    assert len(taken) == 1
    assert (taken[0].previous, taken[0].level) == (Level.NORMAL, Level.REDUCE_QUALITY)


def test_threshold_itself_does_not_trigger() -> None:
    ladder = Ladder(BackpressureConfig(threshold=0.8))
    assert ladder.update(0.8, 0.0) is None
    assert ladder.level is Level.NORMAL
    assert ladder.update(0.8001, 0.1) is not None


# --- Ladder: hysteresis and recovery -------------------------------------------------------


def test_hysteresis_band_holds_the_level() -> None:
    ladder = Ladder(BackpressureConfig())
    run_down(ladder, 2)
    for i in range(100):
        assert ladder.update(BAND, 2.0 + i) is None
    assert ladder.update(0.6, 200.0) is None  # recovery needs strictly below 0.6
    assert ladder.update(0.6, 300.0) is None
    assert ladder.level is Level.DROP_FRAMES
    assert ladder.recovered == 0


def test_recovery_needs_continuous_low_load_for_the_hold() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0, recovery_hold_s=2.0))
    run_down(ladder, 1)  # REDUCE_QUALITY at t=0
    assert ladder.update(LOW, 10.0) is None  # hold timer starts
    assert ladder.update(LOW, 11.0) is None
    assert ladder.update(LOW, 11.99) is None
    tr = ladder.update(LOW, 12.0)
    assert tr == Transition(at=12.0, previous=Level.REDUCE_QUALITY, level=Level.NORMAL, load=LOW)
    assert ladder.level is Level.NORMAL


def test_a_blip_restarts_the_recovery_hold() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0, recovery_hold_s=2.0))
    run_down(ladder, 1)
    assert ladder.update(LOW, 10.0) is None
    assert ladder.update(LOW, 11.5) is None
    assert ladder.update(BAND, 11.6) is None  # blip into the band: the hold restarts
    assert ladder.update(LOW, 11.7) is None
    assert ladder.update(LOW, 12.5) is None  # would have recovered without the blip
    assert ladder.update(LOW, 13.6) is None
    assert ladder.level is Level.REDUCE_QUALITY
    tr = ladder.update(LOW, 13.7)  # 2.0 s after the hold restarted at 11.7
    assert tr is not None
    assert tr.level is Level.NORMAL


def test_recovery_threshold_value_itself_restarts_the_hold() -> None:
    ladder = Ladder(BackpressureConfig(recovery_hold_s=2.0))
    run_down(ladder, 1)
    assert ladder.update(LOW, 10.0) is None
    assert ladder.update(0.6, 11.0) is None  # at the recovery threshold: not low
    assert ladder.update(LOW, 11.5) is None
    assert ladder.update(LOW, 13.0) is None
    assert ladder.update(LOW, 13.5) is not None


def test_recovery_also_waits_for_the_step_interval() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=5.0, recovery_hold_s=1.0))
    assert ladder.update(HIGH, 0.0) is not None
    assert ladder.update(LOW, 0.5) is None
    assert ladder.update(LOW, 2.0) is None  # hold satisfied, interval not
    assert ladder.update(LOW, 4.99) is None
    tr = ladder.update(LOW, 5.0)
    assert tr is not None
    assert tr.level is Level.NORMAL


def test_recovery_climbs_one_rung_per_hold() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0, recovery_hold_s=2.0))
    run_down(ladder, 3)  # PAUSE_PROCESSING at t=2
    seen: list[tuple[float, Level]] = []
    for i in range(101):  # 10.0 .. 20.0 s every 0.1 s, load pinned low
        t = round(10.0 + i * 0.1, 1)
        tr = ladder.update(LOW, t)
        if tr is not None:
            seen.append((t, tr.level))
    # Hold starts at 10.0; after each step up the new rung needs its own 2 s of low load.
    assert seen == [
        (12.0, Level.DROP_FRAMES),
        (14.0, Level.REDUCE_QUALITY),
        (16.0, Level.NORMAL),
    ]
    assert ladder.recovered == 3


def test_overload_after_partial_recovery_steps_down_again() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0, recovery_hold_s=2.0))
    run_down(ladder, 2)  # DROP_FRAMES at t=1
    ladder.update(LOW, 10.0)
    assert ladder.update(LOW, 12.0) is not None  # up to REDUCE_QUALITY
    assert ladder.update(HIGH, 12.5) is None  # step interval since the recovery
    tr = ladder.update(HIGH, 13.0)
    assert tr is not None
    assert (tr.previous, tr.level) == (Level.REDUCE_QUALITY, Level.DROP_FRAMES)


def test_nan_load_holds_and_restarts_the_hold() -> None:
    ladder = Ladder(BackpressureConfig(recovery_hold_s=2.0))
    assert ladder.update(math.nan, 0.0) is None
    assert ladder.level is Level.NORMAL
    run_down(ladder, 1, start=1.0)
    assert ladder.update(LOW, 10.0) is None
    assert ladder.update(math.nan, 11.0) is None
    assert ladder.update(LOW, 12.0) is None  # the NaN restarted the hold at 12.0
    assert ladder.update(LOW, 14.0) is not None


# --- Ladder: configured subsets ------------------------------------------------------------


def test_custom_steps_subset_walks_only_configured_rungs() -> None:
    cfg = BackpressureConfig(
        degradation_steps=("reduce_quality", "pause_processing"),
        step_interval_s=1.0,
        recovery_hold_s=2.0,
    )
    ladder = Ladder(cfg)
    assert ladder.rungs == (Level.NORMAL, Level.REDUCE_QUALITY, Level.PAUSE_PROCESSING)
    down = [ladder.update(HIGH, t) for t in (0.0, 1.0, 2.0, 3.0)]
    assert [(tr.previous, tr.level) if tr else None for tr in down] == [
        (Level.NORMAL, Level.REDUCE_QUALITY),
        (Level.REDUCE_QUALITY, Level.PAUSE_PROCESSING),
        None,
        None,
    ]
    ladder.update(LOW, 10.0)
    up = [ladder.update(LOW, t) for t in (12.0, 14.0, 16.0)]
    assert [(tr.previous, tr.level) if tr else None for tr in up] == [
        (Level.PAUSE_PROCESSING, Level.REDUCE_QUALITY),
        (Level.REDUCE_QUALITY, Level.NORMAL),
        None,
    ]
    assert all(tr is None or tr.level is not Level.DROP_FRAMES for tr in down + up)


def test_single_step_ladder() -> None:
    ladder = Ladder(BackpressureConfig(degradation_steps=("drop_frames",)))
    tr = ladder.update(HIGH, 0.0)
    assert tr is not None
    assert (tr.previous, tr.level, tr.action) == (Level.NORMAL, Level.DROP_FRAMES, "drop_frames")
    assert ladder.update(HIGH, 5.0) is None
    assert ladder.level is Level.DROP_FRAMES


# --- Ladder: counters, history, reset ------------------------------------------------------


def test_counters_and_history_record_every_transition() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0, recovery_hold_s=2.0))
    ladder.update(HIGH, 0.0)
    ladder.update(0.95, 1.0)
    ladder.update(LOW, 5.0)
    ladder.update(0.3, 7.0)
    assert (ladder.triggered, ladder.recovered) == (2, 1)
    assert list(ladder.history) == [
        Transition(at=0.0, previous=Level.NORMAL, level=Level.REDUCE_QUALITY, load=HIGH),
        Transition(at=1.0, previous=Level.REDUCE_QUALITY, level=Level.DROP_FRAMES, load=0.95),
        Transition(at=7.0, previous=Level.DROP_FRAMES, level=Level.REDUCE_QUALITY, load=0.3),
    ]
    assert [tr.triggered for tr in ladder.history] == [True, True, False]
    assert [tr.action for tr in ladder.history] == [
        "reduce_quality",
        "drop_frames",
        "drop_frames",
    ]


def test_history_is_bounded_to_the_latest_100() -> None:
    ladder = Ladder(
        BackpressureConfig(
            step_interval_s=0.0, recovery_hold_s=0.0, degradation_steps=("reduce_quality",)
        )
    )
    for i in range(150):
        assert ladder.update(HIGH if i % 2 == 0 else LOW, float(i)) is not None
    assert (ladder.triggered, ladder.recovered) == (75, 75)
    assert len(ladder.history) == 100
    assert ladder.history[0].at == 50.0
    assert ladder.history[-1].at == 149.0


def test_reset_returns_to_normal_and_clears_pacing() -> None:
    ladder = Ladder(BackpressureConfig(step_interval_s=1.0))
    run_down(ladder, 2)  # last step at t=1.0
    ladder.reset()
    assert ladder.level is Level.NORMAL
    tr = ladder.update(HIGH, 1.1)  # no step-interval wait after a reset
    assert tr is not None
    assert (tr.previous, tr.level) == (Level.NORMAL, Level.REDUCE_QUALITY)
    assert ladder.triggered == 3  # lifetime statistics survive the reset
    assert len(ladder.history) == 3


# --- degrade() -----------------------------------------------------------------------------


def base_config() -> EngineConfig:
    return EngineConfig(
        stt=SttConfig(beam_size=5, partial_beam_size=2, partial_interval_ms=500),
        frame_events=True,
    )


def test_degrade_normal_is_identity() -> None:
    cfg = base_config()
    assert degrade(cfg, Level.NORMAL) is cfg


def test_degrade_reduce_quality() -> None:
    cfg = base_config()
    out = degrade(cfg, Level.REDUCE_QUALITY)
    assert (out.stt.beam_size, out.stt.partial_beam_size) == (1, 1)
    assert out.stt.partial_interval_ms == 1000
    assert out.stt.partials is True
    assert out.stt.speculative_final is True  # what keeps finals on time under load
    assert out.turn.speculative is True
    assert out.frame_events is True
    # Nothing else in stt changes.
    assert (
        dataclasses.replace(out.stt, beam_size=5, partial_beam_size=2, partial_interval_ms=500)
        == cfg.stt
    )
    assert cfg.stt.beam_size == 5  # the input is not modified


def test_degrade_drop_frames_is_the_reduce_quality_config() -> None:
    cfg = base_config()
    assert degrade(cfg, Level.DROP_FRAMES) == degrade(cfg, Level.REDUCE_QUALITY)


def test_degrade_pause_processing() -> None:
    cfg = base_config()
    out = degrade(cfg, Level.PAUSE_PROCESSING)
    assert (out.stt.beam_size, out.stt.partial_beam_size) == (1, 1)
    assert out.stt.partial_interval_ms == 1000
    assert out.stt.partials is False
    assert out.stt.speculative_final is False
    assert out.turn.speculative is False
    assert out.frame_events is False


def test_degrade_caps_the_partial_interval() -> None:
    cfg = EngineConfig(stt=SttConfig(partial_interval_ms=6000))
    assert degrade(cfg, Level.REDUCE_QUALITY).stt.partial_interval_ms == 10_000
    cfg = EngineConfig(stt=SttConfig(partial_interval_ms=10_000))
    assert degrade(cfg, Level.PAUSE_PROCESSING).stt.partial_interval_ms == 10_000


@pytest.mark.parametrize("level", list(Level))
def test_degrade_never_touches_finals_vad_or_turn_detection(level: Level) -> None:
    cfg = EngineConfig(
        vad=VadConfig(threshold=0.6),
        turn=TurnConfig(enabled=True, silence_ms=300),
        stt=SttConfig(max_utterance_s=20.0, postroll_ms=150),
    )
    out = degrade(cfg, level)
    assert out.vad == cfg.vad
    # Only the speculation of the ask goes (PAUSE_PROCESSING): Smart Turn is still asked.
    assert dataclasses.replace(out.turn, speculative=True) == cfg.turn
    assert out.turn.enabled is True
    assert (out.stt.max_utterance_s, out.stt.postroll_ms) == (20.0, 150)
    assert out.stt.language == "en"
