"""Helpers for the gRPC end-to-end tests (tests/integration/test_grpc.py).

A real ``alfred-daemon serve`` subprocess (ready = the standard health check says SERVING;
stopped with SIGTERM, its worker processes checked to be gone), the standard health and
reflection calls, raw-stub streams that record every event and the final status, audio
from the shared corpus, and WER. For tests of the stream protocol itself, without models or
timing: the real gRPC servicer in-process on a scripted stand-in for the runtime
(:class:`ScriptedSupervisor`). Every wait here is bounded in time and every loop in count.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import jiwer
import psutil
import pytest
from alfred_client import read_wav_pcm
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from alfred_daemon.api.grpc_config import GrpcConfig
from alfred_daemon.api.grpc_server import AlfredServicer
from alfred_daemon.engine.audio import float_to_pcm16
from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.engine.events import Event, SessionClosed
from alfred_daemon.engine.text import norm_text
from alfred_daemon.runtime.config import RuntimeConfig
from alfred_daemon.runtime.errors import SessionNotFoundError
from alfred_daemon.runtime.supervisor import Supervisor

from .conftest import REPO, SHARED_AUDIO, Utterance

JFK = REPO / "tests" / "data" / "jfk.wav"
JFK_REFERENCE = ("And so my fellow Americans, ask not what your country can do for you, "
                 "ask what you can do for your country.")
SERVICE = "alfred.v1.Alfred"
RATE = 16_000
FRAME_BYTES = 640
"""20 ms of 16 kHz LINEAR16, what live clients send."""
FRAME_S = 0.02
WINDOW = 512
"""Samples per VAD window (the daemon's unit of analysis)."""
FRAMES_PER_WHOLE_WINDOWS = 8
"""8 frames of 320 samples = 2560 samples = 5 windows."""

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def status_name(status: int) -> str:
    return health_pb2.HealthCheckResponse.ServingStatus.Name(status)


# ----------------------------------------------------------------------------- the daemon


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def daemon_executable() -> str:
    beside = Path(sys.executable).parent / "alfred-daemon"
    if not beside.is_file():
        pytest.fail(f"{beside} is missing: install the project into the venv (make setup)")
    return str(beside)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    port: int
    workdir: Path
    log: Path
    http_port: int = 0
    credentials: grpc.ChannelCredentials | None = None
    """TLS credentials to reach it with (None: plaintext)."""
    children: list[psutil.Process] = field(default_factory=list)
    """The daemon's descendants (its workers) once it was SERVING."""

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"

    def tree(self) -> list[psutil.Process]:
        """The daemon process and its live descendants."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def pss_mb(self) -> float:
        """Proportional set size of the whole process tree (supervisor + workers), MB."""
        total = 0
        for p in self.tree():
            with contextlib.suppress(psutil.Error):
                total += p.memory_full_info().pss
        return total / 1e6

    def main_pss_mb(self) -> float:
        """PSS of the daemon's own process (supervisor, gRPC and HTTP servers, every
        session's event queues), MB -- without the workers, whose PSS follows each decode
        (a job lane hands freed heap back to the OS after every job)."""
        return float(psutil.Process(self.proc.pid).memory_full_info().pss) / 1e6


def health_check(channel: grpc.Channel, service: str = "", timeout: float = 1.0) -> int:
    """grpc.health.v1.Health/Check (types-grpcio-health-checking's HealthStub declares no
    methods, so the call is spelled out with grpc_health's message types)."""
    check = channel.unary_unary(
        f"/{health.SERVICE_NAME}/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    resp = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
    status: int = resp.status
    return status


def list_services(target: str, timeout: float = 5.0) -> list[str]:
    """Server reflection (v1alpha) ListServices."""
    with grpc.insecure_channel(target) as channel:
        info = channel.stream_stream(
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        names: list[str] = []
        for resp in info(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                         timeout=timeout):
            names += [s.name for s in resp.list_services_response.service]
        return names


def wait_serving(daemon: Daemon, timeout: float = READY_TIMEOUT_S) -> None:
    """Poll the standard health check until SERVING, bounded; fail with the log if not."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    channel = (grpc.secure_channel(daemon.target, daemon.credentials)
               if daemon.credentials is not None else grpc.insecure_channel(daemon.target))
    with channel:
        while time.monotonic() < deadline:
            if daemon.proc.poll() is not None:
                pytest.fail(f"daemon exited with {daemon.proc.returncode} before it was "
                            f"ready:\n{daemon.log_tail()}")
            try:
                status = health_check(channel, "", timeout=1.0)
                if status == SERVING:
                    return
                last = status_name(status)
            except grpc.RpcError as exc:
                last = str(exc.code()) if isinstance(exc, grpc.Call) else repr(exc)
            time.sleep(0.1)
    pytest.fail(f"daemon not SERVING within {timeout:.0f} s (last: {last}):\n"
                f"{daemon.log_tail()}")


STEADY_LADDER_ENV = {
    "ALFRED__COORDINATION__THRESHOLD": "1.5",
    "ALFRED__COORDINATION__RECOVERY_THRESHOLD": "1.0",
    "ALFRED__PROCESSOR__FRAME_QUEUE_SIZE": "10000",
    "ALFRED__RUNTIME__MAX_LAG_MS": "60000",
}
"""Config overrides that hold the backpressure ladder at NORMAL, for daemons whose tests
compare finals word for word (the arithmetic is in runtime_helpers.steady_ladder)."""


def start_daemon(workdir: Path, workers: int = 2, env: dict[str, str] | None = None,
                 credentials: grpc.ChannelCredentials | None = None, *,
                 wrap: Sequence[str] = (), args: Sequence[str] = ()) -> Daemon:
    """``alfred-daemon serve`` on a free loopback port, runtime dir under ``workdir``;
    returns once SERVING with its worker processes recorded. ``env`` adds environment
    variables (``ALFRED__SECTION__KEY`` config overrides), ``args`` serve flags. ``wrap``
    is a command the daemon's command line is appended to, which must end by exec'ing it
    (so that the process started is the daemon), e.g. a namespace set-up."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "daemon.log"
    port, http_port = free_port(), free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*wrap, daemon_executable(), "serve", "--listen", f"127.0.0.1:{port}",
             "--http-port", str(http_port),
             "--runtime-dir", str(workdir / "run"), "--workers", str(workers), *args],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    d = Daemon(proc, port, workdir, log, http_port, credentials)
    try:
        wait_serving(d)
        d.children = psutil.Process(proc.pid).children(recursive=True)
        assert len(d.children) >= workers, (
            f"daemon has {len(d.children)} child processes, expected {workers} workers")
    except BaseException:
        stop_daemon(d)
        reap(d)
        raise
    return d


def stop_daemon(daemon: Daemon, timeout: float = STOP_TIMEOUT_S) -> int | None:
    """SIGTERM (drain and exit), SIGKILL after ``timeout``; the exit code (None if killed)."""
    proc = daemon.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


def reap(daemon: Daemon, timeout: float = 10.0) -> list[int]:
    """Wait (bounded) for the daemon's workers to exit; kill any left. Returns the pids that
    outlived the daemon (empty when the daemon took its workers with it)."""
    _, alive = psutil.wait_procs(daemon.children, timeout=timeout)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)
    return sorted(p.pid for p in alive)


@contextlib.contextmanager
def running_daemon(workdir: Path, workers: int = 2, env: dict[str, str] | None = None,
                   credentials: grpc.ChannelCredentials | None = None, *,
                   wrap: Sequence[str] = (), args: Sequence[str] = ()) -> Iterator[Daemon]:
    """A daemon for the ``with`` block; afterwards it is stopped (if the block did not) and
    it must have exited 0 and left no child process behind."""
    d = start_daemon(workdir, workers, env, credentials, wrap=wrap, args=args)
    ok = False
    try:
        yield d
        ok = True
    finally:
        code = stop_daemon(d)
        outlived = reap(d)
        tail = d.log_tail()
        if ok:
            assert not outlived, f"worker processes outlived the daemon: {outlived}\n{tail}"
            assert code == 0, f"daemon exit code after SIGTERM: {code}\n{tail}"


# ----------------------------------------------------------------------------- audio


def wav_pcm(path: Path) -> bytes:
    pcm, rate = read_wav_pcm(path)
    assert rate == RATE, f"{path}: {rate} Hz"
    return pcm


def utterance_pcm(u: Utterance) -> bytes:
    return float_to_pcm16(u.audio)


def silence_pcm(seconds: float) -> bytes:
    return bytes(2 * int(seconds * RATE))


def frames_of(pcm: bytes, frame_bytes: int = FRAME_BYTES) -> list[bytes]:
    return [pcm[i : i + frame_bytes] for i in range(0, len(pcm), frame_bytes)]


def pad_to_whole_windows(pcm: bytes) -> bytes:
    """Zero-pad to whole 20 ms frames that end on a VAD window boundary."""
    unit = FRAME_BYTES * FRAMES_PER_WHOLE_WINDOWS
    return pcm + bytes((-len(pcm)) % unit)


def pcm_ms(pcm: bytes) -> float:
    return len(pcm) / 2 / RATE * 1000.0


def corpus_file(name: str) -> Path:
    return SHARED_AUDIO / name


def wer(reference: str, hypothesis: str) -> float:
    return float(jiwer.wer(norm_text(reference), norm_text(hypothesis)))


# ----------------------------------------------------------------------------- raw streams


def config_message(**fields: Any) -> pb.ClientMessage:
    cfg = pb.SessionConfig(encoding=pb.LINEAR16, sample_rate_hz=RATE, channels=1)
    for name, value in fields.items():
        setattr(cfg, name, value)
    return pb.ClientMessage(config=cfg)


def audio_message(sequence: int, pcm: bytes) -> pb.ClientMessage:
    return pb.ClientMessage(audio=pb.AudioFrame(sequence=sequence, pcm=pcm))


def kind(ev: pb.ServerEvent) -> str:
    return ev.WhichOneof("event") or "unknown"


@dataclass
class StreamResult:
    """What one StreamSession call gave: its events and its final status."""

    events: list[pb.ServerEvent]
    code: grpc.StatusCode
    details: str

    @property
    def kinds(self) -> list[str]:
        return [kind(e) for e in self.events]


async def read_all(call: grpc.aio.StreamStreamCall[pb.ClientMessage, pb.ServerEvent],
                   events: list[pb.ServerEvent], timeout: float) -> StreamResult:
    """Read until the call ends (bounded by ``timeout``); appends to ``events``."""
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            call.cancel()
            break
        try:
            msg = await asyncio.wait_for(call.read(), remaining)
        except TimeoutError:
            call.cancel()
            break
        except grpc.aio.AioRpcError:
            break
        if msg is grpc.aio.EOF:
            break
        assert isinstance(msg, pb.ServerEvent)
        events.append(msg)
    return StreamResult(events, await call.code(), await call.details() or "")


async def send_and_collect(stub: pb_grpc.AlfredAsyncStub, messages: Sequence[pb.ClientMessage],
                           timeout: float = 15.0) -> StreamResult:
    """One stream: send ``messages``, half-close, read every event until the status."""
    call = stub.StreamSession(timeout=timeout)
    events: list[pb.ServerEvent] = []

    async def send() -> None:
        # The daemon may end the call before everything is written (that is the point of a
        # bad input): a write on an ended call raises, and the status says why.
        with contextlib.suppress(grpc.RpcError, grpc.aio.UsageError, asyncio.InvalidStateError):
            for m in messages:
                await call.write(m)
            await call.done_writing()

    sender = asyncio.create_task(send())
    result = await read_all(call, events, timeout)
    await asyncio.wait_for(sender, 5.0)
    return result


def event_dicts(events: Iterable[pb.ServerEvent]) -> list[str]:
    """Compact one-line renderings of events, for assertion messages."""
    out = []
    for e in events:
        k = kind(e)
        body = str(getattr(e, k)).replace("\n", " ").strip() if k != "unknown" else ""
        out.append(f"{k}@{e.audio_offset_ms} {body}".strip())
    return out


async def session_status(stub: pb_grpc.AlfredAsyncStub, session_id: str) -> dict[str, Any]:
    doc = await stub.GetSessionStatus(pb.GetSessionStatusRequest(session_id=session_id),
                                      timeout=5.0)
    out: dict[str, Any] = json.loads(doc.json)
    return out



def event_sequences(events: Iterable[pb.ServerEvent]) -> list[int]:
    """The event_sequence of each numbered event (0 marks per-stream messages: left out)."""
    return [e.event_sequence for e in events if e.event_sequence]


# ----------------------------------------------------------------------------- in-process


class ScriptedSupervisor:
    """Stands in for the runtime's Supervisor behind an in-process AlfredServicer: each
    session's events are ``script`` at once, then session_closed ("finished"); audio is
    accepted and ignored. No workers, no models, nothing that depends on timing -- for
    tests of what the stream protocol delivers."""

    def __init__(self, script: Sequence[Event]) -> None:
        self.config = RuntimeConfig()
        self.script = list(script)
        self.open: set[str] = set()

    def open_session(self, config: EngineConfig | None = None, *, sample_rate: int = RATE,
                     session_id: str | None = None, owner: str = "",
                     transport: str = "") -> str:
        sid = session_id or uuid.uuid4().hex
        self.open.add(sid)
        return sid

    def sessions_of(self, owner: str) -> int:
        return 0

    async def events(self, session_id: str) -> AsyncIterator[Event]:
        for ev in self.script:
            yield ev
        self.open.discard(session_id)
        end = self.script[-1].audio_offset_ms if self.script else 0
        yield SessionClosed(audio_offset_ms=end, reason="finished")

    def push(self, session_id: str, frame: bytes, *, sample_rate: int | None = None) -> int:
        return 0

    async def feed(self, session_id: str, frame: bytes, *,
                   sample_rate: int | None = None) -> int:
        return 0

    async def finish_session(self, session_id: str, timeout: float | None = None) -> None:
        return None

    def close_session(self, session_id: str, reason: str = "client") -> None:
        if session_id not in self.open:
            raise SessionNotFoundError(f"no open session {session_id!r}")
        self.open.discard(session_id)


@contextlib.asynccontextmanager
async def in_process_server(sup: ScriptedSupervisor, config: GrpcConfig | None = None,
                            servicer_type: type[AlfredServicer] = AlfredServicer,
                            ) -> AsyncIterator[tuple[AlfredServicer, str]]:
    """The daemon's AlfredServicer (or a test's subclass) on ``sup``, served on a free
    loopback port: yields the servicer (to look at its sessions) and the target."""
    servicer = servicer_type(cast(Supervisor, sup), config or GrpcConfig())
    server = grpc.aio.server()
    pb_grpc.add_AlfredServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail naming ``what`` after ``timeout``."""
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"not within {timeout:.0f} s: {what}")
