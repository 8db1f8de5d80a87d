"""The daemon's audio jitter buffer: packets to the Opus decoder as they arrive.

Imported only by a daemon that serves WebRTC (it needs aiortc); why the daemon does not
keep aiortc's own buffer is in :mod:`.webrtc_ice`.
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

RESYNC_AFTER = 8
"""Packets in a row that look older than the last one handed on, after which the sender
is taken to have restarted its sequence numbers (a new encoder) and they are handed on."""


class ArrivalOrderBuffer(JitterBuffer):
    """Audio packets to the decoder in the order they arrive, none held back.

    Each RTP packet of an audio track is one Opus frame, so there is nothing to
    reassemble: the buffer only refuses a packet that is older than, or the same as, the
    last one handed on (decoded, it would put 20 ms of audio in the wrong place) and
    counts it in :attr:`late`. A lost packet costs its 20 ms of audio and no wait. Same
    interface as aiortc's ``JitterBuffer``, whose ``add`` the receiver calls once per
    packet.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity)
        self.last: int | None = None
        """Sequence number of the last packet handed on."""
        self.late = 0
        """Packets refused: duplicates and packets older than one handed on."""
        self._late_run = 0

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        data: bytes = getattr(packet, "_data", b"")  # the receiver's depayloaded payload
        if not data:
            # Nothing to decode; an empty packet would put the decoder in drain mode.
            return False, None
        seq = packet.sequence_number
        if self.last is not None:
            ahead = uint16_add(seq, -self.last)
            if (ahead == 0 or ahead >= 0x8000) and self._late_run + 1 < RESYNC_AFTER:
                self._late_run += 1
                self.late += 1
                return False, None
        self._late_run = 0
        self.last = seq
        return False, JitterFrame(data=data, timestamp=packet.timestamp)
