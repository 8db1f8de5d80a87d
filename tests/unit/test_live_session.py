"""The supervisor's audio intake: frames -> exact int16 windows, tail padding, bad input."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import numpy as np
import pytest

from alfred_daemon.engine.audio import StreamResampler
from alfred_daemon.engine.errors import InvalidAudioError
from alfred_daemon.engine.session import SessionCore
from alfred_daemon.engine.vad import WINDOW
from alfred_daemon.runtime.live_session import LiveSession
from alfred_daemon.runtime.ring import RingWriter


@pytest.fixture
def ring() -> Iterator[RingWriter]:
    w = RingWriter.create(f"alfredunit-{os.getpid()}-intake", 64)
    yield w
    w.close()
    w.unlink()


def make(ring: RingWriter, rate: int = 16_000) -> LiveSession:
    return LiveSession(
        key=1, session_id="s", core=SessionCore(), base_config=SessionCore().config, ring=ring,
        sample_rate=rate, resampler=StreamResampler(rate) if rate != 16_000 else None,
        events=asyncio.Queue(),
    )


def test_linear16_frames_become_identical_int16_windows(ring: RingWriter) -> None:
    s = make(ring)
    rng = np.random.default_rng(7)
    pcm = rng.integers(-32768, 32767, 5 * WINDOW + 100, dtype=np.int16)
    got = [s.windows_from(pcm[i : i + 320].tobytes(), None) for i in range(0, pcm.size, 320)]
    windows = np.concatenate([g for g in got if g.size])
    assert windows.shape == (5, WINDOW)
    assert np.array_equal(windows.reshape(-1), pcm[: 5 * WINDOW])  # bit-exact round trip
    assert s.pending.size == 100
    tail = s.tail_windows()
    assert tail.shape == (1, WINDOW)
    assert np.array_equal(tail[0, :100], pcm[5 * WINDOW :])
    assert not tail[0, 100:].any()  # zero padding
    assert s.pending.size == 0


def test_resampled_session_produces_16k_windows(ring: RingWriter) -> None:
    s = make(ring, 48_000)
    tone = (0.5 * np.sin(np.arange(48_000) * 2 * np.pi * 440 / 48_000)).astype(np.float32)
    n = sum(len(s.windows_from(tone[i : i + 960], None)) for i in range(0, tone.size, 960))
    n += len(s.tail_windows())
    assert n in (31, 32)  # 1 s at 16 kHz is 31.25 windows


def test_bad_frame_changes_nothing(ring: RingWriter) -> None:
    s = make(ring)
    s.windows_from(np.zeros(100, np.int16).tobytes(), None)
    with pytest.raises(InvalidAudioError, match="even"):
        s.windows_from(b"\x00\x01\x02", None)
    with pytest.raises(InvalidAudioError, match="44100 Hz"):
        s.windows_from(np.zeros(100, np.int16).tobytes(), 44_100)
    assert s.pending.size == 100


def test_lag_is_age_of_oldest_unanalysed_window(ring: RingWriter) -> None:
    s = make(ring)
    assert s.lag_ms(100.0) == 0.0
    s.write_times.append((99.5, 0.0))
    s.write_times.append((99.9, 0.0))
    assert s.lag_ms(100.0) == pytest.approx(500.0)


def test_a_session_closed_with_its_final_still_out_still_ends_with_session_closed() -> None:
    """A finish that runs out of time closes the session while its final is being decoded
    (a starved or stopped worker). The final is lost, but session_closed still goes out,
    last: before, it waited behind the final's slot and the client's stream just stopped."""
    from alfred_daemon.engine.config import EngineConfig
    from alfred_daemon.engine.events import FinalTranscription, SessionClosed, SpeechEnded
    from alfred_daemon.runtime.supervisor import Supervisor

    config = EngineConfig().replace(stt={"speculative_final": False, "partials": False})
    core = SessionCore(config)
    ring = RingWriter.create(f"alfredunit-{os.getpid()}-held", 64)  # closing unlinks it
    s = LiveSession(key=7, session_id="held", core=core, base_config=config, ring=ring,
                    sample_rate=16_000, resampler=None, events=asyncio.Queue())
    sup = Supervisor()
    sup._sessions[s.session_id] = s
    sup._by_key[s.key] = s
    for _ in range(40):  # 1.3 s of speech, then silence until the VAD ends it
        core.on_vad(0.95)
    for _ in range(20):
        core.on_vad(0.01)
    jobs = core.take_jobs()
    assert any(j.kind.name == "FINAL" for j in jobs)  # its result never comes back

    sup.close_session("held", "finished")
    events = []
    while not s.events.empty():
        events.append(s.events.get_nowait())
    assert events[-1] is None  # the stream's end
    got = events[:-1]
    assert isinstance(got[-1], SessionClosed) and got[-1].reason == "finished", got
    assert not any(isinstance(e, FinalTranscription) for e in got)
    assert any(isinstance(e, SpeechEnded) for e in got)  # what came before it still came
