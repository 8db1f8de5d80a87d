"""Runs inside .venv-livekit (LiveKit Agents + alfred-client[livekit]), for
tests/integration/test_livekit_plugin.py: feeds WAV files and silences as 10 ms
``rtc.AudioFrame``s at real-time pace (at 48 kHz, a room's rate) into
``alfred_client.livekit.STT().stream()`` against a live daemon and prints one JSON document: the
LiveKit ``SpeechEvent``s in the
order the stream yielded them, the daemon's own events (the STT's ``event_hook``),
``STT.recognize`` over the same audio, the reopen and error cases, and what the example
agent builds.

    python livekit_driver.py TARGET EXAMPLE.py IDLE_WAIT_S ITEM...
        (ITEM: a .wav path or seconds of silence, e.g. 4.0; the first .wav and its silence
        also make the reopen case, with IDLE_WAIT_S of no audio first)
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import time
import wave
from typing import Any

from alfred_client import Event, SessionOptions
from alfred_client.livekit import STT
from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, stt

RATE = 16_000
ROOM_RATE = 48_000
"""What a LiveKit room's audio stream delivers (the STT resamples it to 16 kHz)."""
FRAME_SAMPLES = RATE // 100
"""10 ms frames, as a room delivers them."""
DRAIN_TIMEOUT_S = 30.0


def load_audio(items: list[str]) -> bytes:
    pcm = bytearray()
    for item in items:
        if item.endswith(".wav"):
            with wave.open(item, "rb") as wf:
                assert (wf.getframerate(), wf.getnchannels(), wf.getsampwidth()) == (RATE, 1, 2)
                pcm += wf.readframes(wf.getnframes())
        else:
            pcm += bytes(2 * int(float(item) * RATE))
    return bytes(pcm)


async def example_summary(path: str) -> dict[str, Any]:
    """Import the example agent and build its session (no LiveKit server, no keys; in a
    running event loop, as a LiveKit job does)."""
    spec = importlib.util.spec_from_file_location("livekit_agent_example", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    session = module.build_session("127.0.0.1:1")
    return {"stt": type(session.stt).__module__ + "." + type(session.stt).__name__,
            "turn_detection": session.turn_detection, "vad": session.vad is not None}


async def run(target: str, pcm: bytes) -> dict[str, Any]:
    t0 = time.monotonic()
    daemon: list[dict[str, Any]] = []

    def hook(ev: Event) -> None:
        daemon.append({"t": round(time.monotonic() - t0, 3), **ev.to_dict()})

    plugin = STT(target, event_hook=hook)
    stream = plugin.stream()
    events: list[dict[str, Any]] = []

    async def feed() -> None:
        await _push(stream, to_room_rate(pcm), ROOM_RATE)
        stream.end_input()

    async def consume() -> None:
        async for ev in stream:
            alt = ev.alternatives[0] if ev.alternatives else None
            events.append({
                "t": round(time.monotonic() - t0, 3), "type": ev.type.value,
                "text": alt.text if alt else None,
                "start_time": alt.start_time if alt else None,
                "end_time": alt.end_time if alt else None,
                "language": str(alt.language) if alt else None,
                "speech_start_time": ev.speech_start_time,
                "speech_end_time": ev.speech_end_time, "created_at": ev.created_at,
                "request_id": ev.request_id})

    feeder = asyncio.create_task(feed())
    await asyncio.wait_for(consume(), len(pcm) / 2 / RATE + DRAIN_TIMEOUT_S)
    await feeder
    await stream.aclose()

    # STT.recognize (non-streaming) over the same audio in one buffer.
    streamed, daemon[:] = list(daemon), []
    frame = rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2)
    batch = await plugin.recognize(frame)
    await plugin.aclose()
    return {"events": events, "daemon": streamed, "recognize_daemon": daemon,
            "recognize": {"type": batch.type.value, "text": batch.alternatives[0].text}}


def to_room_rate(pcm: bytes) -> bytes:
    """16 kHz PCM at 48 kHz (LiveKit's own resampler), as a room would carry it."""
    resampler = rtc.AudioResampler(RATE, ROOM_RATE, quality=rtc.AudioResamplerQuality.HIGH)
    frames = [*resampler.push(rtc.AudioFrame(pcm, RATE, 1, len(pcm) // 2)),
              *resampler.flush()]
    return b"".join(bytes(f.data) for f in frames)


async def _push(stream: stt.RecognizeStream, pcm: bytes, rate: int = RATE) -> None:
    """``pcm`` as 10 ms frames at real-time pace."""
    step = 2 * rate // 100
    frames = [pcm[i : i + step] for i in range(0, len(pcm), step)]
    start = time.monotonic()
    for k, chunk in enumerate(frames):
        stream.push_frame(rtc.AudioFrame(chunk, rate, 1, len(chunk) // 2))
        await asyncio.sleep(max(0.0, start + (k + 1) * 0.01 - time.monotonic()))


async def reopen_case(target: str, pcm: bytes, idle_wait_s: float) -> dict[str, Any]:
    """A stream that gets no audio for ``idle_wait_s`` (no session may be opened: the daemon
    would close it), then 0.5 s of silence (a session, which the daemon closes as idle),
    then ``pcm``: a new session must carry it."""
    daemon: list[dict[str, Any]] = []
    plugin = STT(target, event_hook=lambda ev: daemon.append(ev.to_dict()))
    stream = plugin.stream()
    events: list[dict[str, Any]] = []

    async def consume() -> None:
        async for ev in stream:
            alt = ev.alternatives[0] if ev.alternatives else None
            events.append({"type": ev.type.value, "text": alt.text if alt else None,
                           "request_id": ev.request_id})

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(idle_wait_s)
    sessions_before_audio = sum(ev["type"] == "session_started" for ev in daemon)
    await _push(stream, bytes(2 * RATE // 2))
    for _ in range(int(DRAIN_TIMEOUT_S / 0.1)):
        if any(ev["type"] == "session_closed" for ev in daemon):
            break
        await asyncio.sleep(0.1)
    await _push(stream, pcm)
    stream.end_input()
    await asyncio.wait_for(consumer, DRAIN_TIMEOUT_S)
    await stream.aclose()
    await plugin.aclose()
    return {"sessions_before_audio": sessions_before_audio, "events": events,
            "closed": [ev["reason"] for ev in daemon if ev["type"] == "session_closed"],
            "started": sum(ev["type"] == "session_started" for ev in daemon)}


async def error_cases(target: str) -> dict[str, Any]:
    """What LiveKit's retry makes of the plugin's errors (``max_retry=2``): a daemon that
    cannot be reached is retried, a session config the daemon refuses is not."""
    out: dict[str, Any] = {}
    cases = (("unreachable", "127.0.0.1:1", SessionOptions()),
             ("refused", target, SessionOptions(vad_threshold=0.01)))
    for name, where, options in cases:
        plugin = STT(where, options=options)
        errors: list[dict[str, Any]] = []

        def on_error(err: stt.STTError, errors: list[dict[str, Any]] = errors) -> None:
            errors.append({"error": type(err.error).__name__, "recoverable": err.recoverable,
                           "status_code": getattr(err.error, "status_code", None)})

        plugin.on("error", on_error)
        stream = plugin.stream(conn_options=APIConnectOptions(
            max_retry=2, retry_interval=0.1, timeout=5.0))

        async def feed(stream: stt.RecognizeStream = stream) -> None:
            """Silence, as a room sends it, until the stream gives up (bounded: 10 s)."""
            silence = rtc.AudioFrame(bytes(2 * FRAME_SAMPLES), RATE, 1, FRAME_SAMPLES)
            for _ in range(1000):
                try:
                    stream.push_frame(silence)
                except RuntimeError:  # the stream has closed
                    return
                await asyncio.sleep(0.01)

        feeder = asyncio.create_task(feed())
        raised = None
        try:
            await asyncio.wait_for(_drain(stream), DRAIN_TIMEOUT_S)
        except APIError as exc:
            raised = type(exc).__name__
        feeder.cancel()
        await stream.aclose()
        await plugin.aclose()
        out[name] = {"errors": errors, "raised": raised}
    return out


async def _drain(stream: stt.RecognizeStream) -> None:
    async for _ in stream:
        pass


def main() -> None:
    target, example, idle_wait, *items = sys.argv[1:]
    out = asyncio.run(run(target, load_audio(items)))
    out["reopen"] = asyncio.run(reopen_case(target, load_audio(items[:2]), float(idle_wait)))
    out["errors"] = asyncio.run(error_cases(target))
    out["example"] = asyncio.run(example_summary(example))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
