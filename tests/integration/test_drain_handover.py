"""Drain handover without models or processes (issue 17, acceptance 3; the real thing with
HAProxy and three daemons is tests/test_scale_out.py).

* A draining session takes audio until an utterance boundary (or until its audio stops),
  then no more, for good: :meth:`LiveSession.input_closed`.
* The daemon's servicer ends a drained session's stream OK, after ``session_closed``
  (reason ``shutdown``), with the ``alfred-reconnect: drained`` trailer and the last audio
  sequence it took; the Python client then opens a new session (no resume token, no
  routing header), sends exactly the frames after that sequence, and yields one stream:
  no ``session_closed`` in the middle, offsets continued by ``stream_offset_ms``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import grpc
import numpy as np
import pytest
from alfred_client import AsyncClient, Event

from alfred_daemon.api import grpc_server
from alfred_daemon.api.grpc_server import AlfredServicer
from alfred_daemon.engine.config import EngineConfig, TurnConfig
from alfred_daemon.engine.events import Event as EngineEvent
from alfred_daemon.engine.events import FinalTranscription, SessionClosed, SpeechStarted
from alfred_daemon.engine.jobs import JobKind
from alfred_daemon.engine.session import SessionCore
from alfred_daemon.runtime.errors import SessionNotFoundError
from alfred_daemon.runtime.live_session import DRAIN_IDLE_S, LiveSession
from alfred_daemon.runtime.ring import RingWriter

from ..grpc_helpers import FRAME_BYTES, RATE, ScriptedSupervisor, in_process_server

# ----------------------------------------------------------------------------- the boundary


def live(core: SessionCore) -> LiveSession:
    """A LiveSession whose ring is only its write count (all that the boundary reads)."""
    ring = cast(RingWriter, SimpleNamespace(write_seq=0))
    return LiveSession(key=1, session_id="s", core=core, base_config=core.config, ring=ring,
                       sample_rate=RATE, resampler=None, events=asyncio.Queue())


def windows(s: LiveSession, probability: float, n: int) -> None:
    """``n`` windows written and analysed with ``probability``; the client is active."""
    for _ in range(n):
        cast(Any, s.ring).write_seq += 1
        s.vad_next += 1
        s.core.on_vad(probability)
    s.last_activity = 1000.0


def test_a_draining_session_takes_audio_until_an_utterance_boundary_then_none() -> None:
    core = SessionCore(EngineConfig(turn=TurnConfig(enabled=False)), turn_model=False)
    s = live(core)
    now = 1000.0
    windows(s, 0.9, 20)  # speech under way
    assert core.speaking
    assert not s.input_closed(now)  # not draining: audio is taken
    s.draining = True
    assert not s.input_closed(now)  # mid-utterance: the utterance goes on here
    windows(s, 0.0, 6)  # a pause, not yet long enough to end the utterance
    assert core.speaking and not s.input_closed(now)
    cast(Any, s.ring).write_seq += 1  # the window that ends it, written, not yet analysed
    assert not s.input_closed(now)
    s.vad_next += 1
    core.on_vad(0.0)
    assert not core.speaking
    assert s.input_closed(now)  # a boundary (its final is out: the supervisor waits)
    windows(s, 0.9, 20)  # once closed, closed: the next utterance is the next daemon's
    assert s.input_closed(now)


def test_a_draining_session_that_gets_no_audio_is_closed_where_it_stopped() -> None:
    s = live(SessionCore(EngineConfig(turn=TurnConfig(enabled=False)), turn_model=False))
    windows(s, 0.9, 20)  # mid-utterance, and then nothing more arrives
    s.draining = True
    assert not s.input_closed(s.last_activity + DRAIN_IDLE_S / 2)
    assert s.input_closed(s.last_activity + DRAIN_IDLE_S + 0.1)


def test_the_turn_decision_is_asked_for_first() -> None:
    """Smart Turn asked 400 ms into the pause: the session waits for that, past the
    utterance's end (200 ms)."""
    core = SessionCore(EngineConfig(turn=TurnConfig(silence_ms=400)))
    s = live(core)
    windows(s, 0.9, 20)
    s.draining = True
    windows(s, 0.0, 7)  # the utterance ended, Smart Turn not yet asked
    assert not core.speaking and core.decision_pending
    assert not s.input_closed(s.last_activity)
    windows(s, 0.0, 6)
    assert JobKind.TURN in {job.kind for job in core.in_flight}, core.in_flight
    assert s.input_closed(s.last_activity)


# ----------------------------------------------------------------------------- the handover

TAKEN = 3
"""Frames the first (draining) session takes before it ends."""
FRAMES = 7


def frame(k: int) -> bytes:
    """Frame ``k`` (1-based): 20 ms whose samples all equal k, so a daemon can tell which."""
    return np.full(FRAME_BYTES // 2, k, "<i2").tobytes()


class DrainingSupervisor(ScriptedSupervisor):
    """The first session takes ``TAKEN`` frames, then ends as a drain ends it (a final,
    session_closed ``shutdown``) and takes no more; later sessions take every frame and
    finish at the client's half-close."""

    def __init__(self, taken: int = TAKEN, owed_from_ms: int | None = None) -> None:
        super().__init__([])
        self.taken = taken
        self.owed_from_ms = owed_from_ms
        """An utterance starting here gets no final before the close (out of time)."""
        self.order: list[str] = []
        self.frames: dict[str, list[int]] = {}
        self.finished: dict[str, asyncio.Event] = {}

    def open_session(self, *args: Any, **kwargs: Any) -> str:
        sid = super().open_session(*args, **kwargs)
        self.order.append(sid)
        self.frames[sid] = []
        self.finished[sid] = asyncio.Event()
        return sid

    def _draining(self, sid: str) -> bool:
        return sid == self.order[0]

    async def feed(self, session_id: str, frame: bytes, *,
                   sample_rate: int | None = None) -> int:
        got = self.frames[session_id]
        if self._draining(session_id) and len(got) >= self.taken:
            raise SessionNotFoundError(f"session {session_id} is closing")
        got.append(int(np.frombuffer(frame, "<i2")[0]))
        return 0

    async def finish_session(self, session_id: str, timeout: float | None = None) -> None:
        self.finished[session_id].set()

    async def events(self, session_id: str) -> AsyncIterator[EngineEvent]:
        draining = self._draining(session_id)
        for _ in range(1000):  # 10 s at most
            if (len(self.frames[session_id]) >= self.taken if draining
                    else self.finished[session_id].is_set()):
                break
            await asyncio.sleep(0.01)
        end = 20 * len(self.frames[session_id])
        yield FinalTranscription(audio_offset_ms=end, utterance_id=0, start_ms=0,
                                 text="first" if draining else "second")
        if draining and self.owed_from_ms is not None:
            yield SpeechStarted(audio_offset_ms=self.owed_from_ms, utterance_id=1)
        yield SessionClosed(audio_offset_ms=end, reason="shutdown" if draining else "finished")


class GoneOnce(AlfredServicer):
    """The second stream (the handover's first attempt) ends CANCELLED at once, as one that
    HAProxy gave to the draining daemon after it exited."""

    streams = 0

    async def StreamSession(  # type: ignore[override]  # noqa: N802
            self, request_iterator: AsyncIterator[Any], context: Any) -> None:
        self.streams += 1
        if self.streams == 2:
            await context.abort(grpc.StatusCode.CANCELLED, "the daemon went away")
        await super().StreamSession(request_iterator, context)


async def run_handover(max_resumes: int, servicer_type: type[AlfredServicer] = AlfredServicer,
                       ) -> tuple[DrainingSupervisor, list[Event]]:
    sup = DrainingSupervisor()
    async with in_process_server(sup, servicer_type=servicer_type) as (_, target), \
            AsyncClient(target, max_resumes=max_resumes) as client:
        got = [ev async for ev in client.stream([frame(k) for k in range(1, FRAMES + 1)],
                                                RATE)]
    return sup, got


@pytest.mark.timeout(60)
def test_the_client_continues_a_drained_session_on_a_new_one_with_the_frames_it_did_not_take(
        ) -> None:
    sup, events = asyncio.run(run_handover(max_resumes=3))
    assert len(sup.order) == 2, sup.order
    first, second = (sup.frames[sid] for sid in sup.order)
    # No frame lost, none analysed twice.
    assert first == list(range(1, TAKEN + 1)), first
    assert second == list(range(TAKEN + 1, FRAMES + 1)), second
    # One stream: both sessions' events, one session_closed at the end.
    kinds = [(ev.type, ev.data.get("text", ev.data.get("reason"))) for ev in events]
    assert kinds == [("session_started", None), ("final_transcription", "first"),
                     ("session_started", None), ("final_transcription", "second"),
                     ("session_closed", "finished")], kinds
    started = [ev for ev in events if ev.type == "session_started"]
    assert [ev.data["resumed"] for ev in started] == [False, False]
    assert started[0].data["session_id"] != started[1].data["session_id"]
    # The second session's offsets count from its own start; stream offsets go on.
    last_final = [ev for ev in events if ev.type == "final_transcription"][-1]
    assert last_final.session_base_ms == 20 * TAKEN
    assert last_final.stream_offset_ms == 20 * FRAMES


@pytest.mark.timeout(60)
def test_a_handover_that_first_reaches_a_gone_daemon_is_opened_again() -> None:
    sup, events = asyncio.run(run_handover(max_resumes=3, servicer_type=GoneOnce))
    assert len(sup.order) == 2, sup.order  # the CANCELLED attempt opened no session
    first, second = (sup.frames[sid] for sid in sup.order)
    assert first == list(range(1, TAKEN + 1)), first
    assert second == list(range(TAKEN + 1, FRAMES + 1)), second
    assert [ev.type for ev in events].count("session_closed") == 1
    assert events[-1].data["reason"] == "finished"


@pytest.mark.timeout(60)
def test_after_session_closed_the_daemon_waits_for_the_half_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A call the daemon ends while the client still sends is reset (RST_STREAM), which
    HAProxy may pass on as CANCELLED ahead of the last events and trailers: after
    session_closed the daemon ends the call only at the client's half-close (or after
    CLOSE_LINGER_S, here long enough to tell), and what comes meanwhile is not taken."""
    from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
    from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

    monkeypatch.setattr(grpc_server, "CLOSE_LINGER_S", 30.0)

    async def run() -> tuple[bool, grpc.StatusCode, list[int]]:
        sup = DrainingSupervisor()
        async with in_process_server(sup) as (_, target), \
                grpc.aio.insecure_channel(target) as channel:
            call: Any = pb_grpc.AlfredStub(channel).StreamSession()
            await call.write(pb.ClientMessage(config=pb.SessionConfig(sample_rate_hz=RATE)))
            for k in range(1, TAKEN + 1):
                await call.write(pb.ClientMessage(audio=pb.AudioFrame(sequence=k,
                                                                      pcm=frame(k))))
            for _ in range(100):
                msg = await asyncio.wait_for(call.read(), 10)
                if msg.HasField("session_closed"):
                    break
            await call.write(pb.ClientMessage(audio=pb.AudioFrame(sequence=TAKEN + 1,
                                                                  pcm=frame(TAKEN + 1))))
            await asyncio.sleep(0.5)
            open_until_half_close = not call.done()
            await call.done_writing()
            code = await asyncio.wait_for(call.code(), 10)
            return open_until_half_close, code, sup.frames[sup.order[0]]

    open_until_half_close, code, taken = asyncio.run(run())
    assert open_until_half_close
    assert code == grpc.StatusCode.OK
    assert taken == list(range(1, TAKEN + 1)), taken


@pytest.mark.timeout(60)
def test_without_resumes_the_drained_stream_ends_as_before() -> None:
    """max_resumes=0 (as an older client sees it): session_closed ``shutdown`` is the last
    event and the stream ends OK; no second session."""
    sup, events = asyncio.run(run_handover(max_resumes=0))
    assert len(sup.order) == 1
    assert [ev.type for ev in events] == ["session_started", "final_transcription",
                                          "session_closed"]
    assert events[-1].data["reason"] == "shutdown"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("owed_from_ms", "after"), [(None, 12), (200, 2)])
def test_the_drained_stream_carries_the_reconnect_trailer(owed_from_ms: int | None,
                                                          after: int) -> None:
    """What any client sees on the wire: status OK after session_closed, and the trailers.
    The sequence to continue after is the last frame taken -- or, when the drain ran out of
    time before an utterance's final (speech_started at 200 ms, no final), the last frame
    ending 160 ms before that utterance, so the next daemon transcribes it whole."""
    from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
    from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

    taken = 12  # 240 ms

    async def run() -> tuple[grpc.StatusCode, dict[str, str], list[str]]:
        sup = DrainingSupervisor(taken, owed_from_ms)
        async with in_process_server(sup) as (_, target), \
                grpc.aio.insecure_channel(target) as channel:
            call: Any = pb_grpc.AlfredStub(channel).StreamSession()
            await call.write(pb.ClientMessage(config=pb.SessionConfig(sample_rate_hz=RATE)))
            for k in range(1, taken + 1):
                await call.write(pb.ClientMessage(audio=pb.AudioFrame(sequence=k,
                                                                      pcm=frame(k))))
            kinds = []
            for _ in range(100):
                msg = await asyncio.wait_for(call.read(), 10)
                if msg is grpc.aio.EOF:
                    break
                kinds.append(msg.WhichOneof("event"))
            trailers = {k: v for k, v in (await call.trailing_metadata() or ())
                        if isinstance(v, str)}
            return await call.code(), trailers, kinds

    code, trailers, kinds = asyncio.run(run())
    assert code == grpc.StatusCode.OK
    assert kinds[-1] == "session_closed", kinds
    assert trailers.get("alfred-reconnect") == "drained", trailers
    assert trailers.get("alfred-last-sequence") == str(after), trailers
