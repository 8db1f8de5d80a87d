"""The API's one error table and its session bridge, without processes or sockets.

Every runtime error must map to the statuses clients of every surface already see (gRPC
status, HTTP status and JSON code, WebSocket close code), and the bridge must dispatch each
control to the right Supervisor call and turn the runtime's errors into that table's
answers. A small fake stands in for the Supervisor: it records what it is asked and raises
what a test tells it to.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb

from alfred_daemon.api import errors as api_errors
from alfred_daemon.api.bridge import (
    ACTIONS,
    FLUSH,
    FORCE_END_OF_TURN,
    KEEPALIVE,
    PLAYBACK_STARTED,
    PLAYBACK_STOPPED,
    RECONFIGURE,
    SessionBridge,
)
from alfred_daemon.api.convert import InvalidRequestError
from alfred_daemon.api.errors import MAPPED, TABLE, ApiError, api_error
from alfred_daemon.api.events_json import CONTROLS
from alfred_daemon.api.grpc_server import PROTO_ACTIONS as GRPC_ACTIONS
from alfred_daemon.api.outbox import ShedCounts
from alfred_daemon.api.webrtc_ice import RETRY_AFTER_S
from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.engine.errors import InvalidAudioError
from alfred_daemon.engine.events import (
    Event,
    FinalTranscription,
    FrameProcessed,
    PartialTranscription,
    SessionClosed,
)
from alfred_daemon.runtime import errors as runtime_errors
from alfred_daemon.runtime.errors import (
    AdmissionError,
    DaemonUnavailableError,
    RuntimeApiError,
    SessionBackloggedError,
    SessionNotFoundError,
    SharedMemoryFullError,
    WorkersFailedError,
)
from alfred_daemon.runtime.supervisor import Supervisor

SC = grpc.StatusCode

# One instance of every error a runtime call can raise, and what each surface answers:
# (gRPC status, HTTP status, HTTP JSON code, WebSocket close code). These are wire values
# clients rely on; the table must not drift from them.
EXPECTED: list[tuple[Exception, SC, int, str, int]] = [
    (InvalidAudioError("frame of 3 bytes is not whole 16-bit samples"),
     SC.INVALID_ARGUMENT, 400, "invalid_audio", 1007),
    (AdmissionError("session_limit", "session limit reached (4 of 4)"),
     SC.RESOURCE_EXHAUSTED, 503, "session_limit", 1013),
    (AdmissionError("overloaded", "daemon is overloaded; retry later"),
     SC.RESOURCE_EXHAUSTED, 503, "overloaded", 1013),
    (SharedMemoryFullError("no room in /dev/shm for the session's ring"),
     SC.RESOURCE_EXHAUSTED, 503, "shm_full", 1013),
    (SessionNotFoundError("no open session 'abc'"), SC.NOT_FOUND, 404, "session_not_found",
     1000),
    (DaemonUnavailableError("daemon is draining; not accepting sessions"),
     SC.UNAVAILABLE, 503, "unavailable", 1013),
    (SessionBackloggedError("session s had no room for audio for 5 s"),
     SC.RESOURCE_EXHAUSTED, 429, "backlogged", 1013),
    (WorkersFailedError("worker 0 kept failing to start (exit 1)"),
     SC.UNAVAILABLE, 503, "workers_failed", 1013),
]


def _all_subclasses(cls: type[Exception]) -> set[type[Exception]]:
    out: set[type[Exception]] = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


# ---------------------------------------------------------------------------- the table


@pytest.mark.parametrize(("exc", "code", "http", "json_code", "close"), EXPECTED,
                         ids=[type(e[0]).__name__ + "-" + str(i) for i, e in enumerate(EXPECTED)])
def test_every_runtime_error_maps_to_its_statuses(exc: Exception, code: SC, http: int,
                                                  json_code: str, close: int) -> None:
    err = api_error(exc)
    assert (err.grpc, err.http, err.code, err.ws_close) == (code, http, json_code, close)
    assert err.name == code.name  # the browser protocol's error code
    assert err.message == str(exc)  # the runtime's own sentence, unchanged
    assert err.cause is exc
    assert err.gone is isinstance(exc, SessionNotFoundError)
    assert err.invalid is (code is SC.INVALID_ARGUMENT)


def test_the_table_covers_every_runtime_error_class() -> None:
    """A new runtime error without a row would reach a client as a 500 or UNKNOWN: each
    class of runtime/errors.py is pinned above, and every subclass anywhere (the ring's
    RingSpaceError) is caught by ``except MAPPED`` and answers as its nearest row."""
    declared = {
        obj for obj in vars(runtime_errors).values()
        if isinstance(obj, type) and issubclass(obj, RuntimeApiError)
        and obj is not RuntimeApiError
    }
    assert declared | {InvalidAudioError} <= {type(e[0]) for e in EXPECTED}
    for cls in _all_subclasses(RuntimeApiError):
        assert issubclass(cls, MAPPED), cls
    assert set(MAPPED) == set(TABLE)


def test_an_error_outside_the_table_is_a_bug_not_a_status() -> None:
    with pytest.raises(TypeError, match="not in the API error table"):
        api_error(ValueError("something else"))
    with pytest.raises(TypeError):
        api_error(RuntimeApiError("the base class is not an answer"))


@pytest.mark.parametrize(("exc", "code", "http", "json_code", "close"), EXPECTED,
                         ids=[type(e[0]).__name__ + "-" + str(i) for i, e in enumerate(EXPECTED)])
def test_http_answer_is_the_json_error_with_retry_after_on_503(
        exc: Exception, code: SC, http: int, json_code: str, close: int) -> None:
    response = api_error(exc).response()
    assert response.status == http
    assert response.content_type == "application/json"
    assert response.text is not None
    assert json.loads(response.text) == {"error": {"code": json_code, "message": str(exc)}}
    if http == 503:
        assert response.headers["Retry-After"] == str(RETRY_AFTER_S)
    else:
        assert "Retry-After" not in response.headers


def test_shared_http_helpers() -> None:
    """process_frame and WHIP answer with the same two helpers (they were copies)."""
    plain = api_errors.json_error(415, "unsupported_media_type", "send application/sdp")
    assert plain.status == 415 and "Retry-After" not in plain.headers
    assert plain.text is not None
    assert json.loads(plain.text) == {"error": {"code": "unsupported_media_type",
                                                "message": "send application/sdp"}}
    later = api_errors.retry_later("overloaded", "retry later")
    assert later.status == 503 and later.headers["Retry-After"] == str(RETRY_AFTER_S)


# ---------------------------------------------------------------------------- the bridge


class FakeSupervisor:
    """The Supervisor's public session API, recorded. ``fail`` makes the named method raise
    the given error; ``closed`` makes every per-session call raise SessionNotFoundError."""

    def __init__(self, events: list[Event] | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail: dict[str, Exception] = {}
        self.closed = False
        self.script = list(events or [])
        self.queued = [3, 1, 0]  # windowsQueued on successive session_status calls

    def _call(self, name: str, *args: Any) -> None:
        self.calls.append((name, *args))
        if name in self.fail:
            raise self.fail[name]
        if self.closed and name != "open_session":
            raise SessionNotFoundError("no open session 's1'")

    def open_session(self, config: EngineConfig | None = None, *, sample_rate: int = 16000,
                     session_id: str | None = None, owner: str = "",
                     transport: str = "") -> str:
        self._call("open_session", config, sample_rate, owner, transport)
        return "s1"

    async def feed(self, session_id: str, frame: Any, *, sample_rate: int | None = None) -> int:
        self._call("feed", session_id, frame, sample_rate)
        return 2

    def set_playback(self, session_id: str, active: bool) -> None:
        self._call("set_playback", session_id, active)

    def force_end_of_turn(self, session_id: str) -> None:
        self._call("force_end_of_turn", session_id)

    def flush(self, session_id: str) -> None:
        self._call("flush", session_id)

    def touch(self, session_id: str) -> None:
        self._call("touch", session_id)

    def reconfigure(self, session_id: str, config: EngineConfig) -> None:
        self._call("reconfigure", session_id, config)

    async def finish_session(self, session_id: str, timeout: float | None = None) -> None:
        self._call("finish_session", session_id)

    def close_session(self, session_id: str, reason: str = "client") -> None:
        self._call("close_session", session_id, reason)

    def session_status(self, session_id: str) -> dict[str, Any]:
        self._call("session_status", session_id)
        return {"windowsQueued": self.queued.pop(0) if self.queued else 0}

    async def events(self, session_id: str) -> AsyncIterator[Event]:
        self._call("events", session_id)
        for event in self.script:
            yield event


def _bridge(fake: FakeSupervisor, **kw: Any) -> SessionBridge:
    return SessionBridge.open(cast(Supervisor, fake), EngineConfig(), sample_rate=16000,
                              owner="alice", transport="test", outbox_limit=kw.pop("limit", 8),
                              **kw)


def test_open_passes_the_session_parameters_and_maps_refusals() -> None:
    fake = FakeSupervisor()
    engine = EngineConfig()
    bridge = SessionBridge.open(cast(Supervisor, fake), engine, sample_rate=48000,
                                owner="alice", transport="webrtc", outbox_limit=4,
                                frame_event_every=3)
    assert bridge.session_id == "s1" and bridge.frame_event_every == 3
    assert bridge.outbox.limit == 4 and not bridge.closed and bridge.pump_task is None
    assert fake.calls == [("open_session", engine, 48000, "alice", "webrtc")]
    for exc, code, http in [
        (AdmissionError("session_limit", "session limit reached"), SC.RESOURCE_EXHAUSTED, 503),
        (DaemonUnavailableError("daemon is stopping"), SC.UNAVAILABLE, 503),
        (InvalidAudioError("sample rate 12345 Hz is not supported"), SC.INVALID_ARGUMENT, 400),
    ]:
        fake.fail["open_session"] = exc
        with pytest.raises(ApiError) as caught:
            _bridge(fake)
        assert (caught.value.grpc, caught.value.http, caught.value.message) == (
            code, http, str(exc))
        assert caught.value.__cause__ is exc


@pytest.mark.parametrize(("action", "call"), [
    (PLAYBACK_STARTED, ("set_playback", "s1", True)),
    (PLAYBACK_STOPPED, ("set_playback", "s1", False)),
    (FORCE_END_OF_TURN, ("force_end_of_turn", "s1")),
    (FLUSH, ("flush", "s1")),
    (KEEPALIVE, ("touch", "s1")),
])
def test_each_control_reaches_its_supervisor_call(action: str, call: tuple[Any, ...]) -> None:
    fake = FakeSupervisor()
    bridge = _bridge(fake)
    fake.calls.clear()
    assert bridge.control(action) is True
    assert fake.calls == [call]


def test_reconfigure_takes_its_config() -> None:
    fake = FakeSupervisor()
    bridge = _bridge(fake)
    fake.calls.clear()
    engine = EngineConfig()
    assert bridge.control(RECONFIGURE, engine) is True
    assert fake.calls == [("reconfigure", "s1", engine)]
    with pytest.raises(InvalidRequestError):
        bridge.control(RECONFIGURE)  # a reconfigure without its config is not one


def test_an_unknown_control_is_the_clients_error_and_calls_nothing() -> None:
    fake = FakeSupervisor()
    bridge = _bridge(fake)
    fake.calls.clear()
    for action in ("", "PLAYBACK_STARTED", "reboot"):
        with pytest.raises(InvalidRequestError, match="unknown control action"):
            bridge.control(action)
    assert fake.calls == []


def test_a_control_for_a_session_that_has_just_closed_is_moot() -> None:
    fake = FakeSupervisor()
    bridge = _bridge(fake)
    fake.closed = True
    for action in ACTIONS:
        assert bridge.control(action, EngineConfig()) is False


def test_every_protocol_names_only_the_bridges_actions() -> None:
    """gRPC's enum and the browser protocol's strings both land on the one dispatcher."""
    assert set(GRPC_ACTIONS.values()) == ACTIONS
    named = {pb.Control.Action.Name(v) for v in pb.Control.Action.values()}
    assert {pb.Control.Action.Name(k) for k in GRPC_ACTIONS} == named - {"ACTION_UNSPECIFIED"}
    assert all(pb.Control.Action.Name(k).lower() == v for k, v in GRPC_ACTIONS.items())
    assert ACTIONS - {RECONFIGURE} == CONTROLS


def test_feed_maps_runtime_errors() -> None:
    async def run() -> None:
        fake = FakeSupervisor()
        bridge = _bridge(fake)
        assert await bridge.feed(b"\0\0", sample_rate=48000) == 2
        assert fake.calls[-1] == ("feed", "s1", b"\0\0", 48000)
        for exc, code, close, gone in [
            (InvalidAudioError("bad frame"), SC.INVALID_ARGUMENT, 1007, False),
            (SessionBackloggedError("no room"), SC.RESOURCE_EXHAUSTED, 1013, False),
            (SessionNotFoundError("session s1 is closing"), SC.NOT_FOUND, 1000, True),
        ]:
            fake.fail["feed"] = exc
            with pytest.raises(ApiError) as caught:
                await bridge.feed(b"\0\0")
            err = caught.value
            assert (err.grpc, err.ws_close, err.gone, err.message) == (code, close, gone,
                                                                        str(exc))

    asyncio.run(run())


def test_finish_and_close_of_an_ended_session_are_no_errors() -> None:
    async def run() -> None:
        fake = FakeSupervisor()
        bridge = _bridge(fake)
        await bridge.finish()
        bridge.close("client")
        fake.closed = True
        await bridge.finish()
        bridge.close("error")
        assert [c[0] for c in fake.calls[1:]] == ["finish_session", "close_session"] * 2
        assert fake.calls[-1] == ("close_session", "s1", "error")

    asyncio.run(run())


def test_pump_and_writer_deliver_in_order_with_shed_notices() -> None:
    """The one writer loop: each event through ``send``, an events_shed notice first when
    some were shed, True once session_closed has gone out."""
    final = FinalTranscription(audio_offset_ms=50, utterance_id=0, text="hi", start_ms=0)
    script: list[Event] = [
        *(PartialTranscription(audio_offset_ms=i, utterance_id=0, text=f"p{i}",
                               stable_text="") for i in range(5)),
        *(FrameProcessed(audio_offset_ms=40 + i, probability=0.5, is_speech=True)
          for i in range(4)),
        final, SessionClosed(audio_offset_ms=60, reason="finished"),
    ]

    async def run() -> None:
        fake = FakeSupervisor(script)
        bridge = _bridge(fake, limit=3, frame_event_every=2)
        task = bridge.start_events(name="pump-test")
        assert bridge.pump_task is task
        await asyncio.wait_for(task, 5.0)
        assert bridge.closed
        sent: list[tuple[str, Any]] = []

        async def send(event: Event) -> None:
            sent.append(("event", event))

        async def send_shed(shed: ShedCounts, event: Event) -> None:
            sent.append(("shed", (shed.partials, shed.frame_events, event.audio_offset_ms)))

        assert await asyncio.wait_for(bridge.write(send, send_shed), 5.0) is True
        # 5 partials and the 1st and 3rd frame events went in; with a limit of 3, each
        # one past it shed the oldest sheddable event: all 5 partials and the first
        # frame event. The final and session_closed are never shed.
        kinds = [(k, v if k == "shed" else type(v).__name__) for k, v in sent]
        assert kinds[0] == ("shed", (5, 1, 42)), kinds
        assert [v for k, v in kinds[1:]] == ["FrameProcessed", "FinalTranscription",
                                             "SessionClosed"], kinds

    asyncio.run(run())


def test_writer_returns_false_when_the_outbox_ends_without_session_closed() -> None:
    async def run() -> None:
        fake = FakeSupervisor([FinalTranscription(audio_offset_ms=1, utterance_id=0,
                                                  text="t", start_ms=0)])
        bridge = _bridge(fake)
        await asyncio.wait_for(bridge.pump(), 5.0)
        got: list[Event] = []

        async def send(event: Event) -> None:
            got.append(event)

        async def send_shed(shed: ShedCounts, event: Event) -> None:
            raise AssertionError("nothing was shed")

        assert await asyncio.wait_for(bridge.write(send, send_shed), 5.0) is False
        assert len(got) == 1

    asyncio.run(run())


def test_ready_events_and_analysed_do_not_wait_for_more() -> None:
    async def run() -> None:
        fake = FakeSupervisor([FinalTranscription(audio_offset_ms=i, utterance_id=i,
                                                  text="t", start_ms=0) for i in range(3)])
        bridge = _bridge(fake)
        await asyncio.wait_for(bridge.pump(), 5.0)
        await asyncio.wait_for(bridge.analysed(2.0), 5.0)
        assert [c[0] for c in fake.calls].count("session_status") == 3  # 3, 1, then 0
        assert [e.audio_offset_ms for e in await bridge.ready_events()] == [0, 1, 2]
        assert await bridge.ready_events() == []
        fake.closed = True
        await asyncio.wait_for(bridge.analysed(2.0), 5.0)  # gone: answer at once

    asyncio.run(run())
