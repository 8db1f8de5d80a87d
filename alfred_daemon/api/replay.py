"""A session's replay log: the events already handed to a stream, kept for a resume.

Why: a write gRPC accepted is not an event the client read. Accepted writes wait in HTTP/2
and socket buffers, and a stream cut meanwhile (a client that stopped reading and hit the
write deadline, a dropped connection) takes them along -- the write that timed out too,
which may or may not have gone out. So every event gets the session's next
``event_sequence`` and is recorded here *before* it is written, and a client resuming with
``last_event_sequence`` = N is re-sent every kept event after N, in order, before the
outbox continues: at-least-once delivery, which the client's dedupe by sequence turns into
exactly-once.

Bound: the newest :data:`SHEDDABLE_KEPT` partials, frame events and health reports (kinds
the outbox sheds anyway; a newer partial supersedes an older one) and the newest
:data:`UNDROPPABLE_KEPT` other events (finals, turn and speech events, session notices).
What a cut stream can leave unread is at most what the client's flow-control window and
the socket buffers held when the write deadline fired; 4096 undroppable events is more than
an hour of continuous conversation at a few per utterance, far more than any window holds.
Events are kept serialized (~30-200 bytes each): a full log is well under 1 MB.
The client confirms what it has only by resuming (gRPC cannot tell the daemon whether a
stream's last writes were read), which frees the log up to that point.

What did not fit is reported on resume: the client sees the jump in ``event_sequence``, and
:meth:`ReplayLog.since` counts the missing events by kind for an ``events_shed`` notice. A
one-byte kind per sequence number (since the last confirmation, at most
:data:`KIND_HISTORY` of them) makes those counts exact.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Final

from alfred_client._gen.alfred.v1 import alfred_pb2 as pb

from .outbox import ShedCounts

SHEDDABLE_KEPT: Final = 512
"""Partials, frame events and health reports kept (16 s of per-window frame events)."""
UNDROPPABLE_KEPT: Final = 4096
"""Every other kind of event kept."""
KIND_HISTORY: Final = 1 << 18
"""Sequence numbers whose kind is remembered (256 KiB); older gaps count as ``other``."""

_PARTIAL, _FRAME, _HEALTH, _UNDROPPABLE = 1, 2, 3, 4
_KINDS: Final = {"partial_transcription": _PARTIAL, "frame_processed": _FRAME,
                 "pipeline_health": _HEALTH}
"""The wire names of outbox.SHEDDABLE; every other event is undroppable."""


class ReplayLog:
    """Assigns a session's event sequence numbers and keeps the latest events for replay."""

    def __init__(self, sheddable_kept: int = SHEDDABLE_KEPT,
                 undroppable_kept: int = UNDROPPABLE_KEPT,
                 kind_history: int = KIND_HISTORY) -> None:
        self.sheddable_kept = sheddable_kept
        self.undroppable_kept = undroppable_kept
        self.kind_history = kind_history
        self.last = 0
        """The highest event_sequence assigned."""
        self.last_offset_ms = 0
        """The audio_offset_ms of that event."""
        self.confirmed = 0
        """The highest event_sequence a client said it has (by resuming)."""
        self.closed_at: int | None = None
        """The event_sequence of session_closed, once written."""
        self._sheddable: deque[tuple[int, bytes]] = deque()
        self._undroppable: deque[tuple[int, bytes]] = deque()
        self._kinds = bytearray()
        """The kind of each sequence number after ``_kinds_base``."""
        self._kinds_base = 0

    def __len__(self) -> int:
        return len(self._sheddable) + len(self._undroppable)

    def record(self, msg: pb.ServerEvent) -> pb.ServerEvent:
        """Number ``msg`` (the session's next event) and keep it; returns ``msg``. Call it
        before the write: a write that fails or times out may still have been sent."""
        self.last += 1
        self.last_offset_ms = msg.audio_offset_ms
        msg.event_sequence = self.last
        name = msg.WhichOneof("event") or ""
        kind = _KINDS.get(name, _UNDROPPABLE)
        if name == "session_closed":
            self.closed_at = self.last
        entry = (self.last, msg.SerializeToString())
        if kind == _UNDROPPABLE:
            self._undroppable.append(entry)
            if len(self._undroppable) > self.undroppable_kept:
                self._undroppable.popleft()
        else:
            self._sheddable.append(entry)
            if len(self._sheddable) > self.sheddable_kept:
                self._sheddable.popleft()
        self._kinds.append(kind)
        if len(self._kinds) > self.kind_history:
            drop = len(self._kinds) - self.kind_history // 2
            del self._kinds[:drop]
            self._kinds_base += drop
        return msg

    def confirm(self, sequence: int) -> bool:
        """The client has every event up to ``sequence``: forget them. True once that
        includes session_closed (the session is delivered; nothing is left to resume)."""
        sequence = min(sequence, self.last)
        if sequence > self.confirmed:
            self.confirmed = sequence
            for kept in (self._sheddable, self._undroppable):
                while kept and kept[0][0] <= sequence:
                    kept.popleft()
            if sequence > self._kinds_base:
                del self._kinds[: sequence - self._kinds_base]
                self._kinds_base = sequence
        return self.closed_at is not None and self.confirmed >= self.closed_at

    def since(self, after: int) -> tuple[list[pb.ServerEvent], ShedCounts]:
        """The kept events after sequence ``after``, in order, and the counts of the ones
        after it that are no longer kept (the client cannot get those any more)."""
        after = max(0, after)
        kept = sorted(e for q in (self._sheddable, self._undroppable) for e in q
                      if e[0] > after)
        lost = ShedCounts()
        missing = self.last - after - len(kept)
        if missing > 0:
            start = max(after, self._kinds_base)
            known = self._kinds[start - self._kinds_base :]
            kept_kinds = [self._kinds[s - self._kinds_base - 1] for s, _ in kept if s > start]
            lost.partials = known.count(_PARTIAL) - kept_kinds.count(_PARTIAL)
            lost.frame_events = known.count(_FRAME) - kept_kinds.count(_FRAME)
            lost.other = missing - lost.partials - lost.frame_events
        return [pb.ServerEvent.FromString(data) for _, data in kept], lost


def shed_notice(shed: ShedCounts, offset_ms: int) -> pb.ServerEvent:
    """An ``events_shed`` event: what the client will not get (shed from the outbox, or on
    resume no longer kept here)."""
    note = pb.ServerEvent(audio_offset_ms=offset_ms, server_receive_time=time.time())
    note.events_shed.partials = shed.partials
    note.events_shed.frame_events = shed.frame_events
    note.events_shed.other = shed.other
    return note
