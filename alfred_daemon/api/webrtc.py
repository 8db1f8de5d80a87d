"""WebRTC ingest over WHIP (RFC 9725): live Opus audio in, the browser protocol's events out.

* ``POST /whip`` -- body: an ``application/sdp`` offer with an audio track (Opus) and,
  normally, a data channel labelled ``events``; query: session parameters, the fields of
  gRPC's SessionConfig (``?partials=false&vad.minSilenceMs=300``, :mod:`.convert`).
  Answers ``201 Created`` with the SDP answer and ``Location: /whip/<session id>``. Bad
  offer or parameters: 400; a body that is not ``application/sdp``: 415; the session
  limit or overload: 503 with ``Retry-After``; a token over its own limit: 429.
* ``DELETE /whip/<id>`` -- ends the session: its last finals and turn end go out on the
  data channel, then ``sessionClosed``, then the peer connection closes (200). An id
  that is not open (already ended, never existed, another token's): 404.

The ``events`` channel carries exactly the WebSocket bridge's messages
(:mod:`.events_json`: ``sessionStarted`` first, then one JSON object per event, ``sessionClosed``
last) and takes its control messages (``{"type": "control", "action": ...}``,
``{"type": "end"}``). An offer without an application section gets a session whose events
go nowhere (the monitor and ``/session/{id}/status`` still show it): GStreamer's whipsink
sends such offers.

**Off the hot path.** aiortc runs on the daemon's event loop, which gRPC and the other
transports share, so each peer's work there is kept small and bounded: each packet is
decoded as it arrives (:mod:`.webrtc_audio`, ~50 microseconds per 20 ms of Opus, on the
loop: cheaper than aiortc's decoder thread and its two hand-overs); each frame is
downsampled to 16 kHz mono (``Downsampler``, ~35 microseconds) and handed to
:meth:`Supervisor.feed`, flow-controlled like every transport; decoded frames wait in a
bounded queue, so a peer
that sends faster than real time is cut off with an error instead of growing memory. A
peer that never completes its handshake (``webrtc.handshake_timeout``), whose ICE
transport fails or closes, or that sends no audio for ``webrtc.idle_timeout`` seconds has
its session closed as ``idle``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiortc import MediaStreamTrack, RTCConfiguration, RTCDataChannel, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from ..engine.config import SAMPLE_RATE
from ..engine.events import Event
from ..runtime.supervisor import Supervisor
from .auth import Authenticator, Principal
from .bridge import SessionBridge
from .convert import InvalidRequestError, engine_config, session_config_from_query
from .errors import ApiError, json_error
from .events_json import (
    error,
    events_shed,
    parse_client_message,
    session_started,
    wire,
)
from .outbox import ShedCounts
from .web_security import PRINCIPAL
from .webrtc_audio import Downsampler
from .webrtc_ice import (
    InvalidOfferError,
    WebRtcConfig,
    answer_offer,
    audio_buffer,
    check_offer,
    with_opus_params,
)

log = logging.getLogger(__name__)

OPUS_RATE = 48_000
"""The rate Opus is decoded at (RFC 7587): the rate a WebRTC peer's audio has (its
session reads it at 16 kHz, after ``Downsampler``)."""
TRANSPORT = "webrtc"
MAX_BUFFERED_FRAMES = 500
"""Decoded frames (20 ms each: 10 s) that may wait for :meth:`Supervisor.feed`. A live
peer never gets near it; one that sends faster than real time fills it and is cut off."""
MAX_CHANNEL_BUFFER = 1 << 20
"""Bytes queued on the data channel beyond which the writer waits for the peer to read."""
WRITE_DEADLINE_S = 10.0
"""A peer whose data channel does not drain for this long loses its session, as a gRPC
client that stops reading does."""
MAX_MESSAGE_CHARS = 1 << 16
"""A control message longer than this is refused unread (they are ~50 characters)."""
CLOSE_TIMEOUT_S = 5.0
DRAIN_S = 0.1
"""On DELETE/end, how long frames still in flight may take to arrive (a live peer's last
packets are milliseconds behind its request on a LAN)."""
DRAIN_TIMEOUT_S = 2.0
"""... and the most the frames received may take to be fed (flow control may hold them)."""
LINGER_S = 2.0
"""After sessionClosed, how long the daemon leaves the connection to the peer to close (SCTP
may still be sending or retransmitting the last messages), before closing it itself."""
FINISH_TIMEOUT_S = 30.0
"""DELETE waits this long for the last events to go out (finish_session has its own
drain_grace; this bounds the whole)."""


@dataclass(eq=False)
class Peer:
    """One WHIP resource: a peer connection feeding one supervisor session."""

    session: SessionBridge
    owner: str
    pc: RTCPeerConnection
    expects_channel: bool
    channel: RTCDataChannel | None = None
    channel_open: asyncio.Event = field(default_factory=asyncio.Event)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    transport_gone: asyncio.Event = field(default_factory=asyncio.Event)
    delivered: asyncio.Event = field(default_factory=asyncio.Event)
    """sessionClosed has been handed to the channel's transport (or there is no channel)."""
    done: asyncio.Event = field(default_factory=asyncio.Event)
    """The peer connection is closed and every task of the peer has ended."""
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    audio_tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    frames: asyncio.Queue[AudioFrame] = field(
        default_factory=lambda: asyncio.Queue(MAX_BUFFERED_FRAMES))
    downsample: Downsampler = field(default_factory=Downsampler)
    last_audio: float | None = None
    """time.monotonic() of the latest decoded frame (None: none yet)."""
    taking_audio: bool = True
    """False once the input has ended (DELETE, end) or the peer was cut off."""

    @property
    def sid(self) -> str:
        return self.session.session_id

    def send(self, message: dict[str, Any]) -> bool:
        """Queue one JSON message on the events channel if it is open; False if not."""
        ch = self.channel
        if ch is None or ch.readyState != "open":
            return False
        try:
            ch.send(json.dumps(message))
        except Exception:  # the SCTP association went away under us: nothing to tell
            return False
        return True


class WhipApi:
    """The WHIP endpoints and every open peer (keyed by session id)."""

    def __init__(self, sup: Supervisor, config: WebRtcConfig, auth: Authenticator,
                 outbox_limit: int = 256) -> None:
        self.sup = sup
        self.config = config
        self.auth = auth
        self.outbox_limit = outbox_limit
        self.peers: dict[str, Peer] = {}

    # ------------------------------------------------------------------ HTTP

    async def post(self, request: web.Request) -> web.Response:
        if request.content_type != "application/sdp":
            return json_error(415, "unsupported_media_type",
                              "send the SDP offer as Content-Type: application/sdp")
        raw = await request.read()
        try:
            sdp = raw.decode()
        except UnicodeDecodeError:
            return json_error(400, "invalid_offer", "the SDP offer is not UTF-8 text")
        principal: Principal = request[PRINCIPAL]
        try:
            cfg = session_config_from_query(request.query.items())
            cfg.sample_rate_hz = OPUS_RATE
            engine = engine_config(cfg, self.sup.config.engine)
            offer = check_offer(sdp)
        except (InvalidRequestError, InvalidOfferError) as exc:
            return json_error(400, "invalid_offer" if isinstance(exc, InvalidOfferError)
                              else "invalid_parameter", str(exc))
        over = self.auth.over_limit(principal, self.sup.sessions_of(principal.name))
        if over is not None:
            return json_error(429, "session_limit", over)
        try:
            session = SessionBridge.open(
                self.sup, engine, sample_rate=SAMPLE_RATE, owner=self.auth.owner(principal),
                transport=TRANSPORT, outbox_limit=self.outbox_limit,
                frame_event_every=cfg.frame_event_every)
        except ApiError as err:
            return err.response()  # 503 with Retry-After: refused or unavailable
        try:
            answer = await self._answer(session, principal.name, sdp,
                                        offer.has_events_channel)
        except InvalidOfferError as exc:
            session.close("error")
            return json_error(400, "invalid_offer", str(exc))
        except BaseException:
            session.close("error")
            raise
        sid = session.session_id
        headers = {"Location": f"/whip/{sid}", "Content-Type": "application/sdp"}
        response = web.Response(status=201, text=answer, headers=headers)
        for link in self.config.link_headers():
            response.headers.add("Link", link)
        log.info("session %s: WebRTC peer answered (%s events channel)", sid,
                 "with" if offer.has_events_channel else "without")
        return response

    async def delete(self, request: web.Request) -> web.Response:
        sid = request.match_info["session_id"]
        principal: Principal = request[PRINCIPAL]
        peer = self.peers.get(sid)
        if peer is None or peer.owner != principal.name:
            shown = sid if len(sid) <= 64 else sid[:64] + "..."
            return json_error(404, "session_not_found",
                              f"no open WebRTC session {shown!r}: it has ended (DELETE, "
                              "end, idle or shutdown) or never existed")
        await self._finish(peer)
        return web.Response(status=200)

    async def stop(self) -> None:
        """Close every peer (the daemon stops): their sessions close as ``shutdown``."""
        peers = list(self.peers.values())
        for peer in peers:
            peer.session.close("shutdown")
        if peers:
            await asyncio.wait([asyncio.create_task(p.done.wait()) for p in peers],
                               timeout=CLOSE_TIMEOUT_S)
        for peer in peers:
            for task in peer.tasks:
                task.cancel()
        await asyncio.gather(*(t for p in peers for t in p.tasks), return_exceptions=True)

    # ------------------------------------------------------------------ a peer

    async def _answer(self, session: SessionBridge, owner: str, sdp: str,
                      expects_channel: bool) -> str:
        """Apply the offer, answer it (host candidates on the configured address) and start
        the peer's tasks. InvalidOfferError if aiortc cannot answer it."""
        pc = RTCPeerConnection(RTCConfiguration(iceServers=self.config.rtc_ice_servers()))
        sid = session.session_id
        peer = Peer(session, owner, pc, expects_channel)
        self._wire(peer)  # before anything can connect: no state change or channel missed
        try:
            track = await answer_offer(pc, sdp, self.config.host)
        except BaseException:
            await pc.close()
            raise
        buffer = audio_buffer(pc, track)
        if buffer is not None:
            buffer.decode_to(lambda frame: self._take(peer, frame))
        self.peers[sid] = peer
        peer.tasks = [session.start_events(), asyncio.create_task(self._watch(peer))]
        peer.audio_tasks = [asyncio.create_task(self._receive(peer, track)),
                            asyncio.create_task(self._feed(peer))]
        peer.tasks += peer.audio_tasks
        runner = asyncio.create_task(self._run(peer), name=f"whip-{sid}")
        peer.tasks.append(runner)
        return with_opus_params(pc.localDescription.sdp)

    def _wire(self, peer: Peer) -> None:
        """Subscribe to the peer connection's state and data channels."""
        pc = peer.pc

        def on_state() -> None:
            state = pc.connectionState
            if state == "connected":
                peer.connected.set()
            elif state in ("failed", "closed"):
                peer.transport_gone.set()

        def on_channel(channel: RTCDataChannel) -> None:
            if channel.label != "events" or peer.channel is not None:
                return  # other channels are the client's business; one events channel
            peer.channel = channel
            channel.on("message", lambda message: self._on_message(peer, message))
            if channel.readyState == "open":
                peer.channel_open.set()
            else:
                channel.on("open", peer.channel_open.set)

        pc.on("connectionstatechange", on_state)
        pc.on("datachannel", on_channel)

    def _on_message(self, peer: Peer, message: str | bytes) -> None:
        if not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            peer.send(error("INVALID_ARGUMENT", "the events channel takes JSON text "
                            'messages: {"type": "control", "action": ...} or '
                            '{"type": "end"}'))
            return
        try:
            parsed = parse_client_message(message, binary_audio=False)
        except InvalidRequestError as exc:
            # Unlike the WebSocket, the call goes on: the audio does not travel on this
            # channel, and a bad control message does not make it worthless.
            peer.send(error("INVALID_ARGUMENT", str(exc)))
            return
        if parsed.kind == "end":
            if self.peers.get(peer.sid) is peer:
                task = asyncio.create_task(self._finish(peer))
                peer.tasks.append(task)
            return
        peer.session.control(parsed.action)

    async def _finish(self, peer: Peer) -> None:
        """End of input (DELETE or ``end``): the session's last finals and turn end are
        delivered, then sessionClosed, then the peer connection closes."""
        if self.peers.get(peer.sid) is not peer:
            return
        del self.peers[peer.sid]  # from now on a DELETE of this id is a 404
        # The audio already sent is part of the input: frames still in flight get a moment
        # to arrive, and every frame received is fed, before the input ends.
        await asyncio.sleep(DRAIN_S)
        receiver, feeder = peer.audio_tasks
        peer.taking_audio = False
        receiver.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.frames.join(), DRAIN_TIMEOUT_S)
        feeder.cancel()
        await asyncio.gather(receiver, feeder, return_exceptions=True)
        tail = peer.downsample(None)
        if tail.size:
            with contextlib.suppress(ApiError):  # gone or backlogged: nothing to add then
                await peer.session.feed(tail)
        await peer.session.finish()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.delivered.wait(), FINISH_TIMEOUT_S)

    async def _run(self, peer: Peer) -> None:
        """Deliver the session's events until sessionClosed, then take the peer down."""
        try:
            await self._write(peer)
            self.peers.pop(peer.sid, None)  # the session has ended: DELETE is a 404 now
            await self._flushed(peer)
            peer.delivered.set()
            if peer.connected.is_set() and not peer.transport_gone.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(peer.transport_gone.wait(), LINGER_S)
        finally:
            peer.delivered.set()
            self.peers.pop(peer.sid, None)
            peer.session.close("error")  # only if still open (a bug)
            me = asyncio.current_task()
            others = [t for t in peer.tasks if t is not me]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(peer.pc.close(), CLOSE_TIMEOUT_S)
            peer.done.set()
            log.info("session %s: WebRTC peer closed", peer.sid)

    async def _write(self, peer: Peer) -> None:
        pump = peer.session.pump_task
        if peer.expects_channel and pump is not None:
            # Events wait in the outbox (partials shed first) until the channel opens, or
            # until the session has ended without it (its events then go nowhere); a peer
            # that never connects has its session closed by _watch meanwhile.
            opened = asyncio.create_task(peer.channel_open.wait())
            try:
                await asyncio.wait({opened, pump}, return_when=asyncio.FIRST_COMPLETED,
                                   timeout=self.config.handshake_timeout + 1.0)
            finally:
                opened.cancel()
        peer.send(session_started(peer.sid, OPUS_RATE, TRANSPORT))

        async def send_shed(shed: ShedCounts, event: Event) -> None:
            peer.send(events_shed(shed))

        async def send(event: Event) -> None:
            await self._drained(peer)
            peer.send(wire(event))

        await peer.session.write(send, send_shed)

    @staticmethod
    async def _flushed(peer: Peer) -> None:
        """Wait (bounded) until the channel has handed everything to SCTP."""
        ch = peer.channel
        for _ in range(int(LINGER_S / 0.02)):
            if ch is None or ch.readyState != "open" or ch.bufferedAmount == 0:
                return
            await asyncio.sleep(0.02)

    async def _drained(self, peer: Peer) -> None:
        """Wait (bounded) while the channel holds over MAX_CHANNEL_BUFFER unsent bytes;
        a peer that does not read for WRITE_DEADLINE_S loses its session."""
        ch = peer.channel
        deadline = time.monotonic() + WRITE_DEADLINE_S
        while ch is not None and ch.readyState == "open" \
                and ch.bufferedAmount > MAX_CHANNEL_BUFFER:
            if time.monotonic() > deadline:
                log.warning("session %s: the peer has not read its events for %.0f s; "
                            "closing", peer.sid, WRITE_DEADLINE_S)
                peer.session.close("error")
                peer.channel = None  # nothing more is sent
                return
            await asyncio.sleep(0.02)

    async def _watch(self, peer: Peer) -> None:
        """Close the session as idle when the handshake does not complete in time, or when
        the ICE/DTLS transport fails or closes later."""
        try:
            await asyncio.wait_for(peer.connected.wait(), self.config.handshake_timeout)
        except TimeoutError:
            self._idle(peer, f"no ICE/DTLS connection within "
                             f"{self.config.handshake_timeout:g} s")
            return
        await peer.transport_gone.wait()
        self._idle(peer, f"the peer connection is {peer.pc.connectionState}")

    def _idle(self, peer: Peer, why: str) -> None:
        if self.peers.get(peer.sid) is not peer or peer.delivered.is_set():
            return  # already finishing (DELETE, end) or closed
        log.info("session %s: %s; closing it as idle", peer.sid, why)
        peer.session.close("idle")

    async def _receive(self, peer: Peer, track: MediaStreamTrack) -> None:
        """Watch a peer's audio. Decoded frames come through the jitter buffer
        (:meth:`_take`), or through the track if the receiver decodes them itself (aiortc's
        own buffer). No audio for ``idle_timeout`` seconds, or the remote track ending,
        closes the session as idle; the first frame may take the handshake's time."""
        idle = self.config.idle_timeout
        wait = self.config.handshake_timeout + idle
        limit = int(self.sup.config.limits.maxSessionDuration / 0.0025) + 1  # 2.5 ms frames
        for _ in range(limit):
            try:
                async with asyncio.timeout(wait):  # no task per frame, unlike wait_for
                    frame = await track.recv()
            except TimeoutError:
                quiet = None if peer.last_audio is None else time.monotonic() - peer.last_audio
                if quiet is not None and quiet < idle:
                    wait = idle - quiet  # audio is coming, through the buffer
                    continue
                self._idle(peer, f"no audio for {wait if quiet is None else quiet:g} s")
                return
            except MediaStreamError:
                # The remote stopped its track (RTCP BYE) or the transport closed: its
                # DELETE may still come, so wait for it as long as for audio.
                await asyncio.sleep(idle)
                self._idle(peer, "the peer's audio track ended")
                return
            wait = idle
            if isinstance(frame, AudioFrame) and not self._take(peer, frame):
                return

    def _take(self, peer: Peer, frame: AudioFrame) -> bool:
        """Queue a decoded frame for :meth:`_feed`. False once the input has ended, or if
        the peer is too far ahead of what the daemon could take (it is cut off)."""
        if not peer.taking_audio:
            return False
        peer.last_audio = time.monotonic()
        try:
            peer.frames.put_nowait(frame)
        except asyncio.QueueFull:
            peer.taking_audio = False
            message = (f"the peer sent audio {MAX_BUFFERED_FRAMES * 0.02:g} s ahead of "
                       "what the daemon could take; send live audio at real time")
            peer.send(error("RESOURCE_EXHAUSTED", message))
            log.warning("session %s: %s", peer.sid, message)
            peer.session.close("error")
            return False
        return True

    async def _feed(self, peer: Peer) -> None:
        """Feed queued frames to the session, flow-controlled (:meth:`Supervisor.feed`)."""
        limit = int(self.sup.config.limits.maxSessionDuration / 0.0025) + 1
        for _ in range(limit):
            frame = await peer.frames.get()
            try:
                pcm = peer.downsample(frame)
                if pcm.size:  # swresample may hold a whole short frame back
                    await peer.session.feed(pcm)
            except ApiError as err:
                if err.gone:
                    return
                # Bad audio or a backlog: the call cannot go on usefully.
                peer.send(error(err.name, err.message))
                log.warning("session %s: %s", peer.sid, err.message)
                peer.session.close("error")
                return
            finally:
                peer.frames.task_done()  # DELETE waits for every received frame's feed

