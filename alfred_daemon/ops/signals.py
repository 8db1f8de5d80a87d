"""Signals only enqueue; the main coroutine acts on them.

A signal handler runs between two bytecodes of whatever the loop was doing; doing real work
there (closing sockets, joining processes) re-enters code that is mid-update. So, as in
gunicorn's arbiter, handlers put the signal on a queue and return; :func:`serve` takes them
off in order.
"""

from __future__ import annotations

import asyncio
import signal

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class SignalQueue:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[signal.Signals] = asyncio.Queue()
        for sig in HANDLED:
            loop.add_signal_handler(sig, self._queue.put_nowait, sig)

    def inject(self, sig: signal.Signals) -> None:
        """Act as if ``sig`` had arrived (``POST /drain`` takes SIGTERM's path this way, so
        the two drains cannot differ)."""
        self._queue.put_nowait(sig)

    async def get(self) -> signal.Signals:
        return await self._queue.get()

    def close(self) -> None:
        for sig in HANDLED:
            self._loop.remove_signal_handler(sig)
