"""The Node.js client (clients/node) against a real daemon: ``alfred-daemon serve`` in a
subprocess, ``node clients/node/examples/stream_wav.js --realtime --json`` streaming jfk.wav.

Needs ``node`` and ``clients/node/node_modules`` (``make setup`` runs ``npm ci`` there); when
either is missing the test fails rather than skips, so CI cannot pass without running it.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import wave
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import jiwer
import psutil
import pytest
from grpc_health.v1 import health, health_pb2

from alfred_daemon.engine.text import norm_text

from .conftest import REPO

NODE_DIR = REPO / "clients" / "node"
EXAMPLE = NODE_DIR / "examples" / "stream_wav.js"
WAV = REPO / "tests" / "data" / "jfk.wav"
REFERENCE = ("And so my fellow Americans, ask not what your country can do for you, "
             "ask what you can do for your country.")
READY_TIMEOUT_S = 60.0
STREAM_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    target: str
    log: Path
    children: list[psutil.Process]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no daemon log)"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _daemon_command() -> list[str]:
    beside = Path(sys.executable).parent / "alfred-daemon"
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("alfred-daemon")
    if found is None:
        pytest.fail("alfred-daemon is not installed (run make setup)")
    return [found]


def _wait_serving(daemon: Daemon) -> None:
    """Poll the standard gRPC health check until SERVING, bounded by READY_TIMEOUT_S."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    with grpc.insecure_channel(daemon.target) as channel:
        # grpc.health.v1.Health/Check (types-grpcio-health-checking's HealthStub declares
        # no methods, so the call is spelled out with grpc_health's message types).
        check = channel.unary_unary(
            f"/{health.SERVICE_NAME}/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        while time.monotonic() < deadline:
            if daemon.proc.poll() is not None:
                pytest.fail(f"daemon exited with {daemon.proc.returncode} before it was "
                            f"ready:\n{daemon.log_tail()}")
            try:
                resp = check(health_pb2.HealthCheckRequest(service=""), timeout=1.0)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
            except grpc.RpcError as exc:
                last = str(exc.code()) if hasattr(exc, "code") else repr(exc)
            time.sleep(0.2)
    pytest.fail(f"daemon not SERVING within {READY_TIMEOUT_S:.0f} s (last: {last}):\n"
                f"{daemon.log_tail()}")


def _stop(daemon: Daemon) -> int | None:
    """SIGTERM (the daemon drains and exits), then SIGKILL; returns the exit code."""
    proc = daemon.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
            return None
    return proc.returncode


@pytest.fixture
def daemon() -> Iterator[Daemon]:
    port = _free_port()
    # A short private path: the runtime dir holds ipc:// sockets (108-byte path limit).
    rundir = Path(tempfile.mkdtemp(prefix="alfnode-"))
    rundir.chmod(0o700)
    log = rundir.parent / f"{rundir.name}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [*_daemon_command(), "serve", "--listen", f"127.0.0.1:{port}",
             "--runtime-dir", str(rundir / "run"), "--workers", "2"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        )
    d = Daemon(proc, f"127.0.0.1:{port}", log, [])
    failed = True
    try:
        _wait_serving(d)
        d.children = psutil.Process(proc.pid).children(recursive=True)
        assert d.children, "the daemon spawned no worker processes"
        yield d
        failed = False
    finally:
        code = _stop(d)
        _, alive = psutil.wait_procs(d.children, timeout=10)
        for p in alive:
            p.kill()
        ours = {proc.pid} | {p.pid for p in d.children}
        leftover = ours & {p.pid for p in psutil.Process().children(recursive=True)}
        tail = d.log_tail()
        shutil.rmtree(rundir, ignore_errors=True)
        log.unlink(missing_ok=True)
        if not failed:  # else the setup error (not ready, no workers) is the one to report
            assert not alive, f"workers outlived the daemon: {[p.pid for p in alive]}"
            assert not leftover, f"child processes left behind: {sorted(leftover)}"
            assert code == 0, f"daemon exit code after SIGTERM: {code}\n{tail}"


@pytest.fixture
def node() -> str:
    """The node binary, with the client's dependencies installed; else the test fails."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the Node.js client test needs Node >= 18 "
                    "(CI installs it; see clients/README.md)")
    if not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.fail(f"{NODE_DIR / 'node_modules'} is missing: run "
                    "`cd clients/node && npm ci --no-audit --no-fund` (make setup does it)")
    return node


def _wav_ms(path: Path) -> float:
    with wave.open(str(path), "rb") as wf:
        return wf.getnframes() * 1000 / wf.getframerate()


@pytest.mark.slow
def test_node_client_streams_jfk_realtime(node: str, daemon: Daemon) -> None:
    env = {**os.environ, "NODE_NO_WARNINGS": "1"}
    try:
        run = subprocess.run(
            [node, str(EXAMPLE), str(WAV), "--realtime", "--json", "--target", daemon.target],
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            timeout=STREAM_TIMEOUT_S, check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"stream_wav.js did not finish within {STREAM_TIMEOUT_S:.0f} s; "
                    f"stdout so far:\n{exc.stdout!r}\ndaemon log:\n{daemon.log_tail()}")
    assert run.returncode == 0, (
        f"stream_wav.js exited {run.returncode}\nstderr:\n{run.stderr}\n"
        f"daemon log:\n{daemon.log_tail()}")

    events: list[dict[str, Any]] = [json.loads(line) for line in run.stdout.splitlines()
                                    if line.strip()]
    assert events, f"no events printed; stderr:\n{run.stderr}"
    types = [e["type"] for e in events]
    for e in events:  # the `alfred-daemon stream --json` shape
        assert isinstance(e["type"], str) and e["type"] != "unknown", e
        assert isinstance(e["audio_offset_ms"], int), e
        assert isinstance(e["processing_ms"], int | float), e
        assert not any(k.startswith("_") for k in e), e

    assert types[0] == "session_started", types[:5]
    started = events[0]
    assert started["session_id"] and started["resume_token"]
    assert started["effective_config"]["sample_rate_hz"] == 16_000
    assert started["effective_config"]["encoding"] == "LINEAR16"

    assert "final_transcription" in types, types
    first_final = types.index("final_transcription")
    partials = types[:first_final].count("partial_transcription")
    assert partials >= 2, f"{partials} partials before the first final: {types[:first_final]}"

    finals = [e for e in events if e["type"] == "final_transcription"]
    text = " ".join(e["text"] for e in finals)
    wer = float(jiwer.wer(norm_text(REFERENCE), norm_text(text)))
    assert wer <= 0.10, f"WER {wer:.3f}: {text!r}"

    last_final = len(types) - 1 - types[::-1].index("final_transcription")
    assert "turn_ended" in types[last_final + 1 :], types[last_final:]

    length_ms = _wav_ms(WAV)
    offsets = [(e["type"], e["audio_offset_ms"]) for e in events
               if e["type"] != "frame_processed"]
    for (prev_t, prev), (t, cur) in itertools.pairwise(offsets):
        assert cur >= prev, f"audio_offset_ms went back: {prev_t}@{prev} -> {t}@{cur}"
    for t, off in offsets:
        assert 0 <= off <= length_ms + 100, f"{t} at {off} ms, file is {length_ms:.0f} ms"

    assert types[-1] == "session_closed", types[-3:]
    assert events[-1]["reason"] == "finished", events[-1]
    assert types.count("session_closed") == 1
