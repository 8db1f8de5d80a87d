"""Turn taking: which utterances make one user turn, when it ends, and barge-in.

A turn opens with its first speech and collects the finals of its utterances. Once the
user has been silent for ``turn.silence_ms``, Smart Turn is asked (a TURN job) whether the
turn is over; a probability above ``turn.threshold`` ends it, and so does
``turn.fallback_silence_ms`` of silence whatever the model said (or when no model is
loaded). Speech before either resumes the turn and makes a pending answer stale; if Smart
Turn had been asked about the pause, the client gets TurnResumed (an agent may have
started preparing a reply).

With ``turn.speculative`` the ask goes out while the VAD is still confirming the pause: no
earlier than ``stt.postroll_ms`` into it and no more than :data:`SPECULATION_LEAD_MS`
before the VAD can confirm it; its answer waits for the confirmation, which adopts it as
the ask about that pause. If speech resumes first the speculation is dropped unseen: the
client saw no SpeechEnded, so no TurnResumed either.

TurnEnded carries the whole turn's text, so it waits in the output queue behind the
turn's finals (a :class:`TurnSlot`); a turn whose finals are all empty (noise) is dropped
there. Speech starting while the client says its own playback is on is a barge-in: an
Interruption event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .config import EngineConfig, ms_to_samples, samples_to_ms
from .events import Interruption, TurnEnded, TurnEndReason, TurnResumed
from .jobs import Job, JobBook, JobKind, JobResult
from .ordering import OutputQueue, Slot

if TYPE_CHECKING:
    from .core import CoreStats, SpeechState


SPECULATION_LEAD_MS = 128
"""How long before the VAD can confirm a pause Smart Turn may be asked about it. With the
default ``vad.min_silence_ms`` (200 ms, confirmed on the 7th window: 224 ms) that is 96 ms
into the pause. ``benchmarks/turn_silence_bench.py`` found Smart Turn's verdict on a pause
cut that early as good as on one cut at the confirmation; it measured no earlier cut.
(Whole windows, so ``min_silence_ms - 128`` rounds up to the same window as 128 ms before
the confirmation.)"""


@dataclass(slots=True)
class Turn:
    turn_id: int
    start: int
    """First sample of the turn's audio (speech start minus pre-roll)."""
    texts: dict[int, str] = field(default_factory=dict)
    """Final text per utterance id, in utterance order."""
    generation: int = 0
    """Bumped whenever speech resumes; a Smart Turn result for an older pause is stale."""
    evaluated: bool = False
    """Smart Turn was asked about the current pause."""
    last_probability: float | None = None
    last_turn_ms: float = 0.0
    deferred: bool = False
    """Smart Turn said "complete" while the VAD was still confirming new speech: the
    decision waits until that speech is confirmed (decision dropped) or rejected (applied).
    Closing the turn at once would date TurnEnded after the retroactive SpeechStarted."""
    speculation: TurnSpeculation | None = None
    """Smart Turn asked about a pause the VAD has not confirmed yet (``turn.speculative``)."""


@dataclass(slots=True)
class TurnSpeculation:
    job: Job
    silence_start: int
    """The pause it is about: adopted only by the confirmation of that one."""
    result: JobResult | None = None
    """Its answer, if it came before the confirmation (applied then)."""


@dataclass(slots=True)
class TurnSlot(Slot):
    """The end of a turn, queued when decided; its transcript is read when it is sent."""

    turn: Turn
    reason: TurnEndReason
    probability: float | None
    offset: int
    processing_ms: float
    stats: CoreStats
    """Counts the turn as sent or discarded when the slot resolves."""

    def ready(self) -> bool:
        # Everything queued before it has drained, the turn's finals included.
        return True

    def take(self) -> TurnEnded | None:
        texts = [t for _, t in sorted(self.turn.texts.items()) if t]
        transcript = " ".join(texts)
        if not transcript:
            # Only noise was heard (every final empty): nothing for an agent to act on.
            self.stats.turns_discarded += 1
            return None
        self.stats.turns += 1
        return TurnEnded(
            audio_offset_ms=samples_to_ms(self.offset), processing_ms=round(self.processing_ms, 2),
            turn_id=self.turn.turn_id, probability=(
                None if self.probability is None else round(self.probability, 4)),
            reason=self.reason, transcript=transcript,
        )


class TurnTaking:
    """The turn state of one session; the session core calls it on VAD transitions, on
    every window (:meth:`tick`) and with TURN job results."""

    def __init__(self, config: EngineConfig, speech: SpeechState, jobs: JobBook,
                 out: OutputQueue, stats: CoreStats, *, turn_model: bool) -> None:
        self.config = config
        """Replaced by the core when the session is reconfigured."""
        self.turn_model = turn_model
        """False when no Smart Turn model is loaded: turns end by the silence fallback."""
        self.playback_active = False
        """The client's own audio output is playing (speech then is a barge-in)."""
        self.current: Turn | None = None
        self._speech = speech
        self._jobs = jobs
        self._out = out
        self._stats = stats
        self._next_turn = 0

    @property
    def decision_pending(self) -> bool:
        """Speech ended and Smart Turn is still to be asked about the pause."""
        turn = self.current
        return (turn is not None and self.turn_model and self.config.turn.enabled
                and not turn.evaluated and self._speech.last_speech_end is not None)

    def retain_from(self, keep: int) -> int:
        """``keep`` lowered to the oldest sample a turn decision may still need."""
        if self.current is None:
            return keep
        return min(keep, max(self.current.start, self._speech.position - ms_to_samples(
            self.config.turn.max_audio_s * 1000)))

    def speech_started(self, start: int) -> None:
        """Speech began at sample ``start``: open a turn, or resume the open one (before
        the core queues SpeechStarted, so TurnResumed comes first)."""
        turn = self.current
        if turn is None:
            self.current = Turn(self._next_turn,
                                max(0, start - ms_to_samples(self.config.stt.preroll_ms)))
            self._next_turn += 1
            return
        self._abandon_speculation(turn)
        turn.generation += 1
        turn.deferred = False
        if turn.evaluated:
            self._out.emit(TurnResumed(audio_offset_ms=samples_to_ms(start),
                                       turn_id=turn.turn_id))
        turn.evaluated = False

    def barge_in(self, start: int, vad_ms: float, utterance_id: int) -> None:
        """After SpeechStarted: an Interruption if the client's playback is on."""
        if self.playback_active:
            self._out.emit(Interruption(audio_offset_ms=samples_to_ms(start),
                                        processing_ms=vad_ms, utterance_id=utterance_id))

    def tick(self) -> None:
        """After each window: ask Smart Turn once the pause is long enough (or speculate
        on an unconfirmed one), apply a deferred decision, end the turn by the silence
        fallback."""
        cfg = self.config
        speech = self._speech
        turn = self.current
        if turn is None:
            return
        if speech.in_speech:
            self._maybe_speculate(turn)
            return
        if (
            speech.last_speech_end is None
            or speech.candidate_start is not None  # maybe speech: decide once it is known
        ):
            return
        if turn.deferred:
            self._close(TurnEndReason.MODEL, turn.last_probability, turn.last_turn_ms)
            return
        pause = speech.position - speech.last_speech_end
        spec = turn.speculation
        if spec is not None and (spec.silence_start != speech.last_speech_end
                                 or not self._may_ask(turn)):  # reconfigured meanwhile
            self._abandon_speculation(turn)
            spec = None
        if self._may_ask(turn) and pause >= ms_to_samples(cfg.turn.silence_ms):
            turn.evaluated = True
            if spec is not None:  # adopted: the ask about this pause
                turn.speculation = None
                if spec.result is not None:  # else on_result applies it when it comes
                    self._apply(turn, spec.result)
            else:
                self._ask(turn)
            if self.current is not turn:
                return
        if pause >= ms_to_samples(cfg.turn.fallback_silence_ms):
            self._close(TurnEndReason.SILENCE_FALLBACK, turn.last_probability, 0.0)

    def is_speculative(self, job: Job) -> bool:
        """See :meth:`SessionCore.is_speculative`."""
        spec = self.current.speculation if self.current is not None else None
        return spec is not None and spec.job.job_id == job.job_id

    def resumed(self) -> None:
        """Speech went on after a pause the VAD had not confirmed: a speculation on that
        pause is void."""
        if self.current is not None:
            self._abandon_speculation(self.current)

    def _may_ask(self, turn: Turn) -> bool:
        return self.turn_model and self.config.turn.enabled and not turn.evaluated

    def _maybe_speculate(self, turn: Turn) -> None:
        """Ask Smart Turn now if the postroll of an unconfirmed pause is in, the pause is
        within :data:`SPECULATION_LEAD_MS` of its confirmation, and the regular ask would
        come with the confirmation (see ``turn.speculative``)."""
        cfg = self.config
        speech = self._speech
        silence = speech.silence_start
        if (
            silence is None
            or turn.speculation is not None
            or not cfg.turn.speculative
            or not self._may_ask(turn)
            or cfg.turn.silence_ms > cfg.vad.min_silence_ms
            or speech.position < silence + ms_to_samples(max(
                cfg.stt.postroll_ms, cfg.vad.min_silence_ms - SPECULATION_LEAD_MS))
        ):
            return
        turn.speculation = TurnSpeculation(self._ask(turn), silence)
        self._stats.turn_speculations += 1

    def _ask(self, turn: Turn) -> Job:
        """A TURN job on the turn's audio up to now (at most ``turn.max_audio_s``)."""
        position = self._speech.position
        start = max(turn.start, position - ms_to_samples(self.config.turn.max_audio_s * 1000))
        return self._jobs.issue(JobKind.TURN, turn.turn_id, start, position,
                                generation=turn.generation)

    def _abandon_speculation(self, turn: Turn) -> None:
        spec, turn.speculation = turn.speculation, None
        if spec is not None:
            self._jobs.in_flight.pop(spec.job.job_id, None)  # a late result is then ignored
            self._stats.turn_speculations_abandoned += 1

    def on_result(self, job: Job, result: JobResult) -> None:
        """A Smart Turn answer (the core has checked it was awaited)."""
        turn = self.current
        if turn is not None and turn.speculation is not None and (
                turn.speculation.job.job_id == job.job_id):
            turn.speculation.result = result  # applied when the VAD confirms the pause
            return
        if (
            turn is None
            or turn.turn_id != job.ref_id
            or turn.generation != job.generation
            or self._speech.in_speech
        ):
            self._stats.stale_results += 1
            return
        self._apply(turn, result)

    def _apply(self, turn: Turn, result: JobResult) -> None:
        """The answer about the current pause: end the turn if Smart Turn says so."""
        if result.error is not None:
            return  # the silence fallback still ends the turn
        turn.last_probability = result.probability
        turn.last_turn_ms = result.ms
        if result.probability > self.config.turn.threshold:
            if self._speech.candidate_start is not None:
                turn.deferred = True
            else:
                self._close(TurnEndReason.MODEL, result.probability, result.ms)

    def force_end(self) -> bool:
        """End the open turn now (reason ``forced``); False if none is open."""
        turn = self.current
        if turn is None:
            return False
        self._close(TurnEndReason.FORCED, turn.last_probability, 0.0)
        return True

    def _close(self, reason: TurnEndReason, prob: float | None, ms: float) -> None:
        turn = self.current
        if turn is None:
            return
        self.current = None
        position = self._speech.position
        self._out.reserve(TurnSlot(turn, reason, prob, position, ms, self._stats), position)
