"""Fuzzing campaign: Hypothesis-generated hostile input against every surface of one real
daemon, then proof that the daemon is still whole.

Surfaces (each a phase, in this order, sharing ``--inputs`` and ``--minutes``):

* ``grpc_stream`` -- StreamSession scripts of up to six messages: raw random bytes,
  mutated serialized ClientMessages (bit flips, truncations, splices, insertions), configs
  with extreme values (NaN, inf, negatives, int32 extremes, empty and 64 KB strings,
  unknown enums), audio frames of odd sizes (0, 1, odd counts, up to and just over 1 MiB)
  and rates, controls and audio before the config, two configs, unknown actions.
* ``grpc_unary`` -- GetSessionStatus with odd ids, Optimize with any flags, raw bytes to
  every unary method, health checks for odd service names.
* ``http`` -- raw HTTP/1.1 over a socket: every endpoint of the ops server, any method,
  odd paths and queries, bodies (random bytes, deep and huge JSON, multipart with and
  without boundaries, truncated), odd headers (Host, Origin, Authorization, Content-Length
  mismatches, chunked with garbage).
* ``websocket`` -- the bridge: bad configs, audio and controls before the config, random
  text and binary messages, oversize messages, odd close codes.
* ``config`` -- random TOML documents and mutated valid ones through the config loader in
  process, and a few through ``alfred-daemon config check`` (exit 0 or 2 with one line).

Each input is one request, stream, connection or document; batches of them go out
concurrently to reach throughput. Counted per surface: inputs, crashes (the daemon or a
worker process died), hangs (no answer within the timeout), HTTP 5xx (a 503 that is the
API's documented refusal -- admission, readiness -- is counted apart), gRPC UNKNOWN or
INTERNAL, WebSocket 1011, unexpected exceptions in the config loader, and "Traceback"
lines in the daemon log. Afterwards the daemon must be alive with its workers, answer
/readyz, and transcribe tests/data/jfk.wav over gRPC (WER against the known text).

Run: ``python benchmarks/fuzz_campaign.py --seed 1 --inputs 100000 --minutes 40`` (results
in benchmarks/results/fuzz_campaign.{json,txt}). The same seed gives the same inputs:
Hypothesis draws them (database off, generate phase only, explicit seed), and bulk bytes
(large frames) come from a ``random.Random`` seeded by a drawn integer.
tests/integration/test_fuzz.py runs :func:`campaign` with a small count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import psutil
from alfred_client import AsyncClient, SessionOptions, StreamError, _FirstStatus, read_wav_pcm
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, Phase, Verbosity, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import HypothesisWarning
from loadgen import stop_like_ctrl_c_on_sigterm

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
JFK = REPO / "tests" / "data" / "jfk.wav"
JFK_TEXT = ("And so my fellow Americans, ask not what your country can do for you, ask what "
            "you can do for your country.")
MAX_FRAME = 1 << 20
SERVICE = "/alfred.v1.Alfred/"

SHARES = {"grpc_stream": 0.32, "grpc_unary": 0.09, "http": 0.40, "websocket": 0.08,
          "config": 0.11}
"""Each surface's part of the inputs."""
COST_S = {"grpc_stream": 0.010, "grpc_unary": 0.033, "http": 0.004, "websocket": 0.030,
          "config": 0.021}
"""Seconds per input measured on a 2-core host: a surface's part of the time cap is its
part of the inputs times this."""
BATCH = {"grpc_stream": 16, "grpc_unary": 32, "http": 32, "websocket": 12, "config": 32}
"""Inputs per Hypothesis example, sent concurrently."""
TIMEOUT_S = {"grpc_stream": 40.0, "grpc_unary": 15.0, "http": 15.0, "websocket": 40.0,
             "config": 30.0}
"""No answer within this long is a hang."""
WAIT_BEFORE_EOF_S = 3.0
"""An HTTP request not answered this long is then told the client is done sending."""
CONFIG_CHECKS = 12
"""Config documents that also go through the ``alfred-daemon config check`` subprocess."""
WS_LINGER_S = 0.5
"""How long a WebSocket script without "end" reads before the client closes."""
MAX_EXAMPLES_KEPT = 12

_T = TypeVar("_T")


# ============================================================================ bookkeeping


@dataclass
class Tally:
    """One surface's figures."""

    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    http_5xx: int = 0
    grpc_unknown_internal: int = 0
    server_errors: int = 0
    """WebSocket 1011 closes; exceptions other than ConfigError from the config loader;
    ``config check`` runs that exited otherwise than 0/2 or printed more than a line."""
    tracebacks: int = 0
    wall_s: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)

    def fail(self, kind: str, what: str, detail: str) -> None:
        if len(self.failures) < MAX_EXAMPLES_KEPT:
            self.failures.append({"kind": kind, "input": what[:600], "detail": detail[:600]})

    @property
    def bad(self) -> int:
        return (self.crashes + self.hangs + self.http_5xx + self.grpc_unknown_internal
                + self.server_errors + self.tracebacks)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": self.inputs, "crashes": self.crashes, "hangs": self.hangs,
                "http_5xx": self.http_5xx, "grpc_unknown_internal": self.grpc_unknown_internal,
                "server_errors": self.server_errors, "tracebacks": self.tracebacks,
                "wall_s": round(self.wall_s, 1),
                "outcomes": dict(self.outcomes.most_common(25)),
                "failures": self.failures}


@dataclass
class Target:
    """The daemon under fuzz."""

    grpc_target: str
    http_port: int
    log: Path
    pid: int

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        with self.log.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")


@dataclass
class Report:
    seed: int
    inputs_asked: int
    minutes: float
    surfaces: dict[str, Tally]
    wall_s: float = 0.0
    alive: bool = False
    ready: bool = False
    worker_restarts: int = 0
    jfk_text: str = ""
    jfk_wer: float = 1.0
    log_lines: int = 0
    log_levels: dict[str, int] = field(default_factory=dict)
    crashed_pids: list[int] = field(default_factory=list)
    jfk_events: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> Tally:
        out = Tally()
        for t in self.surfaces.values():
            for name in ("inputs", "crashes", "hangs", "http_5xx", "grpc_unknown_internal",
                         "server_errors", "tracebacks"):
                setattr(out, name, getattr(out, name) + getattr(t, name))
        out.wall_s = self.wall_s
        return out

    def problems(self) -> list[str]:
        """Every way the campaign did not come out clean, one line each (empty: clean)."""
        out = [f"{name}: {t.bad} bad ({json.dumps(t.to_json()['failures'][:3])})"
               for name, t in self.surfaces.items() if t.bad]
        if not self.alive or self.crashed_pids:
            out.append(f"the daemon or a worker died (pids {self.crashed_pids})")
        if not self.ready:
            out.append("the daemon does not answer /readyz with 200")
        if self.worker_restarts:
            out.append(f"{self.worker_restarts} worker restarts during the campaign")
        if self.jfk_wer > 0.15:
            out.append(f"jfk.wav after the campaign: WER {self.jfk_wer:.2f} ({self.jfk_text!r})")
        return out

    def to_json(self) -> dict[str, Any]:
        total = self.total
        return {"seed": self.seed, "inputs_asked": self.inputs_asked, "minutes": self.minutes,
                "wall_s": round(self.wall_s, 1), "total": total.to_json() | {"outcomes": {}},
                "surfaces": {k: v.to_json() for k, v in self.surfaces.items()},
                "after": {"alive": self.alive, "ready": self.ready,
                          "worker_restarts": self.worker_restarts,
                          "jfk_wer": round(self.jfk_wer, 3), "jfk_text": self.jfk_text,
                          "jfk_events": self.jfk_events, "crashed_pids": self.crashed_pids},
                "daemon_log": {"lines": self.log_lines, "levels": self.log_levels}}


class LoopThread:
    """An asyncio loop in a thread: Hypothesis runs its examples synchronously, and each
    example's batch goes out concurrently on this loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, _T], timeout: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class _OutOfTimeError(Exception):
    """Raised from a Hypothesis example once the phase's time is up: ends the phase."""


def drive(strategy: st.SearchStrategy[_T], *, batch: int, inputs: int, seed: int,
          deadline: float, handle: Callable[[list[_T]], None]) -> None:
    """Draw ``inputs`` values of ``strategy`` (in batches) and hand each batch to
    ``handle``; reproducible for a seed; stops early at ``deadline``."""
    examples = max(1, math.ceil(inputs / batch))
    done = 0

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck),
              verbosity=Verbosity.quiet, report_multiple_bugs=False)
    @hypothesis_seed(seed)
    @given(st.lists(strategy, min_size=batch, max_size=batch))
    def run(items: list[_T]) -> None:
        nonlocal done
        if time.monotonic() > deadline or done >= inputs:
            raise _OutOfTimeError
        items = items[: inputs - done]
        done += len(items)
        handle(items)

    with contextlib.suppress(_OutOfTimeError), warnings.catch_warnings():
        # A batch holding a 1 MiB frame makes a long repr, which Hypothesis warns about.
        warnings.simplefilter("ignore", HypothesisWarning)
        run()


# ============================================================================ strategies

INT32 = st.one_of(st.sampled_from([0, 1, -1, 2**31 - 1, -(2**31), 20, 500, 100_000]),
                  st.integers(-(2**31), 2**31 - 1))
FLOATS = st.one_of(st.sampled_from([0.0, 0.01, 0.05, 0.5, 0.99, 1.0, -0.0, 1e-45, 3.4e38]),
                   st.floats(width=32, allow_nan=True, allow_infinity=True))
RATES = st.one_of(st.sampled_from([16_000, 8_000, 24_000, 44_100, 48_000, 22_050, 11_025,
                                   0, -16_000, 1, 2**31 - 1]), INT32)
TEXT = st.one_of(st.sampled_from(["", "en", "en-US", "EN", "fr", "\x00", "e" * 65_536]),
                 st.text(max_size=40))


@st.composite
def pcm(draw: st.DrawFn, big: bool = True) -> bytes:
    """Audio bytes of an odd or boundary size; contents silence, noise or a repeated
    pattern (bulk bytes from a Random seeded by a drawn integer, so a seed reproduces)."""
    sizes = [0, 1, 2, 3, 639, 640, 641, 1024, 3200]
    if big:
        sizes += [MAX_FRAME - 2, MAX_FRAME, MAX_FRAME + 1, MAX_FRAME + 2]
    size = draw(st.one_of(st.sampled_from(sizes), st.integers(0, 4096)))
    kind = draw(st.sampled_from(["zeros", "noise", "pattern"]))
    if kind == "zeros":
        return bytes(size)
    if kind == "pattern":
        unit = draw(st.binary(min_size=1, max_size=8))
        return (unit * (size // len(unit) + 1))[:size]
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    # Quiet noise: loud white noise reads as speech to the VAD and costs a decode.
    return bytes(b if i % 2 == 0 else rng.choice((0, 255))
                 for i, b in enumerate(rng.randbytes(min(size, 4096)))) + bytes(
                     max(0, size - 4096))


@st.composite
def session_config(draw: st.DrawFn) -> pb.SessionConfig:
    cfg = pb.SessionConfig()
    if draw(st.booleans()):  # mostly sane, so streams get past the config
        cfg.sample_rate_hz = draw(st.sampled_from([16_000, 8_000, 48_000]))
        cfg.encoding = pb.LINEAR16
        cfg.channels = 1
    else:
        cfg.sample_rate_hz = draw(RATES)
        cfg.encoding = draw(st.sampled_from([0, 1, 2, 99, -1, 2**31 - 1]))  # type: ignore[assignment]
        cfg.channels = draw(st.sampled_from([0, 1, 2, -1, 2**31 - 1]))
        cfg.language = draw(TEXT)
    if draw(st.booleans()):
        cfg.partials = draw(st.booleans())
    if draw(st.booleans()):
        cfg.partial_interval_ms = draw(INT32)
    cfg.frame_event_every = draw(st.sampled_from([0, 0, 1, 5, -1, 2**31 - 1]))
    for name, strat in (("threshold", FLOATS), ("min_speech_ms", INT32),
                        ("min_silence_ms", INT32)):
        if draw(st.booleans()):
            setattr(cfg.vad, name, draw(strat))
    for name, strat in (("enabled", st.booleans()), ("threshold", FLOATS),
                        ("silence_ms", INT32), ("fallback_silence_ms", INT32)):
        if draw(st.booleans()):
            setattr(cfg.turn, name, draw(strat))
    if draw(st.integers(0, 9)) == 0:
        cfg.resume_token = draw(TEXT)
        if draw(st.booleans()):
            cfg.last_event_sequence = draw(st.integers(0, 2**64 - 1))
    return cfg


@st.composite
def client_message(draw: st.DrawFn) -> pb.ClientMessage:
    kind = draw(st.sampled_from(["config", "audio", "audio", "audio", "control", "empty"]))
    msg = pb.ClientMessage()
    if kind == "config":
        msg.config.CopyFrom(draw(session_config()))
    elif kind == "audio":
        msg.audio.sequence = draw(st.one_of(st.integers(0, 50), st.integers(0, 2**64 - 1)))
        msg.audio.pcm = draw(pcm(big=draw(st.integers(0, 15)) == 0))
        if draw(st.booleans()):
            msg.audio.capture_time = draw(st.floats(allow_nan=True, allow_infinity=True))
    elif kind == "control":
        msg.control.action = draw(st.one_of(st.integers(0, 6), st.sampled_from([7, 99, -1])))  # type: ignore[assignment]
        if draw(st.booleans()):
            msg.control.config.CopyFrom(draw(session_config()))
    return msg


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid serialized message, damaged: bit flips, a truncation, a splice of two, an
    insertion of random bytes."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "truncate", "splice", "insert", "byte"]))
        if op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif op == "truncate" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        elif op == "splice":
            other = draw(valid)
            cut = draw(st.integers(0, len(other)))
            data = data[: draw(st.integers(0, len(data)))] + other[cut:]
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


def _serialized(strategy: st.SearchStrategy[pb.ClientMessage]) -> st.SearchStrategy[bytes]:
    return strategy.map(lambda m: m.SerializeToString())


SMALL_MESSAGE = _serialized(client_message().filter(lambda m: len(m.audio.pcm) <= 4096))
WIRE_MESSAGE = st.one_of(
    _serialized(client_message()),
    _serialized(client_message()),
    st.binary(max_size=200),
    mutated(SMALL_MESSAGE),
)


@st.composite
def stream_script(draw: st.DrawFn) -> list[bytes]:
    """One StreamSession's messages. Half start with a sane config, so the session opens
    and what follows is tested on a live session."""
    script = draw(st.lists(WIRE_MESSAGE, max_size=6))
    if draw(st.booleans()):
        cfg = pb.ClientMessage(config=pb.SessionConfig(
            sample_rate_hz=draw(st.sampled_from([16_000, 8_000])), encoding=pb.LINEAR16,
            channels=1, partials=False))
        script.insert(0, cfg.SerializeToString())
    return script


@dataclass(frozen=True)
class Unary:
    method: str
    body: bytes
    raw: bool


@st.composite
def unary_call(draw: st.DrawFn) -> Unary:
    method = draw(st.sampled_from(["GetSessionStatus", "GetSessionStatus", "GetPipelineStatus",
                                   "Optimize", "Health"]))
    if draw(st.integers(0, 3)) == 0:
        return Unary(method, draw(st.one_of(st.binary(max_size=64),
                                            mutated(st.just(b"\x0a\x04abcd")))), True)
    if method == "GetSessionStatus":
        sid = draw(st.one_of(TEXT, st.sampled_from(["0" * 32, "../" * 20, "%00", "a" * 10_000])))
        return Unary(method, pb.GetSessionStatusRequest(session_id=sid).SerializeToString(),
                     False)
    if method == "Optimize":
        # A collection takes the daemon tens of ms: asked for in one call in 32.
        req = pb.OptimizeRequest(trigger_gc=draw(st.integers(0, 31)) == 0,
                                 cleanup_sessions=draw(st.booleans()),
                                 optimize_buffers=draw(st.booleans()))
        return Unary(method, req.SerializeToString(), False)
    if method == "Health":
        service = draw(st.one_of(st.sampled_from(["", "alfred.v1.Alfred", "nope"]), TEXT))
        return Unary(method, health_pb2.HealthCheckRequest(service=service)
                     .SerializeToString(), False)
    return Unary(method, b"", False)


HTTP_PATHS = ["/pipeline/status", "/metrics", "/metrics.json", "/session/x/status",
              "/optimize", "/process_frame", "/healthz", "/readyz", "/ws", "/monitor",
              "/monitor/monitor.js", "/monitor/monitor.css", "/monitor/history",
              "/monitor/stream", "/", "/session//status", "/session/%2e%2e/status"]
JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
              st.floats(allow_nan=False), st.text(max_size=20)),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.one_of(st.sampled_from(
                                ["triggerGC", "cleanupSessions", "optimizeBuffers"]),
                                st.text(max_size=10)), inner, max_size=4)),
    max_leaves=12)


@st.composite
def multipart(draw: st.DrawFn) -> tuple[str, bytes]:
    """(content type, body) of a multipart form, well or badly formed."""
    boundary = draw(st.sampled_from(["xx", "----b0undary", "a" * 70, ""]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(["audio", "session_id", "sample_rate", "x", ""]))
        disp = f'form-data; name="{name}"'
        if draw(st.booleans()):
            disp += f'; filename="{draw(st.sampled_from(["a.raw", "", "ä", "../x"]))}"'
        head = f"Content-Disposition: {disp}\r\n"
        if draw(st.booleans()):
            charset = draw(st.sampled_from(['utf-8', 'nope', 'latin-1', '"']))
            head += f"Content-Type: text/plain; charset={charset}\r\n"
        if name == "sample_rate":
            data = str(draw(st.one_of(RATES, st.just("9" * 5000), st.just("x")))).encode()
        elif name == "session_id":
            data = draw(st.one_of(st.just(b""), st.binary(max_size=40)))
        else:
            data = draw(pcm(big=False))
        parts.append(f"--{boundary}\r\n{head}\r\n".encode() + data + b"\r\n")
    body = b"".join(parts)
    if draw(st.integers(0, 3)):
        body += f"--{boundary}--\r\n".encode()
    if draw(st.integers(0, 5)) == 0 and body:
        body = body[: draw(st.integers(0, len(body)))]
    ctype = draw(st.sampled_from([f"multipart/form-data; boundary={boundary}",
                                  "multipart/form-data", "multipart/mixed; boundary=xx",
                                  f'multipart/form-data; boundary="{boundary}"']))
    return ctype, body


@st.composite
def http_request(draw: st.DrawFn) -> bytes:  # noqa: PLR0912, PLR0915  (one branch per kind of malformed request, in one place)
    """One raw HTTP/1.1 request (the connection closes after it)."""
    method = draw(st.one_of(st.sampled_from(["GET", "POST", "GET", "POST", "PUT", "DELETE",
                                             "HEAD", "OPTIONS", "PATCH", "TRACE"]),
                            st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ_-", min_size=1,
                                    max_size=12)))
    path = draw(st.one_of(
        st.sampled_from(HTTP_PATHS),
        st.sampled_from(HTTP_PATHS).map(lambda p: p + "?x=" + "1" * 50),
        st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/._-%?&=#~+", max_size=60)
        .map(lambda p: "/" + p),
        st.sampled_from(["/session/" + "a" * 9000 + "/status", "*", "//", "/%", "/%zz",
                         "http://evil/x", "/ws?token=" + "a" * 100]),
        TEXT.map(lambda t: "/session/" + t.replace("\r", "").replace("\n", "") + "/status"),
    ))
    headers: list[tuple[str, str]] = []
    host = draw(st.sampled_from(["127.0.0.1", "127.0.0.1", "localhost", "localhost",
                                 "evil.example", "", "[::1]:1", "127.0.0.1:99999", None]))
    if host is not None:
        headers.append(("Host", host))
    if draw(st.booleans()):
        headers.append(("Origin", draw(st.sampled_from(
            ["http://127.0.0.1", "http://evil.example", "null", "", "x" * 300]))))
    if draw(st.integers(0, 4)) == 0:
        headers.append(("Authorization", draw(st.sampled_from(
            ["Bearer ", "Bearer x", "Basic Zm9vOmJhcg==", "Bearer " + "a" * 5000]))))
    kind = draw(st.sampled_from(["none", "bytes", "json", "deep", "huge_number", "multipart",
                                 "multipart", "json"]))
    ctype: str | None = None
    body = b""
    if kind == "bytes":
        body = draw(st.binary(max_size=300))
        ctype = draw(st.sampled_from(["application/json", "text/plain",
                                      "application/octet-stream", "", "multipart/form-data"]))
    elif kind == "json":
        body = json.dumps(draw(JSON_VALUE)).encode()
        ctype = draw(st.sampled_from(["application/json", "application/json; charset=utf-8",
                                      "text/plain", "application/x-www-form-urlencoded"]))
    elif kind == "deep":
        n = draw(st.sampled_from([100, 1000, 100_000]))
        body = (b"[" * n + b"]" * n) if draw(st.booleans()) else (b'{"a":' * n + b"1"
                                                                    + b"}" * n)
        ctype = "application/json"
    elif kind == "huge_number":
        body = draw(st.sampled_from([b'{"triggerGC": 1' + b"0" * 5000 + b"}",
                                     b'{"triggerGC": 1e999}', b"-" + b"9" * 100_000]))
        ctype = "application/json"
    elif kind == "multipart":
        ctype, body = draw(multipart())
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    framing = draw(st.sampled_from(["length"] * 6 + ["short", "long", "garbage", "chunked",
                                                     "chunked_garbage", "both", "none"]))
    if framing == "length":
        headers.append(("Content-Length", str(len(body))))
    elif framing == "short":
        headers.append(("Content-Length", str(max(0, len(body) - 5))))
    elif framing == "long":
        headers.append(("Content-Length", str(len(body) + 100)))
    elif framing == "garbage":
        headers.append(("Content-Length", draw(st.sampled_from(["-1", "abc", "1e3", "",
                                                                 "99999999999999999999"]))))
    elif framing in ("chunked", "both"):
        headers.append(("Transfer-Encoding", "chunked"))
        if framing == "both":
            headers.append(("Content-Length", str(len(body))))
        body = (f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n") if body else (
            b"0\r\n\r\n")
    elif framing == "chunked_garbage":
        headers.append(("Transfer-Encoding", draw(st.sampled_from(["chunked", "gzip, chunked",
                                                                   "nope"]))))
        body = draw(st.sampled_from([b"zz\r\nabc\r\n", b"5\r\nab", b"ffffffffffffffff\r\n",
                                     b"3;ext=1\r\nabc\r\n0\r\n\r\n", b"-1\r\n"]))
    if draw(st.integers(0, 9)) == 0:
        headers.append((draw(st.sampled_from(["X-" + "a" * 9000, "Bad Header", "X\x00"])),
                        "v"))
    headers.append(("Connection", "close"))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    return head.encode("utf-8", "surrogateescape") + b"\r\n" + body


@dataclass(frozen=True)
class WsScript:
    headers: tuple[tuple[str, str], ...]
    messages: tuple[str | bytes, ...]
    close_code: int | None


WS_CONFIG = st.one_of(
    st.fixed_dictionaries({"type": st.just("config"),
                           "sampleRate": st.sampled_from([16_000, 8_000])},
                          optional={"partials": st.booleans(), "frameEventEvery": INT32,
                                    "vad": st.fixed_dictionaries(
                                        {}, optional={"threshold": FLOATS.filter(math.isfinite),
                                                      "minSpeechMs": INT32}),
                                    "turn": st.fixed_dictionaries(
                                        {}, optional={"threshold": FLOATS.filter(math.isfinite),
                                                      "enabled": st.booleans()}),
                                    "token": st.one_of(st.text(max_size=10), st.integers())}),
    st.dictionaries(st.sampled_from(["type", "sampleRate", "sampleRateHz", "vad", "encoding",
                                     "language", "nope", "resumeToken"]), JSON_VALUE,
                    max_size=4).map(lambda d: {"type": "config", **d}),
    JSON_VALUE,
)


@st.composite
def ws_script(draw: st.DrawFn) -> WsScript:
    messages: list[str | bytes] = []
    if draw(st.integers(0, 4)):
        messages.append(json.dumps(draw(WS_CONFIG)))
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["audio", "audio", "control", "end", "text", "json",
                                     "big"]))
        if kind == "audio":
            messages.append(draw(pcm(big=False)))
        elif kind == "big":
            size = draw(st.sampled_from([MAX_FRAME, MAX_FRAME + 2, 2 * MAX_FRAME + 10]))
            messages.append(bytes(size) if draw(st.booleans()) else "a" * size)
        elif kind == "control":
            action = draw(st.one_of(st.sampled_from(
                ["playback_started", "playback_stopped", "force_end_of_turn", "flush",
                 "keepalive", "reconfigure", ""]), JSON_VALUE))
            messages.append(json.dumps({"type": "control", "action": action}))
        elif kind == "end":
            messages.append('{"type": "end"}')
        elif kind == "text":
            messages.append(draw(st.text(max_size=200)))
        else:
            messages.append(json.dumps(draw(JSON_VALUE)))
    headers: list[tuple[str, str]] = []
    if draw(st.integers(0, 7)) == 0:  # a foreign origin is refused at the handshake
        headers.append(("Origin", draw(st.sampled_from(["http://evil.example", "null",
                                                        "http://127.0.0.1"]))))
    if draw(st.integers(0, 5)) == 0:
        headers.append(("Authorization", draw(st.sampled_from(["Bearer x", "Basic x", ""]))))
    close = draw(st.sampled_from([None, None, 1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011,
                                  3000, 4999, 0, 999, 1004, 1005, 1006, 1015, 2999, 5000,
                                  65535]))
    return WsScript(tuple(headers), tuple(messages), close)


TOML_KEYS = st.sampled_from([
    "processor", "coordination", "limits", "alerts", "workers", "models", "engine", "vad",
    "stt", "turn", "runtime", "grpc", "http", "logging", "security", "max_concurrent_sessions",
    "frame_queue_size", "threshold", "count", "listen", "port", "host", "level", "format",
    "file", "ring_seconds", "drain_grace", "tokens_file", "allowed_origins", "max_batch_size",
    "maxMemoryUsageMB", "beam_size", "partials", "frame_events", "max_message_bytes",
    "allow_insecure", "tls_cert", "nope", ""])
TOML_SCALAR = st.one_of(
    st.integers(-(2**63), 2**63 - 1), st.floats(), st.booleans(), st.text(max_size=20),
    st.sampled_from([0, -1, 1, 2**63 - 1, float("nan"), float("inf"), "", "127.0.0.1:0",
                     "0.0.0.0", "debug", "json"]),
    st.lists(st.text(max_size=8), max_size=3), st.datetimes().map(lambda d: d))
TOML_DOC = st.recursive(TOML_SCALAR, lambda inner: st.dictionaries(
    st.one_of(TOML_KEYS, st.text(max_size=8)), inner, max_size=5), max_leaves=20).filter(
        lambda d: isinstance(d, dict))


def toml_text(doc: dict[str, Any], prefix: str = "") -> str:
    """A TOML rendering of a generated document (tables after scalars; strings and keys as
    JSON strings, which TOML's basic strings accept)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(
                v) else repr(v)
        if isinstance(v, int):
            return str(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if hasattr(v, "isoformat"):
            return str(v.isoformat())
        return json.dumps(str(v))

    lines: list[tuple[str, Any]] = []
    tables: list[tuple[str, Any]] = []
    for k, v in doc.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = "".join(f"{json.dumps(k)} = {value(v)}\n" for k, v in lines)
    for k, v in tables:
        name = f"{prefix}.{json.dumps(k)}" if prefix else json.dumps(k)
        out += f"\n[{name}]\n" + toml_text(v, name)
    return out


def _valid_toml() -> str:
    from alfred_daemon.ops.config import DaemonConfig, dumps, to_mapping

    return dumps(to_mapping(DaemonConfig()))


@st.composite
def config_document(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["generated", "mutated", "mutated", "sections", "bytes"]))
    if kind == "generated":
        return toml_text(draw(TOML_DOC)).encode("utf-8", "surrogatepass")
    if kind == "sections":
        section = draw(TOML_KEYS)
        body = draw(st.dictionaries(TOML_KEYS, TOML_SCALAR, max_size=4))
        return toml_text({section: body} if draw(st.booleans()) else {section: draw(
            TOML_SCALAR)}).encode("utf-8", "surrogatepass")
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    return draw(mutated(st.just(_valid_toml().encode())))


# ============================================================================ surfaces


class Campaign:
    def __init__(self, target: Target, seed: int, inputs: int, minutes: float,
                 log: Callable[[str], None] = print) -> None:
        self.target = target
        self.seed = seed
        self.inputs = inputs
        self.minutes = minutes
        self.say = log
        self.loop = LoopThread()
        self.report = Report(seed, inputs, minutes, {name: Tally() for name in SHARES})
        self.processes = target.processes()
        self.crashed = False
        self._channel: grpc.aio.Channel | None = None
        self._http: aiohttp.ClientSession | None = None

    # ---------------------------------------------------------------- health of the target

    @staticmethod
    def _dead(p: psutil.Process) -> bool:
        try:
            return not p.is_running() or p.status() == psutil.STATUS_ZOMBIE
        except psutil.Error:
            return True

    def _alive(self) -> bool:
        return not any(self._dead(p) for p in self.processes)

    def _check_crash(self, tally: Tally, what: str) -> None:
        """A dead worker is counted and the campaign goes on with its replacement (the
        rest of the surfaces still get their inputs); a dead daemon ends the campaign."""
        if self.crashed or self._alive():
            return
        tally.crashes += 1
        gone = [p.pid for p in self.processes if self._dead(p)]
        tally.fail("crash", what, f"process(es) {gone} died (daemon pid {self.target.pid})")
        self.crashed = not psutil.pid_exists(self.target.pid) or self.target.pid in gone
        self.report.crashed_pids.extend(gone)
        end = time.monotonic() + 60
        while not self.crashed and time.monotonic() < end:
            self.processes = self.target.processes()
            if len(self.processes) > 1 and self._alive():
                break
            time.sleep(0.5)

    # ---------------------------------------------------------------- phases

    def run(self) -> Report:
        t0 = time.monotonic()
        end = t0 + self.minutes * 60
        restarts0 = self._worker_restarts()
        offset0 = self.target.log_size()
        self.loop.run(self._open(), 30)
        try:
            weights = {name: share * COST_S[name] for name, share in SHARES.items()}
            left = sum(weights.values())
            for name, share in SHARES.items():
                if self.crashed:
                    break
                now = time.monotonic()
                deadline = now + max(0.0, end - now) * weights[name] / left
                left -= weights[name]
                self._phase(name, round(self.inputs * share), deadline)
        finally:
            self.loop.run(self._close(), 30)
        self.report.wall_s = time.monotonic() - t0
        self._after(restarts0, offset0)
        self.loop.close()
        return self.report

    async def _open(self) -> None:
        self._channel = grpc.aio.insecure_channel(self.target.grpc_target, options=[
            ("grpc.max_send_message_length", 8 << 20),
            ("grpc.max_receive_message_length", 8 << 20)])
        self._http = aiohttp.ClientSession()

    async def _close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            await self._http.close()

    def _phase(self, name: str, inputs: int, deadline: float) -> None:
        tally = self.report.surfaces[name]
        offset = self.target.log_size()
        t0 = time.monotonic()
        handler: Callable[[list[Any]], Awaitable[None]] = getattr(self, f"_surface_{name}")
        strategy: st.SearchStrategy[Any] = {
            "grpc_stream": stream_script(), "grpc_unary": unary_call(),
            "http": http_request(), "websocket": ws_script(),
            "config": config_document()}[name]
        timeout = TIMEOUT_S[name]

        def handle(items: list[Any]) -> None:
            if self.crashed:
                raise _OutOfTimeError
            tally.inputs += len(items)
            try:
                self.loop.run(asyncio.wait_for(handler(items), timeout + 30), timeout + 40)
            except TimeoutError as exc:
                tally.hangs += 1
                tally.fail("hang", repr(items)[:600], f"batch not answered: {exc!r}")
            self._check_crash(tally, repr(items))

        seed = self.seed * 100 + list(SHARES).index(name)
        drive(strategy, batch=BATCH[name], inputs=inputs, seed=seed, deadline=deadline,
              handle=handle)
        tally.wall_s = time.monotonic() - t0
        text = self.target.log_since(offset)
        tally.tracebacks = text.count("Traceback")
        if tally.tracebacks:
            i = text.index("Traceback")
            tally.fail("traceback", "(see log)", text[max(0, i - 300): i + 1500])
        self.say(f"{name}: {tally.inputs} inputs in {tally.wall_s:.0f} s, {tally.bad} bad; "
                 f"{dict(tally.outcomes.most_common(6))}")

    # ---------------------------------------------------------------- gRPC

    async def _surface_grpc_stream(self, scripts: list[list[bytes]]) -> None:
        tally = self.report.surfaces["grpc_stream"]
        await asyncio.gather(*(self._one_stream(tally, s) for s in scripts))

    async def _one_stream(self, tally: Tally, script: list[bytes]) -> None:
        assert self._channel is not None
        call = self._channel.stream_stream(
            SERVICE + "StreamSession", request_serializer=lambda b: b,
            response_deserializer=lambda b: b)(timeout=TIMEOUT_S["grpc_stream"])
        first = _FirstStatus(call)

        async def write() -> None:
            with contextlib.suppress(grpc.RpcError, grpc.aio.UsageError,
                                     asyncio.InvalidStateError):
                for m in script:
                    await call.write(m)
                await call.done_writing()

        writer = asyncio.ensure_future(write())
        with contextlib.suppress(grpc.RpcError):
            async for _ in call:
                pass
        await writer
        code, details = await first.settled((await call.code(), await call.details() or ""))
        self._grpc_outcome(tally, code, details, script)

    def _grpc_outcome(self, tally: Tally, code: grpc.StatusCode, details: str,
                      what: Any) -> None:
        tally.outcomes[code.name] += 1
        if code in (grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL):
            tally.grpc_unknown_internal += 1
            tally.fail(code.name, repr(what), details)
        elif code == grpc.StatusCode.DEADLINE_EXCEEDED:
            tally.hangs += 1
            tally.fail("hang", repr(what), details)
        elif code != grpc.StatusCode.OK and not details.strip():
            tally.server_errors += 1
            tally.fail("no sentence", repr(what), code.name)

    async def _surface_grpc_unary(self, calls: list[Unary]) -> None:
        tally = self.report.surfaces["grpc_unary"]
        await asyncio.gather(*(self._one_unary(tally, c) for c in calls))

    async def _one_unary(self, tally: Tally, c: Unary) -> None:
        assert self._channel is not None
        path = ("/grpc.health.v1.Health/Check" if c.method == "Health"
                else SERVICE + c.method)
        method = self._channel.unary_unary(path, request_serializer=lambda b: b,
                                           response_deserializer=lambda b: b)
        try:
            await method(c.body, timeout=TIMEOUT_S["grpc_unary"])
            code, details = grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as exc:
            code, details = exc.code(), exc.details() or ""
        self._grpc_outcome(tally, code, details, c)

    # ---------------------------------------------------------------- HTTP

    async def _surface_http(self, requests: list[bytes]) -> None:
        tally = self.report.surfaces["http"]
        await asyncio.gather(*(self._one_http(tally, r) for r in requests))

    async def _one_http(self, tally: Tally, request: bytes) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.target.http_port), 10)
        except (OSError, TimeoutError) as exc:
            tally.outcomes["connect failed"] += 1
            tally.fail("connect", repr(request[:300]), repr(exc))
            return
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(request)
                await writer.drain()
            # A request the server is still waiting on (a Content-Length longer than the
            # body, a chunked body without its last chunk) is answered or closed once the
            # client says it is done sending; a complete one is answered without that.
            try:
                line = await asyncio.wait_for(reader.readline(), WAIT_BEFORE_EOF_S)
            except TimeoutError:
                with contextlib.suppress(ConnectionError, OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                try:
                    line = await asyncio.wait_for(reader.readline(), TIMEOUT_S["http"])
                except TimeoutError:
                    tally.hangs += 1
                    tally.fail("hang", repr(request[:600]), "no status line")
                    return
                except ConnectionError:
                    line = b""
            except ConnectionError:
                line = b""
            head = b""
            with contextlib.suppress(TimeoutError, ConnectionError):
                head = await asyncio.wait_for(reader.read(4096), 5.0)
            m = re.match(rb"HTTP/1\.[01] (\d{3})", line)
            if m is None:
                tally.outcomes["closed without a response"] += 1
                return
            status = int(m.group(1))
            tally.outcomes[str(status)] += 1
            if status >= 500:
                documented = status == 503 and (
                    b'"ready": false' in head or b'"code": "' in head)
                if documented:
                    tally.outcomes["503 documented refusal"] += 1
                else:
                    tally.http_5xx += 1
                    tally.fail("http 5xx", repr(request[:600]), (line + head)[:400].decode(
                        errors="replace"))
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    # ---------------------------------------------------------------- WebSocket

    async def _surface_websocket(self, scripts: list[WsScript]) -> None:
        tally = self.report.surfaces["websocket"]
        await asyncio.gather(*(self._one_ws(tally, s) for s in scripts))

    async def _one_ws(self, tally: Tally, script: WsScript) -> None:  # noqa: PLR0912  (one branch per step kind of a WebSocket script)
        assert self._http is not None
        url = f"http://127.0.0.1:{self.target.http_port}/ws"
        try:
            ws = await self._http.ws_connect(url, headers=dict(script.headers),
                                             max_msg_size=0, timeout=aiohttp.ClientWSTimeout(
                                                 ws_close=5.0))
        except aiohttp.WSServerHandshakeError as exc:
            tally.outcomes[f"handshake {exc.status}"] += 1
            if exc.status >= 500:
                tally.http_5xx += 1
                tally.fail("http 5xx", repr(script)[:600], str(exc))
            return
        code: int | None = None
        ended = bool(script.messages) and script.messages[-1] == '{"type": "end"}'
        try:
            with contextlib.suppress(ConnectionError, RuntimeError):
                for m in script.messages:
                    if ws.closed:
                        break
                    if isinstance(m, bytes):
                        await asyncio.wait_for(ws.send_bytes(m), 10.0)
                    else:
                        await asyncio.wait_for(ws.send_str(m), 10.0)
            # After "end" the daemon must finish the session and close; otherwise the
            # client reads briefly (the daemon may refuse what it sent) and then leaves,
            # with the script's close code.
            wait = TIMEOUT_S["websocket"] if ended else WS_LINGER_S
            deadline = time.monotonic() + wait
            while not ws.closed and (left := deadline - time.monotonic()) > 0:
                try:
                    msg = await ws.receive(timeout=left)
                except TimeoutError:
                    break
                if msg.type == aiohttp.WSMsgType.CLOSE:
                    code = int(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
            if not ws.closed and ended:
                tally.hangs += 1
                tally.fail("hang", repr(script)[:600], "no close after end")
            if code is None and not ws.closed:
                tally.outcomes["client closed"] += 1
                with contextlib.suppress(ValueError, OverflowError, ConnectionError,
                                         RuntimeError):
                    await ws.close(code=script.close_code or 1000)
                return
            code = code if code is not None else ws.close_code
            tally.outcomes[f"close {code}"] += 1
            if code == 1011:
                tally.server_errors += 1
                tally.fail("ws 1011", repr(script)[:600], "internal error close")
        finally:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close()

    # ---------------------------------------------------------------- config files

    async def _surface_config(self, docs: list[bytes]) -> None:
        tally = self.report.surfaces["config"]
        await asyncio.to_thread(self._config_sync, tally, docs)

    def _config_sync(self, tally: Tally, docs: list[bytes]) -> None:
        from alfred_daemon.engine.errors import ConfigError
        from alfred_daemon.ops.config import load

        with tempfile.TemporaryDirectory() as tmp:
            for i, doc in enumerate(docs):
                path = Path(tmp) / f"fuzz{i}.toml"
                path.write_bytes(doc)
                try:
                    load(path, environ={})
                    tally.outcomes["valid"] += 1
                except ConfigError as exc:
                    tally.outcomes["ConfigError"] += 1
                    if "\n" in str(exc).strip() and "not valid TOML" not in str(exc):
                        tally.server_errors += 1
                        tally.fail("multi-line error", repr(doc), str(exc))
                except Exception as exc:  # the finding: anything but ConfigError
                    tally.server_errors += 1
                    tally.outcomes[type(exc).__name__] += 1
                    tally.fail(type(exc).__name__, repr(doc), repr(exc))
                if tally.outcomes["config check runs"] < CONFIG_CHECKS and (
                        tally.inputs % 97 < len(docs) or i == 0):
                    self._config_check(tally, path, doc)

    def _config_check(self, tally: Tally, path: Path, doc: bytes) -> None:
        tally.outcomes["config check runs"] += 1
        exe = Path(sys.executable).parent / "alfred-daemon"
        try:
            proc = subprocess.run([str(exe), "config", "check", str(path)],
                                  capture_output=True, timeout=TIMEOUT_S["config"],
                                  env={k: v for k, v in os.environ.items()
                                       if not k.startswith("ALFRED__")}, check=False)
        except subprocess.TimeoutExpired:
            tally.hangs += 1
            tally.fail("hang", repr(doc), "config check did not exit")
            return
        err = proc.stderr.decode(errors="replace")
        lines = [ln for ln in err.splitlines() if ln.strip()]
        tally.outcomes[f"config check exit {proc.returncode}"] += 1
        if proc.returncode not in (0, 2) or len(lines) > 1 or "Traceback" in err:
            tally.server_errors += 1
            tally.fail("config check", repr(doc), f"exit {proc.returncode}: {err[-500:]}")

    # ---------------------------------------------------------------- afterwards

    def _worker_restarts(self) -> int:
        async def get() -> int:
            async with aiohttp.ClientSession() as s, s.get(
                    f"http://127.0.0.1:{self.target.http_port}/metrics.json") as r:
                doc = await r.json()
            return int(doc["counters"]["worker_restarts"])

        try:
            return self.loop.run(get(), 15)
        except Exception:
            return -1

    def _after(self, restarts0: int, offset0: int) -> None:
        rep = self.report
        self.processes = self.target.processes()
        rep.alive = bool(self.processes) and self._alive()
        restarts = self._worker_restarts()
        rep.worker_restarts = max(0, restarts - restarts0) if restarts >= 0 else 0
        rep.ready = self._wait_ready(90.0)
        if rep.alive and rep.ready:
            rep.jfk_text, rep.jfk_wer = self._jfk()
        text = self.target.log_since(offset0)
        lines = text.splitlines()
        rep.log_lines = len(lines)
        levels: Counter[str] = Counter()
        for ln in lines:
            m = re.match(r"\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) ", ln)
            levels[m.group(1) if m else "other"] += 1
        rep.log_levels = dict(levels)

    def _wait_ready(self, timeout: float) -> bool:
        """/readyz 200, and the backpressure ladder back at none (the campaign's load
        gone), within ``timeout``."""
        async def poll() -> bool:
            base = f"http://127.0.0.1:{self.target.http_port}"
            end = time.monotonic() + timeout
            async with aiohttp.ClientSession() as s:
                while time.monotonic() < end:
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                        async with s.get(f"{base}/readyz") as r:
                            ready = r.status == 200
                        async with s.get(f"{base}/pipeline/status") as r:
                            doc = await r.json()
                        level = doc.get("pipelineState", {}).get("backpressureLevel")
                        if ready and level in (None, "none"):
                            return True
                    await asyncio.sleep(0.5)
            return False

        return self.loop.run(poll(), timeout + 10)

    def _jfk(self) -> tuple[str, float]:
        import jiwer

        from alfred_daemon.engine.text import norm_text

        pcm_bytes, rate = read_wav_pcm(JFK)

        async def stream() -> str:
            finals = []
            async with AsyncClient(self.target.grpc_target) as client:
                async for ev in client.stream_pcm(pcm_bytes + bytes(rate * 2), rate,
                                                  options=SessionOptions(partials=False)):
                    self.report.jfk_events[ev.type] = self.report.jfk_events.get(ev.type, 0) + 1
                    if ev.type == "final_transcription":
                        finals.append(str(ev.data.get("text", "")))
            return " ".join(finals)

        try:
            text = self.loop.run(stream(), 120)
        except (StreamError, TimeoutError) as exc:
            return f"(failed: {exc})", 1.0
        return text, float(jiwer.wer(norm_text(JFK_TEXT), norm_text(text)))


def campaign(target: Target, seed: int, inputs: int, minutes: float,
             log: Callable[[str], None] = print) -> Report:
    """Run every surface's share of ``inputs`` (at most ``minutes``) against ``target``,
    then check the daemon (see the module doc). The CI subset calls this too."""
    return Campaign(target, seed, inputs, minutes, log).run()


# ============================================================================ standalone


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def daemon(workdir: Path, workers: int) -> Iterator[tuple[Target, subprocess.Popen[bytes]]]:
    """``alfred-daemon serve`` on loopback ports with a fresh runtime dir; SIGTERM after."""
    exe = Path(sys.executable).parent / "alfred-daemon"
    grpc_port, http_port = _free_port(), _free_port()
    log = workdir / "daemon.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "--listen", f"127.0.0.1:{grpc_port}", "--http-host",
             "127.0.0.1", "--http-port", str(http_port), "--runtime-dir",
             str(workdir / "run"), "--workers", str(workers)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
            env={k: v for k, v in os.environ.items() if not k.startswith("ALFRED__")})
    target = Target(f"127.0.0.1:{grpc_port}", http_port, log, proc.pid)
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited {proc.returncode}:\n{log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", http_port), 1) as s:
                    s.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: "
                              b"close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        break
            except OSError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("daemon not ready within 120 s")
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def text_report(rep: Report, command: str, exit_code: int | None) -> str:
    total = rep.total
    rows = [f"{'surface':<12} {'inputs':>8} {'crash':>6} {'hang':>5} {'5xx':>4} "
            f"{'UNK/INT':>8} {'other':>6} {'tb':>4} {'wall s':>7} {'inputs/s':>9}"]
    for name, t in [*rep.surfaces.items(), ("total", total)]:
        rate = t.inputs / t.wall_s if t.wall_s else 0.0
        rows.append(f"{name:<12} {t.inputs:>8} {t.crashes:>6} {t.hangs:>5} {t.http_5xx:>4} "
                    f"{t.grpc_unknown_internal:>8} {t.server_errors:>6} {t.tracebacks:>4} "
                    f"{t.wall_s:>7.0f} {rate:>9.1f}")
    out = [
        "Fuzzing campaign (benchmarks/fuzz_campaign.py)",
        f"command: {command}",
        f"seed: {rep.seed}; inputs asked: {rep.inputs_asked}; time cap: {rep.minutes} min",
        f"host: {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}; "
        f"grpcio {grpc.__version__}; aiohttp {aiohttp.__version__}",
        "",
        *rows,
        "",
        "columns: crash = daemon or worker process died; hang = no answer within the "
        "timeout; 5xx = HTTP 5xx other than the documented 503 refusals; UNK/INT = gRPC "
        "UNKNOWN or INTERNAL; other = WebSocket 1011, config loader exceptions other than "
        "ConfigError, config check runs not ending 0/2 with one line, error statuses "
        "without a sentence; tb = 'Traceback' in the daemon log",
        "",
        f"after the campaign: daemon and workers alive: {rep.alive}; /readyz 200: "
        f"{rep.ready}; worker restarts: {rep.worker_restarts}; jfk.wav over gRPC: WER "
        f"{rep.jfk_wer:.3f} ({rep.jfk_text!r}; events {rep.jfk_events})",
        f"daemon log during the campaign: {rep.log_lines} lines {rep.log_levels}",
        "",
        "outcomes per surface (most common):",
    ]
    for name, t in rep.surfaces.items():
        out.append(f"  {name}: {dict(t.outcomes.most_common(12))}")
    problems = rep.problems()
    out += ["", "result: " + ("clean" if not problems else "NOT CLEAN")]
    out += [f"  {p}" for p in problems]
    if exit_code is not None:
        out.append(f"exit code: {exit_code}")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    stop_like_ctrl_c_on_sigterm()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs in total")
    ap.add_argument("--minutes", type=float, default=40.0, help="wall-time cap")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS,
                    help="where fuzz_campaign.json and .txt go")
    args = ap.parse_args(argv)
    command = "python benchmarks/fuzz_campaign.py " + " ".join(
        f"--{k} {v}" for k, v in (("seed", args.seed), ("inputs", args.inputs),
                                  ("minutes", args.minutes), ("workers", args.workers)))
    workdir = Path(tempfile.mkdtemp(prefix="alfred-fuzz-"))
    clean = False
    try:
        with daemon(workdir, args.workers) as (target, proc):
            rep = campaign(target, args.seed, args.inputs, args.minutes)
        code = proc.returncode
        clean = not rep.problems() and code == 0
        args.out.mkdir(parents=True, exist_ok=True)
        doc = rep.to_json() | {"command": command, "host_cpu": cpu_model(),
                               "cpus": os.cpu_count(), "daemon_exit_code": code,
                               "clean": clean}
        (args.out / "fuzz_campaign.json").write_text(json.dumps(doc, indent=2) + "\n")
        text = text_report(rep, command, code)
        (args.out / "fuzz_campaign.txt").write_text(text)
        print(text)
        if not clean:
            print(f"daemon log kept: {workdir / 'daemon.log'}")
        return 0 if clean else 1
    finally:
        if clean:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
