"""Python client of alfred-daemon's gRPC streaming API.

Async::

    async with AsyncClient("127.0.0.1:50051") as client:
        async for event in client.stream_wav("call.wav", realtime=True):
            print(event.type, event.data)

Sync::

    with Client() as client:
        for event in client.stream_wav("call.wav"):
            ...

Audio sources: a WAV file (``stream_wav``), a numpy array or int16 PCM bytes
(``stream_array``/``stream_pcm``), or any (async) iterable of LINEAR16 frames (``stream``).
Events are :class:`Event` values with a snake_case ``type`` (``final_transcription``...) and
the event's fields in ``data``; ``event.message`` is the raw protobuf.

Resume: with ``resume=True`` (the default) a stream that breaks (UNAVAILABLE, connection
reset) reconnects with its resume token and re-sends the frames it still holds after the
last sequence the daemon confirmed, so no audio is lost or analysed twice. It also sends the
highest ``event_sequence`` it received; the daemon re-sends what the broken stream had
written after it (events in flight when the stream broke), and the client drops the ones it
already yielded, so every event is seen once.

Drain handover: a daemon that drains (a rolling restart behind a balancer) ends each session
at an utterance boundary and closes its stream with the ``alfred-reconnect: drained``
trailer and the last audio sequence it took. The client then opens a new session -- the
balancer gives it another daemon -- and sends the frames after that sequence, so no audio is
lost or analysed twice and every utterance's final comes once, from one daemon. The
drained session's ``session_closed`` is not yielded; the new session's ``session_started``
is (``resumed`` false, a new ``session_id``). Its events' ``audio_offset_ms`` count from its
own start; :attr:`Event.stream_offset_ms` counts from the stream's first frame.
"""

from __future__ import annotations

import asyncio
import threading
import time
import wave
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Coroutine,
    Iterable,
    Iterator,
)
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf.json_format import MessageToDict

from ._gen.alfred.v1 import alfred_pb2 as pb
from ._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

__all__ = ["AsyncClient", "Client", "Control", "Event", "SessionOptions", "StreamError", "pb"]

DEFAULT_TARGET = "127.0.0.1:50051"
FRAME_MS = 20
REPLAY_FRAMES = 1500
"""Frames (30 s at 20 ms) kept for re-sending after a resume."""
RESUMABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
HANDOVER_RETRYABLE = (*RESUMABLE, grpc.StatusCode.CANCELLED)
"""Failures on which the session that continues a drained one is opened again. The first
attempt may reach the draining daemon itself (the balancer has not yet seen its drain),
which refuses it or has exited; HAProxy reports the latter as CANCELLED. No session_started
came back, so nothing of the stream is on that daemon, and another attempt is safe."""
RECONNECT_TRAILER = "alfred-reconnect"
"""Trailer of a stream a draining daemon ended (value ``drained``): continue elsewhere."""
LAST_SEQUENCE_TRAILER = "alfred-last-sequence"
"""With it: the last audio sequence the drained session took."""
RESUME_RETRY_S = 0.2
"""Wait before resuming a broken stream."""
HANDOVER_RETRY_S = 0.5
"""Wait between attempts to open the session that takes over from a drained one: about the
time a balancer takes to see the daemon's drain (its agent check interval)."""

_T = TypeVar("_T")


class StreamError(Exception):
    """The daemon ended the stream with an error status, or could not be reached.

    ``str()`` is ``CODE: details``, the daemon's own sentence. ``unreachable`` is True when
    no connection to ``target`` could be made at all (nothing listening, unknown host, not a
    gRPC server): a caller's advice then differs ("start the daemon") from the daemon
    refusing the stream, though both arrive as UNAVAILABLE.
    """

    def __init__(self, code: grpc.StatusCode, details: str, *, target: str = "",
                 unreachable: bool = False) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details
        self.target = target
        self.unreachable = unreachable


class _FirstStatus:
    """The status a grpc.aio call ended with, as first reported.

    grpc.aio overwrites a server's status with a synthetic ``INTERNAL: Internal error from
    Core`` when a request write is still in flight as the server ends the call
    (grpc/grpc#36066) -- exactly what happens when the daemon rejects a session's config
    while the client already sends audio, so its INVALID_ARGUMENT sentence was lost (and the
    INTERNAL looked resumable). Done callbacks run when the real status is set, before the
    failed write overwrites it, so the status is copied there.
    """

    CORE_INTERNAL = "Internal error from Core"
    """The details of grpc.aio's synthetic status for a failed write."""
    SETTLE_S = 1.0
    """How long :meth:`settled` waits for the server's status to replace that one."""

    def __init__(self, call: grpc.aio.Call) -> None:
        self.call = call
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.trailers: tuple[tuple[str, str | bytes], ...] | None = None
        """The server's trailing metadata, kept with its status (the synthetic one has none)."""
        call.add_done_callback(self._done)

    async def drained_after(self) -> int | None:
        """The last audio sequence a drained session took, if the daemon ended this stream
        with the drain trailer; None otherwise."""
        after = _drained_after(self.trailers or ())
        if after is None:
            # The synthetic INTERNAL may have been the first status set, without trailers:
            # the server's own status is stored after it.
            await self.settled(self.status or (grpc.StatusCode.OK, ""))
            after = _drained_after(tuple(await self.call.trailing_metadata() or ()))
        return after

    async def settled(self, fallback: tuple[grpc.StatusCode, str]) -> tuple[grpc.StatusCode, str]:
        """The server's status. The failed write can also win the race and be the first
        status set; the server's own status still arrives after it (grpc.aio then stores it
        without running callbacks), so a synthetic INTERNAL is waited past, briefly."""
        status = self.status or fallback
        deadline = time.monotonic() + self.SETTLE_S
        while self._synthetic(status) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            status = (await self.call.code(), await self.call.details() or "")
        return status

    @classmethod
    def _synthetic(cls, status: tuple[grpc.StatusCode, str]) -> bool:
        return status == (grpc.StatusCode.INTERNAL, cls.CORE_INTERNAL)

    def _done(self, call: grpc.aio.Call) -> None:
        if self.status is None:
            code, details = _settled(call.code()), _settled(call.details())
            if code is not None:
                self.status = (code, details or "")
                self.trailers = tuple(_settled(call.trailing_metadata()) or ())


def _drained_after(trailers: tuple[tuple[str, str | bytes], ...]) -> int | None:
    """``alfred-last-sequence`` from trailers that carry ``alfred-reconnect: drained``."""
    found = {k: v if isinstance(v, str) else v.decode(errors="replace") for k, v in trailers}
    if found.get(RECONNECT_TRAILER) != "drained":
        return None
    try:
        return int(found.get(LAST_SEQUENCE_TRAILER, ""))
    except ValueError:
        return None


def _settled(coro: Coroutine[Any, Any, _T]) -> _T | None:
    """The value of a coroutine that can finish without waiting, computed synchronously.

    A done call's ``code()``/``details()`` only read the stored status, but grpc.aio offers
    them as coroutines, and a done callback cannot await. None if it would have to wait.
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        value: _T = stop.value
        return value
    coro.close()
    return None


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    """snake_case event name, e.g. ``partial_transcription``."""
    audio_offset_ms: int
    processing_ms: float
    server_receive_time: float
    data: dict[str, Any]
    message: pb.ServerEvent = field(repr=False)
    session_base_ms: int = 0
    """Where the event's session starts in the stream's audio (ms): 0, or after a drain
    handover the audio the earlier sessions of the stream took."""

    @property
    def stream_offset_ms(self) -> int:
        """``audio_offset_ms`` counted from the stream's first frame rather than from the
        start of the event's session (they differ after a drain handover)."""
        return self.audio_offset_ms + self.session_base_ms

    @property
    def event_sequence(self) -> int:
        """The event's number in its session (1, 2, ...); 0 on ``session_started``."""
        return int(self.message.event_sequence)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines shape: ``type``, ``audio_offset_ms``, ``processing_ms`` and the
        event's fields."""
        return {"type": self.type, "audio_offset_ms": self.audio_offset_ms,
                "processing_ms": round(self.processing_ms, 2), **self.data}

    @classmethod
    def from_message(cls, msg: pb.ServerEvent, session_base_ms: int = 0) -> Event:
        kind = msg.WhichOneof("event") or "unknown"
        data: dict[str, Any] = {}
        if kind != "unknown":
            body = getattr(msg, kind)
            data = MessageToDict(body, preserving_proto_field_name=True,
                                 always_print_fields_with_no_presence=True)
            # The proto3 JSON mapping writes 64-bit integers as strings; events are small
            # numbers (offsets, sequences), so give them back as ints.
            for fd in body.DESCRIPTOR.fields:
                if fd.name in data and fd.cpp_type in (fd.CPPTYPE_INT64, fd.CPPTYPE_UINT64):
                    data[fd.name] = int(data[fd.name])
        return cls(kind, int(msg.audio_offset_ms), float(msg.processing_ms),
                   float(msg.server_receive_time), data, msg, session_base_ms)


@dataclass(frozen=True, slots=True)
class SessionOptions:
    """What a SessionConfig carries besides the audio format; None = daemon default."""

    partials: bool | None = None
    partial_interval_ms: int | None = None
    vad_threshold: float | None = None
    min_speech_ms: int | None = None
    min_silence_ms: int | None = None
    turn_enabled: bool | None = None
    turn_threshold: float | None = None
    turn_silence_ms: int | None = None
    fallback_silence_ms: int | None = None
    frame_event_every: int = 0
    language: str = "en"

    def to_proto(self, sample_rate: int, resume_token: str = "",
                 last_event_sequence: int | None = None) -> pb.SessionConfig:
        """The SessionConfig; a resume passes its token and the highest event_sequence it
        received (so the daemon re-sends what came after it)."""
        cfg = pb.SessionConfig(encoding=pb.LINEAR16, sample_rate_hz=sample_rate, channels=1,
                               language=self.language,
                               frame_event_every=self.frame_event_every,
                               resume_token=resume_token)
        if last_event_sequence is not None:
            cfg.last_event_sequence = last_event_sequence
        if self.partials is not None:
            cfg.partials = self.partials
        if self.partial_interval_ms is not None:
            cfg.partial_interval_ms = self.partial_interval_ms
        for src, dst in ((self.vad_threshold, "threshold"), (self.min_speech_ms,
                         "min_speech_ms"), (self.min_silence_ms, "min_silence_ms")):
            if src is not None:
                setattr(cfg.vad, dst, src)
        for src, dst in ((self.turn_enabled, "enabled"), (self.turn_threshold, "threshold"),
                         (self.turn_silence_ms, "silence_ms"),
                         (self.fallback_silence_ms, "fallback_silence_ms")):
            if src is not None:
                setattr(cfg.turn, dst, src)
        return cfg


@dataclass(frozen=True, slots=True)
class Control:
    """A control message to send between audio frames of a stream.

    Put it in the iterable of frames given to ``stream()``: ``Control.playback_started()``
    when the agent's audio output starts (the daemon then reports barge-in as
    ``interruption``), ``playback_stopped()`` when it ends, ``force_end_of_turn()``,
    ``flush()`` (finalise the current utterance now), ``keepalive()``, or
    ``reconfigure(options)``. Controls are not re-sent after a resume: the daemon keeps the
    session's state, and a control is an instruction for that moment, not audio to replay.
    """

    action: int
    """A ``pb.Control.Action`` value."""
    options: SessionOptions | None = None
    """RECONFIGURE only: the new VAD, turn and partial settings."""

    @classmethod
    def playback_started(cls) -> Control:
        return cls(pb.Control.PLAYBACK_STARTED)

    @classmethod
    def playback_stopped(cls) -> Control:
        return cls(pb.Control.PLAYBACK_STOPPED)

    @classmethod
    def force_end_of_turn(cls) -> Control:
        return cls(pb.Control.FORCE_END_OF_TURN)

    @classmethod
    def flush(cls) -> Control:
        return cls(pb.Control.FLUSH)

    @classmethod
    def keepalive(cls) -> Control:
        return cls(pb.Control.KEEPALIVE)

    @classmethod
    def reconfigure(cls, options: SessionOptions) -> Control:
        return cls(pb.Control.RECONFIGURE, options)

    def to_proto(self, sample_rate: int) -> pb.ClientMessage:
        msg = pb.Control(action=self.action)  # type: ignore[arg-type]
        if self.options is not None:
            msg.config.CopyFrom(self.options.to_proto(sample_rate))
        return pb.ClientMessage(control=msg)


Item = bytes | Control
"""What a stream's source yields: LINEAR16 audio frames, with controls between them."""


# ----------------------------------------------------------------------------- audio


def read_wav_pcm(path: str | Path) -> tuple[bytes, int]:
    """A mono 16-bit PCM WAV file's samples and rate (the daemon resamples other rates)."""
    with wave.open(str(path), "rb") as wf:
        if wf.getsampwidth() != 2 or wf.getnchannels() != 1:
            raise ValueError(f"{path}: need 16-bit mono PCM WAV (got {wf.getnchannels()} "
                             f"channels, {8 * wf.getsampwidth()}-bit)")
        return wf.readframes(wf.getnframes()), wf.getframerate()


def pcm_frames(pcm: bytes, sample_rate: int, frame_ms: int = FRAME_MS) -> list[bytes]:
    step = sample_rate * frame_ms // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def array_to_pcm(array: Any) -> bytes:
    """numpy float (-1..1) or int16 array -> LINEAR16 bytes."""
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype != np.int16:
        arr = (np.clip(arr.astype(np.float32), -1.0, 1.0 - 1 / 32768) * 32768).astype(np.int16)
    return arr.astype("<i2").tobytes()


# ----------------------------------------------------------------------------- async


def _credentials(tls_ca: str | Path | None, tls_cert: str | Path | None,
                 tls_key: str | Path | None) -> grpc.ChannelCredentials | None:
    """TLS channel credentials from PEM files (None: plaintext). ``tls_ca`` alone: trust
    that CA; with ``tls_cert`` and ``tls_key``: also present a client certificate (mTLS)."""
    if tls_ca is None and tls_cert is None:
        return None
    def read(path: str | Path | None) -> bytes | None:
        return Path(path).read_bytes() if path is not None else None
    return grpc.ssl_channel_credentials(root_certificates=read(tls_ca),
                                        private_key=read(tls_key),
                                        certificate_chain=read(tls_cert))


def _auth_metadata(token: str | None) -> tuple[tuple[str, str], ...] | None:
    """``authorization`` metadata for a daemon that requires bearer tokens."""
    return (("authorization", f"Bearer {token}"),) if token else None


DAEMON_ID_HEADER = "alfred-daemon-id"


def routing_metadata(metadata: tuple[tuple[str, str], ...] | None,
                     resume_token: str) -> tuple[tuple[str, str], ...] | None:
    """``metadata`` plus ``alfred-daemon-id`` when resuming with a token a daemon with an id
    issued (``<daemon_id>.<random>``): a load balancer in front of several daemons routes
    the resume to the one that holds the session on it. Tokens without an id (one daemon)
    add nothing."""
    daemon_id, dot, _ = resume_token.partition(".")
    if not dot or not daemon_id:
        return metadata
    return (*(metadata or ()), (DAEMON_ID_HEADER, daemon_id))


class AsyncClient:
    """``token``: the daemon's bearer token, if it requires one (``security.tokens_file``).
    ``tls_ca``: PEM CA to verify a TLS daemon with (``tls_cert``/``tls_key``: a client
    certificate, for a daemon that asks for one)."""

    def __init__(self, target: str = DEFAULT_TARGET, *, max_resumes: int = 3,
                 token: str | None = None, tls_ca: str | Path | None = None,
                 tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> None:
        self.target = target
        self.max_resumes = max_resumes
        self._metadata = _auth_metadata(token)
        creds = _credentials(tls_ca, tls_cert, tls_key)
        self._channel = (grpc.aio.secure_channel(target, creds) if creds is not None
                         else grpc.aio.insecure_channel(target))
        self._stub = pb_grpc.AlfredStub(self._channel)
        self.session_id = ""
        self.resume_token = ""
        self.last_event_sequence = 0
        """The highest event_sequence yielded by the latest ``stream`` (for information:
        each stream dedupes with its own count, so streams may share a client)."""

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def status(self) -> dict[str, Any]:
        import json

        doc = await self._stub.GetPipelineStatus(pb.GetPipelineStatusRequest(),
                                                 metadata=self._metadata)
        out: dict[str, Any] = json.loads(doc.json)
        return out

    async def stream_wav(self, path: str | Path, *, realtime: bool = False,
                         options: SessionOptions | None = None) -> AsyncIterator[Event]:
        pcm, rate = read_wav_pcm(path)
        async for ev in self.stream_pcm(pcm, rate, realtime=realtime, options=options):
            yield ev

    async def stream_array(self, array: Any, sample_rate: int, *, realtime: bool = False,
                           options: SessionOptions | None = None) -> AsyncIterator[Event]:
        async for ev in self.stream_pcm(array_to_pcm(array), sample_rate, realtime=realtime,
                                        options=options):
            yield ev

    async def stream_pcm(self, pcm: bytes, sample_rate: int, *, realtime: bool = False,
                         options: SessionOptions | None = None) -> AsyncIterator[Event]:
        frames = pcm_frames(pcm, sample_rate)

        async def paced() -> AsyncIterator[bytes]:
            t0 = time.monotonic()
            for k, frame in enumerate(frames):
                yield frame
                if realtime:
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * FRAME_MS / 1000
                                            - time.monotonic()))

        async for ev in self.stream(paced(), sample_rate, options=options):
            yield ev

    async def stream(self, frames: AsyncIterable[Item] | Iterable[Item], sample_rate: int,
                     *, options: SessionOptions | None = None,
                     resume: bool = True) -> AsyncIterator[Event]:
        """Send ``frames`` (LINEAR16 bytes, with :class:`Control` messages between them) and
        yield the session's events until it closes.

        Each event is yielded once: after a resume the daemon re-sends the events after the
        highest ``event_sequence`` received, and any it sends again is dropped here. When
        the daemon drains, the stream continues on a new session (see the module doc);
        resumes and handover attempts together are at most ``max_resumes``."""
        events = _Stream(self, frames, sample_rate, options or SessionOptions(),
                         resume).events()
        try:
            async for ev in events:
                yield ev
        finally:
            await events.aclose()


class _Source:
    """A stream's items, shared by the calls that carry it in turn (resumes, handovers).
    A call told to stop sending leaves the item it was waiting for to the next call: no
    frame is ever taken by a call that will not send it."""

    def __init__(self, frames: AsyncIterable[Item] | Iterable[Item]) -> None:
        self._items = _aiter(frames)
        self._next: asyncio.Future[Item] | None = None
        self.done = False
        """The frames are exhausted."""

    async def next(self, stop: asyncio.Event) -> Item | None:
        """The next item; None at the end of the frames, or once ``stop`` is set."""
        if self.done or stop.is_set():
            return None
        if self._next is None:
            self._next = asyncio.ensure_future(anext(self._items))
        stopped = asyncio.ensure_future(stop.wait())
        either: set[asyncio.Future[Any]] = {self._next, stopped}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if stop.is_set() or not self._next.done():
            return None
        ready, self._next = self._next, None
        try:
            return ready.result()
        except StopAsyncIteration:
            self.done = True
            return None

    def close(self) -> None:
        if self._next is not None:
            self._next.cancel()


class _Stream:
    """One :meth:`AsyncClient.stream`: the calls that carry it one after another (a
    resume after a broken connection, a new session after a drain), the frames sent (kept
    for re-sending) and the events yielded (for dropping re-sends)."""

    def __init__(self, client: AsyncClient, frames: AsyncIterable[Item] | Iterable[Item],
                 sample_rate: int, options: SessionOptions, resume: bool) -> None:
        self.client = client
        self.source = _Source(frames)
        self.sample_rate = sample_rate
        self.options = options
        self.resume = resume
        self.replay: deque[tuple[int, bytes, float]] = deque(maxlen=REPLAY_FRAMES)
        """(sequence, pcm, where the frame starts in the stream's audio in ms)"""
        self.seq = 0
        self.sent_ms = 0.0
        self.attempts = 0
        """Resumes and handovers so far (at most the client's ``max_resumes``)."""
        self.token = ""
        self.confirmed = 0
        """Frames up to this sequence are the daemon's; a new call re-sends the rest."""
        self.highest = 0
        """The highest event_sequence yielded on the current session."""
        self.closed = False
        self.drained: Event | None = None
        """A drained session's session_closed, held back (yielded if no handover)."""
        self.handover = False
        """Opening the session that continues a drained one."""
        self.base_ms = 0
        """Where the current session starts in the stream's audio."""

    async def requests(self, token: str, last_event: int,
                       stop: asyncio.Event) -> AsyncIterator[pb.ClientMessage]:
        """One call's messages: the config, the frames the daemon may not have, then new
        items until the frames end (a half-close) or ``stop`` is set."""
        yield pb.ClientMessage(config=self.options.to_proto(
            self.sample_rate, token, last_event if token else None))
        for s, frame, _ in list(self.replay):
            if s > self.confirmed:
                yield pb.ClientMessage(audio=pb.AudioFrame(sequence=s, pcm=frame))
        while (item := await self.source.next(stop)) is not None:
            if isinstance(item, Control):
                yield item.to_proto(self.sample_rate)
                continue
            self.seq += 1
            self.replay.append((self.seq, item, self.sent_ms))
            self.sent_ms += len(item) / 2 / self.sample_rate * 1000.0
            yield pb.ClientMessage(audio=pb.AudioFrame(sequence=self.seq, pcm=item))

    async def events(self) -> AsyncGenerator[Event, None]:
        c = self.client
        try:
            while True:
                stop = asyncio.Event()
                call = c._stub.StreamSession(
                    self.requests(self.token, self.highest, stop),
                    metadata=routing_metadata(c._metadata, self.token))
                first = _FirstStatus(call)
                self.drained = None
                try:
                    async for msg in call:
                        ev = self._received(msg, stop)
                        if ev is not None:
                            yield ev
                except grpc.aio.AioRpcError as exc:
                    if not self.closed:
                        await self._retry_or_raise(exc, first)
                        continue
                    # The session's last event arrived; only a drain can leave more to do.
                finally:
                    stop.set()
                if self.drained is None:
                    return
                if not await self._hand_over(first):
                    yield self.drained
                    return
        finally:
            self.source.close()

    def _received(self, msg: pb.ServerEvent, stop: asyncio.Event) -> Event | None:
        """The event to yield for ``msg`` (None: a re-send, or a drained session_closed)."""
        if msg.event_sequence:  # 0: outside the sequence, never a re-send
            if msg.event_sequence <= self.highest:
                return None  # re-sent after a resume; yielded already
            self.highest = self.client.last_event_sequence = msg.event_sequence
        ev = Event.from_message(msg, self.base_ms)
        if ev.type == "session_started":
            self.client.session_id = msg.session_started.session_id
            self.client.resume_token = self.token = msg.session_started.resume_token
            self.confirmed = max(self.confirmed, msg.session_started.last_sequence)
            self.handover = False
        elif ev.type == "session_closed":
            self.closed = True
            # Nothing more goes to this session: half-close, so that the daemon ends the
            # call with both sides closed (see the daemon's CLOSE_LINGER_S).
            stop.set()
            if ev.data.get("reason") == "shutdown":
                self.drained = ev  # yielded unless the stream continues elsewhere
                return None
        return ev

    async def _retry_or_raise(self, exc: grpc.aio.AioRpcError, first: _FirstStatus) -> None:
        """Before another call after a broken one: raise StreamError if it is not to be
        resumed (or retried, when opening a handover's session), else wait a moment."""
        c = self.client
        code, details = await first.settled((exc.code(), exc.details() or ""))
        retryable = HANDOVER_RETRYABLE if self.handover else RESUMABLE
        if not (self.resume and (self.token or self.handover) and code in retryable
                and self.attempts < c.max_resumes):
            # TRANSIENT_FAILURE: the channel could not connect, as opposed to a daemon
            # that answered UNAVAILABLE itself (shutting down).
            unreachable = (code == grpc.StatusCode.UNAVAILABLE and c._channel
                           .get_state() == grpc.ChannelConnectivity.TRANSIENT_FAILURE)
            raise StreamError(code, details, target=c.target,
                              unreachable=unreachable) from None
        self.attempts += 1
        await asyncio.sleep(HANDOVER_RETRY_S if self.handover else RESUME_RETRY_S)

    async def _hand_over(self, first: _FirstStatus) -> bool:
        """After a drained session's last event: set up the session that continues the
        stream (no token, so a balancer gives it another daemon) with the frames after the
        drained one's last, if its daemon said which and any are left."""
        after = await first.drained_after() if self.resume else None
        if after is None or self.attempts >= self.client.max_resumes:
            return False
        if self.source.done and self.seq <= after:
            return False  # nothing left to send
        self.confirmed = after
        self.base_ms = round(next((start for s, _, start in self.replay if s > after),
                                  self.sent_ms))
        self.token = self.client.resume_token = ""
        self.highest = 0
        self.closed = False
        self.handover = True
        self.attempts += 1
        return True


async def _aiter(frames: AsyncIterable[Item] | Iterable[Item]) -> AsyncIterator[Item]:
    if isinstance(frames, AsyncIterable):
        async for f in frames:
            yield f
    else:
        for f in frames:
            yield f


# ----------------------------------------------------------------------------- sync


class Client:
    """Blocking client: the same API, iterators instead of async iterators."""

    def __init__(self, target: str = DEFAULT_TARGET, *, token: str | None = None,
                 tls_ca: str | Path | None = None, tls_cert: str | Path | None = None,
                 tls_key: str | Path | None = None) -> None:
        self.target = target
        self._metadata = _auth_metadata(token)
        creds = _credentials(tls_ca, tls_cert, tls_key)
        self._channel = (grpc.secure_channel(target, creds) if creds is not None
                         else grpc.insecure_channel(target))
        self._stub = pb_grpc.AlfredStub(self._channel)
        self.session_id = ""
        self.resume_token = ""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def status(self) -> dict[str, Any]:
        import json

        out: dict[str, Any] = json.loads(
            self._stub.GetPipelineStatus(pb.GetPipelineStatusRequest(),
                                         metadata=self._metadata).json)
        return out

    def stream_wav(self, path: str | Path, *, realtime: bool = False,
                   options: SessionOptions | None = None) -> Iterator[Event]:
        pcm, rate = read_wav_pcm(path)
        return self.stream_pcm(pcm, rate, realtime=realtime, options=options)

    def stream_array(self, array: Any, sample_rate: int, *, realtime: bool = False,
                     options: SessionOptions | None = None) -> Iterator[Event]:
        return self.stream_pcm(array_to_pcm(array), sample_rate, realtime=realtime,
                               options=options)

    def stream_pcm(self, pcm: bytes, sample_rate: int, *, realtime: bool = False,
                   options: SessionOptions | None = None) -> Iterator[Event]:
        frames = pcm_frames(pcm, sample_rate)

        def paced() -> Iterator[bytes]:
            t0 = time.monotonic()
            for k, frame in enumerate(frames):
                yield frame
                if realtime:
                    time.sleep(max(0.0, t0 + (k + 1) * FRAME_MS / 1000 - time.monotonic()))

        return self.stream(paced(), sample_rate, options=options)

    def stream(self, frames: Iterable[Item], sample_rate: int, *,
               options: SessionOptions | None = None) -> Iterator[Event]:
        """Send ``frames`` (LINEAR16 bytes, with :class:`Control` messages between them) and
        yield the session's events until it closes. No resume: see :class:`AsyncClient`."""
        options = options or SessionOptions()
        closed = threading.Event()

        def requests() -> Iterator[pb.ClientMessage]:
            yield pb.ClientMessage(config=options.to_proto(sample_rate))
            seq = 0
            for item in frames:
                if closed.is_set():
                    return  # half-close: the session is over (as AsyncClient.stream does)
                if isinstance(item, Control):
                    yield item.to_proto(sample_rate)
                    continue
                seq += 1
                yield pb.ClientMessage(audio=pb.AudioFrame(sequence=seq, pcm=item))

        try:
            for msg in self._stub.StreamSession(requests(), metadata=self._metadata):
                ev = Event.from_message(msg)
                if ev.type == "session_started":
                    self.session_id = msg.session_started.session_id
                    self.resume_token = msg.session_started.resume_token
                elif ev.type == "session_closed":
                    closed.set()
                yield ev
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = exc.details() if hasattr(exc, "details") else str(exc)
            raise StreamError(code, details or "", target=self.target) from None

