"""One utterance's streaming state: its decode window, committed words and final.

A decode of an utterance covers a *window*, from the utterance's *anchor* to the audio
analysed so far. Words are committed by agreement between successive partials
(:class:`~.text.StablePrefix`) and forced as the prefix of every later decode of the
window. Once the window holds ``stt.window_target_s`` of audio, its committed words are
moved out of it (:meth:`Utterance.move_anchor`): they become *anchored*, part of the
prompt of later decodes, so a partial decodes about that much audio however long the
utterance runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from .config import SttConfig, ms_to_samples
from .events import FinalTranscription
from .jobs import Job, JobResult
from .ordering import Slot
from .text import StablePrefix, common_prefix_words
from .turn_taking import Turn
from .vad import WINDOW

PROMPT_WORDS = 60
"""Words passed as the prompt; the decoder reads only ``stt.prompt_tokens`` of them."""
OVERLAP_MARGIN = 2
"""VAD windows (64 ms) a new window starts before its first word's aligned start."""


@dataclass(slots=True)
class FinalSlot(Slot):
    """An utterance's FinalTranscription, queued when the utterance ends."""

    utterance_id: int
    start: int
    end_of_speech: int
    turn: Turn | None
    """The turn whose transcript this final belongs to."""
    before: str = ""
    """Text committed before the final's window (the utterance's anchored words)."""
    overlap: int = 0
    """Leading words of the final's decode that ``before`` already has."""
    event: FinalTranscription | None = None
    filled: bool = False

    def ready(self) -> bool:
        return self.filled

    def take(self) -> FinalTranscription | None:
        return self.event


@dataclass(slots=True)
class HeldFinal:
    """A final waiting to be issued (see ``StreamingTranscription._release_held``)."""

    slot: FinalSlot
    start: int
    end: int


@dataclass(slots=True)
class Speculation:
    """A final decode issued before the VAD confirmed the speech end."""

    job: Job
    end_of_speech: int
    result: JobResult | None = None
    """Set when the decode returned before the VAD confirmed the speech end."""


@dataclass(slots=True)
class Utterance:
    utterance_id: int
    start: int
    """VAD speech start (sample)."""
    stable: StablePrefix
    """Agreement over hypotheses of the window [anchor, ...): its committed words are
    forced as the prefix of every later decode of the window."""
    anchor: int = 0
    """Where decode windows start: the pre-rolled speech start, then a pause after
    committed words once the window grew past ``stt.window_target_s`` (see
    :meth:`move_anchor`)."""
    anchored: list[str] = field(default_factory=list)
    """Committed words whose audio lies before the anchor: the text before the window."""
    overlap: int = 0
    """Leading words of the window that are also the last of ``anchored``: decoded
    again for their sound, shown once (see :meth:`move_anchor`)."""
    context: list[str] | None = None
    """Words of the finals just before this utterance (``stt.context_s``), the start of
    every decode prompt; None until all those finals are known."""
    last_partial_at: int = -1
    partial_in_flight: bool = False
    held_final: HeldFinal | None = None
    """The utterance ended while a partial was in flight: its final waits for that partial."""
    speculation: Speculation | None = None
    """A final decode issued while the silence after this utterance was still unconfirmed."""

    def prompt(self) -> str:
        """What a decode is told came before its window: recent finals and the anchored
        words (their tail: the decoder reads ``stt.prompt_tokens``)."""
        return " ".join([*(self.context or []), *self.anchored][-PROMPT_WORDS:])

    def may_commit(self, job: Job, stt: SttConfig) -> bool:
        """Whether a partial's hypothesis may commit words: not before the utterance has
        ``stt.min_commit_audio_ms`` of audio. Whisper mishears the first words of a phrase
        it cannot hear the rest of ("how do you marry" for "had he married"), and does so
        consistently, so agreement alone does not catch it."""
        return job.end - self.start >= ms_to_samples(stt.min_commit_audio_ms)

    def may_move_anchor(self, window: int, stt: SttConfig) -> bool:
        """Whether a partial of ``window`` samples may lead to an anchor move, and so needs
        word times (an alignment pass costs ~20 % of a partial): the window is past the
        target and something beyond its first word is committed, or it is past the
        maximum (a forced move)."""
        if window >= ms_to_samples(stt.window_max_s * 1000):
            return True
        return (window >= ms_to_samples(stt.window_target_s * 1000)
                and len(self.stable.committed) > self.overlap + 1)

    def move_anchor(self, job: Job, result: JobResult,
                    stt: SttConfig) -> Literal["agreed", "forced"] | None:
        """Move committed words out of a window that grew past ``stt.window_target_s``;
        says whether it did, and how.

        The committed words join ``anchored`` (the prompt of later decodes), and the
        window restarts just before the last of them, which stays in it as the first word
        of the forced prefix (``overlap``; it is shown once). The boundary word is decoded
        again, whole: a cut between two words, even at the quietest point, can clip the
        words on either side. Past ``stt.window_max_s`` with nothing committed ("forced"),
        the newest hypothesis's words but its last two are committed as they stand.
        """
        window = job.end - self.anchor
        if window < ms_to_samples(stt.window_target_s * 1000):
            return None
        hyp = result.text.split()
        words = result.words
        if not words or [w.word for w in words] != hyp:
            return None  # no (usable) alignment: try with the next partial
        committed = common_prefix_words(self.stable.committed, hyp)
        forced = committed <= self.overlap
        if forced:
            if window < ms_to_samples(stt.window_max_s * 1000):
                return None
            committed = len(hyp) - 2
        last = committed - 1  # the last word anchored, and the new window's first
        if last < max(1, self.overlap):
            return None  # nothing new to anchor, or a one-word window
        anchor = job.start + words[last].start - OVERLAP_MARGIN * WINDOW
        if anchor <= self.anchor:
            return None
        source = hyp if forced else self.stable.committed
        self.anchored.extend(source[self.overlap : last + 1])
        self.anchor = anchor
        self.overlap = 1
        if forced:
            self.stable.restart([hyp[last]])
            return "forced"
        self.stable.rebase(last)
        return "agreed"
