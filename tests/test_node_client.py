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
import subprocess
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import REPO
from .grpc_helpers import Daemon, running_daemon, wer

NODE_DIR = REPO / "clients" / "node"
EXAMPLE = NODE_DIR / "examples" / "stream_wav.js"
WAV = REPO / "tests" / "data" / "jfk.wav"
REFERENCE = ("And so my fellow Americans, ask not what your country can do for you, "
             "ask what you can do for your country.")
STREAM_TIMEOUT_S = 120.0


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    """A real daemon for this test; it must exit 0 on SIGTERM and leave no process behind
    (tests/grpc_helpers.py, shared with the Python client's tests)."""
    with running_daemon(tmp_path) as d:
        yield d


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
    error = wer(REFERENCE, text)
    assert error <= 0.10, f"WER {error:.3f}: {text!r}"

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


@pytest.mark.slow
def test_node_client_sends_its_token(node: str, tmp_path: Path) -> None:
    """With tokens required, the client without one gets UNAUTHENTICATED; with ALFRED_TOKEN
    (the example passes it as {token}) it streams."""
    token = "node-client-token-0123456789"
    tokens = tmp_path / "tokens"
    tokens.write_text(f"node {token}\n")
    runs: dict[str, subprocess.CompletedProcess[str]] = {}
    with running_daemon(tmp_path / "d",
                        env={"ALFRED__SECURITY__TOKENS_FILE": str(tokens)}) as d:
        for name, extra in (("none", {}), ("token", {"ALFRED_TOKEN": token})):
            env = {k: v for k, v in os.environ.items() if k != "ALFRED_TOKEN"}
            runs[name] = subprocess.run(
                [node, str(EXAMPLE), str(WAV), "--json", "--no-partials", "--target", d.target],
                cwd=REPO, env={**env, "NODE_NO_WARNINGS": "1", **extra},
                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                timeout=STREAM_TIMEOUT_S, check=False)
    assert runs["none"].returncode == 1, runs["none"]
    assert "UNAUTHENTICATED" in runs["none"].stderr
    assert runs["token"].returncode == 0, runs["token"].stderr
    types = [json.loads(line)["type"] for line in runs["token"].stdout.splitlines() if line]
    assert types[0] == "session_started" and "final_transcription" in types
