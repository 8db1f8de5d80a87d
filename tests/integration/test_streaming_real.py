"""Streaming transcription on real speech of every length (issue 12), with the real models.

The engine streams each clip in 20 ms frames, as a live client sends it; the reference is
faster-whisper's own ``transcribe()`` (30 s window, beam 5) on the same audio. Corpus:
tests/data/long (47 clips, 1-36 s, read and spontaneous, quiet and noisy).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt
import pytest

from alfred_daemon.engine.audio import float_to_pcm16
from alfred_daemon.engine.config import SAMPLE_RATE, EngineConfig, SttConfig, VadConfig
from alfred_daemon.engine.events import Event, FinalTranscription, PartialTranscription
from alfred_daemon.engine.jobs import JobKind, JobResult, Models
from alfred_daemon.engine.session import Session
from alfred_daemon.engine.stt import DecodeRequest
from alfred_daemon.engine.text import find_repetition, norm_text

from ..conftest import Utterance, silence
from .test_engine_real import finals_text, run_session

pytestmark = pytest.mark.slow


def _repeats(events: list[Event], reference: str) -> list[str]:
    """Partials and finals that repeat themselves where the reference does not."""
    if find_repetition(reference.split()) is not None:
        return []
    out = []
    for e in events:
        if isinstance(e, PartialTranscription | FinalTranscription):
            why = find_repetition(e.text.split())
            if why is not None:
                out.append(f"{type(e).__name__} {e.text!r}: {why}")
    return out


@pytest.fixture(scope="module")
def streamed(models: Models, long_utterances: list[Utterance]
             ) -> list[tuple[Utterance, list[Event]]]:
    return [(u, run_session(models, np.concatenate([u.audio, silence(1.0)])))
            for u in long_utterances]


def test_long_corpus_wer_within_a_point_of_transcribe_and_no_loops(
    models: Models, streamed: list[tuple[Utterance, list[Event]]]
) -> None:
    """WER with Whisper's own English normaliser (transformers' EnglishTextNormalizer, as
    in the Whisper paper), applied to both sides and the references: "1 2 3" for "one two
    three", "15th" for "fifteenth" or "Mr" for "mister" are formatting, not errors. The
    plain lower-case, punctuation-free WER is printed too."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    whisper_norm = EnglishTextNormalizer({})  # type: ignore[no-untyped-call]
    refs, ours, theirs, repeats = [], [], [], []
    for u, events in streamed:
        refs.append(u.transcript)
        ours.append(finals_text(events))
        theirs.append(models.stt.transcribe_padded(np.concatenate([u.audio, silence(1.0)])))
        repeats += [f"{u.file}: {r}" for r in _repeats(events, u.transcript)]

    def wer(hyps: list[str], norm: Callable[[str], str]) -> float:
        return float(jiwer.wer([norm(r) for r in refs], [norm(h) or "-" for h in hyps]))

    plain_ours, plain_theirs = wer(ours, norm_text), wer(theirs, norm_text)
    wer_ours, wer_theirs = wer(ours, whisper_norm), wer(theirs, whisper_norm)
    print(f"tests/data/long WER (Whisper normaliser): streaming finals {wer_ours:.4f}, "
          f"faster-whisper transcribe() {wer_theirs:.4f}; plain: {plain_ours:.4f}, "
          f"{plain_theirs:.4f}")
    assert wer_ours <= wer_theirs + 0.01
    assert not repeats, "\n".join(repeats)


def _monologue(clips: list[Utterance], seconds: float) -> tuple[npt.NDArray[np.float32], str]:
    """Real read speech, clip after clip with their own leading and trailing silences cut,
    for ``seconds``: a monologue whose pauses are only those inside the clips."""
    parts, texts, total = [], [], 0
    for u in clips:
        loud = np.nonzero(np.abs(u.audio) > 0.02 * float(np.max(np.abs(u.audio))))[0]
        speech = u.audio[max(0, loud[0] - 800) : loud[-1] + 800]
        parts.append(speech)
        texts.append(u.transcript)
        total += speech.size
        if total >= seconds * 16_000:
            break
    return np.concatenate(parts), " ".join(texts)


def test_sixty_second_monologue_without_a_pause(
    models: Models, long_utterances: list[Utterance]
) -> None:
    """60 s of speech the VAD never calls a pause (min_silence 2 s): finals come in pieces
    of at most stt.max_utterance_s, partial windows stay bounded, nothing repeats, and the
    words are right."""
    lj = [u for u in long_utterances if u.file.startswith("coqui_LJ")]
    audio, reference = _monologue(lj, 60.0)
    assert audio.size >= 60 * 16_000
    cfg = EngineConfig(vad=VadConfig(min_silence_ms=2_000))
    spans: list[int] = []
    session = Session(models, cfg, on_job=lambda r: spans.append(r.job.samples)
                      if r.job.kind is JobKind.PARTIAL else None)
    pcm = float_to_pcm16(audio)
    events: list[Event] = []
    for i in range(0, len(pcm), 640):
        events += session.push(pcm[i : i + 640])
    events += session.close()
    finals = [e for e in events if isinstance(e, FinalTranscription)]
    text = norm_text(" ".join(f.text for f in finals))
    error = float(jiwer.wer(reference, text))
    stats = session.core.stats
    print(f"monologue {audio.size / 16_000:.1f} s: {len(finals)} finals, WER {error:.3f}, "
          f"partial window max {max(spans) / 16_000:.1f} s, anchor moves {stats.anchor_moves} "
          f"(forced {stats.forced_anchor_moves})")
    cfg_stt = SttConfig()
    assert len(finals) >= 3  # 60 s in pieces of at most max_utterance_s (25 s)
    assert all(f.audio_offset_ms - f.start_ms <= cfg_stt.max_utterance_s * 1000 + 100
               for f in finals)
    # Windows are cut once past window_target_s, or by force at window_max_s. A partial
    # comes every partial_interval_ms, and a forced cut needs a partial whose words align,
    # so a window may run one more interval past window_max_s.
    assert max(spans) <= (cfg_stt.window_max_s + 2 * cfg_stt.partial_interval_ms / 1000) \
        * 16_000, max(spans) / 16_000
    assert error <= 0.10, text
    assert not _repeats(events, reference)


@pytest.mark.parametrize("level_dbfs", [-50.0, -35.0])
def test_noise_alone_gives_no_text(models: Models, level_dbfs: float) -> None:
    """A room's noise floor with no speech: no partial, no final text (no hallucination)."""
    rng = np.random.default_rng(12)
    white = rng.standard_normal(20 * 16_000)
    brown = np.cumsum(white)
    brown -= np.convolve(brown, np.ones(1600) / 1600, mode="same")  # no DC drift
    noise = 0.5 * white / np.std(white) + brown / np.std(brown)
    noise = (noise / np.sqrt(np.mean(noise**2)) * 10 ** (level_dbfs / 20)).astype(np.float32)
    events = run_session(models, noise)
    texts = [e.text for e in events
             if isinstance(e, PartialTranscription | FinalTranscription) and e.text]
    assert texts == [], texts


def test_speech_over_a_noise_floor_keeps_its_words(
    models: Models, long_utterances: list[Utterance]
) -> None:
    """The same clips with a -50 dBFS noise floor under everything, pauses included: no
    loop, and the WER moves by at most 3 points (~6 of the ~220 words). The floor does move
    where the VAD cuts the pauses of a digit string, which changes a digit or two; what this
    guards against is streaming falling apart on real rooms (tens of points)."""
    rng = np.random.default_rng(3)
    clips = [u for u in long_utterances if 4 * 16_000 <= u.audio.size <= 10 * 16_000][:12]
    refs, clean, noisy, repeats = [], [], [], []
    for u in clips:
        audio = np.concatenate([silence(1.0), u.audio, silence(1.5)])
        floor = rng.standard_normal(audio.size).astype(np.float32) * 10 ** (-50 / 20)
        refs.append(u.transcript)
        clean.append(norm_text(finals_text(run_session(models, audio))) or "-")
        events = run_session(models, audio + floor)
        noisy.append(norm_text(finals_text(events)) or "-")
        repeats += _repeats(events, u.transcript)
    w_clean, w_noisy = float(jiwer.wer(refs, clean)), float(jiwer.wer(refs, noisy))
    print(f"WER clean {w_clean:.4f}, with a -50 dBFS floor {w_noisy:.4f}")
    assert w_noisy <= w_clean + 0.03
    assert not repeats, repeats


def test_a_sentence_said_again_is_transcribed_again_without_the_30s_window(
    models: Models, utterances: list[Utterance]
) -> None:
    """A speaker who repeats a sentence: each later decode's prompt (the recent finals)
    ends with the words it hears, which the loop guard reads as the decoder copying its
    prompt. The decode is then redone without the prompt, and a clean one is kept; before,
    every such final went to the 30 s window (~4x the cost, ~800 ms here) and its
    no-speech rule emptied some of them."""
    sentence = next(u for u in utterances if u.file == "spk2_snt2.wav")  # "what joy ..."
    audio = np.concatenate([sentence.audio, silence(1.5)] * 3)
    results: list[JobResult] = []
    session = Session(models, on_job=results.append)
    pcm = float_to_pcm16(audio)
    events: list[Event] = []
    for i in range(0, len(pcm), 640):
        events += session.push(pcm[i : i + 640])
    events += session.close()
    finals = [norm_text(e.text) for e in events if isinstance(e, FinalTranscription)]
    assert finals == [sentence.transcript] * 3, finals
    fallbacks = [r.text for r in results if r.job.kind is JobKind.FINAL and r.fallback]
    assert fallbacks == [], fallbacks


def test_partials_of_several_sessions_decoded_together_equal_one_by_one(
    models: Models, utterances: list[Utterance]
) -> None:
    """Batched Whisper calls (the runtime sends several sessions' partials in one request)
    give each window exactly what decoding it alone gives: the runtime's finals must be the
    inline engine's, and partials feed them. Different lengths, prompts, prefixes and
    alignment in one call; some share a shape (batched), some do not."""
    cfg = SttConfig()
    shapes = [(0.5, "", "", False), (0.7, "and then the cat sat on the mat and looked at the dog "
               "for a while before it went", "", True), (0.9, "", "A", False),
              (1.0, "we went home", "", True), (0.6, "", "", False), (0.8, "", "", False)]
    requests = [DecodeRequest(u.audio[: int(u.audio.size * f)], cfg, beam_size=2, prompt=pr,
                              prefix=px, align=al)
                for u, (f, pr, px, al) in zip(utterances, shapes, strict=False)]
    alone = [models.stt.transcribe_many([r])[0] for r in requests]
    together = models.stt.transcribe_many(requests)
    for a, b in zip(alone, together, strict=True):
        assert (a.text, a.tokens, a.words, a.degenerate) == (b.text, b.tokens, b.words,
                                                             b.degenerate)
        assert abs(a.avg_logprob - b.avg_logprob) < 1e-4


def test_partials_read_a_shorter_prompt_than_finals(models: Models,
                                                   utterances: list[Utterance]) -> None:
    """A partial's decoder reads ``stt.partial_prompt_tokens`` of the committed text, a
    final's ``stt.prompt_tokens`` (+1: the previous-text start token); never more than the
    finals' even when configured so."""
    prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    audio = utterances[0].audio
    cfg = SttConfig()
    assert (cfg.partial_prompt_tokens, cfg.prompt_tokens) == (32, 64)

    def prompt_len(c: SttConfig, final: bool) -> int:
        return len(models.stt._plan(DecodeRequest(audio, c, prompt=prompt,
                                                  fallback=final)).prompt_ids)

    assert (prompt_len(cfg, False), prompt_len(cfg, True)) == (33, 65)
    wide = SttConfig(prompt_tokens=48, partial_prompt_tokens=160)
    assert (prompt_len(wide, False), prompt_len(wide, True)) == (49, 49)
    assert prompt_len(SttConfig(partial_prompt_tokens=0), False) == 0


@pytest.mark.parametrize("guarded_loops_too", [False, True])
def test_a_looping_final_is_redecoded_before_the_30s_window(
    models: Models, utterances: list[Utterance], monkeypatch: pytest.MonkeyPatch,
    guarded_loops_too: bool,
) -> None:
    """A final whose first decode loops is decoded again from the same encoder output
    without the prompt and with no trigram repeated (a decoder pass); only if that loops
    too does the 30 s window (an encoder pass over 30 s of audio) run. The loops are made
    here, by replacing the decodes' text, because whether a real first decode loops
    depends on the host's int8 kernels."""
    from dataclasses import replace

    from alfred_daemon.engine import stt

    sentence = next(u for u in utterances if u.file == "spk2_snt2.wav")  # "what joy ..."
    transcriber = models.stt
    real = transcriber._decode_group
    seen: list[tuple[int, int]] = []  # (window samples, no_repeat) of each decoder call

    def looping(plans: list[Any], encoded: Any = None) -> list[Any]:
        out = real(plans, encoded)
        seen.extend((p.window, p.no_repeat) for p in plans)
        full = plans[0].window >= stt.MAX_WINDOW_S * SAMPLE_RATE
        if len(seen) == 1 or (plans[0].no_repeat and guarded_loops_too and not full):
            out = [replace(d, text=" ".join([d.text] * 3), budget_hit=True) for d in out]
        return out

    monkeypatch.setattr(transcriber, "_decode_group", looping)
    (res,) = transcriber.transcribe_many([DecodeRequest(
        np.concatenate([sentence.audio, silence(0.5)]), SttConfig(), fallback=True)])
    assert norm_text(res.text) == sentence.transcript, res.text
    assert [n for _, n in seen] == [0, stt.GUARD_NO_REPEAT, *([0] if guarded_loops_too else [])]
    assert res.fallback is guarded_loops_too
    full_windows = [w for w, _ in seen if w >= stt.MAX_WINDOW_S * SAMPLE_RATE]
    assert len(full_windows) == (1 if guarded_loops_too else 0), seen
