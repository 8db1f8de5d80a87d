"""Unit tests of the session core's plumbing: the output queue's slots and the job book.

The core's behaviour through them is covered by tests/unit/test_core.py; these pin the two
mechanisms it relies on, on their own.
"""

from __future__ import annotations

from alfred_daemon.engine.events import Event, FrameProcessed, SpeechStarted
from alfred_daemon.engine.jobs import JobBook, JobKind
from alfred_daemon.engine.ordering import OutputQueue, Slot


class _Pending(Slot):
    def __init__(self, event: Event | None) -> None:
        self.event = event
        self.filled = False

    def ready(self) -> bool:
        return self.filled

    def take(self) -> Event | None:
        return self.event


def _started(ms: int, utt: int = 0) -> SpeechStarted:
    return SpeechStarted(audio_offset_ms=ms, utterance_id=utt)


def test_queue_drains_up_to_the_first_slot_not_ready() -> None:
    out = OutputQueue()
    first, later = _started(10, 0), _started(30, 1)
    slot = _Pending(_started(20, 9))
    out.emit(first)
    out.reserve(slot, 20 * 16)
    out.emit(later)
    assert out.drain() == [first]
    assert out.drain() == []  # still waiting: nothing behind the slot goes out
    slot.filled = True
    assert out.drain() == [slot.event, later]
    assert out.drain() == []


def test_a_slot_with_nothing_to_send_is_skipped() -> None:
    out = OutputQueue()
    empty = _Pending(None)
    empty.filled = True
    after = _started(5)
    out.reserve(empty, 0)
    out.emit(after)
    assert out.drain() == [after]


def test_queued_ms_follows_events_and_slots_but_not_frame_events() -> None:
    out = OutputQueue()
    out.emit(_started(40))
    assert out.queued_ms == 40
    out.reserve(_Pending(None), 100 * 16)  # a slot is dated by its sample offset
    assert out.queued_ms == 100
    out.emit(FrameProcessed(audio_offset_ms=500, probability=0.1, is_speech=False))
    assert out.queued_ms == 100
    out.emit(_started(70))
    assert out.queued_ms == 100  # never goes back


def test_job_book_hands_out_jobs_by_priority_then_age() -> None:
    book = JobBook()
    partial = book.issue(JobKind.PARTIAL, 0, 0, 100)
    turn = book.issue(JobKind.TURN, 0, 0, 100)
    final = book.issue(JobKind.FINAL, 0, 0, 100)
    final2 = book.issue(JobKind.FINAL, 1, 0, 100)
    assert [j.job_id for j in (partial, turn, final, final2)] == [0, 1, 2, 3]
    assert book.take() == [final, final2, turn, partial]
    assert book.take() == []
    assert set(book.in_flight) == {0, 1, 2, 3}  # taken is not done: results still awaited
    assert book.issue(JobKind.PARTIAL, 0, 0, 1).job_id == 4
