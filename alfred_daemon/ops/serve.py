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

from ..api.grpc_server import GrpcApi, GrpcConfig
from ..api.http_server import HttpApi, HttpConfig
from ..runtime.config import RuntimeConfig
from ..runtime.supervisor import Supervisor
from .signals import SignalQueue

log = logging.getLogger(__name__)


async def serve(config: RuntimeConfig, grpc_config: GrpcConfig | None = None,
                on_ready: Callable[[Supervisor], Awaitable[None]] | None = None,
                http_config: HttpConfig | None = None) -> int:
    """Start the supervisor, the gRPC server and the HTTP ops surface, call ``on_ready`` once
    they run, then wait for signals. A ``None`` config leaves that server out (tests,
    embedding)."""
    loop = asyncio.get_running_loop()
    signals = SignalQueue(loop)  # before start: a SIGTERM during start-up is not lost
    sup = Supervisor(config)
    api = GrpcApi(sup, grpc_config) if grpc_config is not None else None
    http = HttpApi(sup, http_config) if http_config is not None else None
    try:
        await sup.start()
        if api is not None:
            await api.start()
        if http is not None:
            await http.start()
        if on_ready is not None:
            await on_ready(sup)
        while True:
            sig = await signals.get()
            if sig == signal.SIGHUP:
                log.info("SIGHUP: nothing in this configuration can change live; ignored")
                continue
            log.info("%s: draining", sig.name)
            if api is not None:
                await api.begin_shutdown()  # health NOT_SERVING, new streams UNAVAILABLE
            await sup.stop()  # open streams get their finals and session_closed
            return 0
    finally:
        if sup.state != "stopped":
            await sup.stop(grace=0)
        if api is not None:
            await api.stop()
        if http is not None:
            await http.stop()
        signals.close()
