"""The soak benchmark's own logic, without a daemon: its session plans are reproducible,
it attributes finals to the clips they transcribe, and it finds gaps and duplicates in
event sequence numbers. (The soak itself: ``benchmarks/soak.py``, minutes of real load.)"""

from __future__ import annotations

import math
import random
import sys

import numpy as np

from ..conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import loadgen
import soak


def test_plans_are_reproducible_and_sound() -> None:
    pool = loadgen.realistic_pool()
    noise = loadgen.noise_floor(1, 20 * loadgen.RATE)
    first = [soak.plan_session(random.Random(7), pool, noise) for _ in range(2)]
    assert first[0] == first[1]
    plans = [soak.plan_session(random.Random(i), pool, noise) for i in range(40)]
    assert {p.outcome for p in plans} == set(soak.OUTCOMES)
    assert {p.kind for p in plans} == {"clips", "monologue"}
    for p in plans:
        assert len(p.pcm) % (2 * soak.FRAME) == 0
        samples = np.frombuffer(p.pcm, "<i2")
        # The noise floor is everywhere: no run of 20 ms of digital silence.
        frames = samples[: samples.size // 320 * 320].reshape(-1, 320)
        assert np.abs(frames).max(axis=1).min() > 0
        ends = [b for _, _, b in p.clips]
        assert ends == sorted(ends) and ends[-1] <= p.seconds * 1000
        if p.kind == "monologue":
            assert p.seconds >= soak.MONOLOGUE_S
        if p.outcome == "clean":
            assert p.cut_frame is None
        else:
            assert p.cut_frame is not None and 0 < p.cut_frame < len(p.frames)
    warm = soak.plan_session(random.Random(3), pool, noise, warm_up=True)
    assert (warm.outcome, warm.kind, len(warm.clips)) == ("clean", "clips", 1)


def test_finals_are_attributed_by_midpoint() -> None:
    clips = [("a.wav", 500, 4000), ("b.wav", 4000, 9000), ("a.wav", 9000, 12000)]
    finals = [(600, 3000, "one"), (3500, 4600, "two"), (4700, 6000, "three"),
              (9100, 13000, "late")]
    got = soak.attribute_finals(finals, clips)
    assert got == {"a.wav#0": ["one"], "b.wav#1": ["two", "three"], "a.wav#2": ["late"]}
    assert soak.attribute_finals([], clips) == {"a.wav#0": [], "b.wav#1": [], "a.wav#2": []}


def test_sequence_problems() -> None:
    assert soak.sequence_problem([1, 2, 3]) == ""
    assert soak.sequence_problem([]) == "no numbered event"
    assert "missing event_sequence [3]" in soak.sequence_problem([1, 2, 4])
    assert "missing event_sequence [1]" in soak.sequence_problem([2, 3])
    assert "duplicate event_sequence [2]" in soak.sequence_problem([1, 2, 2, 3])
    assert "out of order" in soak.sequence_problem([1, 3, 2])


def test_whisper_wer_reads_numbers_as_formatting() -> None:
    assert soak.whisper_wer("about fourteen fifty five", "About 1455.") == 0.0
    assert soak.whisper_wer("one two three", "1. 2. 3.") == 0.0
    assert soak.whisper_wer("forty two line bible", "42 line Bible") == 0.0
    assert soak.whisper_wer("the child almost hurt the small dog",
                            "The child almost hurt the dog.") > 0.0


def test_marks_count_from_the_end_of_the_warm_up() -> None:
    marks = soak.mark_times(1800.0, 300.0)
    assert marks == [("start", 300.0), ("10 min", 900.0), ("20 min", 1500.0),
                     ("30 min", 2100.0)]


def test_the_pss_slope_sees_a_steady_rise_not_the_scatter_around_a_level() -> None:
    level = [{"t_s": 300.0 + 30 * i, "pss_mb": 450.0 + (40 if i % 2 else -40)}
             for i in range(60)]
    assert abs(soak.pss_slope(level, 300.0)) < 2.0
    leak = [{"t_s": 30.0 * i, "pss_mb": 400.0 + i} for i in range(80)]  # 1 MB per 30 s
    assert soak.pss_slope(leak, 300.0) == 20.0
    assert math.isnan(soak.pss_slope(leak[:5], 300.0))  # too few points after the warm-up
