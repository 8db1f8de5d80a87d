"""Per-session audio rings in POSIX shared memory.

One writer (the supervisor) publishes 16 kHz int16 audio in fixed 512-sample slots -- one
Silero VAD window each -- and any number of readers (workers) copy windows or whole sample
ranges out of it. Audio never travels through sockets: a job names a sample range and the
worker reads it here.

Layout of a segment (little-endian int64 header, then a slot table, then the samples)::

    header  [MAGIC, VERSION, n_slots, slot_samples, write_seq, closed, owner_pid, 0,
             read_seq[0] .. read_seq[MAX_READERS-1]]
    slots   seq[n_slots]                 window sequence number stored in each slot
    data    int16[n_slots, slot_samples]

``write_seq`` counts windows published; window ``k`` lives in slot ``k % n_slots`` and
covers samples ``[k * 512, (k + 1) * 512)`` of the session. ``read_seq[r]`` is how many
windows reader ``r`` has consumed; the writer refuses to overwrite a window a registered
reader has not consumed (:class:`RingFullError`), which is what turns a slow worker into visible
backpressure instead of silently lost audio.

Memory ordering -- the part that must be right
----------------------------------------------
The writer, for window ``k``: (0) stores ``seq[slot] = -1`` ("being rewritten"), fence,
(1) copies the samples into slot ``k % n``, (2) stores ``seq[slot] = k``, (3) fence,
(4) stores ``write_seq = k + 1``. A reader: (a) loads ``write_seq``, (b) fence, (c) copies
the slot, (d) fence, (e) re-loads ``seq[slot]`` and accepts the copy only if it still
equals the window it wanted.

* (3) orders the data and slot-seq stores before the publication store, so a reader that
  sees ``write_seq > k`` (a) also sees window ``k``'s samples (c). On x86-64 (TSO) stores
  are never reordered with each other, so the fence only stops the *compiler*; on
  weakly-ordered CPUs (aarch64) it is a real barrier.
* (d)+(e) is a seqlock check: the writer may lap a slow reader. Only one write is ever in
  progress, and it rewrites the slot of window ``write_seq - n_slots``, the oldest resident
  one. (0) marks that slot invalid *before* its samples change, so a copy that overlapped
  the rewrite sees ``-1`` or the new seq at (e) and is discarded
  (:class:`RingOverrunError`) instead of returning half old, half new audio. Windows newer
  than the oldest are rewritten only after ``write_seq`` has moved past them, which the
  post-copy check ``write_seq - n_slots > first`` catches.
* Every header field is an aligned 8-byte word: loads and stores of it are single-copy
  atomic on the 64-bit CPUs we support, so no reader sees a torn counter.

Python offers no fence primitive. Acquiring and releasing a lock is a full barrier in every
pthreads implementation (and a compiler barrier), so :func:`memory_fence` does exactly that
-- the same trick vLLM's shm_broadcast uses. It costs ~100 ns.

Lifetime
--------
Only the owner's resource tracker knows a segment. Readers map it themselves
(:class:`_Mapped`) rather than through ``SharedMemory``: before Python 3.13 attaching
registers the segment with the attaching process's tracker, which would unlink it when that
process exits (cpython#82300: a worker dying would delete live audio), and the first
registration starts a tracker process in every worker (7 MB of PSS each). Names carry an
instance prefix and the owner's pid, so a new daemon can sweep the segments of a dead one
(:func:`sweep_stale`).
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import threading
from dataclasses import dataclass
from multiprocessing import shared_memory
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from .errors import SharedMemoryFullError

MAGIC = 0x31474E4952464C41  # "ALFRING1" little-endian
VERSION = 1
SLOT_SAMPLES = 512
MAX_READERS = 8
_HDR_WORDS = 8 + MAX_READERS
_H_MAGIC, _H_VERSION, _H_NSLOTS, _H_SLOT, _H_WRITE, _H_CLOSED, _H_OWNER = range(7)
_H_READ0 = 8
SHM_DIR = Path("/dev/shm")

_fence_lock = threading.Lock()


def memory_fence() -> None:
    """Full memory barrier (see the module docstring)."""
    with _fence_lock:
        pass


class RingError(Exception):
    """Base class for ring errors."""


class RingFullError(RingError):
    """The writer would overwrite a window a registered reader has not consumed."""


class RingOverrunError(RingError):
    """The requested audio was overwritten (too old) before or while it was read."""


class RingClosedError(RingError):
    """The writer closed the ring (the session ended)."""


class RingSpaceError(RingError, SharedMemoryFullError):
    """/dev/shm has no room for a new ring's pages; the segment was removed again.

    Also a :class:`SharedMemoryFullError`: the supervisor's ``open_session`` lets it
    through as an admission refusal with this sentence.
    """


@dataclass(frozen=True, slots=True)
class RingHandle:
    """What a worker needs to attach: small and picklable, sent over the control plane."""

    name: str
    n_slots: int
    slot_samples: int = SLOT_SAMPLES


def segment_name(prefix: str, session: str) -> str:
    """``<prefix>-<owner pid>-<session>``: the pid lets a later instance sweep leftovers."""
    return f"{prefix}-{os.getpid()}-{session}"


def _layout(n_slots: int, slot_samples: int) -> tuple[int, int, int]:
    header = _HDR_WORDS * 8
    table = n_slots * 8
    data_off = (header + table + 63) // 64 * 64
    return header, data_off, data_off + n_slots * slot_samples * 2


def segment_bytes(n_slots: int, slot_samples: int = SLOT_SAMPLES) -> int:
    """Size of a ring's segment: what each open session takes of /dev/shm."""
    return _layout(n_slots, slot_samples)[2]


class _Segment(Protocol):
    """What the ring needs of a mapped segment: the owner's ``SharedMemory`` or a reader's
    :class:`_Mapped`."""

    @property
    def name(self) -> str: ...
    @property
    def buf(self) -> memoryview | None: ...
    def close(self) -> None: ...


class _Mapped:
    """A reader's mapping of an existing segment, with no resource tracker involved."""

    def __init__(self, name: str, shm_dir: Path = SHM_DIR) -> None:
        fd = os.open(shm_dir / name, os.O_RDWR)
        try:
            self._mmap = mmap.mmap(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)  # the mapping keeps the segment; the descriptor is not needed
        self.name = name
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        if self.buf is not None:
            self.buf.release()
            self.buf = None
            self._mmap.close()


S = TypeVar("S", bound=_Segment)


class _Ring(Generic[S]):
    """Views over a mapped segment; shared by the writer and reader classes."""

    def __init__(self, shm: S, n_slots: int, slot_samples: int):
        self._shm = shm
        self.name = shm.name
        self.n_slots = n_slots
        self.slot_samples = slot_samples
        header, data_off, _ = _layout(n_slots, slot_samples)
        buf = shm.buf
        assert buf is not None
        self._hdr: npt.NDArray[np.int64] = np.ndarray((_HDR_WORDS,), np.int64, buf, 0)
        self._seq: npt.NDArray[np.int64] = np.ndarray((n_slots,), np.int64, buf, header)
        self._data: npt.NDArray[np.int16] = np.ndarray(
            (n_slots, slot_samples), np.int16, buf, data_off)

    @property
    def handle(self) -> RingHandle:
        return RingHandle(self.name, self.n_slots, self.slot_samples)

    @property
    def write_seq(self) -> int:
        return int(self._hdr[_H_WRITE])

    @property
    def closed(self) -> bool:
        return bool(self._hdr[_H_CLOSED])

    def read_seq(self, reader: int) -> int:
        return int(self._hdr[_H_READ0 + reader])

    def _release_views(self) -> None:
        # A numpy view does not keep the mapping alive: closing the segment under a live
        # view segfaults or raises BufferError. Drop every view first.
        del self._hdr, self._seq, self._data

    def read_range(self, start: int, end: int) -> npt.NDArray[np.int16]:
        """Copy samples [start, end) (absolute session samples); raises RingOverrunError if any
        of them is no longer resident, ValueError if not yet written."""
        if end <= start:
            return np.zeros(0, np.int16)
        s = self.slot_samples
        first, last = start // s, (end - 1) // s
        written = self.write_seq
        memory_fence()
        if last >= written:
            raise ValueError(f"samples up to {end} not written yet (have {written * s})")
        if first < written - self.n_slots:
            raise RingOverrunError(f"samples from {start} were overwritten")
        out = np.empty((last - first + 1) * s, np.int16)
        for k in range(first, last + 1):
            out[(k - first) * s : (k - first + 1) * s] = self._data[k % self.n_slots]
        memory_fence()
        if self.write_seq - self.n_slots > first or any(
            int(self._seq[k % self.n_slots]) != k for k in (first, last)
        ):
            raise RingOverrunError(f"samples from {start} were overwritten while being read")
        return out[start - first * s : end - first * s]


class RingWriter(_Ring[shared_memory.SharedMemory]):
    """The owner's side: creates, writes, closes and unlinks the segment."""

    @classmethod
    def create(cls, name: str, n_slots: int, slot_samples: int = SLOT_SAMPLES) -> RingWriter:
        if n_slots < 2:
            raise ValueError("a ring needs at least 2 slots")
        size = segment_bytes(n_slots, slot_samples)
        shm = shared_memory.SharedMemory(name=name, create=True, size=size)
        try:
            _reserve(shm, size)
        except BaseException:
            shm.close()
            shm.unlink()
            raise
        ring = cls(shm, n_slots, slot_samples)
        ring._hdr[:] = 0
        ring._hdr[_H_READ0:] = -1  # no readers registered
        ring._seq[:] = -1
        ring._hdr[_H_NSLOTS] = n_slots
        ring._hdr[_H_SLOT] = slot_samples
        ring._hdr[_H_VERSION] = VERSION
        ring._hdr[_H_OWNER] = os.getpid()
        memory_fence()
        ring._hdr[_H_MAGIC] = MAGIC  # last: a reader that sees MAGIC sees the rest
        return ring

    def register_reader(self, reader: int) -> None:
        """Make ``reader`` hold back the writer from its current position on."""
        self._hdr[_H_READ0 + reader] = self.write_seq

    def unregister_reader(self, reader: int) -> None:
        self._hdr[_H_READ0 + reader] = -1

    def set_reader(self, reader: int, seq: int) -> None:
        """Move a reader's index on the owner's authority: rewind it after a worker died
        mid-read (its copy never reached us), skip windows on purpose (load shedding), or
        advance a retention index the owner itself maintains."""
        if not 0 <= seq <= self.write_seq:
            raise ValueError(f"reader index {seq} outside 0 .. {self.write_seq}")
        self._hdr[_H_READ0 + reader] = seq

    def free_slots(self) -> int:
        readers = [int(x) for x in self._hdr[_H_READ0:] if x >= 0]
        oldest = min(readers, default=self.write_seq)
        return self.n_slots - (self.write_seq - oldest)

    def write(self, window: npt.NDArray[np.int16]) -> int:
        """Publish one window; returns its sequence number. Raises RingFullError rather than
        overwrite audio a registered reader has not consumed."""
        if window.shape != (self.slot_samples,):
            raise ValueError(f"window must have {self.slot_samples} samples")
        if self.free_slots() <= 0:
            raise RingFullError(f"ring {self.name} is full")
        k = self.write_seq
        slot = k % self.n_slots
        self._seq[slot] = -1               # (0) readers of the old window: being rewritten
        memory_fence()
        self._data[slot] = window          # (1) samples
        self._seq[slot] = k                # (2) which window the slot now holds
        memory_fence()                     # (3) both visible before ...
        self._hdr[_H_WRITE] = k + 1        # (4) ... publication
        return k

    def close(self) -> None:
        """Mark closed (readers see RingClosedError once drained) and unmap; does not unlink."""
        if hasattr(self, "_hdr"):
            self._hdr[_H_CLOSED] = 1
            self._release_views()
        self._shm.close()

    def unlink(self) -> None:
        self._shm.unlink()


class RingReader(_Ring[_Mapped]):
    """A worker's side: attaches without taking ownership, consumes windows in order."""

    def __init__(self, shm: _Mapped, n_slots: int, slot_samples: int,
                 reader: int | None) -> None:
        super().__init__(shm, n_slots, slot_samples)
        self.reader = reader

    @classmethod
    def attach(cls, handle: RingHandle, reader: int | None = None) -> RingReader:
        """Attach to an existing segment. ``reader`` is this process's read-index slot (for
        in-order consumption); None for range reads only."""
        ring = cls(_Mapped(handle.name), handle.n_slots, handle.slot_samples, reader)
        if int(ring._hdr[_H_MAGIC]) != MAGIC or int(ring._hdr[_H_NSLOTS]) != handle.n_slots:
            ring.close()
            raise RingError(f"{handle.name} is not an alfred ring of {handle.n_slots} slots")
        return ring

    def next_windows(self, limit: int) -> tuple[int, npt.NDArray[np.int16]]:
        """Up to ``limit`` unconsumed windows (copied) and the seq of the first. Consuming
        them advances this reader's index, freeing their slots for the writer."""
        if self.reader is None:
            raise RingError("range-only reader cannot consume windows")
        idx = _H_READ0 + self.reader
        start = int(self._hdr[idx])
        available = self.write_seq - start
        if available <= 0:
            if self.closed:
                raise RingClosedError(self.name)
            return start, np.zeros((0, self.slot_samples), np.int16)
        n = min(limit, available)
        samples = self.read_range(start * self.slot_samples, (start + n) * self.slot_samples)
        memory_fence()  # copy complete before the writer may reuse the slots
        self._hdr[idx] = start + n
        return start, samples.reshape(n, self.slot_samples)

    def close(self) -> None:
        if hasattr(self, "_hdr"):
            self._release_views()
        self._shm.close()


def _reserve(shm: shared_memory.SharedMemory, size: int) -> None:
    """Back every page of a new segment now, or raise :class:`RingSpaceError`.

    ftruncate on tmpfs succeeds whatever the free space, and the first store to a page the
    filesystem cannot back then kills the storing process with SIGBUS -- the supervisor,
    with every session. posix_fallocate asks tmpfs for the pages up front and fails with
    ENOSPC (ENOMEM when the memory cgroup is at its limit) instead.
    """
    try:
        os.posix_fallocate(shm._fd, 0, size)  # type: ignore[attr-defined]
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.ENOMEM):
            raise
        free = ""
        with contextlib.suppress(OSError):
            st = os.statvfs(SHM_DIR)
            free = f", {st.f_bavail * st.f_frsize / 1e6:.1f} MB free"
        raise RingSpaceError(
            f"shared memory is full: /dev/shm has no room for this session's "
            f"{size / 1e6:.1f} MB audio ring ({exc.strerror}{free}); close sessions or "
            "give /dev/shm more space") from None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Unlink segments named ``<prefix>-<pid>-...`` whose owner process is gone.

    A SIGKILLed daemon (or its resource tracker) leaves segments in /dev/shm until reboot;
    the next start calls this. Segments of live owners -- another running instance -- are
    left alone.
    """
    removed: list[str] = []
    if not shm_dir.is_dir():
        return removed
    for entry in shm_dir.iterdir():
        name = entry.name
        if not name.startswith(prefix + "-"):
            continue
        pid_text = name[len(prefix) + 1 :].split("-", 1)[0]
        if not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        try:
            entry.unlink()
            removed.append(name)
        except FileNotFoundError:
            pass
    return removed
