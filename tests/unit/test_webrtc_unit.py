"""WebRTC without a daemon: WHIP query parameters, offer checks, candidate filtering and
gathering, the [webrtc] config, the shared JSON converter and the audio conversion. No
model, no worker, no network beyond loopback sockets of this process."""

from __future__ import annotations

import asyncio
import fractions
import re
from pathlib import Path

import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RtpPacket
from av import AudioFrame

from alfred_daemon.api.convert import (
    InvalidRequestError,
    engine_config,
    session_config_from_query,
)
from alfred_daemon.api.events_json import (
    SPEC_NAMES,
    parse_client_message,
    session_started,
    wire,
)
from alfred_daemon.api.webrtc import OPUS_RATE
from alfred_daemon.api.webrtc_audio import RESYNC_AFTER, ArrivalOrderBuffer, Downsampler
from alfred_daemon.api.webrtc_ice import (
    InvalidOfferError,
    WebRtcConfig,
    answer_offer,
    check_offer,
    filter_candidates,
    gather_on,
    low_latency_receiver,
)
from alfred_daemon.engine import events as ev
from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.ops.config import from_mapping

# ----------------------------------------------------------------------------- query


def engine_from(query: list[tuple[str, str]]) -> EngineConfig:
    cfg = session_config_from_query(query)
    cfg.sample_rate_hz = OPUS_RATE
    return engine_config(cfg, EngineConfig())


def test_query_parameters_set_session_config_fields_by_either_name() -> None:
    eng = engine_from([("partials", "false"), ("vad.minSilenceMs", "300"),
                       ("turn.enabled", "0"), ("partial_interval_ms", "400"),
                       ("vad.threshold", "0.6"), ("turn.fallback_silence_ms", "2000")])
    assert eng.stt.partials is False
    assert eng.vad.min_silence_ms == 300
    assert eng.turn.enabled is False
    assert eng.stt.partial_interval_ms == 400
    assert eng.vad.threshold == pytest.approx(0.6)
    assert eng.turn.fallback_silence_ms == 2000
    cfg = session_config_from_query([("frameEventEvery", "4"), ("language", "en-US")])
    assert cfg.frame_event_every == 4 and cfg.language == "en-US"
    assert engine_from([]) == EngineConfig()  # nothing set: the defaults


@pytest.mark.parametrize(("query", "message"), [
    ([("beamSize", "3")], "unknown parameter 'beamSize'; allowed: frameEventEvery, language"),
    ([("vad.speed", "3")], "unknown parameter 'vad.speed'"),
    ([("vad", "1")], "unknown parameter 'vad'"),
    ([("partials.x", "1")], "unknown parameter 'partials.x'"),
    ([("vad.threshold.x", "1")], "unknown parameter 'vad.threshold.x'"),
    ([("sampleRateHz", "16000")], "sampleRateHz cannot be set: the audio is Opus"),
    ([("encoding", "1")], "encoding cannot be set"),
    ([("resumeToken", "abc")], "a WebRTC session is not resumable"),
    ([("partials", "yes")], "partials must be true or false, not 'yes'"),
    ([("vad.minSilenceMs", "soon")], "vad.minSilenceMs must be a whole number, not 'soon'"),
    ([("vad.minSilenceMs", "99999999999")], "vad.minSilenceMs = 99999999999 is out of range"),
    ([("vad.threshold", "nan")], "vad.threshold must be a number, not 'nan'"),
    ([("partials", "true"), ("partials", "false")], "parameter 'partials' is given twice"),
    ([("x" * 500, "1")], "unknown parameter '" + "x" * 64 + "...'"),
])
def test_bad_query_parameters_are_one_sentence(query: list[tuple[str, str]],
                                               message: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        engine_from(query)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_ranges_are_the_grpc_paths_sentences() -> None:
    """A value out of range gets engine_config's sentence, as over gRPC and the WebSocket."""
    with pytest.raises(InvalidRequestError) as info:
        engine_from([("vad.threshold", "1.5")])
    assert "vad.threshold = 1.5 is out of range" in str(info.value)
    with pytest.raises(InvalidRequestError, match="frame_event_every must be 0"):
        engine_from([("frameEventEvery", "-1")])


# ----------------------------------------------------------------------------- offers


async def aiortc_offer(*, audio: str | None = "sendonly", channel: bool = True,
                       video: bool = False) -> str:
    """An offer as aiortc makes it, candidates on loopback."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        if video:
            pc.addTransceiver("video", direction="sendonly")
        if audio is not None:
            pc.addTransceiver("audio", direction=audio)
        if channel:
            pc.createDataChannel("events")
        await gather_on(pc, ["127.0.0.1"])
        await pc.setLocalDescription(await pc.createOffer())
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()


def test_offers_the_daemon_answers() -> None:
    assert check_offer(asyncio.run(aiortc_offer())).has_events_channel
    assert not check_offer(asyncio.run(aiortc_offer(channel=False))).has_events_channel
    assert check_offer(asyncio.run(aiortc_offer(audio="sendrecv", video=True)))


@pytest.mark.parametrize(("make", "message"), [
    (lambda: "garbage", "the body is not an SDP offer: it must start with v=0"),
    (lambda: "", "the body is not an SDP offer"),
    (lambda: "v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n",
     "the SDP offer has no media section"),
    (lambda: "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 999\r\n", "the SDP offer could not be parsed"),
    (lambda: asyncio.run(aiortc_offer(audio=None)), "the offer has no audio track"),
    (lambda: asyncio.run(aiortc_offer(audio=None, video=True)), "the offer has no audio track"),
    (lambda: asyncio.run(aiortc_offer(audio="recvonly")),
     "the offer's audio track is recvonly"),
    (lambda: asyncio.run(aiortc_offer()).replace("opus/48000/2", "PCMU/8000"),
     "the offer's audio track has no Opus codec"),
    (lambda: "\r\n".join(line for line in asyncio.run(aiortc_offer()).split("\r\n")
                         if not line.startswith("a=ice-ufrag")),
     "has no ICE credentials or DTLS parameters"),
])
def test_offers_the_daemon_refuses_in_one_sentence(make: object, message: str) -> None:
    assert callable(make)
    with pytest.raises(InvalidOfferError) as info:
        check_offer(make())
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_gathering_on_loopback_offers_only_loopback_candidates() -> None:
    sdp = asyncio.run(aiortc_offer())
    candidates = [line for line in sdp.splitlines() if line.startswith("a=candidate:")]
    assert candidates, sdp
    assert all(line.split()[4] == "127.0.0.1" for line in candidates), candidates


async def answered(offer: str) -> str:
    """The daemon's answer to ``offer`` (its negotiation alone: no session, no network)."""
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        track = await answer_offer(pc, offer, "127.0.0.1")
        assert track.kind == "audio"
        sdp: str = pc.localDescription.sdp
        return sdp
    finally:
        await pc.close()


def media_sections(sdp: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        if sections:
            sections[-1].append(line)
    return sections


def test_the_answer_takes_opus_on_the_first_audio_track_only() -> None:
    offer = asyncio.run(aiortc_offer(video=True))
    # Opus listed after PCMU: the answer still takes Opus, the daemon's one rate.
    pcmu_first = re.sub(r"(m=audio \S+ \S+) (\d+) (.*)", lambda m: f"{m[1]} {m[3]} {m[2]}",
                        offer)
    for sdp in (offer, pcmu_first):
        answer = asyncio.run(answered(sdp))
        video, audio, application = media_sections(answer)
        assert video[0].startswith("m=video") and "a=inactive" in video
        assert "a=recvonly" in audio
        assert [line for line in audio if line.startswith("a=rtpmap")] == [
            line for line in audio if line.startswith("a=rtpmap:") and "opus/48000/2" in line]
        assert application[0].startswith("m=application")
        candidates = [line.split()[4] for line in answer.splitlines()
                      if line.startswith("a=candidate:")]
        assert candidates and set(candidates) == {"127.0.0.1"}, candidates
    without_mux = "\r\n".join(line for line in offer.split("\r\n") if line != "a=rtcp-mux")
    with pytest.raises(InvalidOfferError, match=r"the offer cannot be answered .*RTCP mux"):
        asyncio.run(answered(without_mux))


OFFER_CANDIDATES = """v=0\r
m=audio 9 UDP/TLS/RTP/SAVPF 111\r
a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host\r
a=candidate:2 1 udp 2122260223 127.0.0.1 50001 typ host\r
a=candidate:3 1 udp 2122260223 4f1a7c2e-1b2c.local 50002 typ host\r
a=candidate:4 1 udp 2122260223 ::1 50003 typ host\r
a=candidate:5 1 udp 1686052607 203.0.113.9 50004 typ srflx raddr 192.0.2.2 rport 1\r
a=candidate:6 1 udp\r
a=rtpmap:111 opus/48000/2\r
"""


def test_remote_candidates_a_loopback_daemon_cannot_use_are_dropped() -> None:
    kept = filter_candidates(OFFER_CANDIDATES, "127.0.0.1")
    addresses = [line.split()[4] for line in kept.splitlines()
                 if line.startswith("a=candidate:")]
    assert addresses == ["127.0.0.1"]
    assert "a=rtpmap:111 opus/48000/2" in kept
    lan = filter_candidates(OFFER_CANDIDATES, "192.0.2.2")
    assert [line.split()[4] for line in lan.splitlines()
            if line.startswith("a=candidate:")] == ["192.0.2.2", "127.0.0.1", "203.0.113.9"]
    assert filter_candidates(OFFER_CANDIDATES, "") == OFFER_CANDIDATES


def test_receivers_get_the_arrival_order_buffer() -> None:
    async def run() -> object:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        try:
            receiver = pc.addTransceiver("audio").receiver
            assert low_latency_receiver(receiver)
            return getattr(receiver, "_RTCRtpReceiver__jitter_buffer")  # noqa: B009
        finally:
            await pc.close()

    assert isinstance(asyncio.run(run()), ArrivalOrderBuffer)


def packet(seq: int, data: bytes = b"opus") -> RtpPacket:
    """An audio packet as the receiver hands it over: depayloaded into ``_data``."""
    p = RtpPacket(payload_type=111, sequence_number=seq % 65536, timestamp=seq * 960 % 2**32)
    p._data = data  # type: ignore[attr-defined]
    return p


def released(buffer: ArrivalOrderBuffer, seqs: list[int]) -> list[int | None]:
    """For each packet added, the timestamp's frame number handed on (None: held back)."""
    out: list[int | None] = []
    for seq in seqs:
        pli, frame = buffer.add(packet(seq))
        assert pli is False
        out.append(None if frame is None else frame.timestamp // 960)
    return out


def test_each_packet_is_handed_on_as_it_arrives() -> None:
    assert released(ArrivalOrderBuffer(16), [5, 6, 7, 8]) == [5, 6, 7, 8]


def test_a_lost_packet_costs_no_wait() -> None:
    # aiortc's own buffer would hold 9, 10, ... until 16 later packets were in.
    assert released(ArrivalOrderBuffer(16), [7, 9, 10]) == [7, 9, 10]


def test_duplicates_and_packets_older_than_one_handed_on_are_refused() -> None:
    buffer = ArrivalOrderBuffer(16)
    assert released(buffer, [1, 3, 2, 3, 4]) == [1, 3, None, None, 4]
    assert buffer.late == 2


def test_sequence_numbers_wrap() -> None:
    buffer = ArrivalOrderBuffer(16)
    assert released(buffer, [65534, 65535, 65536, 65537]) == [65534, 65535, 65536, 65537]
    assert buffer.late == 0


def test_a_sender_that_restarts_its_sequence_is_followed() -> None:
    buffer = ArrivalOrderBuffer(16)
    released(buffer, [30000, 30001])
    restarted = list(range(100, 100 + RESYNC_AFTER + 2))
    out = released(buffer, restarted)
    # Up to RESYNC_AFTER - 1 packets look late and are refused, then the new sequence is
    # taken and followed packet by packet.
    assert out == [None] * (RESYNC_AFTER - 1) + restarted[RESYNC_AFTER - 1:]


def test_with_a_sink_the_buffer_decodes_each_packet_itself() -> None:
    from aiortc.codecs.opus import OpusEncoder

    encoder = OpusEncoder()
    t = np.arange(960 * 5) / 48_000
    tone = (np.sin(2 * np.pi * 440 * t) * 8000).astype(np.int16)
    payloads: list[bytes] = []
    for k in range(5):
        frame = AudioFrame.from_ndarray(tone[k * 960:(k + 1) * 960].reshape(1, -1),
                                        format="s16", layout="mono")
        frame.sample_rate = 48_000
        frame.pts = k * 960
        frame.time_base = fractions.Fraction(1, 48_000)
        out, _ = encoder.encode(frame)
        payloads += out
    buffer = ArrivalOrderBuffer(16)
    got: list[AudioFrame] = []
    buffer.decode_to(got.append)
    for seq, payload in zip([10, 11, 13, 12, 14], payloads, strict=True):
        # Nothing goes back to the receiver (its decoder thread): the buffer decodes.
        assert buffer.add(packet(seq, payload)) == (False, None)
    assert len(got) == 4 and buffer.late == 1  # 12 came after 13: refused
    assert all(f.sample_rate == 48_000 and f.samples == 960 for f in got)
    pts = [f.pts or 0 for f in got]
    assert pts == sorted(pts) and len(set(pts)) == 4
    assert np.abs(got[-1].to_ndarray()).max() > 1000  # the tone, not silence


def test_a_packet_opus_cannot_decode_is_skipped_and_the_next_one_decodes() -> None:
    buffer = ArrivalOrderBuffer(16)
    got: list[AudioFrame] = []
    buffer.decode_to(got.append)
    # TOC byte: code 3 (a frame count follows), then a count byte of 0: invalid.
    assert buffer.add(packet(1, bytes([0x03, 0x00]))) == (False, None)
    assert buffer.undecodable == 1 and got == []
    assert buffer.add(packet(2, bytes([0xF8, 0xFF, 0xFE]))) == (False, None)  # a silence frame
    assert len(got) == 1 and buffer.undecodable == 1


def test_an_empty_payload_is_not_handed_to_the_decoder() -> None:
    buffer = ArrivalOrderBuffer(16)
    assert buffer.add(packet(1, b"")) == (False, None)
    assert released(buffer, [2]) == [2]


# ----------------------------------------------------------------------------- config


def test_webrtc_config_section() -> None:
    cfg = from_mapping({"webrtc": {"host": "", "ice_servers": [
        "stun:stun.example.net:3478", "turn:turn.example.net:3478?transport=udp"],
        "turn_username": "u", "turn_credential": "p", "idle_timeout": 2}})
    assert cfg.webrtc.host == "" and cfg.webrtc.idle_timeout == 2.0
    servers = cfg.webrtc.rtc_ice_servers()
    assert [s.urls for s in servers] == list(cfg.webrtc.ice_servers)
    assert servers[1].username == "u" and servers[0].username is None
    assert cfg.webrtc.link_headers() == [
        '<stun:stun.example.net:3478>; rel="ice-server"',
        '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; username="u"; '
        'credential="p"; credential-type="password"']
    assert WebRtcConfig().rtc_ice_servers() == []  # never aiortc's default public STUN


@pytest.mark.parametrize(("doc", "message"), [
    ({"host": "eth0"}, "webrtc.host = 'eth0' must be an IP address"),
    ({"ice_servers": ["http://x"]}, "webrtc.ice_servers: 'http://x' is not a STUN/TURN URL"),
    ({"idle_timeout": 0}, "webrtc.idle_timeout = 0 is out of range"),
    ({"handshake_timeout": 1000}, "webrtc.handshake_timeout = 1000 is out of range"),
    ({"enabled": "yes"}, "webrtc.enabled = 'yes' must be true or false"),
    ({"port": 1}, "unknown key webrtc.port"),
])
def test_bad_webrtc_config_names_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping({"webrtc": doc})
    assert message in str(info.value)


# ----------------------------------------------------------------------------- messages


def test_wire_names_and_fields_are_the_browser_protocols() -> None:
    final = wire(ev.FinalTranscription(audio_offset_ms=2240, processing_ms=172.0,
                                       utterance_id=1, text="And so.", start_ms=300))
    assert final == {"type": "finalTranscription", "audioOffsetMs": 2240,
                     "processingMs": 172.0, "utteranceId": 1, "text": "And so.",
                     "startMs": 300}
    partial = wire(ev.PartialTranscription(audio_offset_ms=1890, processing_ms=50.0,
                                           utterance_id=1, text="And so my",
                                           stable_text="And so"))
    assert partial["type"] == "partialTranscription" and partial["stableText"] == "And so"
    turn = wire(ev.TurnEnded(audio_offset_ms=3000, processing_ms=30.0, turn_id=1,
                             probability=0.9, reason=ev.TurnEndReason.MODEL,
                             transcript="And so."))
    assert turn["type"] == "turnEnd" and turn["probability"] == 0.9
    assert turn["reason"] == "model"
    closed = wire(ev.SessionClosed(audio_offset_ms=3000, reason="finished"))
    assert closed["type"] == "sessionClosed" and closed["reason"] == "finished"
    assert set(SPEC_NAMES.values()) >= {"speechStart", "turnEnd", "sessionClosed"}
    assert session_started("s1", 48000, "webrtc") == {
        "type": "sessionStarted", "sessionId": "s1", "sampleRate": 48000, "transport": "webrtc"}


def test_client_messages() -> None:
    assert parse_client_message('{"type": "end"}').kind == "end"
    msg = parse_client_message('{"type": "control", "action": "playback_started"}')
    assert (msg.kind, msg.action) == ("control", "playback_started")
    for bad in ('{"type": "control", "action": "explode"}', "[1]", "not json", '{"a": 1}',
                "[" * 100_000):
        with pytest.raises(InvalidRequestError, match="unexpected message"):
            parse_client_message(bad, binary_audio=False)
    with pytest.raises(InvalidRequestError) as info:
        parse_client_message("x", binary_audio=False)
    assert "binary audio" not in str(info.value)


# ----------------------------------------------------------------------------- audio


def frame_of(channels: list[np.ndarray], fmt: str, pts: int,
             rate: int = OPUS_RATE) -> AudioFrame:
    """A decoded frame as aiortc hands it over (packed s16 for Opus), or planar float."""
    if fmt == "s16":
        data = (np.stack(channels, axis=1).reshape(1, -1) * 32768).astype(np.int16)
    else:
        data = np.stack(channels).astype(np.float32)
    frame = AudioFrame.from_ndarray(data, format=fmt,
                                    layout="stereo" if len(channels) == 2 else "mono")
    frame.sample_rate = rate
    frame.time_base = fractions.Fraction(1, rate)
    frame.pts = pts
    return frame


def tone(hz: float, seconds: float, amplitude: float, rate: int = OPUS_RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * hz * t)).astype(np.float32)


@pytest.mark.parametrize("fmt", ["s16", "fltp"])
def test_downsampler_gives_the_channels_average_at_16_khz_with_every_frame(fmt: str) -> None:
    """Every 20 ms frame's audio comes out with that frame (1 ms held back at the start,
    given back at the end): what keeps WebRTC's latency near gRPC's."""
    left, right = tone(440, 1.0, 0.3), tone(440, 1.0, 0.2)
    down = Downsampler()
    parts = []
    for k in range(50):
        cut = slice(k * 960, (k + 1) * 960)
        parts.append(down(frame_of([left[cut], right[cut]], fmt, k * 960)))
        assert parts[-1].dtype == np.int16
        assert parts[-1].size >= 300 if k == 0 else parts[-1].size == 320
    parts.append(down(None))
    out = np.concatenate(parts).astype(np.float32) / 32768
    assert out.size == 16_000
    expected = tone(440, 1.0, 0.25, rate=16_000)  # (0.3 + 0.2) / 2, in phase
    assert np.abs(out[100:-100] - expected[100:-100]).max() < 0.01


def test_downsampler_takes_a_mono_peer_and_a_change_of_input() -> None:
    """A peer that renegotiates to another codec (8 kHz mono here) changes the decoded
    frames: the old resampler's tail comes first, nothing is lost or raised."""
    down = Downsampler()
    a = tone(300, 0.2, 0.5)
    first = np.concatenate([down(frame_of([a[i:i + 960]], "s16", i))
                            for i in range(0, a.size, 960)])
    b = tone(300, 0.2, 0.5, rate=8_000)
    second = np.concatenate([down(frame_of([b[i:i + 160]], "s16", i, rate=8_000))
                             for i in range(0, b.size, 160)] + [down(None)])
    assert first.size + second.size == 2 * 3200
    out = np.concatenate([first, second]).astype(np.float32) / 32768
    assert np.abs(out[100:-100]).max() == pytest.approx(0.5, abs=0.02)


# ----------------------------------------------------------------------------- fuzz

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

QUERY_KEYS = st.one_of(
    st.sampled_from(["partials", "vad.threshold", "vad.minSilenceMs", "turn.enabled",
                     "language", "frameEventEvery", "sampleRateHz", "vad", "x.y.z", ""]),
    st.text(max_size=20))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(QUERY_KEYS, st.text(max_size=30)), max_size=6))
def test_any_query_is_a_config_or_one_sentence(query: list[tuple[str, str]]) -> None:
    try:
        engine_from(query)
    except InvalidRequestError as exc:
        assert str(exc) and "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=400),
                 st.text(max_size=400).map(lambda t: "v=0\r\nm=audio 9 RTP/AVP 111\r\n" + t),
                 st.lists(st.sampled_from([
                     "v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=application 9 x",
                     "a=rtpmap:111 opus/48000/2", "a=sendonly", "a=recvonly", "a=setup:actpass",
                     "a=ice-ufrag:abcd", "a=ice-pwd:0123456789012345678901",
                     "a=fingerprint:sha-256 AB:CD", "a=rtpmap:x", "a=candidate:1", "a=fmtp:111 x",
                     "c=IN IP4 0.0.0.0", "a=ssrc:1", "a=mid:0"]), max_size=12).map(
                     lambda lines: "\r\n".join(lines) + "\r\n")))
def test_any_body_is_an_offer_or_one_sentence(sdp: str) -> None:
    try:
        check_offer(sdp)
    except InvalidOfferError as exc:
        assert str(exc) and "\n" not in str(exc)


# ----------------------------------------------------------------------------- CLI


@pytest.mark.parametrize(("argv", "message"), [
    (["webrtc", "tests/data/nope.wav"], "nope.wav"),
    (["webrtc", "README.md"], "README.md"),
    (["webrtc", "tests/data/jfk.wav", "--url", "ftp://x"], "is not the daemon's HTTP address"),
    (["webrtc", "tests/data/jfk.wav", "--tail", "-1"], "--tail -1 is out of range"),
    (["webrtc", "tests/data/jfk.wav", "--url", "http://127.0.0.1:1"],
     "no daemon answered at http://127.0.0.1:1/whip"),
])
def test_webrtc_cli_bad_input_is_exit_2_and_one_sentence(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from alfred_daemon import cli

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("alfred-daemon: ") and message in err, err
    assert "\n" not in err and "Traceback" not in err


def test_the_answer_asks_for_64_kbits_mono_opus_with_fec() -> None:
    from alfred_daemon.api.webrtc_ice import with_opus_params

    offer_like = ("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
                  "a=fmtp:111 minptime=10;useinbandfec=0\r\na=rtpmap:0 PCMU/8000\r\n"
                  "a=fmtp:0 x=1\r\n")
    out = with_opus_params(offer_like)
    assert ("a=fmtp:111 minptime=10;useinbandfec=1;maxaveragebitrate=64000;stereo=0"
            in out.split("\r\n")), out
    assert "a=fmtp:0 x=1" in out.split("\r\n"), out  # other codecs untouched
    # No fmtp line for Opus at all: one is added right after its rtpmap.
    bare = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 OPUS/48000/2\r\na=ssrc:1\r\n"
    lines = with_opus_params(bare).split("\r\n")
    assert lines[3] == "a=fmtp:96 maxaveragebitrate=64000;useinbandfec=1;stereo=0", lines
    assert with_opus_params(with_opus_params(bare)) == with_opus_params(bare)


def test_the_daemon_starts_without_the_webrtc_stack() -> None:
    """aiortc and PyAV (~35 MB of codec and DTLS libraries) load at the first WHIP offer,
    not with the daemon's modules."""
    import subprocess
    import sys

    code = ("import sys, alfred_daemon.ops.serve, alfred_daemon.api.http_server; "
            "print(sorted(m for m in ('aiortc', 'av') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout
