"""Logging set-up: structured lines to stderr, journald-aware, optional rotating file.

* ``text`` (default): ``time level logger: message key=value ...``. Under systemd
  (``$JOURNAL_STREAM`` set) the time is left out -- journald stamps lines itself -- and each
  line starts with the sd-daemon ``<N>`` priority prefix, so ``journalctl -p warning``
  filters correctly.
* ``json``: one object per line (``time``, ``level``, ``logger``, ``message``, ``pid`` and any
  ``extra`` fields) for log shippers.
* ``file``: additionally a size-rotated file (10 MB x 5), e.g. ``logs/alfred-daemon.log``.
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

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = {k: v for k, v in record.__dict__.items() if k not in _RESERVED}
        if extra:
            line += " " + " ".join(f"{k}={v}" for k, v in extra.items())
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
