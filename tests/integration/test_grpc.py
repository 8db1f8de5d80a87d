"""End-to-end tests of the gRPC API against a real daemon: ``alfred-daemon serve`` runs as
a subprocess (2 workers, real models) and is driven through the Python client library, the
raw generated stubs, the ``alfred-daemon stream`` CLI, and the standard health and
reflection services. Helpers: tests/grpc_helpers.py. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from alfred_client import AsyncClient, Control, Event, SessionOptions, StreamError, pcm_frames
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2

from alfred_daemon.api.convert import server_event
from alfred_daemon.api.grpc_config import GrpcConfig
from alfred_daemon.engine.events import Event as EngineEvent
from alfred_daemon.engine.events import (
    FinalTranscription,
    PartialTranscription,
    SpeechEnded,
    SpeechStarted,
    TurnEnded,
    TurnEndReason,
)

from ..conftest import REPO, Utterance
from ..grpc_helpers import (
    FRAME_BYTES,
    FRAME_S,
    JFK,
    JFK_REFERENCE,
    NOT_SERVING,
    RATE,
    SERVICE,
    SERVING,
    STEADY_LADDER_ENV,
    WINDOW,
    Daemon,
    ScriptedSupervisor,
    StreamResult,
    audio_message,
    config_message,
    corpus_file,
    event_dicts,
    event_sequences,
    frames_of,
    health_check,
    in_process_server,
    kind,
    list_services,
    pad_to_whole_windows,
    pcm_ms,
    read_all,
    running_daemon,
    send_and_collect,
    session_status,
    silence_pcm,
    status_name,
    utterance_pcm,
    wait_until,
    wav_pcm,
    wer,
)

STREAM_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon shared by the tests that do not need their own. Its ladder is held at
    NORMAL: some tests compare a session's finals with and without concurrent load."""
    with running_daemon(tmp_path_factory.mktemp("grpcd"), env=STEADY_LADDER_ENV) as d:
        yield d


def _utterance(utterances: list[Utterance], file: str) -> Utterance:
    for u in utterances:
        if u.file == file:
            return u
    raise AssertionError(f"{file} is not in the shared corpus manifest")


# ============================================================================ 1. client


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_python_client_streams_jfk_realtime(daemon: Daemon) -> None:
    async def run() -> list[tuple[float, Event]]:
        got: list[tuple[float, Event]] = []
        async with AsyncClient(daemon.target) as client:
            t0 = time.monotonic()

            async def consume() -> None:
                async for ev in client.stream_wav(JFK, realtime=True):
                    got.append((time.monotonic() - t0, ev))

            await asyncio.wait_for(consume(), STREAM_TIMEOUT_S)
        return got

    timed = asyncio.run(run())
    events = [ev for _, ev in timed]
    types = [ev.type for ev in events]
    summary = [f"{ev.type}@{ev.audio_offset_ms}" for ev in events if ev.type != "frame_processed"]

    assert types[0] == "session_started", summary[:5]
    assert types[-1] == "session_closed", summary[-5:]
    assert types.count("session_closed") == 1, summary
    assert events[-1].data["reason"] == "finished", events[-1].data

    # Partials while the speech goes on: >= 2 of one utterance before its final, the first
    # ones received (wall clock) before the client had even sent that utterance's end.
    finals = {ev.data["utterance_id"]: i for i, ev in enumerate(events)
              if ev.type == "final_transcription"}
    assert finals, summary
    live: list[int] = []
    for utt, final_at in finals.items():
        arrivals = [t for t, ev in timed[:final_at]
                    if ev.type == "partial_transcription" and ev.data["utterance_id"] == utt]
        end_of_speech_s = events[final_at].audio_offset_ms / 1000.0
        if len(arrivals) >= 2 and arrivals[1] < end_of_speech_s:
            live.append(utt)
    assert live, ("no utterance got 2 partials while it was still being spoken: "
                  f"{summary}")

    # Partial text grows, and stable_text is a prefix of its text, of every later partial
    # of the utterance and of the utterance's final (proto contract).
    for utt, final_at in finals.items():
        partials = [ev for ev in events
                    if ev.type == "partial_transcription" and ev.data["utterance_id"] == utt]
        final_text = events[final_at].data["text"]
        for a, b in itertools.pairwise(partials):
            assert len(b.data["text"]) >= len(a.data["text"]), (
                f"utterance {utt}: partial text shrank: {a.data['text']!r} -> "
                f"{b.data['text']!r}")
        for i, p in enumerate(partials):
            stable = p.data["stable_text"]
            assert p.data["text"].startswith(stable), p.data
            for later in partials[i + 1 :]:
                assert later.data["text"].startswith(stable), (p.data, later.data)
            assert final_text.startswith(stable), (p.data, final_text)
        assert all(events.index(p) < final_at for p in partials), (
            f"utterance {utt}: a partial came after its final")

    text = " ".join(events[i].data["text"] for i in sorted(finals.values()))
    error = wer(JFK_REFERENCE, text)
    assert error <= 0.10, f"WER {error:.3f}: {text!r}"

    last_final = max(finals.values())
    assert "turn_ended" in types[last_final + 1 :], summary

    length_ms = pcm_ms(wav_pcm(JFK))
    ordered = [ev for ev in events if ev.type != "frame_processed"]
    for a, b in itertools.pairwise(ordered):
        assert b.audio_offset_ms >= a.audio_offset_ms, (
            f"audio_offset_ms went back: {a.type}@{a.audio_offset_ms} -> "
            f"{b.type}@{b.audio_offset_ms}\n{summary}")
    for ev in events:
        assert 0 <= ev.audio_offset_ms <= length_ms + 100, (
            f"{ev.type} at {ev.audio_offset_ms} ms; the file is {length_ms:.0f} ms")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_python_client_sends_controls_between_frames(daemon: Daemon) -> None:
    """Playback started before the speech: the daemon reports the user barging in; a forced
    end of turn after it ends the turn as "forced". Controls take no audio sequence number,
    so the frames' sequences stay 1, 2, ... and nothing is lost."""
    pcm = wav_pcm(JFK)
    frames: list[bytes | Control] = [Control.playback_started()]
    frames += pcm_frames(pcm, 16000)
    frames += [Control.playback_stopped(), Control.force_end_of_turn()]

    async def run() -> list[Event]:
        async with AsyncClient(daemon.target) as client:
            got: list[Event] = []

            async def consume() -> None:
                async for ev in client.stream(frames, 16000):
                    got.append(ev)

            await asyncio.wait_for(consume(), STREAM_TIMEOUT_S)
            return got

    events = asyncio.run(run())
    summary = [f"{ev.type}@{ev.audio_offset_ms}" for ev in events
               if ev.type != "frame_processed"]
    kinds = [ev.type for ev in events]
    assert "interruption" in kinds, summary
    assert kinds.index("interruption") > kinds.index("speech_started"), summary
    turns = [ev.data for ev in events if ev.type == "turn_ended"]
    assert turns and turns[-1]["reason"] in ("model", "silence_fallback", "forced"), turns
    text = " ".join(ev.data["text"] for ev in events if ev.type == "final_transcription")
    assert wer(JFK_REFERENCE, text) <= 0.10, text
    assert events[-1].type == "session_closed", summary


# ============================================================================ 2. CLI


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cli_stream_json(daemon: Daemon) -> None:
    exe = Path(sys.executable).parent / "alfred-daemon"

    def stream(*flags: str) -> subprocess.CompletedProcess[str]:
        try:
            run = subprocess.run(
                [str(exe), "stream", str(JFK.relative_to(REPO)), *flags,
                 "--target", daemon.target],
                cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=STREAM_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"alfred-daemon stream {flags} did not finish in "
                        f"{STREAM_TIMEOUT_S:.0f} s; stdout so far: {exc.stdout!r}")
        assert run.returncode == 0, (
            f"alfred-daemon stream {flags} exited {run.returncode}\nstderr:\n{run.stderr}\n"
            f"daemon log:\n{daemon.log_tail()}")
        return run

    run = stream("--json")
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    assert lines, f"no output; stderr:\n{run.stderr}"
    types = []
    for line in lines:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert isinstance(obj, dict), line
        t = obj.get("type")
        assert isinstance(t, str) and re.fullmatch(r"[a-z]+(_[a-z]+)*", t), (
            f"type is not snake_case: {line}")
        types.append(t)
    assert "final_transcription" in types, types
    assert "turn_ended" in types, types
    assert types[0] == "session_started" and types[-1] == "session_closed", types

    human = stream().stdout
    assert not human.lstrip().startswith("{"), f"without --json the output is JSON:\n{human}"
    assert re.search(r"\bfinal\s+\w", human), f"no readable final line:\n{human}"


# ============================================================================ 3. health


@dataclass
class _Shutdown:
    events: list[tuple[float, Event]] = field(default_factory=list)
    health: list[tuple[float, str, int]] = field(default_factory=list)
    """(monotonic time, "watch"/"check", status)"""
    stream_error: str | None = None
    term_at: float = 0.0
    exit_at: float = 0.0
    exit_code: int | None = None
    speaking_utterance: int = -1


async def _shutdown_mid_speech(d: Daemon) -> _Shutdown:
    out = _Shutdown()
    mid_speech = asyncio.Event()
    exited = asyncio.Event()
    open_speech: set[int] = set()

    async def stream() -> None:
        # max_resumes=0: the client must not paper over the shutdown by reconnecting.
        async with AsyncClient(d.target, max_resumes=0) as client:
            try:
                async for ev in client.stream_wav(JFK, realtime=True):
                    out.events.append((time.monotonic(), ev))
                    utt = int(ev.data.get("utterance_id", -1))
                    if ev.type == "speech_started":
                        open_speech.add(utt)
                    elif ev.type in ("speech_ended", "final_transcription"):
                        open_speech.discard(utt)
                    elif (ev.type == "partial_transcription" and utt in open_speech
                          and not mid_speech.is_set()):
                        out.speaking_utterance = utt
                        mid_speech.set()
            except StreamError as exc:
                out.stream_error = f"{exc.code.name}: {exc.details}"

    async def watch() -> None:
        async with grpc.aio.insecure_channel(d.target) as channel:
            call = channel.unary_stream(
                f"/{health.SERVICE_NAME}/Watch",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(health_pb2.HealthCheckRequest(service=SERVICE))
            with contextlib.suppress(grpc.RpcError):
                async for resp in call:
                    out.health.append((time.monotonic(), "watch", resp.status))

    async def poll_check() -> None:
        async with grpc.aio.insecure_channel(d.target) as channel:
            check = channel.unary_unary(
                f"/{health.SERVICE_NAME}/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )
            for _ in range(2000):  # 20 ms apart: 40 s at most
                if exited.is_set():
                    return
                with contextlib.suppress(grpc.RpcError):
                    resp = await check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    out.health.append((time.monotonic(), "check", resp.status))
                await asyncio.sleep(0.02)

    streamer = asyncio.create_task(stream())
    watcher = asyncio.create_task(watch())
    poller = asyncio.create_task(poll_check())
    try:
        await asyncio.wait_for(mid_speech.wait(), 30.0)
        out.term_at = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        out.exit_code = await asyncio.to_thread(d.proc.wait, 40.0)
        out.exit_at = time.monotonic()
        exited.set()
        await asyncio.wait_for(asyncio.gather(streamer, poller, watcher), 20.0)
    finally:
        for task in (streamer, watcher, poller):
            task.cancel()
        await asyncio.gather(streamer, watcher, poller, return_exceptions=True)
    return out


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_reflection_and_health(daemon: Daemon, tmp_path: Path) -> None:
    services = list_services(daemon.target)
    assert SERVICE in services, services
    assert health.SERVICE_NAME in services, services
    with grpc.insecure_channel(daemon.target) as channel:
        for name in ("", SERVICE):
            status = health_check(channel, name)
            assert status == SERVING, f"health of {name!r}: {status_name(status)}"
        with pytest.raises(grpc.RpcError) as unknown:
            health_check(channel, "no.such.Service")
        assert isinstance(unknown.value, grpc.Call)
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    # Shutdown: a daemon of its own, SIGTERM while a stream is mid-speech.
    with running_daemon(tmp_path / "d") as d:
        res = asyncio.run(_shutdown_mid_speech(d))
        log = d.log_tail()
    assert res.exit_code == 0, f"exit code after SIGTERM: {res.exit_code}\n{log}"

    seen = [(round(t - res.term_at, 3), src, status_name(s)) for t, src, s in res.health]
    assert any(s == SERVING and t < res.term_at for t, _, s in res.health), seen
    assert any(s == NOT_SERVING and res.term_at <= t < res.exit_at
               for t, _, s in res.health), (
        f"NOT_SERVING was never observed between SIGTERM and exit "
        f"({res.exit_at - res.term_at:.2f} s): {seen}")

    assert res.stream_error is None, f"stream failed: {res.stream_error}\n{log}"
    events = [ev for _, ev in res.events]
    after = [ev for t, ev in res.events if t >= res.term_at]
    summary = [f"{ev.type}@{ev.audio_offset_ms}" for ev in events]
    assert any(ev.type == "final_transcription"
               and ev.data["utterance_id"] == res.speaking_utterance for ev in after), (
        f"the utterance being spoken at SIGTERM ({res.speaking_utterance}) got no final: "
        f"{summary}\n{log}")
    assert events and events[-1].type == "session_closed", summary
    assert events[-1].data["reason"] == "shutdown", events[-1].data


# ============================================================================ 4. bad input


def _bad_inputs() -> list[tuple[str, list[pb.ClientMessage], grpc.StatusCode, str]]:
    frame = bytes(FRAME_BYTES)
    bad_encoding = config_message()
    bad_encoding.config.encoding = pb.AudioEncoding.ValueType(7)
    bad_vad = config_message()
    bad_vad.config.vad.threshold = 1.5
    invalid, not_found = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    return [
        ("audio before config", [audio_message(1, frame)], invalid,
         "first message must be a SessionConfig"),
        ("control before config",
         [pb.ClientMessage(control=pb.Control(action=pb.Control.KEEPALIVE))], invalid,
         "first message must be a SessionConfig"),
        ("second config", [config_message(), audio_message(1, frame), config_message()],
         invalid, "already sent"),
        ("rate 22050", [config_message(sample_rate_hz=22_050)], invalid,
         "22050 Hz is not supported"),
        ("encoding 7", [bad_encoding], invalid, "encoding 7 is not supported"),
        ("2 channels", [config_message(channels=2)], invalid, "only mono"),
        ("odd byte count", [config_message(), audio_message(1, bytes(641))], invalid,
         "even"),
        # 2 MiB is under gRPC's receive limit (GrpcConfig.max_message_bytes, 4 MiB), so the
        # daemon's own 1 MiB frame limit answers, with a message that names it.
        ("2 MiB frame", [config_message(), audio_message(1, bytes(2 << 20))], invalid,
         "1048576 byte limit"),
        # Over gRPC's own limit the transport refuses it, and says so.
        ("5 MiB frame", [config_message(), audio_message(1, bytes(5 << 20))],
         grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"),
        ("sequence backwards",
         [config_message(), audio_message(5, frame), audio_message(3, frame)], invalid,
         "sequence went backwards"),
        ("unknown resume token", [config_message(resume_token="no-such-token")], not_found,
         "resume token"),
        ("vad threshold 1.5", [bad_vad], invalid, "threshold"),
    ]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bad_inputs_get_status_and_do_not_disturb(daemon: Daemon,
                                                   utterances: list[Utterance]) -> None:
    # Session limit: the daemon has no flag to lower processor.max_concurrent_sessions (32),
    # so RESOURCE_EXHAUSTED for it is not exercised here.
    utt = _utterance(utterances, "spk1_snt2.wav")
    pcm = utterance_pcm(utt) + silence_pcm(1.0)
    # Without partials the final does not depend on when partial decodes return (their
    # stable text is the final's decoder prefix), so "streamed alone" is reproducible.
    options = SessionOptions(partials=False)

    async def good_session() -> list[Event]:
        got: list[Event] = []
        async with AsyncClient(daemon.target, max_resumes=0) as client:
            async def consume() -> None:
                async for ev in client.stream_pcm(pcm, RATE, realtime=True, options=options):
                    got.append(ev)
            await asyncio.wait_for(consume(), STREAM_TIMEOUT_S)
        return got

    async def run() -> tuple[list[Event], list[Event], list[tuple[str, StreamResult]],
                             dict[str, bool]]:
        alone = await good_session()
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            good = asyncio.create_task(good_session())
            results: list[tuple[str, StreamResult]] = []
            await asyncio.sleep(0.5)  # the good session is speaking now
            for name, messages, _, _ in _bad_inputs():
                results.append((name, await send_and_collect(stub, messages)))
                await asyncio.sleep(0.15)
            assert not good.done(), "the good session ended before the bad inputs were sent"
            together = await good
            # Is the session a rejected stream opened still there?
            still_open: dict[str, bool] = {}
            for name, res in results:
                if res.events and kind(res.events[0]) == "session_started":
                    try:
                        await session_status(stub, res.events[0].session_started.session_id)
                        still_open[name] = True
                    except grpc.aio.AioRpcError as exc:
                        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                        still_open[name] = False
        return alone, together, results, still_open

    alone, together, results, still_open = asyncio.run(run())

    problems = []
    for (name, _, code, needle), (_, res) in zip(_bad_inputs(), results, strict=True):
        if res.code != code or needle.lower() not in res.details.lower():
            problems.append(f"{name}: got {res.code.name} {res.details!r}, "
                            f"want {code.name} containing {needle!r}")
        if "final_transcription" in res.kinds:
            problems.append(f"{name}: a rejected stream transcribed something: {res.kinds}")
    assert not problems, "\n".join(problems)

    def finals(events: list[Event]) -> list[str]:
        return [ev.data["text"] for ev in events if ev.type == "final_transcription"]

    assert finals(alone), [ev.type for ev in alone]
    assert together and together[-1].type == "session_closed", [ev.type for ev in together]
    assert together[-1].data["reason"] == "finished"
    assert finals(together) == finals(alone), (
        f"the good session's finals changed while bad streams ran: {finals(together)} vs "
        f"alone {finals(alone)}")
    # A stream the daemon rejected with INVALID_ARGUMENT closes its session (not resumable:
    # resuming would replay the mistake). The transport's own RESOURCE_EXHAUSTED looks like
    # a broken stream to the daemon, so that session stays resumable (not asserted).
    leaked = [name for (name, _, code, _), (_, res) in zip(_bad_inputs(), results, strict=True)
              if code == grpc.StatusCode.INVALID_ARGUMENT and still_open.get(name)]
    assert not leaked, f"rejected streams left their sessions open: {leaked}"
    with grpc.insecure_channel(daemon.target) as channel:
        assert health_check(channel, SERVICE) == SERVING


# ============================================================================ 5. slow reader


@dataclass
class _NonReading:
    first: StreamResult
    resumed: StreamResult | None
    baseline_mb: float
    samples_mb: list[float]
    token: str


async def _warm_up(d: Daemon, pcm: bytes) -> None:
    """One ordinary session first, so the workers' decode buffers exist before the
    baseline is taken (their first decode allocates tens of MB that are not this test's)."""
    async with AsyncClient(d.target, max_resumes=0) as client:
        async def consume() -> None:
            async for _ in client.stream_pcm(pcm, RATE):
                pass
        await asyncio.wait_for(consume(), STREAM_TIMEOUT_S)


async def _non_reading(d: Daemon, pcm: bytes, warm: bytes, half_close: bool) -> _NonReading:
    await _warm_up(d, warm)
    await asyncio.sleep(1.0)
    baseline = d.main_pss_mb()
    # A client that does not read can hold up the daemon's writes only once its receive
    # window is full. The default window (64 KiB and up, grown by BDP probes) swallows all
    # events of 20 s of audio (~30 KB), so the window is made small: then the daemon's
    # outbox and write deadline are what is tested, as with a stalled client on a real link.
    options = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]
    async with grpc.aio.insecure_channel(d.target, options=options) as channel:
        stub = pb_grpc.AlfredStub(channel)
        call = stub.StreamSession()
        await call.write(config_message(frame_event_every=1, partials=True))
        started = await asyncio.wait_for(call.read(), 10.0)
        assert isinstance(started, pb.ServerEvent) and kind(started) == "session_started"
        token = started.session_started.resume_token
        events = [started]

        async def send() -> None:
            for seq, frame in enumerate(frames_of(pcm), start=1):
                await call.write(audio_message(seq, frame))
            if half_close:
                await call.done_writing()

        await asyncio.wait_for(send(), 30.0)
        samples = []
        for _ in range(15):  # ~15 s without reading, memory sampled every second
            await asyncio.sleep(1.0)
            samples.append(d.main_pss_mb())
        if not half_close:
            with contextlib.suppress(grpc.RpcError, grpc.aio.UsageError,
                                     asyncio.InvalidStateError):
                await call.done_writing()  # now end the input, to get the rest
        first = await read_all(call, events, 30.0)
        samples.append(d.main_pss_mb())

    resumed = None
    if first.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        # As the client library resumes: with the highest event_sequence received, so the
        # daemon re-sends what the cut stream had written but never delivered.
        last = max(event_sequences(first.events), default=0)
        async with grpc.aio.insecure_channel(d.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            resumed = await send_and_collect(
                stub, [config_message(resume_token=token, last_event_sequence=last)],
                timeout=30.0)
    return _NonReading(first, resumed, baseline, samples, token)


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("half_close", [False, True], ids=["open", "half_closed"])
def test_non_reading_client(tmp_path: Path, utterances: list[Utterance],
                            half_close: bool) -> None:
    parts = [("jfk.wav", JFK_REFERENCE)] + [
        (f, _utterance(utterances, f).transcript)
        for f in ("spk1_snt1.wav", "spk1_snt2.wav", "spk1_snt3.wav")]
    pcm = b"".join(wav_pcm(corpus_file(f)) + silence_pcm(0.5) for f, _ in parts)
    pcm += silence_pcm(1.0)
    reference = " ".join(t for _, t in parts)
    assert 19_000 <= pcm_ms(pcm) <= 25_000
    warm = utterance_pcm(_utterance(utterances, "spk2_snt2.wav"))

    with running_daemon(tmp_path / "d") as d:
        res = asyncio.run(_non_reading(d, pcm, warm, half_close))
        log = d.log_tail()

    # Unread events wait in the daemon's own process; the workers' PSS rises and falls
    # with each decode (a 30 s fallback decode alone takes ~90 MB for a moment).
    growth = max(res.samples_mb) - res.baseline_mb
    samples = [round(s) for s in res.samples_mb]
    assert growth < 50.0, (f"daemon process PSS grew {growth:.1f} MB (baseline "
                           f"{res.baseline_mb:.0f} MB, samples {samples})")

    first, resumed = res.first, res.resumed
    events = list(first.events)
    if first.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        assert "did not read" in first.details, first.details
        assert resumed is not None
        resume_code, resume_details = resumed.code, resumed.details
        assert resume_code == grpc.StatusCode.OK, (
            f"the stream was cut ({first.details!r}) but resuming with its token failed: "
            f"{resume_code.name} {resume_details!r}. Events received before the cut: "
            f"{first.kinds.count('final_transcription')} finals of "
            f"{first.kinds.count('speech_started')} utterances started; every other final "
            f"is lost.\n{log}")
        assert resumed.events and kind(resumed.events[0]) == "session_started"
        assert resumed.events[0].session_started.resumed
        events += resumed.events[1:]
    else:
        assert first.code == grpc.StatusCode.OK, f"{first.code.name}: {first.details}\n{log}"

    # Nothing lost, nothing twice: the event_sequence numbers received run 1, 2, ... without
    # a repeat, and any number missing was declared by an events_shed outside the sequence
    # (a resume asking for events no longer kept for replay) -- never silently.
    seqs = event_sequences(events)
    assert len(seqs) == len(set(seqs)), f"an event arrived twice: {seqs}"
    assert seqs == sorted(seqs), f"events out of order: {seqs}"
    declared = sum(e.events_shed.partials + e.events_shed.frame_events + e.events_shed.other
                   for e in events if kind(e) == "events_shed" and not e.event_sequence)
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    assert len(missing) == declared, (
        f"events {missing} never arrived; {declared} declared lost\n"
        f"{event_dicts(e for e in events if kind(e) != 'frame_processed')}")
    kinds = [kind(e) for e in events]
    assert kinds[-1] == "session_closed", event_dicts(events[-5:])
    assert events[-1].session_closed.reason == "finished", event_dicts(events[-1:])
    started = [e.speech_started.utterance_id for e in events if kind(e) == "speech_started"]
    ended = [e.speech_ended.utterance_id for e in events if kind(e) == "speech_ended"]
    finals = [e.final_transcription for e in events if kind(e) == "final_transcription"]
    final_ids = [f.utterance_id for f in finals]
    assert len(final_ids) == len(set(final_ids)), f"a final arrived twice: {final_ids}"
    assert sorted(final_ids) == sorted(set(started)), (
        f"utterances started {started}, ended {ended}, finals {final_ids}")
    assert sorted(ended) == sorted(set(started)), (
        f"utterances started {started}, ended {ended}, finals {final_ids}")
    last_final = max(i for i, k in enumerate(kinds) if k == "final_transcription")
    assert "turn_ended" in kinds[last_final + 1 :], kinds[last_final:]
    text = " ".join(f.text for f in finals)
    error = wer(reference, text)
    assert error <= 0.15, f"WER {error:.3f}: {text!r} vs {reference!r}"


# ============================================================================ 6. resume


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_resume_mid_utterance(daemon: Daemon, utterances: list[Utterance]) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    utt = _utterance(utterances, "spk1_snt2.wav")
    pcm = pad_to_whole_windows(utterance_pcm(utt) + silence_pcm(1.0))
    frames = frames_of(pcm)
    n_frames = len(frames)
    unique_samples = len(pcm) // 2
    assert unique_samples % WINDOW == 0

    @dataclass
    class Run:
        first: StreamResult
        second: StreamResult
        cut_after: int
        last_sequence: int
        resent_from: int
        status: dict[str, object]
        started: pb.SessionStarted

    async def run() -> Run:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            # ---- stream 1: real-time frames until the utterance is under way, then cancel
            call1 = stub.StreamSession()
            await call1.write(config_message())
            events1: list[pb.ServerEvent] = []
            mid_speech = asyncio.Event()

            async def reader1() -> None:
                for _ in range(10_000):
                    msg = await call1.read()
                    if msg is grpc.aio.EOF:
                        return
                    assert isinstance(msg, pb.ServerEvent)
                    events1.append(msg)
                    if kind(msg) == "partial_transcription":
                        mid_speech.set()

            reading = asyncio.create_task(reader1())
            t0 = time.monotonic()
            sent = 0
            for seq, frame in enumerate(frames, start=1):
                if mid_speech.is_set():
                    break
                await call1.write(audio_message(seq, frame))
                sent = seq
                await asyncio.sleep(max(0.0, t0 + seq * FRAME_S - time.monotonic()))
            assert mid_speech.is_set(), "no partial before the end of the audio"
            call1.cancel()
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await asyncio.wait_for(reading, 5.0)
            first = StreamResult(events1, await call1.code(), await call1.details() or "")
            token = events1[0].session_started.resume_token
            session_id = events1[0].session_started.session_id
            await asyncio.sleep(0.2)  # as the client library does before reconnecting

            # ---- stream 2: resume, re-send a few frames already processed, continue
            call2 = stub.StreamSession(timeout=STREAM_TIMEOUT_S)
            await call2.write(config_message(resume_token=token))
            started = await asyncio.wait_for(call2.read(), 10.0)
            assert isinstance(started, pb.ServerEvent), started
            assert kind(started) == "session_started", event_dicts([started])
            last = started.session_started.last_sequence
            resent_from = max(1, last - 3)
            events2 = [started]
            reading2 = asyncio.create_task(read_all(call2, events2, STREAM_TIMEOUT_S))
            t1 = time.monotonic()
            for k, seq in enumerate(range(resent_from, n_frames + 1)):
                await call2.write(audio_message(seq, frames[seq - 1]))
                await asyncio.sleep(max(0.0, t1 + (k + 1) * FRAME_S - time.monotonic()))
            status: dict[str, object] = {}
            for _ in range(100):  # until the daemon has taken every frame (5 s at most)
                status = await session_status(stub, session_id)
                if int(str(status["framesReceived"])) >= n_frames:
                    break
                await asyncio.sleep(0.05)
            await call2.done_writing()
            second = await reading2
        return Run(first, second, sent, last, resent_from, status, started.session_started)

    r = asyncio.run(run())
    ev1, ev2 = event_dicts(r.first.events), event_dicts(r.second.events)
    assert r.first.code == grpc.StatusCode.CANCELLED, (r.first.code, r.first.details)
    assert "speech_started" in r.first.kinds, f"not mid-utterance: {ev1}"
    assert "speech_ended" not in r.first.kinds, f"not mid-utterance: {ev1}"
    assert "final_transcription" not in r.first.kinds, f"not mid-utterance: {ev1}"
    assert r.started.resumed, ev2[:1]
    assert r.started.session_id == r.first.events[0].session_started.session_id
    assert 0 < r.last_sequence <= r.cut_after, (r.last_sequence, r.cut_after)
    assert r.second.code == grpc.StatusCode.OK, (r.second.code, r.second.details)

    both = r.first.events + r.second.events[1:]
    finals = [e.final_transcription for e in both if kind(e) == "final_transcription"]
    assert [f.utterance_id for f in finals].count(0) == 1, (
        f"utterance 0's final arrived {len(finals)} times\nstream 1: {ev1}\nstream 2: {ev2}")
    starts = [e.speech_started.utterance_id for e in both if kind(e) == "speech_started"]
    assert starts.count(0) == 1, f"speech_started of utterance 0 repeated: {ev1} / {ev2}"
    error = wer(utt.transcript, " ".join(f.text for f in finals))
    assert error <= 0.25, f"WER {error:.2f}: {[f.text for f in finals]}"
    assert r.second.kinds[-1] == "session_closed", ev2[-3:]

    # Nothing analysed twice: the re-sent frames were skipped.
    st = r.status
    assert st.get("framesReceived") == n_frames, (
        f"daemon took {st.get('framesReceived')} frames for {n_frames} unique ones "
        f"(last_sequence {r.last_sequence}, re-sent from {r.resent_from}): {st}")
    assert st.get("framesRejected") == 0, st
    written = int(str(st.get("windowsWritten")))
    assert written * WINDOW == unique_samples, (
        f"windowsWritten {written} * {WINDOW} = {written * WINDOW} samples, but "
        f"{unique_samples} unique samples were sent: {st}")


# ---------------------------------------------------------------- 6b. resume: event delivery
# In-process (the real servicer on a scripted runtime, tests/grpc_helpers.py): what a resume
# delivers does not depend on models or timing, so these run in the fast suite.


def _script(utterances: int, final_chars: int = 40, partials: bool = True) -> list[EngineEvent]:
    """A session's events: per utterance speech_started, a partial, speech_ended and a
    final of ``final_chars`` characters; then the turn's end."""
    out: list[EngineEvent] = []
    for u in range(utterances):
        t = 1000 * u
        out.append(SpeechStarted(audio_offset_ms=t, utterance_id=u))
        if partials:
            out.append(PartialTranscription(audio_offset_ms=t + 300, utterance_id=u,
                                            text=f"utterance {u}", stable_text=""))
        out.append(SpeechEnded(audio_offset_ms=t + 600, utterance_id=u, duration_ms=600))
        text = f"utterance {u} " + "x" * max(0, final_chars - 12)
        out.append(FinalTranscription(audio_offset_ms=t + 700, utterance_id=u, text=text,
                                      start_ms=t))
    out.append(TurnEnded(audio_offset_ms=1000 * utterances, turn_id=0, probability=0.9,
                         reason=TurnEndReason.MODEL, transcript="the turn"))
    return out


def _assert_once_each(events: list[pb.ServerEvent], total: int) -> None:
    """Every numbered event 1..total exactly once, in order, session_closed last."""
    seqs = event_sequences(events)
    assert seqs == list(range(1, total + 1)), f"event_sequence received: {seqs}"
    assert kind(events[-1]) == "session_closed", event_dicts(events[-3:])


@pytest.mark.timeout(60)
def test_resume_resends_events_written_but_never_read() -> None:
    """The loss behind test_non_reading_client's flakes, without timing: the daemon writes
    a whole session, through session_closed, into a stream whose client reads 5 events and
    drops the call -- the rest went out but were never read. A resume naming the last
    event_sequence read gets exactly the rest; a resume without it (a client predating the
    field) gets none of them, as before. The finished session stays resumable until a
    resume confirms session_closed or the resume window passes."""
    script = _script(utterances=8)
    total = len(script) + 1  # + session_closed
    read = 5

    async def run() -> None:
        sup = ScriptedSupervisor(script)
        async with (in_process_server(sup) as (servicer, target),
                    grpc.aio.insecure_channel(target) as channel):
            stub = pb_grpc.AlfredStub(channel)

            async def read_some_then_drop() -> tuple[str, list[pb.ServerEvent]]:
                call = stub.StreamSession()
                await call.write(config_message(partials=True))
                got = []
                for _ in range(1 + read):
                    msg = await asyncio.wait_for(call.read(), 10.0)
                    assert isinstance(msg, pb.ServerEvent)
                    got.append(msg)
                assert kind(got[0]) == "session_started" and got[0].event_sequence == 0
                token = got[0].session_started.resume_token
                a = servicer.sessions[token]
                await wait_until(lambda: a.replay.last == total and not a.stream_active,
                                 "the daemon wrote every event and ended the stream")
                call.cancel()
                return token, got

            # ---- a resume with last_event_sequence: the unread rest, exactly once
            token, got = await read_some_then_drop()
            assert event_sequences(got) == list(range(1, read + 1))
            res = await send_and_collect(
                stub, [config_message(resume_token=token, last_event_sequence=read)])
            assert res.code == grpc.StatusCode.OK, (res.code, res.details)
            assert kind(res.events[0]) == "session_started"
            assert res.events[0].session_started.resumed
            both = got[1:] + res.events[1:]
            _assert_once_each(both, total)
            assert [kind(e) for e in both[:-1]] == [
                kind(server_event(ev)) for ev in script]
            # Not confirmed yet: still resumable (a second resume from the same point gets
            # the same events again -- the client's dedupe drops them).
            again = await send_and_collect(
                stub, [config_message(resume_token=token, last_event_sequence=read)])
            assert event_sequences(again.events) == list(range(read + 1, total + 1))
            # A resume confirming session_closed: nothing re-sent, and the session is done.
            done = await send_and_collect(
                stub, [config_message(resume_token=token, last_event_sequence=total)])
            assert done.code == grpc.StatusCode.OK and done.kinds == ["session_started"]
            servicer.expire(time.monotonic())
            assert token not in servicer.sessions
            gone = await send_and_collect(
                stub, [config_message(resume_token=token, last_event_sequence=total)])
            assert gone.code == grpc.StatusCode.NOT_FOUND, (gone.code, gone.details)

            # ---- a resume without last_event_sequence (an older client): no replay
            token, got = await read_some_then_drop()
            old = await send_and_collect(stub, [config_message(resume_token=token)])
            assert old.code == grpc.StatusCode.OK, (old.code, old.details)
            assert old.kinds == ["session_started"], event_dicts(old.events)
            # Unconfirmed, it stays resumable for the resume window, then is forgotten.
            servicer.expire(time.monotonic())
            assert token in servicer.sessions
            servicer.expire(time.monotonic() + servicer.config.resume_window_s + 1)
            assert token not in servicer.sessions

    asyncio.run(run())


@pytest.mark.timeout(60)
def test_resume_after_write_deadline_loses_nothing() -> None:
    """test_non_reading_client in-process. Its client, with a small receive window, sends
    its input, half-closes and reads nothing until the daemon's write deadline cuts the
    stream (RESOURCE_EXHAUSTED; the write that timed out and whatever sat in transport
    buffers may or may not have arrived), then resumes from the last event it got, again
    half-closing at once and reading late. The session ended before either half-close: the
    daemon must still deliver up to session_closed, not stop writing at the half-close (it
    did, 50 ms after it -- the flake, which ended the resumed stream OK mid-backlog). Every
    event arrives once, through session_closed."""
    script = _script(utterances=60, final_chars=600, partials=False)  # > 64 KiB of finals
    total = len(script) + 1
    small_window = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)]

    async def half_close_and_read_late(
            channel: grpc.aio.Channel, config: pb.ClientMessage,
            cut: Callable[[str], Awaitable[None]]) -> StreamResult:
        call = pb_grpc.AlfredStub(channel).StreamSession()
        await call.write(config)
        started = await asyncio.wait_for(call.read(), 10.0)
        assert isinstance(started, pb.ServerEvent)
        await call.done_writing()
        await cut(started.session_started.resume_token)
        return await read_all(call, [started], 10.0)

    async def run() -> tuple[StreamResult, StreamResult]:
        sup = ScriptedSupervisor(script)
        async with in_process_server(sup, GrpcConfig(write_deadline_s=1.0)) as (servicer,
                                                                              target):
            async def deadline(token: str) -> None:
                a = servicer.sessions[token]
                assert a.closed, "the scripted session should be over before the half-close"
                await wait_until(lambda: not a.stream_active, "the write deadline cut the "
                                 "stream")
                assert a.replay.last < total, "every event fit the client's window"

            async def pause(token: str) -> None:
                await asyncio.sleep(0.3)  # half-closed, not reading: the writer must wait

            async with grpc.aio.insecure_channel(target, options=small_window) as channel:
                first = await half_close_and_read_late(channel, config_message(), deadline)
            last = max(event_sequences(first.events), default=0)
            resume = config_message(resume_token=first.events[0].session_started.resume_token,
                                    last_event_sequence=last)
            async with grpc.aio.insecure_channel(target, options=small_window) as channel:
                resumed = await half_close_and_read_late(channel, resume, pause)
        return first, resumed

    first, resumed = asyncio.run(run())
    assert first.code == grpc.StatusCode.RESOURCE_EXHAUSTED, (first.code, first.details)
    assert resumed.code == grpc.StatusCode.OK, (resumed.code, resumed.details)
    both = first.events[1:] + resumed.events[1:]
    _assert_once_each(both, total)
    finals = [e.final_transcription.utterance_id for e in both
              if kind(e) == "final_transcription"]
    assert finals == list(range(60)), finals


class _ResendingServicer(pb_grpc.AlfredServicer):
    """A daemon as the client sees it across a resume: stream 1 sends events 1-5 and breaks
    (UNAVAILABLE); stream 2, the resume, re-sends 3-5 (as a daemon does with events it
    cannot know arrived), then 6-8 and session_closed (9)."""

    def __init__(self) -> None:
        self.configs: list[pb.SessionConfig] = []

    async def StreamSession(  # type: ignore[override]  # noqa: N802 -- gRPC method name
        self, request_iterator: object,
        context: grpc.aio.ServicerContext[pb.ClientMessage, pb.ServerEvent],
    ) -> None:
        first = await context.read()
        assert isinstance(first, pb.ClientMessage)
        self.configs.append(first.config)
        resumed = bool(first.config.resume_token)
        started = pb.ServerEvent()
        started.session_started.session_id = "s1"
        started.session_started.resume_token = "token-1"
        started.session_started.resumed = resumed
        await context.write(started)
        for seq in range(3, 9) if resumed else range(1, 6):
            msg = pb.ServerEvent(audio_offset_ms=100 * seq, event_sequence=seq)
            msg.final_transcription.utterance_id = seq
            await context.write(msg)
        if not resumed:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "connection lost")
        closed = pb.ServerEvent(audio_offset_ms=900, event_sequence=9)
        closed.session_closed.reason = "finished"
        await context.write(closed)

    # Not used by the client's stream; the generated servicer declares them abstract.
    async def GetPipelineStatus(  # noqa: N802
        self, request: pb.GetPipelineStatusRequest, context: Any) -> pb.StatusDocument:
        return pb.StatusDocument()

    async def GetSessionStatus(  # noqa: N802
        self, request: pb.GetSessionStatusRequest, context: Any) -> pb.StatusDocument:
        return pb.StatusDocument()

    async def Optimize(  # noqa: N802
        self, request: pb.OptimizeRequest, context: Any) -> pb.StatusDocument:
        return pb.StatusDocument()


@pytest.mark.timeout(60)
def test_python_client_resumes_with_last_event_sequence_and_drops_resends() -> None:
    servicer = _ResendingServicer()

    async def run() -> list[Event]:
        server = grpc.aio.server()
        pb_grpc.add_AlfredServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with AsyncClient(f"127.0.0.1:{port}", max_resumes=1) as client:
                got = [ev async for ev in client.stream([bytes(FRAME_BYTES)], RATE)]
                assert client.last_event_sequence == 9
                return got
        finally:
            await server.stop(None)

    events = asyncio.run(run())
    assert len(servicer.configs) == 2, servicer.configs
    fresh, resume = servicer.configs
    assert not fresh.HasField("last_event_sequence")  # a new session has nothing to name
    assert resume.resume_token == "token-1"
    assert resume.HasField("last_event_sequence") and resume.last_event_sequence == 5
    numbered = [(ev.type, ev.event_sequence) for ev in events if ev.event_sequence]
    assert numbered == [("final_transcription", s) for s in range(1, 9)] + [
        ("session_closed", 9)], numbered
    assert [ev.type for ev in events].count("session_started") == 2


# ============================================================================ 7. many


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_twelve_concurrent_streams(daemon: Daemon, utterances: list[Utterance]) -> None:
    speech = [u for u in utterances if u.file.startswith("spk")]
    assert len(speech) >= 6, [u.file for u in speech]
    chosen = [speech[i % len(speech)] for i in range(12)]
    longest_s = max(pcm_ms(utterance_pcm(u)) for u in chosen) / 1000 + 1.0
    budget_s = longest_s + 45.0

    async def one(u: Utterance) -> list[Event]:
        got: list[Event] = []
        async with AsyncClient(daemon.target, max_resumes=0) as client:
            pcm = utterance_pcm(u) + silence_pcm(1.0)
            async for ev in client.stream_pcm(pcm, RATE, realtime=True):
                got.append(ev)
        return got

    async def run() -> tuple[list[list[Event] | BaseException], float]:
        t0 = time.monotonic()
        results = await asyncio.wait_for(
            asyncio.gather(*(one(u) for u in chosen), return_exceptions=True), budget_s)
        return results, time.monotonic() - t0

    results, elapsed = asyncio.run(run())
    problems = []
    for i, (u, res) in enumerate(zip(chosen, results, strict=True)):
        if isinstance(res, BaseException):
            problems.append(f"stream {i} ({u.file}): {res!r}")
            continue
        types = [ev.type for ev in res]
        finals = [ev.data["text"] for ev in res if ev.type == "final_transcription"]
        if not finals:
            problems.append(f"stream {i} ({u.file}): no final: {types}")
        elif wer(u.transcript, " ".join(finals)) > 0.5:
            # Far off the reference: another session's audio, or none.
            problems.append(f"stream {i} ({u.file}): finals {finals} vs {u.transcript!r}")
        if not types or types[-1] != "session_closed" or res[-1].data["reason"] != "finished":
            problems.append(f"stream {i} ({u.file}): did not close 'finished': {types[-3:]}")
    assert not problems, "\n".join(problems) + f"\n{daemon.log_tail()}"
    assert elapsed < budget_s


# ============================================================================ 8. stubs


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_generated_stubs_are_fresh() -> None:
    run = subprocess.run(
        [sys.executable, str(REPO / "clients" / "python" / "generate.py"), "--check"],
        cwd=REPO, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=100,
        check=False)
    assert run.returncode == 0, f"stubs are stale:\n{run.stdout}\n{run.stderr}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_resume_takes_over_a_stream_still_attached(daemon: Daemon,
                                                   utterances: list[Utterance]) -> None:
    """A client that reconnects before the daemon has noticed its old connection is gone
    (or a second client with the token) resumes at once: the newer stream takes the session
    over and the old one ends with ABORTED."""
    pcm = pad_to_whole_windows(utterance_pcm(_utterance(utterances, "spk1_snt1.wav"))
                               + silence_pcm(1.0))

    async def run() -> tuple[StreamResult, StreamResult]:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            old = stub.StreamSession(timeout=STREAM_TIMEOUT_S)
            await old.write(config_message())
            started = await asyncio.wait_for(old.read(), 10.0)
            assert isinstance(started, pb.ServerEvent) and kind(started) == "session_started"
            token = started.session_started.resume_token
            old_events = [started]
            old_reading = asyncio.create_task(read_all(old, old_events, 30.0))
            # The old stream stays open (not cancelled, not half-closed).
            new = await send_and_collect(
                stub, [config_message(resume_token=token)]
                + [audio_message(i + 1, f) for i, f in enumerate(frames_of(pcm))],
                timeout=30.0)
            return await asyncio.wait_for(old_reading, 30.0), new

    old, new = asyncio.run(run())
    assert old.code == grpc.StatusCode.ABORTED, (old.code, old.details)
    assert "newer stream" in old.details
    assert new.code == grpc.StatusCode.OK, (new.code, new.details)
    assert new.events and new.events[0].session_started.resumed
    kinds = [kind(e) for e in new.events]
    assert "final_transcription" in kinds and kinds[-1] == "session_closed", kinds
