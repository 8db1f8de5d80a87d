"""The outbound queue sheds what a slow client can miss, never finals or turn events; the
replay log keeps what a broken stream may not have delivered, for a resume."""

from __future__ import annotations

import asyncio

from alfred_client._gen.alfred.v1 import alfred_pb2 as pb

from alfred_daemon.api.outbox import Outbox, ShedCounts
from alfred_daemon.api.replay import ReplayLog, shed_notice
from alfred_daemon.engine.events import (
    FinalTranscription,
    FrameProcessed,
    PartialTranscription,
    SessionClosed,
    TurnEnded,
    TurnEndReason,
)


def partial(i: int) -> PartialTranscription:
    return PartialTranscription(audio_offset_ms=i, utterance_id=0, text=f"p{i}", stable_text="")


def test_sheds_oldest_partials_and_frame_events_first() -> None:
    box = Outbox(limit=3)
    box.put(partial(1))
    box.put(FrameProcessed(audio_offset_ms=2, probability=0.1, is_speech=False))
    box.put(FinalTranscription(audio_offset_ms=3, utterance_id=0, text="final", start_ms=0))
    box.put(partial(4))  # full: the oldest sheddable (partial 1) goes
    box.put(partial(5))  # then the frame event
    shed = box.take_shed()
    assert shed is not None and (shed.partials, shed.frame_events) == (1, 1)
    assert box.take_shed() is None  # reported once

    async def drain() -> list[int]:
        box.close()
        out = []
        while (ev := await box.get()) is not None:
            out.append(ev.audio_offset_ms)
        return out

    assert asyncio.run(drain()) == [3, 4, 5]


def test_never_drops_finals_or_turns_even_past_the_limit() -> None:
    box = Outbox(limit=2)
    for i in range(5):
        box.put(FinalTranscription(audio_offset_ms=i, utterance_id=i, text="t", start_ms=0))
    box.put(TurnEnded(audio_offset_ms=9, turn_id=0, probability=0.9,
                      reason=TurnEndReason.MODEL, transcript="t"))
    box.put(SessionClosed(audio_offset_ms=9, reason="finished"))
    assert len(box) == 7
    assert box.take_shed() is None
    assert box.shed_total.partials == 0


def test_fill_samples_frame_events_and_closes() -> None:
    from collections.abc import AsyncIterator

    from alfred_daemon.api.outbox import fill

    async def events() -> AsyncIterator[FrameProcessed | SessionClosed]:
        for i in range(1, 7):
            yield FrameProcessed(audio_offset_ms=32 * i, probability=0.5, is_speech=False)
        yield SessionClosed(audio_offset_ms=224, reason="finished")

    async def run(every: int) -> list[int]:
        box = Outbox()
        await fill(box, events(), lambda: every)
        assert box.closed
        out = []
        while (ev := await box.get()) is not None:
            out.append(ev.audio_offset_ms)
        return out

    assert asyncio.run(run(0)) == [224]  # no frame events, the rest untouched
    assert asyncio.run(run(1)) == [32, 64, 96, 128, 160, 192, 224]
    assert asyncio.run(run(3)) == [32, 128, 224]  # every third window


# ----------------------------------------------------------------------------- replay log


def _wire(kind: str, offset: int = 0) -> pb.ServerEvent:
    msg = pb.ServerEvent(audio_offset_ms=offset)
    if kind == "final":
        msg.final_transcription.text = f"final {offset}"
    elif kind == "partial":
        msg.partial_transcription.text = f"partial {offset}"
    elif kind == "frame":
        msg.frame_processed.probability = 0.5
    elif kind == "closed":
        msg.session_closed.reason = "finished"
    return msg


def _seqs(msgs: list[pb.ServerEvent]) -> list[int]:
    return [m.event_sequence for m in msgs]


def test_replay_numbers_events_and_resends_what_follows_the_clients_last() -> None:
    log = ReplayLog()
    sent = [log.record(_wire(k, i)) for i, k in enumerate(
        ["partial", "final", "frame", "final", "closed"], start=1)]
    assert _seqs(sent) == [1, 2, 3, 4, 5]  # numbered in place, 1 up
    missed, lost = log.since(2)
    assert _seqs(missed) == [3, 4, 5] and not lost
    assert missed[-1].session_closed.reason == "finished"
    assert [m.audio_offset_ms for m in missed] == [3, 4, 5]  # the recorded events
    assert _seqs(log.since(0)[0]) == [1, 2, 3, 4, 5]
    assert log.since(5)[0] == []
    # A later resume confirms: what it has is freed, and session_closed counts as delivered.
    assert log.confirm(3) is False
    assert len(log) == 2 and _seqs(log.since(0)[0]) == [4, 5]
    assert log.confirm(99) is True  # beyond the last: clamped, everything confirmed
    assert len(log) == 0 and log.confirmed == 5


def test_replay_bound_drops_sheddable_first_and_counts_the_gap() -> None:
    log = ReplayLog(sheddable_kept=2, undroppable_kept=3)
    kinds = ["partial", "final", "frame", "partial", "final", "frame", "final", "final"]
    for i, k in enumerate(kinds, start=1):
        log.record(_wire(k, i))
    # Kept: the last 2 sheddable (4 partial, 6 frame) and the last 3 undroppable (5, 7, 8).
    missed, lost = log.since(0)
    assert _seqs(missed) == [4, 5, 6, 7, 8]
    # Gone: 1 (partial), 2 (final), 3 (frame): by kind, the final as "other".
    assert (lost.partials, lost.frame_events, lost.other) == (1, 1, 1)
    missed, lost = log.since(2)
    assert _seqs(missed) == [4, 5, 6, 7, 8] and (lost.partials, lost.frame_events,
                                                 lost.other) == (0, 1, 0)
    assert not log.since(3)[1]  # everything after 3 is kept


def test_replay_kind_history_is_bounded_and_old_gaps_count_as_other() -> None:
    log = ReplayLog(sheddable_kept=1, undroppable_kept=1, kind_history=8)
    for i in range(1, 21):
        log.record(_wire("partial", i))
    assert len(log._kinds) <= 8
    missed, lost = log.since(0)
    assert _seqs(missed) == [20]
    assert lost.partials + lost.frame_events + lost.other == 19
    assert lost.partials >= 1 and lost.frame_events == 0  # the remembered ones by kind


def test_shed_notice_carries_the_counts() -> None:
    note = shed_notice(ShedCounts(partials=3, frame_events=2, other=1), 640)
    assert note.WhichOneof("event") == "events_shed"
    assert (note.events_shed.partials, note.events_shed.frame_events,
            note.events_shed.other) == (3, 2, 1)
    assert note.audio_offset_ms == 640 and note.event_sequence == 0
