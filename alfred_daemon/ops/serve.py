"""``alfred-daemon serve``: run the daemon until a signal says stop.

SIGTERM / SIGINT: drain (no new sessions; open utterances get their finals and turn
decisions within ``drain_grace``), stop the workers, unlink every shared-memory segment,
exit 0. SIGHUP: nothing can change live yet, so it is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable

from ..runtime.config import RuntimeConfig
from ..runtime.supervisor import Supervisor
from .signals import SignalQueue

log = logging.getLogger(__name__)


async def serve(config: RuntimeConfig,
                on_ready: Callable[[Supervisor], Awaitable[None]] | None = None) -> int:
    """Start the supervisor, call ``on_ready`` once it runs, then wait for signals."""
    loop = asyncio.get_running_loop()
    signals = SignalQueue(loop)  # before start: a SIGTERM during start-up is not lost
    sup = Supervisor(config)
    try:
        await sup.start()
        if on_ready is not None:
            await on_ready(sup)
        while True:
            sig = await signals.get()
            if sig == signal.SIGHUP:
                log.info("SIGHUP: nothing in this configuration can change live; ignored")
                continue
            log.info("%s: draining", sig.name)
            await sup.stop()
            return 0
    finally:
        if sup.state != "stopped":
            await sup.stop(grace=0)
        signals.close()
