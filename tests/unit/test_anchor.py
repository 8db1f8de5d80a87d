"""Unit tests of bounded streaming in :class:`SessionCore`: the window anchor, the commit
gate, the prompt from earlier finals, degenerate partials and splits.

Driven like tests/unit/test_core.py: made-up VAD probabilities, jobs answered by hand. A
partial's words get times (``WordTime``) as the worker's alignment would give them.
"""

from __future__ import annotations

from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.engine.events import FinalTranscription, PartialTranscription
from alfred_daemon.engine.jobs import Job, JobKind, JobResult
from alfred_daemon.engine.stt import WordTime

from .test_core import (
    BASE,
    MIN_SILENCE_WINDOWS,
    PARTIAL_WINDOWS,
    SPEECH,
    Driver,
    W,
    of,
)

WORD_WINDOWS = 8
"""Each made-up word lasts 8 windows (256 ms)."""

STREAM = BASE.replace(stt={"window_target_s": 3.0, "window_max_s": 6.0,
                           "max_utterance_s": 120.0})
"""Anchor after 3 s of window, force after 6 s, no split; commits from the first partial
on."""


def heard(job: Job) -> tuple[str, tuple[WordTime, ...]]:
    """What a decode of ``job``'s window hears: the words of LONG that start in it (word i
    starts at window WORD_WINDOWS * i), with their times as the alignment would give."""
    span = WORD_WINDOWS * W
    first = -(-job.start // span)
    last = job.end // span  # a word that starts at the window's end is not heard yet
    words = [WordTime(f"w{i}", i * span - job.start, (i + 1) * span - job.start)
             for i in range(first, last)]
    return " ".join(w.word for w in words), tuple(words)


def answer(d: Driver, job: Job, *, degenerate: bool = False, text: str | None = None) -> None:
    """Answer with what the window hears, or with ``text`` (its words spread over the
    window like the heard ones)."""
    hyp, words = heard(job)
    if text is not None:
        step = max(1, (job.end - job.start) // max(1, len(text.split())))
        words = tuple(WordTime(w, i * step, (i + 1) * step) for i, w in enumerate(text.split()))
    d.pending.remove(job)
    d.core.on_result(JobResult(job, text=hyp if text is None else text,
                               degenerate=degenerate, words=words if job.align else ()))
    d.collect()


def speak(d: Driver, windows: int, probability: float = SPEECH) -> list[Job]:
    """Feed ``windows`` windows at ``probability``; answer every partial at once."""
    partials = []
    for _ in range(windows):
        for job in d.feed([probability]):
            if job.kind is JobKind.PARTIAL:
                answer(d, job)
                partials.append(job)
    return partials


def test_partials_of_a_long_utterance_decode_a_bounded_window() -> None:
    d = Driver(STREAM)
    partials = speak(d, 40 * 31)  # ~40 s of speech without a pause
    spans = [j.end - j.start for j in partials]
    assert d.core.stats.anchor_moves >= 8, d.core.stats
    assert d.core.stats.forced_anchor_moves == 0
    # However long the utterance, a partial never decodes much more than the target.
    assert max(spans) <= int((3.0 + 0.5 + 0.5) * 16_000), max(spans) / 16_000
    # The text before the window travels as the prompt; the window's first word is the
    # last one anchored, decoded again whole (and forced as the start of its prefix).
    late = partials[-1]
    first = -(-late.start // (WORD_WINDOWS * W))
    assert late.prompt.split()[-1] == f"w{first}", (late, first)
    assert late.prefix.split()[0] == f"w{first}", (late, first)
    # Every word is shown once, in order: anchored text + window hypothesis.
    shown = of(d.drain(), PartialTranscription)[-1].text.split()
    assert shown == [f"w{i}" for i in range(len(shown))]


def test_window_restarts_just_before_the_last_committed_word() -> None:
    d = Driver(STREAM)
    partials = speak(d, 120)
    moved = [j for j in partials if j.start > 0]
    assert moved, "the anchor never moved"
    first = moved[0]
    # w{k} starts at window 8k; the new window starts 2 windows (64 ms) before it.
    k = (first.start + 2 * W) // (WORD_WINDOWS * W)
    assert first.start == (WORD_WINDOWS * k - 2) * W, first.start / W
    assert first.prompt.split() == [f"w{i}" for i in range(k + 1)]
    assert first.prefix.split()[0] == f"w{k}"
    # ... and w{k} is shown once.
    shown = of(d.drain(), PartialTranscription)[-1].text.split()
    assert shown == [f"w{i}" for i in range(len(shown))]


def test_window_without_agreement_is_cut_by_force_at_window_max() -> None:
    d = Driver(STREAM)
    for _ in range(8 * 31):
        for job in d.speech(1):
            if job.kind is JobKind.PARTIAL:  # every hypothesis differs: nothing commits
                answer(d, job, text=" ".join(f"x{job.job_id}{i}" for i in range(9)))
    assert d.core.stats.forced_anchor_moves >= 1


def test_no_commit_before_min_commit_audio() -> None:
    d = Driver(BASE.replace(stt={"min_commit_audio_ms": 2000}))
    partials = speak(d, 3 * PARTIAL_WINDOWS)
    # 1.5 s of audio: three agreeing hypotheses, but nothing is stable yet.
    assert len(partials) == 3
    assert all(e.stable_text == "" for e in of(d.drain(), PartialTranscription))
    speak(d, 2 * PARTIAL_WINDOWS)
    assert any(e.stable_text for e in of(d.drain(), PartialTranscription))


def test_degenerate_partial_is_not_shown() -> None:
    d = Driver(BASE)
    d.speech(PARTIAL_WINDOWS)
    (job,) = d.pending_of(JobKind.PARTIAL)
    answer(d, job, text="five five five five", degenerate=True)
    assert of(d.drain(), PartialTranscription) == []
    assert d.core.stats.partials_degenerate == 1


def _utterance(d: Driver, windows: int = 20) -> Job:
    d.speech(windows)
    d.silence(MIN_SILENCE_WINDOWS)
    return d.pending_of(JobKind.FINAL)[-1]


def test_later_utterances_are_prompted_with_earlier_finals() -> None:
    d = Driver(BASE.replace(stt={"partials": False, "context_s": 30.0}))
    first = _utterance(d)
    assert first.prompt == ""
    d.reply(first, text="one.")
    d.silence(5)
    second = _utterance(d)
    assert second.prompt == "one."
    d.reply(second, text="two.")
    assert [f.text for f in of(d.drain(), FinalTranscription)] == ["one.", "two."]


def test_a_final_waits_for_the_earlier_final_its_prompt_needs() -> None:
    """The inline driver decodes at once, the runtime later: a prompt taken before the
    earlier final is known would make finals depend on timing. The later final waits."""
    d = Driver(BASE.replace(stt={"partials": False, "context_s": 30.0}))
    first = _utterance(d)
    d.silence(5)
    d.speech(20)
    d.silence(MIN_SILENCE_WINDOWS)
    assert d.pending_of(JobKind.FINAL) == [first], "the second final went before the first"
    d.reply(first, text="ten of")
    (second,) = d.pending_of(JobKind.FINAL)
    assert second.prompt == "ten of"


def test_context_is_only_recent_finals() -> None:
    cfg: EngineConfig = BASE.replace(stt={"partials": False, "context_s": 1.0},
                                     turn={"fallback_silence_ms": 60_000})
    d = Driver(cfg)
    d.reply(_utterance(d), text="long ago.")
    d.silence(60)  # ~2 s
    assert _utterance(d).prompt == ""


def test_split_of_a_long_utterance_finalises_the_anchored_words() -> None:
    cfg = STREAM.replace(stt={"max_utterance_s": 8.0})  # a split every 8 s
    d = Driver(cfg)
    speak(d, 9 * 31)
    finals = of(d.drain(), FinalTranscription)
    assert len(finals) == 1, "no split after 8 s"
    words = finals[0].text.split()
    assert words == [f"w{i}" for i in range(len(words))], words
    # No decode was needed for it, and the next piece goes on from the next word.
    assert not d.pending_of(JobKind.FINAL)
    speak(d, 31)
    shown = of(d.drain(), PartialTranscription)[-1].text.split()
    assert shown[0] == f"w{len(words)}", (shown, words)


def test_retention_keeps_audio_from_the_anchor_only() -> None:
    d = Driver(STREAM)
    speak(d, 20 * 31)
    assert d.core.stats.anchor_moves >= 3
    keep = d.core.retain_from()
    assert keep > 10 * 16_000, keep / 16_000  # the first 10 s of a 20 s utterance are free
    assert keep <= d.core.position - 3 * 16_000  # ... but the window's are kept
