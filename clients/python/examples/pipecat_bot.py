"""A Pipecat 1.14 bot whose ears are alfred-daemon: no local VAD, Whisper or Smart Turn.

    pip install './clients/python[pipecat]'          # or: make setup (.venv-pipecat)
    alfred-daemon serve &                            # 127.0.0.1:50051
    python clients/python/examples/pipecat_bot.py tests/data/jfk.wav [--target HOST:PORT]

No microphone, no cloud key: a WAV file (16-bit mono, any rate) plays the user, streamed
at real-time pace into the input side of a transport; the "LLM" is an echo that prints each
user turn as the aggregator hands it over. In a real bot, swap ``FileInputTransport`` for
your transport's ``input()``, ``EchoLLM`` for an LLM service, and add TTS and
``transport.output()`` after it (the output transport's ``BotStarted/StoppedSpeakingFrame``
then reach the STT service, which tells the daemon, which reports barge-ins)::

    transport.input() -> AlfredSTTService -> user aggregator -> EchoLLM (here: your LLM) -> ...
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import wave
from typing import Any

from alfred_client.pipecat import AlfredSTTService
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    Frame,
    InputAudioRawFrame,
    LLMContextFrame,
    StartFrame,
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

FRAME_MS = 20


class FileInputTransport(BaseInputTransport):  # type: ignore[misc, unused-ignore]
    """A transport's input side with nothing behind it but ``push_audio_frame``."""

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self.set_transport_ready(frame)


class EchoLLM(FrameProcessor):  # type: ignore[misc, unused-ignore]
    """Stands where the LLM goes: prints the user turn the aggregator hands over."""

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, LLMContextFrame):
            last: Any = frame.context.messages[-1] if frame.context.messages else {}
            text = last.get("content", "") if isinstance(last, dict) else ""
            print(f"user turn: {text}", flush=True)
            return
        await self.push_frame(frame, direction)


async def main(path: str, target: str, tail_s: float) -> None:
    with wave.open(path, "rb") as wf:
        if wf.getsampwidth() != 2 or wf.getnchannels() != 1:
            raise SystemExit(f"{path}: need 16-bit mono PCM WAV")
        rate, pcm = wf.getframerate(), wf.readframes(wf.getnframes())
    stt = AlfredSTTService(target=target)
    user = LLMContextAggregatorPair(LLMContext(), user_params=LLMUserAggregatorParams(
        user_turn_strategies=stt.user_turn_strategies())).user()
    transport = FileInputTransport(TransportParams(audio_in_enabled=True,
                                                   audio_in_sample_rate=rate))
    worker = PipelineWorker(Pipeline([transport, stt, user, EchoLLM()]),
                            params=PipelineParams(audio_in_sample_rate=rate))
    started = asyncio.Event()

    async def on_started(_worker: Any, _frame: Any) -> None:
        started.set()

    worker.add_event_handler("on_pipeline_started", on_started)
    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 30.0)

    # The file, then tail_s of silence (a live call keeps delivering audio after the last
    # word: the daemon's turn decision needs that pause), at real-time pace.
    step = rate * FRAME_MS // 1000 * 2
    pcm += bytes(2 * int(rate * tail_s))
    t0 = time.monotonic()
    for k, i in enumerate(range(0, len(pcm), step)):
        await asyncio.sleep(max(0.0, t0 + k * FRAME_MS / 1000 - time.monotonic()))
        await transport.push_audio_frame(InputAudioRawFrame(audio=pcm[i : i + step],
                                                            sample_rate=rate, num_channels=1))
    await worker.queue_frame(EndFrame())
    await asyncio.wait_for(task, 30.0)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="Print the user turns of a WAV file, as a "
                                 "Pipecat pipeline on alfred-daemon hears them.")
    ap.add_argument("wav")
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--tail", type=float, default=4.0, help="seconds of silence after the file")
    args = ap.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    asyncio.run(main(args.wav, args.target, args.tail))
