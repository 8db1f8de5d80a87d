"""PCM validation, conversion and resampling.

Frames arrive as LINEAR16 bytes (the wire format) or numpy arrays (library use). Each is
validated *before* any state changes, so a bad frame raises :class:`InvalidAudioError` and
the session continues as if it had never been sent.
"""

from __future__ import annotations

import shlex
import struct
import wave
from collections.abc import Collection
from pathlib import Path

import numpy as np
import numpy.typing as npt

from .config import SAMPLE_RATE
from .errors import InvalidAudioError

FloatArray = npt.NDArray[np.float32]

MAX_FRAME_SAMPLES = 1 << 19
"""The APIs' frame limit, 1 MiB of LINEAR16 (10.9 s at 48 kHz): a longer single frame is a
client bug, not audio."""

RESAMPLER_RATES = (8_000, 11_025, 16_000, 22_050, 24_000, 32_000, 44_100, 48_000)
"""Input rates :class:`StreamResampler` takes, so the rates an engine Session can open at."""


def to_float32(frame: bytes | bytearray | memoryview | npt.NDArray[np.generic]) -> FloatArray:
    """Convert one frame to mono float32 in [-1, 1], or raise InvalidAudioError.

    * bytes: little-endian signed 16-bit PCM; an odd byte count is a wrong sample width.
    * int16 arrays are scaled by 1/32768; float32/float64 arrays must be finite and are
      clipped to [-1, 1] (slight overs happen after client-side gain).
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        raw = bytes(frame)
        if not raw:
            raise InvalidAudioError("empty audio frame")
        if len(raw) % 2:
            raise InvalidAudioError(
                f"audio frame has {len(raw)} bytes; LINEAR16 needs an even count (2 bytes per "
                "sample) -- wrong sample width?"
            )
        samples = np.frombuffer(raw, dtype="<i2")
        if samples.size > MAX_FRAME_SAMPLES:
            raise InvalidAudioError(f"audio frame of {samples.size} samples is too long")
        return samples.astype(np.float32) / np.float32(32768.0)
    if not isinstance(frame, np.ndarray):
        raise InvalidAudioError(f"audio frame must be bytes or a numpy array, not {type(frame)}")
    arr = frame
    if arr.ndim != 1:
        raise InvalidAudioError(f"audio frame must be 1-D mono, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidAudioError("empty audio frame")
    if arr.size > MAX_FRAME_SAMPLES:
        raise InvalidAudioError(f"audio frame of {arr.size} samples is too long")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / np.float32(32768.0)
    if arr.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(arr)):
            raise InvalidAudioError("audio frame contains NaN or infinite samples")
        clipped: FloatArray = np.clip(arr, -1.0, 1.0).astype(np.float32, copy=False)
        return clipped
    raise InvalidAudioError(
        f"audio frame dtype {arr.dtype} is not supported; use int16 PCM or float32 in [-1, 1]"
    )


class StreamResampler:
    """Streaming resampler to 16 kHz (soxr, high quality), keeping filter state across frames.

    Resampling frame by frame with a stateless call would put a filter edge at every frame
    boundary; soxr's stream object carries the tail between calls.
    """

    def __init__(self, in_rate: int) -> None:
        import soxr  # local: only sessions that need it pay for the import

        if in_rate not in RESAMPLER_RATES:
            raise InvalidAudioError(f"sample rate {in_rate} Hz is not supported")
        self.in_rate = in_rate
        self._stream = soxr.ResampleStream(in_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ")

    def __call__(self, samples: FloatArray, last: bool = False) -> FloatArray:
        out = self._stream.resample_chunk(samples, last=last)
        return np.asarray(out, dtype=np.float32)


def session_samples(
    frame: bytes | bytearray | memoryview | npt.NDArray[np.generic],
    frame_rate: int | None, session_rate: int, resampler: StreamResampler | None,
) -> FloatArray:
    """One client frame as 16 kHz float32: the rate checked against the session's,
    converted, resampled. Raises InvalidAudioError before any state changes."""
    if frame_rate is not None and frame_rate != session_rate:
        raise InvalidAudioError(
            f"frame is {frame_rate} Hz but the session was opened at {session_rate} Hz"
        )
    samples = to_float32(frame)
    return resampler(samples) if resampler is not None else samples


def read_wav(path: str | Path) -> tuple[FloatArray, int]:
    """Read a PCM WAV file as mono float32 and its sample rate (stereo is averaged)."""
    try:
        with wave.open(str(path), "rb") as wf:
            width = wf.getsampwidth()
            channels = wf.getnchannels()
            rate = wf.getframerate()
            raw = wf.readframes(wf.getnframes())
    except (wave.Error, EOFError) as exc:
        raise InvalidAudioError(f"{path}: not a PCM WAV file ({exc})") from None
    if width == 2:
        data = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 1:
        data = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 4:
        data = np.frombuffer(raw, dtype="<i4").astype(np.float32) / 2_147_483_648.0
    else:
        raise InvalidAudioError(f"{path}: {8 * width}-bit WAV is not supported (use 16-bit PCM)")
    if channels > 1:
        data = data.reshape(-1, channels).mean(axis=1)
    return data.astype(np.float32, copy=False), rate


_OTHER_FORMATS = ((b"fLaC", "a FLAC file"), (b"OggS", "an Ogg (Vorbis/Opus) file"),
                  (b"ID3", "an MP3 file"), (b"FORM", "an AIFF file"),
                  (b"RF64", "an RF64 (64-bit WAV) file"))
"""Magic numbers of audio files people pass by mistake, to name what they gave instead."""

_FORMAT_TAGS = {2: "ADPCM", 6: "A-law", 7: "mu-law", 17: "IMA ADPCM", 85: "MP3-in-WAV"}
_PCM, _FLOAT, _EXTENSIBLE = 1, 3, 0xFFFE
_SUPPORTED_WAV = "8/16/24/32-bit integer PCM or 32/64-bit float WAV"


def load_wav(path: str | Path, rates: Collection[int]) -> tuple[FloatArray, int]:
    """A WAV file as mono float32 in [-1, 1] at a rate in ``rates`` (resampled to 16 kHz
    when its own rate is not one of them), or an InvalidAudioError whose message is one
    sentence naming the file, what is wrong and what to do.

    ``transcribe`` and ``stream`` both read files through here, so a file one accepts the
    other accepts too: the conversions a user would otherwise do by hand (stereo, 8/24/32-bit,
    float, odd rates) are cheap on the client side. Unlike :func:`read_wav` this parses the
    RIFF chunks itself, because the ``wave`` module refuses float and extensible WAV.
    """
    audio, rate = _decode_wav(Path(path))
    if rate in rates:
        return audio, rate
    import soxr  # local: only files at a rate the consumer cannot take pay for the import

    out = soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ")
    return np.asarray(out, dtype=np.float32), SAMPLE_RATE


def _decode_wav(path: Path) -> tuple[FloatArray, int]:
    q = shlex.quote(str(path))
    convert = f"convert it with `sox {q} -b 16 out.wav` (or `ffmpeg -i {q} out.wav`)"
    raw = _read_audio_file(path)
    if raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise InvalidAudioError(_not_wav(path, raw, convert))
    fmt, data = _riff_chunks(raw)
    if fmt is None or len(fmt) < 16 or data is None:
        missing = "fmt" if fmt is None or len(fmt) < 16 else "data"
        raise InvalidAudioError(f"{path} is a damaged WAV file (no {missing} chunk); "
                                f"re-export it or {convert}")
    tag, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt[:16])
    if tag == _EXTENSIBLE and len(fmt) >= 26:
        tag = int.from_bytes(fmt[24:26], "little")  # the sub-format GUID's first two bytes
    width = block_align // channels if channels else 0
    if not channels or not width or block_align != width * channels:
        raise InvalidAudioError(f"{path} is a damaged WAV file ({channels} channels, "
                                f"{block_align}-byte frames); re-export it or {convert}")
    if not 1_000 <= rate <= 768_000:
        raise InvalidAudioError(f"{path} claims a sample rate of {rate} Hz, which is not "
                                f"audio; re-export it or {convert}")
    data = data[: len(data) - len(data) % block_align]  # a truncated file's partial frame
    if not data:
        raise InvalidAudioError(f"{path} contains no audio (0 samples); give a WAV file with "
                                "audio in it")
    if tag == _PCM and width in (1, 2, 3, 4):
        samples = _pcm_to_float(data, width)
    elif tag == _FLOAT and width in (4, 8):
        floats = np.frombuffer(data, dtype="<f4" if width == 4 else "<f8")
        samples = np.clip(np.nan_to_num(floats), -1.0, 1.0).astype(np.float32)
    else:
        kind = ("integer PCM" if tag == _PCM else "float" if tag == _FLOAT
                else f"{_FORMAT_TAGS.get(tag, 'format')} (format tag {tag})")
        raise InvalidAudioError(f"{path} is {bits or 8 * width}-bit {kind} WAV; alfred-daemon "
                                f"reads {_SUPPORTED_WAV}; {convert}")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)
    return samples, rate


def _read_audio_file(path: Path) -> bytes:
    """The file's bytes, or an InvalidAudioError saying why there are none."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise InvalidAudioError(f"{path} does not exist; check the path") from None
    except IsADirectoryError:
        raise InvalidAudioError(f"{path} is a directory; give a WAV file") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise InvalidAudioError(f"cannot read {path} ({reason}); check that it is a "
                                "readable file") from None
    if not raw:
        raise InvalidAudioError(f"{path} is empty (0 bytes); give a WAV file with audio in it")
    return raw


def _not_wav(path: Path, raw: bytes, convert: str) -> str:
    """What a file without a RIFF/WAVE header is, as far as its first bytes tell."""
    for magic, what in _OTHER_FORMATS:
        if raw.startswith(magic):
            return f"{path} is {what}, not WAV; {convert}"
    if _looks_like_text(raw):
        return f"{path} is a text file, not audio; give a WAV file"
    return f"{path} is not a WAV file (no RIFF/WAVE header); {convert}"


def _riff_chunks(raw: bytes) -> tuple[bytes | None, bytes | None]:
    """The ``fmt `` and ``data`` chunks of a RIFF/WAVE file. A data chunk that claims more
    bytes than the file holds (a truncated file, or a streaming writer's placeholder size)
    yields what is there."""
    fmt = data = None
    pos = 12
    while pos + 8 <= len(raw) and (fmt is None or data is None):
        cid, size = raw[pos : pos + 4], int.from_bytes(raw[pos + 4 : pos + 8], "little")
        body = raw[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            fmt = body
        elif cid == b"data":
            data = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    return fmt, data


def _pcm_to_float(data: bytes, width: int) -> FloatArray:
    if width == 1:  # 8-bit WAV is unsigned, centred on 128
        return (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    if width == 2:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32768.0)
    if width == 3:  # shift each 3-byte sample into the top of an int32
        padded = np.zeros((len(data) // 3, 4), dtype=np.uint8)
        padded[:, 1:] = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        data = padded.tobytes()
    ints = np.frombuffer(data, dtype="<i4").astype(np.float64)
    return (ints / 2_147_483_648.0).astype(np.float32)


def _looks_like_text(raw: bytes) -> bool:
    head = raw[:4096]
    if b"\0" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # only a multi-byte character cut at the end
    return True


def resample(samples: FloatArray, in_rate: int) -> FloatArray:
    """One-shot resample of a whole signal to 16 kHz."""
    if in_rate == SAMPLE_RATE:
        return samples
    rs = StreamResampler(in_rate)
    return rs(samples, last=True)


def float_to_pcm16(samples: FloatArray) -> bytes:
    """float32 [-1, 1] -> LINEAR16 bytes (for clients and tests)."""
    clipped = np.clip(samples, -1.0, 1.0 - 1.0 / 32768.0)
    return (clipped * 32768.0).astype("<i2").tobytes()
