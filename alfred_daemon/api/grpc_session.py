"""The gRPC API's record of a session, which outlives its stream so that it can be resumed.

A stream that ends without the client half-closing *detaches* its session; a new stream
presenting the session's resume token (:func:`new_resume_token`) within the resume window
picks it up (:meth:`Attached.resume`), taking it over from a stream the daemon still
thinks attached.
"""

from __future__ import annotations

import asyncio
import bisect
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb

from ..engine.events import Event, FinalTranscription, SessionClosed, SpeechStarted
from .bridge import SessionBridge
from .convert import server_event
from .replay import ReplayLog

DAEMON_ID_HEADER = "alfred-daemon-id"
"""Metadata naming the daemon that holds a session (``runtime.daemon_id``): sent back on
every stream, and by a resuming client, so that a balancer routes the resume here."""

RECONNECT_TRAILER = "alfred-reconnect"
"""Trailer of a stream whose session the daemon's drain ended (value ``drained``): the
stream still ends OK after ``session_closed`` (reason ``shutdown``), as for older clients,
and a client that knows the trailer opens a new session -- through a balancer, on another
daemon -- for the audio after ``alfred-last-sequence``."""
LAST_SEQUENCE_TRAILER = "alfred-last-sequence"
"""With ``alfred-reconnect``: the client is to send the audio after this sequence to the
next session -- the last frame the drained session took, or, if the drain ran out of time
before the final of the utterance under way, the last frame before that utterance."""
RESEND_MARGIN_MS = 160.0
"""Audio re-sent before an utterance whose final a drain could not deliver: the next
daemon's VAD and decoder see its onset with some lead-in."""

TAKEOVER_TIMEOUT_S = 5.0
"""How long a resume waits for the stream still attached to its session to let go."""


def new_resume_token(daemon_id: str) -> str:
    """A fresh resume token: ``<daemon_id>.<random>`` when the daemon has an id (the random
    part is URL-safe base64, which has no '.'), the bare random part otherwise, as before."""
    token = secrets.token_urlsafe(24)
    return f"{daemon_id}.{token}" if daemon_id else token


@dataclass(slots=True, eq=False)
class Attached:
    """The API's record of a session: survives its stream for resume."""

    bridge: SessionBridge
    token: str
    owner: str
    """Name of the bearer token that opened it: only that token may resume it."""
    sample_rate: int
    config: pb.SessionConfig
    replay: ReplayLog = field(default_factory=ReplayLog)
    """Events already handed to a stream, numbered, until a resume confirms them."""
    last_sequence: int = 0
    frames_skipped: int = 0
    received_ms: float = 0.0
    receipts: deque[tuple[float, float, float | None]] = field(
        default_factory=lambda: deque(maxlen=6000))
    """(audio ms at the end of a frame, receive time, client capture time): 2 min of frames."""
    stream_active: bool = False
    takeover: asyncio.Event = field(default_factory=asyncio.Event)
    """Set by a resume while a stream is still attached: that stream lets go."""
    released: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the attached stream has let go of the session."""
    resume_floor: int | None = None
    """After a resume: frames up to this sequence are re-sends and are skipped."""
    detached_at: float | None = None
    closed_reason: str = ""
    """The reason of the session_closed written to a stream ("" before)."""
    speech_started_ms: float | None = None
    """Offset of the last speech_started written whose utterance has had no final yet."""
    speech_started_id: int = -1
    frame_ends: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=6000))
    """(audio ms at the end of a frame, its sequence) for numbered frames: 2 min of them."""
    delivered: bool = False
    """session_closed is known to have reached the client (a resume confirmed its
    event_sequence), or the session was refused or expired: nothing to resume. A stream
    that ended OK after session_closed is not proof -- grpc.aio cannot tell the handler
    whether the client read the last writes -- so that session stays resumable until
    :meth:`AlfredServicer.expire` forgets it after ``resume_window_s``."""

    @property
    def session_id(self) -> str:
        return self.bridge.session_id

    @property
    def closed(self) -> bool:
        """The runtime session is over (its outbox may still hold events)."""
        return self.bridge.closed

    def started(self, resumed: bool, resume_window_s: float) -> pb.ServerEvent:
        """The session_started message a stream begins with."""
        msg = pb.ServerEvent(server_receive_time=time.time())
        msg.session_started.session_id = self.session_id
        msg.session_started.resume_token = self.token
        msg.session_started.resume_window_s = resume_window_s
        msg.session_started.effective_config.CopyFrom(self.config)
        msg.session_started.resumed = resumed
        msg.session_started.last_sequence = self.last_sequence
        return msg

    def drained_after(self) -> int:
        """The sequence after which a drained session's client re-sends its audio: the
        last frame taken, unless an utterance is left without its final (the drain ran out
        of time): then the last frame before it, so the next daemon transcribes it."""
        if self.speech_started_ms is None:
            return self.last_sequence
        resend_ms = self.speech_started_ms - RESEND_MARGIN_MS
        i = bisect.bisect_right([end for end, _ in self.frame_ends], resend_ms)
        return self.frame_ends[i - 1][1] if i else 0

    def handover_trailers(self) -> tuple[tuple[str, str], ...]:
        """The trailers of a stream whose session the drain ended."""
        return ((RECONNECT_TRAILER, "drained"), (LAST_SEQUENCE_TRAILER, str(self.drained_after())))

    def wire(self, event: Event) -> pb.ServerEvent:
        """``event``'s wire form, stamped with when its audio arrived (and when the client
        captured it, if it said). Notes what a drain's handover needs: the close reason,
        and the start of an utterance still without its final."""
        if isinstance(event, SpeechStarted):
            self.speech_started_ms, self.speech_started_id = (event.audio_offset_ms,
                                                              event.utterance_id)
        elif (isinstance(event, FinalTranscription)
              and event.utterance_id == self.speech_started_id):
            self.speech_started_ms = None
        elif isinstance(event, SessionClosed):
            self.closed_reason = event.reason
        msg = server_event(event)
        received, capture = self.receipt(event.audio_offset_ms)
        msg.server_receive_time = received
        if capture is not None:
            msg.capture_time = capture
        return msg

    def receipt(self, offset_ms: int) -> tuple[float, float | None]:
        """When the frame holding ``offset_ms`` arrived (the first frame ending at or after
        it; the last frame if none does), and its capture time. Searched from the newest
        frame: an event's audio is at most seconds old, and this runs for every event."""
        if not self.receipts:
            return 0.0, None
        chosen = self.receipts[-1]
        for receipt in reversed(self.receipts):
            if receipt[0] < offset_ms:
                break
            chosen = receipt
        _, t, cap = chosen
        return t, cap

    async def resume(self, cfg: pb.SessionConfig,
                     context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Attach this session to the stream of ``cfg`` (a resume with its token): a stream
        still attached lets go first, frames re-sent up to the last one processed will be
        skipped, and the events the client confirms having (``last_event_sequence``) are
        forgotten -- all of them, session_closed included, leave nothing to resume."""
        if self.stream_active:
            # The usual cause is a client reconnecting before the daemon has noticed
            # its old connection is gone: the newer stream takes the session over.
            self.takeover.set()
            try:
                await asyncio.wait_for(self.released.wait(), TAKEOVER_TIMEOUT_S)
            except TimeoutError:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                    "this session is still attached to another stream")
        self.takeover.clear()
        self.released.clear()
        self.stream_active = True
        self.detached_at = None
        self.resume_floor = self.last_sequence
        if (cfg.HasField("last_event_sequence")
                and self.replay.confirm(cfg.last_event_sequence)):
            self.delivered = True  # the client has session_closed: the end is known
