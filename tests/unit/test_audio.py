"""Unit tests of PCM validation, conversion, resampling and WAV reading."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from alfred_daemon.engine.audio import (
    MAX_FRAME_SAMPLES,
    StreamResampler,
    float_to_pcm16,
    read_wav,
    resample,
    to_float32,
)
from alfred_daemon.engine.errors import InvalidAudioError

# --------------------------------------------------------------------------- to_float32


def test_odd_byte_count_rejected_with_hint() -> None:
    with pytest.raises(InvalidAudioError, match=r"3 bytes.*even.*sample width"):
        to_float32(b"\x00\x01\x02")


@pytest.mark.parametrize(
    "frame",
    [b"", bytearray(), np.zeros(0, np.int16), np.zeros(0, np.float32)],
    ids=["bytes", "bytearray", "int16", "float32"],
)
def test_empty_frame_rejected(frame: bytes | bytearray | npt.NDArray[np.generic]) -> None:
    with pytest.raises(InvalidAudioError, match="empty"):
        to_float32(frame)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_rejected(bad: float, dtype: type[np.floating[npt.NBitBase]]) -> None:
    frame = np.zeros(320, dtype=dtype)
    frame[100] = bad
    with pytest.raises(InvalidAudioError, match="NaN or infinite"):
        to_float32(frame)


def test_two_dimensional_rejected() -> None:
    with pytest.raises(InvalidAudioError, match=r"1-D mono.*\(160, 2\)"):
        to_float32(np.zeros((160, 2), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.float16, np.complex64])
def test_unsupported_dtype_rejected(dtype: type[np.generic]) -> None:
    frame = np.ones(16, dtype=dtype)
    with pytest.raises(InvalidAudioError, match=rf"dtype {np.dtype(dtype)}.*int16.*float32"):
        to_float32(frame)


def test_non_audio_type_rejected() -> None:
    with pytest.raises(InvalidAudioError, match="bytes or a numpy array"):
        to_float32([0.0, 0.1])  # type: ignore[arg-type]


def test_too_long_frame_rejected() -> None:
    """The limit is the APIs' documented 1 MiB of LINEAR16: that much is taken, a sample
    more is not."""
    assert MAX_FRAME_SAMPLES == (1 << 20) // 2
    assert to_float32(bytes(2 * MAX_FRAME_SAMPLES)).size == MAX_FRAME_SAMPLES
    with pytest.raises(InvalidAudioError, match="too long"):
        to_float32(np.zeros(MAX_FRAME_SAMPLES + 1, dtype=np.int16))
    with pytest.raises(InvalidAudioError, match="too long"):
        to_float32(bytes(2 * (MAX_FRAME_SAMPLES + 1)))


def test_pcm16_bytes_scaling() -> None:
    raw = np.array([0, 16384, -16384, 32767, -32768], dtype="<i2").tobytes()
    out = to_float32(raw)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.5, -0.5, 32767 / 32768, -1.0])
    assert np.array_equal(to_float32(bytearray(raw)), out)
    assert np.array_equal(to_float32(memoryview(raw)), out)


def test_int16_array_scaling() -> None:
    out = to_float32(np.array([0, 8192, -32768, 32767], dtype=np.int16))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.0, 0.25, -1.0, 32767 / 32768])


def test_float_clipped_and_converted() -> None:
    out = to_float32(np.array([1.5, -2.0, 0.25, -0.999], dtype=np.float64))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.0, -1.0, 0.25, -0.999], rtol=1e-6)
    src = np.array([0.1, 0.2], dtype=np.float32)
    np.testing.assert_array_equal(to_float32(src), src)


def test_invalid_audio_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        to_float32(b"")


# --------------------------------------------------------------------------- resampling


def sine(freq: float, rate: int, seconds: float) -> npt.NDArray[np.float32]:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(x: npt.NDArray[np.float32], rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spectrum))])


def test_stream_resampler_48k_in_20ms_chunks() -> None:
    src = sine(440.0, 48_000, 1.0)
    rs = StreamResampler(48_000)
    chunk = 960  # 20 ms at 48 kHz
    pieces = [rs(src[i : i + chunk]) for i in range(0, src.size, chunk)]
    pieces.append(rs(np.zeros(0, dtype=np.float32), last=True))
    out = np.concatenate(pieces)
    assert out.dtype == np.float32
    assert abs(out.size - src.size / 3) <= 16
    assert abs(dominant_hz(out, 16_000) - 440.0) <= 2.0
    # no filter edge at chunk boundaries: the steady-state part stays a clean sine
    mid = out[1600:-1600]
    assert 0.45 < float(np.max(np.abs(mid))) < 0.55
    spectrum = np.abs(np.fft.rfft(mid * np.hanning(mid.size)))
    freqs = np.fft.rfftfreq(mid.size, 1 / 16_000)
    assert spectrum[freqs > 600].max() < 0.01 * spectrum.max()


def test_stream_resampler_matches_one_shot() -> None:
    src = sine(300.0, 48_000, 0.5)
    rs = StreamResampler(48_000)
    chunks = [rs(src[i : i + 960]) for i in range(0, src.size, 960)]
    chunks.append(rs(np.zeros(0, dtype=np.float32), last=True))
    streamed = np.concatenate(chunks)
    whole = resample(src, 48_000)
    assert streamed.size == whole.size
    np.testing.assert_allclose(streamed, whole, atol=1e-4)


def test_resample_16k_is_identity_and_bad_rate_rejected() -> None:
    x = sine(440.0, 16_000, 0.1)
    assert resample(x, 16_000) is x
    with pytest.raises(InvalidAudioError, match="12345 Hz"):
        StreamResampler(12_345)


# --------------------------------------------------------------------------- WAV files


def write_wav(path: Path, frames: bytes, *, width: int, channels: int, rate: int) -> None:
    with wave.open(str(path), "wb") as wf:
        wf.setnchannels(channels)
        wf.setsampwidth(width)
        wf.setframerate(rate)
        wf.writeframes(frames)


def test_read_wav_16bit_stereo_downmixed(tmp_path: Path) -> None:
    left = np.array([16384, -16384, 32767, 0], dtype="<i2")
    right = np.array([0, -16384, -32767, 8192], dtype="<i2")
    interleaved = np.stack([left, right], axis=1).reshape(-1)
    path = tmp_path / "stereo.wav"
    write_wav(path, interleaved.tobytes(), width=2, channels=2, rate=44_100)
    data, rate = read_wav(path)
    assert rate == 44_100
    assert data.dtype == np.float32
    assert data.shape == (4,)
    np.testing.assert_allclose(data, [0.25, -0.5, 0.0, 0.125], atol=1e-6)


def test_read_wav_16bit_mono(tmp_path: Path) -> None:
    path = tmp_path / "mono.wav"
    write_wav(path, np.array([0, 16384], dtype="<i2").tobytes(), width=2, channels=1, rate=16_000)
    data, rate = read_wav(str(path))
    assert rate == 16_000
    np.testing.assert_allclose(data, [0.0, 0.5])


def test_read_wav_24bit_rejected(tmp_path: Path) -> None:
    path = tmp_path / "deep.wav"
    write_wav(path, bytes(3 * 100), width=3, channels=1, rate=16_000)
    with pytest.raises(InvalidAudioError, match=r"24-bit WAV is not supported.*16-bit"):
        read_wav(path)


def test_read_wav_not_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(b"this is not a RIFF file at all")
    with pytest.raises(InvalidAudioError, match="not a PCM WAV"):
        read_wav(path)


# --------------------------------------------------------------------------- float_to_pcm16


def test_float_to_pcm16_round_trip() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1.0, 1.0, 4000).astype(np.float32)
    pcm = float_to_pcm16(x)
    assert len(pcm) == 2 * x.size
    back = to_float32(pcm)
    assert np.max(np.abs(back - x)) <= 1.0 / 32768 + 1e-7


def test_float_to_pcm16_clips() -> None:
    pcm = float_to_pcm16(np.array([1.0, 2.0, -1.0, -3.0, 0.5], dtype=np.float32))
    assert np.frombuffer(pcm, dtype="<i2").tolist() == [32767, 32767, -32768, -32768, 16384]
