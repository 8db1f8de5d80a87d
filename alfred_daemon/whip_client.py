"""A WHIP client on aiortc: ``alfred-daemon webrtc FILE.wav``, and the WebRTC peer of the
tests and of ``benchmarks/webrtc_bench.py``.

It does what a browser does: offers one audio track (Opus) and an ``events`` data
channel, POSTs the offer to ``/whip``, reads the daemon's JSON events from the channel
(the WebSocket bridge's messages) and ends with ``DELETE`` on the resource, which
delivers the last finals and turn end before ``sessionClosed``. Audio comes from
:class:`PcmTrack`: a 48 kHz array played out in 20 ms Opus packets at real-time pace, then
silence, as a microphone would go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import json
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import numpy as np
import numpy.typing as npt
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.codecs.opus import OpusEncoder
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame
from av.packet import Packet
from yarl import URL

from .api.events_json import SPEC_NAMES
from .api.webrtc_ice import gather_on, is_loopback

RATE = 48_000
FRAME_S = 0.02
FRAME_SAMPLES = int(RATE * FRAME_S)
HTTP_TIMEOUT_S = 15.0
CLOSE_TIMEOUT_S = 5.0


class WhipError(Exception):
    """The daemon refused (an HTTP status and its sentence) or could not be reached
    (``status`` 0). ``retry_after``: the 503's Retry-After, in seconds."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class PcmTrack(MediaStreamTrack):
    """``pcm`` (mono int16 at 48 kHz) as 20 ms Opus packets, frame ``k`` released at
    ``t0 + k * 20 ms`` (``t0``: the first request, when the sender starts), then silence
    until stopped: a live source never runs dry while the session is finishing.

    The track encodes each frame itself, with aiortc's encoder and its settings, before
    the frame is due, and hands the sender the packet. Left to the sender, every frame
    would go through a thread pool to be encoded after it is due and through aiortc's
    audio-level meter (pure Python, ~0.25 ms a frame): a thread hop in each frame's
    latency. ``encode_ahead`` encodes the whole of ``pcm`` at construction instead (~0.25 ms
    a frame, so ~0.7 s a minute): a benchmark's clients share the daemon's cores, and a
    browser encodes on its own machine.
    """

    kind = "audio"

    def __init__(self, pcm: npt.NDArray[np.int16], *, encode_ahead: bool = False) -> None:
        super().__init__()
        self.pcm = pcm
        self.t0: float | None = None
        """time.monotonic() at which frame 0 was due (None until the sender starts)."""
        self.sent = 0
        self.late_max_s = 0.0
        """The most a frame was handed over after its due time (this process's own lag)."""
        self._encoder = OpusEncoder()
        self._packets = ([self._encode(k) for k in range(self.frames)] if encode_ahead
                         else [])
        """Frames 0.. encoded ahead; the rest are encoded as they are requested."""

    @property
    def frames(self) -> int:
        """Frames of audio (before the silence)."""
        return -(-len(self.pcm) // FRAME_SAMPLES)

    def due(self, k: int) -> float:
        """When frame ``k`` was (or will be) handed to the sender, monotonic seconds."""
        assert self.t0 is not None, "the track has not started"
        return self.t0 + k * FRAME_S

    @property
    def audio_sent(self) -> bool:
        return self.sent >= self.frames

    async def recv(self) -> Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        if self.t0 is None:
            self.t0 = time.monotonic()
        k = self.sent
        packet = self._packets[k] if k < len(self._packets) else self._encode(k)
        await asyncio.sleep(max(0.0, self.due(k) - time.monotonic()))
        self.late_max_s = max(self.late_max_s, time.monotonic() - self.due(k))
        self.sent += 1
        return packet

    def _encode(self, k: int) -> Packet[Any]:
        """Frame ``k`` (silence past the end) as one Opus packet stamped at its place."""
        chunk = self.pcm[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]
        if len(chunk) < FRAME_SAMPLES:
            chunk = np.concatenate([chunk, np.zeros(FRAME_SAMPLES - len(chunk), np.int16)])
        frame = AudioFrame.from_ndarray(chunk.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = k * FRAME_SAMPLES
        frame.time_base = fractions.Fraction(1, RATE)
        # libopus returns one packet per 20 ms frame given one (no look-ahead buffering).
        packets = [p for f in self._encoder.resampler.resample(frame)
                   for p in self._encoder.codec.encode(f)]
        if len(packets) != 1:
            raise RuntimeError(f"the Opus encoder gave {len(packets)} packets for a frame")
        packet = packets[0]
        packet.pts = k * FRAME_SAMPLES
        packet.time_base = frame.time_base
        return packet


@dataclass
class Received:
    """One message of the events channel and when it arrived (monotonic seconds)."""

    at: float
    message: dict[str, Any]


@dataclass
class WhipSession:
    """One WHIP session: the peer connection, the resource URL, the events received."""

    pc: RTCPeerConnection
    url: str
    resource: str
    headers: dict[str, str]
    queue: asyncio.Queue[Received] = field(default_factory=asyncio.Queue)
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once ``sessionClosed`` arrived."""
    channel: RTCDataChannel | None = None

    async def events(self, timeout: float) -> AsyncIterator[Received]:
        """The channel's messages until ``sessionClosed`` (included), each within
        ``timeout`` seconds of the previous one (TimeoutError otherwise)."""
        for _ in range(1_000_000):  # bounded: a day of events at 10 a second
            item = await asyncio.wait_for(self.queue.get(), timeout)
            yield item
            if item.message.get("type") == "sessionClosed":
                return

    def control(self, action: str) -> None:
        """A control message (``playback_started``, ``force_end_of_turn``, ...) or, with
        ``action == "end"``, the end of input."""
        message = {"type": "end"} if action == "end" else {"type": "control",
                                                            "action": action}
        assert self.channel is not None, "the session was opened without an events channel"
        self.channel.send(json.dumps(message))

    async def delete(self) -> int:
        """DELETE the resource: the session's last events follow on the channel. Returns
        the HTTP status (200, or 404 once it has ended)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(HTTP_TIMEOUT_S * 4)) \
                as http, http.delete(self.resource, headers=self.headers) as resp:
            await resp.read()
            return resp.status

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.pc.close(), CLOSE_TIMEOUT_S)


def _host_addresses(url: str) -> list[str] | None:
    """Where to gather host candidates to reach the daemon at ``url``: loopback for a
    loopback daemon (aioice leaves loopback out, and nothing else is needed), else every
    interface (None: aioice's own choice)."""
    host = urlsplit(url).hostname or ""
    if not is_loopback(host):
        return None
    return ["::1"] if host == "::1" else ["127.0.0.1"]


async def connect(base_url: str, track: MediaStreamTrack, *,
                  params: Mapping[str, str] | None = None, token: str | None = None,
                  events_channel: bool = True) -> WhipSession:
    """Offer ``track`` (and an ``events`` channel) to ``base_url``'s ``/whip``; returns
    once the answer is applied (the media connect in the background). WhipError if the
    daemon refuses or cannot be reached."""
    url = base_url.rstrip("/") + "/whip"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # No ICE servers: aiortc's default is a public STUN server, never wanted here.
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        pc.addTransceiver(track, direction="sendonly")
        channel = pc.createDataChannel("events") if events_channel else None
        addresses = _host_addresses(url)
        if addresses is not None:
            await gather_on(pc, addresses)
        await pc.setLocalDescription(await pc.createOffer())
        try:
            async with aiohttp.ClientSession(
                    timeout=aiohttp.ClientTimeout(HTTP_TIMEOUT_S)) as http, \
                    http.post(url, data=pc.localDescription.sdp, params=params or {},
                              headers={**headers, "Content-Type": "application/sdp"}) as resp:
                body = await resp.text()
                if resp.status != 201:
                    raise WhipError(resp.status, _sentence(body, resp.status),
                                    _retry_after(resp.headers.get("Retry-After")))
                location = resp.headers.get("Location", "")
        except aiohttp.ClientError as exc:
            raise WhipError(0, f"no daemon answered at {url} ({exc})") from None
        except TimeoutError:
            raise WhipError(0, f"no answer from {url} within {HTTP_TIMEOUT_S:g} s") from None
        session = WhipSession(pc, url, str(URL(url).join(URL(location))), headers,
                              channel=channel)
        if channel is not None:
            ready = session
            channel.on("open", ready.channel_open.set)
            channel.on("message", lambda raw: _received(ready, raw))
        await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
        return session
    except BaseException:
        await pc.close()
        raise


def _received(session: WhipSession, raw: str | bytes) -> None:
    try:
        message = json.loads(raw)
    except (ValueError, TypeError):
        message = {"type": "unreadable", "raw": repr(raw)[:200]}
    if not isinstance(message, dict):
        message = {"type": "unreadable", "raw": repr(raw)[:200]}
    session.queue.put_nowait(Received(time.monotonic(), message))
    if message.get("type") == "sessionClosed":
        session.closed_event.set()


def _sentence(body: str, status: int) -> str:
    """The daemon's error sentence from a JSON error body, or the status."""
    with contextlib.suppress(ValueError, TypeError, AttributeError):
        message = json.loads(body)["error"]["message"]
        if isinstance(message, str):
            return message
    return f"HTTP {status}"


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def to_pcm48(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.int16]:
    """Mono float32 audio at ``rate`` as int16 at 48 kHz (soxr, high quality)."""
    import soxr

    if rate != RATE:
        audio = np.asarray(soxr.resample(audio, rate, RATE, quality="HQ"), np.float32)
    return (np.clip(audio, -1.0, 1.0 - 1.0 / 32768.0) * 32768.0).astype(np.int16)


async def play(base_url: str, track: PcmTrack, *, show: Callable[[dict[str, Any]], None],
               params: Mapping[str, str] | None = None, token: str | None = None,
               tail_s: float = 1.0) -> str | None:
    """``alfred-daemon webrtc``: offer ``track``, show each message of the events channel,
    play the track's audio at real-time pace and ``tail_s`` of silence, then DELETE and
    show the session's last events. Returns sessionClosed's reason (None if none came).
    WhipError if refused; TimeoutError if the daemon goes 30 s without an event."""
    session = await connect(base_url, track, params=params, token=token)
    closed: dict[str, Any] = {}

    async def printer() -> None:
        async for item in session.events(timeout=30.0):
            show(item.message)
            if item.message.get("type") == "sessionClosed":
                closed.update(item.message)

    async def player() -> None:
        # The file at real-time pace, then silence: a live source goes on after the last
        # word, so its final comes as it would mid-call.
        limit = track.frames * FRAME_S + tail_s + 60.0
        for _ in range(int(limit / 0.05)):
            if track.audio_sent:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(tail_s)

    reading = asyncio.create_task(printer())
    playing = asyncio.create_task(player())
    try:
        await asyncio.wait({reading, playing}, return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():
            await session.delete()
            await asyncio.wait_for(reading, 60.0)
        reading.result()  # a timeout waiting for events surfaces here
    finally:
        playing.cancel()
        reading.cancel()
        track.stop()
        await session.close()
    reason = closed.get("reason")
    return None if reason is None else str(reason)


def human_line(message: dict[str, object]) -> str | None:
    """One event of the browser protocol (WebRTC's events channel) as `stream` prints its
    events; None for the periodic ones (shown with --json)."""
    kind = str(message.get("type", "?"))
    offset = message.get("audioOffsetMs")
    t = f"[{offset / 1000:7.2f}s]" if isinstance(offset, int | float) else " " * 10
    text = str(message.get("text", ""))
    if kind == "partialTranscription":
        stable = str(message.get("stableText", ""))
        return f"{t} partial   {stable}|{text[len(stable):]}"
    if kind == "finalTranscription":
        ms = message.get("processingMs")
        return f"{t} final     {text}   ({ms if isinstance(ms, int | float) else 0:.0f} ms)"
    if kind == "turnEnd":
        p = message.get("probability")
        shown = f"{p:.2f}" if isinstance(p, int | float) else "-"
        return f"{t} turn end  {message.get('reason')} p={shown}: {message.get('transcript', '')}"
    if kind in ("pipelineHealth", "frameProcessed"):
        return None
    if kind == "sessionStarted":
        return f"{t} session   {message.get('sessionId')} ({message.get('transport')})"
    if kind == "sessionClosed":
        return f"{t} session closed ({message.get('reason')})"
    if kind == "error":
        return f"{t} error     {message.get('message')}"
    if kind == "speechEnd":
        return f"{t} speech ended ({message.get('durationMs')} ms)"
    # The other events as `stream` names them: speech started, turn resumed, ...
    return f"{t} {_ENGINE_NAMES.get(kind, kind).replace('_', ' ')}"


_ENGINE_NAMES = {spec: engine for engine, spec in SPEC_NAMES.items()}
