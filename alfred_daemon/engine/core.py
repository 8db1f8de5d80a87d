"""The session core: a pure state machine from VAD probabilities to events and jobs.

:class:`SessionCore` has three inputs -- one VAD probability per 32 ms window, job results,
and client controls -- and two outputs: events and jobs. It never runs a model and never
holds audio, so the runtime can keep it in the supervisor while workers run its jobs
against shared memory, and tests can drive it with made-up probabilities.

The core itself turns probabilities into speech segments (hysteresis: ``vad.min_speech_ms``
to start, ``vad.min_silence_ms`` to end) and wires them to its two parts:
:mod:`~.streaming` (partials and finals of each utterance, with the per-utterance window
in :mod:`~.utterance`) and :mod:`~.turn_taking` (turns, Smart Turn, barge-in). Job
bookkeeping is a :class:`~.jobs.JobBook`; ordering is the :class:`~.ordering.OutputQueue`.

Ordering contract (what clients rely on):

* events of a session come out in audio-offset order (except the optional per-window
  FrameProcessed events, which are sent as each window is analysed, while SpeechStarted and
  SpeechEnded are dated back to where speech or silence began);
* a FinalTranscription precedes every event that refers to later audio, even though its
  decode finishes after them (the runtime decodes asynchronously);
* TurnEnded comes after the finals of all the turn's utterances and carries their text.

All three follow from the output queue's slots (see :mod:`~.ordering`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import EngineConfig, ms_to_samples, samples_to_ms
from .events import Event, FrameProcessed, SessionClosed, SpeechEnded, SpeechStarted
from .jobs import Job, JobBook, JobKind, JobResult
from .ordering import OutputQueue
from .streaming import StreamingTranscription
from .turn_taking import TurnTaking
from .vad import WINDOW


@dataclass(slots=True)
class CoreStats:
    """What one session's core has done: for a session's status, tests and benchmarks."""

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
    turn_speculations: int = 0
    """Smart Turn asks issued before the speech end was confirmed (``turn.speculative``)."""
    turn_speculations_abandoned: int = 0
    """... of which speech resumed first: wasted work."""
    partials_degenerate: int = 0
    """Partial decodes that looked like a loop and were not shown."""
    anchor_moves: int = 0
    """Times a window's committed words were moved out of it (long utterances)."""
    forced_anchor_moves: int = 0
    """... of which nothing had been committed by ``stt.window_max_s``."""


@dataclass(slots=True)
class SpeechState:
    """Where the VAD hysteresis stands. The core writes it; its parts read it."""

    position: int = 0
    """Samples analysed by the VAD so far (a multiple of the 512-sample window)."""
    in_speech: bool = False
    candidate_start: int | None = None
    """First window of speech not yet long enough to confirm (windows since are speech)."""
    silence_start: int | None = None
    """First window of a pause within speech, not yet long enough to end it."""
    last_speech_end: int | None = None
    """Where the last confirmed speech ended (None while speaking or before any)."""


class SessionCore:
    """The session state machine. See the module docstring for the ordering contract."""

    def __init__(self, config: EngineConfig | None = None, *, turn_model: bool = True) -> None:
        self._config = config or EngineConfig()
        self.stats = CoreStats()
        self._speech = SpeechState()
        self._jobs = JobBook()
        self._out = OutputQueue()
        self._stream = StreamingTranscription(self._config, self._speech, self._jobs,
                                              self._out, self.stats)
        self._turns = TurnTaking(self._config, self._speech, self._jobs, self._out,
                                 self.stats, turn_model=turn_model)

    # ------------------------------------------------------------------ state

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def turn_model(self) -> bool:
        """False when no Smart Turn model is loaded: turns end by the silence fallback."""
        return self._turns.turn_model

    @property
    def position(self) -> int:
        """Samples analysed by the VAD so far (a multiple of the 512-sample window)."""
        return self._speech.position

    @property
    def playback_active(self) -> bool:
        """The client's own audio output is playing (see :meth:`set_playback`)."""
        return self._turns.playback_active

    @property
    def in_flight(self) -> list[Job]:
        return list(self._jobs.in_flight.values())

    @property
    def decision_pending(self) -> bool:
        """A final or a turn decision will be asked for within ~``min_silence_ms``: speech
        paused but the pause is not confirmed yet, or it is and Smart Turn has not been
        asked. An executor keeping capacity free for urgent jobs needs it only then."""
        if self._speech.in_speech:
            return self._speech.silence_start is not None
        return self._turns.decision_pending

    @property
    def speaking(self) -> bool:
        """Speech is in progress or may be starting: partials, then a final, are coming."""
        return self._speech.in_speech or self._speech.candidate_start is not None

    # ------------------------------------------------------------------ outputs

    def take_jobs(self) -> list[Job]:
        """Jobs issued since the last call, highest priority first."""
        return self._jobs.take()

    def drain_events(self) -> list[Event]:
        """Events ready to send, in order; stops at the first final still being decoded."""
        return self._out.drain()

    # ------------------------------------------------------------------ executor queries

    def superseded(self, job: Job) -> bool:
        """Whether ``job``, a partial not started yet, had better not run: its utterance's
        speech has paused or ended. The final waits for every partial in flight (a partial
        may extend the final's forced prefix), so under load a queued partial would delay
        the final by its wait and its decode. An executor with a queue answers it with
        :meth:`JobResult.skip` instead; the final then goes at once, with the words
        committed so far."""
        return self._stream.superseded(job)

    def extend(self, job: Job) -> Job:
        """``job`` (issued earlier, not started yet) reaching up to the audio analysed now.

        An executor calls this as it starts a queued partial: the partial then shows the
        speech up to that moment instead of up to when it was queued, so time spent in the
        queue does not make it older (same decode cost: the window is padded to a few fixed
        lengths anyway). Other jobs, and a partial whose utterance has paused or ended,
        come back unchanged.
        """
        return self._stream.extend(job)

    def is_speculative(self, job: Job) -> bool:
        """``job`` is a final decode or a Smart Turn ask issued before its speech end was
        confirmed (and not yet adopted by the confirmation): useful, but not yet owed to
        the client."""
        return self._stream.is_speculative(job) or self._turns.is_speculative(job)

    def wants(self, job: Job) -> bool:
        """Whether ``job``'s result is still of use (False for an abandoned speculation).

        An executor with a queue checks this before starting a job: skipping it saves the
        decode. Running it anyway is harmless, the result is ignored.
        """
        return job.job_id in self._jobs.in_flight

    def retain_from(self) -> int:
        """Oldest sample any current or future job may still need.

        Audio before this can be dropped (the driver trims its buffer, the runtime lets the
        ring overwrite it).
        """
        cfg = self.config
        position = self._speech.position
        keep = position - ms_to_samples(cfg.vad.min_speech_ms + cfg.stt.preroll_ms + 64)
        if self._stream.current is not None:
            keep = min(keep, self._stream.current.anchor)
        keep = self._turns.retain_from(keep)
        for job in self._jobs.in_flight.values():
            keep = min(keep, job.start)
        return max(0, keep)

    def earliest_pending_offset_ms(self) -> int:
        """No event emitted from now on will be dated before this (ms)."""
        speech = self._speech
        earliest = speech.position
        for pending in (speech.candidate_start, speech.silence_start):
            if pending is not None:
                earliest = min(earliest, pending)
        utt = self._stream.current
        current = utt.utterance_id if utt is not None else None
        for job in self._jobs.in_flight.values():
            # Only the current utterance's partial can still become an event; one of an
            # ended utterance feeds its held final or is dropped.
            if job.kind is JobKind.PARTIAL and job.ref_id == current:
                earliest = min(earliest, job.end)
        return samples_to_ms(earliest)

    # ------------------------------------------------------------------ inputs

    def on_vad(self, probability: float, vad_ms: float = 0.0) -> None:
        """Advance by one 512-sample window with its speech probability."""
        cfg = self.config.vad
        speech = self._speech
        start = speech.position
        speech.position += WINDOW
        self.stats.windows += 1
        is_speech_window = probability >= cfg.threshold
        if self.config.frame_events:
            self._out.emit(FrameProcessed(
                audio_offset_ms=samples_to_ms(speech.position), processing_ms=vad_ms,
                probability=round(probability, 4), is_speech=is_speech_window,
            ))
        if not speech.in_speech:
            if is_speech_window:
                if speech.candidate_start is None:
                    speech.candidate_start = start
                run = speech.position - speech.candidate_start
                if run >= ms_to_samples(max(cfg.min_speech_ms, 1)):
                    self._on_speech_start(speech.candidate_start, vad_ms)
            else:
                speech.candidate_start = None
        else:
            self.stats.speech_windows += 1
            if probability < cfg.effective_neg_threshold:
                if speech.silence_start is None:
                    speech.silence_start = start
                if speech.position - speech.silence_start >= ms_to_samples(cfg.min_silence_ms):
                    self._on_speech_end(speech.silence_start, vad_ms)
            else:
                speech.silence_start = None
                self._resumed()
        self._stream.tick(self._turns.current)
        self._turns.tick()

    def on_result(self, result: JobResult) -> None:
        """Feed back the outcome of a job returned by :meth:`take_jobs`."""
        job = result.job
        if self._jobs.in_flight.pop(job.job_id, None) is None:
            self.stats.stale_results += 1
            return  # duplicate (e.g. a job re-run after a worker died) or unknown
        if result.error is not None and not result.skipped:
            self.stats.job_errors += 1
        if job.kind is JobKind.FINAL:
            self._stream.on_final(job, result)
        elif job.kind is JobKind.PARTIAL:
            self._stream.on_partial(job, result)
        else:
            self._turns.on_result(job, result)

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
        speech = self._speech
        gap_start = speech.position
        speech.position += windows * WINDOW
        if not speech.in_speech:
            start = speech.candidate_start if speech.candidate_start is not None else gap_start
            self._on_speech_start(start, 0.0)
        else:
            speech.silence_start = None
            self._resumed()

    def post(self, event: Event) -> None:
        """Queue an event from outside the core (runtime notices: backpressure, worker
        recovery, dropped frames, health) so it keeps the session's ordering contract.

        The caller dates a notice at the current position, but the core may still emit
        events dated earlier: SpeechStarted/SpeechEnded are retroactive to where speech or
        silence began, and a partial is dated at the end of its audio when its decode
        returns. So the notice is re-dated to the earliest offset a future event can carry.
        """
        # Never before what is already queued (that would break the order by itself).
        safe = max(self.earliest_pending_offset_ms(), self._out.queued_ms)
        if event.audio_offset_ms > safe:
            event = dataclasses.replace(event, audio_offset_ms=safe)
        self._out.emit(event)

    def close(self, reason: str) -> SessionClosed:
        """Queue session_closed, the session's last event, and return it.

        Unlike a notice (:meth:`post`) it keeps the position as its date: nothing is
        emitted after it, so a speech candidate or pause still pending when the input ends
        cannot date a later event earlier. Its offset is where the analysed audio ends,
        which is how a client checks that every frame it sent was taken.
        """
        closed = SessionClosed(audio_offset_ms=max(samples_to_ms(self.position),
                                                   self._out.queued_ms), reason=reason)
        self._out.emit(closed)
        return closed

    def set_playback(self, active: bool) -> None:
        """The client's own audio output started/stopped (for barge-in detection)."""
        self._turns.playback_active = active

    def flush(self) -> None:
        """Finalise the current utterance now (e.g. end of input), without ending the turn."""
        speech = self._speech
        if speech.in_speech:
            end = speech.silence_start if speech.silence_start is not None else speech.position
            self._on_speech_end(end, 0.0)

    def force_end_of_turn(self) -> bool:
        """End the current turn now (reason ``forced``). Returns False if no turn is open."""
        self.flush()
        return self._turns.force_end()

    def reconfigure(self, config: EngineConfig) -> None:
        """Swap the configuration; takes effect from the next window."""
        self._config = self._stream.config = self._turns.config = config

    # ------------------------------------------------------------------ VAD transitions

    def _on_speech_start(self, start: int, vad_ms: float) -> None:
        speech = self._speech
        speech.in_speech = True
        speech.candidate_start = None
        speech.silence_start = None
        speech.last_speech_end = None
        utt_id = self._stream.start(start)
        self._turns.speech_started(start)  # may queue TurnResumed: before SpeechStarted
        self._out.emit(SpeechStarted(audio_offset_ms=samples_to_ms(start),
                                     processing_ms=vad_ms, utterance_id=utt_id))
        self._turns.barge_in(start, vad_ms, utt_id)

    def _resumed(self) -> None:
        """Speech went on after a pause the VAD had not confirmed: speculations on it are
        void."""
        self._stream.resumed()
        self._turns.resumed()

    def _on_speech_end(self, end: int, vad_ms: float) -> None:
        speech = self._speech
        speech.in_speech = False
        speech.silence_start = None
        speech.last_speech_end = end
        utt = self._stream.current
        if utt is None:
            return
        self._out.emit(SpeechEnded(audio_offset_ms=samples_to_ms(end), processing_ms=vad_ms,
                                   utterance_id=utt.utterance_id,
                                   duration_ms=samples_to_ms(end - utt.start)))
        self._stream.end(end, self._turns.current)
