"""The supervisor's end of the ZeroMQ control plane: one object owns every socket.

The socket layout and the messages are :mod:`.protocol`'s. This object binds the ``work``
ROUTER and the ``state`` PUB, sends without ever blocking the event loop, runs the receive
loop, and closes everything at once -- so a failed start or a stop leaves no socket behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable

import zmq
import zmq.asyncio

from .protocol import HWM, ControlState, Message, dumps

log = logging.getLogger(__name__)


class ControlPlane:
    """The ZeroMQ context and its two sockets (``work`` ROUTER, ``state`` PUB)."""

    def __init__(self) -> None:
        self._ctx: zmq.asyncio.Context | None = None
        self._router: zmq.asyncio.Socket | None = None
        self._pub: zmq.asyncio.Socket | None = None
        self._state_seq = 0
        """Sequence of published control states; lifetime-long, so a lane never sees it
        go back across a restart of the daemon."""

    @property
    def is_open(self) -> bool:
        return self._router is not None

    def bind(self, work_endpoint: str, state_endpoint: str) -> None:
        self._ctx = zmq.asyncio.Context()
        self._router = self._ctx.socket(zmq.ROUTER)
        # A send to a lane that vanished fails instead of being dropped silently.
        self._router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router.setsockopt(zmq.SNDHWM, HWM)
        self._router.setsockopt(zmq.RCVHWM, HWM)
        self._router.setsockopt(zmq.LINGER, 0)
        self._router.bind(work_endpoint)
        self._pub = self._ctx.socket(zmq.PUB)
        self._pub.setsockopt(zmq.SNDHWM, HWM)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.bind(state_endpoint)

    def send(self, identity: bytes, msg: Message) -> bool:
        """Send ``msg`` to the lane ``identity`` now; False if it cannot be reached."""
        assert self._router is not None
        # zmq.asyncio tries a non-blocking send at once and reports failure (EHOSTUNREACH
        # from ROUTER_MANDATORY for a vanished lane, EAGAIN at the HWM) on the returned
        # future instead of raising.
        fut = self._router.send_multipart([identity, dumps(msg)], flags=zmq.NOBLOCK)
        assert isinstance(fut, asyncio.Future)
        exc = fut.exception() if fut.done() else None
        if exc is not None:
            log.warning("cannot reach %s: %s", identity.decode(), exc)
            return False
        return True

    def publish(self, level: int, live_rings: Iterable[str], trim_generation: int) -> None:
        """Publish the whole control state (lanes catch up from any one message)."""
        if self._pub is None:
            return
        self._state_seq += 1
        state = ControlState(self._state_seq, level, frozenset(live_rings), trim_generation)
        with contextlib.suppress(zmq.ZMQError):
            self._pub.send(dumps(state), flags=zmq.NOBLOCK)

    async def serve(self, on_frame: Callable[[bytes, bytes], None]) -> None:
        """Receive forever, handing each (lane identity, payload) to ``on_frame``."""
        assert self._router is not None
        while True:
            identity, payload = await self._router.recv_multipart()
            on_frame(identity, payload)

    def close(self) -> None:
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(linger=0)
        if self._ctx is not None:
            self._ctx.term()
        self._router = self._pub = self._ctx = None
