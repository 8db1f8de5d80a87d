"""Memory measurement and release, shared by the supervisor and workers.

Limits use PSS (proportional set size), not RSS: worker processes map the same shared
libraries and the same audio rings, and RSS would count those pages once per process --
a daemon with two workers would look 30-40 % bigger than it is.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterable

import psutil

MB = 1024 * 1024


def malloc_trim() -> None:
    """Return freed heap pages to the OS (glibc only; a no-op elsewhere).

    CPython and ONNX Runtime free into malloc's arenas, which glibc keeps; after a burst
    (many sessions closing) the pages stay resident until trimmed.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def pss_mb(pid: int) -> float:
    """PSS of one process in MiB (0.0 if it is gone or unreadable)."""
    try:
        return float(psutil.Process(pid).memory_full_info().pss) / MB
    except (psutil.Error, AttributeError):
        return 0.0


def total_pss_mb(pids: Iterable[int]) -> dict[int, float]:
    return {pid: pss_mb(pid) for pid in pids}
