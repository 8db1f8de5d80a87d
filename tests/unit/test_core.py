"""Unit tests of :class:`SessionCore`, driven with synthetic VAD probabilities.

No model runs here: each 32 ms window gets a made-up speech probability, and every job the
core issues is answered by hand with a :class:`JobResult`. Timings below use the default
config unless a test says otherwise:

* a window is 512 samples = 32 ms;
* ``vad.min_speech_ms = 160``  -> speech is confirmed on its 5th window;
* ``vad.min_silence_ms = 200`` -> silence is confirmed on its 7th window (7 x 32 = 224 ms);
* ``stt.preroll_ms = postroll_ms = 200`` -> 3200 samples;
* ``stt.min_partial_audio_ms = partial_interval_ms = 500`` -> 16 windows (8192 samples);
* ``turn.silence_ms = 200``, ``turn.fallback_silence_ms = 3000`` -> 94 windows.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

from alfred_daemon.engine.config import EngineConfig, SttConfig, TurnConfig, VadConfig
from alfred_daemon.engine.events import (
    Event,
    FinalTranscription,
    FrameProcessed,
    Interruption,
    PartialTranscription,
    SpeechEnded,
    SpeechStarted,
    TurnEnded,
    TurnEndReason,
    TurnResumed,
)
from alfred_daemon.engine.jobs import Job, JobKind, JobResult
from alfred_daemon.engine.session import SessionCore
from alfred_daemon.engine.vad import WINDOW

W = WINDOW  # samples per window
WMS = 32  # milliseconds per window
SPEECH = 0.9
SILENCE = 0.02
PREROLL = 3200  # default stt.preroll_ms in samples
POSTROLL = 3200
MIN_SPEECH_WINDOWS = 5
MIN_SILENCE_WINDOWS = 7
PARTIAL_WINDOWS = 16
FALLBACK_WINDOWS = 94  # ceil(48000 / 512)

E = TypeVar("E", bound=Event)

BASE = EngineConfig(
    vad=VadConfig(threshold=0.5, neg_threshold=None, min_speech_ms=160, min_silence_ms=200),
    stt=SttConfig(
        beam_size=5,
        partials=True,
        partial_interval_ms=500,
        min_partial_audio_ms=500,
        preroll_ms=200,
        postroll_ms=200,
        max_utterance_s=25.0,
        # The mechanics below predate these two: commits from the first partial on, no
        # prompt from earlier finals (tests/unit/test_anchor.py covers both).
        min_commit_audio_ms=0,
        context_s=0.0,
    ),
    turn=TurnConfig(
        enabled=True, silence_ms=200, threshold=0.5, fallback_silence_ms=3000, max_audio_s=8.0
    ),
)
"""The timings the constants above assume, pinned so that changed defaults do not move them."""


def of(events: Sequence[Event], cls: type[E]) -> list[E]:
    return [e for e in events if isinstance(e, cls)]


def no_partials(**turn: object) -> EngineConfig:
    return BASE.replace(stt={"partials": False}, **({"turn": turn} if turn else {}))


def agreement(n: int) -> EngineConfig:
    """Default config with LocalAgreement-n for stable partial words."""
    return BASE.replace(stt={"stable_agreement": n})


class Driver:
    """Feeds windows to a core and keeps track of the jobs it issued."""

    def __init__(self, config: EngineConfig | None = None, *, turn_model: bool = True) -> None:
        self.core = SessionCore(config or BASE, turn_model=turn_model)
        self.issued: list[Job] = []
        self.pending: list[Job] = []
        self.events: list[Event] = []

    def feed(self, probs: Iterable[float]) -> list[Job]:
        new: list[Job] = []
        for p in probs:
            self.core.on_vad(p)
            new += self.collect()
        return new

    def speech(self, n: int) -> list[Job]:
        return self.feed([SPEECH] * n)

    def silence(self, n: int) -> list[Job]:
        return self.feed([SILENCE] * n)

    def collect(self) -> list[Job]:
        jobs = self.core.take_jobs()
        self.issued += jobs
        self.pending += jobs
        return jobs

    def reply(
        self, job: Job, text: str = "", probability: float = 0.0, error: str | None = None
    ) -> list[Job]:
        if job in self.pending:
            self.pending.remove(job)
        self.core.on_result(JobResult(job, text=text, probability=probability, error=error))
        return self.collect()

    def pending_of(self, kind: JobKind) -> list[Job]:
        return [j for j in self.pending if j.kind is kind]

    def only_pending(self, kind: JobKind) -> Job:
        jobs = self.pending_of(kind)
        assert len(jobs) == 1, jobs
        return jobs[0]

    def drain(self) -> list[Event]:
        events = self.core.drain_events()
        self.events += events
        return events


def offsets(events: Sequence[Event]) -> list[int]:
    return [e.audio_offset_ms for e in events]


def assert_monotonic(events: Sequence[Event]) -> None:
    offs = offsets(events)
    assert offs == sorted(offs), [(type(e).__name__, e.audio_offset_ms) for e in events]


# --------------------------------------------------------------------------- VAD hysteresis


def test_speech_started_is_retroactive_to_first_speech_window() -> None:
    d = Driver()
    d.silence(3)
    d.speech(MIN_SPEECH_WINDOWS - 1)
    assert d.drain() == []  # 128 ms of speech is not yet 160 ms
    d.speech(1)
    events = d.drain()
    assert events == [SpeechStarted(audio_offset_ms=3 * WMS, utterance_id=0)]


def test_short_click_is_not_speech() -> None:
    d = Driver()
    d.speech(MIN_SPEECH_WINDOWS - 1)
    d.silence(2)
    d.speech(MIN_SPEECH_WINDOWS - 1)
    d.silence(200)
    assert d.drain() == []
    assert d.issued == []


def test_speech_started_min_speech_configurable() -> None:
    d = Driver(BASE.replace(vad={"min_speech_ms": 320}))
    d.silence(2)
    d.speech(9)
    assert d.drain() == []
    d.speech(1)
    assert of(d.drain(), SpeechStarted)[0].audio_offset_ms == 2 * WMS

    d0 = Driver(BASE.replace(vad={"min_speech_ms": 0}))
    d0.silence(4)
    d0.speech(1)
    assert d0.drain() == [SpeechStarted(audio_offset_ms=4 * WMS, utterance_id=0)]


def test_speech_ended_is_start_of_silence_after_min_silence() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS - 1)
    assert of(d.drain(), SpeechEnded) == []
    d.silence(1)
    ended = of(d.drain(), SpeechEnded)
    assert ended == [SpeechEnded(audio_offset_ms=20 * WMS, utterance_id=0, duration_ms=20 * WMS)]


def test_short_pause_and_hysteresis_dip_do_not_end_speech() -> None:
    d = Driver(no_partials())
    d.speech(10)
    d.silence(MIN_SILENCE_WINDOWS - 1)  # 192 ms < 200 ms
    d.speech(5)
    # 0.4 is below threshold 0.5 but above the default neg_threshold 0.35: still speech
    d.feed([0.4] * 30)
    d.speech(5)
    assert of(d.drain(), SpeechEnded) == []
    d.silence(MIN_SILENCE_WINDOWS)
    ended = of(d.drain(), SpeechEnded)
    assert len(ended) == 1
    assert ended[0].audio_offset_ms == (10 + 6 + 5 + 30 + 5) * WMS
    assert len(of(d.events, SpeechStarted)) == 1


# --------------------------------------------------------------------------- final jobs


def test_final_job_issued_at_speech_end_with_preroll_and_postroll() -> None:
    d = Driver(no_partials())
    d.silence(10)
    assert d.speech(30) == []
    d.silence(MIN_SILENCE_WINDOWS - 1)
    assert d.pending_of(JobKind.FINAL) == []
    d.silence(1)
    final = d.only_pending(JobKind.FINAL)
    assert final.ref_id == 0
    assert final.start == 10 * W - PREROLL
    assert final.end == 40 * W + POSTROLL
    assert final.beam_size == BASE.stt.beam_size
    assert final.prefix == ""


def test_final_job_start_clamped_at_zero() -> None:
    d = Driver(no_partials())
    d.silence(2)  # speech starts at sample 1024, less than the pre-roll
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    assert d.only_pending(JobKind.FINAL).start == 0


def test_final_transcription_event_fields() -> None:
    d = Driver(no_partials())
    d.silence(10)
    d.speech(30)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="  hello there ", probability=0.0)
    finals = of(d.drain(), FinalTranscription)
    assert len(finals) == 1
    assert finals[0].text == "hello there"
    assert finals[0].start_ms == 10 * WMS
    assert finals[0].audio_offset_ms == 40 * WMS  # where speech ended
    assert finals[0].utterance_id == 0


# --------------------------------------------------------------------------- partials


def test_partials_issued_at_interval_when_answered() -> None:
    d = Driver()
    partial_ends: list[int] = []
    for _ in range(4 * PARTIAL_WINDOWS):
        for job in d.speech(1):
            assert job.kind is JobKind.PARTIAL
            partial_ends.append(job.end)
            d.reply(job, text="hello")
    assert partial_ends == [k * PARTIAL_WINDOWS * W for k in range(1, 5)]
    beam = BASE.stt.partial_beam_size
    assert all(j.start == 0 and j.beam_size == beam for j in d.issued)


def test_never_two_partials_in_flight() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    first = d.only_pending(JobKind.PARTIAL)
    assert first.end == PARTIAL_WINDOWS * W
    d.speech(5 * PARTIAL_WINDOWS)  # long past the interval, but the first is unanswered
    assert d.pending_of(JobKind.PARTIAL) == [first]
    d.reply(first, text="hello")
    assert d.pending_of(JobKind.PARTIAL) == []
    d.speech(1)  # the interval has long elapsed: the next one goes out at once
    second = d.only_pending(JobKind.PARTIAL)
    assert second.end == (6 * PARTIAL_WINDOWS + 1) * W


def test_a_queued_partial_extends_to_the_audio_analysed_when_it_starts() -> None:
    """An executor that starts a queued partial late gets the newest audio in it (the wait
    does not age the partial), the result is applied as that longer job, and the next
    partial's interval counts from the new end."""
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    queued = d.only_pending(JobKind.PARTIAL)
    d.speech(10)  # analysed while the partial waited for a lane
    started = d.core.extend(queued)
    assert (started.start, started.end) == (queued.start, (PARTIAL_WINDOWS + 10) * W)
    assert d.core.wants(started)
    assert d.core.extend(started) is started  # nothing new since: unchanged
    d.pending = [started]
    d.reply(started, text="hello there")
    partial = of(d.drain(), PartialTranscription)[-1]
    assert partial.audio_offset_ms == (PARTIAL_WINDOWS + 10) * WMS
    d.speech(PARTIAL_WINDOWS - 1)
    assert d.pending_of(JobKind.PARTIAL) == []  # interval measured from the extended end
    d.speech(1)
    assert d.only_pending(JobKind.PARTIAL).end == (2 * PARTIAL_WINDOWS + 10) * W


def test_extend_leaves_paused_ended_and_other_jobs_alone() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    queued = d.only_pending(JobKind.PARTIAL)
    d.silence(2)  # a pause has begun: silence is not what a partial should show
    assert d.core.extend(queued) is queued
    d.silence(MIN_SILENCE_WINDOWS)  # the utterance ended
    assert d.core.extend(queued) is queued
    d.reply(queued, text="hello")  # the final waited for it
    final = d.only_pending(JobKind.FINAL)
    assert d.core.extend(final) is final


def test_a_queued_partial_is_superseded_once_its_utterance_pauses() -> None:
    """The final waits for a partial in flight; a partial still queued when the speech
    pauses is better skipped, and then the final (here the speculative one) goes at once."""
    d = Driver(speculative(partials=True))
    d.speech(PARTIAL_WINDOWS)
    queued = d.only_pending(JobKind.PARTIAL)
    assert not d.core.superseded(queued)  # still speaking: it is wanted
    d.silence(SPEC_POSTROLL_WINDOWS)
    assert d.pending_of(JobKind.FINAL) == []  # the speculation waits for the partial
    assert d.core.superseded(queued)
    d.pending.remove(queued)
    d.core.on_result(JobResult.skip(queued, "superseded by the final"))
    (spec,) = d.collect()
    assert spec.kind is JobKind.FINAL and d.core.is_speculative(spec)
    assert of(d.drain(), PartialTranscription) == []  # a skipped partial shows nothing
    assert not d.core.superseded(spec)


def test_a_partial_of_an_utterance_that_ended_is_superseded() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    queued = d.only_pending(JobKind.PARTIAL)
    d.silence(MIN_SILENCE_WINDOWS)
    assert d.pending_of(JobKind.FINAL) == []  # held for the partial
    assert d.core.superseded(queued)
    d.pending.remove(queued)
    d.core.on_result(JobResult.skip(queued, "superseded by the final"))
    assert JobKind.FINAL in [j.kind for j in d.collect()]


def test_no_partials_when_disabled() -> None:
    d = Driver(no_partials())
    d.speech(10 * PARTIAL_WINDOWS)
    d.silence(MIN_SILENCE_WINDOWS)
    assert [j.kind for j in d.issued] == [JobKind.FINAL, JobKind.TURN]


def test_no_partial_during_pending_silence() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS - 2)
    d.silence(MIN_SILENCE_WINDOWS - 1)  # silence not yet confirmed: no partial of silence
    assert d.pending_of(JobKind.PARTIAL) == []


def test_final_waits_for_partial_in_flight_at_utterance_end() -> None:
    """The final's prefix must not depend on which of the two decodes returns first: the
    multi-process runtime must reproduce the inline driver's finals."""
    d = Driver(agreement(2))
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="hello world")
    d.speech(PARTIAL_WINDOWS)
    partial = d.only_pending(JobKind.PARTIAL)
    d.silence(MIN_SILENCE_WINDOWS)
    assert d.pending_of(JobKind.FINAL) == []  # held behind the partial
    assert of(d.drain(), SpeechEnded)  # but the speech end is reported at once
    d.reply(partial, text="hello world again")
    final = d.only_pending(JobKind.FINAL)
    assert final.prefix == "hello world"  # the late hypothesis counted (agreement 2)
    assert d.core.stats.stale_results == 0
    d.reply(final, text="hello world again")
    events = d.drain()
    assert of(events, PartialTranscription) == []  # no partial after its SpeechEnded
    assert [e.text for e in of(events, FinalTranscription)] == ["hello world again"]
    assert_monotonic(d.events)


def test_held_final_is_issued_when_the_partial_fails() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    partial = d.only_pending(JobKind.PARTIAL)
    d.silence(MIN_SILENCE_WINDOWS)
    d.core.on_result(JobResult.skip(partial, "shed"))
    d.pending.remove(partial)
    d.collect()
    final = d.only_pending(JobKind.FINAL)
    assert final.prefix == ""
    assert d.core.stats.job_errors == 0  # a skipped job is not an error
    d.reply(final, text="hello")
    assert [e.text for e in of(d.drain(), FinalTranscription)] == ["hello"]


def test_skipped_windows_hold_vad_state_and_keep_offsets() -> None:
    d = Driver(no_partials())
    d.speech(10)
    d.core.on_skipped(5)
    assert d.core.position == 15 * WINDOW
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    assert final.end >= 15 * WINDOW  # the final spans the skipped audio
    ended = of(d.drain(), SpeechEnded)
    assert [e.audio_offset_ms for e in ended] == [15 * 32]


def test_skipped_windows_in_silence_reach_a_final() -> None:
    """Words spoken while the VAD of their windows was skipped are not lost: a gap in
    silence is taken as speech, so the utterance (and its final) starts at the gap."""
    d = Driver(no_partials())
    d.silence(20)
    d.core.on_skipped(40)
    d.silence(MIN_SILENCE_WINDOWS)
    events = d.drain()
    started = of(events, SpeechStarted)
    assert [e.audio_offset_ms for e in started] == [20 * 32]
    final = d.only_pending(JobKind.FINAL)
    assert final.start <= 20 * WINDOW and final.end >= 60 * WINDOW
    d.reply(final, text="ask not")
    assert [e.text for e in of(d.drain(), FinalTranscription)] == ["ask not"]


def test_skipped_windows_cancel_a_pause_before_them() -> None:
    """A silence that began before the gap does not end the utterance before the gap's
    end: the gap may have held the rest of the sentence."""
    d = Driver(no_partials())
    d.speech(10)
    d.silence(3)
    d.core.on_skipped(20)
    d.silence(MIN_SILENCE_WINDOWS)
    ended = of(d.drain(), SpeechEnded)
    assert [e.audio_offset_ms for e in ended] == [33 * 32]
    final = d.only_pending(JobKind.FINAL)
    assert final.end >= 33 * WINDOW


def test_posted_events_queue_behind_unfinished_final() -> None:
    d = Driver(no_partials())
    d.speech(10)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    d.drain()
    d.core.post(TurnResumed(audio_offset_ms=d.core.position // 16, turn_id=99))
    assert d.drain() == []
    d.reply(final, text="hi")
    assert [type(e) for e in d.drain()] == [FinalTranscription, TurnResumed]


def test_partial_error_and_empty_text_emit_nothing_but_free_the_slot() -> None:
    d = Driver()
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), error="RuntimeError: boom")
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="")
    d.speech(PARTIAL_WINDOWS)
    assert len(d.pending_of(JobKind.PARTIAL)) == 1
    assert of(d.drain(), PartialTranscription) == []
    assert d.core.stats.job_errors == 1


def test_stable_text_prefix_of_text_of_later_partials_and_of_final() -> None:
    hypotheses = [
        "the quick",
        "the quick brown fox",
        "the quick brown fox jumps",
        "a quick brown box jumps over",  # the model changes its mind about committed words
        "the quick brown fox jumps over the",
    ]
    d = Driver(agreement(2))
    for hyp in hypotheses:
        d.speech(PARTIAL_WINDOWS)
        d.reply(d.only_pending(JobKind.PARTIAL), text=hyp)
    d.silence(MIN_SILENCE_WINDOWS)
    final_job = d.only_pending(JobKind.FINAL)
    # the final's decoder disagrees with the committed words (and capitalises)
    d.reply(final_job, text="The quick brown fox jumped over the lazy dog.")
    events = d.drain()
    partials = of(events, PartialTranscription)
    assert len(partials) == len(hypotheses)
    (final,) = of(events, FinalTranscription)

    previous = ""
    for p in partials:
        assert p.text.startswith(p.stable_text)
        assert p.stable_text.startswith(previous)
        previous = p.stable_text
    assert partials[1].stable_text == "the quick"
    assert partials[-1].stable_text == "the quick brown fox jumps over"
    assert partials[3].text == "the quick brown fox jumps over"  # committed words kept
    assert final_job.prefix == partials[-1].stable_text
    for p in partials:
        assert final.text.startswith(p.stable_text)
        assert final.text.split()[: len(p.stable_text.split())] == p.stable_text.split()
    assert final.text == "the quick brown fox jumps over the lazy dog."


def test_final_keeps_committed_words_whole() -> None:
    """Committed words never change: the final must start with them as *words*.

    A decoder continuing the prefix "hello world" with a token that has no leading space
    ("wide") yields "hello worldwide ..." -- a string that starts with the prefix but
    whose second word is no longer the committed "world".
    """
    d = Driver(agreement(2))
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="hello world")
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="hello world again")
    d.silence(MIN_SILENCE_WINDOWS)
    final_job = d.only_pending(JobKind.FINAL)
    assert final_job.prefix == "hello world"
    d.reply(final_job, text="hello worldwide again")
    (final,) = of(d.drain(), FinalTranscription)
    assert final.text.split()[:2] == ["hello", "world"], final.text


# --------------------------------------------------------------------------- ordering contract


def test_events_after_unfinished_final_are_held() -> None:
    d = Driver(no_partials(silence_ms=2000, fallback_silence_ms=10_000))
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final0 = d.only_pending(JobKind.FINAL)
    first = d.drain()
    assert [type(e) for e in first] == [SpeechStarted, SpeechEnded]
    d.silence(10)
    d.speech(20)  # utterance 1 starts while final 0 is still decoding
    d.silence(MIN_SILENCE_WINDOWS)
    final1 = d.pending_of(JobKind.FINAL)[-1]
    assert final1 is not final0
    assert d.drain() == []  # held behind final 0
    assert d.drain() == []  # still held: draining is idempotent
    d.reply(final1, text="second")  # out of order: final 1 done first
    assert d.drain() == []
    d.reply(final0, text="first")
    events = d.drain()
    assert [type(e) for e in events] == [
        FinalTranscription,
        SpeechStarted,
        SpeechEnded,
        FinalTranscription,
    ]
    assert [e.text for e in of(events, FinalTranscription)] == ["first", "second"]
    assert [e.utterance_id for e in of(events, SpeechStarted)] == [1]
    assert_monotonic(d.events)


def test_drain_stops_exactly_at_the_unfilled_final() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final0 = d.only_pending(JobKind.FINAL)
    d.silence(3)
    d.speech(MIN_SPEECH_WINDOWS)
    assert [type(e) for e in d.drain()] == [SpeechStarted, SpeechEnded]
    d.reply(final0, text="hi")
    # the pause had been put to Smart Turn (turn.silence_ms = min_silence_ms): TurnResumed
    assert [type(e) for e in d.drain()] == [FinalTranscription, TurnResumed, SpeechStarted]


def test_offsets_monotonic_over_a_conversation_with_late_results() -> None:
    """Two turns, several utterances, partials answered late, finals answered later still."""
    d = Driver()
    rng = random.Random(7)
    lag: dict[int, int] = {}  # job id -> windows until answered

    def step(p: float) -> None:
        d.feed([p])
        for job in list(d.pending):
            lag.setdefault(job.job_id, rng.randint(0, 25))
            if lag[job.job_id] == 0:
                if job.kind is JobKind.TURN:
                    d.reply(job, probability=0.2 if job.generation == 0 else 0.9)
                else:
                    d.reply(job, text=f"words of job {job.job_id}")
            else:
                lag[job.job_id] -= 1
        d.drain()

    for seg_speech, seg_silence in [(40, 20), (60, 120), (30, 15), (45, 130)]:
        for _ in range(seg_speech):
            step(rng.uniform(0.6, 1.0))
        for _ in range(seg_silence):
            step(rng.uniform(0.0, 0.2))
    for _ in range(60):
        step(0.0)
    assert d.pending == []
    assert_monotonic(d.events)
    assert len(of(d.events, TurnEnded)) >= 2
    assert of(d.events, TurnResumed)
    # every final precedes every event that refers to later audio
    for i, ev in enumerate(d.events):
        if isinstance(ev, FinalTranscription):
            assert all(e.audio_offset_ms <= ev.audio_offset_ms for e in d.events[:i])
    # each TurnEnded carries exactly the finals that came out since the previous one
    texts: list[str] = []
    for ev in d.events:
        if isinstance(ev, FinalTranscription) and ev.text:
            texts.append(ev.text)
        elif isinstance(ev, TurnEnded):
            assert ev.transcript == " ".join(texts)
            texts = []


def test_turn_closed_while_speech_is_being_confirmed_keeps_offsets_monotonic() -> None:
    """A Smart Turn result arriving during the first windows of new (not yet confirmed)
    speech must not make a TurnEnded precede an earlier-offset SpeechStarted."""
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    turn = d.only_pending(JobKind.TURN)
    d.reply(final, text="hello")
    d.silence(5)
    d.speech(2)  # new speech, not yet 160 ms
    d.reply(turn, probability=0.9)
    d.speech(MIN_SPEECH_WINDOWS)
    d.drain()
    # The user was already speaking again when the "complete" verdict arrived: the decision
    # is dropped (TurnResumed), not acted on with an offset behind the new SpeechStarted.
    assert of(d.events, TurnEnded) == []
    assert len(of(d.events, TurnResumed)) == 1
    assert of(d.events, SpeechStarted)[-1].audio_offset_ms == (20 + 7 + 5) * WMS
    assert_monotonic(d.events)
    # The turn then ends normally, carrying both utterances.
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="again")
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    d.drain()
    (ended,) = of(d.events, TurnEnded)
    assert ended.transcript == "hello again"
    assert_monotonic(d.events)


def test_complete_verdict_during_a_click_is_applied_once_the_click_is_rejected() -> None:
    """Speech-like windows too short to be speech delay the decision, not lose it."""
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="hello")
    turn = d.only_pending(JobKind.TURN)
    d.speech(2)  # a click: shorter than vad.min_speech_ms
    d.reply(turn, probability=0.9)
    d.drain()
    assert of(d.events, TurnEnded) == []
    d.silence(1)
    d.drain()
    (ended,) = of(d.events, TurnEnded)
    assert ended.reason is TurnEndReason.MODEL and ended.transcript == "hello"
    assert_monotonic(d.events)


# --------------------------------------------------------------------------- turns


def test_turn_job_issued_after_turn_silence() -> None:
    cfg = no_partials(silence_ms=600)  # 9600 samples -> the 19th silent window
    d = Driver(cfg)
    d.silence(10)
    d.speech(20)
    d.silence(18)
    assert d.pending_of(JobKind.TURN) == []
    assert len(d.pending_of(JobKind.FINAL)) == 1
    d.silence(1)
    turn = d.only_pending(JobKind.TURN)
    assert turn.ref_id == 0
    assert turn.generation == 0
    assert turn.start == 10 * W - PREROLL  # the turn's first sample
    assert turn.end == (10 + 20 + 19) * W
    d.silence(50)
    assert len(d.pending_of(JobKind.TURN)) == 1  # asked once per pause


def test_turn_job_with_default_config_goes_with_the_final() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS - 1)
    assert d.pending == []
    jobs = d.silence(1)
    assert [j.kind for j in jobs] == [JobKind.FINAL, JobKind.TURN]  # priority order


def test_turn_job_audio_limited_to_max_audio() -> None:
    cfg = no_partials().replace(
        stt={"partials": False, "max_utterance_s": 28.0}, turn={"max_audio_s": 2.0}
    )
    d = Driver(cfg)
    d.speech(200)
    d.silence(MIN_SILENCE_WINDOWS)
    turn = d.only_pending(JobKind.TURN)
    assert turn.end - turn.start == 32_000


def test_no_turn_job_without_turn_model() -> None:
    d = Driver(no_partials(), turn_model=False)
    d.speech(20)
    d.silence(FALLBACK_WINDOWS)
    assert d.pending_of(JobKind.TURN) == []
    d.reply(d.only_pending(JobKind.FINAL), text="hi")
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.reason is TurnEndReason.SILENCE_FALLBACK
    assert ended.probability is None


def test_turn_ended_by_model_only_after_the_finals() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    turn = d.only_pending(JobKind.TURN)
    d.reply(turn, probability=0.93)  # the decision arrives before the final
    d.silence(5)
    assert of(d.drain(), TurnEnded) == []
    d.reply(final, text="book a table for two")
    events = d.drain()
    assert [type(e) for e in events] == [FinalTranscription, TurnEnded]
    ended = events[1]
    assert isinstance(ended, TurnEnded)
    assert ended.reason is TurnEndReason.MODEL
    assert ended.probability == 0.93
    assert ended.transcript == "book a table for two"
    assert ended.turn_id == 0
    assert ended.audio_offset_ms == (20 + MIN_SILENCE_WINDOWS) * WMS
    assert d.core.stats.turns == 1


def test_turn_transcript_joins_the_turns_finals() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final0 = d.only_pending(JobKind.FINAL)
    d.reply(d.only_pending(JobKind.TURN), probability=0.1)
    d.silence(3)
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    finals = d.pending_of(JobKind.FINAL)
    assert finals[0] == final0 and len(finals) == 2
    d.reply(d.only_pending(JobKind.TURN), probability=0.8)
    d.reply(finals[1], text="for two people")
    d.reply(final0, text="book a table")
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.transcript == "book a table for two people"
    assert ended.reason is TurnEndReason.MODEL


def test_below_threshold_waits_for_silence_fallback() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="well")
    d.reply(d.only_pending(JobKind.TURN), probability=0.3)
    d.silence(FALLBACK_WINDOWS - MIN_SILENCE_WINDOWS - 1)
    assert of(d.drain(), TurnEnded) == []
    d.silence(1)
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.reason is TurnEndReason.SILENCE_FALLBACK
    assert ended.probability == 0.3
    assert ended.transcript == "well"
    assert ended.audio_offset_ms == (20 + FALLBACK_WINDOWS) * WMS
    d.silence(200)
    assert d.drain() == []  # ended once


def test_model_threshold_is_exclusive_and_configurable() -> None:
    """Strictly above the threshold, as Smart Turn's reference and Pipecat read it: the
    quantized graph's output moves in 1/256 steps, so exactly 0.5 occurs and is undecided."""
    for threshold, probability, ends in [(0.5, 0.5, False), (0.5, 0.5 + 1 / 256, True),
                                         (0.8, 0.7, False), (0.8, 0.85, True)]:
        d = Driver(no_partials(threshold=threshold))
        d.speech(20)
        d.silence(MIN_SILENCE_WINDOWS)
        d.reply(d.only_pending(JobKind.FINAL), text="yes")
        d.reply(d.only_pending(JobKind.TURN), probability=probability)
        assert len(of(d.drain(), TurnEnded)) == int(ends), (threshold, probability)


def test_turn_job_error_falls_back_to_silence() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="well")
    d.reply(d.only_pending(JobKind.TURN), error="RuntimeError: boom")
    d.silence(FALLBACK_WINDOWS)
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.reason is TurnEndReason.SILENCE_FALLBACK
    assert d.core.stats.job_errors == 1


def test_speech_resuming_after_evaluated_pause_resumes_turn_and_stale_result_ignored() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final0 = d.only_pending(JobKind.FINAL)
    turn0 = d.only_pending(JobKind.TURN)
    d.silence(4)
    d.speech(MIN_SPEECH_WINDOWS)  # the user goes on before Smart Turn answered
    resumed_at = (20 + MIN_SILENCE_WINDOWS + 4) * WMS
    d.reply(turn0, probability=0.99)  # stale: it judged the previous pause
    assert d.core.stats.stale_results == 1
    d.reply(final0, text="I would like")
    events = d.drain()
    assert [type(e) for e in events] == [
        SpeechStarted,
        SpeechEnded,
        FinalTranscription,
        TurnResumed,
        SpeechStarted,
    ]
    assert events[3] == TurnResumed(audio_offset_ms=resumed_at, turn_id=0)
    assert events[4].audio_offset_ms == resumed_at
    d.speech(15)
    d.silence(MIN_SILENCE_WINDOWS)
    turn1 = d.only_pending(JobKind.TURN)
    assert turn1.ref_id == 0 and turn1.generation == 1
    d.reply(d.only_pending(JobKind.FINAL), text="a coffee")
    d.reply(turn1, probability=0.9)
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.transcript == "I would like a coffee"
    assert ended.turn_id == 0


def test_no_turn_resumed_when_pause_was_not_evaluated() -> None:
    d = Driver(no_partials(silence_ms=1000))
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS + 2)
    d.speech(20)
    d.reply(d.only_pending(JobKind.FINAL), text="a")
    assert of(d.drain(), TurnResumed) == []
    assert d.pending_of(JobKind.TURN) == []


def test_force_end_of_turn_mid_speech() -> None:
    d = Driver(no_partials())
    d.speech(30)
    assert d.core.force_end_of_turn() is True
    d.collect()
    final = d.only_pending(JobKind.FINAL)
    assert final.end == 30 * W
    events = d.drain()
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    d.reply(final, text="stop")
    events = d.drain()
    assert [type(e) for e in events] == [FinalTranscription, TurnEnded]
    ended = events[1]
    assert isinstance(ended, TurnEnded)
    assert ended.reason is TurnEndReason.FORCED
    assert ended.transcript == "stop"
    assert ended.probability is None
    assert d.core.force_end_of_turn() is False  # no turn open any more


def test_force_end_of_turn_in_pause_keeps_last_probability() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="hmm")
    d.reply(d.only_pending(JobKind.TURN), probability=0.25)
    d.silence(3)
    assert d.core.force_end_of_turn() is True
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.reason is TurnEndReason.FORCED
    assert ended.probability == 0.25


def test_turn_with_only_empty_finals_emits_no_turn_ended() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="   ")
    d.reply(d.only_pending(JobKind.TURN), probability=0.2)
    d.silence(4)
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="")
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    events = d.drain()
    assert of(events, TurnEnded) == []
    assert [e.text for e in of(events, FinalTranscription)] == ["", ""]
    assert d.core.stats.turns_discarded == 1
    assert d.core.stats.turns == 0
    # the next turn is a fresh one and does end normally
    d.silence(20)
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="hello")
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    (ended,) = of(d.drain(), TurnEnded)
    assert ended.turn_id == 1 and ended.transcript == "hello"


def test_interruption_emitted_with_speech_started_during_playback() -> None:
    d = Driver(no_partials())
    d.core.set_playback(True)
    d.silence(3)
    d.speech(MIN_SPEECH_WINDOWS)
    assert d.drain() == [
        SpeechStarted(audio_offset_ms=3 * WMS, utterance_id=0),
        Interruption(audio_offset_ms=3 * WMS, utterance_id=0),
    ]
    d.core.set_playback(False)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="wait")
    d.speech(MIN_SPEECH_WINDOWS)
    assert of(d.drain(), Interruption) == []


def test_max_utterance_splits_long_speech_into_several_finals() -> None:
    cfg = BASE.replace(stt={"partials": False, "max_utterance_s": 2.0})
    d = Driver(cfg)
    limit = 32_000  # 2 s
    d.speech(150)  # 4.8 s of continuous speech
    finals = d.pending_of(JobKind.FINAL)
    # the first piece is cut on the first window reaching 2 s, the next 2 s later
    assert [j.end for j in finals] == [63 * W, 126 * W]
    assert finals[0].start == 0
    assert finals[1].start == 63 * W - PREROLL
    assert all(j.end - j.start <= limit + PREROLL + W for j in finals)
    d.silence(MIN_SILENCE_WINDOWS)
    finals = d.pending_of(JobKind.FINAL)
    assert len(finals) == 3
    assert [j.ref_id for j in finals] == [0, 1, 2]
    assert finals[2].start == 126 * W - PREROLL
    assert finals[2].end == 150 * W + POSTROLL
    for job, text in zip(finals, ["one", "two", "three"], strict=True):
        d.reply(job, text=text)
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    events = d.drain()
    assert [e.text for e in of(events, FinalTranscription)] == ["one", "two", "three"]
    (ended,) = of(events, TurnEnded)
    assert ended.transcript == "one two three"
    assert_monotonic(events)


# --------------------------------------------------------------------------- robustness


def test_duplicate_result_is_ignored() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    d.reply(final, text="once")
    d.core.on_result(JobResult(final, text="twice"))
    assert d.core.stats.stale_results == 1
    assert d.core.stats.finals == 1
    assert [e.text for e in of(d.drain(), FinalTranscription)] == ["once"]


def test_unknown_job_result_is_ignored() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.core.on_result(JobResult(Job(JobKind.FINAL, 999, 0, 0, 100), text="ghost"))
    assert d.core.stats.stale_results == 1
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="real")
    assert [e.text for e in of(d.drain(), FinalTranscription)] == ["real"]


def test_final_job_error_fills_the_slot() -> None:
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    d.silence(3)
    d.speech(MIN_SPEECH_WINDOWS)
    d.drain()
    d.reply(final, error="RuntimeError: decoder crashed")
    events = d.drain()
    assert [type(e) for e in events] == [FinalTranscription, TurnResumed, SpeechStarted]
    assert isinstance(events[0], FinalTranscription)
    assert events[0].text == ""
    assert d.core.stats.job_errors == 1


def test_final_job_error_keeps_committed_prefix() -> None:
    d = Driver(agreement(2))
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="good morning")
    d.speech(PARTIAL_WINDOWS)
    d.reply(d.only_pending(JobKind.PARTIAL), text="good morning everyone")
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), error="RuntimeError: boom")
    (final,) = of(d.drain(), FinalTranscription)
    assert final.text == "good morning"


def test_take_jobs_returns_each_job_once_in_priority_order() -> None:
    core = SessionCore(BASE)
    for _ in range(PARTIAL_WINDOWS):  # a partial is issued (job 0) and answered ...
        core.on_vad(SPEECH)
    (partial,) = core.take_jobs()
    core.on_result(JobResult(partial, text="hello"))
    for _ in range(MIN_SILENCE_WINDOWS + 2):  # ... then the final (1), the turn job (2) ...
        core.on_vad(SILENCE)
    for _ in range(PARTIAL_WINDOWS):  # ... and the next utterance's partial (3)
        core.on_vad(SPEECH)
    jobs = core.take_jobs()
    assert [(j.kind, j.job_id) for j in jobs] == [
        (JobKind.FINAL, 1),
        (JobKind.TURN, 2),
        (JobKind.PARTIAL, 3),
    ]
    assert core.take_jobs() == []
    assert sorted(j.job_id for j in core.in_flight) == [1, 2, 3]


def test_retain_from_never_exceeds_a_current_or_future_job_start() -> None:
    cfg = BASE.replace(stt={"max_utterance_s": 2.0})
    d = Driver(cfg)
    rng = random.Random(1234)
    lag: dict[int, int] = {}
    high_water = 0
    for seg in range(40):
        speaking = seg % 2 == 0
        for _ in range(rng.randint(1, 90)):
            p = rng.uniform(0.3, 1.0) if speaking else rng.uniform(0.0, 0.45)
            new = d.feed([p])
            for job in new:
                assert job.start >= high_water, (job, high_water)
            for job in list(d.pending):
                lag.setdefault(job.job_id, rng.randint(0, 40))
                if lag[job.job_id] == 0:
                    for later in d.reply(
                        job, text=rng.choice(["", "a b", "a b c"]), probability=rng.random()
                    ):
                        assert later.start >= high_water, (later, high_water)
                else:
                    lag[job.job_id] -= 1
            keep = d.core.retain_from()
            assert 0 <= keep <= d.core.position
            for job in d.core.in_flight:
                assert keep <= job.start, (keep, job)
            high_water = max(high_water, keep)
            d.drain()
    assert len(d.issued) > 40
    assert {j.kind for j in d.issued} == set(JobKind)
    assert high_water > 0


def test_retain_from_holds_audio_of_an_unanswered_final() -> None:
    d = Driver(no_partials())
    d.silence(100)
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    final = d.only_pending(JobKind.FINAL)
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    d.silence(1000)  # 32 s later, still decoding
    assert d.core.retain_from() == final.start
    d.reply(final, text="x")
    assert d.core.retain_from() > final.start


# --------------------------------------------------------------------------- speculative finals

SPEC_POSTROLL_WINDOWS = 3


def speculative(**stt: object) -> EngineConfig:
    """Postroll 96 ms (3 windows) < min silence 200 ms: the final can be speculated."""
    return BASE.replace(stt={"postroll_ms": 96, "partials": False, **stt})


def test_speculative_final_issued_once_the_postroll_is_in() -> None:
    d = Driver(speculative())
    d.silence(10)
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS - 1)
    assert d.pending_of(JobKind.FINAL) == []
    d.silence(1)
    spec = d.only_pending(JobKind.FINAL)
    assert (spec.start, spec.end) == (10 * W - PREROLL, 40 * W + 3 * W)
    assert d.core.stats.speculations == 1
    d.reply(spec, text="early bird")
    assert of(d.drain(), FinalTranscription) == []  # not before the VAD confirms
    d.silence(MIN_SILENCE_WINDOWS - SPEC_POSTROLL_WINDOWS - 1)
    assert of(d.drain(), SpeechEnded) == []
    d.silence(1)
    events = d.drain()
    assert [type(e) for e in events] == [SpeechEnded, FinalTranscription]
    assert of(events, FinalTranscription)[0].text == "early bird"
    assert of(events, FinalTranscription)[0].audio_offset_ms == 40 * WMS
    assert d.pending_of(JobKind.FINAL) == []  # the confirmation issued no second decode


def test_speculative_final_still_decoding_at_confirmation_fills_the_slot_later() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(MIN_SILENCE_WINDOWS + 5)
    spec = d.only_pending(JobKind.FINAL)
    turn = d.only_pending(JobKind.TURN)
    d.reply(turn, probability=0.9)
    events = d.drain()
    assert of(events, SpeechEnded) and not of(events, FinalTranscription)
    assert not of(events, TurnEnded)  # waits for the final of its utterance
    d.reply(spec, text="late")
    events = d.drain()
    assert [type(e) for e in events] == [FinalTranscription, TurnEnded]
    assert of(events, TurnEnded)[0].transcript == "late"


def test_speculation_abandoned_when_speech_resumes() -> None:
    d = Driver(speculative())
    d.speech(30)
    d.silence(SPEC_POSTROLL_WINDOWS + 1)
    spec = d.only_pending(JobKind.FINAL)
    assert d.core.wants(spec)
    d.speech(1)  # speech resumes before the silence is confirmed
    assert not d.core.wants(spec)
    assert d.core.stats.speculations_abandoned == 1
    d.reply(spec, text="wrong")  # a result that comes back anyway is ignored
    assert d.core.stats.stale_results == 1
    d.speech(10)
    d.silence(MIN_SILENCE_WINDOWS)
    second = [j for j in d.pending_of(JobKind.FINAL) if j is not spec]
    assert len(second) == 1 and second[0].end == (30 + 5 + 10) * W + 3 * W
    d.reply(second[0], text="right")
    assert [f.text for f in of(d.drain(), FinalTranscription)] == ["right"]


def test_speculation_waits_for_an_in_flight_partial() -> None:
    d = Driver(speculative(partials=True))
    partial = None
    for _ in range(PARTIAL_WINDOWS):
        for job in d.speech(1):
            partial = job
    assert partial is not None and partial.kind is JobKind.PARTIAL
    d.silence(SPEC_POSTROLL_WINDOWS + 2)
    assert d.pending_of(JobKind.FINAL) == []  # its prefix may still change
    spec = d.reply(partial, text="hello")
    assert [j.kind for j in spec] == [JobKind.FINAL]
    assert spec[0].prefix == ""  # one hypothesis commits nothing (agreement of 3)


def speech_and_pauses(seed: int, segments: int) -> list[float]:
    """VAD probabilities: stretches of 2-40 windows, speech and silence in turn."""
    rng = random.Random(seed)
    probs: list[float] = []
    for seg in range(segments):
        lo, hi = (0.55, 1.0) if seg % 2 == 0 else (0.0, 0.3)
        probs += [rng.uniform(lo, hi) for _ in range(rng.randint(2, 40))]
    return probs


def run_answering(config: EngineConfig, probs: Sequence[float],
                  probability: Callable[[Job], float]) -> tuple[list[Event], SessionCore]:
    """Feed ``probs``, answering every job at once; the answer depends only on what the
    job is, like a real model's. Every event, and the core."""
    d = Driver(config)
    for p in probs:
        d.feed([p])
        for job in list(d.pending):
            d.reply(job, text=f"w{job.start} w{job.end}", probability=probability(job))
        d.drain()
    return d.events, d.core


def test_speculative_and_confirmed_finals_give_identical_events() -> None:
    """Same probabilities, same answers: speculation changes when the decode starts, never
    what comes out (events compared whole, offsets and texts included)."""
    probs = speech_and_pauses(99, 60)

    def run(spec_on: bool) -> tuple[list[Event], SessionCore]:
        return run_answering(BASE.replace(stt={"postroll_ms": 96, "speculative_final": spec_on}),
                             probs, lambda job: (job.end % 7) / 7)

    with_spec, core_on = run(True)
    without, core_off = run(False)
    assert core_on.stats.speculations > 5
    assert core_on.stats.speculations_abandoned > 0
    assert core_off.stats.speculations == 0
    assert with_spec == without
    assert len(of(with_spec, FinalTranscription)) > 5


def test_decision_pending_from_pause_to_turn_evaluation() -> None:
    """What the runtime keeps a lane free for: from the first silent window after speech
    until Smart Turn has been asked (then the final and the turn job are issued)."""
    d = Driver(speculative())
    assert not d.core.decision_pending
    d.speech(20)
    assert not d.core.decision_pending
    d.silence(1)
    assert d.core.decision_pending  # a pause has begun: a final is coming
    d.silence(SPEC_POSTROLL_WINDOWS - 1)
    spec = d.only_pending(JobKind.FINAL)
    assert d.core.is_speculative(spec)
    d.silence(MIN_SILENCE_WINDOWS - SPEC_POSTROLL_WINDOWS)
    assert not d.core.is_speculative(spec)  # adopted by the confirmation: owed now
    assert d.only_pending(JobKind.TURN)
    assert not d.core.decision_pending  # asked; nothing else is due until speech resumes


# --------------------------------------------------------------------------- frame events


def test_frame_events_one_per_window() -> None:
    d = Driver(BASE.replace(frame_events=True))
    probs = [0.1, 0.5, 0.49, 0.123456, 0.99]
    d.feed(probs)
    frames = of(d.drain(), FrameProcessed)
    assert len(frames) == len(probs)
    assert [f.audio_offset_ms for f in frames] == [WMS * (i + 1) for i in range(len(probs))]
    assert [f.is_speech for f in frames] == [False, True, False, False, True]
    assert frames[3].probability == 0.1235
    assert d.core.stats.windows == len(probs)


def test_no_frame_events_by_default() -> None:
    d = Driver()
    d.feed([0.1, 0.9, 0.2])
    assert of(d.drain(), FrameProcessed) == []


def test_turn_config_fallback_configurable() -> None:
    d = Driver(no_partials(fallback_silence_ms=1000))
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="ok")
    d.reply(d.only_pending(JobKind.TURN), probability=0.0)
    d.silence(32 - MIN_SILENCE_WINDOWS - 1)  # 1000 ms = 31.25 windows
    assert of(d.drain(), TurnEnded) == []
    d.silence(1)
    assert len(of(d.drain(), TurnEnded)) == 1


def test_posted_notice_is_dated_no_later_than_a_pending_retroactive_event() -> None:
    d = Driver(no_partials())
    d.speech(2)  # speech candidate from 0, not yet confirmed
    d.core.post(TurnResumed(audio_offset_ms=d.core.position // 16, turn_id=7))
    d.speech(MIN_SPEECH_WINDOWS)  # SpeechStarted is dated back to 0
    events = d.drain()
    assert [e.TYPE for e in events] == ["turn_resumed", "speech_started"]
    assert events[0].audio_offset_ms == 0
    assert_monotonic(events)


def test_speaking_from_the_first_speech_window_to_the_confirmed_end() -> None:
    """``speaking`` tells a scheduler partials and a final are coming (the runtime keeps
    lanes free of work that can wait then)."""
    d = Driver(no_partials())
    assert not d.core.speaking
    d.speech(1)
    assert d.core.speaking  # possibly starting
    d.speech(10)
    assert d.core.speaking
    d.silence(MIN_SILENCE_WINDOWS)
    assert not d.core.speaking


def test_session_closed_is_dated_where_the_audio_ends_though_speech_may_be_starting() -> None:
    """A client checks that every frame it sent was analysed by session_closed's offset; a
    speech candidate pending at the end (noise after the last turn) is never confirmed, so
    it does not date the last event back as it dates a notice (:meth:`SessionCore.post`)."""
    d = Driver(no_partials())
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    d.reply(d.only_pending(JobKind.FINAL), text="hello")
    d.reply(d.only_pending(JobKind.TURN), probability=0.9)
    assert len(of(d.drain(), TurnEnded)) == 1
    d.silence(10)
    d.speech(2)  # a candidate, not yet speech
    d.core.flush()
    assert not d.core.force_end_of_turn()  # the turn has ended: nothing dated at the end
    closed = d.core.close("finished")
    events = d.drain()
    assert events[-1] is closed
    assert closed.reason == "finished"
    assert closed.audio_offset_ms == d.core.position // 16
    assert closed.audio_offset_ms == (20 + MIN_SILENCE_WINDOWS + 12) * WMS
    assert_monotonic(events)
