"""The supervisor's record of one open session: its core, its ring and its counters.

Audio intake lives here too -- validate, resample, cut into 512-sample windows, quantise to
int16 and publish into the ring -- because it is per-session and synchronous. Everything
that involves other sessions or workers (scheduling, load shedding) is the supervisor's.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine.audio import StreamResampler, session_samples
from ..engine.config import SAMPLE_RATE, EngineConfig
from ..engine.events import Event
from ..engine.session import SessionCore
from ..engine.vad import WINDOW, VadState
from .ring import RingWriter

VAD_READER = 0
"""Ring reader index advanced by whichever worker runs this session's VAD."""
RETAIN_READER = 1
"""Ring reader index the supervisor holds at the oldest sample a job may still need."""
DRAIN_IDLE_S = 0.5
"""A draining session that got no audio for this long takes no more: it ends where its
audio stopped instead of waiting for an utterance boundary that no audio will bring."""


@dataclass(slots=True, eq=False)
class LiveSession:
    key: int
    session_id: str
    core: SessionCore
    base_config: EngineConfig
    """The session's own config; the core runs ``degrade(base_config, level)``."""
    ring: RingWriter
    sample_rate: int
    resampler: StreamResampler | None
    events: asyncio.Queue[Event | None]
    owner: str = ""
    """Name of the token that opened the session ("" without tokens)."""
    transport: str = ""
    """How its audio arrives: grpc, websocket, http (process_frame) or webrtc."""
    created: float = field(default_factory=time.monotonic)
    last_activity: float = field(default_factory=time.monotonic)
    pending: npt.NDArray[np.float32] = field(
        default_factory=lambda: np.zeros(0, np.float32))
    """Samples (16 kHz) short of a whole window."""
    vad_state: VadState = field(default_factory=VadState)
    vad_next: int = 0
    """Next window to analyse; the ring's VAD read index when no VAD request is out."""
    vad_in_flight: bool = False
    vad_worker: int = -1
    """Worker holding the VAD request in flight (``vad_in_flight``)."""
    first_audio_at: float | None = None
    """Monotonic time of the first frame (how far ahead of real time the client is)."""
    catch_up_to: int = 0
    """Windows before this piled up while a worker the session used was dead or hung."""
    paced: bool = False
    """Its client sent faster than real time next to real-time sessions and was paced
    (``Supervisor.feed``): from then on its work is spare-capacity work, even while the
    pacing keeps it near real time (runtime/fairness.py)."""
    waiting_for_room: bool = False
    """Its frames have been waiting for ring room (``Supervisor.feed``) since the last frame
    that found room at once; its client was told (``backpressure_triggered``)."""
    write_times: deque[tuple[float, float]] = field(default_factory=deque)
    """(monotonic, wall) write time of each window from ``vad_next`` on."""
    arrival: npt.NDArray[np.float64] = field(
        default_factory=lambda: np.zeros(0, np.float64))
    """Monotonic write time of every resident window, by ``seq % n_slots`` (latencies)."""
    closing: bool = False
    closed_reason: str | None = None
    draining: bool = False
    """The daemon drains: the session takes audio until its next utterance boundary."""
    input_cut: bool = False
    """Draining and past that boundary: no more audio is taken (its client re-sends the
    rest to another daemon)."""
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever a result for this session was applied (finish() waits on it)."""
    frames_received: int = 0
    windows_written: int = 0
    windows_analysed: int = 0
    windows_dropped: int = 0
    events_sent: int = 0
    errors: int = 0
    rejected_frames: int = 0
    last_event: str = ""
    last_event_at: float = 0.0
    last_health_event: float = 0.0
    last_worker: int | None = None

    # ------------------------------------------------------------------ intake

    def windows_from(self, frame: bytes | npt.NDArray[np.generic],
                     sample_rate: int | None) -> npt.NDArray[np.int16]:
        """Validate and convert one client frame; returns the whole windows it completes
        (int16, shape (n, 512)). Raises InvalidAudioError before any state changes."""
        return self._cut(session_samples(frame, sample_rate, self.sample_rate, self.resampler))

    def tail_windows(self) -> npt.NDArray[np.int16]:
        """End of input: the resampler's tail and the last partial window, zero-padded."""
        samples = np.zeros(0, np.float32)
        if self.resampler is not None:
            samples = self.resampler(samples, last=True)
        pending = self.pending.size + samples.size
        if pending % WINDOW:
            samples = np.concatenate([samples, np.zeros(WINDOW - pending % WINDOW, np.float32)])
        return self._cut(samples)

    def _cut(self, samples: npt.NDArray[np.float32]) -> npt.NDArray[np.int16]:
        buf = np.concatenate([self.pending, samples]) if self.pending.size else samples
        n = buf.size // WINDOW
        self.pending = buf[n * WINDOW :].copy()
        # int16 is the ring's format. LINEAR16 input converts back exactly (x * 32768 of an
        # int16-derived float is that integer); resampled audio is rounded, as a client
        # sending 16 kHz LINEAR16 would have.
        pcm = np.clip(np.rint(buf[: n * WINDOW] * 32768.0), -32768, 32767).astype(np.int16)
        windows: npt.NDArray[np.int16] = pcm.reshape(n, WINDOW)
        return windows

    # ------------------------------------------------------------------ drain

    def input_closed(self, now: float) -> bool:
        """Whether audio is no longer taken: the session is closing, or it is draining and
        has reached an utterance boundary or gets no audio any more. Once true it stays
        true, so the last frame taken is the last frame the session will ever analyse."""
        if self.closing or self.input_cut:
            return True
        if self.draining and (self.at_boundary() or now - self.last_activity > DRAIN_IDLE_S):
            self.input_cut = True
        return self.input_cut

    def at_boundary(self) -> bool:
        """Between utterances: every window written is analysed, no speech is under way or
        starting, and the last utterance's final and turn decision have been asked for.
        Ending here, they are this session's (the supervisor waits for the final), and the next
        utterance belongs whole to the session its client continues on."""
        return (self.queued_windows == 0 and not self.vad_in_flight
                and not self.core.speaking and not self.core.decision_pending)

    # ------------------------------------------------------------------ figures

    def arrival_of(self, offset_ms: int) -> float | None:
        """When the window ending at ``offset_ms`` entered the ring (None if overwritten)."""
        if self.arrival.size == 0:
            return None
        k = max(0, (offset_ms * (SAMPLE_RATE // 1000) - 1) // WINDOW)
        if k >= self.ring.write_seq or k < self.ring.write_seq - self.arrival.size:
            return None
        return float(self.arrival[k % self.arrival.size])

    @property
    def queued_windows(self) -> int:
        return self.ring.write_seq - self.vad_next

    def max_windows(self, frame: bytes | npt.NDArray[np.generic],
                    sample_rate: int | None) -> int:
        """At most how many windows ``frame`` completes (room to wait for before taking it)."""
        n = len(frame) // 2 if isinstance(frame, bytes | bytearray | memoryview) else frame.size
        rate = sample_rate or self.sample_rate
        samples = -(-n * SAMPLE_RATE // max(rate, 1)) + WINDOW  # + the resampler's slack
        return (self.pending.size + samples) // WINDOW + 1

    def ahead_s(self, now: float) -> float:
        """Seconds of audio sent beyond what real time allows since the first frame."""
        if self.first_audio_at is None:
            return 0.0
        return self.ring.write_seq * WINDOW / SAMPLE_RATE - (now - self.first_audio_at)

    def lag_ms(self, now: float) -> float:
        """How far this session's analysis is behind its audio: age of the oldest window
        not yet analysed."""
        if not self.write_times:
            return 0.0
        return max(0.0, (now - self.write_times[0][0]) * 1000.0)

    def status(self, now: float, worker_pids: dict[int, int] | None = None) -> dict[str, Any]:
        stats = self.core.stats
        return {
            "sessionId": self.session_id,
            "tokenName": self.owner,
            "transport": self.transport,
            "state": "closing" if self.closing else "active",
            "durationS": round(now - self.created, 3),
            "audioS": round(self.ring.write_seq * WINDOW / SAMPLE_RATE, 3),
            "sampleRate": self.sample_rate,
            "framesReceived": self.frames_received,
            "framesRejected": self.rejected_frames,
            "windowsWritten": self.windows_written,
            "windowsAnalysed": self.windows_analysed,
            "windowsDropped": self.windows_dropped,
            "windowsQueued": self.queued_windows,
            "aheadS": round(max(0.0, self.ahead_s(now)), 3),
            "jobsInFlight": len(self.core.in_flight),
            "partials": stats.partials,
            "finals": stats.finals,
            "turns": stats.turns,
            "jobErrors": stats.job_errors,
            "speculativeFinals": stats.speculations,
            "speculationsAbandoned": stats.speculations_abandoned,
            "speculativeTurnAsks": stats.turn_speculations,
            "turnAsksAbandoned": stats.turn_speculations_abandoned,
            "eventsSent": self.events_sent,
            "lastEvent": self.last_event,
            "lastEventAgoS": round(now - self.last_event_at, 3) if self.last_event_at else None,
            "lastWorker": self.last_worker,
            "idleS": round(now - self.last_activity, 3),
        }
