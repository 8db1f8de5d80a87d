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
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import grpc
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ..engine.events import Event
from ..runtime.errors import SessionNotFoundError
from ..runtime.health import Health
from ..runtime.supervisor import Supervisor
from .auth import UNAUTHENTICATED, Authenticator, Principal
from .bridge import (
    FLUSH,
    FORCE_END_OF_TURN,
    KEEPALIVE,
    PLAYBACK_STARTED,
    PLAYBACK_STOPPED,
    RECONFIGURE,
    SessionBridge,
)
from .convert import (
    MAX_FRAME_BYTES,
    InvalidRequestError,
    effective_config,
    engine_config,
)
from .errors import ApiError, api_error
from .grpc_config import GrpcConfig
from .grpc_plumbing import SERVICE, HealthService, LenientRequests, Undecodable
from .grpc_session import DAEMON_ID_HEADER, Attached, new_resume_token
from .outbox import ShedCounts
from .replay import shed_notice
from .tls import TlsFiles

log = logging.getLogger(__name__)

HALF_CLOSE_CHECK_S = 0.05

CLOSE_LINGER_S = 1.0
"""How long a stream whose session the daemon closed waits for the client's half-close
(a client that knows the protocol half-closes at session_closed). Below the gRPC server's
stop grace (2 s), which would cut the stream anyway."""

PROTO_ACTIONS = {
    pb.Control.PLAYBACK_STARTED: PLAYBACK_STARTED,
    pb.Control.PLAYBACK_STOPPED: PLAYBACK_STOPPED,
    pb.Control.FORCE_END_OF_TURN: FORCE_END_OF_TURN,
    pb.Control.FLUSH: FLUSH,
    pb.Control.KEEPALIVE: KEEPALIVE,
    pb.Control.RECONFIGURE: RECONFIGURE,
}
"""The proto's control actions as the bridge's (:data:`.bridge.ACTIONS`)."""


def _sent_closed(writer: asyncio.Task[bool]) -> bool:
    """Whether the writer ended by sending session_closed."""
    return not writer.cancelled() and writer.exception() is None and writer.result()


class AlfredServicer(pb_grpc.AlfredServicer):
    def __init__(self, sup: Supervisor, config: GrpcConfig,
                 auth: Authenticator | None = None) -> None:
        self.sup = sup
        self.config = config
        self.auth = auth or Authenticator()
        self.sessions: dict[str, Attached] = {}
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
            err = api_error(exc)
            await context.abort(err.grpc, err.message)

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
                if not attached.closed:
                    await attached.bridge.finish()
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
        if not context.cancelled():
            await self._end_stream(attached, context, outcome, taken_over)

    async def _end_stream(self, a: Attached, context: grpc.aio.ServicerContext[Any, Any],
                          outcome: bool | BaseException, taken_over: bool) -> None:
        """The status of a stream that has let go of its session (and was not cancelled):
        OK unless a resume took the session over or the writer failed; a session the drain
        ended carries the trailers that tell its client where to continue."""
        if outcome is True and a.closed_reason == "shutdown":
            context.set_trailing_metadata(a.handover_trailers())
        if taken_over:
            await context.abort(grpc.StatusCode.ABORTED,
                                "a newer stream resumed this session with its token")
        elif isinstance(outcome, TimeoutError):
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"client did not read events for "
                                f"{self.config.write_deadline_s:.0f} s; stream cancelled "
                                "(the session can be resumed)")
        elif isinstance(outcome, Exception):
            log.error("session %s: event writer failed", a.session_id, exc_info=outcome)

    async def _attach(self, cfg: pb.SessionConfig, context: grpc.aio.ServicerContext[Any, Any],
                      principal: Principal) -> Attached:
        if not self.accepting and not cfg.resume_token:
            # Resumes still come in while draining: a client whose stream broke near the end
            # fetches the events it missed (a balancer routes them here by daemon id).
            await context.abort(grpc.StatusCode.UNAVAILABLE, "the daemon is shutting down")
        if cfg.resume_token:
            attached = self.sessions.get(cfg.resume_token)
            if attached is None or attached.delivered or attached.owner != principal.name:
                await context.abort(grpc.StatusCode.NOT_FOUND,
                                    "unknown or expired resume token")
            await attached.resume(cfg, context)
            return attached
        try:
            engine = engine_config(cfg, self.sup.config.engine)
        except InvalidRequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        over = self.auth.over_limit(principal, self.sup.sessions_of(principal.name))
        if over is not None:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, over)
        try:
            bridge = SessionBridge.open(
                self.sup, engine, sample_rate=cfg.sample_rate_hz,
                owner=self.auth.owner(principal), transport="grpc",
                outbox_limit=self.config.outbox_limit, frame_event_every=cfg.frame_event_every)
        except ApiError as err:
            await context.abort(err.grpc, err.message)
        attached = Attached(
            bridge=bridge, token=new_resume_token(self.sup.config.daemon_id),
            owner=principal.name,
            sample_rate=cfg.sample_rate_hz, config=effective_config(cfg, engine),
            stream_active=True,
        )
        bridge.start_events(name=f"pump-{bridge.session_id[:8]}")
        self.sessions[attached.token] = attached
        return attached

    async def _send_started(self, a: Attached,
                            context: grpc.aio.ServicerContext[Any, Any], resumed: bool) -> None:
        msg = a.started(resumed, self.config.resume_window_s)
        await asyncio.wait_for(context.write(msg), self.config.write_deadline_s)

    async def _write_loop(self, a: Attached, context: grpc.aio.ServicerContext[Any, Any],
                          replay_after: int | None) -> bool:
        """Outbox -> client. Each event is numbered and logged *before* its write (a write
        that times out may still go out; one accepted may still never arrive), and after a
        resume naming its last event_sequence the logged events after it go first. True
        once session_closed went out on this stream, False if the outbox ran dry first."""
        deadline = self.config.write_deadline_s

        async def send(msg: pb.ServerEvent) -> None:
            await asyncio.wait_for(context.write(msg), deadline)

        async def send_shed(shed: ShedCounts, event: Event) -> None:
            await send(a.replay.record(shed_notice(shed, event.audio_offset_ms)))

        async def send_event(event: Event) -> None:
            await send(a.replay.record(a.wire(event)))

        if replay_after is not None:
            missed, lost = a.replay.since(replay_after)
            if lost:  # not kept for replay: say so, outside the sequence (number 0)
                offset = missed[0].audio_offset_ms if missed else a.replay.last_offset_ms
                await send(shed_notice(lost, offset))
            for msg in missed:
                await send(msg)
                if msg.HasField("session_closed"):
                    a.closed_reason = msg.session_closed.reason
                    return True
        return await a.bridge.write(send_event, send_shed)

    async def _read_loop(self, a: Attached, context: grpc.aio.ServicerContext[Any, Any],
                         writer: asyncio.Task[bool]) -> bool:
        """Apply client messages until the client half-closes (True) or the stream breaks
        (False). Invalid input aborts the stream with INVALID_ARGUMENT."""
        takeover = asyncio.ensure_future(a.takeover.wait())
        try:
            return await self._read_messages(a, context, writer, takeover)
        finally:
            takeover.cancel()

    async def _read_messages(self, a: Attached, context: grpc.aio.ServicerContext[Any, Any],
                             writer: asyncio.Task[bool], takeover: asyncio.Future[Any]) -> bool:
        while True:
            read = asyncio.ensure_future(context.read())
            done, _ = await asyncio.wait({read, writer, takeover},
                                         return_when=asyncio.FIRST_COMPLETED)
            if read not in done:
                # The writer ended (session closed, or client not reading), or a resume
                # took the session over.
                if writer in done and _sent_closed(writer):
                    return await self._linger(read, context)
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

    async def _linger(self, read: asyncio.Future[Any],
                      context: grpc.aio.ServicerContext[Any, Any]) -> bool:
        """After session_closed: wait (CLOSE_LINGER_S at most) for the client's half-close,
        discarding what it sends meanwhile. Ending first makes HTTP/2 reset the request side
        (RST_STREAM), which HAProxy may pass on as CANCELLED ahead of the last events and
        trailers (a drain's handover record). True if the client half-closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_LINGER_S
        while (remaining := deadline - loop.time()) > 0:
            done, _ = await asyncio.wait({read}, timeout=remaining)
            if not done:
                break
            if not isinstance(read.result(), pb.ClientMessage | Undecodable):  # EOF
                return not (context.cancelled() or context.done())
            read = asyncio.ensure_future(context.read())
        read.cancel()
        return False

    async def _on_audio(self, a: Attached, frame: pb.AudioFrame,
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
            await a.bridge.feed(frame.pcm)
        except ApiError as err:
            if err.gone:
                return  # closing (drain): frames after the end are ignored
            if err.invalid:
                await self._fail(a, context, err.message)
            # Not the client's mistake (backlogged): the stream ends, the session stays
            # resumable.
            await context.abort(err.grpc, err.message)
        if seq:
            a.last_sequence = seq
        a.resume_floor = None
        a.received_ms += len(frame.pcm) / 2 / a.sample_rate * 1000.0
        if seq:
            a.frame_ends.append((a.received_ms, seq))
        a.receipts.append((a.received_ms, time.time(),
                           frame.capture_time if frame.HasField("capture_time") else None))

    async def _on_control(self, a: Attached, control: pb.Control,
                          context: grpc.aio.ServicerContext[Any, Any]) -> None:
        action = PROTO_ACTIONS.get(control.action)
        if action is None:
            await self._fail(a, context, f"unknown control action {control.action}")
        if action != RECONFIGURE:
            a.bridge.control(action)
            return
        cfg = pb.SessionConfig()
        cfg.CopyFrom(a.config)
        cfg.MergeFrom(control.config)
        cfg.sample_rate_hz = a.sample_rate
        try:
            engine = engine_config(cfg, self.sup.config.engine)
        except InvalidRequestError as exc:
            await self._fail(a, context, str(exc))
        if a.bridge.control(RECONFIGURE, engine):
            a.config = effective_config(cfg, engine)
            a.bridge.frame_event_every = cfg.frame_event_every

    async def _fail(self, a: Attached, context: grpc.aio.ServicerContext[Any, Any],
                    message: str) -> NoReturn:
        """A client error: the stream ends INVALID_ARGUMENT and the session is closed (not
        resumable -- resuming would replay the same mistake)."""
        a.delivered = True
        a.bridge.close("error")
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
                a.bridge.close("client")
                self.sessions.pop(token, None)


class GrpcApi:
    """The gRPC server bound to the supervisor; ``start``/``stop`` on the daemon's loop."""

    def __init__(self, sup: Supervisor, config: GrpcConfig | None = None, *,
                 auth: Authenticator | None = None, tls: TlsFiles | None = None) -> None:
        self.sup = sup
        self.config = config or GrpcConfig()
        self.tls = tls
        self.servicer = AlfredServicer(sup, self.config, auth)
        self.health = HealthService()
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
