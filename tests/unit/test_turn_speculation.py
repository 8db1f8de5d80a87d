"""Smart Turn asked speculatively (``turn.speculative``): with the speculative final,
``stt.postroll_ms`` into a pause the VAD has not confirmed; the answer waits for the
confirmation, and is dropped unseen if speech resumes first."""

from __future__ import annotations

import pytest

from alfred_daemon.engine.core import SessionCore
from alfred_daemon.engine.events import (
    Event,
    FinalTranscription,
    SpeechEnded,
    TurnEnded,
    TurnEndReason,
    TurnResumed,
)
from alfred_daemon.engine.jobs import JobKind

from .test_core import (
    BASE,
    FALLBACK_WINDOWS,
    MIN_SILENCE_WINDOWS,
    SPEC_POSTROLL_WINDOWS,
    Driver,
    W,
    of,
    run_answering,
    speculative,
    speech_and_pauses,
)


def test_the_ask_goes_with_the_speculative_final_and_is_answered_at_the_confirmation() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS - 1)
    assert d.pending_of(JobKind.TURN) == []
    d.silence(1)
    final = d.only_pending(JobKind.FINAL)
    ask = d.only_pending(JobKind.TURN)
    assert ask.end == final.end == (30 + SPEC_POSTROLL_WINDOWS) * W
    assert d.core.is_speculative(ask)
    assert d.core.stats.turn_speculations == 1
    d.reply(ask, probability=0.9)
    d.reply(final, text="early bird")
    assert of(d.drain(), TurnEnded) == []  # not before the VAD confirms the pause
    d.silence(MIN_SILENCE_WINDOWS - SPEC_POSTROLL_WINDOWS)
    events = d.drain()
    assert [type(e) for e in events] == [SpeechEnded, FinalTranscription, TurnEnded]
    ended = of(events, TurnEnded)[0]
    assert (ended.probability, ended.reason, ended.transcript) == (
        0.9, TurnEndReason.MODEL, "early bird")
    assert ended.audio_offset_ms == (30 + MIN_SILENCE_WINDOWS) * 32  # dated at the confirmation
    assert d.pending_of(JobKind.TURN) == []  # the confirmation asked no second time
    assert d.core.stats.turn_speculations_abandoned == 0


def test_an_answer_that_comes_after_the_confirmation_is_applied_when_it_comes() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS)
    ask = d.only_pending(JobKind.TURN)
    d.reply(d.only_pending(JobKind.FINAL), text="late answer")
    d.silence(MIN_SILENCE_WINDOWS - SPEC_POSTROLL_WINDOWS)
    assert not d.core.is_speculative(ask)  # adopted by the confirmation: owed now
    assert d.core.wants(ask)
    assert d.only_pending(JobKind.TURN) is ask
    assert of(d.drain(), TurnEnded) == []
    d.reply(ask, probability=0.8)
    ended = of(d.drain(), TurnEnded)
    assert [(e.probability, e.transcript) for e in ended] == [(0.8, "late answer")]


def test_speech_resuming_drops_the_ask_unseen_and_the_next_pause_is_asked_about() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS + 1)
    ask = d.only_pending(JobKind.TURN)
    d.speech(1)  # speech resumes before the VAD confirms the pause
    assert not d.core.wants(ask)
    assert d.core.stats.turn_speculations_abandoned == 1
    d.reply(ask, probability=0.99)  # an answer that comes back anyway is ignored
    assert d.core.stats.stale_results == 1
    d.speech(10)
    events = d.drain()
    # The client never saw that pause end (no SpeechEnded): nothing to take back.
    assert of(events, TurnResumed) == [] and of(events, TurnEnded) == []
    d.silence(MIN_SILENCE_WINDOWS)
    second = [j for j in d.pending_of(JobKind.TURN) if j is not ask]
    assert len(second) == 1 and second[0].end == (30 + 4 + 1 + 10 + SPEC_POSTROLL_WINDOWS) * W
    d.reply(d.pending_of(JobKind.FINAL)[-1], text="one sentence")  # [0]: the abandoned one
    d.reply(second[0], probability=0.7)
    assert [e.probability for e in of(d.drain(), TurnEnded)] == [0.7]


@pytest.mark.parametrize("turn", [{"speculative": False}, {"silence_ms": 300}])
def test_no_speculative_ask_when_off_or_when_the_ask_comes_after_the_confirmation(
    turn: dict[str, object],
) -> None:
    d = Driver(speculative().replace(turn=turn))
    d.speech(30)
    d.silence(MIN_SILENCE_WINDOWS - 1)
    assert d.pending_of(JobKind.FINAL)  # the final is still speculated
    assert d.pending_of(JobKind.TURN) == []
    assert d.core.stats.turn_speculations == 0


def test_an_incomplete_answer_is_the_answer_about_the_pause() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS)
    d.reply(d.only_pending(JobKind.TURN), probability=0.2)
    d.reply(d.only_pending(JobKind.FINAL), text="and then")
    d.silence(FALLBACK_WINDOWS - SPEC_POSTROLL_WINDOWS - 1)
    assert d.pending_of(JobKind.TURN) == []  # not asked again
    assert of(d.drain(), TurnEnded) == []
    d.silence(2)
    ended = of(d.drain(), TurnEnded)
    assert [(e.reason, e.probability) for e in ended] == [(TurnEndReason.SILENCE_FALLBACK, 0.2)]


def test_speculative_and_confirmed_asks_give_identical_events() -> None:
    """With a model whose answer does not depend on where the pause is cut, asking early
    changes when the answer is known, never what comes out (events compared whole)."""
    probs = speech_and_pauses(7, 80)

    def run(on: bool) -> tuple[list[Event], SessionCore]:
        return run_answering(BASE.replace(stt={"postroll_ms": 96}, turn={"speculative": on}),
                             probs, lambda job: ((job.ref_id * 3 + job.generation) % 7) / 7)

    with_spec, core_on = run(True)
    without, core_off = run(False)
    assert core_on.stats.turn_speculations > 5
    assert core_on.stats.turn_speculations_abandoned > 0
    assert core_off.stats.turn_speculations == 0
    assert with_spec == without
    assert len(of(with_spec, TurnEnded)) > 3


def test_turn_detection_turned_off_mid_pause_drops_the_speculation() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS)
    ask = d.only_pending(JobKind.TURN)
    d.reply(ask, probability=0.95)
    d.core.reconfigure(speculative().replace(turn={"enabled": False}))
    d.silence(MIN_SILENCE_WINDOWS - SPEC_POSTROLL_WINDOWS)
    assert not d.core.wants(ask)  # no longer pins its audio
    assert d.core.stats.turn_speculations_abandoned == 1
    d.reply(d.only_pending(JobKind.FINAL), text="no model verdict")
    assert of(d.drain(), TurnEnded) == []  # its answer was not applied


def test_with_a_short_postroll_the_ask_still_waits_for_the_lead() -> None:
    # Postroll 64 ms: the final is speculated after 2 windows; the ask no earlier than
    # 128 ms before the confirmation (7 windows, 224 ms), i.e. after 3 (96 ms), the
    # earliest cut turn_silence_bench validated.
    d = Driver(speculative(postroll_ms=64))
    d.speech(30)
    d.silence(2)
    assert d.only_pending(JobKind.FINAL).end == (30 + 2) * W
    assert d.pending_of(JobKind.TURN) == []
    d.silence(1)
    assert d.only_pending(JobKind.TURN).end == (30 + 3) * W


def test_with_a_long_min_silence_the_ask_comes_at_most_the_lead_before_the_confirmation(
) -> None:
    d = Driver(speculative().replace(vad={"min_silence_ms": 1000}))
    d.speech(30)
    lead_windows = 28  # ceil((1000 - 128) / 32): 896 ms into the pause; 32 confirm
    d.silence(lead_windows - 1)
    assert d.pending_of(JobKind.FINAL)  # the final is speculated from the postroll on
    assert d.pending_of(JobKind.TURN) == []
    d.silence(1)
    assert d.only_pending(JobKind.TURN).end == (30 + lead_windows) * W
