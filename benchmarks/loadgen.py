"""What both sides of the load benchmark share: the audio each session streams, its pacing,
and how latencies are summarised.

Depends on numpy and the standard library only, so the Pipecat runner (which may live in
another virtualenv, see ``pipecat_runner.py``) and the daemon's load generator send
byte-identical audio and read their figures the same way. For that reason every random
draw comes from generators whose streams are frozen across versions (``random.Random``,
numpy's legacy ``RandomState``), and what the audio's samples depend on is either exact
(``math.fsum`` for the noise floor's level) or rounded well above the last bit a numpy
release's summation order could change (a clip's DC offset and gain).

Two profiles (:func:`make_script`):

``realistic`` (the default)
    Real utterances of every length -- the usable clips of ``tests/data/long`` (2-19 s of
    read speech, most with pauses of their own) and the ten Harvard sentences -- in a
    seeded order, 1-2 s pauses between them, and a noise floor under everything, pauses
    included, so that no frame is digital silence (:func:`noise_floor`). Each clip is
    DC-free and levelled so its loudest 10 ms is at -16 dBFS RMS (what a capture path's
    high-pass and gain control deliver; as recorded, the quietest clip streamed peaks at
    -33 dBFS, 17 dB over the floor). Speech ends and utterance lengths are measured on that
    clean, levelled clip, before the floor is added. Which clips are left out and why:
    :data:`EXCLUDED`; which are cut short: :data:`TRIMMED`.
``harvard``
    The ten single-sentence Harvard recordings, 0.8-2.0 s of digital silence between them
    (the profile the benchmark streamed before the realistic one existed; its scripts are
    byte-identical to that version's for the same seed).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
import random
import signal
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = Path(os.environ.get("ALFRED_SHARED_AUDIO", REPO / "tests" / "data"))
RATE = 16_000
FRAME = 320
"""Samples per frame sent: 20 ms, what telephony and WebRTC stacks deliver."""
FRAME_S = FRAME / RATE
BOUNDS = {"partial_lag_p95": 250.0, "final_p95": 400.0, "turn_p95": 400.0}
"""The issue's bounds on p95 latencies (ms); a system is also held to 0 dropped frames."""
PROFILES = ("realistic", "harvard")
DEFAULT_PROFILE = "realistic"

NOISE_DBFS = -50.0
"""RMS level of the realistic profile's noise floor (the issue's measurement)."""
LEVEL_DBFS = -16.0
"""RMS level of each realistic clip's loudest 10 ms frame after levelling."""
FLOOR_MAX_DB = -40.0
"""A clip whose own noise floor is above this (dB of its loudest 10 ms) is not streamed
by the realistic profile unless :data:`TRIMMED` cuts it: under such a floor the -45 dB
speech end reads the noise, not the speech (see :func:`clip_floor_db`)."""
PAUSE_S = (1.0, 2.0)
"""Pauses between the realistic profile's clips, uniform in this range."""
TAIL_NOISE_S = 8.0
"""Noise floor generated beyond the script, streamed (cycled) while a run waits for the
last results: a live call keeps delivering its floor after the last words."""
BANDS: tuple[tuple[str, float, float], ...] = (
    ("<3 s", 0.0, 3.0), ("3-8 s", 3.0, 8.0), (">=8 s", 8.0, math.inf))
"""Utterance-length bands (seconds of speech since the previous pause or the clip start)."""

EXCLUDED: dict[str, str] = {
    # Own noise floor above FLOOR_MAX_DB (5th percentile of 10 ms frames, DC removed): the
    # end's -45 dB threshold lies under the floor, so the "end" is wherever the clip stops.
    "sphinx4_10001-90210-01803.wav": "floor -36 dB of peak (low-frequency rumble)",
    "icefall_voices-sp0307-ch127535-sg0042.wav": "floor -40 dB of peak (reverberant room)",
    "pocketsphinx_librivox-0870.wav": "floor -37 dB of peak (64 kb/s MP3 source)",
    "pocketsphinx_librivox-0880.wav": "floor -30 dB of peak (64 kb/s MP3 source)",
    "pocketsphinx_librivox-0890.wav": "floor -37 dB of peak (64 kb/s MP3 source)",
    "pocketsphinx_librivox-0920.wav": "floor -37 dB of peak (64 kb/s MP3 source)",
    "pocketsphinx_librivox-0930.wav": "floor -33 dB of peak (64 kb/s MP3 source)",
    "wenet_librispeech-1995-1837-0001.wav": "floor -38 dB of peak",
    "sherpa_1221-135766-0002.wav": "floor -30 dB of peak",
    "openseq2seq_wsj-206o0103.wav": "floor -31 dB of peak",
    "openseq2seq_wsj-40dc021d.wav": "floor -34 dB of peak",
    "openseq2seq_wsj-46gc040q.wav": "floor -35 dB of peak",
    # Floor below FLOOR_MAX_DB, but the last 10 ms above -45 dB is not the end of speech:
    # the clip ends in its own floor at about -45 dB (so the end read is the clip's end),
    # or in breath, a click or line noise. "Late": the measured end minus the end of
    # Silero's last speech segment on the streamed audio.
    "pocketsphinx_cards-001.wav": "ends in its floor (-41 dB, over the end threshold): "
                                  "0.07-0.11 s late, depending on the noise",
    "pocketsphinx_cards-002.wav": "ends in its floor (-44 dB): 0.18 s late",
    "pocketsphinx_cards-003.wav": "ends in its floor (-40 dB): 0.19 s late",
    "pocketsphinx_cards-004.wav": "ends in its floor (-46 dB): 0.25 s late",
    "pocketsphinx_cards-005.wav": "ends in its floor (-45 dB): 0.21 s late",
    "pocketsphinx_goforward.wav": "ends in its floor (-44 dB): 0.55 s late",
    "leopard_test.wav": "ends in noise at -41..-49 dB: 0.31 s late",
    "sherpa_1089-134686-0001.wav": "ends in its floor (-46 dB): 0.39 s late",
    "sherpa_sensevoice-en.wav": "a click 0.4 s after the last word reads as an utterance",
    "deepgram_testing-123.wav": "8-bit source: a click at 0 s reads as an utterance, "
                                "quantisation noise at the end as speech (0.87 s late)",
    "watson_speech.wav": "ends in 0.9 s of noise at -39..-49 dB: 0.87 s late",
    "joinly_OSR_us_000_0034.wav": "ends in 0.7 s of noise at -38..-50 dB: 0.66 s late",
    "openseq2seq_wsj-01jc020j.wav": "ends in its floor (-44 dB): 0.46 s late",
    "openseq2seq_wsj-47dc0303.wav": "ends in 1.9 s of noise: 1.87 s late",
    "openseq2seq_wsj-48rc041b.wav": "ends in 1.2 s of noise: 1.23 s late",
    "openseq2seq_wsj-49bc0410.wav": "ends in 1.7 s of noise: 1.67 s late",
}
"""``tests/data/long`` clips the realistic profile leaves out (28 of 47), and why. Floors
are :func:`clip_floor_db`; "late" compares :func:`speech_end` on the clean, levelled clip
with the end of Silero's last segment on that clip streamed over the floor, the daemon's VAD
settings. ``tests/integration/test_benchmarks.py`` checks the floor rule against this list, and
that on every clip streamed Silero's last speech ends 0.1 s before to 0.15 s after the measured
end, and every segment end it finds is within 0.2 s of a measured one."""

TRIMMED: dict[str, float] = {
    "sherpa_1221-135766-0001.wav": 16.32,
    "deepgram_preamble.wav": 18.62,
}
"""Clips streamed only up to this many seconds. Each ends in noise after its last word
(LibriSpeech 1221-135766-0001: 0.4 s of rumble at -31 dB of peak; the Deepgram preamble:
0.5 s of floor at -37..-44 dB), so its end cannot be read from the audio as it is; cut
where the level falls to that floor (with rumble below 100 Hz removed) and Silero agrees,
the end is the cut. Kept rather than excluded because they are the corpus' long speech: a
16 s passage without a pause (the only utterance of 8 s or more) and a 19 s monologue
with pauses inside its sentences."""


def read_clip(path: Path) -> npt.NDArray[np.float32]:
    """A 16 kHz mono 16-bit WAV as float32 (the shared corpus is all in that format)."""
    with wave.open(str(path), "rb") as wf:
        if (wf.getframerate(), wf.getnchannels(), wf.getsampwidth()) != (RATE, 1, 2):
            raise ValueError(f"{path}: expected 16 kHz mono 16-bit PCM")
        raw = wf.readframes(wf.getnframes())
    return np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0


def _frame_db(clip: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
    """Level of each 10 ms frame, dB relative to the loudest."""
    hop = RATE // 100
    frames = clip[: clip.size // hop * hop].reshape(-1, hop)
    rms = np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1)) + 1e-12
    return np.asarray(20 * np.log10(rms / rms.max()), dtype=np.float64)


def speech_end(clip: npt.NDArray[np.float32]) -> int:
    """Sample index where the clip's speech ends: the end of its last 10 ms frame above
    -45 dB of the clip's peak frame.

    Measured on the audio itself, so latencies do not depend on either system's own VAD.
    """
    hop = RATE // 100
    loud = np.nonzero(_frame_db(clip) > -45.0)[0]
    return int((loud[-1] + 1) * hop) if loud.size else clip.size


PAUSE_DB = -28.0
PAUSE_MS = 300


def utterances(clip: npt.NDArray[np.float32]) -> list[tuple[int, int]]:
    """``(start, end)`` sample indices of the speech between the clip's pauses.

    A pause inside a clip is a run of >= 300 ms below -28 dB of peak; an utterance ends
    where one begins (and at :func:`speech_end`) and starts at the clip's first 10 ms
    above -45 dB, or at the first frame above -28 dB after a pause. ``end - start`` is the
    utterance length the results are banded by: the speech a system has to transcribe since
    the previous pause.
    """
    hop = RATE // 100
    db = _frame_db(clip)
    loud = np.nonzero(db > PAUSE_DB)[0]
    gap = PAUSE_MS // 10
    pauses = [(int(a), int(b)) for a, b in itertools.pairwise(loud) if b - a > gap]
    audible = np.nonzero(db > -45.0)[0]
    starts = [int(audible[0]) * hop if audible.size else 0, *(b * hop for _, b in pauses)]
    ends = [(a + 1) * hop for a, _ in pauses] + [speech_end(clip)]
    return list(zip(starts, ends, strict=True))


def speech_ends(clip: npt.NDArray[np.float32]) -> list[int]:
    """Sample indices where speech ends inside the clip and at its end (:func:`utterances`).

    The harvard profile streams only clips without an inner pause: the multi-sentence
    jfk.wav pauses for 0.5-1.2 s between sentences over a noise floor at -34 dB and ends in
    0.4 s of loud noise, so where its speech ends is not decidable from the audio to better
    than a few hundred ms -- too coarse for latencies of a few hundred ms. The ten Harvard
    sentences are tightly trimmed over a quiet floor, and their ends agree with Silero's to
    within a window. The realistic profile's clips are chosen by the same test
    (:data:`EXCLUDED`).
    """
    return [end for _, end in utterances(clip)]


def clip_floor_db(clip: npt.NDArray[np.float32]) -> float:
    """The clip's own noise floor: 5th percentile of its 10 ms frame levels, DC removed,
    dB of its loudest frame. (DC matters: several sources carry an offset 30 dB below their
    peak, which would otherwise read as a floor.)"""
    centred = clip.astype(np.float64) - float(np.mean(clip, dtype=np.float64))
    return float(np.percentile(_frame_db(centred), 5))


def band(speech_ms: float) -> str:
    """The :data:`BANDS` label of an utterance ``speech_ms`` long."""
    for label, lo, hi in BANDS:
        if lo * 1000 <= speech_ms < hi * 1000:
            return label
    raise ValueError(f"negative utterance length {speech_ms}")


@dataclass(frozen=True)
class Script:
    """One session's audio: real utterances in a seeded order with realistic pauses."""

    pcm: bytes
    """16 kHz mono s16le, a whole number of frames."""
    speech_ends: list[int]
    """Frame index (0-based) of each utterance's last speech frame, ascending."""
    speech_ms: list[int] = field(default_factory=list)
    """Length of each of those utterances, ms of speech since the previous pause or the
    start of its clip (:func:`utterances`); empty when not known."""
    tail: bytes = b""
    """What to stream after the script, cycled (whole frames): the noise floor continued;
    empty for digital silence."""
    layout: list[tuple[str, int]] = field(default_factory=list)
    """Each clip placed, and the sample it starts at (to trace a figure to its audio)."""

    @property
    def frames(self) -> list[bytes]:
        step = FRAME * 2
        return [self.pcm[i : i + step] for i in range(0, len(self.pcm), step)]

    def tail_frame(self, k: int) -> bytes:
        """Frame ``k`` (0-based) of what follows the script."""
        step = FRAME * 2
        if not self.tail:
            return bytes(step)
        i = k * step % len(self.tail)
        return self.tail[i : i + step]

    def utterance_end_for(self, frame: float, *, tolerance: int = 15) -> int | None:
        """The speech end nearest ``frame`` (a frame index), if within ``tolerance`` frames."""
        if not self.speech_ends:
            return None
        end = min(self.speech_ends, key=lambda e: abs(e - frame))
        return end if abs(end - frame) <= tolerance else None

    def speech_ms_for(self, end: int) -> int | None:
        """Length (ms) of the utterance ending at frame ``end``, if known."""
        lengths = dict(zip(self.speech_ends, self.speech_ms, strict=False))
        return lengths.get(end)


@dataclass(frozen=True)
class Clip:
    """A clip as a profile streams it, with its utterances (:func:`utterances`)."""

    name: str
    audio: npt.NDArray[np.float32]
    """The clean audio speech ends are measured on (realistic: :func:`prepare_clip`)."""
    utterances: list[tuple[int, int]]


def _manifest(path: Path) -> list[str]:
    return [str(u["file"]) for u in json.loads(path.read_text())["utterances"]]


@functools.cache
def single_sentence_clips() -> tuple[Clip, ...]:
    """The corpus clips without an inner pause, as they are (read and measured once per
    process, not once per session): the harvard profile's pool."""
    clips = ((f, read_clip(SHARED_AUDIO / f)) for f in _manifest(SHARED_AUDIO / "manifest.json"))
    return tuple(c for c in (Clip(f, a, utterances(a)) for f, a in clips)
                 if len(c.utterances) == 1)


def prepare_clip(name: str, clip: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Trimmed (:data:`TRIMMED`), DC removed, loudest 10 ms levelled to :data:`LEVEL_DBFS`.

    The offset is rounded to 1e-7 and the gain to 0.01 dB, so that a last-bit difference in
    a numpy reduction cannot change a sample between the two virtualenvs.
    """
    if name in TRIMMED:
        clip = clip[: round(TRIMMED[name] * RATE)]
    x = clip.astype(np.float64)
    x -= round(float(np.mean(x)), 7)
    hop = RATE // 100
    frames = x[: x.size // hop * hop].reshape(-1, hop)
    peak_db = 20 * math.log10(float(np.sqrt(np.mean(frames**2, axis=1)).max()))
    gain = 10 ** (round(LEVEL_DBFS - peak_db, 2) / 20)
    return (x * gain).astype(np.float32)


@functools.cache
def realistic_pool() -> tuple[Clip, ...]:
    """The realistic profile's clips: ``tests/data/long`` but :data:`EXCLUDED` (and any
    clip not listed there whose floor fails :data:`FLOOR_MAX_DB`), then the ten Harvard
    sentences, in manifest order (read and measured once per process)."""
    out: list[Clip] = []
    for name in _manifest(SHARED_AUDIO / "long" / "manifest.json"):
        if name in EXCLUDED:
            continue
        raw = read_clip(SHARED_AUDIO / "long" / name)
        if name not in TRIMMED and clip_floor_db(raw) > FLOOR_MAX_DB:
            continue
        audio = prepare_clip(name, raw)
        out.append(Clip(name, audio, utterances(audio)))
    for name in _manifest(SHARED_AUDIO / "manifest.json"):
        if name.startswith("spk"):
            audio = prepare_clip(name, read_clip(SHARED_AUDIO / name))
            out.append(Clip(name, audio, utterances(audio)))
    return tuple(out)


def noise_floor(seed: int, samples: int) -> npt.NDArray[np.float64]:
    """``samples`` of pink noise at :data:`NOISE_DBFS` RMS, the same for the same seed.

    Voss-McCartney: ten rows of Gaussian noise, row k held for 2**k samples (each from a
    random phase) and summed, which gives a -3 dB/octave (1/f) spectrum from about 16 Hz to
    8 kHz -- a room's or a line's hiss and hum rather than white noise, which puts most of
    its energy at the high frequencies where speech has least. Drawn from numpy's legacy
    ``RandomState`` (stream frozen across numpy versions); levelled with ``math.fsum``.
    """
    rs = np.random.RandomState(seed % 2**32)
    pos = np.arange(samples, dtype=np.int64)
    x = np.zeros(samples, dtype=np.float64)
    for k in range(10):
        held = (pos + int(rs.randint(2**k))) >> k
        x += rs.standard_normal(int(held[-1]) + 1)[held]
    rms = math.sqrt(math.fsum((x * x).tolist()) / samples)
    return x * (10 ** (NOISE_DBFS / 20) / rms)


def to_pcm(audio: npt.NDArray[np.floating]) -> bytes:
    """float audio in [-1, 1) as s16le, rounded to the nearest step."""
    pcm: bytes = np.rint(np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    return pcm


def make_script(seed: int, seconds: float, profile: str = DEFAULT_PROFILE) -> Script:
    """``seconds`` of audio for one session, the same for the same seed and profile.

    Both profiles start with a 0-1 s lead-in, so N sessions do not speak in lockstep, and
    cut the script at ``seconds`` (an utterance cut off there has no speech end).

    * ``realistic``: :func:`realistic_pool` in a seeded order (each clip once, then a new
      order), each clip followed by a 1-2 s pause; then :func:`noise_floor` is added under
      the whole script and continues in :attr:`Script.tail`.
    * ``harvard``: single-sentence clips from the shared manifest, each drawn at random,
      each followed by 0.8-2.0 s of digital silence.
    """
    if profile == "harvard":
        return _harvard_script(seed, seconds)
    if profile != "realistic":
        raise ValueError(f"unknown profile {profile!r} (choose from {', '.join(PROFILES)})")
    pool = realistic_pool()
    rng = random.Random(seed)
    n_frames = int(seconds * RATE) // FRAME
    lead = int(rng.uniform(0, 1) * RATE)
    parts: list[npt.NDArray[np.float32]] = [np.zeros(lead, np.float32)]
    pos = lead
    ends: list[tuple[int, int]] = []
    layout: list[tuple[str, int]] = []
    deck: list[int] = []
    while pos < n_frames * FRAME:
        if not deck:
            deck = list(range(len(pool)))
            rng.shuffle(deck)
        clip = pool[deck.pop()]
        layout.append((clip.name, pos))
        ends += [((pos + e) // FRAME, round((e - s) * 1000 / RATE)) for s, e in clip.utterances]
        pause = np.zeros(int(rng.uniform(*PAUSE_S) * RATE), np.float32)
        parts += [clip.audio, pause]
        pos += clip.audio.size + pause.size
    clean = np.concatenate(parts)[: n_frames * FRAME].astype(np.float64)
    tail = round(TAIL_NOISE_S / FRAME_S) * FRAME
    noise = noise_floor(seed, clean.size + tail)
    kept = [(e, ms) for e, ms in ends if e < n_frames]
    return Script(to_pcm(clean + noise[: clean.size]), [e for e, _ in kept],
                  [ms for _, ms in kept], to_pcm(noise[clean.size :]), layout)


def _harvard_script(seed: int, seconds: float) -> Script:
    """The harvard profile (byte-identical to the scripts of the version before profiles:
    same draws, same silence, same truncating conversion)."""
    clips = single_sentence_clips()
    rng = random.Random(seed)
    parts: list[npt.NDArray[np.float32]] = [np.zeros(int(rng.uniform(0, 1) * RATE), np.float32)]
    pos = parts[0].size
    ends: list[tuple[int, int]] = []
    layout: list[tuple[str, int]] = []
    while pos < seconds * RATE:
        clip = clips[rng.randrange(len(clips))]
        layout.append((clip.name, pos))
        ends += [((pos + e) // FRAME, round((e - s) * 1000 / RATE)) for s, e in clip.utterances]
        pause = np.zeros(int(rng.uniform(0.8, 2.0) * RATE), np.float32)
        parts += [clip.audio, pause]
        pos += clip.audio.size + pause.size
    n_frames = int(seconds * RATE) // FRAME
    audio = np.concatenate(parts)[: n_frames * FRAME]
    pcm = (np.clip(audio, -1, 1 - 1 / 32768) * 32768).astype("<i2").tobytes()
    kept = [(e, ms) for e, ms in ends if e < n_frames]
    return Script(pcm, [e for e, _ in kept], [ms for _, ms in kept], layout=layout)


def percentiles(values: list[float]) -> dict[str, float | int | None]:
    """p50/p95/p99 and the count; None percentiles when nothing was measured."""
    out: dict[str, float | int | None] = {
        f"p{q}": (float(np.percentile(values, q)) if values else None) for q in (50, 95, 99)}
    out["count"] = len(values)
    return out


def stop_like_ctrl_c_on_sigterm() -> None:
    """Make SIGTERM end a benchmark as Ctrl-C does (KeyboardInterrupt), so that its
    ``finally`` blocks stop the daemons and clients it started. Python's default for
    SIGTERM exits at once, and ``kill PID`` reaches the benchmark alone, not its children:
    they were left running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
