"""Health states and threshold alerts: the rule, alert edges, counts, messages, validation."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import pytest

from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.runtime.backpressure import Level
from alfred_daemon.runtime.health import (
    Alert,
    AlertThresholds,
    Health,
    HealthInputs,
    HealthMonitor,
)

CALM = HealthInputs(
    frame_time_ms=8.0,
    memory_mb=200.0,
    load=0.3,
    error_rate=0.0,
    queue_frames=3,
    workers_alive=4,
    workers_expected=4,
    level=Level.NORMAL,
)


def calm(**changes: Any) -> HealthInputs:
    return dataclasses.replace(CALM, **changes)


def monitor() -> HealthMonitor:
    return HealthMonitor(AlertThresholds())


# --- enums and thresholds ------------------------------------------------------------------


def test_health_values_are_the_spec_strings() -> None:
    assert [str(h) for h in Health] == ["healthy", "stressed", "overloaded", "failed"]
    assert Health("overloaded") is Health.OVERLOADED


def test_threshold_defaults() -> None:
    t = AlertThresholds()
    assert (t.frame_time_ms, t.memory_mb, t.load, t.error_rate, t.queue_frames) == (
        20.0,
        300.0,
        0.8,
        0.05,
        100,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_time_ms": 0.0}, "alerts.frame_time_ms = 0.0 must be a number above 0"),
        ({"memory_mb": -5.0}, "alerts.memory_mb = -5.0 must be a number above 0"),
        ({"load": math.nan}, "alerts.load = nan must be a number above 0"),
        ({"error_rate": 0.0}, "alerts.error_rate = 0.0 must be a number above 0"),
        ({"error_rate": 1.5}, "alerts.error_rate = 1.5 is out of range"),
        ({"queue_frames": 0}, "alerts.queue_frames = 0 must be a number above 0"),
        ({"memory_mb": math.inf}, "alerts.memory_mb = inf must be a number above 0"),
    ],
)
def test_threshold_validation_names_the_key(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        AlertThresholds(**kwargs)
    assert message in str(info.value)


# --- the health rule -----------------------------------------------------------------------


def health_of(inputs: HealthInputs) -> Health:
    m = monitor()
    m.evaluate(inputs, 1.0)
    return m.health


def test_calm_pipeline_is_healthy() -> None:
    m = monitor()
    assert m.health is Health.HEALTHY
    assert m.evaluate(CALM, 1.0) == []
    assert m.health is Health.HEALTHY
    assert m.active == {}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"workers_alive": 0}, Health.FAILED),
        # FAILED beats everything else.
        ({"workers_alive": 0, "level": Level.PAUSE_PROCESSING, "load": 2.0}, Health.FAILED),
        # No workers expected (e.g. still starting) is not a failure.
        ({"workers_alive": 0, "workers_expected": 0}, Health.HEALTHY),
        ({"level": Level.DROP_FRAMES}, Health.OVERLOADED),
        ({"level": Level.PAUSE_PROCESSING}, Health.OVERLOADED),
        ({"load": 1.0}, Health.OVERLOADED),
        ({"load": 0.99}, Health.STRESSED),  # above the load alert (0.8), below capacity
        ({"level": Level.REDUCE_QUALITY}, Health.STRESSED),
        ({"workers_alive": 3}, Health.STRESSED),
        ({"workers_alive": 1}, Health.STRESSED),
        ({"memory_mb": 301.0}, Health.STRESSED),
        ({"frame_time_ms": 25.0}, Health.STRESSED),
        ({"error_rate": 0.2}, Health.STRESSED),
        ({"queue_frames": 101}, Health.STRESSED),
        ({"load": 0.8, "memory_mb": 300.0, "queue_frames": 100}, Health.HEALTHY),
    ],
)
def test_health_rule(changes: dict[str, Any], expected: Health) -> None:
    assert health_of(calm(**changes)) is expected


def test_health_transitions_and_since() -> None:
    m = monitor()
    m.evaluate(CALM, 5.0)
    assert (m.health, m.transitions, m.since) == (Health.HEALTHY, 0, 5.0)
    m.evaluate(CALM, 6.0)
    assert m.since == 5.0  # unchanged state keeps its start time
    m.evaluate(calm(level=Level.REDUCE_QUALITY), 7.0)
    assert (m.health, m.transitions, m.since) == (Health.STRESSED, 1, 7.0)
    m.evaluate(calm(level=Level.DROP_FRAMES), 8.0)
    assert (m.health, m.transitions, m.since) == (Health.OVERLOADED, 2, 8.0)
    m.evaluate(calm(level=Level.DROP_FRAMES), 9.0)
    assert (m.transitions, m.since) == (2, 8.0)
    m.evaluate(CALM, 10.0)
    assert (m.health, m.transitions, m.since) == (Health.HEALTHY, 3, 10.0)


def test_first_evaluation_that_is_not_healthy_counts_as_a_transition() -> None:
    m = monitor()
    m.evaluate(calm(workers_alive=0), 3.0)
    assert (m.health, m.transitions, m.since) == (Health.FAILED, 1, 3.0)


# --- alert edges ---------------------------------------------------------------------------


def test_alert_is_raised_once_and_cleared_once() -> None:
    m = monitor()
    raised = m.evaluate(calm(memory_mb=350.0), 1.0)
    assert raised == [Alert(name="memory", value=350.0, threshold=300.0, active=True, at=1.0)]
    assert m.evaluate(calm(memory_mb=380.0), 2.0) == []  # still above: no new edge
    assert m.active == {"memory": raised[0]}  # kept as raised
    assert m.counts["memory"] == 1
    cleared = m.evaluate(calm(memory_mb=290.0), 3.0)
    assert cleared == [Alert(name="memory", value=290.0, threshold=300.0, active=False, at=3.0)]
    assert m.evaluate(calm(memory_mb=250.0), 4.0) == []
    assert m.active == {}
    assert m.counts["memory"] == 1


def test_value_equal_to_threshold_neither_raises_nor_keeps_an_alert() -> None:
    m = monitor()
    assert m.evaluate(calm(frame_time_ms=20.0), 1.0) == []
    assert [a.active for a in m.evaluate(calm(frame_time_ms=20.01), 2.0)] == [True]
    assert [a.active for a in m.evaluate(calm(frame_time_ms=20.0), 3.0)] == [False]


def test_counts_each_raise() -> None:
    m = monitor()
    for i, q in enumerate([150, 50, 150, 150, 50, 150]):
        m.evaluate(calm(queue_frames=q), float(i))
    assert m.counts == {"frame_time": 0, "memory": 0, "load": 0, "error_rate": 0, "queue": 3}
    assert set(m.active) == {"queue"}


def test_several_alerts_in_one_evaluation_are_reported_in_order() -> None:
    m = monitor()
    bad = calm(frame_time_ms=30.0, memory_mb=400.0, load=0.9, error_rate=0.1, queue_frames=200)
    edges = m.evaluate(bad, 1.0)
    assert [(a.name, a.active) for a in edges] == [
        ("frame_time", True),
        ("memory", True),
        ("load", True),
        ("error_rate", True),
        ("queue", True),
    ]
    assert set(m.active) == {"frame_time", "memory", "load", "error_rate", "queue"}
    edges = m.evaluate(calm(memory_mb=400.0), 2.0)
    assert [(a.name, a.active) for a in edges] == [
        ("frame_time", False),
        ("load", False),
        ("error_rate", False),
        ("queue", False),
    ]
    assert set(m.active) == {"memory"}
    assert m.health is Health.STRESSED


def test_alerts_clearing_returns_health_to_healthy() -> None:
    m = monitor()
    states: list[Health] = []
    for t, inputs in enumerate([calm(error_rate=0.5), CALM]):
        m.evaluate(inputs, float(t))
        states.append(m.health)
    assert states == [Health.STRESSED, Health.HEALTHY]
    assert m.transitions == 2


def test_nan_figure_leaves_its_alert_unchanged() -> None:
    m = monitor()
    m.evaluate(calm(frame_time_ms=30.0), 1.0)
    assert m.evaluate(calm(frame_time_ms=math.nan), 2.0) == []
    assert "frame_time" in m.active
    m2 = monitor()
    assert m2.evaluate(calm(frame_time_ms=math.nan), 1.0) == []
    assert m2.active == {}


def test_raise_logs_warning_and_clear_logs_info(caplog: pytest.LogCaptureFixture) -> None:
    m = monitor()
    with caplog.at_level(logging.INFO, logger="alfred_daemon.runtime.health"):
        m.evaluate(calm(frame_time_ms=25.14), 1.0)
        m.evaluate(calm(frame_time_ms=25.14), 2.0)  # no edge, no log
        m.evaluate(calm(frame_time_ms=12.0), 3.0)
    records = [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "alfred_daemon.runtime.health"
    ]
    assert records == [
        (logging.WARNING, "alert frame_time raised: average frame time 25.1 ms is above 20 ms"),
        (
            logging.INFO,
            "alert frame_time cleared: average frame time 12.0 ms is back at or below 20 ms",
        ),
    ]


# --- messages ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("alert", "message"),
    [
        (Alert("frame_time", 25.14, 20.0, True, 0.0), "average frame time 25.1 ms is above 20 ms"),
        (Alert("memory", 350.0, 300.0, True, 0.0), "memory 350.0 MB is above 300 MB"),
        (Alert("load", 0.934, 0.8, True, 0.0), "load 0.93 is above 0.8"),
        (Alert("error_rate", 0.075, 0.05, True, 0.0), "error rate 7.5% is above 5%"),
        (Alert("queue", 150.0, 100.0, True, 0.0), "queue 150 frames is above 100 frames"),
        (Alert("memory", 280.0, 300.0, False, 0.0), "memory 280.0 MB is back at or below 300 MB"),
        (Alert("queue", 40.0, 100.0, False, 0.0), "queue 40 frames is back at or below 100 frames"),
    ],
)
def test_alert_messages(alert: Alert, message: str) -> None:
    assert alert.message == message
