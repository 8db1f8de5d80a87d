"""WebRTC ingest (WHIP) against a real daemon: ``alfred-daemon serve`` as a subprocess (2
workers, real models, bearer tokens), driven by an aiortc peer (alfred_daemon.whip_client),
by the ``alfred-daemon webrtc`` CLI, and by headless Debian Chromium on the /console page
with a fake microphone playing a speech file. Every wait is bounded.

What it shows: events arrive in order on the ``events`` channel with the WebSocket bridge's
names; the finals match the gRPC path on the same audio; DELETE delivers the last events
then closes; bad offers get their status and a sentence; a peer that vanishes is closed as
idle without disturbing a gRPC session; a burst of offers past the session limit gets 503
with Retry-After and leaves no session, shared-memory segment or thread behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import psutil
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from alfred_client import AsyncClient

from alfred_daemon.api.events_json import SPEC_NAMES
from alfred_daemon.engine.audio import read_wav
from alfred_daemon.whip_client import (
    PcmTrack,
    Received,
    WhipSession,
    connect,
    to_pcm48,
)

from ..conftest import REPO, SHARED_AUDIO
from ..grpc_helpers import (
    JFK,
    JFK_REFERENCE,
    STEADY_LADDER_ENV,
    Daemon,
    running_daemon,
    wer,
)

pytestmark = pytest.mark.slow

TOKEN = "webrtc-main-token-0123456789"
SMALL = "webrtc-small-token-9876543210"
"""A token allowed one session at a time."""
LIMIT = 4
"""processor.max_concurrent_sessions of the test daemon."""
IDLE_S = 2.0
HANDSHAKE_S = 5.0
SHM_PREFIX = f"alfwrtc{secrets.token_hex(3)}"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
EVENT_TIMEOUT_S = 30.0
ARTIFACTS = REPO / "test-artifacts"
MESSAGE_TYPES = {*SPEC_NAMES.values(), "sessionStarted", "eventsShed", "error"}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    """One daemon for the module: tokens, a session limit of 4, short WebRTC timeouts, its
    own shared-memory prefix (to look for leftovers), the ladder held at NORMAL (finals are
    compared with the gRPC path's)."""
    work = tmp_path_factory.mktemp("webrtcd")
    tokens = work / "tokens"
    tokens.write_text(f"main {TOKEN}\nsmall {SMALL} 1\n")
    env = {**STEADY_LADDER_ENV,
           "ALFRED__SECURITY__TOKENS_FILE": str(tokens),
           "ALFRED__PROCESSOR__MAX_CONCURRENT_SESSIONS": str(LIMIT),
           "ALFRED__WEBRTC__IDLE_TIMEOUT": str(IDLE_S),
           "ALFRED__WEBRTC__HANDSHAKE_TIMEOUT": str(HANDSHAKE_S),
           "ALFRED__RUNTIME__SHM_PREFIX": SHM_PREFIX}
    with running_daemon(work / "d", env=env) as d:
        yield d


def base(d: Daemon) -> str:
    return f"http://127.0.0.1:{d.http_port}"


@pytest.fixture(scope="module")
def grpc_jfk_finals(daemon: Daemon) -> list[str]:
    """The gRPC path's finals on jfk.wav (the reference the WebRTC finals are held to)."""
    return asyncio.run(grpc_finals(daemon, JFK))


async def grpc_finals(d: Daemon, wav: Path, realtime: bool = False,
                      timeout_s: float = 90.0) -> list[str]:
    finals: list[str] = []
    async with AsyncClient(d.target, token=TOKEN) as client:
        async def consume() -> None:
            async for ev in client.stream_wav(wav, realtime=realtime):
                if ev.type == "final_transcription":
                    finals.append(ev.data["text"])
                if ev.type == "session_closed":
                    assert ev.data["reason"] == "finished", ev.data
        await asyncio.wait_for(consume(), timeout_s)
    return finals


def jfk48() -> np.ndarray[Any, np.dtype[np.int16]]:
    audio, rate = read_wav(JFK)
    return to_pcm48(audio, rate)


async def pipeline(d: Daemon) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, \
            http.get(f"{base(d)}/pipeline/status", headers=AUTH) as resp:
        assert resp.status == 200, await resp.text()
        doc: dict[str, Any] = await resp.json()
        return doc


async def session_ids(d: Daemon) -> set[str]:
    return {s["sessionId"] for s in (await pipeline(d))["sessions"]}


async def wait_sessions(d: Daemon, want: int, timeout: float) -> float:
    """Poll until the daemon has ``want`` sessions; seconds it took (fails after timeout)."""
    start = time.monotonic()
    seen = -1
    for _ in range(int(timeout / 0.1) + 1):
        seen = (await pipeline(d))["pipelineState"]["sessionsActive"]
        if seen == want:
            return time.monotonic() - start
        await asyncio.sleep(0.1)
    pytest.fail(f"{seen} sessions open, not {want}, after {timeout:.0f} s:\n{d.log_tail()}")


async def collect(session: WhipSession, out: list[Received]) -> None:
    async for item in session.events(timeout=EVENT_TIMEOUT_S):
        out.append(item)


async def wait_for_message(received: list[Received], kind: str, timeout: float) -> Received:
    for _ in range(int(timeout / 0.05) + 1):
        for item in received:
            if item.message.get("type") == kind:
                return item
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind} within {timeout:.0f} s: "
                         f"{[r.message.get('type') for r in received]}")


async def whip_post(d: Daemon, body: str | bytes, *, headers: dict[str, str] | None = None,
                    params: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    async with aiohttp.ClientSession() as http, http.post(
            f"{base(d)}/whip", data=body, params=params or {},
            headers={"Content-Type": "application/sdp", **AUTH, **(headers or {})}) as resp:
        return resp.status, dict(resp.headers), await resp.text()


async def http_delete(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, \
            http.delete(url, headers=AUTH if headers is None else headers) as resp:
        return resp.status, await resp.text()


def error_message(body: str) -> str:
    message = json.loads(body)["error"]["message"]
    assert isinstance(message, str) and message and "\n" not in message, body
    return message


async def loopback_offer(*, audio: bool = True) -> str:
    """An aiortc offer (audio sendonly and/or an events channel), candidates on loopback;
    nobody will answer its checks."""
    from alfred_daemon.api.webrtc_ice import gather_on

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if audio:
            pc.addTransceiver("audio", direction="sendonly")
        pc.createDataChannel("events")
        await gather_on(pc, ["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()


def final_texts(received: list[Received]) -> list[str]:
    return [str(r.message["text"]) for r in received
            if r.message.get("type") == "finalTranscription"]


# ============================================================================ 1. aiortc peer


@pytest.mark.timeout(240)
def test_aiortc_peer_streams_speech_and_delete_closes_cleanly(  # noqa: PLR0915  (one scenario, read top to bottom)
        daemon: Daemon, grpc_jfk_finals: list[str]) -> None:
    out: dict[str, Any] = {}

    async def run() -> None:
        # A second of silence first: playback_started must be in before the speech starts.
        track = PcmTrack(np.concatenate([np.zeros(48_000, np.int16), jfk48()]))
        session = await connect(base(daemon), track, token=TOKEN)
        received: list[Received] = []
        reader = asyncio.create_task(collect(session, received))
        try:
            await asyncio.wait_for(session.channel_open.wait(), 15.0)
            started = await wait_for_message(received, "sessionStarted", 10.0)
            sid = str(started.message["sessionId"])
            out["started"] = started.message
            # The bot "speaks": the user's speech is an interruption (barge-in).
            session.control("playback_started")
            assert session.channel is not None
            session.channel.send("not a control message")
            await wait_for_message(received, "speechStart", 20.0)
            session.control("playback_stopped")
            async with aiohttp.ClientSession() as http, http.get(
                    f"{base(daemon)}/session/{sid}/status", headers=AUTH) as resp:
                out["status"] = await resp.json()
            out["table"] = [s for s in (await pipeline(daemon))["sessions"]
                            if s["sessionId"] == sid]
            for _ in range(int((track.frames * 0.02 + 30) / 0.05)):  # the file, bounded
                if track.audio_sent:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # a second of silence after the last word
            out["delete"] = await session.delete()
            await asyncio.wait_for(reader, 60.0)
            out["second_delete"] = await http_delete(session.resource)
            out["sessions_after"] = await wait_sessions(daemon, 0, 10.0)
        finally:
            reader.cancel()
            track.stop()
            await session.close()
        out["received"] = received

    asyncio.run(run())
    received: list[Received] = out["received"]
    messages = [r.message for r in received]
    types = [str(m.get("type")) for m in messages]
    summary = [f"{m.get('type')}@{m.get('audioOffsetMs')}" for m in messages
               if m.get("type") != "pipelineHealth"]

    assert out["started"]["transport"] == "webrtc" and out["started"]["sampleRate"] == 48000
    assert out["status"]["transport"] == "webrtc", out["status"]
    assert [s["transport"] for s in out["table"]] == ["webrtc"]
    assert set(types) <= MESSAGE_TYPES, set(types) - MESSAGE_TYPES
    assert types[0] == "sessionStarted", summary[:5]
    assert types[-1] == "sessionClosed" and types.count("sessionClosed") == 1, summary[-5:]
    assert messages[-1]["reason"] == "finished", messages[-1]
    assert "interruption" in types, summary
    errors = [m for m in messages if m.get("type") == "error"]
    assert len(errors) == 1 and errors[0]["code"] == "INVALID_ARGUMENT", errors
    assert "unexpected message 'not a control message'" in errors[0]["message"]
    first_final = types.index("finalTranscription")
    assert "speechStart" in types[:first_final], summary
    last_final = len(types) - 1 - types[::-1].index("finalTranscription")
    assert "turnEnd" in types[last_final + 1 :], summary
    timed = [m for m in messages if "audioOffsetMs" in m]
    for a, b in itertools.pairwise(timed):
        assert b["audioOffsetMs"] >= a["audioOffsetMs"], (
            f"audioOffsetMs went back: {a['type']}@{a['audioOffsetMs']} -> "
            f"{b['type']}@{b['audioOffsetMs']}\n{summary}")
    for m in messages:
        if m["type"] not in ("sessionStarted", "eventsShed", "error"):
            assert isinstance(m.get("processingMs"), int | float), m

    text = " ".join(final_texts(received))
    grpc_text = " ".join(grpc_jfk_finals)
    assert wer(JFK_REFERENCE, text) <= 0.10, text
    assert wer(grpc_text, text) <= 0.10, (text, grpc_text)

    assert out["delete"] == 200
    status, body = out["second_delete"]
    assert status == 404 and "no open WebRTC session" in error_message(body)


# ============================================================================ 2. bad input


@pytest.mark.timeout(180)
def test_bad_offers_get_their_status_and_a_sentence(daemon: Daemon) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    out: dict[str, Any] = {}

    async def run() -> None:
        offer = await loopback_offer()
        out["no_token"] = await whip_post(daemon, offer, headers={"Authorization": ""})
        out["wrong_token"] = await whip_post(daemon, offer,
                                             headers={"Authorization": "Bearer nope-nope"})
        out["text_plain"] = await whip_post(daemon, offer,
                                            headers={"Content-Type": "text/plain"})
        out["garbage"] = await whip_post(daemon, "hello, daemon")
        out["binary"] = await whip_post(daemon, b"\xff\xfe\x00garbage")
        out["no_audio"] = await whip_post(daemon, await loopback_offer(audio=False))
        out["bad_param"] = await whip_post(daemon, offer, params={"vad.threshold": "7"})
        out["unknown_param"] = await whip_post(daemon, offer, params={"speed": "fast"})
        out["delete_unknown"] = await http_delete(f"{base(daemon)}/whip/nope")
        out["patch"] = await whip_patch(daemon)
        # A token allowed one session: the second offer is over its limit (429); another
        # token cannot DELETE its session (404), its own can (200).
        small = {"Authorization": f"Bearer {SMALL}"}
        first = await whip_post(daemon, offer, headers=small)
        out["small_first"] = first
        out["small_second"] = await whip_post(daemon, offer, headers=small)
        where = f"{base(daemon)}{first[1].get('Location', '')}"
        out["other_token_delete"] = await http_delete(where)
        out["owner_delete"] = await http_delete(where, small)
        # "end" on the events channel finishes the session like DELETE; DELETE is then 404.
        track = PcmTrack(jfk48()[: 48_000 * 3])
        session = await connect(base(daemon), track, token=TOKEN)
        received: list[Received] = []
        reader = asyncio.create_task(collect(session, received))
        try:
            await asyncio.wait_for(session.channel_open.wait(), 15.0)
            await wait_for_message(received, "speechStart", 20.0)
            session.control("end")
            await asyncio.wait_for(reader, 60.0)
            out["after_end"] = await http_delete(session.resource)
        finally:
            reader.cancel()
            track.stop()
            await session.close()
        out["end_received"] = [r.message for r in received]
        out["settled"] = await wait_sessions(daemon, 0, 15.0)

    asyncio.run(run())
    for key in ("no_token", "wrong_token"):
        status, _, body = out[key]
        assert status == 401 and error_message(body) == "missing or invalid bearer token"
    status, _, body = out["text_plain"]
    assert status == 415 and "application/sdp" in error_message(body)
    status, _, body = out["garbage"]
    assert status == 400 and error_message(body).startswith("the body is not an SDP offer")
    status, _, body = out["binary"]
    assert status == 400 and "not UTF-8" in error_message(body)
    status, _, body = out["no_audio"]
    assert status == 400 and "the offer has no audio track" in error_message(body)
    status, _, body = out["bad_param"]
    assert status == 400 and "vad.threshold = 7.0 is out of range" in error_message(body)
    status, _, body = out["unknown_param"]
    assert status == 400 and "unknown parameter 'speed'" in error_message(body)
    status, body = out["delete_unknown"]
    assert status == 404 and "no open WebRTC session 'nope'" in error_message(body)
    status, body = out["patch"]
    assert status == 405 and "PATCH is not allowed" in error_message(body)
    assert out["small_first"][0] == 201, out["small_first"]
    assert out["small_first"][1]["Location"].startswith("/whip/")
    assert out["small_first"][1]["Content-Type"].startswith("application/sdp")
    status, _, body = out["small_second"]
    assert status == 429 and "token small holds 1 sessions" in error_message(body)
    assert out["other_token_delete"][0] == 404
    assert out["owner_delete"][0] == 200
    ended = out["end_received"]
    assert ended[-1]["type"] == "sessionClosed" and ended[-1]["reason"] == "finished", ended
    assert out["after_end"][0] == 404


async def whip_patch(d: Daemon) -> tuple[int, str]:
    """Trickle ICE (PATCH) is not supported: RFC 9725 says 405."""
    async with aiohttp.ClientSession() as http, http.patch(
            f"{base(d)}/whip/x", data="a=candidate:1", headers=AUTH) as resp:
        return resp.status, await resp.text()


# ============================================================================ 3. vanishing peers


@pytest.mark.timeout(240)
def test_a_vanished_peer_is_closed_as_idle_and_grpc_is_undisturbed(daemon: Daemon) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    out: dict[str, Any] = {}

    async def killed_cli() -> tuple[str, float]:
        """`alfred-daemon webrtc jfk.wav`, SIGKILLed 3 s into the speech: the peer vanishes
        without a word. Returns its session id and when it was killed."""
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "alfred-daemon"), "webrtc", str(JFK),
            "--url", base(daemon), cwd=REPO, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "ALFRED_TOKEN": TOKEN})
        assert proc.stdout is not None
        sid = ""
        try:
            for _ in range(200):  # bounded: the session line comes first
                line = (await asyncio.wait_for(proc.stdout.readline(), 20.0)).decode()
                found = re.search(r"session\s+([0-9a-f]{32}) \(webrtc\)", line)
                if found:
                    sid = found.group(1)
                    break
                if not line:
                    break
            assert sid, "the CLI printed no session line"
            await asyncio.sleep(3.0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(proc.wait(), 10.0)
        return sid, time.monotonic()

    async def closed_pc() -> tuple[str, float, str]:
        """An aiortc peer that closes its peer connection mid-utterance, without DELETE."""
        track = PcmTrack(jfk48())
        session = await connect(base(daemon), track, token=TOKEN)
        received: list[Received] = []
        reader = asyncio.create_task(collect(session, received))
        try:
            started = await wait_for_message(received, "sessionStarted", 15.0)
            await wait_for_message(received, "speechStart", 20.0)
            await asyncio.sleep(1.0)
        finally:
            reader.cancel()
            track.stop()
            await session.close()
        return str(started.message["sessionId"]), time.monotonic(), session.resource

    async def gone_within(sid: str, since: float, timeout: float) -> float:
        for _ in range(int(timeout / 0.1) + 1):
            if sid not in await session_ids(daemon):
                return time.monotonic() - since
            await asyncio.sleep(0.1)
        pytest.fail(f"session {sid} still open {timeout:.0f} s after its peer vanished")

    async def run() -> None:
        grpc = asyncio.create_task(grpc_finals(daemon, JFK, realtime=True))
        sid, killed = await killed_cli()
        out["killed_after"] = await gone_within(sid, killed, IDLE_S + 8.0)
        out["killed_sid"] = sid
        sid2, closed, resource = await closed_pc()
        out["closed_after"] = await gone_within(sid2, closed, IDLE_S + 8.0)
        out["closed_sid"] = sid2
        out["closed_pc_delete"] = await http_delete(resource)
        out["grpc"] = await asyncio.wait_for(grpc, 90.0)
        await wait_sessions(daemon, 0, 15.0)

    asyncio.run(run())
    log = daemon.log.read_text(errors="replace")
    for key in ("killed", "closed"):
        sid = out[f"{key}_sid"]
        assert f"session {sid} closed (idle)" in log, f"{key}: no idle close of {sid}"
    # No RTP for IDLE_S (a killed process), or ICE/DTLS closed (at once): plus a margin
    # for a busy machine three times slower than this one.
    assert out["killed_after"] <= IDLE_S + 6.0, out
    assert out["closed_after"] <= IDLE_S + 6.0, out
    assert out["closed_pc_delete"][0] == 404
    assert wer(JFK_REFERENCE, " ".join(out["grpc"])) <= 0.10, out["grpc"]


# ============================================================================ 4. a burst


def shm_segments() -> set[str]:
    return set(glob.glob(f"/dev/shm/*{SHM_PREFIX}*"))


@pytest.mark.timeout(240)
def test_a_burst_of_offers_past_the_limit_is_refused_and_leaks_nothing(
        daemon: Daemon) -> None:
    out: dict[str, Any] = {}
    proc = psutil.Process(daemon.pid)

    async def run() -> None:
        offer = await loopback_offer()
        # Warm-up: one peer made and ended and one gRPC stream, so that lazily created
        # pools are in the baseline and only what the burst leaves is counted.
        status, headers, _ = await whip_post(daemon, offer)
        assert status == 201
        await http_delete(f"{base(daemon)}{headers['Location']}")
        await grpc_finals(daemon, REPO / "tests" / "data" / "spk1_snt1.wav")
        await wait_sessions(daemon, 0, 15.0)
        out["threads_before"] = proc.num_threads()
        out["shm_before"] = shm_segments()
        grpc = asyncio.create_task(grpc_finals(daemon, JFK, realtime=True))
        await wait_sessions(daemon, 1, 15.0)
        answers = await asyncio.gather(*(whip_post(daemon, offer) for _ in range(50)))
        out["statuses"] = sorted(a[0] for a in answers)
        out["refusals"] = [(a[1].get("Retry-After"), error_message(a[2]))
                           for a in answers if a[0] == 503]
        created = [a[1]["Location"] for a in answers if a[0] == 201]
        # Half are ended by DELETE, the rest never connect: closed as idle.
        out["deletes"] = [(await http_delete(f"{base(daemon)}{where}"))[0]
                          for where in created[: len(created) // 2]]
        out["grpc"] = await asyncio.wait_for(grpc, 90.0)
        out["settled_s"] = await wait_sessions(daemon, 0, HANDSHAKE_S + 15.0)
        for _ in range(150):  # bounded: 15 s for threads and segments to go
            out["threads_after"] = proc.num_threads()
            out["shm_after"] = shm_segments()
            if out["threads_after"] <= out["threads_before"] and \
                    out["shm_after"] <= out["shm_before"]:
                break
            await asyncio.sleep(0.1)

    asyncio.run(run())
    admitted = LIMIT - 1  # the gRPC session holds one slot
    assert out["statuses"] == [201] * admitted + [503] * (50 - admitted), out["statuses"]
    for retry_after, message in out["refusals"]:
        assert retry_after is not None and int(retry_after) >= 1
        assert message.startswith("session limit reached"), message
    assert out["deletes"] == [200] * len(out["deletes"])
    assert wer(JFK_REFERENCE, " ".join(out["grpc"])) <= 0.10, out["grpc"]
    assert out["shm_after"] <= out["shm_before"], out["shm_after"] - out["shm_before"]
    assert out["threads_after"] <= out["threads_before"], (
        f"threads {out['threads_before']} -> {out['threads_after']}")


# ============================================================================ 5. browser


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (make setup installs Debian's chromium)")
    return path


LEAD_S = 4.0
"""Silence before the speech in the fake microphone's file: Chromium plays the file from
getUserMedia on, and the connection takes a moment (a second or two on a busy machine)."""


CONSOLE_SCRIPT = ("jfk.wav", "long/deepgram_preamble.wav", "long/sherpa_1221-135766-0001.wav",
                  "long/coqui_LJ001-0001.wav", "long/wenet_librispeech-1995-1837-0001.wav",
                  "long/pocketsphinx_librivox-0870.wav")
"""What the fake microphone says: 80 s of speech, 201 words, so that one word heard
differently moves the WER by half a point, not by the 4.5 points of jfk.wav's 22 words
alone (a streaming decode's finals vary by a word or two between real-time runs)."""


def fake_microphone(path: Path) -> tuple[Path, float, str]:
    """CONSOLE_SCRIPT with LEAD_S of silence before, 1.5 s between the clips and 3 s after,
    as 16-bit mono PCM WAV (what Chromium's --use-file-for-fake-audio-capture reads).
    Returns the file, the second its last word ends at, and the reference transcript."""
    manifest = {c["file"]: c["transcript"] for c in json.loads(
        (SHARED_AUDIO / "long" / "manifest.json").read_text())["utterances"]}
    rate = 16_000
    parts = [np.zeros(int(LEAD_S * rate), np.float32)]
    words = []
    for name in CONSOLE_SCRIPT:
        audio, clip_rate = read_wav(SHARED_AUDIO / name)
        assert clip_rate == rate, (name, clip_rate)
        if parts[-1].size and len(parts) > 1:
            parts.append(np.zeros(int(1.5 * rate), np.float32))
        parts.append(audio)
        words.append(JFK_REFERENCE if name == "jfk.wav" else manifest[Path(name).name])
    speech_end_s = sum(p.size for p in parts) / rate
    parts.append(np.zeros(3 * rate, np.float32))
    padded = np.concatenate(parts)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(padded, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes())
    return path, speech_end_s, " ".join(words)


async def wait_js(page: Any, expression: str, timeout_s: float) -> None:
    """Poll ``expression`` in the page until truthy (the page's CSP forbids the eval that
    Playwright's wait_for_function needs)."""
    for _ in range(int(timeout_s / 0.1) + 1):
        if await page.evaluate(expression):
            return
        await asyncio.sleep(0.1)
    state = await page.evaluate("JSON.stringify(window.alfredConsole)")
    raise AssertionError(f"{expression} still false after {timeout_s:.0f} s; page: {state}")


@pytest.mark.timeout(300)
def test_console_in_headless_chromium(daemon: Daemon, tmp_path: Path) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    """/console with Chromium's fake microphone playing 80 s of speech: the page shows the
    finals and an end of turn; their WER is within 2 points of the gRPC path hearing the
    same file at the same time."""
    from playwright.async_api import async_playwright

    browser_path = chromium()
    wav, speech_end_s, reference = fake_microphone(tmp_path / "fake-mic.wav")
    shot = tmp_path / "console.png"
    out: dict[str, Any] = {}

    async def run() -> None:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=browser_path, args=[
                "--no-sandbox", "--use-fake-ui-for-media-stream",
                "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-audio-capture={wav}%noloop",
                # The daemon offers loopback candidates only (webrtc.host): Chromium leaves
                # the loopback interface out of ICE unless told.
                "--allow-loopback-in-peer-connection"])
            try:
                page = await browser.new_page(viewport={"width": 1300, "height": 900})
                page.on("console", lambda msg: out.setdefault("console", []).append(msg.text))
                await page.goto(f"{base(daemon)}/console#token={TOKEN}")
                await page.click("#start")
                # The gRPC path hears the same file at the same pace at the same time, so
                # both see the same load: only the transport differs.
                grpc_path = asyncio.create_task(grpc_finals(
                    daemon, wav, realtime=True, timeout_s=speech_end_s + 60.0))
                await wait_js(page, "window.alfredConsole.sessionId !== null", 30.0)
                out["session"] = await page.evaluate("window.alfredConsole.sessionId")
                out["table"] = [s["transport"] for s in (await pipeline(daemon))["sessions"]
                                if s["sessionId"] == out["session"]]
                # The speech plays out, its last final comes, then an end of turn: the
                # transcript's last line is a turn end.
                await asyncio.sleep(speech_end_s + 3.0)
                await wait_js(page, "window.alfredConsole.finals.length > 0 && "
                                    "document.querySelector('#transcript li:last-child')"
                                    "?.className === 'turn'", 30.0)
                await page.click("#bot")  # bot speaking on, then off: both go out
                await page.click("#bot")
                out["transcript_text"] = await page.text_content("#transcript")
                await page.screenshot(path=str(shot), full_page=True)
                await page.click("#stop")
                await wait_js(page, "window.alfredConsole.closed !== null", 40.0)
                out["state"] = json.loads(await page.evaluate(
                    "JSON.stringify(window.alfredConsole)"))
                out["log"] = await page.text_content("#log")
            finally:
                await browser.close()
        out["grpc"] = await grpc_path
        await wait_sessions(daemon, 0, 15.0)

    asyncio.run(run())
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "console.png")
    extra = os.environ.get("ALFRED_ARTIFACTS")
    if extra:
        Path(extra).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(extra) / "console.png")
    state = out["state"]
    assert out["table"] == ["webrtc"], out
    assert state["closed"] == "finished", state
    assert state["error"] is None, state
    assert state["finals"] and state["turns"], state
    assert all(f in out["transcript_text"] for f in state["finals"])
    assert "end of turn" in out["transcript_text"]
    assert "sent playback_started" in out["log"] and "sent playback_stopped" in out["log"]
    page_wer = wer(reference, " ".join(state["finals"]))
    grpc_wer = wer(reference, " ".join(out["grpc"]))
    print(f"console WER {page_wer:.3f} vs gRPC {grpc_wer:.3f}; screenshot {shot}")
    assert page_wer <= grpc_wer + 0.02, (state["finals"], out["grpc"])
    assert shot.stat().st_size > 10_000
