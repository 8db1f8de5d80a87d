"""Wire <-> engine: SessionConfig to EngineConfig, engine events to ServerEvent.

Validation lives here so every API surface (gRPC, the WebSocket bridge, WebRTC) rejects
the same things with the same sentences.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from google.protobuf.descriptor import FieldDescriptor

from ..engine import events as ev
from ..engine.config import EngineConfig
from ..engine.errors import ConfigError
from ..runtime.supervisor import SUPPORTED_RATES

MAX_FRAME_BYTES = 1 << 20


class InvalidRequestError(ValueError):
    """The client's message is malformed; the message says what is wrong."""


def _wire_value(fd: FieldDescriptor, value: Any) -> Any:
    """A proto field's value as the client meant it. A ``float`` field holds the float32
    nearest to what was sent (0.99 arrives as 0.9900000095367432), and the documented
    bounds are decimals: a float32 is read back as the shortest decimal that round-trips
    in float32 (numpy's str), so a client sending a bound gets that bound."""
    if fd.type == FieldDescriptor.TYPE_FLOAT:
        return float(str(np.float32(value)))
    return value


NOT_FROM_QUERY = {
    "encoding": "the audio is Opus, decoded by the daemon",
    "sample_rate_hz": "the audio is Opus, decoded by the daemon at 48 kHz",
    "channels": "the audio is Opus, decoded by the daemon and mixed to mono",
    "resume_token": "a WebRTC session is not resumable; make a new offer",
    "last_event_sequence": "a WebRTC session is not resumable; make a new offer",
}
"""SessionConfig fields a WebRTC client cannot set, and why (the sentence of the 400)."""

MAX_KEY_SHOWN = 64
"""A client's parameter name is quoted in an error up to this many characters."""

_INT_TYPES = {FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64,
              FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_UINT64,
              FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64}
_INT32_RANGE = (-(1 << 31), (1 << 31) - 1)


def _field_named(msg: Any, name: str) -> FieldDescriptor | None:
    """A field of ``msg`` by its proto name (``min_speech_ms``) or JSON name
    (``minSpeechMs``), as the WebSocket's JSON config accepts both."""
    for fd in msg.DESCRIPTOR.fields:
        if name in (fd.name, fd.json_name):
            return fd  # type: ignore[no-any-return]
    return None


def _query_value(key: str, fd: FieldDescriptor, raw: str) -> Any:
    """One query parameter's text as the value of the proto field it names."""
    if fd.type == FieldDescriptor.TYPE_BOOL:
        if raw.lower() in ("true", "1"):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise InvalidRequestError(f"{key} must be true or false, not {raw[:MAX_KEY_SHOWN]!r}")
    if fd.type in _INT_TYPES:
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequestError(
                f"{key} must be a whole number, not {raw[:MAX_KEY_SHOWN]!r}") from None
        if not _INT32_RANGE[0] <= value <= _INT32_RANGE[1]:
            raise InvalidRequestError(f"{key} = {raw[:MAX_KEY_SHOWN]} is out of range")
        return value
    if fd.type in (FieldDescriptor.TYPE_FLOAT, FieldDescriptor.TYPE_DOUBLE):
        try:
            number = float(raw)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise InvalidRequestError(f"{key} must be a number, not {raw[:MAX_KEY_SHOWN]!r}")
        return number
    if fd.type == FieldDescriptor.TYPE_STRING:
        return raw
    raise InvalidRequestError(f"{key} cannot be set as a query parameter")


def session_config_from_query(query: Iterable[tuple[str, str]]) -> pb.SessionConfig:
    """The SessionConfig a WHIP offer's query string describes: the gRPC SessionConfig's
    fields by proto or JSON name, nested ones with a dot (``partials=false``,
    ``vad.minSilenceMs=300``, ``turn.enabled=false``, ``frameEventEvery=1``). Names and
    types are checked here, ranges by :func:`engine_config`, so WebRTC refuses what gRPC
    and the WebSocket refuse, with the same sentences."""
    cfg = pb.SessionConfig()
    seen: set[str] = set()
    for key, raw in query:
        shown = key if len(key) <= MAX_KEY_SHOWN else key[:MAX_KEY_SHOWN] + "..."
        if key in seen:
            raise InvalidRequestError(f"parameter {shown!r} is given twice")
        seen.add(key)
        parts = key.split(".")
        msg: Any = cfg
        fd: FieldDescriptor | None = None
        for depth, part in enumerate(parts):
            fd = _field_named(msg, part) if depth < 2 else None
            last = depth == len(parts) - 1
            if fd is None or (fd.message_type is not None) == last:
                allowed = sorted(f.json_name for f in cfg.DESCRIPTOR.fields
                                 if f.name not in NOT_FROM_QUERY)
                raise InvalidRequestError(
                    f"unknown parameter {shown!r}; allowed: {', '.join(allowed)} (vad.* and "
                    "turn.* take the fields of VadParams and TurnParams)")
            if depth == 0 and fd.name in NOT_FROM_QUERY:
                raise InvalidRequestError(f"{shown} cannot be set: {NOT_FROM_QUERY[fd.name]}")
            if not last:
                msg = getattr(msg, fd.name)
        assert fd is not None
        value = _query_value(shown, fd, raw)
        try:
            setattr(msg, fd.name, value)
        except (ValueError, TypeError):  # protobuf's own checks (e.g. text that is not UTF-8)
            raise InvalidRequestError(f"{shown} = {raw[:MAX_KEY_SHOWN]!r} is not a valid "
                                      "value") from None
    return cfg


def engine_config(cfg: pb.SessionConfig, base: EngineConfig) -> EngineConfig:
    """The session's engine config: ``base`` with the client's overrides, validated."""
    if cfg.encoding not in (pb.AUDIO_ENCODING_UNSPECIFIED, pb.LINEAR16):
        raise InvalidRequestError(
            f"encoding {cfg.encoding} is not supported; send LINEAR16 (signed 16-bit "
            "little-endian PCM)")
    if cfg.channels not in (0, 1):
        raise InvalidRequestError(f"{cfg.channels} channels: only mono (1) is supported")
    if cfg.sample_rate_hz not in SUPPORTED_RATES:
        raise InvalidRequestError(
            f"sample rate {cfg.sample_rate_hz} Hz is not supported; use one of "
            + ", ".join(str(r) for r in SUPPORTED_RATES))
    if cfg.language and cfg.language.split("-")[0].lower() != "en":
        raise InvalidRequestError(
            f"language {cfg.language!r} is not supported by the loaded model (English only)")
    if cfg.frame_event_every < 0:
        raise InvalidRequestError("frame_event_every must be 0 (off) or positive")
    stt: dict[str, Any] = {}
    if cfg.HasField("partials"):
        stt["partials"] = cfg.partials
    if cfg.HasField("partial_interval_ms"):
        stt["partial_interval_ms"] = cfg.partial_interval_ms
    # proto3 optional fields: ListFields() lists exactly the ones the client set.
    vad: dict[str, Any] = {fd.name: _wire_value(fd, value) for fd, value in cfg.vad.ListFields()}
    turn: dict[str, Any] = {fd.name: _wire_value(fd, value)
                            for fd, value in cfg.turn.ListFields()}
    try:
        out = base.replace(stt=stt, vad=vad, turn=turn)
    except ConfigError as exc:
        raise InvalidRequestError(str(exc)) from None
    return dataclasses.replace(out, frame_events=cfg.frame_event_every > 0)


def effective_config(cfg: pb.SessionConfig, engine: EngineConfig) -> pb.SessionConfig:
    out = pb.SessionConfig(
        encoding=pb.LINEAR16, sample_rate_hz=cfg.sample_rate_hz, channels=1,
        language=cfg.language or "en", partials=engine.stt.partials,
        partial_interval_ms=engine.stt.partial_interval_ms,
        frame_event_every=cfg.frame_event_every,
    )
    out.vad.threshold = engine.vad.threshold
    out.vad.min_speech_ms = engine.vad.min_speech_ms
    out.vad.min_silence_ms = engine.vad.min_silence_ms
    out.turn.enabled = engine.turn.enabled
    out.turn.threshold = engine.turn.threshold
    out.turn.silence_ms = engine.turn.silence_ms
    out.turn.fallback_silence_ms = engine.turn.fallback_silence_ms
    return out


def server_event(event: ev.Event) -> pb.ServerEvent:
    """The wire form of one engine or runtime event (time fields are filled by the caller)."""
    msg = pb.ServerEvent(audio_offset_ms=event.audio_offset_ms,
                         processing_ms=float(event.processing_ms))
    if isinstance(event, ev.FrameProcessed):
        msg.frame_processed.probability = event.probability
        msg.frame_processed.is_speech = event.is_speech
    elif isinstance(event, ev.SpeechStarted):
        msg.speech_started.utterance_id = event.utterance_id
    elif isinstance(event, ev.SpeechEnded):
        msg.speech_ended.utterance_id = event.utterance_id
        msg.speech_ended.duration_ms = event.duration_ms
    elif isinstance(event, ev.PartialTranscription):
        msg.partial_transcription.utterance_id = event.utterance_id
        msg.partial_transcription.text = event.text
        msg.partial_transcription.stable_text = event.stable_text
    elif isinstance(event, ev.FinalTranscription):
        msg.final_transcription.utterance_id = event.utterance_id
        msg.final_transcription.text = event.text
        msg.final_transcription.start_ms = event.start_ms
    elif isinstance(event, ev.TurnEnded):
        msg.turn_ended.turn_id = event.turn_id
        if event.probability is not None:
            msg.turn_ended.probability = event.probability
        msg.turn_ended.reason = event.reason.value
        msg.turn_ended.transcript = event.transcript
    elif isinstance(event, ev.TurnResumed):
        msg.turn_resumed.turn_id = event.turn_id
    elif isinstance(event, ev.Interruption):
        msg.interruption.utterance_id = event.utterance_id
    else:
        _runtime_event(msg, event)
    return msg


def _runtime_event(msg: pb.ServerEvent, event: ev.Event) -> None:
    """The rest of :func:`server_event`: the pipeline's notices (health, backpressure,
    dropped frames, a worker's recovery) and the session's end."""
    if isinstance(event, ev.PipelineHealth):
        msg.pipeline_health.health = event.health
        msg.pipeline_health.load = event.load
        msg.pipeline_health.lag_ms = event.lag_ms
        msg.pipeline_health.backpressure_level = event.backpressure_level
    elif isinstance(event, ev.BackpressureTriggered):
        msg.backpressure_triggered.level = event.level
        msg.backpressure_triggered.action = event.action
        msg.backpressure_triggered.load = event.load
    elif isinstance(event, ev.BackpressureRecovered):
        msg.backpressure_recovered.level = event.level
        msg.backpressure_recovered.action = event.action
        msg.backpressure_recovered.load = event.load
    elif isinstance(event, ev.FramesDropped):
        msg.frames_dropped.start_ms = event.start_ms
        msg.frames_dropped.end_ms = event.end_ms
        msg.frames_dropped.frames = event.frames
        msg.frames_dropped.reason = event.reason
    elif isinstance(event, ev.WorkerRecovered):
        msg.worker_recovered.worker_id = event.worker_id
        msg.worker_recovered.reason = event.reason
        msg.worker_recovered.rerun_jobs = event.rerun_jobs
        msg.worker_recovered.rerun_frames = event.rerun_frames
    elif isinstance(event, ev.SessionClosed):
        msg.session_closed.reason = event.reason
    else:
        raise TypeError(f"no wire form for {type(event).__name__}")
