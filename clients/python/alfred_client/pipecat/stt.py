"""Pipecat 1.14 speech-to-text service that streams the pipeline's audio to alfred-daemon.

A streaming ``STTService`` (as Deepgram's, Soniox's): ``run_stt`` hands each input audio
chunk to one gRPC ``StreamSession`` (``AsyncClient.stream``, which resumes a broken stream
with its resume token), and a receive task turns the daemon's events into Pipecat frames:

=========================  ======================================================
daemon event               pushed
=========================  ======================================================
speech_started             ``ProposedUserStartedSpeakingFrame`` (broadcast) when it
                           opens a turn, then ``VADUserStartedSpeakingFrame``
speech_ended               ``VADUserStoppedSpeakingFrame``
partial_transcription      ``InterimTranscriptionFrame``
final_transcription        ``TranscriptionFrame`` (``finalized=True``)
turn_ended                 :class:`~.turns.AlfredTurnEndedFrame` (broadcast), a
                           ``ProposedUserStoppedSpeakingFrame``
interruption               ``InterruptionFrame`` (``broadcast_interruption``)
error                      ``ErrorFrame`` (``push_error``)
=========================  ======================================================

The daemon is the pipeline's VAD, Smart Turn and Whisper: the VAD frames come from its
Silero, the turn proposals from its Smart Turn, resolved by the strategies of
:meth:`AlfredSTTService.user_turn_strategies` in the user aggregator. Bot speaking state
travels the other way: ``BotStartedSpeakingFrame``/``BotStoppedSpeakingFrame`` (which the
output transport pushes upstream) become ``PLAYBACK_STARTED``/``PLAYBACK_STOPPED``
controls, so the daemon can tell a barge-in (``interruption``) from ordinary speech.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

from loguru import logger
from pipecat.audio.utils import create_stream_resampler
from pipecat.frames.frames import (
    BotStartedSpeakingFrame,
    BotStoppedSpeakingFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterimTranscriptionFrame,
    ProposedUserStartedSpeakingFrame,
    StartFrame,
    STTMetadataFrame,
    TranscriptionFrame,
    VADUserStartedSpeakingFrame,
    VADUserStoppedSpeakingFrame,
)
from pipecat.processors.frame_processor import FrameDirection
from pipecat.services.settings import STTSettings
from pipecat.services.stt_service import STTService
from pipecat.transcriptions.language import Language
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pipecat.utils.time import time_now_iso8601

from .. import DEFAULT_TARGET, AsyncClient, Control, Event, SessionOptions, StreamError
from .turns import AlfredTurnEndedFrame, alfred_user_turn_strategies

__all__ = ["DAEMON_RATES", "AlfredSTTService"]

DAEMON_RATES = (8000, 16000, 24000, 44100, 48000)
"""Sample rates the daemon accepts; audio at any other rate is resampled to 16 kHz."""
_Item = bytes | Control | None
"""What the send queue holds: audio, a control, or None (half-close the stream)."""


class AlfredSTTService(STTService):
    """Speech-to-text, VAD and end of turn from an alfred-daemon over gRPC.

    ``target``/``token``/``tls_*`` are :class:`~alfred_client.AsyncClient`'s. The session
    options are the daemon's (``SessionConfig``); None keeps the daemon's default:
    ``partials`` and ``partial_interval_ms`` (interim transcripts), ``vad_threshold``,
    ``min_speech_ms``, ``min_silence_ms`` (its Silero VAD), ``turn_threshold``,
    ``turn_silence_ms`` and ``fallback_silence_ms`` (its Smart Turn). ``should_interrupt``:
    whether the user interrupts the bot (turn starts and the daemon's barge-in events).
    ``end_timeout``: how long an ``EndFrame`` waits for the daemon's last events (the final
    and turn of audio still being analysed), so a file-fed pipeline gets its last turn.
    """

    def __init__(self, *, target: str = DEFAULT_TARGET, token: str | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, max_resumes: int = 3,
                 partials: bool | None = None, partial_interval_ms: int | None = None,
                 vad_threshold: float | None = None, min_speech_ms: int | None = None,
                 min_silence_ms: int | None = None, turn_threshold: float | None = None,
                 turn_silence_ms: int | None = None, fallback_silence_ms: int | None = None,
                 language: str = "en", should_interrupt: bool = True,
                 end_timeout: float = 10.0, **kwargs: Any) -> None:
        super().__init__(settings=STTSettings(model="alfred-daemon", language=Language.EN),
                         **kwargs)
        self._target = target
        self._client_args: dict[str, Any] = {"max_resumes": max_resumes, "token": token,
                                             "tls_ca": tls_ca, "tls_cert": tls_cert,
                                             "tls_key": tls_key}
        self._options = SessionOptions(
            partials=partials, partial_interval_ms=partial_interval_ms,
            vad_threshold=vad_threshold, min_speech_ms=min_speech_ms,
            min_silence_ms=min_silence_ms, turn_enabled=True, turn_threshold=turn_threshold,
            turn_silence_ms=turn_silence_ms, fallback_silence_ms=fallback_silence_ms,
            language=language)
        self._should_interrupt = should_interrupt
        self._end_timeout = end_timeout
        self._client: AsyncClient | None = None
        self._outbox: asyncio.Queue[_Item] = asyncio.Queue()
        self._receiver: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._daemon_rate = 0
        self._resampler: Any = None
        self._min_speech_s = 0.0
        self._min_silence_s = 0.0
        self.session_id = ""
        """The daemon's session id once ``session_started`` arrived."""
        self.bot_speaking = False
        """The bot's audio is playing (the daemon was told ``PLAYBACK_STARTED``)."""
        self.daemon_turn_open = False
        """The daemon has a user turn open (a ``speech_started`` with no ``turn_ended`` yet)."""
        self.last_turn: AlfredTurnEndedFrame | None = None
        for name in ("on_session_started", "on_turn_ended", "on_turn_resumed",
                     "on_interruption", "on_daemon_event"):
            self._register_event_handler(name)

    # ------------------------------------------------------------------ Pipecat hooks

    def can_generate_metrics(self) -> bool:
        return True

    @property
    def supports_ttfs(self) -> bool:
        """False: the daemon defines the turn boundaries (a turn-based service), so Pipecat
        waits no extra TTFS after a turn ends."""
        return False

    def user_turn_strategies(self, *, enable_interruptions: bool | None = None,
                             ) -> UserTurnStrategies:
        """Strategies bound to this service, for ``LLMUserAggregatorParams(
        user_turn_strategies=...)``. Passing them (rather than relying on the
        recommendation below) keeps the aggregator from building its default Smart Turn
        analyzer, which loads a model, before the recommendation replaces it."""
        interrupt = self._should_interrupt if enable_interruptions is None else enable_interruptions
        return alfred_user_turn_strategies(self, enable_interruptions=interrupt)

    def service_metadata_frame(self) -> STTMetadataFrame:
        """Recommend this service's turn strategies, as Pipecat's turn-detecting services
        do: the aggregator adopts them unless it was given its own."""
        frame: STTMetadataFrame = super().service_metadata_frame()
        frame.user_turn_strategies = self.user_turn_strategies()
        return frame

    async def start(self, frame: StartFrame) -> None:
        await super().start(frame)
        await self._connect()

    async def stop(self, frame: EndFrame) -> None:
        """Half-close the stream and wait (bounded) for the daemon's last events, so they
        are pushed before the ``EndFrame`` goes on."""
        await self._disconnect(graceful=True)
        await super().stop(frame)

    async def cancel(self, frame: CancelFrame) -> None:
        await super().cancel(frame)
        await self._disconnect(graceful=False)

    async def cleanup(self) -> None:
        await super().cleanup()  # type: ignore[no-untyped-call]  # unannotated in Pipecat
        await self._disconnect(graceful=False)

    async def run_stt(self, audio: bytes) -> AsyncGenerator[Frame | None, None]:
        """Queue the chunk for the stream (resampled if the daemon does not take this
        rate); results arrive through the receive task, so nothing is yielded here."""
        if self._resampler is not None:
            audio = await self._resampler.resample(audio, self.sample_rate, self._daemon_rate)
        if audio and self._receiver is not None and not self._receiver.done():
            self._outbox.put_nowait(audio)
        yield None

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, BotStartedSpeakingFrame) and not self.bot_speaking:
            self.bot_speaking = True
            self._send(Control.playback_started())
        elif isinstance(frame, BotStoppedSpeakingFrame) and self.bot_speaking:
            self.bot_speaking = False
            self._send(Control.playback_stopped())

    # ------------------------------------------------------------------ controls

    async def force_end_of_turn(self) -> None:
        """End the daemon's current turn now (it answers ``turn_ended``, reason ``forced``)."""
        self._send(Control.force_end_of_turn())

    async def flush(self) -> None:
        """Finalise the current utterance now, without ending the turn."""
        self._send(Control.flush())

    async def reconfigure(self, options: SessionOptions) -> None:
        """Apply new VAD, turn and partial settings from the next audio on."""
        self._send(Control.reconfigure(options))

    def _send(self, control: Control) -> None:
        if self._receiver is not None and not self._receiver.done():
            self._outbox.put_nowait(control)

    # ------------------------------------------------------------------ the stream

    async def _connect(self) -> None:
        if self._receiver is not None:
            return
        rate = self.sample_rate
        self._daemon_rate = rate if rate in DAEMON_RATES else 16000
        self._resampler = create_stream_resampler() if rate != self._daemon_rate else None
        self._client = AsyncClient(self._target, **self._client_args)
        self._closed.clear()
        self._receiver = self.create_task(self._receive(), name=f"{self}::receive")
        logger.debug(f"{self}: streaming {rate} Hz audio to {self._target} "
                     f"(daemon rate {self._daemon_rate})")

    async def _disconnect(self, *, graceful: bool) -> None:
        task, self._receiver = self._receiver, None
        if task is not None:
            if graceful and not task.done():
                self._outbox.put_nowait(None)  # half-close: the daemon finishes the session
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._closed.wait(), self._end_timeout)
            if not task.done():
                await self.cancel_task(task)
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def _frames(self) -> AsyncIterator[bytes | Control]:
        while True:
            item = await self._outbox.get()
            if item is None:
                return
            yield item

    async def _receive(self) -> None:
        assert self._client is not None
        try:
            async for event in self._client.stream(self._frames(), self._daemon_rate,
                                                   options=self._options):
                await self._on_event(event)
        except StreamError as exc:
            await self.push_error(f"alfred-daemon stream ended: {exc}", exception=exc)
        finally:
            self._closed.set()

    async def _on_event(self, ev: Event) -> None:
        """One daemon event -> Pipecat frames (see the module's table)."""
        kind, data = ev.type, ev.data
        await self._call_event_handler("on_daemon_event", ev)
        if kind in ("partial_transcription", "final_transcription"):
            await self._on_transcript(kind, data)
        elif kind == "speech_started":
            vad_start = VADUserStartedSpeakingFrame(start_secs=self._min_speech_s)
            await self._handle_vad_user_started_speaking(vad_start)  # resets the TTFB metric
            if not self.daemon_turn_open:
                self.daemon_turn_open = True
                await self.broadcast_frame(ProposedUserStartedSpeakingFrame)
            await self.push_frame(vad_start)
        elif kind == "speech_ended":
            vad_stop = VADUserStoppedSpeakingFrame(stop_secs=self._min_silence_s,
                                                   timestamp=time.time())
            await self._handle_vad_user_stopped_speaking(vad_stop)  # STT TTFB metric
            await self.push_frame(vad_stop)
        elif kind == "turn_ended":
            self.daemon_turn_open = False
            prob = data.get("probability")
            turn = AlfredTurnEndedFrame(turn_id=int(data.get("turn_id", 0)),
                                        reason=str(data["reason"]),
                                        probability=None if prob is None else float(prob),
                                        transcript=str(data.get("transcript", "")))
            self.last_turn = turn
            await self._call_event_handler("on_turn_ended", turn)
            await self.broadcast_frame(AlfredTurnEndedFrame, turn_id=turn.turn_id,
                                       reason=turn.reason, probability=turn.probability,
                                       transcript=turn.transcript)
        elif kind == "turn_resumed":
            await self._call_event_handler("on_turn_resumed", int(data.get("turn_id", 0)))
        elif kind == "interruption":
            await self._call_event_handler("on_interruption", int(data.get("utterance_id", 0)))
            if self._should_interrupt:
                await self.broadcast_interruption()  # type: ignore[no-untyped-call]
        elif kind == "session_started":
            self._on_session_started(ev)
            await self._call_event_handler("on_session_started", self.session_id)
        elif kind == "error":
            await self.push_error(f"alfred-daemon: {data.get('code')}: {data.get('message')}")
        elif kind in ("backpressure_triggered", "frames_dropped", "events_shed"):
            logger.warning(f"{self}: daemon {kind}: {data}")

    async def _on_transcript(self, kind: str, data: dict[str, Any]) -> None:
        text = str(data.get("text", "")).strip()
        if not text:
            return
        if kind == "partial_transcription":
            await self.push_frame(InterimTranscriptionFrame(
                text, self._user_id, time_now_iso8601(), Language.EN, result=data))
            return
        await self.emit_stt_usage_metrics()  # type: ignore[no-untyped-call]
        await self.push_frame(TranscriptionFrame(
            text, self._user_id, time_now_iso8601(), Language.EN, result=data, finalized=True))

    def _on_session_started(self, ev: Event) -> None:
        started = ev.message.session_started
        self.session_id = started.session_id
        vad = started.effective_config.vad
        self._min_speech_s = vad.min_speech_ms / 1000.0
        self._min_silence_s = vad.min_silence_ms / 1000.0
        logger.debug(f"{self}: session {self.session_id} "
                     f"({'resumed' if started.resumed else 'new'})")
