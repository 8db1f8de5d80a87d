"""PCM validation, conversion and resampling.

Frames arrive as LINEAR16 bytes (the wire format) or numpy arrays (library use). Each is
validated *before* any state changes, so a bad frame raises :class:`InvalidAudioError` and
the session continues as if it had never been sent.
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .config import SAMPLE_RATE
from .errors import InvalidAudioError

FloatArray = npt.NDArray[np.float32]

MAX_FRAME_SAMPLES = 48_000 * 10
"""A single frame longer than 10 s at 48 kHz is a client bug, not audio."""


def to_float32(frame: bytes | bytearray | memoryview | npt.NDArray[np.generic]) -> FloatArray:
    """Convert one frame to mono float32 in [-1, 1], or raise InvalidAudioError.

    * bytes: little-endian signed 16-bit PCM; an odd byte count is a wrong sample width.
    * int16 arrays are scaled by 1/32768; float32/float64 arrays must be finite and are
      clipped to [-1, 1] (slight overs happen after client-side gain).
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        raw = bytes(frame)
        if not raw:
            raise InvalidAudioError("empty audio frame")
        if len(raw) % 2:
            raise InvalidAudioError(
                f"audio frame has {len(raw)} bytes; LINEAR16 needs an even count (2 bytes per "
                "sample) -- wrong sample width?"
            )
        samples = np.frombuffer(raw, dtype="<i2")
        if samples.size > MAX_FRAME_SAMPLES:
            raise InvalidAudioError(f"audio frame of {samples.size} samples is too long")
        return samples.astype(np.float32) / np.float32(32768.0)
    if not isinstance(frame, np.ndarray):
        raise InvalidAudioError(f"audio frame must be bytes or a numpy array, not {type(frame)}")
    arr = frame
    if arr.ndim != 1:
        raise InvalidAudioError(f"audio frame must be 1-D mono, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidAudioError("empty audio frame")
    if arr.size > MAX_FRAME_SAMPLES:
        raise InvalidAudioError(f"audio frame of {arr.size} samples is too long")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / np.float32(32768.0)
    if arr.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(arr)):
            raise InvalidAudioError("audio frame contains NaN or infinite samples")
        clipped: FloatArray = np.clip(arr, -1.0, 1.0).astype(np.float32, copy=False)
        return clipped
    raise InvalidAudioError(
        f"audio frame dtype {arr.dtype} is not supported; use int16 PCM or float32 in [-1, 1]"
    )


class StreamResampler:
    """Streaming resampler to 16 kHz (soxr, high quality), keeping filter state across frames.

    Resampling frame by frame with a stateless call would put a filter edge at every frame
    boundary; soxr's stream object carries the tail between calls.
    """

    def __init__(self, in_rate: int) -> None:
        import soxr  # local: only sessions that need it pay for the import

        if in_rate not in (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000):
            raise InvalidAudioError(f"sample rate {in_rate} Hz is not supported")
        self.in_rate = in_rate
        self._stream = soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: FloatArray, last: bool = False) -> FloatArray:
        out = self._stream.resample_chunk(samples, last=last)
        return np.asarray(out, dtype=np.float32)


def session_samples(
    frame: bytes | bytearray | memoryview | npt.NDArray[np.generic],
    frame_rate: int | None, session_rate: int, resampler: StreamResampler | None,
) -> FloatArray:
    """One client frame as 16 kHz float32: the rate checked against the session's,
    converted, resampled. Raises InvalidAudioError before any state changes."""
    if frame_rate is not None and frame_rate != session_rate:
        raise InvalidAudioError(
            f"frame is {frame_rate} Hz but the session was opened at {session_rate} Hz"
        )
    samples = to_float32(frame)
    return resampler(samples) if resampler is not None else samples


def read_wav(path: str | Path) -> tuple[FloatArray, int]:
    """Read a PCM WAV file as mono float32 and its sample rate (stereo is averaged)."""
    try:
        with wave.open(str(path), "rb") as wf:
            width = wf.getsampwidth()
            channels = wf.getnchannels()
            rate = wf.getframerate()
            raw = wf.readframes(wf.getnframes())
    except (wave.Error, EOFError) as exc:
        raise InvalidAudioError(f"{path}: not a PCM WAV file ({exc})") from None
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2_147_483_648.0
    else:
        raise InvalidAudioError(f"{path}: {8 * width}-bit WAV is not supported (use 16-bit PCM)")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype(np.float32, copy=False), rate


def resample(samples: FloatArray, in_rate: int) -> FloatArray:
    """One-shot resample of a whole signal to 16 kHz."""
    if in_rate == SAMPLE_RATE:
        return samples
    rs = StreamResampler(in_rate)
    return rs(samples, last=True)


def float_to_pcm16(samples: FloatArray) -> bytes:
    """float32 [-1, 1] -> LINEAR16 bytes (for clients and tests)."""
    clipped = np.clip(samples, -1.0, 1.0 - 1.0 / 32768.0)
    return (clipped * 32768.0).astype("<i2").tobytes()
