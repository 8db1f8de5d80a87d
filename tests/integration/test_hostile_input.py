"""Malformed and oversized input over real sockets: every surface answers with its error
form and one sentence (gRPC status, HTTP 4xx JSON, WebSocket close code and reason), the
daemon logs no traceback for it, and it never reaches another session.

One daemon (``alfred-daemon serve``, one worker, real models) serves the whole module; each
test looks at the daemon log for what it caused.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterator
from typing import Any

import aiohttp
import grpc
import pytest
from alfred_client import AsyncClient, StreamError, _FirstStatus
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

from alfred_daemon.api.convert import MAX_FRAME_BYTES, engine_config
from alfred_daemon.api.grpc_config import GrpcConfig
from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.engine.errors import ConfigError

from ..grpc_helpers import (
    FRAME_BYTES,
    RATE,
    STEADY_LADDER_ENV,
    Daemon,
    StreamResult,
    audio_message,
    config_message,
    running_daemon,
    send_and_collect,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("hostile"), workers=1,
                        env=STEADY_LADDER_ENV) as d:
        yield d


class LogWatch:
    """What the daemon logged from now on (the module's daemon is shared)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.start = daemon.log.stat().st_size

    def new(self) -> str:
        with self.daemon.log.open("rb") as f:
            f.seek(self.start)
            return f.read().decode(errors="replace")

    def assert_clean(self) -> None:
        text = self.new()
        assert "Traceback" not in text, text[-4000:]
        assert " ERROR " not in text, text[-4000:]


def _base(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.http_port}"


async def _post(session: aiohttp.ClientSession, url: str, body: bytes,
                content_type: str) -> tuple[int, dict[str, Any]]:
    async with session.post(url, data=body, headers={"Content-Type": content_type}) as r:
        return r.status, await r.json(content_type=None)


# ============================================================================ 1. HTTP bodies


def test_bad_multipart_and_oversized_bodies_get_4xx_with_a_sentence(daemon: Daemon) -> None:
    watch = LogWatch(daemon)
    truncated = (b'--xx\r\nContent-Disposition: form-data; name="audio"\r\n\r\n'
                 + bytes(640))  # no closing boundary

    async def run() -> dict[str, tuple[int, dict[str, Any]]]:
        base = _base(daemon)
        async with aiohttp.ClientSession() as s:
            return {
                "no_boundary": await _post(s, f"{base}/process_frame", bytes(640),
                                           "multipart/form-data"),
                "truncated": await _post(s, f"{base}/process_frame", truncated,
                                         "multipart/form-data; boundary=xx"),
                "huge_frame": await _post(s, f"{base}/process_frame", bytes(50 << 20),
                                          "multipart/form-data; boundary=xx"),
                "huge_optimize": await _post(s, f"{base}/optimize", b" " * (50 << 20),
                                             "application/json"),
                "wrong_method": await _post(s, f"{base}/healthz", b"", "text/plain"),
            }

    out = asyncio.run(asyncio.wait_for(run(), 120))
    for name in ("no_boundary", "truncated"):
        status, body = out[name]
        assert status == 400, (name, out[name])
        assert body["error"]["code"] == "invalid_multipart", (name, body)
        assert "multipart body could not be read" in body["error"]["message"], (name, body)
    assert "boundary" in out["no_boundary"][1]["error"]["message"]
    for name in ("huge_frame", "huge_optimize"):
        status, body = out[name]
        assert status == 413, (name, out[name])
        assert body["error"]["message"] == (
            "the request body is over the 1048576 byte limit; send one 20-100 ms frame per "
            "request"), body
    status, body = out["wrong_method"]
    assert status == 405 and "POST is not allowed" in body["error"]["message"], body
    watch.assert_clean()


# ============================================================================ 2. gRPC bytes


def _raw_stream(channel: grpc.aio.Channel) -> Any:
    return channel.stream_stream("/alfred.v1.Alfred/StreamSession",
                                 request_serializer=lambda b: b,
                                 response_deserializer=lambda b: b)


async def _raw_status(call: Any) -> tuple[grpc.StatusCode, str]:
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            pass
    return await call.code(), await call.details() or ""


def test_undecodable_grpc_requests_are_invalid_argument(daemon: Daemon) -> None:
    watch = LogWatch(daemon)
    garbage = b"\xff\xff\xff\x01not a protobuf"
    valid_config = config_message().SerializeToString()

    async def run() -> list[tuple[grpc.StatusCode, str]]:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stream = _raw_stream(channel)
            unary = channel.unary_unary("/alfred.v1.Alfred/GetSessionStatus",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
            out = [await _raw_status(stream(iter([garbage]))),
                   await _raw_status(stream(iter([valid_config, garbage])))]
            try:
                await unary(b"\x0a\x05\xff\xfe\xfd\xfc\xfb", timeout=10)
            except grpc.aio.AioRpcError as exc:
                out.append((exc.code(), exc.details() or ""))
            return out

    results = asyncio.run(asyncio.wait_for(run(), 60))
    want = ["alfred.v1.ClientMessage", "alfred.v1.ClientMessage",
            "alfred.v1.GetSessionStatusRequest"]
    assert len(results) == len(want), results
    for (code, details), name in zip(results, want, strict=True):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, details)
        assert details == (f"the request is not a valid {name} message (its bytes do not parse "
                           "as protobuf); send messages built from proto/alfred/v1/alfred.proto")
    watch.assert_clean()


# ============================================================================ 3. float32 bounds


@pytest.mark.parametrize(("section", "value"), [
    ("vad", 0.99), ("vad", 0.05), ("turn", 0.99), ("turn", 0.01)])
def test_documented_threshold_bounds_are_accepted(section: str, value: float) -> None:
    """A float field holds the float32 nearest to the value sent: a bound sent is that
    bound, not 0.9900000095367432."""
    cfg = pb.SessionConfig(sample_rate_hz=RATE)
    getattr(cfg, section).threshold = value
    engine = engine_config(cfg, EngineConfig())
    assert getattr(engine, section).threshold == value


@pytest.mark.parametrize(("section", "value"), [
    ("vad", 0.9900001), ("vad", 0.0499999), ("turn", 0.0099999), ("vad", float("nan")),
    ("turn", float("inf"))])
def test_just_past_a_threshold_bound_is_refused(section: str, value: float) -> None:
    cfg = pb.SessionConfig(sample_rate_hz=RATE)
    getattr(cfg, section).threshold = value
    with pytest.raises(ValueError, match=rf"{section}\.threshold = .* is out of range"):
        engine_config(cfg, EngineConfig())


def test_threshold_bounds_over_grpc(daemon: Daemon) -> None:
    async def run() -> list[StreamResult]:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            out = []
            for vad, turn in ((0.99, 0.01), (0.05, 0.99)):
                msg = config_message()
                msg.config.vad.threshold = vad
                msg.config.turn.threshold = turn
                out.append(await send_and_collect(stub, [msg], timeout=20))
            return out

    for res in asyncio.run(asyncio.wait_for(run(), 60)):
        assert res.code == grpc.StatusCode.OK, (res.code, res.details)
        assert res.kinds[0] == "session_started", res.kinds


# ============================================================================ 4. frame sizes


def test_every_documented_frame_size_is_taken_and_the_next_refused(daemon: Daemon) -> None:
    watch = LogWatch(daemon)
    sizes = (960_002, MAX_FRAME_BYTES - 2, MAX_FRAME_BYTES, MAX_FRAME_BYTES + 1,
             MAX_FRAME_BYTES + 2)

    async def run() -> list[StreamResult]:
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            stub = pb_grpc.AlfredStub(channel)
            return [await send_and_collect(stub, [config_message(), audio_message(1, bytes(n))],
                                           timeout=60) for n in sizes]

    results = asyncio.run(asyncio.wait_for(run(), 240))
    for n, res in zip(sizes, results, strict=True):
        if n <= MAX_FRAME_BYTES:
            assert res.code == grpc.StatusCode.OK, (n, res.code, res.details)
            assert res.kinds[-1] == "session_closed", (n, res.kinds)
        else:
            assert res.code == grpc.StatusCode.INVALID_ARGUMENT, (n, res.code, res.details)
            assert res.details == (f"audio frame of {n} bytes is over the 1048576 byte limit; "
                                   "send 20-100 ms frames"), res.details
    watch.assert_clean()


def test_grpc_message_limit_must_admit_the_largest_frame() -> None:
    with pytest.raises(ConfigError, match=r"grpc\.max_message_bytes = 1048576 is out of range"):
        GrpcConfig(max_message_bytes=1 << 20)
    GrpcConfig(max_message_bytes=(1 << 20) + 1024)


# ============================================================================ 5. the client


def test_client_reports_the_servers_status_while_it_writes(daemon: Daemon) -> None:
    """The daemon ends the stream (INVALID_ARGUMENT for an odd frame, the transport's
    RESOURCE_EXHAUSTED for a message over its limit) while the client still writes frames:
    grpc.aio may report that as INTERNAL "Internal error from Core" (grpc/grpc#36066), and
    the client must say what the daemon said instead. Several tries: it is a race."""
    watch = LogWatch(daemon)

    def frames(bad_at: int, bad: bytes) -> Iterator[bytes]:
        for i in range(200):
            yield bad if i == bad_at else bytes(FRAME_BYTES)

    async def once(bad_at: int, bad: bytes) -> StreamError | None:
        async with AsyncClient(daemon.target, max_resumes=1) as client:
            try:
                async for _ in client.stream(frames(bad_at, bad), RATE):
                    pass
            except StreamError as exc:
                return exc
        return None

    async def run() -> list[tuple[str, StreamError | None]]:
        out: list[tuple[str, StreamError | None]] = []
        for i in range(24):
            out.append(("odd", await once(i % 6, bytes(FRAME_BYTES + 1))))
        for i in range(6):
            out.append(("huge", await once(i % 3, bytes(5 << 20))))
        return out

    for what, exc in asyncio.run(asyncio.wait_for(run(), 200)):
        assert exc is not None, f"{what}: the stream was accepted"
        if what == "odd":
            assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, str(exc)
            assert "audio frame has 641 bytes" in exc.details, str(exc)
        else:
            assert exc.code == grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
            assert "larger than max" in exc.details, str(exc)
    watch.assert_clean()


class _LateStatusCall:
    """A call whose server status arrives after grpc.aio's synthetic INTERNAL was set."""

    def __init__(self) -> None:
        self.reads = 0

    def add_done_callback(self, callback: Any) -> None:
        callback(self)

    async def code(self) -> grpc.StatusCode:
        self.reads += 1
        return grpc.StatusCode.INTERNAL if self.reads <= 2 else grpc.StatusCode.INVALID_ARGUMENT

    async def details(self) -> str:
        return "Internal error from Core" if self.reads <= 2 else "the daemon's sentence"

    async def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


def test_first_status_waits_past_the_synthetic_internal() -> None:
    async def run() -> tuple[grpc.StatusCode, str]:
        first = _FirstStatus(_LateStatusCall())  # type: ignore[arg-type]
        return await first.settled((grpc.StatusCode.INTERNAL, "Internal error from Core"))

    assert asyncio.run(run()) == (grpc.StatusCode.INVALID_ARGUMENT, "the daemon's sentence")


# ============================================================================ 6. WebSocket


def test_websocket_message_over_the_limit_closes_1009_with_a_reason(daemon: Daemon) -> None:
    watch = LogWatch(daemon)

    async def one(size: int) -> tuple[list[Any], int | None, str]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{_base(daemon)}/ws") as ws:
            await ws.send_str(json.dumps({"type": "config", "sampleRate": RATE}))
            started = await ws.receive_json(timeout=10)
            assert started["type"] == "sessionStarted", started
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(bytes(size))
            errors: list[Any] = []
            for _ in range(50):
                msg = await ws.receive(timeout=30)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    body = json.loads(msg.data)
                    if body["type"] == "error":
                        errors.append(body)
                    continue
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    return errors, int(msg.data), str(msg.extra)
                return errors, None, msg.type.name
            return errors, None, "no close"

    reason = "message over the 1048576 byte (1 MiB) limit; send 20-100 ms frames"
    for size in (MAX_FRAME_BYTES + 2, 2 * MAX_FRAME_BYTES, 50 << 20):
        errors, code, extra = asyncio.run(asyncio.wait_for(one(size), 60))
        assert code == 1009, (size, code, extra, errors)
        assert extra == reason, (size, extra)
        assert errors == [{"type": "error", "code": "INVALID_ARGUMENT", "message": reason}], (
            size, errors)
    watch.assert_clean()


# ============================================================================ found by fuzzing


def test_health_and_reflection_refuse_undecodable_requests(daemon: Daemon) -> None:
    """benchmarks/fuzz_campaign.py found the health service answering garbage UNKNOWN with
    a logged traceback; reflection had the same path. An unknown service's NOT_FOUND now
    says what is known."""
    watch = LogWatch(daemon)

    async def run() -> list[tuple[grpc.StatusCode, str]]:
        out = []
        async with grpc.aio.insecure_channel(daemon.target) as channel:
            check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                        request_serializer=lambda b: b,
                                        response_deserializer=lambda b: b)
            for body in (b"\x0a\x05\xff\xfe\xfd\xfc\xfb", b"\x0a\x04nope"):
                try:
                    await check(body, timeout=10)
                    out.append((grpc.StatusCode.OK, ""))
                except grpc.aio.AioRpcError as exc:
                    out.append((exc.code(), exc.details() or ""))
            reflect = channel.stream_stream(
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                request_serializer=lambda b: b, response_deserializer=lambda b: b)
            out.append(await _raw_status(reflect(iter([b"\xff\xff\xff\x01"]), timeout=10)))
        return out

    garbage, unknown, reflection = asyncio.run(asyncio.wait_for(run(), 60))
    assert garbage[0] == grpc.StatusCode.INVALID_ARGUMENT, garbage
    assert "not a valid grpc.health.v1.HealthCheckRequest message" in garbage[1], garbage
    assert unknown == (grpc.StatusCode.NOT_FOUND, "unknown service 'nope'; this server "
                       "reports on '' (the whole server) and 'alfred.v1.Alfred'"), unknown
    assert reflection[0] == grpc.StatusCode.INVALID_ARGUMENT, reflection
    assert "ServerReflectionRequest" in reflection[1], reflection
    watch.assert_clean()


def test_websocket_control_with_an_object_action_is_refused(daemon: Daemon) -> None:
    """Found by the fuzz campaign: {"action": {}} raised TypeError (unhashable) in the
    bridge, a traceback and a dropped socket; deep JSON raised RecursionError."""
    watch = LogWatch(daemon)

    async def one(text: str) -> tuple[Any, int, str]:
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{_base(daemon)}/ws") as ws:
            await ws.send_str(json.dumps({"type": "config", "sampleRate": RATE}))
            assert (await ws.receive_json(timeout=10))["type"] == "sessionStarted"
            await ws.send_str(text)
            error = None
            for _ in range(20):
                msg = await ws.receive(timeout=10)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    body = json.loads(msg.data)
                    error = body if body["type"] == "error" else error
                    continue
                assert msg.type == aiohttp.WSMsgType.CLOSE, msg
                return error, int(msg.data), str(msg.extra)
            raise AssertionError("no close")

    for text in ('{"type": "control", "action": {}}', '{"type": "control", "action": [1]}',
                 "[" * 100_000 + "]" * 100_000):
        error, code, reason = asyncio.run(asyncio.wait_for(one(text), 30))
        assert code == 1008, (text[:40], code, reason)
        assert error is not None and error["code"] == "INVALID_ARGUMENT", error
        assert error["message"].startswith("unexpected message"), error
    watch.assert_clean()


def test_unparseable_http_is_400_and_one_debug_line(daemon: Daemon) -> None:
    """Found by the fuzz campaign: a header line over 8 KiB got aiohttp's 400 but an ERROR
    with the parser's traceback in the log."""
    watch = LogWatch(daemon)

    async def run() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-" + b"a" * 9000
                     + b": v\r\nConnection: close\r\n\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 10)
        writer.close()
        return line

    line = asyncio.run(run())
    assert line.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400")), line
    watch.assert_clean()


def test_optimize_with_a_huge_integer_or_a_body_cut_short(daemon: Daemon) -> None:
    """Found by the fuzz campaign: a 5,001-digit integer raised ValueError (Python's int
    digit limit) in /optimize, a 500 with a traceback; a client closing before its
    announced body was complete logged ConnectionResetError with a traceback."""
    watch = LogWatch(daemon)

    async def run() -> tuple[int, dict[str, Any]]:
        async with aiohttp.ClientSession() as s:
            status, body = await _post(s, f"{_base(daemon)}/optimize",
                                       b'{"triggerGC": 1' + b"0" * 5000 + b"}",
                                       "application/json")
        reader, writer = await asyncio.open_connection("127.0.0.1", daemon.http_port)
        writer.write(b"POST /optimize HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     b"application/json\r\nContent-Length: 100\r\n\r\n{}")
        await writer.drain()
        writer.write_eof()
        with contextlib.suppress(ConnectionError, TimeoutError):
            await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return status, body

    status, body = asyncio.run(asyncio.wait_for(run(), 30))
    assert status == 400, body
    assert body["error"]["message"].startswith("body is not usable JSON (Exceeds the limit"), body
    watch.assert_clean()
