"""The browser protocol: one WebSocket per session, the same sessions and events as gRPC.

Client -> daemon:
  1. a text message ``{"type": "config", "sampleRate": 16000, "partials": true,
     "partialIntervalMs": 500, "frameEventEvery": 0, "vad": {...}, "turn": {...}}``
     (keys as in the gRPC SessionConfig, camelCase);
  2. binary messages: LINEAR16 mono audio at that rate, any length (20 ms is typical);
  3. optional text messages ``{"type": "control", "action": "playback_started" |
     "playback_stopped" | "force_end_of_turn" | "flush" | "keepalive"}`` and
     ``{"type": "end"}`` (end of input: the remaining events follow, then the socket closes).

The JSON messages both ways are :mod:`.events_json`'s, which the WebRTC data channel
(:mod:`.webrtc`) uses too: the two transports send exactly the same names and fields.

Daemon -> client: JSON text messages ``{"type": <spec name>, "audioOffsetMs": ...,
"processingMs": ..., <fields in camelCase>}`` with the product spec's event names:
``sessionStarted``, ``frameProcessed``, ``speechStart``, ``speechEnd``,
``partialTranscription``, ``finalTranscription``, ``turnEnd``, ``turnResumed``,
``interruption``, ``pipelineHealth``, ``backpressureTriggered``, ``backpressureRecovered``,
``framesDropped``, ``workerRecovered``, ``eventsShed``, ``sessionClosed``, ``error``.
Bad input gets an ``error`` message with a gRPC-style code and the socket closes (1008 for
a bad config or control, 1007 for bad audio); other sessions are unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from google.protobuf.json_format import ParseDict, ParseError

from ..engine.events import Event
from ..runtime.supervisor import Supervisor
from .auth import UNAUTHENTICATED, Authenticator
from .bridge import SessionBridge
from .convert import MAX_FRAME_BYTES, InvalidRequestError, engine_config
from .errors import ApiError
from .events_json import (
    error,
    events_shed,
    parse_client_message,
    parse_json,
    session_started,
    wire,
)
from .outbox import ShedCounts

log = logging.getLogger(__name__)

TOO_BIG = f"message over the {MAX_FRAME_BYTES} byte (1 MiB) limit; send 20-100 ms frames"

READ_LIMIT = 2 * MAX_FRAME_BYTES
"""aiohttp's own message limit. A message between the API's limit and this one is read and
refused here, after the client has sent all of it, so the client reads the error and the
1009 with its reason; one past this is refused by aiohttp as its header arrives
(:class:`_Socket` adds the reason then)."""


WRITE_DEADLINE_S = 10.0
"""A client that does not take an event for this long loses its socket."""

CONFIG_REFUSED = WSCloseCode.POLICY_VIOLATION
"""The close code for a config (or any text message) the daemon cannot take: 1008."""

MAX_CLOSE_REASON = 123
"""Bytes of UTF-8 a close frame's reason may carry (RFC 6455: 125 minus the code)."""


def close_reason(message: str) -> bytes:
    """``message`` cut to fit a close frame, on a character boundary (a message quoting the
    client's text may hold multi-byte characters)."""
    return message.encode()[:MAX_CLOSE_REASON].decode(errors="ignore").encode()


class _Socket(web.WebSocketResponse):
    """A WebSocketResponse whose own "message too big" close (aiohttp closes with 1009 and
    no reason as soon as an oversized message's header arrives) says why, as every other
    refusal here does: the error message first, then the reason in the close frame."""

    async def close(self, *, code: int = WSCloseCode.OK, message: bytes = b"",
                    drain: bool = True) -> bool:
        if code == WSCloseCode.MESSAGE_TOO_BIG and not message and not self.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await self.send_json(error("INVALID_ARGUMENT", TOO_BIG))
            message = close_reason(TOO_BIG)
        return await super().close(code=code, message=message, drain=drain)


def session_config(message: dict[str, Any]) -> pb.SessionConfig:
    """The gRPC SessionConfig a browser's config message describes."""
    body = {k: v for k, v in message.items() if k != "type"}
    if "sampleRate" in body:  # the browser protocol's name for sampleRateHz
        body["sampleRateHz"] = body.pop("sampleRate")
    try:
        return ParseDict(body, pb.SessionConfig())  # accepts camelCase (the JSON mapping)
    except ParseError as exc:
        raise InvalidRequestError(f"invalid config: {exc}") from None


class WsBridge:
    def __init__(self, sup: Supervisor, outbox_limit: int = 256,
                 auth: Authenticator | None = None) -> None:
        self.sup = sup
        self.outbox_limit = outbox_limit
        self.auth = auth or Authenticator()

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = _Socket(heartbeat=20.0, max_msg_size=READ_LIMIT)
        await ws.prepare(request)
        opened = await self._open(ws, request)
        if opened is None:
            return ws
        session, sample_rate = opened
        await ws.send_json(session_started(session.session_id, sample_rate, "websocket"))
        pump = session.start_events()
        writer = asyncio.create_task(self._write(ws, session))
        ended = False
        try:
            ended = await self._read(ws, session)
        finally:
            if ended:
                await session.finish()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer, 30.0)
            else:
                session.close("client")
            for task in (pump, writer):
                task.cancel()
            await asyncio.gather(pump, writer, return_exceptions=True)
            if not ws.closed:
                await ws.close()
        return ws

    async def _open(self, ws: web.WebSocketResponse,
                    request: web.Request) -> tuple[SessionBridge, int] | None:
        """Read the config message and admit its session: the session and its sample rate,
        or None once the socket has been refused (error message and close sent)."""
        try:
            first = await asyncio.wait_for(ws.receive(), 30.0)
        except TimeoutError:
            await self._fail(ws, "INVALID_ARGUMENT", "no config within 30 s", CONFIG_REFUSED)
            return None
        if first.type == WSMsgType.TEXT and len(first.data) > MAX_FRAME_BYTES:
            await self._fail(ws, "INVALID_ARGUMENT", TOO_BIG, 1009)
            return None
        if first.type != WSMsgType.TEXT:
            await self._fail(ws, "INVALID_ARGUMENT",
                             "the first message must be the JSON config (config first, then "
                             "binary audio)", CONFIG_REFUSED)
            return None
        try:
            msg = parse_json(first.data)
            if not isinstance(msg, dict) or msg.get("type") != "config":
                raise InvalidRequestError('the first message must be {"type": "config", ...}')
            # A browser cannot set headers on a WebSocket: it may send the token as the
            # config's "token" instead of an Authorization header.
            token = msg.pop("token", None)
            header = request.headers.get("Authorization")
            if header is None and isinstance(token, str):
                header = f"Bearer {token}"
            principal = self.auth.authenticate(header)
            if principal is None:
                await self._fail(ws, "UNAUTHENTICATED", UNAUTHENTICATED, CONFIG_REFUSED)
                return None
            over = self.auth.over_limit(principal, self.sup.sessions_of(principal.name))
            if over is not None:
                await self._fail(ws, "RESOURCE_EXHAUSTED", over, 1013)
                return None
            cfg = session_config(msg)
            if cfg.sample_rate_hz == 0:
                cfg.sample_rate_hz = 16_000
            engine = engine_config(cfg, self.sup.config.engine)
            session = SessionBridge.open(
                self.sup, engine, sample_rate=cfg.sample_rate_hz,
                owner=self.auth.owner(principal), transport="websocket",
                outbox_limit=self.outbox_limit, frame_event_every=cfg.frame_event_every)
        except InvalidRequestError as exc:
            await self._fail(ws, "INVALID_ARGUMENT", str(exc), CONFIG_REFUSED)
            return None
        except ApiError as err:
            # A config the daemon cannot take (its sample rate) is refused as a policy
            # violation, like any other bad config; 1007 is for a frame's data.
            await self._fail(ws, err.name, err.message,
                             CONFIG_REFUSED if err.invalid else err.ws_close)
            return None
        return session, cfg.sample_rate_hz

    async def _read(self, ws: web.WebSocketResponse, session: SessionBridge) -> bool:
        """Apply messages until ``end`` (True) or the socket closes/fails (False)."""
        async for msg in ws:
            if msg.type == WSMsgType.BINARY:
                if len(msg.data) > MAX_FRAME_BYTES:
                    await self._fail(ws, "INVALID_ARGUMENT", TOO_BIG, 1009)
                    return False
                try:
                    await session.feed(msg.data)
                except ApiError as err:
                    if not err.gone:  # a session that has ended just ends the socket
                        await self._fail(ws, err.name, err.message, err.ws_close)
                    return False
            elif msg.type == WSMsgType.TEXT:
                if len(msg.data) > MAX_FRAME_BYTES:
                    await self._fail(ws, "INVALID_ARGUMENT", TOO_BIG, 1009)
                    return False
                try:
                    message = parse_client_message(msg.data)
                except InvalidRequestError as exc:
                    await self._fail(ws, "INVALID_ARGUMENT", str(exc), CONFIG_REFUSED)
                    return False
                if message.kind == "end":
                    return True
                session.control(message.action)
            else:
                return False
        return False

    @staticmethod
    async def _write(ws: web.WebSocketResponse, session: SessionBridge) -> None:
        async def send(event: Event) -> None:
            await asyncio.wait_for(ws.send_json(wire(event)), WRITE_DEADLINE_S)

        async def send_shed(shed: ShedCounts, event: Event) -> None:
            await ws.send_json(events_shed(shed))

        await session.write(send, send_shed)

    @staticmethod
    async def _fail(ws: web.WebSocketResponse, code: str, message: str, close: int) -> None:
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_json(error(code, message))
            await ws.close(code=close, message=close_reason(message))
