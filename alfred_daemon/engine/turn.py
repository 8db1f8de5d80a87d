"""Smart Turn v3.2: is the user's turn over?

Input contract of the model (the reference is transformers'
``WhisperFeatureExtractor(chunk_length=8)`` with ``do_normalize=True``):

* the last <= 8 s of the turn at 16 kHz, zero-padded at the *front* to exactly 8 s;
* the padded waveform normalised to zero mean and unit variance (``var + 1e-7``);
* Whisper log-mel features, 80 bins x 800 frames.

faster-whisper's ``FeatureExtractor(feature_size=80, chunk_length=8)`` computes the same
log-mel (``padding=0``: the waveform is already 8 s), so we reuse it rather than carry a
second STFT; a test checks it against transformers within 1e-4.

The graph's output is already a probability (sigmoid inside).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .config import SAMPLE_RATE
from .int8_check import Int8Kernels, choose
from .numerics import one_blas_thread
from .onnx import make_session

WINDOW_S = 8
WINDOW_SAMPLES = WINDOW_S * SAMPLE_RATE
N_FRAMES = 800


def prepare_waveform(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Keep the last 8 s, front-pad with zeros to 8 s, normalise (after padding)."""
    audio = np.asarray(audio, dtype=np.float32)[-WINDOW_SAMPLES:]
    if audio.size < WINDOW_SAMPLES:
        audio = np.concatenate([np.zeros(WINDOW_SAMPLES - audio.size, np.float32), audio])
    mean = audio.mean(dtype=np.float64)
    var = audio.var(dtype=np.float64)
    out: npt.NDArray[np.float32] = ((audio - mean) / np.sqrt(var + 1e-7)).astype(np.float32)
    return out


class SmartTurn:
    """A loaded Smart Turn ONNX graph plus its feature extractor.

    The graph is quantized; ``kernels`` says whether ONNX Runtime may fuse it into int8
    kernels (``int8_check``: AUTO checks this CPU once and picks the exact path).
    """

    def __init__(self, path: Path, *, threads: int = 1,
                 kernels: Int8Kernels = Int8Kernels.AUTO) -> None:
        from .stt import faster_whisper_module

        self.path = path
        self.kernels = choose(kernels)
        """FUSED or UNFUSED: what this instance runs."""
        self._session = make_session(path, threads=threads, model="Smart Turn", arena=False,
                                     optimize=self.kernels is Int8Kernels.FUSED)
        self._fe: Any = faster_whisper_module("feature_extractor").FeatureExtractor(
            feature_size=80, chunk_length=WINDOW_S)

    def features(self, audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """(80, 800) log-mel features of the prepared window."""
        with one_blas_thread():
            feats = np.asarray(self._fe(prepare_waveform(audio), padding=0), dtype=np.float32)
        return np.ascontiguousarray(feats[:, :N_FRAMES])

    def predict(self, audio: npt.NDArray[np.float32]) -> tuple[float, float]:
        """Probability that the turn is complete, and the milliseconds it took."""
        t0 = time.perf_counter()
        feats = self.features(audio)
        (out,) = self._session.run(None, {"input_features": feats[None]})
        prob = float(np.asarray(out).reshape(-1)[0])
        return prob, (time.perf_counter() - t0) * 1000.0
