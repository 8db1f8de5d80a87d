"""The LiveKit Agents ``stt.STT`` backed by alfred-daemon: a gRPC session per LiveKit stream.

Event mapping (daemon -> LiveKit), per stream:

======================  =============================================================
``speech_started``      ``START_OF_SPEECH`` when it opens a turn (not for the next
                        utterance of a turn still open: LiveKit's user is still speaking)
``partial_transcription``  ``INTERIM_TRANSCRIPT`` (the utterance's text so far)
``final_transcription`` ``FINAL_TRANSCRIPT`` (one per utterance)
``turn_ended``          ``END_OF_SPEECH`` (after the turn's last final: the daemon never
                        sends it earlier), then ``RECOGNITION_USAGE``
``turn_resumed``        nothing: the turn LiveKit sees never closed
``session_closed``      the end of the stream once LiveKit ended the input; before that,
                        a new session at the next audio frame (see :class:`SpeechStream`)
======================  =============================================================

So with ``turn_detection="stt"`` the daemon's Smart Turn decides when the user's turn ends.
Times in ``SpeechData`` are seconds of the stream's audio (plus LiveKit's
``start_time_offset`` across reconnects), from the daemon's ``audio_offset_ms``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import numpy as np
from livekit import rtc
from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    NOT_GIVEN,
    APIConnectionError,
    APIConnectOptions,
    APIError,
    APIStatusError,
    APITimeoutError,
    NotGivenOr,
    stt,
    utils,
)
from livekit.agents.language import LanguageCode
from livekit.agents.utils import AudioBuffer

from .. import DEFAULT_TARGET, FRAME_MS, AsyncClient, Control, Event, SessionOptions, StreamError

__all__ = ["STT", "SpeechStream", "api_error"]

logger = logging.getLogger("alfred_client.livekit")

SAMPLE_RATES = (8000, 16000, 24000, 44100, 48000)
"""The rates a daemon session accepts (others are resampled here first)."""

_HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
}
"""gRPC codes as the HTTP statuses LiveKit's retry rule reads (4xx are final except 408, 429
and 499); any other code is a retryable 500."""


def api_error(exc: StreamError) -> APIError:
    """The LiveKit API error for a failed daemon stream, so that LiveKit retries what a new
    session can fix and gives up on what it cannot.

    UNAVAILABLE (daemon down, starting or draining) and NOT_FOUND (the session the client
    tried to resume expired; a new one works) are connection errors, retried; DEADLINE_
    EXCEEDED a timeout, retried; RESOURCE_EXHAUSTED (session limit, overload) 429, retried
    with backoff; a refused config or token (INVALID_ARGUMENT, UNAUTHENTICATED...) 4xx, not
    retried -- it would be refused again.
    """
    message = f"alfred-daemon at {exc.target or '?'}: {exc}"
    code = exc.code
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return APITimeoutError(message)
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND):
        return APIConnectionError(message)
    return APIStatusError(message, status_code=_HTTP_STATUS.get(code, 500), body=exc.details)


def _mono_pcm(frame: rtc.AudioFrame) -> bytes:
    """LINEAR16 mono bytes of a frame; several channels are averaged (the daemon takes 1)."""
    if frame.num_channels == 1:
        return bytes(frame.data)
    samples = np.frombuffer(frame.data, dtype=np.int16).reshape(-1, frame.num_channels)
    mono: bytes = samples.mean(axis=1).astype(np.int16).tobytes()
    return mono


class STT(stt.STT[None]):
    """alfred-daemon's streaming STT and turn detection, as a LiveKit Agents STT.

    ``target``, ``token`` and ``tls_*`` are :class:`alfred_client.AsyncClient`'s: one gRPC
    channel per STT, opened on first use. ``options`` are the daemon session's VAD, turn and
    partial settings (:class:`alfred_client.SessionOptions`; its ``language`` is the default
    language). ``sample_rate``: LiveKit resamples the room's audio to it before it is sent
    (16 kHz, the models' rate, costs the least bandwidth). ``event_hook`` sees every daemon
    event as it arrives (logging, metrics, tests).
    """

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None, options: SessionOptions | None = None,
                 sample_rate: int = 16_000, max_resumes: int = 3,
                 event_hook: Callable[[Event], None] | None = None) -> None:
        super().__init__(capabilities=stt.STTCapabilities(
            streaming=True, interim_results=True, offline_recognize=True))
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate {sample_rate} Hz: the daemon takes {SAMPLE_RATES}")
        self._target = target
        self._client_args = {"token": token, "tls_ca": tls_ca, "tls_cert": tls_cert,
                             "tls_key": tls_key}
        self._max_resumes = max_resumes
        self._options = options or SessionOptions()
        self._sample_rate = sample_rate
        self._event_hook = event_hook
        self._client: AsyncClient | None = None

    @property
    def model(self) -> str:
        return "alfred-daemon"

    @property
    def provider(self) -> str:
        return "alfred-daemon"

    def client(self) -> AsyncClient:
        """The gRPC client, created on first use (grpc.aio channels belong to the running
        event loop, which does not exist yet when an agent builds its STT)."""
        if self._client is None:
            self._client = AsyncClient(self._target, max_resumes=self._max_resumes,
                                       **self._client_args)  # type: ignore[arg-type]
        return self._client

    def _session_options(self, language: NotGivenOr[str]) -> SessionOptions:
        if utils.is_given(language) and language:
            return dataclasses.replace(self._options, language=str(language))
        return self._options

    def stream(self, *, language: NotGivenOr[str] = NOT_GIVEN,
               conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> SpeechStream:
        return SpeechStream(stt=self, conn_options=conn_options,
                            options=self._session_options(language),
                            sample_rate=self._sample_rate)

    async def _recognize_impl(self, buffer: AudioBuffer, *,
                              language: NotGivenOr[str] = NOT_GIVEN,
                              conn_options: APIConnectOptions) -> stt.SpeechEvent:
        """One daemon session over the whole buffer, as fast as the daemon goes (no pacing,
        no partials); the finals joined. Bounded by ``conn_options.timeout`` per 10 s of
        audio, at least once."""
        frame = rtc.combine_audio_frames(buffer)
        if frame.sample_rate not in SAMPLE_RATES:
            resampler = rtc.AudioResampler(frame.sample_rate, self._sample_rate,
                                           num_channels=frame.num_channels)
            frame = rtc.combine_audio_frames([*resampler.push(frame), *resampler.flush()])
        options = dataclasses.replace(self._session_options(language), partials=False)
        finals: list[str] = []
        session_id = ""

        async def collect() -> None:
            nonlocal session_id
            async for ev in self.client().stream_pcm(_mono_pcm(frame), frame.sample_rate,
                                                     options=options):
                if self._event_hook is not None:
                    self._event_hook(ev)
                if ev.type == "session_started":
                    session_id = str(ev.data.get("session_id", ""))
                elif ev.type == "final_transcription" and ev.data.get("text"):
                    finals.append(str(ev.data["text"]))

        budget = conn_options.timeout * max(1.0, frame.duration / 10.0)
        try:
            await asyncio.wait_for(collect(), budget)
        except StreamError as exc:
            raise api_error(exc) from exc
        except asyncio.TimeoutError as exc:  # noqa: UP041 (not TimeoutError before 3.11)
            raise APITimeoutError(f"alfred-daemon at {self._target}: no result within "
                                  f"{budget:.0f} s") from exc
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT, request_id=session_id,
            alternatives=[stt.SpeechData(language=LanguageCode(options.language),
                                         text=" ".join(finals),
                                         start_time=0.0, end_time=frame.duration)])

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


class SpeechStream(stt.RecognizeStream):
    """Daemon sessions for a LiveKit STT stream: the frames pushed to it go out in 20 ms
    LINEAR16 chunks, the daemon's events come back as ``SpeechEvent``s (see the module's
    table).

    A session is opened at the first audio frame, not when LiveKit creates the stream (an
    agent's stream can wait long for a participant to publish audio, and the daemon closes a
    session that has not had a second of audio within ``limits.firstAudioTimeout``, 5 s).
    If the daemon closes a session while LiveKit still has audio to send (``idle`` after a
    long pause in the frames, ``max_duration``), the next frame opens another one. A broken
    gRPC stream is resumed by the client with the session's resume token (no audio lost);
    when that fails, the error is mapped by :func:`api_error` and LiveKit's retry calls
    ``_run`` again.
    """

    def __init__(self, *, stt: STT, conn_options: APIConnectOptions, options: SessionOptions,
                 sample_rate: int) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=sample_rate)
        self._alfred = stt
        self._options = options
        self._rate = sample_rate
        self._controls: list[Control] = []
        self._language = LanguageCode(options.language)
        self._session_id = ""
        self._anchor: float | None = None
        """Wall-clock time of the current session's audio offset 0."""
        self._run_anchor: float | None = None
        """The first session's anchor in this ``_run``: SpeechData times count from it."""
        self._input_done = False
        self._in_turn = False
        self._last_speech_end_ms = 0
        self._utterance_start_ms: dict[int, int] = {}
        self._sent_s = 0.0
        self._reported_s = 0.0

    @property
    def session_id(self) -> str:
        """The current daemon session ("" before the first audio frame)."""
        return self._session_id

    def send_control(self, control: Control) -> None:
        """Send a daemon control (``Control.force_end_of_turn()``, ``playback_started()``
        for barge-in events, ``flush()``...) before the next audio frame."""
        self._controls.append(control)

    async def _run(self) -> None:
        self._run_anchor = None
        self._input_done = False
        for _ in itertools.count():
            first = await self._first_frame()
            if first is None:
                return
            await self._session(first)
            if self._input_done:
                return
            logger.info("alfred-daemon closed session %s while audio goes on; the next "
                        "frame opens another", self._session_id)

    async def _first_frame(self) -> rtc.AudioFrame | None:
        """The next audio frame (a flush before any audio has nothing to flush); None once
        the input has ended."""
        for _ in itertools.count():
            try:
                item = await self._input_ch.recv()
            except utils.aio.ChanClosed:
                self._input_done = True
                return None
            if isinstance(item, rtc.AudioFrame):
                return item
        return None  # unreachable: the loop ends by returning

    async def _session(self, first: rtc.AudioFrame) -> None:
        # ``first`` was just taken from the input: it holds the audio up to now, so the
        # session's offset 0 is its start (set before the call, whose set-up takes time).
        self._anchor = time.time() - first.duration
        if self._run_anchor is None:
            self._run_anchor = self.start_time = self._anchor
        self._in_turn = False
        self._last_speech_end_ms = 0
        self._utterance_start_ms.clear()
        try:
            async for ev in self._alfred.client().stream(self._items(first), self._rate,
                                                         options=self._options):
                if self._alfred._event_hook is not None:
                    self._alfred._event_hook(ev)
                self._on_event(ev)
        except StreamError as exc:
            raise api_error(exc) from exc

    async def _items(self, first: rtc.AudioFrame) -> AsyncIterator[bytes | Control]:
        """``first`` and the input channel as 20 ms chunks (the client's unit of resume),
        controls between them; a LiveKit flush (``end_input``) sends what is buffered and a
        daemon FLUSH."""
        chunk = self._rate * FRAME_MS // 1000 * 2
        buf = bytearray()
        item: rtc.AudioFrame | stt.RecognizeStream._FlushSentinel = first
        for _ in itertools.count():
            while self._controls:
                yield self._controls.pop(0)
            if isinstance(item, rtc.AudioFrame):
                buf += _mono_pcm(item)
                self._sent_s += item.duration
                while len(buf) >= chunk:
                    yield bytes(buf[:chunk])
                    del buf[:chunk]
            else:  # RecognizeStream._FlushSentinel
                if buf:
                    yield bytes(buf)
                    buf.clear()
                yield Control.flush()
            try:
                item = await self._input_ch.recv()
            except utils.aio.ChanClosed:
                self._input_done = True
                break
        if buf:
            yield bytes(buf)

    def _wall(self, offset_ms: int) -> float | None:
        return None if self._anchor is None else self._anchor + offset_ms / 1000.0

    def _seconds(self, offset_ms: int) -> float:
        since_run = (self._anchor or 0.0) - (self._run_anchor or 0.0)
        return self.start_time_offset + since_run + offset_ms / 1000.0

    def _send(self, kind: stt.SpeechEventType, *, text: str | None = None, start_ms: int = 0,
              end_ms: int = 0, speech_start_time: float | None = None,
              speech_end_time: float | None = None) -> None:
        alternatives = [] if text is None else [stt.SpeechData(
            language=self._language, text=text, start_time=self._seconds(start_ms),
            end_time=self._seconds(end_ms), confidence=1.0)]  # no confidence: LiveKit's "unknown"
        self._event_ch.send_nowait(stt.SpeechEvent(
            type=kind, request_id=self._session_id, alternatives=alternatives,
            speech_start_time=speech_start_time, speech_end_time=speech_end_time))

    def _open_turn(self, offset_ms: int) -> None:
        if not self._in_turn:
            self._in_turn = True
            self._send(stt.SpeechEventType.START_OF_SPEECH,
                       speech_start_time=self._wall(offset_ms))

    def _on_event(self, ev: Event) -> None:
        data, offset = ev.data, ev.audio_offset_ms
        if ev.type == "session_started":
            self._session_id = str(data.get("session_id", ""))
        elif ev.type == "speech_started":
            self._utterance_start_ms[int(data.get("utterance_id", 0))] = offset
            self._open_turn(offset)
        elif ev.type == "speech_ended":
            self._last_speech_end_ms = offset
        elif ev.type == "partial_transcription" and data.get("text"):
            self._open_turn(offset)
            start = self._utterance_start_ms.get(int(data.get("utterance_id", 0)), offset)
            self._send(stt.SpeechEventType.INTERIM_TRANSCRIPT, text=str(data["text"]),
                       start_ms=start, end_ms=offset)
        elif ev.type == "final_transcription" and data.get("text"):
            self._open_turn(offset)
            self._utterance_start_ms.pop(int(data.get("utterance_id", 0)), None)
            self._send(stt.SpeechEventType.FINAL_TRANSCRIPT, text=str(data["text"]),
                       start_ms=int(data.get("start_ms", offset)), end_ms=offset)
        elif ev.type == "turn_ended" and self._in_turn:
            self._in_turn = False
            # The user stopped speaking where the last utterance ended, not when Smart Turn
            # answered: LiveKit's endpointing min_delay counts from here.
            end = self._last_speech_end_ms or offset
            self._send(stt.SpeechEventType.END_OF_SPEECH, speech_end_time=self._wall(end))
            self._report_usage()
        elif ev.type == "turn_resumed":
            logger.debug("turn %s resumed after a pause Smart Turn judged incomplete",
                         data.get("turn_id"))
        elif ev.type in ("frames_dropped", "error"):
            logger.warning("alfred-daemon %s: %s", ev.type, data)

    def _report_usage(self) -> None:
        """Audio sent since the last report, for LiveKit's STT metrics."""
        seconds, self._reported_s = self._sent_s - self._reported_s, self._sent_s
        if seconds > 0:
            self._event_ch.send_nowait(stt.SpeechEvent(
                type=stt.SpeechEventType.RECOGNITION_USAGE, request_id=self._session_id,
                recognition_usage=stt.RecognitionUsage(audio_duration=seconds)))
