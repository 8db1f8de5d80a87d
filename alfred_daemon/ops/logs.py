"""Logging set-up: structured lines to stderr, journald-aware, optional rotating file.

* ``text`` (default): ``time level logger: message key=value ...``. Under systemd
  (``$JOURNAL_STREAM`` set) the time is left out -- journald stamps lines itself -- and each
  line starts with the sd-daemon ``<N>`` priority prefix, so ``journalctl -p warning``
  filters correctly.
* ``json``: one object per line (``time``, ``level``, ``logger``, ``message``, ``pid`` and any
  ``extra`` fields) for log shippers.
* ``file``: additionally a size-rotated file (10 MB x 5), e.g. ``logs/alfred-daemon.log``.

A text line is one log record: control characters in the message and ``extra`` values
(newlines above all) are written as escapes (``\\n``, ``\\x1b``), so a client-supplied
string that reaches a message cannot forge a second line. Tracebacks, which are the
daemon's own, keep their lines.
"""

from __future__ import annotations

import json
import logging
import logging.handlers
import os
import sys
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


def setup_logging(level: str = "info", fmt: str = "text", file: Path | None = None) -> None:
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r}: use text or json")
    root = logging.getLogger()
    root.handlers.clear()
    root.setLevel(level.upper())
    journald = bool(os.environ.get("JOURNAL_STREAM"))
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(journald))
    root.addHandler(stderr)
    if file is not None:
        file.parent.mkdir(parents=True, exist_ok=True)
        rotating = logging.handlers.RotatingFileHandler(file, maxBytes=10 << 20, backupCount=5)
        rotating.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(False))
        root.addHandler(rotating)
