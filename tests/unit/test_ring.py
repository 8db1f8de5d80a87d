"""Shared-memory audio ring: single-process semantics and real cross-process use."""

from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from multiprocessing import resource_tracker, shared_memory
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from alfred_daemon.runtime.ring import (
    SHM_DIR,
    SLOT_SAMPLES,
    RingClosedError,
    RingError,
    RingFullError,
    RingHandle,
    RingOverrunError,
    RingReader,
    RingWriter,
    segment_name,
    sweep_stale,
)

PREFIX = "alfredtest"


def window(k: int) -> npt.NDArray[np.int16]:
    return np.full(SLOT_SAMPLES, k % 30_000, np.int16) + np.arange(SLOT_SAMPLES,
                                                                     dtype=np.int16) % 7


@pytest.fixture
def writer() -> Iterator[RingWriter]:
    ring = RingWriter.create(segment_name(PREFIX, uuid.uuid4().hex[:8]), n_slots=8)
    yield ring
    ring.close()
    ring.unlink()


def test_windows_round_trip_in_order(writer: RingWriter) -> None:
    reader = RingReader.attach(writer.handle, reader=0)
    writer.register_reader(0)
    for k in range(5):
        assert writer.write(window(k)) == k
    start, got = reader.next_windows(limit=3)
    assert start == 0 and got.shape == (3, SLOT_SAMPLES)
    assert all(np.array_equal(got[i], window(i)) for i in range(3))
    start, got = reader.next_windows(limit=10)
    assert start == 3 and len(got) == 2
    start, got = reader.next_windows(limit=10)
    assert start == 5 and len(got) == 0
    reader.close()


def test_writer_refuses_to_overwrite_unconsumed_audio(writer: RingWriter) -> None:
    reader = RingReader.attach(writer.handle, reader=0)
    writer.register_reader(0)
    for k in range(8):
        writer.write(window(k))
    with pytest.raises(RingFullError):
        writer.write(window(8))
    reader.next_windows(limit=2)
    writer.write(window(8))
    writer.write(window(9))
    with pytest.raises(RingFullError):
        writer.write(window(10))
    writer.unregister_reader(0)
    writer.write(window(10))  # no reader holds it back any more
    reader.close()


def test_range_reads_and_overrun(writer: RingWriter) -> None:
    reader = RingReader.attach(writer.handle)  # range-only
    for k in range(20):
        writer.write(window(k))
    # windows 12..19 are resident; 0..11 were overwritten
    got = reader.read_range(12 * SLOT_SAMPLES + 100, 15 * SLOT_SAMPLES + 3)
    expected = np.concatenate([window(k) for k in range(12, 16)])[100 : 3 * SLOT_SAMPLES + 3]
    assert np.array_equal(got, expected)
    with pytest.raises(RingOverrunError):
        reader.read_range(0, SLOT_SAMPLES)
    with pytest.raises(ValueError, match="not written"):
        reader.read_range(19 * SLOT_SAMPLES, 21 * SLOT_SAMPLES)
    with pytest.raises(RingError):
        reader.next_windows(1)
    reader.close()


def test_closed_ring_drains_then_reports_closed() -> None:
    name = segment_name(PREFIX, uuid.uuid4().hex[:8])
    w = RingWriter.create(name, n_slots=4)
    r = RingReader.attach(w.handle, reader=1)
    w.register_reader(1)
    w.write(window(0))
    w.close()
    assert len(r.next_windows(4)[1]) == 1
    with pytest.raises(RingClosedError):
        r.next_windows(4)
    r.close()
    shared_memory.SharedMemory(name=name).unlink()


def test_attach_rejects_foreign_segment() -> None:
    name = segment_name(PREFIX, "foreign")
    shm = shared_memory.SharedMemory(name=name, create=True, size=1 << 16)
    try:
        with pytest.raises(RingError, match="not an alfred ring"):
            RingReader.attach(RingHandle(name, 8))
    finally:
        shm.close()
        shm.unlink()


def _child_reader(handle: RingHandle, total: int, conn: Connection) -> None:
    reader = RingReader.attach(handle, reader=0)
    sums: list[int] = []
    try:
        while len(sums) < total:
            _, got = reader.next_windows(limit=16)
            sums.extend(int(w.astype(np.int64).sum()) for w in got)
    except RingClosedError:
        pass
    reader.close()
    conn.send(sums)
    conn.close()


def test_cross_process_reader_sees_every_window_once() -> None:
    """A spawned worker consumes 3000 windows through an 8-slot ring while the writer
    publishes them (the writer waits on RingFullError): nothing lost, duplicated or torn. The
    worker's exit must not unlink the segment (Python 3.11 resource tracker)."""
    total = 3000
    name = segment_name(PREFIX, uuid.uuid4().hex[:8])
    w = RingWriter.create(name, n_slots=8)
    w.register_reader(0)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_reader, args=(w.handle, total, child))
    proc.start()
    k = 0
    spins = 0
    while k < total and spins < 50_000_000:
        try:
            w.write(window(k))
            k += 1
        except RingFullError:
            spins += 1
    sums = parent.recv()
    proc.join(30)
    assert proc.exitcode == 0
    assert sums == [int(window(i).astype(np.int64).sum()) for i in range(total)]
    assert (SHM_DIR / name).exists(), "worker exit unlinked the owner's segment"
    w.close()
    w.unlink()
    assert not (SHM_DIR / name).exists()


def test_sweep_removes_segments_of_dead_owners_only() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    stale_name = f"{PREFIX}-{dead_pid}-s1"
    stale = shared_memory.SharedMemory(name=stale_name, create=True, size=4096)
    resource_tracker.unregister(stale._name, "shared_memory")  # type: ignore[attr-defined]
    stale.close()
    live = RingWriter.create(segment_name(PREFIX, "live"), n_slots=2)
    try:
        removed = sweep_stale(PREFIX)
        assert stale_name in removed
        assert not (SHM_DIR / stale_name).exists()
        assert (SHM_DIR / live.name).exists()
        assert os.getpid() == int(live.name.split("-")[1])
    finally:
        live.close()
        live.unlink()


def test_no_test_segments_left() -> None:
    leftovers = [p.name for p in Path(SHM_DIR).iterdir() if p.name.startswith(PREFIX)]
    assert leftovers == []


def test_copy_overlapping_a_rewrite_of_the_oldest_slot_is_rejected(writer: RingWriter) -> None:
    """The one write in progress rewrites the oldest resident window's slot. Step (0) of the
    writer marks it invalid before the samples change, so a reader whose copy overlapped the
    rewrite (freeze the writer right after step 0) gets RingOverrunError, not torn audio."""
    reader = RingReader.attach(writer.handle)
    for k in range(8):
        writer.write(window(k))
    assert np.array_equal(reader.read_range(0, SLOT_SAMPLES), window(0))  # oldest, intact
    writer._seq[0] = -1  # the writer of window 8 has done step (0) and is copying samples
    with pytest.raises(RingOverrunError):
        reader.read_range(0, SLOT_SAMPLES)
    with pytest.raises(RingOverrunError):
        reader.read_range(100, 3 * SLOT_SAMPLES)
    assert np.array_equal(reader.read_range(SLOT_SAMPLES, 2 * SLOT_SAMPLES), window(1))
    reader.close()


def test_a_reader_process_starts_no_resource_tracker_and_leaves_the_segment() -> None:
    """Workers are plain ``python -m`` processes with no tracker of their own: attaching
    through ``SharedMemory`` (Python < 3.13) would start one in each (a process of ~7 MB PSS)
    and register the owner's segment with it, to be unlinked when the worker exits."""
    w = RingWriter.create(segment_name(PREFIX, uuid.uuid4().hex[:8]), n_slots=4)
    try:
        w.write(window(1))
        code = (
            "import sys, psutil\n"
            "from alfred_daemon.runtime.ring import RingHandle, RingReader\n"
            f"r = RingReader.attach(RingHandle({w.name!r}, 4))\n"
            "print(int(r.read_range(0, 512).astype('int64').sum()))\n"
            "r.close()\n"
            "print(len(psutil.Process().children(recursive=True)))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True).stdout.split()
        assert out == [str(int(window(1).astype(np.int64).sum())), "0"], out
        assert (SHM_DIR / w.name).exists(), "the reader's exit unlinked the owner's segment"
    finally:
        w.close()
        w.unlink()
