"""The pid file: written atomically once the daemon runs, removed when it stops.

It is informational (for scripts and ``systemctl``'s PIDFile=); exclusivity is the runtime
directory's flock, which the kernel releases even on SIGKILL. A stale pid file of a dead
daemon is simply replaced.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def write(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def remove(path: Path) -> None:
    """Remove the file if it is still ours."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
