"""WebRTC plumbing that is not a session: the ``[webrtc]`` config, what an offer must hold
and how it is answered, where ICE candidates may be, and how long received audio waits.

**Where candidates are.** aioice (aiortc's ICE) gathers a host candidate on every
interface address it finds *except loopback*, and aiortc has no setting to choose them.
The daemon must offer candidates on one configured address only (loopback by default, so
a fresh install exposes no UDP port to the network), and its own tests and CLI must reach
it over loopback. :func:`gather_on` therefore gathers each ICE gatherer's candidates
itself -- host candidates on the given addresses, plus whatever the configured STUN/TURN
servers give -- before aiortc's own gathering runs, which then finds the work done. It
uses aioice's public ``get_component_candidates`` and the connection's gathering flags
(private: aioice is pinned in requirements.lock, and tests/integration/test_webrtc.py checks the
answer's candidates). Remote candidates the configured address cannot reach are dropped
from the offer (:func:`filter_candidates`): a loopback socket cannot send to another
host, and an mDNS (``.local``) candidate would make aioice send multicast queries to the
network.

**How long audio waits.** aiortc's audio receiver hands a packet to the decoder once four
later packets have arrived (``prefetch=4``: 80 ms added to every event), and a lost packet
stops the flow until 16 later ones are in (320 ms), after which the buffer stays that far
behind. A speech recogniser whose product is latency, fed over loopback or a LAN where
packets are neither lost nor reordered, should pay neither: :func:`low_latency_receiver`
gives each of the daemon's receivers an ``ArrivalOrderBuffer`` (:mod:`.webrtc_audio`),
which hands every packet to the decoder as it arrives and drops one that arrives after a
later one (it would be 20 ms of audio in the wrong place). A loss costs its 20 ms of
audio and no delay.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..engine.errors import ConfigError

if TYPE_CHECKING:
    from aiortc import MediaStreamTrack, RTCIceServer, RTCPeerConnection, RTCRtpReceiver

    from .webrtc_audio import ArrivalOrderBuffer

log = logging.getLogger(__name__)

_JITTER_ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"


@dataclass(frozen=True, slots=True)
class WebRtcConfig:
    """``[webrtc]``: WHIP ingest on the HTTP server (:mod:`.webrtc`)."""

    enabled: bool = True
    """Serve ``POST /whip`` and the ``/console`` page."""
    host: str = "127.0.0.1"
    """The address ICE host candidates are on (media arrives there, on a random UDP
    port); "" = every address of every interface but loopback (aioice's own choice)."""
    ice_servers: tuple[str, ...] = ()
    """STUN/TURN servers (``stun:host:3478``, ``turn:host:3478?transport=udp``,
    ``turns:host:5349``): server-reflexive and relayed candidates behind a NAT. aiortc
    uses the first STUN and the first TURN server of the list."""
    turn_username: str | None = None
    turn_credential: str | None = None
    """Credentials of the ``turn:``/``turns:`` servers."""
    handshake_timeout: float = 10.0
    """Seconds from the answer to a connected ICE + DTLS transport; then the session
    closes as idle."""
    idle_timeout: float = 5.0
    """Seconds without audio (RTP) after which a connected peer's session closes as idle."""

    def __post_init__(self) -> None:
        if self.host:
            try:
                ipaddress.ip_address(self.host)
            except ValueError:
                raise ConfigError(f"webrtc.host = {self.host!r} must be an IP address of this "
                                  'machine (e.g. "127.0.0.1"), or "" for every interface') \
                    from None
        for url in self.ice_servers:
            if not _ICE_URL.fullmatch(url):
                raise ConfigError(f"webrtc.ice_servers: {url!r} is not a STUN/TURN URL; write "
                                  '"stun:host:port", "turn:host:port?transport=udp" or '
                                  '"turns:host:port"')
        for key in ("handshake_timeout", "idle_timeout"):
            value = getattr(self, key)
            if not 0.5 <= value <= 300.0:
                raise ConfigError(f"webrtc.{key} = {value:g} is out of range; allowed 0.5 .. 300")

    def rtc_ice_servers(self) -> list[RTCIceServer]:
        """The servers as aiortc takes them. Always a list, possibly empty: aiortc's
        default (``None``) is a public Google STUN server, which a daemon must not contact
        unless configured to."""
        from aiortc import RTCIceServer

        return [RTCIceServer(url, username=self.turn_username,
                             credential=self.turn_credential)
                if url.startswith("turn") else RTCIceServer(url)
                for url in self.ice_servers]

    def link_headers(self) -> list[str]:
        """RFC 9725 section 4.6: the ICE servers as ``Link`` headers of the 201, so a WHIP
        client can use the same STUN/TURN servers."""
        out = []
        for url in self.ice_servers:
            value = f'<{url}>; rel="ice-server"'
            if url.startswith("turn") and self.turn_username:
                value += (f'; username="{self.turn_username}"; '
                          f'credential="{self.turn_credential or ""}"; '
                          'credential-type="password"')
            out.append(value)
        return out


_ICE_URL = re.compile(r"(stuns?|turns?):[A-Za-z0-9.\-\[\]:]+(\?transport=(udp|tcp))?")


def is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address.lower() == "localhost"


def filter_candidates(sdp: str, host: str) -> str:
    """``sdp`` without the ``a=candidate`` lines a socket on ``host`` cannot use: with a
    loopback ``host``, every candidate not on loopback (mDNS ``.local`` names included);
    otherwise the candidates of the other IP family. Peer-reflexive candidates still
    work: ICE learns them from the checks the peer sends."""
    if not host:
        return sdp
    family = ipaddress.ip_address(host).version
    loopback = is_loopback(host)
    kept = []
    for line in sdp.splitlines(keepends=True):
        if line.startswith("a=candidate:"):
            fields = line.split()
            address = fields[4] if len(fields) > 4 else ""
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                continue  # an mDNS name, or garbage: nothing a configured address can use
            if ip.version != family or (loopback and not ip.is_loopback):
                continue
        kept.append(line)
    return "".join(kept)


async def gather_on(pc: RTCPeerConnection, addresses: list[str]) -> None:
    """Gather the ICE candidates of every transport of ``pc`` on ``addresses`` (plus its
    STUN/TURN candidates) before aiortc's own gathering, which then has nothing left to do
    (see the module doc). Call it after the transports exist (setRemoteDescription on an
    answerer, addTransceiver/createDataChannel on an offerer) and before
    setLocalDescription."""
    gatherers: list[Any] = []
    for transceiver in pc.getTransceivers():
        gatherers.append(transceiver.receiver.transport.transport.iceGatherer)
    if pc.sctp is not None:
        gatherers.append(pc.sctp.transport.transport.iceGatherer)
    seen: set[int] = set()
    for gatherer in gatherers:
        connection = gatherer._connection
        if id(connection) in seen or connection._local_candidates_start:
            continue
        seen.add(id(connection))
        connection._local_candidates_start = True
        for component in sorted(connection._components):
            connection._local_candidates += await connection.get_component_candidates(
                component=component, addresses=list(addresses))
        connection._local_candidates_end = True


def low_latency_receiver(receiver: RTCRtpReceiver) -> bool:
    """Give an audio receiver an :class:`~.webrtc_audio.ArrivalOrderBuffer` (see the
    module doc). Call before RTP flows. False (and a warning, aiortc's default kept) if
    this aiortc keeps its buffer elsewhere."""
    from aiortc.jitterbuffer import JitterBuffer

    from .webrtc_audio import ArrivalOrderBuffer

    current = getattr(receiver, _JITTER_ATTRIBUTE, None)
    if not isinstance(current, JitterBuffer):
        log.warning("aiortc's receiver has no %s: audio keeps aiortc's default jitter buffer "
                    "(80 ms more latency)", _JITTER_ATTRIBUTE)
        return False
    setattr(receiver, _JITTER_ATTRIBUTE, ArrivalOrderBuffer(current.capacity))
    return True


def audio_buffer(pc: RTCPeerConnection, track: MediaStreamTrack) -> ArrivalOrderBuffer | None:
    """The :func:`low_latency_receiver` buffer of the receiver of ``track`` (None: that
    receiver kept aiortc's own)."""
    from .webrtc_audio import ArrivalOrderBuffer

    for transceiver in pc.getTransceivers():
        if transceiver.receiver.track is track:
            buffer = getattr(transceiver.receiver, _JITTER_ATTRIBUTE, None)
            return buffer if isinstance(buffer, ArrivalOrderBuffer) else None
    return None


@dataclass(frozen=True, slots=True)
class Offer:
    """What the daemon needs to know of an offer before it admits a session."""

    has_events_channel: bool
    """An application (SCTP) section: the client can open the ``events`` data channel."""


class InvalidOfferError(ValueError):
    """The offer cannot be answered; the message says why, in one sentence."""


def check_offer(sdp: str) -> Offer:
    """Parse an offer and check it has what the daemon answers: an audio section the
    client sends on, with Opus. Cheap and done before admission, so that a burst of bad
    offers costs no peer connection."""
    from aiortc.sdp import SessionDescription

    if not sdp.lstrip().startswith("v=0"):
        raise InvalidOfferError("the body is not an SDP offer: it must start with v=0")
    try:
        desc = SessionDescription.parse(sdp)
    except Exception as exc:
        # aiortc's parser meets malformed lines with whatever the line's code raises
        # (ValueError, IndexError, KeyError, AssertionError, ...): each means the same.
        why = str(exc).strip() or type(exc).__name__
        raise InvalidOfferError(f"the SDP offer could not be parsed ({why[:120]})") from None
    if not desc.media:
        raise InvalidOfferError("the SDP offer has no media section (m= line); offer an "
                                "audio track")
    audio = [m for m in desc.media if m.kind == "audio"]
    if not audio:
        raise InvalidOfferError("the offer has no audio track; add one (sendonly or "
                                "sendrecv, Opus)")
    first = audio[0]
    if first.direction not in (None, "sendonly", "sendrecv"):
        raise InvalidOfferError(f"the offer's audio track is {first.direction}: the daemon "
                                "receives audio, so offer it sendonly or sendrecv")
    if not any(c.mimeType.lower() == "audio/opus" for c in first.rtp.codecs):
        raise InvalidOfferError("the offer's audio track has no Opus codec; offer Opus "
                                "(audio/opus 48000/2)")
    if first.ice is None or not first.ice.usernameFragment or first.dtls is None:
        raise InvalidOfferError("the offer's audio section has no ICE credentials or DTLS "
                                "parameters (a=ice-ufrag, a=ice-pwd, a=fingerprint, "
                                "a=setup)")
    return Offer(has_events_channel=any(m.kind == "application" for m in desc.media))


RETRY_AFTER_S = 2
"""Seconds a refused client is told to wait (503): sessions end every few seconds."""
OPUS_ANSWER_PARAMS = {"maxaveragebitrate": "64000", "useinbandfec": "1", "stereo": "0"}
"""Opus parameters the answer asks the sender for. Browsers encode a microphone at about
32 kbit/s by default, and Whisper hears that: in the console test, words such as "ask"
and "cotton" came out differently over WebRTC than from the same WAV over gRPC. 64 kbit/s
mono is transparent for speech and still small; in-band FEC covers a lost packet."""


def with_opus_params(sdp: str) -> str:
    """``sdp`` with OPUS_ANSWER_PARAMS on every Opus payload's ``a=fmtp`` line (added, or
    replacing the same keys). The sender reads them from the answer (RFC 7587 section 7)."""
    opus = set(re.findall(r"^a=rtpmap:(\d+) opus/48000", sdp, re.MULTILINE | re.IGNORECASE))
    has_fmtp = set(re.findall(r"^a=fmtp:(\d+) ", sdp, re.MULTILINE))
    out: list[str] = []
    for line in sdp.split("\r\n"):
        fmtp = re.match(r"a=fmtp:(\d+) (.*)", line)
        if fmtp and fmtp.group(1) in opus:
            params = dict(p.split("=", 1) for p in fmtp.group(2).split(";") if "=" in p)
            out.append(f"a=fmtp:{fmtp.group(1)} " + ";".join(
                f"{k}={v}" for k, v in (params | OPUS_ANSWER_PARAMS).items()))
        else:
            out.append(line)
        rtpmap = re.match(r"a=rtpmap:(\d+) ", line)
        if rtpmap and rtpmap.group(1) in opus and rtpmap.group(1) not in has_fmtp:
            out.append(f"a=fmtp:{rtpmap.group(1)} " + ";".join(
                f"{k}={v}" for k, v in OPUS_ANSWER_PARAMS.items()))
    return "\r\n".join(out)


async def answer_offer(pc: RTCPeerConnection, sdp: str, host: str) -> MediaStreamTrack:
    """Apply an offer to ``pc`` and set its answer (host candidates on ``host``); returns
    the offer's first audio track. InvalidOfferError if aiortc cannot answer it."""
    # The offer's first audio section lands on this transceiver (aiortc matches by kind),
    # which takes Opus only: a PCMU-first offer would otherwise negotiate 8 kHz audio
    # into a 48 kHz session.
    from aiortc import RTCRtpSender, RTCSessionDescription

    audio = pc.addTransceiver("audio", direction="recvonly")
    audio.setCodecPreferences([c for c in RTCRtpSender.getCapabilities("audio").codecs
                               if c.mimeType.lower() == "audio/opus"])
    offer = RTCSessionDescription(sdp=filter_candidates(sdp, host), type="offer")
    try:
        await pc.setRemoteDescription(offer)
    except Exception as exc:
        # aiortc refuses offers it cannot use with assorted exceptions (ValueError,
        # OperationError, InvalidAccessError...): all mean a bad offer.
        why = str(exc).strip() or type(exc).__name__
        raise InvalidOfferError(f"the offer cannot be answered ({why[:120]})") from None
    track = _first_audio(pc)
    if host:
        await gather_on(pc, [host])
    await pc.setLocalDescription(await pc.createAnswer())
    return track


def _first_audio(pc: RTCPeerConnection) -> MediaStreamTrack:
    """The first audio track of the offer; every other media section is answered inactive
    (nothing would read its frames, which aiortc would queue unbounded)."""
    track: MediaStreamTrack | None = None
    for transceiver in pc.getTransceivers():
        if (track is None and transceiver.kind == "audio"
                and transceiver.receiver.track is not None):
            track = transceiver.receiver.track
            transceiver.direction = "recvonly"
            low_latency_receiver(transceiver.receiver)
        else:
            transceiver.direction = "inactive"
    if track is None:
        raise InvalidOfferError("the offer has no audio track the daemon can receive; "
                                "offer one sendonly or sendrecv, with Opus")
    return track
