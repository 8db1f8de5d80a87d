"""Operating the daemon: the systemd unit, the notify protocol, the pid file, JSON logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alfred_daemon.ops.systemd import Notifier
from alfred_daemon.runtime.config import RuntimeConfig

from ..conftest import REPO
from ..grpc_helpers import free_port

UNIT = REPO / "systemd" / "alfred-daemon.service"


def unit_keys() -> dict[str, str]:
    keys: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        m = re.match(r"^([A-Za-z]+)=(.*)$", line)
        if m:
            keys[m.group(1)] = m.group(2)
    return keys


def test_unit_file_has_the_required_settings() -> None:
    keys = unit_keys()
    assert keys["Type"] == "notify"
    assert int(keys["WatchdogSec"]) > 0
    assert keys["Restart"] == "on-failure"
    assert keys["KillMode"] == "mixed"
    assert keys["RuntimeDirectory"] == "alfred-daemon" and keys["RuntimeDirectoryMode"] == "0700"
    assert keys["DynamicUser"] == "yes" and keys["RemoveIPC"] == "yes"
    for key in ("NoNewPrivileges", "PrivateTmp"):
        assert keys[key] == "yes", key
    assert keys["ProtectSystem"] == "strict"
    assert keys["MemoryMax"]
    # Stop timeout covers the drain grace plus worker shutdown (3 s).
    assert int(keys["TimeoutStopSec"]) >= RuntimeConfig().drain_grace + 3
    assert "CPUAffinity" in UNIT.read_text()  # documented


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_verifies_clean(tmp_path: Path) -> None:
    # systemd-analyze exits 0 on unknown keys: the output itself must be empty.
    exe = REPO / ".venv" / "bin" / "alfred-daemon"
    text = UNIT.read_text().replace("/opt/alfred-daemon/.venv/bin/alfred-daemon", str(exe))
    unit = tmp_path / "alfred-daemon.service"
    unit.write_text(text)
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)
    lines = [ln for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]
    assert lines == [], lines


def test_notifier_sends_datagrams_and_is_silent_outside_systemd(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(str(path))
    recv.settimeout(2)
    n = Notifier(str(path))
    n.ready("healthy; 0 sessions")
    assert recv.recv(4096).decode() == "READY=1\nSTATUS=healthy; 0 sessions"
    n.reloading()
    assert re.fullmatch(r"RELOADING=1\nMONOTONIC_USEC=\d+", recv.recv(4096).decode())
    n.close()
    recv.close()
    silent = Notifier("")
    assert not silent.enabled and silent.notify(ready=1) is False


@pytest.mark.slow
def test_serve_speaks_notify_protocol_pid_file_and_json_logs(tmp_path: Path) -> None:
    sock_path = tmp_path / "notify.sock"
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(str(sock_path))
    recv.settimeout(0.2)
    pid_file = tmp_path / "alfred.pid"
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "alfred-daemon"), "serve",
         "--listen", f"127.0.0.1:{free_port()}", "--http-port", str(free_port()),
         "--runtime-dir", str(tmp_path / "run"), "--workers", "1",
         "--pid-file", str(pid_file), "--log-format", "json"],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    messages: list[str] = []

    def collect_until(pred: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                messages.append(recv.recv(4096).decode())
            except TimeoutError:
                continue
            if pred in messages[-1]:
                return
        raise AssertionError(f"{pred!r} not received within {timeout} s: {messages}")

    try:
        collect_until("READY=1", 90)
        assert pid_file.read_text().strip() == str(proc.pid)
        ready = messages[-1]
        assert re.search(r"STATUS=healthy; 0 sessions; load [\d.]+; backpressure none; "
                         r"workers 1/1", ready), ready
        assert any(m.startswith("STATUS=starting") for m in messages[:-1]), messages
        before = len(messages)
        collect_until("WATCHDOG=1", 2)
        collect_until("WATCHDOG=1", 2)
        assert sum("WATCHDOG=1" in m for m in messages[before:]) >= 2
        proc.send_signal(signal.SIGHUP)
        collect_until("RELOADING=1", 5)
        collect_until("READY=1", 5)
        proc.send_signal(signal.SIGTERM)
        collect_until("STOPPING=1", 5)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        recv.close()
    assert code == 0
    assert not pid_file.exists()
    assert proc.stderr is not None
    lines = [ln for ln in proc.stderr.read().decode().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any("draining" in r["message"] for r in records)
    # Starting and draining on purpose are not health events: an operator's alerting
    # would page on every deploy.
    health = [r["message"] for r in records if r["message"].startswith("health ")]
    assert not health, health


def test_bad_config_fails_start_naming_the_key(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "alfred-daemon")
    for body, needle in (("[processor]\nmax_batch_size = 0\n", "processor.max_batch_size"),
                         ('[workers]\ncount = "two"\n', "workers.count"),
                         ("[limits]\nmaxMemoryMB = 5\n", "limits.maxMemoryMB")):
        path = tmp_path / "bad.toml"
        path.write_text(body)
        run = subprocess.run([exe, "serve", "--config", str(path), "--runtime-dir",
                              str(tmp_path / "run")], capture_output=True, text=True,
                             timeout=60, check=False)
        assert run.returncode == 2, run.stderr
        assert needle in run.stderr, run.stderr


@pytest.mark.slow
def test_no_watchdog_while_failed(tmp_path: Path) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    """With its only worker dead and the restart brake engaged, the daemon is failed: the
    watchdog pings stop (systemd will restart it), STATUS says failed."""
    config = tmp_path / "c.toml"
    config.write_text("[workers]\ncount = 1\nmax_restarts_per_minute = 1\n")
    sock_path = tmp_path / "notify.sock"
    recv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    recv.bind(str(sock_path))
    recv.settimeout(0.1)
    env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "alfred-daemon"), "serve", "--config", str(config),
         "--listen", f"127.0.0.1:{free_port()}", "--http-port", str(free_port()),
         "--runtime-dir", str(tmp_path / "run")],
        cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)

    def drain(seconds: float) -> list[str]:
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                got.append(recv.recv(4096).decode())
            except TimeoutError:
                continue
        return got

    def worker_pids() -> list[int]:
        """Live workers. A worker just killed stays a zombie until the daemon reaps it, and
        a zombie has no command line to read (psutil.ZombieProcess): it is not a worker."""
        import psutil

        pids = []
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if "alfred_daemon.runtime.worker" in " ".join(child.cmdline()):
                    pids.append(child.pid)
            except (psutil.ZombieProcess, psutil.NoSuchProcess):
                continue
        return pids

    try:
        deadline = time.monotonic() + 90
        msgs: list[str] = []
        while not any("READY=1" in m for m in msgs) and time.monotonic() < deadline:
            msgs += drain(0.5)
        assert any("READY=1" in m for m in msgs), msgs
        assert any("WATCHDOG=1" in m for m in drain(1.0))
        for _ in range(2):  # the first death is respawned, the second hits the brake
            pids = worker_pids()
            assert pids
            os.kill(pids[0], signal.SIGKILL)
            t0 = time.monotonic()
            while time.monotonic() - t0 < 15 and worker_pids() == pids:
                time.sleep(0.05)
            time.sleep(1.0)
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while not any(m.startswith("STATUS=failed") for m in seen) \
                and time.monotonic() < deadline:
            seen += drain(0.2)
        assert any(m.startswith("STATUS=failed") for m in seen), seen
        failed = drain(2.0)  # a fresh window, entirely after the failure
        assert failed and not any("WATCHDOG=1" in m for m in failed), failed
        assert all(m.startswith("STATUS=failed") for m in failed), failed
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        recv.close()


@pytest.mark.slow
def test_serve_exits_1_in_one_sentence_when_workers_keep_dying_at_start(
    tmp_path: Path
) -> None:
    """A broken install (here: a Whisper model file that is present but corrupt, which only
    a worker's load finds) makes every worker die before ready; the crash-loop brake turns
    that into ``alfred-daemon serve`` exiting 1 with one sentence on stderr, no traceback
    there, instead of a hang until the start timeout."""
    from alfred_daemon.engine.models import resolve_stt

    broken = tmp_path / "whisper-broken"
    shutil.copytree(resolve_stt(None), broken)
    (broken / "model.bin").write_bytes(b"not a CTranslate2 model\n" * 64)
    exe = str(Path(sys.executable).parent / "alfred-daemon")
    t0 = time.monotonic()
    run = subprocess.run(
        [exe, "serve", "--listen", f"127.0.0.1:{free_port()}", "--http-port",
         str(free_port()), "--runtime-dir", str(tmp_path / "run"), "--workers", "1"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "ALFRED__MODELS__STT_MODEL": str(broken)})
    took = time.monotonic() - t0
    last = run.stderr.strip().splitlines()[-1]
    assert run.returncode == 1, run.stderr[-3000:]
    assert last.startswith("alfred-daemon: cannot start: worker 0 keeps failing to start"), last
    assert "died before ready 3 times in a row" in last, last
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert took < 60.0, took  # the brake, not the 30 s start timeout per attempt
