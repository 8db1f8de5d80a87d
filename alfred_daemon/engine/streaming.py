"""Streaming transcription of a session's utterances: partials, commits, windows, finals.

While an utterance is spoken it is decoded again every ``stt.partial_interval_ms`` (a
PARTIAL job). Words become *committed* once successive partials agree on them
(:class:`~.text.StablePrefix`); every later decode of the utterance is forced to start with
them, so the stable text a client was shown never changes, and the final says it too.

Long utterances are decoded in a moving window (:mod:`~.utterance`), so a partial's cost
does not grow with the utterance. The words moved out of the window, and the finals just
before the utterance (``stt.context_s``), are the decoder's previous-text *prompt*.

A partial whose decode loops (``JobResult.degenerate``) is not shown; the next one tries
again. Finals recover on the decoder's side (a fallback decode, :mod:`~.stt`).

When the speech ends the final job is issued (FINAL). It waits while a partial of the
utterance is in flight (that partial may extend the forced prefix) or while the final
before it, part of its prompt, is still being decoded: either would make the text depend
on timing rather than audio, and the multi-process runtime must give the same finals as
the inline driver.

Speculative finals: the final's audio ends ``stt.postroll_ms`` after the speech, which is
shorter than the silence the VAD needs to confirm the end (``vad.min_silence_ms``). So the
final job can be issued once the postroll is in, while the silence is still unconfirmed;
when the VAD confirms, the final's slot takes the speculation's result (or waits for it).
The job is the one the confirmation would have issued -- same audio range, prefix and beam
-- so the text cannot differ; only the wait does. If speech resumes first, the speculation
is abandoned: it is no longer a job in flight, so an executor that has not started it yet
can skip it (``SessionCore.wants``), and a result that comes back anyway is ignored.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from .config import EngineConfig, ms_to_samples, samples_to_ms
from .events import FinalTranscription, PartialTranscription
from .jobs import Job, JobBook, JobKind, JobResult
from .ordering import OutputQueue
from .text import StablePrefix
from .turn_taking import Turn
from .utterance import PROMPT_WORDS, FinalSlot, HeldFinal, Speculation, Utterance

if TYPE_CHECKING:
    from .core import CoreStats, SpeechState

DONE_KEPT = 32
"""Finals remembered for later prompts (the prompt takes at most ``PROMPT_WORDS``)."""


class StreamingTranscription:
    """The utterances of one session, from their first partial to their final.

    The session core tells it where speech starts and ends and hands it PARTIAL and FINAL
    results; it issues the decode jobs and queues the transcription events.
    """

    def __init__(self, config: EngineConfig, speech: SpeechState, jobs: JobBook,
                 out: OutputQueue, stats: CoreStats) -> None:
        self.config = config
        """Replaced by the core when the session is reconfigured."""
        self.current: Utterance | None = None
        """The utterance being spoken (None between utterances)."""
        self._speech = speech
        self._jobs = jobs
        self._out = out
        self._stats = stats
        self._next_utt = 0
        self._final_slots: dict[int, FinalSlot] = {}  # job id -> slot
        self._held: dict[int, Utterance] = {}  # utterance id -> ended, final held
        self._unfilled: set[int] = set()
        """Utterances whose final is not known yet."""
        self._done: dict[int, tuple[int, str]] = {}
        """Recent finals: utterance id -> (end of speech, text), for later prompts."""

    # ------------------------------------------------------------------ executor queries

    def superseded(self, job: Job) -> bool:
        """See :meth:`SessionCore.superseded`."""
        if job.kind is not JobKind.PARTIAL or job.job_id not in self._jobs.in_flight:
            return False
        if job.ref_id in self._held:
            return True
        utt = self.current
        return (utt is not None and utt.utterance_id == job.ref_id
                and self._speech.silence_start is not None)

    def extend(self, job: Job) -> Job:
        """See :meth:`SessionCore.extend`."""
        utt = self.current
        speech = self._speech
        if (
            job.kind is not JobKind.PARTIAL
            or self._jobs.in_flight.get(job.job_id) is not job
            or utt is None
            or utt.utterance_id != job.ref_id
            or job.start != utt.anchor
            or not speech.in_speech
            or speech.silence_start is not None
            or speech.position <= job.end
        ):
            return job
        longer = dataclasses.replace(
            job, end=speech.position,
            align=utt.may_move_anchor(speech.position - job.start, self.config.stt))
        self._jobs.in_flight[job.job_id] = longer
        utt.last_partial_at = speech.position
        return longer

    def is_speculative(self, job: Job) -> bool:
        """See :meth:`SessionCore.is_speculative`."""
        return self._speculation_of(job) is not None

    def _speculation_of(self, job: Job) -> Speculation | None:
        """The live speculation ``job`` is, if any. Only the current utterance can have
        one: ending an utterance adopts or abandons it."""
        spec = self.current.speculation if self.current is not None else None
        return spec if spec is not None and spec.job.job_id == job.job_id else None

    # ------------------------------------------------------------------ speech transitions

    def start(self, start: int) -> int:
        """Speech was confirmed from sample ``start``: a new utterance; returns its id."""
        stt = self.config.stt
        utt_id = self._next_utt
        self._next_utt += 1
        self.current = Utterance(utt_id, start, StablePrefix(stt.stable_agreement),
                                 anchor=max(0, start - ms_to_samples(stt.preroll_ms)))
        return utt_id

    def resumed(self) -> None:
        """Speech went on after a pause the VAD had not confirmed: a speculation on that
        pause is void."""
        if self.current is not None:
            self._abandon_speculation(self.current)

    def end(self, end_of_speech: int, turn: Turn | None) -> None:
        """The current utterance's speech ended at ``end_of_speech`` (confirmed): its final."""
        utt = self.current
        if utt is None:
            return
        audio_end = min(self._speech.position,
                        end_of_speech + ms_to_samples(self.config.stt.postroll_ms))
        self._finalise(utt, end_of_speech, audio_end, turn)
        self.current = None

    def tick(self, turn: Turn | None) -> None:
        """After each window in speech: speculate, split an overlong utterance, or issue
        the next partial when it is due."""
        cfg = self.config.stt
        speech = self._speech
        utt = self.current
        if utt is None or not speech.in_speech:
            return
        length = speech.position - utt.start
        self._maybe_speculate(utt)
        if length >= ms_to_samples(cfg.max_utterance_s * 1000):
            self._split(utt, turn)
        elif (
            cfg.partials
            and speech.silence_start is None
            and not utt.partial_in_flight
            and self._context_of(utt) is not None
            and length >= ms_to_samples(cfg.min_partial_audio_ms)
            and (utt.last_partial_at < 0
                 or speech.position - utt.last_partial_at
                 >= ms_to_samples(cfg.partial_interval_ms))
        ):
            utt.partial_in_flight = True
            utt.last_partial_at = speech.position
            window = speech.position - utt.anchor
            self._jobs.issue(JobKind.PARTIAL, utt.utterance_id, utt.anchor, speech.position,
                             beam_size=cfg.partial_beam_size, prefix=utt.stable.text,
                             prompt=utt.prompt(),
                             align=utt.may_move_anchor(window, cfg))

    def _split(self, utt: Utterance, turn: Turn | None) -> None:
        """Speech ran past ``stt.max_utterance_s`` without a pause: end this utterance with
        a final and continue the same speech as a new one (no SpeechEnded/SpeechStarted
        pair: the VAD saw no pause; the new utterance id appears on its partials and final).

        Where words were moved out of the window, they are the final, as they stand (no
        decode, no cut mid-word) and the window carries over to the new utterance.
        Otherwise the audio so far is decoded as the final, and the new utterance starts
        ``stt.preroll_ms`` before the split, so a word cut there is heard in full.
        """
        cfg = self.config.stt
        position = self._speech.position
        self._abandon_speculation(utt)
        new = Utterance(self._next_utt, position, StablePrefix(cfg.stable_agreement),
                        anchor=max(0, position - ms_to_samples(cfg.preroll_ms)))
        self._next_utt += 1
        if utt.anchored:
            self._unfilled.add(utt.utterance_id)
            slot = FinalSlot(utt.utterance_id, utt.start, position, turn,
                             before=" ".join(utt.anchored))
            self._out.reserve(slot, position)
            self._set_final(slot, "", 0.0)
            # A partial still in flight belongs to the old utterance: its result is stale.
            new.start, new.anchor, new.stable, new.overlap = (
                utt.anchor, utt.anchor, utt.stable, utt.overlap)
        else:
            self._finalise(utt, position, position, turn)
        self.current = new

    # ------------------------------------------------------------------ prompts

    def _context_of(self, utt: Utterance) -> list[str] | None:
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

    # ------------------------------------------------------------------ finals

    def _finalise(self, utt: Utterance, end_of_speech: int, audio_end: int,
                  turn: Turn | None) -> None:
        start = utt.anchor
        self._unfilled.add(utt.utterance_id)
        slot = FinalSlot(utt.utterance_id, utt.start, end_of_speech, turn,
                         before=" ".join(utt.anchored), overlap=utt.overlap)
        self._out.reserve(slot, end_of_speech)  # now: it orders every later event behind it
        spec = utt.speculation
        if spec is not None:
            job = spec.job
            if (end_of_speech, start, audio_end, utt.stable.text, utt.prompt()) == (
                    spec.end_of_speech, job.start, job.end, job.prefix, job.prompt):
                # The speculation is exactly the job we would issue now: adopt it.
                utt.speculation = None
                if spec.result is not None:
                    self._fill_final(slot, job, spec.result)
                else:
                    self._final_slots[job.job_id] = slot
                return
            self._abandon_speculation(utt)
        utt.held_final = HeldFinal(slot, start, audio_end)
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
            job = self._jobs.issue(JobKind.FINAL, utt.utterance_id, held.start, held.end,
                                   beam_size=self.config.stt.beam_size,
                                   prefix=utt.stable.text, prompt=utt.prompt())
            self._final_slots[job.job_id] = held.slot

    def _maybe_speculate(self, utt: Utterance) -> None:
        """Issue the final decode early if the postroll is in but the silence unconfirmed.

        Not while a partial is in flight: the final's prefix is the stable text, which that
        partial may still extend (the same rule as the held final). No partial is issued
        during a pause, so the prefix cannot change between now and the confirmation.
        """
        stt = self.config.stt
        silence = self._speech.silence_start
        if (
            not stt.speculative_final
            or silence is None
            or utt.speculation is not None
            or utt.partial_in_flight
            or self._speech.position < silence + ms_to_samples(stt.postroll_ms)
            or self._context_of(utt) is None
        ):
            return
        job = self._jobs.issue(JobKind.FINAL, utt.utterance_id, utt.anchor,
                               silence + ms_to_samples(stt.postroll_ms),
                               beam_size=stt.beam_size, prefix=utt.stable.text,
                               prompt=utt.prompt())
        utt.speculation = Speculation(job, silence)
        self._stats.speculations += 1

    def _abandon_speculation(self, utt: Utterance) -> None:
        spec, utt.speculation = utt.speculation, None
        if spec is None:
            return
        self._jobs.in_flight.pop(spec.job.job_id, None)  # a late result is then ignored
        self._stats.speculations_abandoned += 1

    def on_final(self, job: Job, result: JobResult) -> None:
        """A FINAL job's result (the core has checked it was awaited)."""
        spec = self._speculation_of(job)
        if spec is not None:
            spec.result = result  # adopted when the VAD confirms
            return
        self._fill_final(self._final_slots.pop(job.job_id), job, result)
        self._release_held()  # a final waiting for this one's text as its prompt

    def _fill_final(self, slot: FinalSlot, job: Job, result: JobResult) -> None:
        text = result.text.strip()
        if job.prefix and not (text == job.prefix or text.startswith(job.prefix + " ")):
            # Defensive: the decoder prefix guarantees this (and a failed job has no text);
            # keep the promise to the client regardless.
            n = len(job.prefix.split())
            text = " ".join([job.prefix, *text.split()[n:]])
        self._set_final(slot, " ".join(text.split()[slot.overlap :]), result.ms)

    def _set_final(self, slot: FinalSlot, text: str, ms: float) -> None:
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
        self._stats.finals += 1
        if slot.turn is not None:
            slot.turn.texts[slot.utterance_id] = text

    # ------------------------------------------------------------------ partials

    def on_partial(self, job: Job, result: JobResult) -> None:
        """A PARTIAL job's result (the core has checked it was awaited)."""
        self._on_partial(job, result)
        utt = self.current
        if utt is not None and self._speech.in_speech:
            self._maybe_speculate(utt)  # it may have waited for this partial

    def _on_partial(self, job: Job, result: JobResult) -> None:
        held = self._held.get(job.ref_id)
        if held is not None and held.held_final is not None:
            # The utterance ended while this partial ran. Its hypothesis still feeds the
            # stable prefix (as it would have inline), but no event: a partial after the
            # utterance's SpeechEnded would break offset order.
            held.partial_in_flight = False
            if result.error is None and result.text and not result.degenerate:
                held.stable.update(result.text, commit=held.may_commit(job, self.config.stt))
            self._release_held()
            return
        utt = self.current
        if utt is None or utt.utterance_id != job.ref_id:
            self._stats.stale_results += 1
            return
        utt.partial_in_flight = False
        if result.degenerate:
            self._stats.partials_degenerate += 1
            return  # a loop is never shown; the next partial tries again
        if result.error is not None or not result.text:
            return
        shown = utt.stable.update(result.text, commit=utt.may_commit(job, self.config.stt)).split()
        self._stats.partials += 1
        self._out.emit(PartialTranscription(
            audio_offset_ms=samples_to_ms(job.end), processing_ms=round(result.ms, 2),
            utterance_id=utt.utterance_id,
            text=" ".join([*utt.anchored, *shown[utt.overlap :]]),
            stable_text=" ".join([*utt.anchored, *utt.stable.committed[utt.overlap :]]),
        ))
        if job.start == utt.anchor:
            moved = utt.move_anchor(job, result, self.config.stt)
            if moved is not None:
                self._stats.anchor_moves += 1
                if moved == "forced":
                    self._stats.forced_anchor_moves += 1
