"""The systemd notify protocol, spoken directly (no libsystemd dependency).

A datagram to the socket named in ``$NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract
namespace) carrying ``KEY=value`` lines: READY=1, STATUS=..., WATCHDOG=1, STOPPING=1,
RELOADING=1 (with MONOTONIC_USEC, as systemd >= 253 expects for Type=notify-reload). Outside
systemd there is no socket and every call is a no-op.

The watchdog is fed from the event loop (:meth:`Notifier.watchdog_loop`), and only while the
daemon is not failed: a wedged loop or a failed daemon stops the pings, and systemd restarts
the service after ``WatchdogSec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str | None = None) -> None:
        self.address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        self._sock: socket.socket | None = None
        if self.address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines (keyword names are upper-cased); False if not under
        systemd or the send failed (never raises: notification is best effort)."""
        if self._sock is None:
            return False
        payload = "\n".join(f"{k.upper()}={v}" for k, v in fields.items()).encode()
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            self._sock.sendto(payload, target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str) -> None:
        self.notify(ready=1, status=status)

    def status(self, status: str) -> None:
        self.notify(status=status)

    def stopping(self, status: str = "draining") -> None:
        self.notify(stopping=1, status=status)

    def reloading(self) -> None:
        self.notify(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC)
                    // 1000)

    @staticmethod
    def watchdog_interval() -> float | None:
        """Half of ``$WATCHDOG_USEC`` (systemd's advice), if the watchdog is on for us."""
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        with contextlib.suppress(ValueError):
            return max(0.05, int(usec) / 2 / 1_000_000)
        return None

    async def watchdog_loop(self, healthy: Callable[[], bool],
                            status: Callable[[], str]) -> None:
        """Ping WATCHDOG=1 (with a fresh STATUS line) while ``healthy()``."""
        interval = self.watchdog_interval()
        while True:
            if interval is not None and healthy():
                self.notify(watchdog=1, status=status())
            else:
                self.status(status())  # no ping: a failed daemon gets restarted
            await asyncio.sleep(interval if interval is not None else 5.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
