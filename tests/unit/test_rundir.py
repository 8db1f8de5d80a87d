"""Runtime directory: permissions and the one-live-instance lock (real processes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alfred_daemon.runtime.rundir import InstanceRunningError, RuntimeDirError, acquire

HOLDER = """
import sys, time
from pathlib import Path
from alfred_daemon.runtime.rundir import acquire
rd = acquire(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def test_creates_private_dir_and_endpoints(tmp_path: Path) -> None:
    rd = acquire(tmp_path / "run")
    try:
        assert oct((tmp_path / "run").stat().st_mode & 0o777) == oct(0o700)
        assert rd.endpoint("control") == f"ipc://{tmp_path / 'run' / 'control.sock'}"
        assert (tmp_path / "run" / "instance.lock").read_text().strip() == str(os.getpid())
    finally:
        rd.release()


def test_rejects_group_or_world_accessible_dir(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    d.chmod(0o755)
    with pytest.raises(RuntimeDirError, match="0700"):
        acquire(d)


def test_second_live_instance_is_refused_and_sigkill_frees_the_lock(tmp_path: Path) -> None:
    d = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(d)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(InstanceRunningError, match=f"pid {proc.pid}"):
            acquire(d)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while True:  # the kernel releases the flock with the dead process
        try:
            rd = acquire(d)
            break
        except InstanceRunningError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    rd.release()


def test_release_removes_sockets_and_allows_reacquire(tmp_path: Path) -> None:
    rd = acquire(tmp_path / "run")
    (tmp_path / "run" / "control.sock").touch()
    rd.release()
    assert not (tmp_path / "run" / "control.sock").exists()
    acquire(tmp_path / "run").release()
