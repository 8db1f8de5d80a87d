"""The runtime directory: private, and owned by exactly one live daemon instance.

ZeroMQ ``ipc://`` endpoints live here. A second ``bind`` to the same ipc path silently takes
the endpoint over from the first process, so the directory itself must guarantee there is
only one instance: :func:`acquire` takes an exclusive ``flock`` on ``instance.lock`` and
refuses to start if another live process holds it. The kernel drops a flock when its holder
dies -- even by SIGKILL -- so a crashed daemon never blocks the next start, and no pid-file
guessing is involved. The lock file records the holder's pid for the error message.

The directory is created 0700 and rejected if it is group/world accessible or owned by
another user: control-plane sockets accept job and control messages and must not be
reachable by other local users. (Under systemd, ``RuntimeDirectory=`` creates it.)
"""

from __future__ import annotations

import fcntl
import os
import stat
from dataclasses import dataclass
from pathlib import Path


class RuntimeDirError(RuntimeError):
    """The runtime directory is unusable (permissions, ownership)."""


class InstanceRunningError(RuntimeDirError):
    """Another live daemon owns the runtime directory."""


@dataclass(slots=True)
class RuntimeDir:
    """A held runtime directory. Keep it alive for the daemon's lifetime; ``release`` at stop."""

    path: Path
    _fd: int

    def endpoint(self, name: str) -> str:
        """``ipc://`` address of a control-plane socket in this directory."""
        return f"ipc://{self.path / (name + '.sock')}"

    def release(self) -> None:
        if self._fd >= 0:
            for sock in self.path.glob("*.sock"):
                sock.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = -1


def acquire(path: Path) -> RuntimeDir:
    """Create/check ``path`` and take the instance lock, or raise with the reason."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = path.stat()
    if st.st_uid != os.getuid():
        raise RuntimeDirError(f"runtime directory {path} is owned by uid {st.st_uid}, not us")
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise RuntimeDirError(
            f"runtime directory {path} has mode {stat.S_IMODE(st.st_mode):o}; it must be 0700 "
            "(chmod 700 it or point runtime_dir elsewhere)"
        )
    lock_path = path / "instance.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise InstanceRunningError(
            f"another alfred-daemon (pid {holder}) is running with runtime directory {path}; "
            "stop it or give this instance its own runtime_dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return RuntimeDir(path, fd)
