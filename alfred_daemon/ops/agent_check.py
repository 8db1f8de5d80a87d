"""HAProxy ``agent-check`` responder: tells the balancer how much room this daemon has.

HAProxy's health check (``GET /readyz``) only says in or out. Its agent check connects to a
small TCP port, reads one line and closes; the line adjusts the server's weight and state.
With ``balance leastconn`` the weight scales each server's connection count, so a daemon
that answers ``up ready 20%`` gets new sessions only once the others hold about five times
as many. The figure is computed from the same numbers that admit or refuse a session:

* remaining capacity = ``1 - max(load, sessions / processor.max_concurrent_sessions)``,
  where ``load`` is the backpressure ladder's figure (1.0 = at capacity); shown as at least
  1% while the daemon still admits sessions, so that a busy daemon stays a last resort
  rather than being marked down;
* ``drain`` while draining (SIGTERM or ``POST /drain``): no new sessions, but HAProxy still
  routes persistent traffic -- resumes carrying ``alfred-daemon-id`` -- here;
* ``down`` when the daemon would refuse the next session anyway: health failed, not yet
  running, at the session limit, or the ladder at ``pause_processing``.

``ready`` accompanies ``up`` so that a daemon leaves HAProxy's drain state by itself (an agent
``drain`` is sticky until an agent says ``ready``). HAProxy reads a single line.

``ALFRED_AGENT_CAPACITY`` (0-100, read at every check) caps the reported capacity: an
operator's way to take weight off one daemon without restarting it behind the balancer, and
the test suite's way to make one daemon look loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from ..engine.errors import ConfigError
from ..runtime.backpressure import Level
from ..runtime.health import Health

if TYPE_CHECKING:
    from ..runtime.supervisor import Supervisor

log = logging.getLogger(__name__)

CAPACITY_ENV = "ALFRED_AGENT_CAPACITY"
"""Environment variable capping the reported capacity, in percent (see the module doc)."""

WRITE_TIMEOUT_S = 2.0
"""A checker that does not take its one line within this is dropped."""


class _Daemon(Protocol):
    """What the responder reads from the supervisor (a protocol, so tests can fake it)."""

    load: float

    @property
    def state(self) -> str: ...
    @property
    def health(self) -> Health: ...

    def session_ids(self) -> list[str]: ...


def capacity_cap(environ: Mapping[str, str] | None = None) -> float:
    """The ``ALFRED_AGENT_CAPACITY`` cap as a fraction (1.0 when unset), or ConfigError."""
    raw = (os.environ if environ is None else environ).get(CAPACITY_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw.removesuffix("%"))
    except ValueError:
        raise ConfigError(f"{CAPACITY_ENV} = {raw[:40]!r} must be a percentage "
                          "between 0 and 100") from None
    if not 0.0 <= value <= 100.0:
        raise ConfigError(f"{CAPACITY_ENV} = {raw[:40]!r} must be a percentage between 0 "
                          "and 100")
    return value / 100.0


def agent_reply(sup: _Daemon, *, max_sessions: int, level: Level, draining: bool,
                cap: float = 1.0) -> str:
    """The line HAProxy reads (without its newline), from the daemon's state."""
    if draining or sup.state == "draining":
        return "drain"
    if sup.state != "running" or sup.health is Health.FAILED:
        return "down"
    sessions = len(sup.session_ids())
    if sessions >= max_sessions or level >= Level.PAUSE_PROCESSING:
        return "down"
    load = sup.load if sup.load == sup.load else 0.0  # NaN: no measurement yet
    used = max(load, sessions / max_sessions)
    remaining = min(max(0.0, 1.0 - used), cap)
    return f"up ready {max(1, round(remaining * 100))}%"


class AgentCheck:
    """The TCP responder. ``reply(cap)`` computes the line per connection (state changes
    between two checks are seen at the next one); ``cap`` comes from
    ``ALFRED_AGENT_CAPACITY``, read each time so that it can be changed between checks."""

    def __init__(self, reply: Callable[[float], str], host: str, port: int) -> None:
        self.reply = reply
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    def line(self) -> str:
        """The reply to one check. A bad override must not take the daemon out of the
        balancer by itself: it is logged and the uncapped figure is answered."""
        try:
            cap = capacity_cap()
        except ConfigError as exc:
            log.error("agent check: %s; ignoring it", exc)
            cap = 1.0
        return self.reply(cap)

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._answer, self.host, self.port)
        except OSError as exc:
            raise OSError(f"agent check cannot listen on {self.host}:{self.port} "
                          f"({exc.strerror or exc})") from None
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("agent check listening on %s:%d", self.host, self.port)

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(self.line().encode() + b"\n")
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (OSError, TimeoutError):
            pass  # the checker went away: it will ask again
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


def for_supervisor(sup: Supervisor, host: str, port: int,
                   draining: Callable[[], bool]) -> AgentCheck:
    """An :class:`AgentCheck` answering for a running supervisor."""
    def reply(cap: float) -> str:
        return agent_reply(sup, max_sessions=sup.config.processor.max_concurrent_sessions,
                           level=sup.ladder.level, draining=draining(), cap=cap)

    return AgentCheck(reply, host, port)
