"""Helpers for the multi-process runtime tests (tests/integration/test_runtime.py).

Everything here is bounded: every wait has a deadline, every loop a finite input.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import queue
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil

from alfred_daemon.engine.audio import float_to_pcm16, read_wav
from alfred_daemon.engine.config import EngineConfig, SttConfig
from alfred_daemon.engine.events import Event, FinalTranscription, FrameProcessed
from alfred_daemon.engine.jobs import Models
from alfred_daemon.engine.session import Session
from alfred_daemon.engine.vad import WINDOW
from alfred_daemon.runtime.backpressure import BackpressureConfig
from alfred_daemon.runtime.config import ProcessorConfig, RuntimeConfig
from alfred_daemon.runtime.supervisor import Supervisor

from .conftest import REPO

FRAME_BYTES = 640
"""20 ms of 16 kHz LINEAR16: what live clients send."""
FRAME_S = 0.02
FRAMES_PER_WHOLE_WINDOWS = 8
"""8 frames = 2560 samples = 5 windows: the shortest frame count that ends on a window."""
SHM_DIR = Path("/dev/shm")
DRIVER = REPO / "tests" / "daemon_driver.py"


# ----------------------------------------------------------------------------- audio


FINALS_ONLY = EngineConfig(stt=SttConfig(partials=False))
"""An engine config whose finals depend on their audio alone (no partials: a final then
starts from no committed words), so the runtime's finals equal the single-process
engine's word for word on any machine, given the ladder holds (``steady_ladder``)."""


def wav_speech(path: Path) -> bytes:
    """A 16 kHz WAV file as LINEAR16 bytes of whole 512-sample windows."""
    audio, rate = read_wav(path)
    assert rate == 16_000, f"{path}: {rate} Hz"
    return pcm_of(pad_to_window(audio))


def pad_to_window(audio: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Zero-pad to a whole number of 512-sample windows (so no tail window is ever written
    by finish_session and the window count is exactly ``len / 512``)."""
    pad = (-audio.size) % WINDOW
    return np.concatenate([audio, np.zeros(pad, np.float32)]) if pad else audio


def frames_of(pcm: bytes) -> list[bytes]:
    return [pcm[i : i + FRAME_BYTES] for i in range(0, len(pcm), FRAME_BYTES)]


def pcm_of(audio: npt.NDArray[np.float32]) -> bytes:
    return float_to_pcm16(audio)


def reference_events(models: Models, pcm: bytes, config: EngineConfig | None = None) -> list[Event]:
    """The single-process engine on the same bytes, fed in the same 20 ms frames."""
    session = Session(models, config)
    events: list[Event] = []
    for frame in frames_of(pcm):
        events += session.push(frame)
    events += session.close()
    return events


def final_texts(events: list[Event]) -> list[str]:
    return [e.text for e in events if isinstance(e, FinalTranscription)]


def offset_order_violations(events: list[Event]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Consecutive pairs (FrameProcessed left out) whose audio_offset_ms goes backwards."""
    ordered = [e for e in events if not isinstance(e, FrameProcessed)]
    return [(a.to_dict(), b.to_dict()) for a, b in itertools.pairwise(ordered)
            if b.audio_offset_ms < a.audio_offset_ms]


# ----------------------------------------------------------------------------- runtime


def unique_prefix() -> str:
    return "alfrt" + secrets.token_hex(4)


def runtime_config(tmp_path: Path, **overrides: Any) -> RuntimeConfig:
    """A RuntimeConfig with a fresh runtime_dir under tmp_path and a unique shm prefix."""
    kwargs: dict[str, Any] = {
        "runtime_dir": str(tmp_path / f"run-{secrets.token_hex(3)}"),
        "shm_prefix": unique_prefix(),
    }
    kwargs.update(overrides)
    return RuntimeConfig(**kwargs)


def steady_ladder() -> dict[str, Any]:
    """``runtime_config`` overrides under which the backpressure ladder cannot leave NORMAL.

    For tests that compare finals word for word with the single-process engine: at
    ``reduce_quality`` finals are decoded with beam 1 and at ``drop_frames`` VAD windows
    are skipped, so exact equality would depend on how fast the machine is. The load
    figure is max(queue / frame_queue_size, lag / max_lag_ms, job-lane busy fraction); the
    busy fraction is at most 1.0, and with a 10,000-window queue bound and 60 s of lag as
    full load the other two stay far below 1.0 in a test of a few seconds -- under the
    1.5 threshold, on any machine.
    """
    return {
        "coordination": BackpressureConfig(threshold=1.5, recovery_threshold=1.0),
        "processor": ProcessorConfig(frame_queue_size=10_000),
        "max_lag_ms": 60_000.0,
    }


def shm_segments(prefix: str, pid: int | None = None) -> list[str]:
    head = f"{prefix}-" if pid is None else f"{prefix}-{pid}-"
    return sorted(p.name for p in SHM_DIR.iterdir() if p.name.startswith(head))


def process_state(pid: int) -> str:
    """"gone" (no such process), "zombie" (exited, not reaped) or "alive"."""
    try:
        status = psutil.Process(pid).status()
    except psutil.NoSuchProcess:
        return "gone"
    return "zombie" if status == psutil.STATUS_ZOMBIE else "alive"


def poll(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Blocking bounded poll; True as soon as predicate() holds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


async def apoll(predicate: Callable[[], bool], timeout: float, interval: float = 0.02) -> bool:
    """Bounded poll on the event loop (the supervisor keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(interval)


@dataclass
class Stream:
    """One session's real-time stream: what was pushed and what came back."""

    sid: str
    pcm: bytes
    events: list[Event] = field(default_factory=list)
    frames_pushed: int = 0
    bytes_pushed: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    """Set to stop early; honoured only where the pushed audio ends on a whole window."""

    @property
    def windows_pushed(self) -> int:
        return self.bytes_pushed // 2 // WINDOW


async def collect(sup: Supervisor, stream: Stream) -> None:
    async for ev in sup.events(stream.sid):
        stream.events.append(ev)


async def push_realtime(sup: Supervisor, stream: Stream,
                        on_frame: Callable[[int], None] | None = None) -> None:
    """Push 20 ms frames paced against the monotonic clock (frame k at t0 + k * 20 ms).

    Finite: at most len(pcm) / 640 frames. ``on_frame(k)`` runs before frame k is pushed.
    """
    frames = frames_of(stream.pcm)
    t0 = time.monotonic()
    for k, frame in enumerate(frames):
        if k % FRAMES_PER_WHOLE_WINDOWS == 0 and stream.stop.is_set():
            return
        delay = t0 + k * FRAME_S - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_frame is not None:
            on_frame(k)
        sup.push(stream.sid, frame)
        stream.frames_pushed += 1
        stream.bytes_pushed += len(frame)


def run_async(main: Callable[[], Awaitable[None]], timeout: float) -> None:
    """``asyncio.run`` with a hard bound on the whole scenario."""

    async def bounded() -> None:
        await asyncio.wait_for(main(), timeout)

    asyncio.run(bounded())


# ----------------------------------------------------------------------------- driver


class Driver:
    """tests/daemon_driver.py as a subprocess; its JSON lines arrive on a queue."""

    def __init__(self, spec: dict[str, Any], log_path: Path) -> None:
        self.spec = spec
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER), json.dumps(spec)], cwd=REPO,
            stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
        )
        self.lines: list[dict[str, Any]] = []
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.log_path = log_path

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self._queue.put(json.loads(raw))
        self._queue.put(None)

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool],
                 timeout: float) -> dict[str, Any] | None:
        """Next line satisfying predicate (every line read is kept in ``lines``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                item = self._queue.get(timeout=remaining)
            except queue.Empty:
                return None
            if item is None:
                self._queue.put(None)  # keep the end marker for later callers
                return None
            self.lines.append(item)
            if predicate(item):
                return item

    def drain(self, timeout: float) -> None:
        """Read every remaining line until stdout closes (bounded)."""
        self.wait_for(lambda _: False, timeout)

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def log_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


def kill_quietly(pids: list[int]) -> None:
    """Best-effort cleanup of processes a failed test left behind (only pids it started)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if process_state(pid) == "alive":
                os.kill(pid, signal.SIGKILL)
