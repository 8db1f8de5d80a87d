"""The outbound queue sheds what a slow client can miss, never finals or turn events."""

from __future__ import annotations

import asyncio

from alfred_daemon.api.outbox import Outbox
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
