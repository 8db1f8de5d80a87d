"""Engine configuration: plain frozen dataclasses, validated on construction; and the
sample rate everything runs at, with its millisecond conversions.

The ops layer maps its TOML file onto these; the engine itself never reads files. Every
value has a range check whose message names the key (``stt.beam_size``) so a bad config
fails at start with a sentence an operator can act on.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

SAMPLE_RATE = 16_000
"""The engine's internal rate. Everything (VAD, Whisper, Smart Turn) is trained at 16 kHz."""
MS = SAMPLE_RATE // 1000
"""Samples per millisecond."""


def ms_to_samples(ms: float) -> int:
    """A duration from the config (milliseconds) as a sample count, rounded."""
    return round(ms * MS)


def samples_to_ms(samples: int) -> int:
    """A sample position as an event offset, in whole milliseconds (rounded down)."""
    return int(samples // MS)


def check_range(key: str, value: float, lo: float, hi: float) -> None:
    """Raise ConfigError naming ``key`` unless ``lo <= value <= hi`` (shared by every
    config section, engine and runtime, so messages read the same)."""
    if not lo <= value <= hi:
        raise ConfigError(f"{key} = {value!r} is out of range; allowed {lo} .. {hi}")


@dataclass(frozen=True, slots=True)
class VadConfig:
    """Silero VAD thresholds and the hysteresis that turns probabilities into segments."""

    threshold: float = 0.5
    """A window with probability >= threshold counts as speech."""
    neg_threshold: float | None = None
    """Speech continues until probability drops below this; default ``threshold - 0.15``
    (Silero's own hysteresis), which keeps short dips inside words from splitting speech."""
    min_speech_ms: int = 160
    """Speech must last this long before SpeechStarted is emitted (filters clicks)."""
    min_silence_ms: int = 200
    """Silence must last this long before SpeechEnded is emitted."""

    def __post_init__(self) -> None:
        check_range("vad.threshold", self.threshold, 0.05, 0.99)
        if self.neg_threshold is not None:
            check_range("vad.neg_threshold", self.neg_threshold, 0.01, self.threshold)
        check_range("vad.min_speech_ms", self.min_speech_ms, 0, 5_000)
        check_range("vad.min_silence_ms", self.min_silence_ms, 32, 10_000)

    @property
    def effective_neg_threshold(self) -> float:
        if self.neg_threshold is not None:
            return self.neg_threshold
        return max(0.01, self.threshold - 0.15)


@dataclass(frozen=True, slots=True)
class SttConfig:
    """Whisper decoding. The first three knobs are what the backpressure ladder turns down."""

    beam_size: int = 5
    """Beam width of final decodes (faster-whisper's default)."""
    partial_beam_size: int = 2
    """Beam width of partial decodes. Greedy partials commit more wrong stable words (on the
    shared corpus, greedy partials agreed three times on "men the coat" for "mend the coat");
    a beam of 2 costs little more and removes that."""
    partials: bool = True
    partial_interval_ms: int = 500
    stable_agreement: int = 3
    """Partial hypotheses that must agree before words become stable (LocalAgreement-n)."""
    min_partial_audio_ms: int = 500
    """No partial before the utterance has this much audio: shorter ones are mostly noise."""
    preroll_ms: int = 200
    """Audio kept before the VAD's speech start so the first phoneme is not clipped."""
    postroll_ms: int = 96
    """Trailing silence given to the final decode (Whisper ends sentences better with some).
    Shorter than ``vad.min_silence_ms`` so the final can be decoded speculatively while the
    VAD is still confirming the silence (see ``speculative_final``)."""
    speculative_final: bool = True
    """Start the final decode as soon as ``postroll_ms`` of silence is in, instead of when
    the VAD confirms the speech ended (``vad.min_silence_ms``). The decode then overlaps the
    confirmation wait, which takes its 50-150 ms off final and end-of-turn latency. The
    result is identical either way (same audio, prefix and beam); if speech resumes first,
    the speculative decode is discarded (wasted work, counted). The ladder turns it off."""
    min_window_s: float = 6.0
    """Partial decode windows (audio plus ``window_pad_s``) shorter than this are padded
    with silence to this length. Trimmed windows are what make decoding cheap, but below
    ~5 s the decoder loops or garbles short utterances ("ask not" -> "s not s not")."""
    final_min_window_s: float = 10.0
    """The same floor for finals, higher: on shorter windows the finals of short
    utterances loop more often, and each loop costs the 30 s fallback decode. Partials keep
    ``min_window_s``: they are several times as frequent, and on longer windows their
    committed words did not make the finals better (figures: benchmarks/README.md)."""
    window_pad_s: float = 2.0
    """Silence appended after the audio of every decode window. Whisper learned that
    speech is followed by more audio; a window ending with the speech makes it start the
    sentence over (see the ``stt`` module)."""
    window_target_s: float = 2.0
    """Once this much audio lies between a partial's window start (the utterance's
    *anchor*) and its end, the partial's committed words are moved out of the window: the
    anchor advances to just before the last of them and they become the next decodes'
    prompt. So a partial decodes about this much audio however long the utterance runs
    (a decode's cost follows the audio in it). Windows this short cost no accuracy
    (benchmarks/README.md, ``streaming_bench.py``)."""
    window_max_s: float = 3.5
    """If nothing new was committed by the time the window holds this much audio (no
    partials agree: noise, mumbling), the anchor moves anyway, past the newest hypothesis's
    words but its last two, which are committed as they stand. Below 4 s, so that with
    ``window_pad_s`` a window rarely needs the next encoder length (8 s instead of 6)."""
    min_commit_audio_ms: int = 2_000
    """No partial commits words before the utterance has this much audio: with less,
    Whisper mishears a phrase's first words consistently ("how do you marry" for "had he
    married"), so agreement does not catch it."""
    context_s: float = 30.0
    """Finals that ended up to this long before an utterance began are given to its
    decodes as Whisper's previous-text prompt: the VAD cuts speech at every 200 ms pause,
    and alone "two" in "one two three" is heard as "2 2". 0 = none."""
    prompt_tokens: int = 64
    """Tokens of already committed text given to each final decode as Whisper's
    previous-text prompt (0: none)."""
    partial_prompt_tokens: int = 32
    """The same for partial decodes (no more than ``prompt_tokens`` are used). Fewer than
    the finals': a prompt adds to the cost of every decode, partials are several times as
    frequent as finals and only long speech has a prompt to give them, so it is what makes
    a long utterance's partials dearer than a short one's; the finals of tests/data/long
    were no worse for it (benchmarks/README.md, ``streaming_bench.py``)."""
    compression_ratio_threshold: float = 2.4
    """A decode whose text compresses better than this (zlib) is a loop (faster-whisper's
    threshold)."""
    max_utterance_s: float = 25.0
    """Continuous speech longer than this is finalised in pieces, each its own final."""
    token_budget_base: int = 6
    max_tokens_per_second: float = 5.0
    """Decoder token budget = base + rate x audio seconds. Trimmed encoder windows make the
    decoder loop; the budget bounds what a loop can cost before repetition trimming."""
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    """A decode with no-speech probability above the first and mean log-probability below
    the second is treated as silence (Whisper's own rule), so VAD false positives on noise
    do not surface as hallucinated text."""
    language: str = "en"

    def __post_init__(self) -> None:
        check_range("stt.beam_size", self.beam_size, 1, 10)
        check_range("stt.partial_beam_size", self.partial_beam_size, 1, 10)
        check_range("stt.partial_interval_ms", self.partial_interval_ms, 100, 10_000)
        check_range("stt.stable_agreement", self.stable_agreement, 2, 10)
        check_range("stt.min_partial_audio_ms", self.min_partial_audio_ms, 0, 10_000)
        check_range("stt.preroll_ms", self.preroll_ms, 0, 1_000)
        check_range("stt.postroll_ms", self.postroll_ms, 0, 1_000)
        check_range("stt.min_window_s", self.min_window_s, 0.0, 30.0)
        check_range("stt.final_min_window_s", self.final_min_window_s, 0.0, 30.0)
        check_range("stt.window_pad_s", self.window_pad_s, 0.0, 10.0)
        check_range("stt.window_target_s", self.window_target_s, 2.0, 20.0)
        check_range("stt.window_max_s", self.window_max_s, self.window_target_s, 25.0)
        check_range("stt.prompt_tokens", self.prompt_tokens, 0, 200)
        check_range("stt.partial_prompt_tokens", self.partial_prompt_tokens, 0, 200)
        check_range("stt.min_commit_audio_ms", self.min_commit_audio_ms, 0, 30_000)
        check_range("stt.context_s", self.context_s, 0.0, 600.0)
        check_range("stt.compression_ratio_threshold", self.compression_ratio_threshold,
                    1.0, 10.0)
        check_range("stt.max_utterance_s", self.max_utterance_s, 2.0, 600.0)
        check_range("stt.token_budget_base", self.token_budget_base, 1, 100)
        check_range("stt.max_tokens_per_second", self.max_tokens_per_second, 1.0, 20.0)
        check_range("stt.no_speech_threshold", self.no_speech_threshold, 0.0, 1.0)
        check_range("stt.log_prob_threshold", self.log_prob_threshold, -10.0, 0.0)


@dataclass(frozen=True, slots=True)
class TurnConfig:
    """Smart Turn end-of-turn detection."""

    enabled: bool = True
    silence_ms: int = 200
    """Silence after speech before Smart Turn is asked whether the turn is over."""
    speculative: bool = True
    """Ask Smart Turn while the VAD is still confirming a pause -- no earlier than
    ``stt.postroll_ms`` into it, with the speculative final, and no more than 128 ms before
    the VAD can confirm it (96 ms into it with the defaults) -- and apply the answer at the
    confirmation. That takes Smart Turn's run (50-110 ms on a 2-core host)
    off end-of-turn latency. Its verdict moves with where the audio is cut, but no more for
    an earlier cut than for a later one, and it is as often right at the ends of sentences
    (``benchmarks/turn_silence_bench.py``). Only when ``silence_ms`` is at most
    ``vad.min_silence_ms``, i.e. when the ask would otherwise come with the confirmation;
    if speech resumes first the answer is discarded (counted). The ladder turns it off."""
    threshold: float = 0.5
    """The turn ends when Smart Turn's probability is strictly above this. (The quantized
    graph's output moves in steps of 1/256, so exactly 0.5 does occur: undecided.)"""
    fallback_silence_ms: int = 3_000
    """Silence after which the turn ends whatever the model said."""
    max_audio_s: float = 8.0
    """Smart Turn sees at most the last 8 s of the turn (the model's input window)."""

    def __post_init__(self) -> None:
        check_range("turn.silence_ms", self.silence_ms, 32, 5_000)
        check_range("turn.threshold", self.threshold, 0.01, 0.99)
        check_range("turn.fallback_silence_ms", self.fallback_silence_ms, self.silence_ms, 60_000)
        check_range("turn.max_audio_s", self.max_audio_s, 1.0, 8.0)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Per-session behaviour. Sessions may differ (a client can reconfigure its own)."""

    vad: VadConfig = field(default_factory=VadConfig)
    stt: SttConfig = field(default_factory=SttConfig)
    turn: TurnConfig = field(default_factory=TurnConfig)
    frame_events: bool = False
    """Emit a FrameProcessed event per VAD window (32 ms); off by default, it is chatty."""

    def replace(self, **sections: Any) -> EngineConfig:
        """Return a copy with some sections or fields replaced.

        Accepts whole sections (``stt=SttConfig(...)``) or dotted-free section dicts
        (``stt={"beam_size": 1}``) so reconfigure requests can name only what changes.
        """
        updates: dict[str, Any] = {}
        for name, value in sections.items():
            if name not in {f.name for f in dataclasses.fields(self)}:
                raise ConfigError(f"unknown engine config section {name!r}")
            if isinstance(value, dict):
                try:
                    updates[name] = dataclasses.replace(getattr(self, name), **value)
                except TypeError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
            else:
                updates[name] = value
        return dataclasses.replace(self, **updates)
