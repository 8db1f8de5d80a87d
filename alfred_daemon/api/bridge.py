"""One session as every transport drives it: open, feed, control, finish or close, events.

gRPC, the WebSocket, ``POST /process_frame`` and WebRTC differ in how bytes arrive and how
events leave, not in what they ask of the runtime. :class:`SessionBridge` is that common
part, over the :class:`~alfred_daemon.runtime.supervisor.Supervisor`'s public API only:

* :meth:`SessionBridge.open` admits a session; :meth:`~SessionBridge.feed` gives it a
  frame (flow-controlled). Both raise :class:`~.errors.ApiError`, the runtime's error with
  the answer every surface gives it (:mod:`.errors`).
* :meth:`~SessionBridge.control` is the one control dispatcher (playback started/stopped,
  force end of turn, flush, keepalive, reconfigure).
* :meth:`~SessionBridge.pump` moves the session's events into its bounded
  :class:`~.outbox.Outbox`; :meth:`~SessionBridge.write` is the one writer loop, which
  hands them to the transport (with an ``events_shed`` notice first when some were shed).
* :meth:`~SessionBridge.finish` (end of input: the last events follow) and
  :meth:`~SessionBridge.close` (now) end it; a session that has already ended is no error.

What stays with each surface is its wire format and its policy: what ends a stream, what
is resumable, which deadline a write has.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import numpy as np
import numpy.typing as npt

from ..engine.config import EngineConfig
from ..engine.events import Event, SessionClosed
from ..runtime.errors import SessionNotFoundError
from ..runtime.supervisor import Supervisor
from .convert import InvalidRequestError
from .errors import MAPPED, api_error
from .outbox import Outbox, ShedCounts, fill

PLAYBACK_STARTED = "playback_started"
PLAYBACK_STOPPED = "playback_stopped"
FORCE_END_OF_TURN = "force_end_of_turn"
FLUSH = "flush"
KEEPALIVE = "keepalive"
RECONFIGURE = "reconfigure"
ACTIONS = frozenset({PLAYBACK_STARTED, PLAYBACK_STOPPED, FORCE_END_OF_TURN, FLUSH, KEEPALIVE,
                     RECONFIGURE})
"""Every control action; the browser protocol offers all but ``reconfigure``."""

ANALYSED_POLL_S = 0.005

SendEvent = Callable[[Event], Awaitable[None]]
SendShed = Callable[[ShedCounts, Event], Awaitable[None]]


class SessionBridge:
    """One open runtime session and its outbound events, for one transport."""

    def __init__(self, sup: Supervisor, session_id: str, outbox: Outbox,
                 frame_event_every: int = 0) -> None:
        self.sup = sup
        self.session_id = session_id
        self.outbox = outbox
        self.frame_event_every = frame_event_every
        """Keep every n-th frame_processed event (0: none); read per event, so a
        reconfigure takes effect at once."""
        self.closed = False
        """The runtime session is over (its outbox may still hold events)."""
        self.pump_task: asyncio.Task[None] | None = None

    @classmethod
    def open(cls, sup: Supervisor, engine: EngineConfig, *, sample_rate: int, owner: str,
             transport: str, outbox_limit: int, frame_event_every: int = 0) -> SessionBridge:
        """Admit a session (its events are not moved until :meth:`start_events`). Raises
        ApiError: refused, the daemon unavailable, or a sample rate it does not take."""
        try:
            sid = sup.open_session(engine, sample_rate=sample_rate, owner=owner,
                                   transport=transport)
        except MAPPED as exc:
            raise api_error(exc) from exc
        return cls(sup, sid, Outbox(outbox_limit), frame_event_every)

    # ------------------------------------------------------------------ input

    async def feed(self, pcm: bytes | npt.NDArray[np.generic], *,
                   sample_rate: int | None = None) -> int:
        """One frame, flow-controlled (:meth:`Supervisor.feed`); the windows it completed.
        Raises ApiError: bad audio, backlogged, or the session gone (``.gone``)."""
        try:
            return await self.sup.feed(self.session_id, pcm, sample_rate=sample_rate)
        except MAPPED as exc:
            raise api_error(exc) from exc

    def control(self, action: str, config: EngineConfig | None = None) -> bool:
        """Apply one of :data:`ACTIONS` (``reconfigure`` with its ``config``). False if the
        session has just closed (the control is moot, not an error); InvalidRequestError
        for an action that is not one."""
        sup, sid = self.sup, self.session_id
        try:
            if action == PLAYBACK_STARTED:
                sup.set_playback(sid, True)
            elif action == PLAYBACK_STOPPED:
                sup.set_playback(sid, False)
            elif action == FORCE_END_OF_TURN:
                sup.force_end_of_turn(sid)
            elif action == FLUSH:
                sup.flush(sid)
            elif action == KEEPALIVE:
                sup.touch(sid)
            elif action == RECONFIGURE and config is not None:
                sup.reconfigure(sid, config)
            else:
                raise InvalidRequestError(f"unknown control action {action!r}")
        except SessionNotFoundError:
            return False
        return True

    async def finish(self) -> None:
        """End of input: the runtime analyses what is queued, finalises and closes; the
        remaining events (up to session_closed) arrive through the outbox."""
        with contextlib.suppress(SessionNotFoundError):
            await self.sup.finish_session(self.session_id)

    def close(self, reason: str) -> None:
        """Close the session now (no further events but session_closed), if still open."""
        with contextlib.suppress(SessionNotFoundError):
            self.sup.close_session(self.session_id, reason)

    # ------------------------------------------------------------------ output

    async def pump(self) -> None:
        """Session events -> outbox, for the session's whole life (the outbox is closed at
        the end, and :attr:`closed` set)."""
        try:
            await fill(self.outbox, self.sup.events(self.session_id),
                       lambda: self.frame_event_every)
        finally:
            self.closed = True

    def start_events(self, name: str | None = None) -> asyncio.Task[None]:
        """Run :meth:`pump` as a task (kept in :attr:`pump_task`)."""
        self.pump_task = asyncio.create_task(self.pump(), name=name)
        return self.pump_task

    async def write(self, send: SendEvent, send_shed: SendShed) -> bool:
        """Outbox -> transport: each event through ``send``, preceded by ``send_shed``
        (the counts, and the event they precede) when events were shed since the last one.
        True once session_closed has been sent, False if the outbox ended first."""
        while (event := await self.outbox.get()) is not None:
            shed = self.outbox.take_shed()
            if shed is not None:
                await send_shed(shed, event)
            await send(event)
            if isinstance(event, SessionClosed):
                return True
        return False

    async def ready_events(self) -> list[Event]:
        """The events waiting in the outbox now, without waiting for more."""
        events = []
        while len(self.outbox):
            event = await self.outbox.get()
            if event is not None:
                events.append(event)
        return events

    async def analysed(self, timeout_s: float) -> None:
        """Wait until the session has no audio queued for analysis (or has closed), at
        most ``timeout_s``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline:
            try:
                if self.sup.session_status(self.session_id)["windowsQueued"] == 0:
                    return
            except SessionNotFoundError:
                return  # closed meanwhile (idle, shutdown): its events are what it made
            await asyncio.sleep(ANALYSED_POLL_S)
