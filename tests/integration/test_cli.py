"""The ``transcribe`` and ``stream`` commands with files people actually have: formats the CLI
converts (float, 8/24-bit, stereo, 22.05 kHz) must transcribe, and the ones it cannot use
(FLAC, text, empty, missing...) must get one ``alfred-daemon: ...`` sentence and exit code 2,
never a traceback. Also: a daemon that is not running, a daemon's refusal reaching the user
intact, and ``--help`` texts.

The commands run as subprocesses (``.venv/bin/alfred-daemon``), as a user runs them. Bad files
fail before any model loads, so only the conversions are slow; the converted clips are short.
"""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import soxr
from alfred_client import AsyncClient, StreamError

from alfred_daemon import cli
from alfred_daemon.engine.audio import read_wav

from ..conftest import REPO
from ..grpc_helpers import JFK, STEADY_LADDER_ENV, Daemon, free_port, running_daemon

EXE = Path(sys.executable).parent / "alfred-daemon"
CLIP_S = 2.6
"""JFK's first utterance ("And so my fellow Americans") ends at 2.24 s."""
CONVERTED = ["float32", "pcm24", "pcm8", "stereo", "rate22050"]
RUN_TIMEOUT_S = 120.0


# ----------------------------------------------------------------------------- files


def write_wav(path: Path, frames: bytes, *, width: int, channels: int = 1,
              rate: int = 16_000) -> Path:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(width)
        wf.setframerate(rate)
        wf.writeframes(frames)
    return path


def write_float_wav(path: Path, audio: npt.NDArray[np.float32], rate: int = 16_000) -> Path:
    """WAVE_FORMAT_IEEE_FLOAT (3), which the ``wave`` module cannot write."""
    data = audio.astype("<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    riff = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    riff += b"data" + struct.pack("<I", len(data)) + data
    path.write_bytes(b"RIFF" + struct.pack("<I", len(riff)) + riff)
    return path


@pytest.fixture(scope="module")
def clip() -> npt.NDArray[np.float32]:
    audio, rate = read_wav(JFK)
    assert rate == 16_000
    return audio[: int(CLIP_S * rate)]


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory,
              clip: npt.NDArray[np.float32]) -> dict[str, Path]:
    """The same speech in each format the CLI converts on the client side."""
    d = tmp_path_factory.mktemp("converted")
    peak = float(np.max(np.abs(clip)))
    pcm24 = (np.clip(clip, -1.0, 1.0) * (2**23 - 1)).astype("<i4")
    pcm8 = np.round(clip / peak * 0.9 * 127.0 + 128.0).astype(np.uint8)
    pcm16 = (np.clip(clip, -1.0, 1.0) * 32767).astype("<i2")
    at_22k = np.asarray(soxr.resample(clip, 16_000, 22_050), dtype=np.float32)
    return {
        "float32": write_float_wav(d / "float32.wav", clip),
        "pcm24": write_wav(d / "pcm24.wav", pcm24.view(np.uint8).reshape(-1, 4)[:, :3].tobytes(),
                           width=3),
        "pcm8": write_wav(d / "pcm8.wav", pcm8.tobytes(), width=1),
        "stereo": write_wav(d / "stereo.wav", np.stack([pcm16, pcm16 // 2], axis=1).tobytes(),
                            width=2, channels=2),
        "rate22050": write_wav(d / "rate22050.wav",
                               (np.clip(at_22k, -1.0, 1.0) * 32767).astype("<i2").tobytes(),
                               width=2, rate=22_050),
    }


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Files neither command can use, with a phrase their one sentence must contain."""
    d = tmp_path_factory.mktemp("bad")
    (d / "song.flac").write_bytes(b"fLaC\x00\x00\x00\x22" + bytes(64))
    (d / "notes.txt").write_text("this is a transcript, not audio\n")
    (d / "empty.wav").write_bytes(b"")
    (d / "folder.wav").mkdir()
    (d / "cut.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVE")  # header of a cut-off download
    alaw = struct.pack("<HHIIHH", 6, 1, 8000, 8000, 1, 8)
    (d / "alaw.wav").write_bytes(b"RIFF" + struct.pack("<I", 4 + 8 + 16 + 8 + 80) + b"WAVE"
                                 + b"fmt " + struct.pack("<I", 16) + alaw
                                 + b"data" + struct.pack("<I", 80) + bytes(80))
    return {
        "flac": (d / "song.flac", "is a FLAC file, not WAV; convert it with `sox"),
        "text": (d / "notes.txt", "is a text file, not audio"),
        "empty": (d / "empty.wav", "is empty (0 bytes)"),
        "missing": (d / "missing.wav", "does not exist"),
        "directory": (d / "folder.wav", "is a directory"),
        "truncated": (d / "cut.wav", "is a damaged WAV file"),
        "alaw": (d / "alaw.wav", "is 8-bit A-law (format tag 6) WAV; alfred-daemon reads"),
    }


# ----------------------------------------------------------------------------- helpers


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([str(EXE), *args], cwd=REPO, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"alfred-daemon {' '.join(args)} did not finish in {RUN_TIMEOUT_S:.0f} s; "
                    f"stderr so far: {exc.stderr!r}")


def one_sentence(run: subprocess.CompletedProcess[str]) -> str:
    """The single ``alfred-daemon: ...`` line a bad input must give, with exit code 2."""
    assert "Traceback" not in run.stderr, run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{run.stderr}"
    assert lines[0].startswith("alfred-daemon: "), lines[0]
    assert run.returncode == 2, f"exit code {run.returncode}: {lines[0]}"
    assert run.stdout == "", run.stdout
    return lines[0]


def finals(run: subprocess.CompletedProcess[str]) -> list[str]:
    assert run.returncode == 0, f"exit code {run.returncode}\nstderr:\n{run.stderr}"
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
    return [r["text"] for r in rows if r["type"] == "final_transcription"]


def unused_target() -> str:
    """A loopback port nobody listens on: a stream that got this far would fail visibly."""
    return f"127.0.0.1:{free_port()}"


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("command", ["transcribe", "stream"])
@pytest.mark.parametrize("kind", ["flac", "text", "empty", "missing", "directory", "truncated",
                                  "alaw"])
def test_bad_file_is_one_sentence(bad: dict[str, tuple[Path, str]], kind: str,
                                  command: str) -> None:
    path, phrase = bad[kind]
    extra = ["--target", unused_target()] if command == "stream" else []
    line = one_sentence(run_cli(command, str(path), *extra))
    assert str(path) in line, line
    assert phrase in line, line


def test_daemon_not_running_says_how_to_start_it() -> None:
    target = unused_target()
    line = one_sentence(run_cli("stream", str(JFK), "--target", target))
    assert f"no daemon answered at {target} (connection refused)" in line, line
    assert "`alfred-daemon serve`" in line and "`make run`" in line, line


def test_daemon_refusal_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    """A status the daemon ends a stream with reaches the user as its own sentence."""
    details = "sample rate 22050 Hz is not supported; use one of 8000, 16000"
    exc = StreamError(grpc.StatusCode.INVALID_ARGUMENT, details, target="127.0.0.1:50051")
    assert cli._stream_failed(exc, heard=False) == 2
    err = capsys.readouterr().err
    assert err == (f"alfred-daemon: the daemon refused the stream: INVALID_ARGUMENT: "
                   f"{details}\n")
    busy = StreamError(grpc.StatusCode.RESOURCE_EXHAUSTED, "daemon is overloaded")
    assert cli._stream_failed(busy, heard=False) == 1  # nothing for the user to fix
    assert capsys.readouterr().err == ("alfred-daemon: the daemon refused the stream: "
                                       "RESOURCE_EXHAUSTED: daemon is overloaded\n")


# ----------------------------------------------------------------------------- help


def test_help_explains_file_and_no_partials(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["transcribe"], ["stream"]):
        with pytest.raises(SystemExit) as done:
            cli.main([*argv, "--help"])
        assert done.value.code == 0
        out = " ".join(capsys.readouterr().out.split())  # wrapping follows $COLUMNS
        assert "``" not in out, out  # RST markup from a docstring
        if argv:
            assert "file the audio to" in out and "a WAV file (8/16/24/32-bit" in out, out
            assert "--no-partials ask the daemon for no partial" in out or (
                "--no-partials no partial transcriptions" in out), out
            assert "the part before | is settled" in out and "(477 ms)` is" in out, out


# ----------------------------------------------------------------------------- conversions


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", CONVERTED)
def test_transcribe_converts(converted: dict[str, Path], kind: str) -> None:
    texts = finals(run_cli("transcribe", str(converted[kind]), "--json", "--no-partials",
                           "--no-turn"))
    assert any("fellow" in t.lower() for t in texts), texts


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """The gRPC tests' real daemon (grpc_helpers.running_daemon), with one worker: these
    streams are short and sequential. Back-to-back faster-than-real-time streams would
    otherwise push its backpressure ladder up until it refuses sessions as overloaded."""
    with running_daemon(tmp_path_factory.mktemp("clid"), workers=1,
                        env=STEADY_LADDER_ENV) as d:
        yield d


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", CONVERTED)
def test_stream_converts(daemon: Daemon, converted: dict[str, Path], kind: str) -> None:
    texts = finals(run_cli("stream", str(converted[kind]), "--json", "--no-partials",
                           "--target", daemon.target))
    assert any("fellow" in t.lower() for t in texts), f"{texts}\n{daemon.log_tail()}"


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_client_keeps_the_daemons_status(daemon: Daemon) -> None:
    """The daemon rejects a 22.05 kHz session while the client is already sending audio.
    grpc.aio used to replace that INVALID_ARGUMENT with "INTERNAL: Internal error from Core"
    in most such calls (grpc/grpc#36066), so this tries several."""

    async def once() -> StreamError | None:
        async with AsyncClient(daemon.target) as client:
            try:
                async for _ in client.stream_pcm(bytes(2 * 22_050 * 3), 22_050):
                    pass
            except StreamError as exc:
                return exc
        return None

    async def run() -> list[StreamError | None]:
        return [await once() for _ in range(10)]

    for exc in asyncio.run(asyncio.wait_for(run(), 60)):
        assert exc is not None, "a 22.05 kHz session was accepted"
        assert exc.code == grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        assert "sample rate 22050 Hz is not supported" in exc.details, str(exc)
        assert not exc.unreachable
