"""A WebRTC peer's audio between the RTP packet and the session: the jitter buffer, the
Opus decode and the downsampling to 16 kHz.

Imported only by a daemon that serves WebRTC (it needs aiortc and PyAV). Why the daemon
does not keep aiortc's own jitter buffer is in :mod:`.webrtc_ice`; why it decodes and
downsamples as it does is in :class:`ArrivalOrderBuffer` and :class:`Downsampler`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import av
import numpy as np
import numpy.typing as npt
from aiortc.codecs.opus import OpusDecoder
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add
from av import AudioFrame, AudioResampler

from ..engine.config import SAMPLE_RATE

log = logging.getLogger(__name__)

OPUS_FRAME = 960
"""Samples of a 20 ms Opus frame at Opus's 48 kHz."""
RESYNC_AFTER = 8
"""Packets in a row that look older than the last one handed on, after which the sender
is taken to have restarted its sequence numbers (a new encoder) and they are handed on."""


class ArrivalOrderBuffer(JitterBuffer):
    """Audio packets decoded in the order they arrive, none held back.

    Each RTP packet of an audio track is one Opus frame, so there is nothing to
    reassemble: the buffer only refuses a packet that is older than, or the same as, the
    last one handed on (decoded, it would put 20 ms of audio in the wrong place) and
    counts it in :attr:`late`. A lost packet costs its 20 ms of audio and no wait.

    Same interface as aiortc's ``JitterBuffer``, whose ``add`` the receiver calls once per
    packet, on the event loop. By default a packet goes back to the receiver, which
    decodes it in its own thread and hands the frame to the track's queue through the
    loop. Once :meth:`decode_to` has given it a sink, the buffer decodes the packet itself
    (~50 microseconds for 20 ms of Opus) and calls the sink with the frames, and the
    receiver gets nothing to pass on: no thread hop and GIL handover each way, no task
    per frame, for every frame of every peer.
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity=capacity)
        self.last: int | None = None
        """Sequence number of the last packet handed on."""
        self.late = 0
        """Packets refused: duplicates and packets older than one handed on."""
        self._late_run = 0
        self._sink: Callable[[AudioFrame], object] | None = None
        self._decoder: OpusDecoder | None = None
        self._decoded = 0
        self.undecodable = 0
        """Packets the decoder refused (logged once): skipped, as aiortc's thread does."""

    def decode_to(self, sink: Callable[[AudioFrame], object]) -> None:
        """Decode every packet from now on here and give ``sink`` its frames (Opus: the
        receiver must have negotiated Opus only, as :func:`.webrtc_ice.answer_offer`
        does)."""
        self._decoder = OpusDecoder()
        self._sink = sink

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
        if self._sink is None or self._decoder is None:
            return False, JitterFrame(data=data, timestamp=packet.timestamp)
        # Stamped in decode order, 20 ms apart: RTP timestamps start anywhere and wrap,
        # and nothing downstream reads a frame's time.
        self._decoded += 1
        try:
            frames = self._decoder.decode(JitterFrame(data, self._decoded * OPUS_FRAME))
        except av.FFmpegError as exc:
            # This runs inside aiortc's packet handler: an exception would end the peer's
            # whole transport. The decoder keeps its state, so the next packet decodes.
            self.undecodable += 1
            if self.undecodable == 1:
                log.warning("a WebRTC peer sent a packet Opus cannot decode (%s); skipping "
                            "it and any more such", exc)
            return False, None
        for decoded in frames:
            if isinstance(decoded, AudioFrame):
                self._sink(decoded)
        return False, None




class Downsampler:
    """A peer's decoded frames (Opus: 48 kHz stereo) as 16 kHz mono int16, the channels
    averaged, by libswresample (PyAV's resampler) before the session sees them.

    Why not the session's own resampler (soxr, high quality, as for a gRPC client at
    48 kHz): soxr's stream holds back ~21 ms of output and releases it every other 20 ms
    frame, which adds 20-40 ms to every event of a WebRTC session, while swresample holds
    back 1 ms and returns every frame's audio with that frame. Its shorter filter costs
    nothing measurable in accuracy (benchmarks/README.md, WebRTC).
    """

    def __init__(self) -> None:
        self._resampler: AudioResampler | None = None
        self._input: tuple[int, str, str] | None = None
        """(rate, layout, format) of the frames the resampler is set up for."""

    def __call__(self, frame: AudioFrame | None) -> npt.NDArray[np.int16]:
        """``frame``'s audio at 16 kHz; None: the last samples held back (end of input)."""
        if frame is None:
            return self._take(None)
        shape = (frame.sample_rate, frame.layout.name, frame.format.name)
        if shape == self._input:
            return self._take(frame)
        # The first frame, or the input changed (another codec after a renegotiation): a
        # resampler is set up for one input, so the old one's tail goes first.
        tail = self._take(None)
        self._resampler = AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        self._input = shape
        head = self._take(frame)
        return np.concatenate([tail, head]) if tail.size else head

    def _take(self, frame: AudioFrame | None) -> npt.NDArray[np.int16]:
        if self._resampler is None:
            return np.zeros(0, np.int16)
        out = [np.asarray(f.to_ndarray(), np.int16).reshape(-1)
               for f in self._resampler.resample(frame)]
        if not out:
            return np.zeros(0, np.int16)
        return out[0] if len(out) == 1 else np.concatenate(out)
