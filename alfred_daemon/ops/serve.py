"""``alfred-daemon serve``: run the daemon until a signal says stop.

SIGTERM / SIGINT / ``POST /drain``: STOPPING=1 to systemd, gRPC health NOT_SERVING, new
streams refused, the agent check ``drain``,
drain (each session ends at an utterance boundary with its finals and turn decision, within
``drain_grace``; its client may continue on another daemon), stop the workers, unlink every
shared-memory segment, exit 0. SIGHUP: RELOADING=1 ... READY=1; nothing
in this configuration can change live yet, so it is logged (the config-file issue adds what
can be reloaded). While running, the watchdog is fed from the event loop only while the
daemon is not failed, with a one-line STATUS summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..api.auth import Authenticator
from ..api.grpc_config import GrpcConfig
from ..api.grpc_server import GrpcApi
from ..api.http_server import HttpApi, HttpConfig
from ..api.tls import TlsFiles
from ..api.webrtc_ice import WebRtcConfig
from ..runtime.config import RuntimeConfig
from ..runtime.health import Health
from ..runtime.supervisor import Supervisor
from . import agent_check, pidfile
from .signals import SignalQueue
from .systemd import Notifier

log = logging.getLogger(__name__)


class _Reloader:
    """SIGHUP: re-read the config file; apply what can change live, name what needs a
    restart. Compares file with file (command-line flags are not in either), so a flag
    that overrides a restart-only key is not reported as a pending change."""

    def __init__(self, path: Path | None) -> None:
        from .config import load

        self.path = path
        self.loaded = load(path)

    def __call__(self, sup: Supervisor) -> None:
        from ..engine.errors import ConfigError
        from .config import load, restart_needed

        try:
            new = load(self.path)
        except ConfigError as exc:
            log.error("SIGHUP: config not reloaded, it is invalid: %s", exc)
            return
        pending = restart_needed(self.loaded, new)
        self.loaded = new
        sup.apply_config(new.runtime)
        logging.getLogger().setLevel(new.logging.level.upper())
        log.info("SIGHUP: config %s reloaded%s", self.path or "(defaults + environment)",
                 f"; needs a restart to change: {', '.join(pending)}" if pending else "")


    def reload_tokens(self, auth: Authenticator) -> None:
        """Re-read the tokens file of the (re-read) config, if the daemon uses one. A file
        that no longer parses keeps the old tokens: a typo must not lock everyone out."""
        from ..api.auth import TokenStore
        from ..engine.errors import ConfigError

        path = self.loaded.security.tokens_file
        if auth.store is None or not path:
            return
        try:
            auth.store = TokenStore.load(Path(path))
        except ConfigError as exc:
            log.error("SIGHUP: tokens not reloaded, keeping the old ones: %s", exc)
            return
        log.info("SIGHUP: %d tokens loaded from %s", len(auth.store), path)


def reload_tls(tls: TlsFiles) -> None:
    """SIGHUP: new handshakes get the certificate files as they are now; a set that does
    not load keeps the old one (a half-copied renewal must not stop the daemon)."""
    from ..engine.errors import ConfigError

    try:
        tls.reload()
    except (ConfigError, OSError) as exc:
        log.error("SIGHUP: certificates not reloaded, keeping the old ones: %s", exc)
        return
    log.info("SIGHUP: certificates reloaded from %s", tls.cert)


def status_line(sup: Supervisor) -> str:
    """The one-line STATUS= summary systemctl shows."""
    workers = sup.status()["workers"]
    ready = sum(1 for w in workers if w["state"] == "ready")
    return (f"{sup.health.value}; {len(sup.session_ids())} sessions; load {sup.load:.2f}; "
            f"backpressure {sup.ladder.level.action}; workers {ready}/{len(workers)}")


@dataclass(slots=True)
class _Surfaces:
    """The listeners around the supervisor: started after it, once it has workers; stopped
    after it, so that a drain's last events still reach their clients."""

    api: GrpcApi | None = None
    http: HttpApi | None = None
    agent: agent_check.AgentCheck | None = None
    draining: bool = False
    """Set at the first SIGTERM/SIGINT: the agent check answers ``drain`` from then on."""

    async def start(self) -> None:
        for surface in (self.api, self.http, self.agent):
            if surface is not None:
                await surface.start()

    async def stop(self) -> None:
        for surface in (self.api, self.http, self.agent):
            if surface is not None:
                await surface.stop()


async def serve(config: RuntimeConfig, grpc_config: GrpcConfig | None = None, *,
                on_ready: Callable[[Supervisor], Awaitable[None]] | None = None,
                http_config: HttpConfig | None = None, pid_file: Path | None = None,
                config_path: Path | None = None, warnings: list[str] | None = None,
                auth: Authenticator | None = None, metrics_public: bool = True,
                tls: TlsFiles | None = None, webrtc_config: WebRtcConfig | None = None) -> int:
    """Start the supervisor, the gRPC server and the HTTP ops surface, call ``on_ready`` once
    they run, then wait for signals. A ``None`` config leaves that server out (tests,
    embedding). ``warnings`` (an insecure exposure) are logged and listed in the status.
    ``auth``: who may use the daemon (default: anyone); ``tls``: the listeners' certificates
    (default: plaintext); ``webrtc_config``: WHIP ingest on the HTTP server (default: on,
    loopback). Tokens and certificates are re-read on SIGHUP."""
    loop = asyncio.get_running_loop()
    signals = SignalQueue(loop)  # before start: a SIGTERM during start-up is not lost
    notifier = Notifier()
    sup = Supervisor(config)
    auth = auth or Authenticator()
    surfaces = _Surfaces()
    if grpc_config is not None:
        surfaces.api = GrpcApi(sup, grpc_config, auth=auth, tls=tls)
    if http_config is not None:
        surfaces.http = HttpApi(sup, http_config, warnings=warnings, auth=auth, tls=tls,
                                metrics_public=metrics_public, webrtc=webrtc_config,
                                drain=lambda: signals.inject(signal.SIGTERM))
        if http_config.agent_check_port is not None:
            surfaces.agent = agent_check.for_supervisor(
                sup, http_config.agent_check_host, http_config.agent_check_port,
                lambda: surfaces.draining)
    for warning in warnings or []:
        log.warning("%s", warning)
    watchdog: asyncio.Task[None] | None = None
    reloader = _Reloader(config_path)
    try:
        notifier.status("starting: verifying models, starting workers")
        await sup.start()
        await surfaces.start()
        if pid_file is not None:
            pidfile.write(pid_file)
        if on_ready is not None:
            await on_ready(sup)
        # READY only now: models loaded, workers up, every listener bound.
        notifier.ready(status_line(sup))
        watchdog = asyncio.create_task(notifier.watchdog_loop(
            healthy=lambda: sup.health is not Health.FAILED,
            status=lambda: status_line(sup)))
        return await _until_stopped(sup, surfaces, signals, notifier=notifier,
                                    reloader=reloader, auth=auth, tls=tls)
    finally:
        if watchdog is not None:
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog
        if sup.state != "stopped":
            await sup.stop(grace=0)
        await surfaces.stop()
        if pid_file is not None:
            pidfile.remove(pid_file)
        notifier.close()
        signals.close()


async def _until_stopped(sup: Supervisor, surfaces: _Surfaces, signals: SignalQueue, *,
                         notifier: Notifier, reloader: _Reloader, auth: Authenticator,
                         tls: TlsFiles | None) -> int:
    """The arbiter's loop: SIGHUP reloads; SIGTERM/SIGINT drain and return the exit code."""
    while True:
        sig = await signals.get()
        if sig == signal.SIGHUP:
            notifier.reloading()
            reloader(sup)
            reloader.reload_tokens(auth)
            if tls is not None:
                reload_tls(tls)
            notifier.ready(status_line(sup))
            continue
        log.info("%s: draining", sig.name)
        surfaces.draining = True
        notifier.stopping(f"draining {len(sup.session_ids())} sessions")
        if surfaces.api is not None:
            await surfaces.api.begin_shutdown()  # health NOT_SERVING, new streams UNAVAILABLE
        await sup.stop()  # open streams get their finals and session_closed
        return 0
