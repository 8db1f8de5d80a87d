"""A session's bounded outbound event queue: what a slow client may lose, and what not.

Finals, turn decisions and session notices are never dropped. Partials and per-frame
events are: when the queue holds ``limit`` events, the oldest sheddable event makes room
(a newer partial supersedes an older one anyway), and the count is reported to the client
in an ``events_shed`` notice ahead of the next event it does get. Only undroppable events
can push the queue past ``limit``; a client that stops reading altogether is cut off by the
server's write deadline, so memory stays bounded either way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ..engine.events import Event, FrameProcessed, PartialTranscription, PipelineHealth
from ..runtime.errors import SessionNotFoundError

SHEDDABLE = (PartialTranscription, FrameProcessed, PipelineHealth)


@dataclass(slots=True)
class ShedCounts:
    partials: int = 0
    frame_events: int = 0
    other: int = 0

    def __bool__(self) -> bool:
        return bool(self.partials or self.frame_events or self.other)


class Outbox:
    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._items: deque[Event] = deque()
        self._ready = asyncio.Event()
        self.shed = ShedCounts()
        """Shed since the last report to the client."""
        self.shed_total = ShedCounts()
        self.closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        if len(self._items) >= self.limit:
            self._shed_one()
        self._items.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    def _shed_one(self) -> None:
        for i, ev in enumerate(self._items):
            if isinstance(ev, SHEDDABLE):
                del self._items[i]
                for counts in (self.shed, self.shed_total):
                    if isinstance(ev, PartialTranscription):
                        counts.partials += 1
                    elif isinstance(ev, FrameProcessed):
                        counts.frame_events += 1
                    else:
                        counts.other += 1
                return
        # Nothing sheddable: keep everything (finals are never lost); the write deadline
        # bounds how long this can go on.

    def take_shed(self) -> ShedCounts | None:
        """The shed counts to report now (and reset), or None."""
        if not self.shed:
            return None
        out, self.shed = self.shed, ShedCounts()
        return out

    async def get(self) -> Event | None:
        """The next event; None once closed and empty."""
        while not self._items:
            if self.closed:
                return None
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


async def fill(outbox: Outbox, events: AsyncIterator[Event],
               frame_event_every: Callable[[], int]) -> None:
    """Move a session's events into ``outbox`` until the session ends, keeping every
    ``frame_event_every()``-th FrameProcessed (0: none; read per event, so a reconfigure
    takes effect at once); the outbox is closed at the end."""
    seen = 0
    try:
        async for event in events:
            if isinstance(event, FrameProcessed):
                seen += 1
                every = frame_event_every()
                if every <= 0 or (seen - 1) % every:
                    continue
            outbox.put(event)
    except SessionNotFoundError:
        pass  # closed before its events were subscribed to: nothing more will come
    finally:
        outbox.close()
