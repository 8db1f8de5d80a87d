"""The output queue that keeps a session's events in order (the contract is in ``core``).

Events are not all known in the order they must be sent: a final's text comes back from a
decode after events about later audio were already produced, and a turn's transcript is
complete only once all its finals are. So the queue holds events and *slots*, places
reserved for an event that is not known yet. A final job reserves its slot when it is
issued; events produced later queue behind it; the queue drains only up to the first slot
that is not ready. A turn decision is a slot too, resolved when it reaches the front -- by
then every final of the turn has been filled.
"""

from __future__ import annotations

import abc
from collections import deque

from .config import samples_to_ms
from .events import Event, FrameProcessed


class Slot(abc.ABC):
    """A place in the queue for an event decided later."""

    __slots__ = ()

    @abc.abstractmethod
    def ready(self) -> bool:
        """Whether the event is known, so the queue may drain past this slot."""

    @abc.abstractmethod
    def take(self) -> Event | None:
        """The event, once ready (None: the slot turned out to have nothing to send)."""


class OutputQueue:
    """Events and slots of one session, in the order they are to be sent."""

    def __init__(self) -> None:
        self._items: deque[Event | Slot] = deque()
        self.queued_ms = 0
        """Latest offset queued so far (FrameProcessed aside): nothing queued from now on
        may be dated before it without breaking the order."""

    def emit(self, event: Event) -> None:
        """Queue an event known now."""
        self._items.append(event)
        if not isinstance(event, FrameProcessed):
            self.queued_ms = max(self.queued_ms, event.audio_offset_ms)

    def reserve(self, slot: Slot, offset: int) -> None:
        """Queue a slot for an event that will be dated at sample ``offset``."""
        self._items.append(slot)
        self.queued_ms = max(self.queued_ms, samples_to_ms(offset))

    def drain(self) -> list[Event]:
        """Events ready to send, in order; stops at the first slot not ready yet."""
        out: list[Event] = []
        while self._items:
            head = self._items[0]
            if isinstance(head, Slot):
                if not head.ready():
                    break
                event = head.take()
                if event is not None:
                    out.append(event)
            else:
                out.append(head)
            self._items.popleft()
        return out
