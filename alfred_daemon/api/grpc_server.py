"""The gRPC API: ``alfred.v1.Alfred`` plus standard health checking and reflection.

Runs on the supervisor's event loop (grpc.aio), so a stream handler calls the runtime's
in-process API directly.

A stream's life: the first message must be a SessionConfig (validated; resume or admit a
session), then frames and controls are applied as they arrive while a writer task drains
the session's :class:`~.outbox.Outbox` to the client. Each write has a deadline: a client
that stops reading is cut off with RESOURCE_EXHAUSTED instead of holding memory. A stream
that ends without the client half-closing (network drop, cancel, deadline) *detaches* the
session: it keeps running, its events wait in the outbox, and a new stream with the resume
token picks it up within ``resume_window_s``; frames re-sent with a sequence number at or
below the last one processed are skipped, so nothing is analysed twice. Events go the other
way at least once: each is numbered and kept in the session's :class:`~.replay.ReplayLog`
before it is written, and a resume that says which ``event_sequence`` it got up to is
re-sent the rest first (a client deduping by sequence then sees each event exactly once).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import inspect
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from ..engine.config import check_range
from ..engine.errors import InvalidAudioError
from ..engine.events import Event, SessionClosed
from ..runtime.errors import (
    AdmissionError,
    DaemonUnavailableError,
    SessionBackloggedError,
    SessionNotFoundError,
)
from ..runtime.health import Health
from ..runtime.supervisor import Supervisor
from .auth import UNAUTHENTICATED, Authenticator, Principal
from .convert import (
    MAX_FRAME_BYTES,
    InvalidRequestError,
    effective_config,
    engine_config,
    server_event,
)
from .outbox import Outbox, fill
from .replay import ReplayLog, shed_notice
from .tls import TlsFiles

log = logging.getLogger(__name__)

SERVICE = "alfred.v1.Alfred"
HALF_CLOSE_CHECK_S = 0.05
TAKEOVER_TIMEOUT_S = 5.0
"""How long a resume waits for the stream still attached to its session to let go."""


DAEMON_ID_HEADER = "alfred-daemon-id"
"""Metadata naming the daemon that holds a session (``runtime.daemon_id``): sent back on
every stream, and by a resuming client, so that a balancer routes the resume here."""


def new_resume_token(daemon_id: str) -> str:
    """A fresh resume token: ``<daemon_id>.<random>`` when the daemon has an id (the random
    part is URL-safe base64, which has no '.'), the bare random part otherwise, as before."""
    token = secrets.token_urlsafe(24)
    return f"{daemon_id}.{token}" if daemon_id else token


MESSAGE_OVERHEAD_BYTES = 1024
"""Room above a largest audio frame for the rest of its ClientMessage (tags, lengths,
sequence, capture_time): a few dozen bytes, rounded up generously."""


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    listen: str = "127.0.0.1:50051"
    max_message_bytes: int = 4 << 20
    """gRPC's own limit on one message either way. It must admit a ClientMessage carrying
    the largest frame the API documents (1 MiB of audio), or such frames would fail with
    the transport's RESOURCE_EXHAUSTED instead of being taken."""
    write_deadline_s: float = 10.0
    """A write blocked this long (client not reading) cancels the stream."""
    resume_window_s: float = 30.0
    outbox_limit: int = 256
    keepalive_time_s: float = 30.0
    keepalive_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        check_range("grpc.max_message_bytes", self.max_message_bytes,
                    MAX_FRAME_BYTES + MESSAGE_OVERHEAD_BYTES, 1 << 30)


class Undecodable:
    """What a request's bytes became when they were not the method's message. grpc.aio
    would otherwise end the call UNKNOWN ("Unexpected DecodeError") and log a traceback per
    call for what is only a client's malformed input; the handlers answer this with
    INVALID_ARGUMENT instead."""

    __slots__ = ("type_name",)

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    @property
    def message(self) -> str:
        return (f"the request is not a valid {self.type_name} message (its bytes do not parse "
                "as protobuf); send messages built from proto/alfred/v1/alfred.proto")


def _lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """``parse`` (a method's request deserializer), giving :class:`Undecodable` instead of
    raising for bytes that are not its message."""
    descriptor = getattr(getattr(parse, "__self__", None), "DESCRIPTOR", None)
    name = descriptor.full_name if descriptor is not None else "request"

    def lenient(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception:  # any failure to parse is the client's bytes, never the daemon's
            return Undecodable(name)

    return lenient


async def _checked(requests: AsyncIterator[Any],
                   context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
    """A streamed request's messages; an undecodable one ends the call INVALID_ARGUMENT."""
    async for request in requests:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        yield request


def _lenient_handler(handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    """``handler`` with a lenient deserializer, and its behaviour answering an undecodable
    request INVALID_ARGUMENT (a handler that reads with ``context.read()``, as
    StreamSession does, sees the :class:`Undecodable` itself)."""
    parse = handler.request_deserializer
    if parse is None:
        return handler
    fields: dict[str, Any] = {"request_deserializer": _lenient(parse)}
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        behaviour = getattr(handler, kind)
        if behaviour is not None:
            fields[kind] = _guarded(behaviour, streamed=kind.startswith("stream"))
    replace: Callable[..., grpc.RpcMethodHandler[Any, Any]] = handler._replace  # type: ignore[attr-defined]
    return replace(**fields)


def _guarded(behaviour: Callable[..., Any], *, streamed: bool) -> Callable[..., Any]:
    """``behaviour`` behind the Undecodable check, keeping its shape (grpc.aio calls an
    async generator function and a coroutine function differently)."""
    if inspect.isasyncgenfunction(behaviour):
        async def generate(request: Any, context: grpc.aio.ServicerContext[Any, Any],
                           ) -> AsyncIterator[Any]:
            if streamed:
                request = _checked(request, context)
            elif isinstance(request, Undecodable):
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
            async for response in behaviour(request, context):
                yield response

        return generate

    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if streamed:
            request = _checked(request, context)
        elif isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)

    return call


class LenientRequests(grpc.aio.ServerInterceptor):
    """Every method of every service on the server (Alfred, health, reflection) takes
    undecodable request bytes as a client error: INVALID_ARGUMENT with a sentence, nothing
    logged. grpc.aio would end such a call UNKNOWN ("Unexpected DecodeError") and log an
    ERROR with a traceback for each."""

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails],
                                     Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        return handler if handler is None else _lenient_handler(handler)


class _Health(HealthServicer):
    """The standard health service, whose NOT_FOUND for a service it does not know says so
    in a sentence (the stock one sends no details)."""

    async def Check(  # noqa: N802 -- gRPC method name
        self, request: health_pb2.HealthCheckRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in (SERVICE, ""):
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown service {request.service[:64]!r}; this server "
                                f"reports on '' (the whole server) and {SERVICE!r}")
        response: health_pb2.HealthCheckResponse = await super().Check(request, context)
        return response


@dataclass(slots=True, eq=False)
class _Attached:
    """The API's record of a session: survives its stream for resume."""

    session_id: str
    token: str
    owner: str
    """Name of the bearer token that opened it: only that token may resume it."""
    sample_rate: int
    config: pb.SessionConfig
    outbox: Outbox
    replay: ReplayLog = field(default_factory=ReplayLog)
    """Events already handed to a stream, numbered, until a resume confirms them."""
    pump: asyncio.Task[None] | None = None
    last_sequence: int = 0
    frames_skipped: int = 0
    frame_event_every: int = 0
    received_ms: float = 0.0
    receipts: deque[tuple[float, float, float | None]] = field(
        default_factory=lambda: deque(maxlen=6000))
    """(audio ms at the end of a frame, receive time, client capture time): 2 min of frames."""
    stream_active: bool = False
    takeover: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a resume while a stream is still attached: that stream lets go."""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the attached stream has let go of the session."""
    resume_floor: int | None = None
    """After a resume: frames up to this sequence are re-sends and are skipped."""
    detached_at: float | None = None
    closed: bool = False
    """The runtime session is over (its outbox may still hold events)."""
    delivered: bool = False
    """session_closed is known to have reached the client (a resume confirmed its
    event_sequence), or the session was refused or expired: nothing to resume. A stream
    that ended OK after session_closed is not proof -- grpc.aio cannot tell the handler
    whether the client read the last writes -- so that session stays resumable until
    :meth:`AlfredServicer.expire` forgets it after ``resume_window_s``."""

    def receipt(self, offset_ms: int) -> tuple[float, float | None]:
        ends = [r[0] for r in self.receipts]
        i = bisect.bisect_left(ends, offset_ms)
        if i >= len(self.receipts):
            if not self.receipts:
                return 0.0, None
            i = len(self.receipts) - 1
        _, t, cap = self.receipts[i]
        return t, cap


class AlfredServicer(pb_grpc.AlfredServicer):
    def __init__(self, sup: Supervisor, config: GrpcConfig,
                 auth: Authenticator | None = None) -> None:
        self.sup = sup
        self.config = config
        self.auth = auth or Authenticator()
        self.sessions: dict[str, _Attached] = {}
        """By resume token."""
        self.accepting = True

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        """The caller's token (``authorization: Bearer ...`` metadata), or abort with
        UNAUTHENTICATED. The health service does not ask: probes carry no token."""
        metadata = dict(context.invocation_metadata() or ())
        value = metadata.get("authorization")
        principal = self.auth.authenticate(value if isinstance(value, str) else None)
        if principal is None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED)
            raise AssertionError  # unreachable: abort raises
        return principal

    # ------------------------------------------------------------------ unary

    async def GetPipelineStatus(  # noqa: N802 -- gRPC method name
        self, request: pb.GetPipelineStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusDocument:
        await self._authenticate(context)
        return pb.StatusDocument(json=json.dumps(self.sup.status()))

    async def GetSessionStatus(  # noqa: N802
        self, request: pb.GetSessionStatusRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusDocument:
        await self._authenticate(context)
        try:
            return pb.StatusDocument(json=json.dumps(self.sup.session_status(request.session_id)))
        except SessionNotFoundError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
            raise  # unreachable: abort raises

    async def Optimize(  # noqa: N802
        self, request: pb.OptimizeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.StatusDocument:
        await self._authenticate(context)
        done = await self.sup.optimize(trigger_gc=request.trigger_gc,
                                       cleanup_sessions=request.cleanup_sessions,
                                       optimize_buffers=request.optimize_buffers)
        return pb.StatusDocument(json=json.dumps(done))

    # ------------------------------------------------------------------ stream

    async def StreamSession(  # type: ignore[override]  # noqa: N802
        self, request_iterator: AsyncIterator[pb.ClientMessage],
        context: grpc.aio.ServicerContext[pb.ClientMessage, pb.ServerEvent],
    ) -> None:
        # Written with context.read()/write() rather than as a generator so every write
        # can carry a deadline (a generator's yield blocks forever on a non-reading client).
        principal = await self._authenticate(context)
        first = await context.read()
        if isinstance(first, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, first.message)
        if not isinstance(first, pb.ClientMessage):
            return  # EOF before anything was sent
        if first.WhichOneof("message") != "config":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                "the first message must be a SessionConfig (config first, "
                                "then audio)")
        attached = await self._attach(first.config, context, principal)
        if self.sup.config.daemon_id:
            # In the response headers, where a balancer can learn which daemon has it.
            await context.send_initial_metadata(
                ((DAEMON_ID_HEADER, self.sup.config.daemon_id),))
        resumed = bool(first.config.resume_token)
        # A resume that names the last event it got is re-sent the rest; one that does not
        # (a client predating last_event_sequence) just continues with the outbox.
        replay_after = (first.config.last_event_sequence
                        if resumed and first.config.HasField("last_event_sequence") else None)
        try:
            # Before the writer exists: a call takes one write at a time.
            await self._send_started(attached, context, resumed=resumed)
        except BaseException:
            attached.stream_active = False
            attached.detached_at = time.monotonic()
            raise
        writer = asyncio.create_task(self._write_loop(attached, context, replay_after))
        # Retrieve the writer's outcome whatever happens to this handler (a client cancel
        # cancels the handler mid-await), so a failed write is never an orphan exception.
        writer.add_done_callback(lambda t: t.cancelled() or t.exception())
        half_closed = False
        attached.released.clear()
        try:
            half_closed = await self._read_loop(attached, context, writer)
        finally:
            if half_closed:
                # End of input: finalise (unless the session already ended), then let the
                # writer deliver everything up to session_closed (the client still reads).
                with contextlib.suppress(SessionNotFoundError):
                    if not attached.closed:
                        await self.sup.finish_session(attached.session_id)
            elif not writer.done():
                writer.cancel()
            # Always collect the writer, so its failure (a cancelled call, a deadline) is
            # retrieved here and never surfaces as an unhandled task exception.
            (outcome,) = await asyncio.gather(writer, return_exceptions=True)
            attached.stream_active = False
            taken_over = attached.takeover.is_set()
            attached.released.set()
            if not attached.delivered:
                attached.detached_at = time.monotonic()
                # After session_closed went out (routine; whether it arrived is unknown).
                finished = outcome is True
                log.log(logging.DEBUG if finished else logging.INFO, "session %s %s; resumable "
                        "for %.0f s", attached.session_id, "finished" if finished else
                        "detached", self.config.resume_window_s)
        if taken_over and not context.cancelled():
            await context.abort(grpc.StatusCode.ABORTED,
                                "a newer stream resumed this session with its token")
        elif isinstance(outcome, TimeoutError) and not context.cancelled():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client did not read events for "
                                f"{self.config.write_deadline_s:.0f} s; stream cancelled "
                                "(the session can be resumed)")
        elif isinstance(outcome, Exception) and not context.cancelled():
            log.error("session %s: event writer failed", attached.session_id,
                      exc_info=outcome)

    async def _attach(self, cfg: pb.SessionConfig, context: grpc.aio.ServicerContext[Any, Any],
                      principal: Principal) -> _Attached:
        if not self.accepting:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down")
        if cfg.resume_token:
            attached = self.sessions.get(cfg.resume_token)
            if attached is None or attached.delivered or attached.owner != principal.name:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    "unknown or expired resume token")
                raise AssertionError  # unreachable
            if attached.stream_active:
                # The usual cause is a client reconnecting before the daemon has noticed
                # its old connection is gone: the newer stream takes the session over.
                attached.takeover.set()
                try:
                    await asyncio.wait_for(attached.released.wait(), TAKEOVER_TIMEOUT_S)
                except TimeoutError:
                    await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                        "this session is still attached to another stream")
            attached.takeover.clear()
            attached.released.clear()
            attached.stream_active = True
            attached.detached_at = None
            attached.resume_floor = attached.last_sequence
            if (cfg.HasField("last_event_sequence")
                    and attached.replay.confirm(cfg.last_event_sequence)):
                attached.delivered = True  # the client has session_closed: the end is known
            return attached
        try:
            engine = engine_config(cfg, self.sup.config.engine)
        except InvalidRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        over = self.auth.over_limit(principal, self.sup.sessions_of(principal.name))
        if over is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        try:
            sid = self.sup.open_session(engine, sample_rate=cfg.sample_rate_hz,
                                        owner=self.auth.owner(principal), transport="grpc")
        except AdmissionError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            raise
        except DaemonUnavailableError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            raise
        except InvalidAudioError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            raise
        attached = _Attached(
            session_id=sid, token=new_resume_token(self.sup.config.daemon_id),
            owner=principal.name,
            sample_rate=cfg.sample_rate_hz, config=effective_config(cfg, engine),
            outbox=Outbox(self.config.outbox_limit), frame_event_every=cfg.frame_event_every,
            stream_active=True,
        )
        attached.pump = asyncio.create_task(self._pump(attached), name=f"pump-{sid[:8]}")
        self.sessions[attached.token] = attached
        return attached

    async def _send_started(self, a: _Attached,
                            context: grpc.aio.ServicerContext[Any, Any], resumed: bool) -> None:
        msg = pb.ServerEvent(server_receive_time=time.time())
        msg.session_started.session_id = a.session_id
        msg.session_started.resume_token = a.token
        msg.session_started.resume_window_s = self.config.resume_window_s
        msg.session_started.effective_config.CopyFrom(a.config)
        msg.session_started.resumed = resumed
        msg.session_started.last_sequence = a.last_sequence
        await asyncio.wait_for(context.write(msg), self.config.write_deadline_s)

    async def _pump(self, a: _Attached) -> None:
        """Session events -> outbox, for the session's whole life (across streams)."""
        try:
            await fill(a.outbox, self.sup.events(a.session_id), lambda: a.frame_event_every)
        finally:
            a.closed = True

    async def _write_loop(self, a: _Attached, context: grpc.aio.ServicerContext[Any, Any],
                          replay_after: int | None) -> bool:
        """Outbox -> client. Each event is numbered and logged *before* its write (a write
        that times out may still go out; one accepted may still never arrive), and after a
        resume naming its last event_sequence the logged events after it go first. True
        once session_closed went out on this stream, False if the outbox ran dry first."""
        deadline = self.config.write_deadline_s

        async def send(msg: pb.ServerEvent) -> None:
            await asyncio.wait_for(context.write(msg), deadline)

        if replay_after is not None:
            missed, lost = a.replay.since(replay_after)
            if lost:  # not kept for replay: say so, outside the sequence (number 0)
                offset = missed[0].audio_offset_ms if missed else a.replay.last_offset_ms
                await send(shed_notice(lost, offset))
            for msg in missed:
                await send(msg)
                if msg.HasField("session_closed"):
                    return True
        while True:
            event = await a.outbox.get()
            if event is None:
                return False
            shed = a.outbox.take_shed()
            if shed is not None:
                await send(a.replay.record(shed_notice(shed, event.audio_offset_ms)))
            await send(a.replay.record(self._wire(a, event)))
            if isinstance(event, SessionClosed):
                return True

    def _wire(self, a: _Attached, event: Event) -> pb.ServerEvent:
        msg = server_event(event)
        received, capture = a.receipt(event.audio_offset_ms)
        msg.server_receive_time = received
        if capture is not None:
            msg.capture_time = capture
        return msg

    async def _read_loop(self, a: _Attached, context: grpc.aio.ServicerContext[Any, Any],
                         writer: asyncio.Task[bool]) -> bool:
        """Apply client messages until the client half-closes (True) or the stream breaks
        (False). Invalid input aborts the stream with INVALID_ARGUMENT."""
        takeover = asyncio.ensure_future(a.takeover.wait())
        try:
            return await self._read_messages(a, context, writer, takeover)
        finally:
            takeover.cancel()

    async def _read_messages(self, a: _Attached, context: grpc.aio.ServicerContext[Any, Any],
                             writer: asyncio.Task[bool], takeover: asyncio.Future[Any]) -> bool:
        while True:
            read = asyncio.ensure_future(context.read())
            done, _ = await asyncio.wait({read, writer, takeover},
                                         return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                # The writer ended (session closed, or client not reading), or a resume
                # took the session over.
                read.cancel()
                return False
            msg = read.result()
            if isinstance(msg, Undecodable):
                await self._fail(a, context, msg.message)
            if not isinstance(msg, pb.ClientMessage):
                # EOF: a half-close (end of input) -- unless the call was cancelled, which
                # also ends the reads but means "connection lost": keep the session. The
                # cancellation can trail the EOF by a moment, hence the short look.
                await asyncio.sleep(HALF_CLOSE_CHECK_S)
                return not (context.cancelled() or context.done())
            kind = msg.WhichOneof("message")
            if kind == "config":
                await self._fail(a, context, "SessionConfig was already sent; send it once, "
                                 "first (use Control RECONFIGURE to change parameters)")
            elif kind == "audio":
                await self._on_audio(a, msg.audio, context)
            elif kind == "control":
                await self._on_control(a, msg.control, context)
            else:
                await self._fail(a, context, "empty ClientMessage")

    async def _on_audio(self, a: _Attached, frame: pb.AudioFrame,
                        context: grpc.aio.ServicerContext[Any, Any]) -> None:
        seq = frame.sequence
        if seq and seq <= a.last_sequence:
            if a.resume_floor is not None and seq <= a.resume_floor:
                a.frames_skipped += 1  # re-sent after a resume: already processed
                return
            await self._fail(a, context, f"audio sequence went backwards ({seq} after "
                             f"{a.last_sequence})")
        if len(frame.pcm) > MAX_FRAME_BYTES:
            await self._fail(a, context, f"audio frame of {len(frame.pcm)} bytes is over the "
                             f"{MAX_FRAME_BYTES} byte limit; send 20-100 ms frames")
        try:
            await self.sup.feed(a.session_id, frame.pcm)
        except InvalidAudioError as exc:
            await self._fail(a, context, str(exc))
        except SessionBackloggedError as exc:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
        except SessionNotFoundError:
            return  # closing (drain): frames after the end are ignored
        if seq:
            a.last_sequence = seq
        a.resume_floor = None
        a.received_ms += len(frame.pcm) / 2 / a.sample_rate * 1000.0
        a.receipts.append((a.received_ms, time.time(),
                           frame.capture_time if frame.HasField("capture_time") else None))

    async def _on_control(self, a: _Attached, control: pb.Control,
                          context: grpc.aio.ServicerContext[Any, Any]) -> None:
        sid = a.session_id
        try:
            if control.action == pb.Control.PLAYBACK_STARTED:
                self.sup.set_playback(sid, True)
            elif control.action == pb.Control.PLAYBACK_STOPPED:
                self.sup.set_playback(sid, False)
            elif control.action == pb.Control.FORCE_END_OF_TURN:
                self.sup.force_end_of_turn(sid)
            elif control.action == pb.Control.FLUSH:
                self.sup.flush(sid)
            elif control.action == pb.Control.KEEPALIVE:
                self.sup.touch(sid)
            elif control.action == pb.Control.RECONFIGURE:
                cfg = pb.SessionConfig()
                cfg.CopyFrom(a.config)
                cfg.MergeFrom(control.config)
                cfg.sample_rate_hz = a.sample_rate
                try:
                    engine = engine_config(cfg, self.sup.config.engine)
                except InvalidRequestError as exc:
                    await self._fail(a, context, str(exc))
                    return
                self.sup.reconfigure(sid, engine)
                a.config = effective_config(cfg, engine)
                a.frame_event_every = cfg.frame_event_every
            else:
                await self._fail(a, context, f"unknown control action {control.action}")
        except SessionNotFoundError:
            return

    async def _fail(self, a: _Attached, context: grpc.aio.ServicerContext[Any, Any],
                    message: str) -> None:
        """A client error: the stream ends INVALID_ARGUMENT and the session is closed (not
        resumable -- resuming would replay the same mistake)."""
        a.delivered = True
        with contextlib.suppress(SessionNotFoundError):
            self.sup.close_session(a.session_id, "error")
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)

    # ------------------------------------------------------------------ housekeeping

    def expire(self, now: float) -> None:
        """Forget delivered sessions; close and forget those whose stream has been gone
        longer than the resume window (a finished one too: its last events may not have
        arrived, so it stays resumable until then)."""
        for token, a in list(self.sessions.items()):
            if a.delivered and not a.stream_active:
                self.sessions.pop(token, None)
            elif a.detached_at is not None and now - a.detached_at > self.config.resume_window_s:
                log.log(logging.DEBUG if a.closed else logging.INFO, "session %s: resume "
                        "window passed; %s", a.session_id, "forgotten" if a.closed else "closing")
                a.delivered = True
                with contextlib.suppress(SessionNotFoundError):
                    self.sup.close_session(a.session_id, "client")
                self.sessions.pop(token, None)


class GrpcApi:
    """The gRPC server bound to the supervisor; ``start``/``stop`` on the daemon's loop."""

    def __init__(self, sup: Supervisor, config: GrpcConfig | None = None, *,
                 auth: Authenticator | None = None, tls: TlsFiles | None = None) -> None:
        self.sup = sup
        self.config = config or GrpcConfig()
        self.tls = tls
        self.servicer = AlfredServicer(sup, self.config, auth)
        self.health = _Health()
        self._server: grpc.aio.Server | None = None
        self._expiry: asyncio.Task[None] | None = None
        self._background: set[asyncio.Future[None]] = set()
        self.port = 0

    async def start(self) -> None:
        cfg = self.config
        server = grpc.aio.server(interceptors=[LenientRequests()], options=[
            # A second daemon must fail to bind, not share the port and steal streams.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", cfg.max_message_bytes),
            ("grpc.max_send_message_length", cfg.max_message_bytes),
            ("grpc.keepalive_time_ms", int(cfg.keepalive_time_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(cfg.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ])
        pb_grpc.add_AlfredServicer_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (pb.DESCRIPTOR.services_by_name["Alfred"].full_name, reflection.SERVICE_NAME,
             health.SERVICE_NAME), server)
        if self.tls is not None:
            self.port = server.add_secure_port(cfg.listen, self.tls.grpc_credentials())
        else:
            self.port = server.add_insecure_port(cfg.listen)
        if self.port == 0:
            raise OSError(f"cannot listen on {cfg.listen} (address in use or not allowed)")
        await server.start()
        self._server = server
        await self._set_serving(self.sup.health)
        self.sup.on_health_change(self._on_health)
        self._expiry = asyncio.create_task(self._expire_loop())
        log.info("gRPC listening on %s", cfg.listen)

    def _on_health(self, h: Health) -> None:
        task = asyncio.ensure_future(self._set_serving(h))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _set_serving(self, h: Health) -> None:
        serving = self.servicer.accepting and h is not Health.FAILED
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.servicer.expire(time.monotonic())

    async def begin_shutdown(self) -> None:
        """Stop admitting streams and report NOT_SERVING; open streams keep going."""
        self.servicer.accepting = False
        await self._set_serving(self.sup.health)

    async def stop(self, grace: float = 2.0) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None
