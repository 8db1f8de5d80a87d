"""Typed, immutable events: what a session tells its client.

Every event carries ``audio_offset_ms`` -- the point in the session's audio (milliseconds
from the first sample) it refers to -- and ``processing_ms``, the model time spent to
produce it. Offsets let a client line events up with its own audio whatever the transport
delay was; processing time lets operators see where latency comes from.

``to_dict`` gives a plain JSON shape: a ``type`` field with the snake_case event name plus
the fields. The CLI's ``--json`` output prints it as is; the browser protocol (WebSocket
bridge and WebRTC, ``api/events_json``) renames both to its camelCase names.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class TurnEndReason(enum.StrEnum):
    MODEL = "model"
    """Smart Turn judged the turn complete."""
    SILENCE_FALLBACK = "silence_fallback"
    """The model did not, but the user stayed silent for ``turn.fallback_silence_ms``."""
    FORCED = "forced"
    """The client asked (force end of turn, or the stream was closed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    TYPE: ClassVar[str] = "event"

    audio_offset_ms: int
    processing_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.TYPE}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.value if isinstance(value, enum.Enum) else value
        return out


@dataclass(frozen=True, slots=True, kw_only=True)
class FrameProcessed(Event):
    """One 32 ms VAD window was analysed (only with ``frame_events`` on)."""

    TYPE: ClassVar[str] = "frame_processed"
    probability: float
    is_speech: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechStarted(Event):
    """Speech began at ``audio_offset_ms`` (emitted once ``vad.min_speech_ms`` confirmed it)."""

    TYPE: ClassVar[str] = "speech_started"
    utterance_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SpeechEnded(Event):
    """Speech ended at ``audio_offset_ms`` (emitted once ``vad.min_silence_ms`` confirmed it)."""

    TYPE: ClassVar[str] = "speech_ended"
    utterance_id: int
    duration_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PartialTranscription(Event):
    """Hypothesis for the utterance so far; ``stable_text`` is a prefix that will not change.

    ``stable_text`` is always a prefix of ``text``, of every later partial of the same
    utterance, and of its final.
    """

    TYPE: ClassVar[str] = "partial_transcription"
    utterance_id: int
    text: str
    stable_text: str


@dataclass(frozen=True, slots=True, kw_only=True)
class FinalTranscription(Event):
    """The utterance's final text; ``audio_offset_ms`` is where its speech ended."""

    TYPE: ClassVar[str] = "final_transcription"
    utterance_id: int
    text: str
    start_ms: int


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnEnded(Event):
    """The user's turn is over; ``transcript`` is the whole turn's text.

    Never emitted before the final of the turn's last utterance, so ``transcript`` is
    complete when a voice agent acts on it. ``probability`` is Smart Turn's last output
    (None if the model never ran, e.g. a forced end straight after speech).
    """

    TYPE: ClassVar[str] = "turn_ended"
    turn_id: int
    probability: float | None
    reason: TurnEndReason
    transcript: str


@dataclass(frozen=True, slots=True, kw_only=True)
class TurnResumed(Event):
    """The user spoke again after a pause Smart Turn had judged incomplete.

    Tells an agent that speculatively prepared a reply during the pause to drop it.
    """

    TYPE: ClassVar[str] = "turn_resumed"
    turn_id: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Interruption(Event):
    """Speech started while the client said its own playback was active (barge-in)."""

    TYPE: ClassVar[str] = "interruption"
    utterance_id: int


# --------------------------------------------------------------------------- runtime notices
# Emitted by the multi-process runtime, not by the session core; they share the event model
# (and the ordering queue) so a client reads one stream.


@dataclass(frozen=True, slots=True, kw_only=True)
class FramesDropped(Event):
    """Analysis of ``[start_ms, end_ms)`` was skipped to shed load.

    The audio is not lost for transcription: a final spanning the gap still decodes it.
    What was skipped is VAD, partials and turn decisions on it.
    """

    TYPE: ClassVar[str] = "frames_dropped"
    start_ms: int
    end_ms: int
    frames: int
    """32 ms windows skipped."""
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureTriggered(Event):
    """The daemon stepped down its degradation ladder (``action`` is the rung entered)."""

    TYPE: ClassVar[str] = "backpressure_triggered"
    level: int
    action: str
    load: float


@dataclass(frozen=True, slots=True, kw_only=True)
class BackpressureRecovered(Event):
    """The daemon stepped back up (``action`` is the rung left; ``level`` the new level)."""

    TYPE: ClassVar[str] = "backpressure_recovered"
    level: int
    action: str
    load: float


@dataclass(frozen=True, slots=True, kw_only=True)
class WorkerRecovered(Event):
    """A worker running this session's work died or hung; the work was re-queued and will
    run elsewhere, so nothing is lost -- results may just arrive later."""

    TYPE: ClassVar[str] = "worker_recovered"
    worker_id: int
    reason: str
    rerun_jobs: int
    rerun_frames: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineHealth(Event):
    """Periodic: daemon health and this session's lag behind real time."""

    TYPE: ClassVar[str] = "pipeline_health"
    health: str
    load: float
    lag_ms: float
    backpressure_level: int


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionClosed(Event):
    """Last event of a session; ``reason`` says who ended it (finished, client, idle,
    max_duration, shutdown, error)."""

    TYPE: ClassVar[str] = "session_closed"
    reason: str


ALL_EVENT_TYPES: tuple[type[Event], ...] = (
    FrameProcessed,
    SpeechStarted,
    SpeechEnded,
    PartialTranscription,
    FinalTranscription,
    TurnEnded,
    TurnResumed,
    Interruption,
    FramesDropped,
    BackpressureTriggered,
    BackpressureRecovered,
    WorkerRecovered,
    PipelineHealth,
    SessionClosed,
)
