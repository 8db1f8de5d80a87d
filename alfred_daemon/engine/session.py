"""Per-session state: the pure core and the in-process driver.

:class:`SessionCore` is a state machine with three inputs -- one VAD probability per 32 ms
window, job results, and client controls -- and two outputs: events and jobs. It never runs
a model and never holds audio, so the runtime can keep it in the supervisor while workers
run its jobs against shared memory, and tests can drive it with made-up probabilities.

:class:`Session` is the single-process driver: it validates and resamples frames, keeps a
rolling audio buffer, runs VAD and every job inline. The CLI and the engine tests use it,
and it is the reference the multi-process runtime must reproduce.

Ordering contract (what clients rely on):

* events of a session come out in audio-offset order (except the optional per-window
  FrameProcessed events, which are sent as each window is analysed, while SpeechStarted and
  SpeechEnded are dated back to where speech or silence began);
* a FinalTranscription precedes every event that refers to later audio, even though its
  decode finishes after them (the runtime decodes asynchronously);
* TurnEnded comes after the finals of all the turn's utterances and carries their text.

All three follow from one mechanism, the output queue: it holds events and *slots*. A final
job puts a slot in the queue when it is issued; events arriving later queue behind it; the
queue drains only up to the first unfilled slot. A turn decision is a slot too, resolved
when it reaches the front -- by then every final of the turn has been filled.

Speculative finals: the final's audio ends ``stt.postroll_ms`` after the speech, which is
shorter than the silence the VAD needs to confirm the end (``vad.min_silence_ms``). So the
final job can be issued once the postroll is in, while the silence is still unconfirmed;
when the VAD confirms, the final's slot takes the speculation's result (or waits for it).
The job is the one the confirmation would have issued -- same audio range, prefix and beam
-- so the text cannot differ; only the wait does. If speech resumes first, the speculation
is abandoned: :meth:`SessionCore.wants` then says so, so an executor that has not started it
yet can skip it, and a result that comes back anyway is ignored.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from .audio import StreamResampler, session_samples
from .config import SAMPLE_RATE, EngineConfig
from .errors import InvalidAudioError
from .events import (
    Event,
    FinalTranscription,
    FrameProcessed,
    Interruption,
    PartialTranscription,
    SpeechEnded,
    SpeechStarted,
    TurnEnded,
    TurnEndReason,
    TurnResumed,
)
from .jobs import Job, JobKind, JobResult, Models, run_job
from .text import StablePrefix, common_prefix_words
from .vad import WINDOW, VadState

log = logging.getLogger(__name__)

MS = SAMPLE_RATE // 1000  # samples per millisecond
PROMPT_WORDS = 60
"""Anchored words passed as the prompt; the decoder reads only ``stt.prompt_tokens``."""
DONE_KEPT = 32
"""Finals remembered for later prompts (the prompt takes at most ``PROMPT_WORDS``)."""
OVERLAP_MARGIN = 2
"""VAD windows (64 ms) a new window starts before its first word's aligned start."""


def ms_to_samples(ms: float) -> int:
    return round(ms * MS)


def samples_to_ms(samples: int) -> int:
    return int(samples // MS)


# --------------------------------------------------------------------------- output queue


@dataclass(slots=True)
class _FinalSlot:
    utterance_id: int
    start: int
    end_of_speech: int
    turn: _Turn | None
    """The turn whose transcript this final belongs to."""
    before: str = ""
    """Text committed before the final's window (the utterance's anchored words)."""
    overlap: int = 0
    """Leading words of the final's decode that ``before`` already has."""
    event: FinalTranscription | None = None
    filled: bool = False


@dataclass(slots=True)
class _TurnSlot:
    turn: _Turn
    reason: TurnEndReason
    probability: float | None
    offset: int
    processing_ms: float


_QueueItem = Event | _FinalSlot | _TurnSlot


@dataclass(slots=True)
class _Turn:
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


@dataclass(slots=True)
class _Utterance:
    utterance_id: int
    start: int
    """VAD speech start (sample)."""
    stable: StablePrefix
    """Agreement over hypotheses of the window [anchor, ...): its committed words are
    forced as the prefix of every later decode of the window."""
    anchor: int = 0
    """Where decode windows start: the pre-rolled speech start, then a pause after
    committed words once the window grew past ``stt.window_target_s`` (see
    :meth:`SessionCore._move_anchor`)."""
    anchored: list[str] = field(default_factory=list)
    """Committed words whose audio lies before the anchor: the text before the window."""
    overlap: int = 0
    """Leading words of the window that are also the last of ``anchored``: decoded
    again for their sound, shown once (see :meth:`SessionCore._move_anchor`)."""
    context: list[str] | None = None
    """Words of the finals just before this utterance (``stt.context_s``), the start of
    every decode prompt; None until all those finals are known (see ``_context_of``)."""
    last_partial_at: int = -1
    partial_in_flight: bool = False
    held_final: _HeldFinal | None = None
    """The utterance ended while a partial was in flight: its final waits for that partial."""
    speculation: _Speculation | None = None
    """A final decode issued while the silence after this utterance was still unconfirmed."""


@dataclass(slots=True)
class _HeldFinal:
    slot: _FinalSlot
    start: int
    end: int


@dataclass(slots=True)
class _Speculation:
    job: Job
    end_of_speech: int
    result: JobResult | None = None
    """Set when the decode returned before the VAD confirmed the speech end."""


@dataclass(slots=True)
class CoreStats:
    windows: int = 0
    speech_windows: int = 0
    partials: int = 0
    finals: int = 0
    turns: int = 0
    turns_discarded: int = 0
    job_errors: int = 0
    stale_results: int = 0
    speculations: int = 0
    """Final decodes issued before the speech end was confirmed."""
    speculations_abandoned: int = 0
    """... of which speech resumed (or the utterance was cut another way): wasted work."""
    partials_degenerate: int = 0
    """Partial decodes that looked like a loop and were not shown."""
    anchor_moves: int = 0
    """Times a window's committed words were moved out of it (long utterances)."""
    forced_anchor_moves: int = 0
    """... of which nothing had been committed by ``stt.window_max_s``."""


class SessionCore:
    """The session state machine. See the module docstring for the ordering contract."""

    def __init__(self, config: EngineConfig | None = None, *, turn_model: bool = True) -> None:
        self.config = config or EngineConfig()
        self.turn_model = turn_model
        """False when no Smart Turn model is loaded: turns end by the silence fallback."""
        self.position = 0
        """Samples analysed by the VAD so far (a multiple of the 512-sample window)."""
        self.playback_active = False
        self.stats = CoreStats()

        # VAD hysteresis
        self._in_speech = False
        self._candidate_start: int | None = None
        """First window of speech not yet long enough to confirm (windows since are speech)."""
        self._silence_start: int | None = None
        self._last_speech_end: int | None = None
        """Where the last confirmed speech ended (None while speaking or before any)."""

        self._utt: _Utterance | None = None
        self._turn: _Turn | None = None
        self._next_utt = 0
        self._next_turn = 0
        self._next_job = 0

        self._queue: deque[_QueueItem] = deque()
        self._final_slots: dict[int, _FinalSlot] = {}  # job id -> slot
        self._held: dict[int, _Utterance] = {}  # utterance id -> ended, final held
        self._unfilled: set[int] = set()
        """Utterances whose final is not known yet."""
        self._done: dict[int, tuple[int, str]] = {}
        """Recent finals: utterance id -> (end of speech, text), for later prompts."""
        self._queued_ms = 0
        """Latest offset queued so far (FrameProcessed aside)."""
        self._jobs: list[Job] = []
        self._in_flight: dict[int, Job] = {}

    # ------------------------------------------------------------------ public surface

    def take_jobs(self) -> list[Job]:
        """Jobs issued since the last call, highest priority first."""
        jobs, self._jobs = self._jobs, []
        jobs.sort(key=lambda j: (j.kind, j.job_id))
        return jobs

    def drain_events(self) -> list[Event]:
        """Events ready to send, in order; stops at the first final still being decoded."""
        out: list[Event] = []
        while self._queue:
            head = self._queue[0]
            if isinstance(head, _FinalSlot):
                if not head.filled:
                    break
                if head.event is not None:
                    out.append(head.event)
            elif isinstance(head, _TurnSlot):
                ev = self._resolve_turn(head)
                if ev is not None:
                    out.append(ev)
            else:
                out.append(head)
            self._queue.popleft()
        return out

    def _context_of(self, utt: _Utterance) -> list[str] | None:
        """The text before ``utt``: its session's finals that ended within ``stt.context_s``
        of its start. None while one of them is still being decoded -- a prompt must not
        depend on which decode happened to return first (the multi-process runtime has to
        give the inline driver's finals), so the utterance's decodes wait for it; finals
        take tens of milliseconds, the first partial comes ~0.7 s into the speech."""
        if utt.context is None:
            if self.config.stt.context_s <= 0:
                utt.context = []
                return utt.context
            if any(uid < utt.utterance_id for uid in self._unfilled):
                return None
            since = utt.start - ms_to_samples(self.config.stt.context_s * 1000)
            words: list[str] = []
            for uid in sorted(self._done):
                end, text = self._done[uid]
                if uid < utt.utterance_id and end >= since:
                    words += text.split()
            utt.context = words[-PROMPT_WORDS:]
        return utt.context

    def _prompt(self, utt: _Utterance) -> str:
        """What a decode of ``utt`` is told came before its window: recent finals and the
        utterance's anchored words (their tail: the decoder reads ``stt.prompt_tokens``)."""
        return " ".join([*(utt.context or []), *utt.anchored][-PROMPT_WORDS:])

    @property
    def in_flight(self) -> list[Job]:
        return list(self._in_flight.values())

    @property
    def decision_pending(self) -> bool:
        """A final or a turn decision will be asked for within ~``min_silence_ms``: speech
        paused but the pause is not confirmed yet, or it is and Smart Turn has not been
        asked. An executor keeping capacity free for urgent jobs needs it only then."""
        if self._in_speech:
            return self._silence_start is not None
        turn = self._turn
        return (turn is not None and self.turn_model and self.config.turn.enabled
                and not turn.evaluated and self._last_speech_end is not None)

    @property
    def speaking(self) -> bool:
        """Speech is in progress or may be starting: partials, then a final, are coming."""
        return self._in_speech or self._candidate_start is not None

    def superseded(self, job: Job) -> bool:
        """Whether ``job``, a partial not started yet, had better not run: its utterance's
        speech has paused or ended. The final waits for every partial in flight (a partial
        may extend the final's forced prefix), so under load a queued partial would delay
        the final by its wait and its decode. An executor with a queue answers it with
        :meth:`JobResult.skip` instead; the final then goes at once, with the words
        committed so far."""
        if job.kind is not JobKind.PARTIAL or job.job_id not in self._in_flight:
            return False
        if job.ref_id in self._held:
            return True
        utt = self._utt
        return (utt is not None and utt.utterance_id == job.ref_id
                and self._silence_start is not None)

    def extend(self, job: Job) -> Job:
        """``job`` (issued earlier, not started yet) reaching up to the audio analysed now.

        An executor calls this as it starts a queued partial: the partial then shows the
        speech up to that moment instead of up to when it was queued, so time spent in the
        queue does not make it older (same decode cost: the window is padded to a few fixed
        lengths anyway). Other jobs, and a partial whose utterance has paused or ended,
        come back unchanged.
        """
        utt = self._utt
        if (
            job.kind is not JobKind.PARTIAL
            or self._in_flight.get(job.job_id) is not job
            or utt is None
            or utt.utterance_id != job.ref_id
            or job.start != utt.anchor
            or not self._in_speech
            or self._silence_start is not None
            or self.position <= job.end
        ):
            return job
        longer = dataclasses.replace(
            job, end=self.position, align=self._may_move_anchor(utt, self.position - job.start))
        self._in_flight[job.job_id] = longer
        utt.last_partial_at = self.position
        return longer

    def is_speculative(self, job: Job) -> bool:
        """``job`` is a final decode issued before its speech end was confirmed (and not
        yet adopted by the confirmation): useful, but not yet owed to the client."""
        return self._speculation_of(job) is not None

    def _speculation_of(self, job: Job) -> _Speculation | None:
        """The live speculation ``job`` is, if any. Only the current utterance can have
        one: ending an utterance adopts or abandons it."""
        spec = self._utt.speculation if self._utt is not None else None
        return spec if spec is not None and spec.job.job_id == job.job_id else None

    def wants(self, job: Job) -> bool:
        """Whether ``job``'s result is still of use (False for an abandoned speculation).

        An executor with a queue checks this before starting a job: skipping it saves the
        decode. Running it anyway is harmless, the result is ignored.
        """
        return job.job_id in self._in_flight

    def retain_from(self) -> int:
        """Oldest sample any current or future job may still need.

        Audio before this can be dropped (the driver trims its buffer, the runtime lets the
        ring overwrite it).
        """
        cfg = self.config
        keep = self.position - ms_to_samples(cfg.vad.min_speech_ms + cfg.stt.preroll_ms + 64)
        if self._utt is not None:
            keep = min(keep, self._utt.anchor)
        if self._turn is not None:
            keep = min(keep, max(self._turn.start, self.position - ms_to_samples(
                cfg.turn.max_audio_s * 1000)))
        for job in self._in_flight.values():
            keep = min(keep, job.start)
        return max(0, keep)

    def on_vad(self, probability: float, vad_ms: float = 0.0) -> None:
        """Advance by one 512-sample window with its speech probability."""
        cfg = self.config.vad
        start = self.position
        self.position += WINDOW
        self.stats.windows += 1
        is_speech_window = probability >= cfg.threshold
        if self.config.frame_events:
            self._emit(FrameProcessed(
                audio_offset_ms=samples_to_ms(self.position), processing_ms=vad_ms,
                probability=round(probability, 4), is_speech=is_speech_window,
            ))
        if not self._in_speech:
            if is_speech_window:
                if self._candidate_start is None:
                    self._candidate_start = start
                run = self.position - self._candidate_start
                if run >= ms_to_samples(max(cfg.min_speech_ms, 1)):
                    self._on_speech_start(self._candidate_start, vad_ms)
            else:
                self._candidate_start = None
        else:
            self.stats.speech_windows += 1
            if probability < cfg.effective_neg_threshold:
                if self._silence_start is None:
                    self._silence_start = start
                if self.position - self._silence_start >= ms_to_samples(cfg.min_silence_ms):
                    self._on_speech_end(self._silence_start, vad_ms)
            else:
                self._silence_start = None
                if self._utt is not None:
                    self._abandon_speculation(self._utt)
        self._tick()

    def on_result(self, result: JobResult) -> None:
        """Feed back the outcome of a job returned by :meth:`take_jobs`."""
        job = result.job
        if self._in_flight.pop(job.job_id, None) is None:
            self.stats.stale_results += 1
            return  # duplicate (e.g. a job re-run after a worker died) or unknown
        if result.error is not None and not result.skipped:
            self.stats.job_errors += 1
        if job.kind is JobKind.FINAL:
            spec = self._speculation_of(job)
            if spec is not None:
                spec.result = result  # adopted when the VAD confirms
                return
            self._on_final(job, result)
        elif job.kind is JobKind.PARTIAL:
            self._on_partial(job, result)
            if self._utt is not None and self._in_speech:
                self._maybe_speculate(self._utt)  # it may have waited for this partial
        else:
            self._on_turn(job, result)

    def on_skipped(self, windows: int) -> None:
        """Advance past ``windows`` windows whose analysis was skipped (load shedding).

        Nobody looked at the gap, so it is taken as speech: that is the only reading under
        which no word in it is lost. Outside speech an utterance starts at the gap (or at
        the speech candidate before it); inside speech a silence that began before the gap
        no longer counts, so the utterance cannot end before the gap does. From the next
        analysed window the VAD decides again as usual, and the final spans the gap; if the
        gap held no speech, the decode's no-speech check keeps that final empty. No partial
        or turn decision is taken on the gap itself.
        """
        gap_start = self.position
        self.position += windows * WINDOW
        if not self._in_speech:
            start = self._candidate_start if self._candidate_start is not None else gap_start
            self._on_speech_start(start, 0.0)
        else:
            self._silence_start = None
            if self._utt is not None:
                self._abandon_speculation(self._utt)

    def post(self, event: Event) -> None:
        """Queue an event from outside the core (runtime notices: backpressure, worker
        recovery, dropped frames, health) so it keeps the session's ordering contract.

        The caller dates a notice at the current position, but the core may still emit
        events dated earlier: SpeechStarted/SpeechEnded are retroactive to where speech or
        silence began, and a partial is dated at the end of its audio when its decode
        returns. So the notice is re-dated to the earliest offset a future event can carry.
        """
        # Never before what is already queued (that would break the order by itself).
        safe = max(self.earliest_pending_offset_ms(), self._queued_ms)
        if event.audio_offset_ms > safe:
            event = dataclasses.replace(event, audio_offset_ms=safe)
        self._emit(event)

    def earliest_pending_offset_ms(self) -> int:
        """No event emitted from now on will be dated before this (ms)."""
        earliest = self.position
        for pending in (self._candidate_start, self._silence_start):
            if pending is not None:
                earliest = min(earliest, pending)
        current = self._utt.utterance_id if self._utt is not None else None
        for job in self._in_flight.values():
            # Only the current utterance's partial can still become an event; one of an
            # ended utterance feeds its held final or is dropped.
            if job.kind is JobKind.PARTIAL and job.ref_id == current:
                earliest = min(earliest, job.end)
        return samples_to_ms(earliest)

    def set_playback(self, active: bool) -> None:
        """The client's own audio output started/stopped (for barge-in detection)."""
        self.playback_active = active

    def flush(self) -> None:
        """Finalise the current utterance now (e.g. end of input), without ending the turn."""
        if self._in_speech:
            end = self._silence_start if self._silence_start is not None else self.position
            self._on_speech_end(end, 0.0)

    def force_end_of_turn(self) -> bool:
        """End the current turn now (reason ``forced``). Returns False if no turn is open."""
        self.flush()
        if self._turn is None:
            return False
        turn = self._turn
        self._close_turn(TurnEndReason.FORCED, turn.last_probability, 0.0)
        return True

    def reconfigure(self, config: EngineConfig) -> None:
        """Swap the configuration; takes effect from the next window."""
        self.config = config

    # ------------------------------------------------------------------ VAD transitions

    def _on_speech_start(self, start: int, vad_ms: float) -> None:
        self._in_speech = True
        self._candidate_start = None
        self._silence_start = None
        self._last_speech_end = None
        utt_id = self._next_utt
        self._next_utt += 1
        self._utt = _Utterance(utt_id, start, StablePrefix(self.config.stt.stable_agreement),
                               anchor=max(0, start - ms_to_samples(self.config.stt.preroll_ms)))
        offset = samples_to_ms(start)
        turn = self._turn
        if turn is None:
            turn = _Turn(self._next_turn, max(0, start - ms_to_samples(self.config.stt.preroll_ms)))
            self._next_turn += 1
            self._turn = turn
        else:
            turn.generation += 1
            turn.deferred = False
            if turn.evaluated:
                self._emit(TurnResumed(audio_offset_ms=offset, turn_id=turn.turn_id))
            turn.evaluated = False
        self._emit(SpeechStarted(audio_offset_ms=offset, processing_ms=vad_ms,
                                 utterance_id=utt_id))
        if self.playback_active:
            self._emit(Interruption(audio_offset_ms=offset, processing_ms=vad_ms,
                                    utterance_id=utt_id))

    def _on_speech_end(self, end: int, vad_ms: float) -> None:
        utt = self._utt
        self._in_speech = False
        self._silence_start = None
        self._last_speech_end = end
        if utt is None:
            return
        self._emit(SpeechEnded(audio_offset_ms=samples_to_ms(end), processing_ms=vad_ms,
                               utterance_id=utt.utterance_id,
                               duration_ms=samples_to_ms(end - utt.start)))
        self._finalise(utt, end, min(self.position, end + ms_to_samples(
            self.config.stt.postroll_ms)))
        self._utt = None

    def _finalise(self, utt: _Utterance, end_of_speech: int, audio_end: int) -> None:
        start = utt.anchor
        self._unfilled.add(utt.utterance_id)
        slot = _FinalSlot(utt.utterance_id, utt.start, end_of_speech, self._turn,
                          before=" ".join(utt.anchored), overlap=utt.overlap)
        self._queue.append(slot)  # queued now: it orders every later event behind it
        self._queued_ms = max(self._queued_ms, samples_to_ms(end_of_speech))
        spec = utt.speculation
        if spec is not None:
            job = spec.job
            if (end_of_speech, start, audio_end, utt.stable.text, self._prompt(utt)) == (
                    spec.end_of_speech, job.start, job.end, job.prefix, job.prompt):
                # The speculation is exactly the job we would issue now: adopt it.
                utt.speculation = None
                if spec.result is not None:
                    self._fill_final(slot, job, spec.result)
                else:
                    self._final_slots[job.job_id] = slot
                return
            self._abandon_speculation(utt)
        utt.held_final = _HeldFinal(slot, start, audio_end)
        self._held[utt.utterance_id] = utt
        self._release_held()

    def _release_held(self) -> None:
        """Issue the held finals that can go now.

        A final waits while its utterance has a partial in flight (the decoder prefix is
        the stable text, which that partial may extend) or while its prompt is not known
        (an earlier final is still being decoded). Issuing it regardless would make its
        text depend on timing, not audio, and the multi-process runtime must give the
        same finals as the inline driver. Either wait is one decode, tens of ms.
        """
        for uid, utt in sorted(self._held.items()):
            held = utt.held_final
            if held is None or utt.partial_in_flight or self._context_of(utt) is None:
                continue
            del self._held[uid]
            utt.held_final = None
            self._issue_final(utt, held.slot, held.start, held.end)

    def _issue_final(self, utt: _Utterance, slot: _FinalSlot, start: int, end: int) -> None:
        job = self._issue(JobKind.FINAL, utt.utterance_id, start, end,
                          beam_size=self.config.stt.beam_size, prefix=utt.stable.text,
                          prompt=self._prompt(utt))
        self._final_slots[job.job_id] = slot

    def _maybe_speculate(self, utt: _Utterance) -> None:
        """Issue the final decode early if the postroll is in but the silence unconfirmed.

        Not while a partial is in flight: the final's prefix is the stable text, which that
        partial may still extend (the same rule as the held final). No partial is issued
        during a pause, so the prefix cannot change between now and the confirmation.
        """
        stt = self.config.stt
        silence = self._silence_start
        if (
            not stt.speculative_final
            or silence is None
            or utt.speculation is not None
            or utt.partial_in_flight
            or self.position < silence + ms_to_samples(stt.postroll_ms)
            or self._context_of(utt) is None
        ):
            return
        job = self._issue(JobKind.FINAL, utt.utterance_id, utt.anchor,
                          silence + ms_to_samples(stt.postroll_ms),
                          beam_size=stt.beam_size, prefix=utt.stable.text,
                          prompt=self._prompt(utt))
        utt.speculation = _Speculation(job, silence)
        self.stats.speculations += 1

    def _abandon_speculation(self, utt: _Utterance) -> None:
        spec, utt.speculation = utt.speculation, None
        if spec is None:
            return
        self._in_flight.pop(spec.job.job_id, None)  # a late result is then ignored
        self.stats.speculations_abandoned += 1

    # ------------------------------------------------------------------ periodic decisions

    def _tick(self) -> None:
        cfg = self.config
        utt = self._utt
        if utt is not None and self._in_speech:
            length = self.position - utt.start
            self._maybe_speculate(utt)
            if length >= ms_to_samples(cfg.stt.max_utterance_s * 1000):
                self._split(utt)
            elif (
                cfg.stt.partials
                and self._silence_start is None
                and not utt.partial_in_flight
                and self._context_of(utt) is not None
                and length >= ms_to_samples(cfg.stt.min_partial_audio_ms)
                and (utt.last_partial_at < 0
                     or self.position - utt.last_partial_at
                     >= ms_to_samples(cfg.stt.partial_interval_ms))
            ):
                utt.partial_in_flight = True
                utt.last_partial_at = self.position
                window = self.position - utt.anchor
                self._issue(JobKind.PARTIAL, utt.utterance_id, utt.anchor, self.position,
                            beam_size=cfg.stt.partial_beam_size, prefix=utt.stable.text,
                            prompt=self._prompt(utt),
                            align=self._may_move_anchor(utt, window))
        turn = self._turn
        if (
            turn is None
            or self._in_speech
            or self._last_speech_end is None
            or self._candidate_start is not None  # maybe speech: decide once it is known
        ):
            return
        if turn.deferred:
            self._close_turn(TurnEndReason.MODEL, turn.last_probability, turn.last_turn_ms)
            return
        pause = self.position - self._last_speech_end
        if (
            self.turn_model
            and cfg.turn.enabled
            and not turn.evaluated
            and pause >= ms_to_samples(cfg.turn.silence_ms)
        ):
            turn.evaluated = True
            start = max(turn.start, self.position - ms_to_samples(cfg.turn.max_audio_s * 1000))
            self._issue(JobKind.TURN, turn.turn_id, start, self.position,
                        generation=turn.generation)
        if pause >= ms_to_samples(cfg.turn.fallback_silence_ms):
            self._close_turn(TurnEndReason.SILENCE_FALLBACK, turn.last_probability, 0.0)

    def _split(self, utt: _Utterance) -> None:
        """Speech ran past ``stt.max_utterance_s`` without a pause: end this utterance with
        a final and continue the same speech as a new one (no SpeechEnded/SpeechStarted
        pair: the VAD saw no pause; the new utterance id appears on its partials and final).

        Where words were moved out of the window, they are the final, as they stand (no
        decode, no cut mid-word) and the window carries over to the new utterance.
        Otherwise the audio so far is decoded as the final, and the new utterance starts
        ``stt.preroll_ms`` before the split, so a word cut there is heard in full.
        """
        cfg = self.config.stt
        self._abandon_speculation(utt)
        new = _Utterance(self._next_utt, self.position, StablePrefix(cfg.stable_agreement),
                         anchor=max(0, self.position - ms_to_samples(cfg.preroll_ms)))
        self._next_utt += 1
        if utt.anchored:
            self._unfilled.add(utt.utterance_id)
            slot = _FinalSlot(utt.utterance_id, utt.start, self.position, self._turn,
                              before=" ".join(utt.anchored))
            self._queue.append(slot)
            self._queued_ms = max(self._queued_ms, samples_to_ms(self.position))
            self._set_final(slot, "", 0.0)
            # A partial still in flight belongs to the old utterance: its result is stale.
            new.start, new.anchor, new.stable, new.overlap = (
                utt.anchor, utt.anchor, utt.stable, utt.overlap)
        else:
            self._finalise(utt, self.position, self.position)
        self._utt = new

    # ------------------------------------------------------------------ job results

    def _on_final(self, job: Job, result: JobResult) -> None:
        self._fill_final(self._final_slots.pop(job.job_id), job, result)
        self._release_held()  # a final waiting for this one's text as its prompt

    def _fill_final(self, slot: _FinalSlot, job: Job, result: JobResult) -> None:
        text = result.text.strip()
        if job.prefix and not (text == job.prefix or text.startswith(job.prefix + " ")):
            # Defensive: the decoder prefix guarantees this (and a failed job has no text);
            # keep the promise to the client regardless.
            n = len(job.prefix.split())
            text = " ".join([job.prefix, *text.split()[n:]])
        self._set_final(slot, " ".join(text.split()[slot.overlap :]), result.ms)

    def _set_final(self, slot: _FinalSlot, text: str, ms: float) -> None:
        text = " ".join(t for t in (slot.before, text) if t)
        self._unfilled.discard(slot.utterance_id)
        self._done[slot.utterance_id] = (slot.end_of_speech, text)
        while len(self._done) > DONE_KEPT:
            del self._done[min(self._done)]
        slot.event = FinalTranscription(
            audio_offset_ms=samples_to_ms(slot.end_of_speech), processing_ms=round(ms, 2),
            utterance_id=slot.utterance_id, text=text, start_ms=samples_to_ms(slot.start),
        )
        slot.filled = True
        self.stats.finals += 1
        if slot.turn is not None:
            slot.turn.texts[slot.utterance_id] = text

    def _on_partial(self, job: Job, result: JobResult) -> None:
        held = self._held.get(job.ref_id)
        if held is not None and held.held_final is not None:
            # The utterance ended while this partial ran. Its hypothesis still feeds the
            # stable prefix (as it would have inline), but no event: a partial after the
            # utterance's SpeechEnded would break offset order.
            held.partial_in_flight = False
            if result.error is None and result.text and not result.degenerate:
                held.stable.update(result.text, commit=self._may_commit(held, job))
            self._release_held()
            return
        utt = self._utt
        if utt is None or utt.utterance_id != job.ref_id:
            self.stats.stale_results += 1
            return
        utt.partial_in_flight = False
        if result.degenerate:
            self.stats.partials_degenerate += 1
            return  # a loop is never shown; the next partial tries again
        if result.error is not None or not result.text:
            return
        shown = utt.stable.update(result.text, commit=self._may_commit(utt, job)).split()
        self.stats.partials += 1
        self._emit(PartialTranscription(
            audio_offset_ms=samples_to_ms(job.end), processing_ms=round(result.ms, 2),
            utterance_id=utt.utterance_id,
            text=" ".join([*utt.anchored, *shown[utt.overlap :]]),
            stable_text=" ".join([*utt.anchored, *utt.stable.committed[utt.overlap :]]),
        ))
        if job.start == utt.anchor:
            self._move_anchor(utt, job, result)

    def _may_commit(self, utt: _Utterance, job: Job) -> bool:
        """Whether a partial's hypothesis may commit words: not before the utterance has
        ``stt.min_commit_audio_ms`` of audio. Whisper mishears the first words of a phrase
        it cannot hear the rest of ("how do you marry" for "had he married"), and does so
        consistently, so agreement alone does not catch it."""
        return job.end - utt.start >= ms_to_samples(self.config.stt.min_commit_audio_ms)

    def _may_move_anchor(self, utt: _Utterance, window: int) -> bool:
        """Whether a partial of ``window`` samples may lead to an anchor move, and so needs
        word times (an alignment pass costs ~20 % of a partial): the window is past the
        target and something beyond its first word is committed, or it is past the
        maximum (a forced move)."""
        stt = self.config.stt
        if window >= ms_to_samples(stt.window_max_s * 1000):
            return True
        return (window >= ms_to_samples(stt.window_target_s * 1000)
                and len(utt.stable.committed) > utt.overlap + 1)

    def _move_anchor(self, utt: _Utterance, job: Job, result: JobResult) -> None:
        """Move committed words out of a window that grew past ``stt.window_target_s``.

        The committed words join ``anchored`` (the prompt of later decodes), and the
        window restarts just before the last of them, which stays in it as the first word
        of the forced prefix (``utt.overlap``; it is shown once). Decoding a
        boundary word again, whole, is what keeps the cut from clipping words: cutting
        between two words, even at the quietest point, lost some ("in the middle of the"
        lost its "of the"). Past ``stt.window_max_s`` with nothing committed, the newest
        hypothesis's words but its last two are committed as they stand.
        """
        cfg = self.config
        window = job.end - utt.anchor
        if window < ms_to_samples(cfg.stt.window_target_s * 1000):
            return
        hyp = result.text.split()
        words = result.words
        if not words or [w.word for w in words] != hyp:
            return  # no (usable) alignment: try with the next partial
        committed = common_prefix_words(utt.stable.committed, hyp)
        forced = committed <= utt.overlap
        if forced:
            if window < ms_to_samples(cfg.stt.window_max_s * 1000):
                return
            committed = len(hyp) - 2
        last = committed - 1  # the last word anchored, and the new window's first
        if last < max(1, utt.overlap):
            return  # nothing new to anchor, or a one-word window
        anchor = job.start + words[last].start - OVERLAP_MARGIN * WINDOW
        if anchor <= utt.anchor:
            return
        source = hyp if forced else utt.stable.committed
        utt.anchored.extend(source[utt.overlap : last + 1])
        utt.anchor = anchor
        utt.overlap = 1
        if forced:
            utt.stable.restart([hyp[last]])
            self.stats.forced_anchor_moves += 1
        else:
            utt.stable.rebase(last)
        self.stats.anchor_moves += 1

    def _on_turn(self, job: Job, result: JobResult) -> None:
        turn = self._turn
        if (
            turn is None
            or turn.turn_id != job.ref_id
            or turn.generation != job.generation
            or self._in_speech
        ):
            self.stats.stale_results += 1
            return
        if result.error is not None:
            return  # the silence fallback still ends the turn
        turn.last_probability = result.probability
        turn.last_turn_ms = result.ms
        if result.probability > self.config.turn.threshold:
            if self._candidate_start is not None:
                turn.deferred = True
            else:
                self._close_turn(TurnEndReason.MODEL, result.probability, result.ms)

    # ------------------------------------------------------------------ turn end

    def _close_turn(self, reason: TurnEndReason, prob: float | None, ms: float) -> None:
        turn = self._turn
        if turn is None:
            return
        self._turn = None
        self._queue.append(_TurnSlot(turn, reason, prob, self.position, ms))
        self._queued_ms = max(self._queued_ms, samples_to_ms(self.position))

    def _resolve_turn(self, slot: _TurnSlot) -> TurnEnded | None:
        texts = [t for _, t in sorted(slot.turn.texts.items()) if t]
        transcript = " ".join(texts)
        if not transcript:
            # Only noise was heard (every final empty): nothing for an agent to act on.
            self.stats.turns_discarded += 1
            return None
        self.stats.turns += 1
        return TurnEnded(
            audio_offset_ms=samples_to_ms(slot.offset), processing_ms=round(slot.processing_ms, 2),
            turn_id=slot.turn.turn_id, probability=(
                None if slot.probability is None else round(slot.probability, 4)),
            reason=slot.reason, transcript=transcript,
        )

    # ------------------------------------------------------------------ helpers

    def _issue(self, kind: JobKind, ref_id: int, start: int, end: int, *, beam_size: int = 1,
               prefix: str = "", generation: int = 0, prompt: str = "",
               align: bool = False) -> Job:
        job = Job(kind, self._next_job, ref_id, start, end, beam_size, prefix, generation,
                  prompt, align)
        self._next_job += 1
        self._jobs.append(job)
        self._in_flight[job.job_id] = job
        return job

    def _emit(self, event: Event) -> None:
        self._queue.append(event)
        if not isinstance(event, FrameProcessed):
            self._queued_ms = max(self._queued_ms, event.audio_offset_ms)


# --------------------------------------------------------------------------- driver


class AudioBuffer:
    """Rolling 16 kHz buffer addressed in absolute session samples."""

    def __init__(self) -> None:
        self._data = np.zeros(0, dtype=np.float32)
        self.base = 0
        """Absolute index of ``_data[0]``."""

    @property
    def end(self) -> int:
        return self.base + self._data.size

    def append(self, samples: npt.NDArray[np.float32]) -> None:
        self._data = np.concatenate([self._data, samples])

    def get(self, start: int, end: int) -> npt.NDArray[np.float32]:
        if start < self.base or end > self.end:
            raise IndexError(f"audio [{start}, {end}) not in buffer [{self.base}, {self.end})")
        return self._data[start - self.base : end - self.base]

    def trim(self, keep_from: int) -> None:
        """Drop audio before ``keep_from``; compacts only when it frees a second or more."""
        drop = keep_from - self.base
        if drop >= SAMPLE_RATE:
            self._data = self._data[drop:].copy()
            self.base = keep_from


class Session:
    """One audio stream processed inline: frames in, events out.

    Not thread-safe; a session belongs to one caller. Errors in a frame raise
    :class:`InvalidAudioError` before any state changes.
    """

    def __init__(
        self,
        models: Models,
        config: EngineConfig | None = None,
        *,
        sample_rate: int = SAMPLE_RATE,
        resample: bool = True,
        clock: Callable[[], float] = time.perf_counter,
        on_job: Callable[[JobResult], None] | None = None,
    ) -> None:
        if sample_rate != SAMPLE_RATE and not resample:
            raise InvalidAudioError(
                f"sample rate {sample_rate} Hz needs resampling to {SAMPLE_RATE} Hz, which was "
                "disabled"
            )
        self.models = models
        self.core = SessionCore(config, turn_model=models.turn is not None)
        self.sample_rate = sample_rate
        self._resampler = StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None
        self._vad_state = VadState()
        self._audio = AudioBuffer()
        self._pending = np.zeros(0, dtype=np.float32)
        self._clock = clock
        self._on_job = on_job
        """Sees every job's result (benchmarks and tests: what ran, on how much audio)."""

    @property
    def config(self) -> EngineConfig:
        return self.core.config

    def push(self, frame: bytes | npt.NDArray[np.generic], *,
             sample_rate: int | None = None) -> list[Event]:
        """Feed one frame (any length); returns the events it completed."""
        samples = session_samples(frame, sample_rate, self.sample_rate, self._resampler)
        self._pending = np.concatenate([self._pending, samples])
        self._process_windows()
        return self.core.drain_events()

    def set_playback(self, active: bool) -> list[Event]:
        self.core.set_playback(active)
        return self.core.drain_events()

    def flush(self) -> list[Event]:
        self.core.flush()
        self._run_jobs()
        return self.core.drain_events()

    def force_end_of_turn(self) -> list[Event]:
        self.core.force_end_of_turn()
        self._run_jobs()
        return self.core.drain_events()

    def close(self) -> list[Event]:
        """End of input: pad the last partial window, finalise, end any open turn."""
        events: list[Event] = []
        if self._resampler is not None:
            tail = self._resampler(np.zeros(0, dtype=np.float32), last=True)
            self._pending = np.concatenate([self._pending, tail])
        if self._pending.size:
            pad = WINDOW - self._pending.size % WINDOW
            if pad != WINDOW:
                self._pending = np.concatenate([self._pending, np.zeros(pad, np.float32)])
            self._process_windows()
        events += self.core.drain_events()
        events += self.force_end_of_turn()
        return events

    def reconfigure(self, config: EngineConfig) -> None:
        self.core.reconfigure(config)

    def _process_windows(self) -> None:
        n = self._pending.size // WINDOW
        if n == 0:
            return
        windows = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._audio.append(self._pending[: n * WINDOW])
        self._pending = self._pending[n * WINDOW :].copy()
        for w in windows:
            t0 = self._clock()
            p = self.models.vad.prob(self._vad_state, np.ascontiguousarray(w))
            self.core.on_vad(p, (self._clock() - t0) * 1000.0)
            self._run_jobs()
        self._audio.trim(self.core.retain_from())

    def _run_jobs(self) -> None:
        jobs = self.core.take_jobs()
        while jobs:
            for job in jobs:
                audio = self._audio.get(job.start, min(job.end, self._audio.end))
                result = run_job(self.models, job, audio, self.config.stt)
                if self._on_job is not None:
                    self._on_job(result)
                self.core.on_result(result)
            jobs = self.core.take_jobs()
