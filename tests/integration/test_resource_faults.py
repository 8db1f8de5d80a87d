"""Resource exhaustion against real daemon processes: a full /dev/shm and a full log disk.

/dev/shm full: each session's audio ring is a tmpfs segment. The daemon runs in a private
user + mount namespace whose /dev/shm is a tmpfs with room for two rings and a half
(``unshare -rm``; the sizes come from ``RuntimeConfig.ring_seconds``): the third session
must be refused with a sentence (gRPC RESOURCE_EXHAUSTED, HTTP 503), while the session
already open streams on and gets its finals, and the daemon stays up. Without the pages
reserved at creation, the refused ring's first write would SIGBUS the supervisor.

Log disk full: ``--log-file /dev/full`` (every write fails with ENOSPC). The daemon must
serve a session as usual and say once on stderr that the file is unwritable -- not print a
traceback per log record.

Both need nothing but the daemon's own processes; every wait is bounded.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from alfred_client import AsyncClient, Event, StreamError

from alfred_daemon.ops.logs import DegradingFileHandler, TextFormatter
from alfred_daemon.runtime.config import RuntimeConfig
from alfred_daemon.runtime.ring import SLOT_SAMPLES, segment_bytes

from ..grpc_helpers import (
    FRAME_BYTES,
    JFK,
    JFK_REFERENCE,
    RATE,
    SERVING,
    Daemon,
    health_check,
    running_daemon,
    silence_pcm,
    wav_pcm,
    wer,
)

pytestmark = pytest.mark.slow

N_SLOTS = int(RuntimeConfig().ring_seconds * RATE / SLOT_SAMPLES)
RING_BYTES = segment_bytes(N_SLOTS)
"""One session's ring, as the supervisor sizes it."""
SHM_KB = (RING_BYTES * 5 // 2 + 4095) // 4096 * 4
"""The private /dev/shm: two rings and a half, in whole 4 KiB pages."""
WER_BOUND = 0.35


def private_shm(size_kb: int) -> list[str]:
    """A command prefix that runs the rest of the command line (``exec "$0" "$@"``) in a
    new user + mount namespace with a tmpfs of ``size_kb`` KiB on /dev/shm. Fails the test,
    saying why, where the host does not allow unprivileged namespaces: a skip would hide
    that the fault is untested."""
    mount = f"mount -t tmpfs -o size={size_kb}k tmpfs /dev/shm"
    try:
        probe = subprocess.run(["unshare", "-rm", "sh", "-c", mount], capture_output=True,
                               text=True, timeout=30, check=False)
    except FileNotFoundError:
        pytest.fail("unshare(1) is missing (util-linux): this test runs the daemon in a "
                    "private mount namespace with a tiny /dev/shm")
    if probe.returncode != 0:
        pytest.fail(f"cannot make a private /dev/shm with `unshare -rm sh -c '{mount}'` "
                    f"(exit {probe.returncode}: {probe.stderr.strip()}): this host does not "
                    "allow unprivileged user + mount namespaces (kernel.unprivileged_userns_"
                    "clone, user.max_user_namespaces, or a seccomp/AppArmor policy), which "
                    "this test needs to fill /dev/shm without touching the host's")
    return ["unshare", "-rm", "sh", "-c", f'{mount} && exec "$0" "$@"']


def no_traceback(daemon: Daemon) -> None:
    log = daemon.log.read_text(errors="replace")
    assert "Traceback" not in log and "--- Logging error ---" not in log, daemon.log_tail(80)


def finals_of(events: list[Event]) -> str:
    return " ".join(str(e.data.get("text", "")) for e in events
                    if e.type == "final_transcription")


# ----------------------------------------------------------------------------- /dev/shm


def test_ring_on_full_shm_is_refused_and_leaves_nothing() -> None:
    """RingWriter.create on a full tmpfs raises RingSpaceError (an admission refusal with
    a sentence) and removes its segment; the rings created before it are intact."""
    script = textwrap.dedent(f"""
        import os
        from alfred_daemon.runtime.errors import AdmissionError
        from alfred_daemon.runtime.ring import RingSpaceError, RingWriter
        import numpy as np
        rings = [RingWriter.create(f"t-{{os.getpid()}}-{{i}}", {N_SLOTS})
                 for i in range(2)]
        try:
            RingWriter.create(f"t-{{os.getpid()}}-2", {N_SLOTS})
        except RingSpaceError as exc:
            assert isinstance(exc, AdmissionError) and exc.reason == "shm_full"
            print("refused:", exc)
        for r in rings:
            r.write(np.ones(512, np.int16))
        print("left:", sorted(os.listdir("/dev/shm")))
        for r in rings:
            r.close()
            r.unlink()
    """)
    out = subprocess.run([*private_shm(SHM_KB), sys.executable, "-c", script],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "refused: shared memory is full" in out.stdout, out.stdout
    left = out.stdout.split("left:", 1)[1].strip()
    assert left.count("'t-") == 2 and "-2'" not in left, out.stdout


async def _hold(release: asyncio.Event) -> AsyncIterator[bytes]:
    """Frames of silence until ``release``: a session that keeps its ring."""
    for _ in range(3000):  # bounded: 60 s at 20 ms
        yield silence_pcm(0.02)
        if release.is_set():
            return
        await asyncio.sleep(0.02)


async def _collect(client: AsyncClient, frames: AsyncIterator[bytes], events: list[Event],
                   started: asyncio.Event) -> None:
    async for ev in client.stream(frames, RATE):
        events.append(ev)
        if ev.type == "session_started":
            started.set()


async def _realtime(pcm: bytes) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for k, i in enumerate(range(0, len(pcm), FRAME_BYTES)):
        await asyncio.sleep(max(0.0, t0 + k * 0.02 - loop.time()))
        yield pcm[i : i + FRAME_BYTES]


@dataclass
class ShmFull:
    grpc_refusal: tuple[grpc.StatusCode, str] = (grpc.StatusCode.OK, "")
    http_refusal: tuple[int, dict[str, Any]] = (0, {})
    alive_after_refusal: bool = False
    reopened: list[str] = field(default_factory=list)
    """Event types of a session opened after the holding one closed."""
    first: list[Event] = field(default_factory=list)
    """Events of the session open all along (speech)."""


async def _shm_full(d: Daemon) -> ShmFull:
    out = ShmFull()
    speech = wav_pcm(JFK) + silence_pcm(1.5)
    a_events: list[Event] = []
    b_events: list[Event] = []
    a_started, b_started, b_release = asyncio.Event(), asyncio.Event(), asyncio.Event()
    async with AsyncClient(d.target, max_resumes=0) as ca, \
            AsyncClient(d.target, max_resumes=0) as cb, \
            AsyncClient(d.target, max_resumes=0) as cc:
        a = asyncio.create_task(_collect(ca, _realtime(speech), a_events, a_started))
        await asyncio.wait_for(a_started.wait(), 15)
        b = asyncio.create_task(_collect(cb, _hold(b_release), b_events,
                                         b_started))
        await asyncio.wait_for(b_started.wait(), 15)
        # The third ring does not fit: refused, over gRPC and over HTTP.
        with pytest.raises(StreamError) as refused:
            async for _ in cc.stream([silence_pcm(0.02)], RATE):
                pass
        out.grpc_refusal = (refused.value.code, refused.value.details)
        async with aiohttp.ClientSession() as http:
            form = aiohttp.FormData()
            form.add_field("audio", silence_pcm(0.02), filename="frame.pcm")
            r = await http.post(f"http://127.0.0.1:{d.http_port}/process_frame", data=form,
                                timeout=aiohttp.ClientTimeout(total=15))
            out.http_refusal = (r.status, await r.json())
        out.alive_after_refusal = d.proc.poll() is None
        # Space comes back with the session that held it.
        b_release.set()
        await asyncio.wait_for(b, 30)
        d_events: list[Event] = []
        d_started = asyncio.Event()
        async with AsyncClient(d.target, max_resumes=0) as cd:
            await asyncio.wait_for(
                _collect(cd, _realtime(silence_pcm(0.5)), d_events, d_started), 30)
        out.reopened = [e.type for e in d_events]
        await asyncio.wait_for(a, len(speech) / 2 / RATE + 30)
    out.first = a_events
    return out


def test_full_dev_shm_refuses_the_session_that_does_not_fit(tmp_path: Path) -> None:
    with running_daemon(tmp_path, wrap=private_shm(SHM_KB)) as d:
        res = asyncio.run(_shm_full(d))
        with grpc.insecure_channel(d.target) as channel:
            assert health_check(channel) == SERVING, d.log_tail()
    code, details = res.grpc_refusal
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details, d.log_tail())
    assert details.startswith("shared memory is full: /dev/shm has no room"), details
    status, body = res.http_refusal
    assert status == 503, body
    assert body["error"]["code"] == "shm_full", body
    assert body["error"]["message"].startswith("shared memory is full"), body
    assert res.alive_after_refusal, d.log_tail()
    assert "session_closed" in res.reopened, res.reopened
    assert [e.type for e in res.first].count("session_closed") == 1, res.first[-3:]
    hyp = finals_of(res.first)
    assert wer(JFK_REFERENCE, hyp) <= WER_BOUND, hyp
    no_traceback(d)


# ----------------------------------------------------------------------------- log disk


def test_log_file_on_full_disk_degrades_to_one_warning(tmp_path: Path) -> None:
    """``--log-file /dev/full``: the daemon starts, serves a session with its finals, and
    stderr says once that the file is unwritable -- no traceback per record."""

    async def session(d: Daemon) -> list[Event]:
        async with AsyncClient(d.target, max_resumes=0) as client:
            return [ev async for ev in client.stream(
                _realtime(wav_pcm(JFK) + silence_pcm(1.0)), RATE)]

    with running_daemon(tmp_path, args=["--log-file", "/dev/full"]) as d:
        events = asyncio.run(asyncio.wait_for(session(d), 60))
    hyp = finals_of(events)
    assert wer(JFK_REFERENCE, hyp) <= WER_BOUND, hyp
    assert events[-1].type == "session_closed", [e.type for e in events[-3:]]
    stderr = d.log.read_text(errors="replace")  # the daemon's stdout and stderr
    assert stderr.count("log file /dev/full is unwritable (No space left on device)") == 1, \
        d.log_tail(80)
    assert "session" in stderr and "opened" in stderr, d.log_tail()  # stderr kept them all
    no_traceback(d)


@pytest.fixture
def file_logger(tmp_path: Path) -> Iterator[tuple[logging.Logger, DegradingFileHandler,
                                                 list[str], list[float]]]:
    """A logger with a DegradingFileHandler on ``tmp_path/daemon.log`` (a symlink to
    /dev/full to start with), a fake clock, and the records other handlers saw."""
    path = tmp_path / "daemon.log"
    path.symlink_to("/dev/full")
    now = [100.0]
    handler = DegradingFileHandler(path, retry_s=30.0, clock=lambda: now[0])
    handler.setFormatter(TextFormatter(False))
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    root = logging.getLogger()
    keep = Keep()
    root.addHandler(handler)
    root.addHandler(keep)
    logger = logging.getLogger("resource_faults")
    logger.setLevel(logging.INFO)
    try:
        yield logger, handler, seen, now
    finally:
        root.removeHandler(handler)
        root.removeHandler(keep)
        handler.close()


def test_log_file_handler_drops_then_retries_and_recovers(
        file_logger: tuple[logging.Logger, DegradingFileHandler, list[str], list[float]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Writes fail: one warning, records dropped without a write attempt until the retry
    time; the disk has room again: the next record after the retry time is written, with
    a line saying how many the file missed."""
    logger, handler, seen, now = file_logger
    for i in range(5):
        logger.info("full %d", i)
    warnings = [m for m in seen if "is unwritable" in m]
    assert len(warnings) == 1 and "No space left on device" in warnings[0], seen
    assert handler.failing_since is not None and handler.stream is None
    path = Path(handler.baseFilename)
    path.unlink()  # room again: the path now names a regular file on a disk with space
    now[0] += 10
    logger.info("still within the retry time")
    assert not path.exists(), "a record was written before the retry time"
    now[0] += 25
    logger.info("after the retry time")
    text = path.read_text()
    assert "after the retry time" in text, text
    assert "is writable again; 7 records were not written to it" in text, text
    assert handler.failing_since is None
    assert "Logging error" not in capsys.readouterr().err
