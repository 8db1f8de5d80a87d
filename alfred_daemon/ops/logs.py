"""Logging set-up: structured lines to stderr, journald-aware, optional rotating file.

* ``text`` (default): ``time level logger: message key=value ...``. Under systemd
  (``$JOURNAL_STREAM`` set) the time is left out -- journald stamps lines itself -- and each
  line starts with the sd-daemon ``<N>`` priority prefix, so ``journalctl -p warning``
  filters correctly.
* ``json``: one object per line (``time``, ``level``, ``logger``, ``message``, ``pid`` and any
  ``extra`` fields) for log shippers.
* ``file``: additionally a size-rotated file (10 MB x 5), e.g. ``logs/alfred-daemon.log``.
  A file that cannot be written (a full disk, a vanished directory) costs one warning on
  stderr, not a traceback per record: its records are dropped until a retry, every
  :data:`FILE_RETRY_S`, writes again (:class:`DegradingFileHandler`).

A text line is one log record: control characters in the message and ``extra`` values
(newlines above all) are written as escapes (``\\n``, ``\\x1b``), so a client-supplied
string that reaches a message cannot forge a second line. Tracebacks, which are the
daemon's own, keep their lines.
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

_SD_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
                logging.CRITICAL: 2}
_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]} | {
    ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}
_CONTROL.update({c: f"\\u{c:04x}" for c in (0x85, 0x2028, 0x2029)})  # also line ends


def one_line(text: str) -> str:
    """``text`` with control characters and line separators escaped."""
    return text.translate(_CONTROL)


_RESERVED = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {
    "message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        out.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, journald: bool) -> None:
        fmt = "%(name)s: %(message)s" if journald else \
            "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(fmt)
        self.journald = journald

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 -- logging API
        record.message = one_line(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        if extra:
            line += " " + " ".join(f"{k}={one_line(str(v))}" for k, v in extra.items())
        if self.journald:
            line = f"<{_SD_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


FILE_RETRY_S = 30.0
"""How often a log file that failed is tried again while its records are dropped."""

log = logging.getLogger(__name__)


class DegradingFileHandler(logging.handlers.RotatingFileHandler):
    """A rotating file handler that survives an unwritable file.

    The standard handler reports every failed write through ``handleError``: a traceback
    on stderr per log record, for as long as the disk is full -- which buries the
    daemon's own stderr lines, and costs a formatted traceback per record when the daemon
    is busiest. Here the first OSError closes the file and logs one warning (to the other
    handlers, stderr among them); records are then dropped without a write until
    ``retry_s`` has passed, when the next record reopens the file and tries again. The
    first write that succeeds logs how many records the file missed. Errors that are not
    OSError (a record that cannot be formatted) are reported as the standard handler does.
    """

    def __init__(self, filename: Path, *, max_bytes: int = 10 << 20, backup_count: int = 5,
                 retry_s: float = FILE_RETRY_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(filename, maxBytes=max_bytes, backupCount=backup_count)
        self.retry_s = retry_s
        self._clock = clock
        self.failing_since: float | None = None
        """When writes started failing (None: the file is being written)."""
        self._retry_at = 0.0
        self.dropped = 0
        """Records not written to the file since it started failing."""
        self._failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        if self.failing_since is not None and self._clock() < self._retry_at:
            self.dropped += 1
            return
        self._failed_now = False
        super().emit(record)  # a failure comes back through handleError
        if self._failed_now:
            self.dropped += 1
        elif self.failing_since is not None:
            dropped, self.dropped = self.dropped, 0
            self.failing_since = None
            log.warning("log file %s is writable again; %d records were not written to it",
                        self.baseFilename, dropped)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 -- logging API
        exc = sys.exc_info()[1]
        if not isinstance(exc, OSError):
            super().handleError(record)
            return
        self._failed_now = True
        self._retry_at = self._clock() + self.retry_s
        # Close, so that a retry reopens the path (the disk may have been remounted or the
        # directory recreated); closing flushes the failed buffer, which fails again.
        if self.stream is not None:
            stream, self.stream = self.stream, None
            with contextlib.suppress(OSError):
                stream.close()
        if self.failing_since is None:
            self.failing_since = self._clock()
            # Reaches this handler too, which now drops it (its lock is re-entrant).
            log.warning("log file %s is unwritable (%s); its records are dropped, stderr "
                        "still gets them; retrying every %.0f s", self.baseFilename,
                        exc.strerror or exc, self.retry_s)


def setup_logging(level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use text or json")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    # aioice and aiortc log every ICE check and state change at INFO (dozens of lines per
    # WebRTC peer); the daemon logs each peer's life itself, theirs shows at debug.
    for name in ("aioice", "aiortc"):
        logging.getLogger(name).setLevel("DEBUG" if level == "debug" else "WARNING")
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(journald))
    root.addHandler(stderr)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        rotating = DegradingFileHandler(file)
        rotating.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(False))
        root.addHandler(rotating)
