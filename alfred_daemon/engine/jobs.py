"""Model jobs: the unit of work the session core asks for and any executor may run.

A job names a sample range of the session's audio, not the audio itself, so the runtime can
hand it to any worker that can read the session's shared-memory ring. Executing a job is a
pure function of (models, job, audio): :func:`run_job`.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .config import SttConfig
from .int8_check import Int8Kernels
from .models import ModelPaths
from .stt import DecodeRequest, WhisperTranscriber, WordTime
from .turn import SmartTurn
from .vad import SileroVad

log = logging.getLogger(__name__)


class JobKind(enum.IntEnum):
    """Also the scheduling priority: lower runs first (finals and turn decisions before
    partials, because a late partial is merely stale while a late final delays the agent)."""

    FINAL = 0
    TURN = 1
    PARTIAL = 2


@dataclass(frozen=True, slots=True)
class Job:
    kind: JobKind
    job_id: int
    """Unique within the session, increasing."""
    ref_id: int
    """Utterance id (PARTIAL, FINAL) or turn id (TURN)."""
    start: int
    end: int
    """Sample range [start, end) at 16 kHz, in session audio coordinates."""
    beam_size: int = 1
    prefix: str = ""
    """Committed words inside the range, forced as the start of the decode."""
    generation: int = 0
    """TURN only: the pause this evaluation belongs to; stale once speech resumed."""
    prompt: str = ""
    """Committed text before the range (Whisper's previous-text prompt)."""
    align: bool = False
    """PARTIAL only: return word times, so the caller can move its window past them."""

    @property
    def samples(self) -> int:
        return self.end - self.start


class JobBook:
    """The jobs one session core has issued: new ones not yet handed to an executor, and
    every one whose result is still awaited.

    A result counts only while its job is in flight: dropping a job from
    :attr:`in_flight` (an abandoned speculation) makes a late result of it stale.
    """

    def __init__(self) -> None:
        self._next_id = 0
        self._new: list[Job] = []
        self.in_flight: dict[int, Job] = {}
        """Job id -> the job as it should run (an executor may extend a queued partial)."""

    def issue(self, kind: JobKind, ref_id: int, start: int, end: int, *, beam_size: int = 1,
              prefix: str = "", generation: int = 0, prompt: str = "",
              align: bool = False) -> Job:
        """A new job, with the next id, queued for :meth:`take` and awaited from now on."""
        job = Job(kind, self._next_id, ref_id, start, end, beam_size, prefix, generation,
                  prompt, align)
        self._next_id += 1
        self._new.append(job)
        self.in_flight[job.job_id] = job
        return job

    def take(self) -> list[Job]:
        """Jobs issued since the last call, highest priority first."""
        jobs, self._new = self._new, []
        jobs.sort(key=lambda j: (j.kind, j.job_id))
        return jobs


@dataclass(frozen=True, slots=True)
class JobResult:
    job: Job
    text: str = ""
    probability: float = 0.0
    ms: float = 0.0
    error: str | None = None
    skipped: bool = False
    """Not run on purpose (load shedding drops queued partials); not an error."""
    degenerate: bool = False
    """The decode looked like a loop even after the fallback (finals) or without one
    (partials, which are then not shown)."""
    fallback: bool = False
    """A final's first decode was degenerate and the 30 s window was decoded too."""
    words: tuple[WordTime, ...] = ()
    """``text``'s words with times relative to ``job.start`` (partials with ``align``)."""
    batch: int = 1
    """Whisper jobs decoded in the same model call as this one (itself included)."""

    @classmethod
    def skip(cls, job: Job, reason: str) -> JobResult:
        return cls(job, error=reason, skipped=True)


@dataclass(slots=True)
class Models:
    """The three loaded models of one process."""

    vad: SileroVad
    stt: WhisperTranscriber
    turn: SmartTurn | None

    @classmethod
    def load(cls, paths: ModelPaths, *, threads: int = 1) -> Models:
        return cls(
            vad=SileroVad(paths.vad, threads=threads),
            stt=WhisperTranscriber(paths.stt, threads=threads),
            turn=(SmartTurn(paths.turn, threads=threads,
                            kernels=Int8Kernels.parse(paths.turn_int8))
                  if paths.turn is not None else None),
        )


def run_job(
    models: Models, job: Job, audio: npt.NDArray[np.float32], stt_cfg: SttConfig
) -> JobResult:
    """Execute one job. Never raises: a failure becomes ``JobResult.error``, so one bad job
    cannot take a worker (or another session) down."""
    (result,) = run_jobs(models, [(job, audio, stt_cfg)])
    return result


def run_jobs(
    models: Models, items: list[tuple[Job, npt.NDArray[np.float32], SttConfig]]
) -> list[JobResult]:
    """Execute several jobs (of several sessions): the Whisper ones in shared batches
    where their shapes allow (:meth:`WhisperTranscriber.transcribe_many`, same results as
    one by one), Smart Turn ones one by one. Never raises, like :func:`run_job`."""
    results: dict[int, JobResult] = {}
    stt_items: list[tuple[int, Job, DecodeRequest]] = []
    for i, (job, audio, cfg) in enumerate(items):
        if job.kind is JobKind.TURN:
            results[i] = _run_turn(models, job, audio)
        else:
            stt_items.append((i, job, DecodeRequest(
                audio, cfg, beam_size=job.beam_size, prefix=job.prefix, prompt=job.prompt,
                align=job.align, fallback=job.kind is JobKind.FINAL)))
    if stt_items:
        try:
            decoded = models.stt.transcribe_many([req for _, _, req in stt_items])
        except Exception as exc:
            log.exception("decoding %d jobs failed", len(stt_items))
            for i, job, _ in stt_items:
                results[i] = JobResult(job, error=f"{type(exc).__name__}: {exc}")
        else:
            for (i, job, _), res in zip(stt_items, decoded, strict=True):
                results[i] = JobResult(job, text=res.text, ms=res.ms,
                                       degenerate=res.degenerate, fallback=res.fallback,
                                       words=res.words, batch=res.batch)
    return [results[i] for i in range(len(items))]


def _run_turn(models: Models, job: Job, audio: npt.NDArray[np.float32]) -> JobResult:
    try:
        if models.turn is None:
            return JobResult(job, error="smart turn model not loaded")
        prob, ms = models.turn.predict(audio)
        return JobResult(job, probability=prob, ms=ms)
    except Exception as exc:
        log.exception("job %s failed", job)
        return JobResult(job, error=f"{type(exc).__name__}: {exc}")
