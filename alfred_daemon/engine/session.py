"""One audio stream processed inline: :class:`Session`, the single-process driver.

:class:`Session` validates and resamples frames, keeps a rolling audio buffer, runs the
VAD and every job of its :class:`~.core.SessionCore` inline. The CLI and the engine tests
use it, and it is the reference the multi-process runtime must reproduce (which drives the
same core, running its jobs on workers).

The core and its ordering contract live in :mod:`~.core`, its parts in :mod:`~.streaming`,
:mod:`~.utterance`, :mod:`~.turn_taking` and :mod:`~.ordering`; the names callers import
from here are re-exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from .audio import StreamResampler, session_samples
from .config import SAMPLE_RATE, EngineConfig, ms_to_samples, samples_to_ms
from .core import CoreStats, SessionCore
from .errors import InvalidAudioError
from .events import Event
from .jobs import JobResult, Models, run_job
from .vad import WINDOW, VadState

__all__ = [
    "AudioBuffer",
    "CoreStats",
    "Session",
    "SessionCore",
    "ms_to_samples",
    "samples_to_ms",
]


class AudioBuffer:
    """Rolling 16 kHz buffer addressed in absolute session samples."""

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self.base = 0
        """Absolute index of ``_data[0]``."""

    @property
    def end(self) -> int:
        return self.base + self._data.size

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        self._data = np.concatenate([self._data, samples])

    def get(self, start: int, end: int) -> npt.NDArray[np.float32]:
        if start < self.base or end > self.end:
            raise IndexError(f"audio [{start}, {end}) not in buffer [{self.base}, {self.end})")
        return self._data[start - self.base : end - self.base]

    def trim(self, keep_from: int) -> None:
        """Drop audio before ``keep_from``; compacts only when it frees a second or more."""
        drop = keep_from - self.base
        if drop >= SAMPLE_RATE:
            self._data = self._data[drop:].copy()
            self.base = keep_from


class Session:
    """One audio stream processed inline: frames in, events out.

    Not thread-safe; a session belongs to one caller. Errors in a frame raise
    :class:`InvalidAudioError` before any state changes.
    """

    def __init__(
        self,
        models: Models,
        config: EngineConfig | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
        resample: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        on_job: Callable[[JobResult], None] | None = None,
    ) -> None:
        if sample_rate != SAMPLE_RATE and not resample:
            raise InvalidAudioError(
                f"sample rate {sample_rate} Hz needs resampling to {SAMPLE_RATE} Hz, which was "
                "disabled"
            )
        self.models = models
        self.core = SessionCore(config, turn_model=models.turn is not None)
        self.sample_rate = sample_rate
        self._resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self._vad_state = VadState()
        self._audio = AudioBuffer()
        self._pending = np.zeros(0, dtype=np.float32)
        self._clock = clock
        self._on_job = on_job
        """Sees every job's result (benchmarks and tests: what ran, on how much audio)."""

    @property
    def config(self) -> EngineConfig:
        return self.core.config

    def push(self, frame: bytes | npt.NDArray[np.generic], *,
             sample_rate: int | None = None) -> list[Event]:
        """Feed one frame (any length); returns the events it completed."""
        samples = session_samples(frame, sample_rate, self.sample_rate, self._resampler)
        self._pending = np.concatenate([self._pending, samples])
        self._process_windows()
        return self.core.drain_events()

    def set_playback(self, active: bool) -> list[Event]:
        self.core.set_playback(active)
        return self.core.drain_events()

    def flush(self) -> list[Event]:
        self.core.flush()
        self._run_jobs()
        return self.core.drain_events()

    def force_end_of_turn(self) -> list[Event]:
        self.core.force_end_of_turn()
        self._run_jobs()
        return self.core.drain_events()

    def close(self) -> list[Event]:
        """End of input: pad the last partial window, finalise, end any open turn."""
        events: list[Event] = []
        if self._resampler is not None:
            tail = self._resampler(np.zeros(0, dtype=np.float32), last=True)
            self._pending = np.concatenate([self._pending, tail])
        if self._pending.size:
            pad = WINDOW - self._pending.size % WINDOW
            if pad != WINDOW:
                self._pending = np.concatenate([self._pending, np.zeros(pad, np.float32)])
            self._process_windows()
        events += self.core.drain_events()
        events += self.force_end_of_turn()
        return events

    def reconfigure(self, config: EngineConfig) -> None:
        self.core.reconfigure(config)

    def _process_windows(self) -> None:
        n = self._pending.size // WINDOW
        if n == 0:
            return
        windows = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._audio.append(self._pending[: n * WINDOW])
        self._pending = self._pending[n * WINDOW :].copy()
        for w in windows:
            t0 = self._clock()
            p = self.models.vad.prob(self._vad_state, np.ascontiguousarray(w))
            self.core.on_vad(p, (self._clock() - t0) * 1000.0)
            self._run_jobs()
        self._audio.trim(self.core.retain_from())

    def _run_jobs(self) -> None:
        jobs = self.core.take_jobs()
        while jobs:
            for job in jobs:
                audio = self._audio.get(job.start, min(job.end, self._audio.end))
                result = run_job(self.models, job, audio, self.config.stt)
                if self._on_job is not None:
                    self._on_job(result)
                self.core.on_result(result)
            jobs = self.core.take_jobs()
