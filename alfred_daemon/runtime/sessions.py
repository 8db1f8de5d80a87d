"""The session API the transports call: admit, feed audio, control, finish, close.

A mixin of :class:`~.supervisor.Supervisor` (its public methods are the supervisor's), kept
apart so that what a client can do to a session reads in one place. Audio intake is
synchronous and per session (:class:`~.live_session.LiveSession` cuts frames into ring
windows); flow control (:meth:`SessionApi.feed`) throttles a client through its own
connection instead of shedding its audio. ``_pump`` moves a session's new jobs to the
scheduler and its ready events to its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from ..engine.audio import StreamResampler
from ..engine.config import SAMPLE_RATE, EngineConfig
from ..engine.errors import InvalidAudioError
from ..engine.events import (
    Event,
    FinalTranscription,
    FramesDropped,
    PartialTranscription,
    TurnEnded,
)
from ..engine.jobs import JobKind, JobResult
from ..engine.models import ModelPaths
from ..engine.session import SessionCore, samples_to_ms
from ..engine.vad import WINDOW
from .backpressure import Ladder, Level, degrade
from .config import RuntimeConfig
from .errors import (
    AdmissionError,
    DaemonUnavailableError,
    SessionBackloggedError,
    SessionNotFoundError,
    SharedMemoryFullError,
)
from .fairness import Standing
from .live_session import RETAIN_READER, VAD_READER, LiveSession
from .load import session_lag_ms, tell_backpressure
from .ring import RingWriter, segment_name
from .scheduler import Scheduler
from .stats import Counters, DaemonState, session_status
from .workers import WorkerPool

log = logging.getLogger(__name__)

SUPPORTED_RATES = (8_000, 16_000, 24_000, 44_100, 48_000)
PACE_MARGIN_S = 0.5
"""How far beyond ``limits.realtimeTolerance`` a paced session is held (``feed``)."""


class SessionApi:
    """The per-session half of the supervisor; see the module docstring."""

    # Provided by the supervisor.
    config: RuntimeConfig
    state: DaemonState
    instance: str
    ladder: Ladder
    counters: Counters
    model_paths: ModelPaths | None
    load: float
    memory_mb: float
    pool: WorkerPool
    scheduler: Scheduler[LiveSession]
    _sessions: dict[str, LiveSession]
    _by_key: dict[int, LiveSession]
    _keys: itertools.count[int]

    def _dispatch(self) -> None:
        raise NotImplementedError

    def _dispatch_soon(self) -> None:
        raise NotImplementedError

    def _publish_state(self) -> None:
        raise NotImplementedError

    def _observe(self, name: str, value: float) -> None:
        raise NotImplementedError

    def open_session(self, config: EngineConfig | None = None, *,
                     sample_rate: int = SAMPLE_RATE, session_id: str | None = None,
                     owner: str = "", transport: str = "") -> str:
        """Admit a session; returns its id. Raises AdmissionError with the reason, or
        DaemonUnavailableError while starting/draining. ``owner``: the name of the token
        it was opened with (counted by :meth:`sessions_of`, shown in its status);
        ``transport``: how its audio arrives (``grpc``, ``websocket``, ``http``,
        ``webrtc``), shown in its status and the monitor's session table."""
        cfg = self.config
        if self.state != DaemonState.RUNNING:
            raise DaemonUnavailableError(f"daemon is {self.state}; not accepting sessions")
        if sample_rate not in SUPPORTED_RATES:
            raise InvalidAudioError(
                f"sample rate {sample_rate} Hz is not supported; use one of "
                + ", ".join(str(r) for r in SUPPORTED_RATES))
        refusal = self._admission_refusal()
        if refusal is not None:
            self.counters.sessions_refused += 1
            raise AdmissionError(*refusal)
        sid = session_id or uuid.uuid4().hex
        if sid in self._sessions:
            raise ValueError(f"session {sid} already exists")
        key = next(self._keys)
        n_slots = int(cfg.ring_seconds * SAMPLE_RATE / WINDOW)
        try:
            ring = RingWriter.create(segment_name(cfg.shm_prefix, f"{self.instance}-{key}"),
                                     n_slots)
        except SharedMemoryFullError as exc:
            # Already an admission refusal (RESOURCE_EXHAUSTED / 503 with its sentence);
            # counted and logged like the others, so that operators see why.
            self.counters.sessions_refused += 1
            log.warning("session refused: %s", exc)
            raise
        ring.register_reader(VAD_READER)
        ring.register_reader(RETAIN_READER)
        base = config or cfg.engine
        assert self.model_paths is not None
        core = SessionCore(degrade(base, self.ladder.level),
                           turn_model=self.model_paths.turn is not None)
        s = LiveSession(
            key=key, session_id=sid, core=core, base_config=base, ring=ring,
            sample_rate=sample_rate,
            resampler=StreamResampler(sample_rate) if sample_rate != SAMPLE_RATE else None,
            events=asyncio.Queue(), owner=owner, transport=transport,
        )
        self._sessions[sid] = s
        self._by_key[key] = s
        self.counters.sessions_opened += 1
        self._publish_state()
        log.info("session %s opened (%d Hz%s, %d active%s)", sid, sample_rate,
                 f", {transport}" if transport else "", len(self._sessions),
                 f", token {owner}" if owner else "")
        return sid

    def sessions_of(self, owner: str) -> int:
        """Open sessions (not closing) opened with the token named ``owner``."""
        return sum(1 for s in self._sessions.values() if s.owner == owner and not s.closing)

    def _admission_refusal(self) -> tuple[str, str] | None:
        cfg = self.config
        if len(self._sessions) >= cfg.processor.max_concurrent_sessions:
            return ("session_limit", f"session limit reached ({len(self._sessions)} of "
                    f"processor.max_concurrent_sessions = "
                    f"{cfg.processor.max_concurrent_sessions})")
        if self.ladder.level >= Level.PAUSE_PROCESSING:
            return ("overloaded", f"daemon is overloaded (load {self.load:.2f}, backpressure "
                    f"at {self.ladder.level.action}); retry later")
        if not self.pool.any_ready():
            return ("no_workers", "no worker is running")
        if self.memory_mb > cfg.limits.maxMemoryUsageMB:
            return ("memory", f"memory {self.memory_mb:.0f} MB is above "
                    f"limits.maxMemoryUsageMB = {cfg.limits.maxMemoryUsageMB}")
        return None

    def push(self, session_id: str, frame: bytes | npt.NDArray[np.generic], *,
             sample_rate: int | None = None) -> int:
        """Accept one frame of audio (any length). Returns the windows it completed.

        Raises InvalidAudioError (bad frame; the session is unaffected),
        SessionNotFoundError, or SessionBackloggedError (the frame was not accepted).
        """
        s = self._get(session_id)
        if s.input_closed(time.monotonic()):
            raise SessionNotFoundError(f"session {session_id} is closing")
        try:
            windows = s.windows_from(frame, sample_rate)
        except InvalidAudioError:
            s.rejected_frames += 1
            raise
        s.frames_received += 1
        s.last_activity = time.monotonic()
        if s.first_audio_at is None:
            s.first_audio_at = s.last_activity
        self._write(s, windows)
        self._dispatch_soon()
        return len(windows)

    async def feed(self, session_id: str, frame: bytes | npt.NDArray[np.generic], *,
                   sample_rate: int | None = None) -> int:
        """:meth:`push` with flow control, for transports; the transport does not read while
        this waits, so the client is throttled by its own connection. Two waits:

        * a session more than ``limits.realtimeTolerance`` ahead of real time is paced to
          real time while another session streams at it (alone, it may go as fast as the
          daemon takes it: it delays nobody);
        * a frame that finds the session's ring full of audio its finals still need waits
          for room for up to ``limits.backlogTimeout``; then SessionBackloggedError with a
          sentence.

        Waiting, not shedding: the audio of a client that is ahead is not lost, only slowed
        down. Its client is told when either wait begins (``backpressure_triggered`` with
        action ``pace_to_real_time`` or ``wait_for_room``, to this session only), and when
        a frame finds room at once again (``backpressure_recovered``, ``wait_for_room``),
        so that a refusal never comes out of the blue."""
        timeout = self.config.limits.backlogTimeout
        deadline = time.monotonic() + timeout
        waited = False
        while True:
            s = self._get(session_id)
            if s.input_closed(time.monotonic()):
                raise SessionNotFoundError(f"session {session_id} is closing")
            now = time.monotonic()
            early = s.ahead_s(now) - self.config.limits.realtimeTolerance - PACE_MARGIN_S
            if early > 0 and self._real_time_peers(s, now):
                # Paced to real time while others stream at it: every message costs the
                # event loop all sessions share, whatever its work's rank. Held a margin
                # above the tolerance, so that it stays ahead (its work spare) while paced.
                # Pacing is not a wait for room: it does not count towards the timeout.
                if not s.paced:
                    self._tell_throttled(s, "pace_to_real_time", triggered=True)
                s.paced = True
                await asyncio.sleep(early)
                deadline = time.monotonic() + timeout
                continue
            need = s.max_windows(frame, sample_rate)
            if s.ring.free_slots() >= need or need > s.ring.n_slots:
                if s.waiting_for_room and not waited:
                    s.waiting_for_room = False
                    self._tell_throttled(s, "wait_for_room", triggered=False)
                return self.push(session_id, frame, sample_rate=sample_rate)
            waited = True
            if not s.waiting_for_room:
                s.waiting_for_room = True
                self._tell_throttled(s, "wait_for_room", triggered=True)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                s.rejected_frames += 1
                why = ("the client sends audio faster than real time and the daemon has no "
                       "spare capacity for it; send it at real time"
                       if self._standing(s, time.monotonic()).ahead else
                       "the daemon cannot keep up with this session")
                raise SessionBackloggedError(
                    f"session {s.session_id} had no room for audio for {timeout:g} s "
                    f"(its ring holds {self.config.ring_seconds:g} s its finals still "
                    f"need): {why}")
            s.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.progress.wait(), min(remaining, 0.2))

    def _tell_throttled(self, s: LiveSession, action: str, *, triggered: bool) -> None:
        """A flow-control wait of this session's own, told to its client only; ``level``
        and ``load`` are the daemon's, which such a wait does not move."""
        tell_backpressure(s, triggered=triggered, level=self.ladder.level, action=action,
                          load=self.load)
        self._pump(s)

    def _real_time_peers(self, s: LiveSession, now: float) -> bool:
        """Whether another session streams at real time (has sent audio within the last
        second and is not ahead itself): then a session ahead of real time is paced."""
        return any(t is not s and not t.closing and now - t.last_activity < 1.0
                   and not self._standing(t, now).ahead for t in self._sessions.values())

    def _write(self, s: LiveSession, windows: npt.NDArray[np.int16]) -> None:
        n = len(windows)
        if n == 0:
            return
        if s.ring.free_slots() < n:
            self._shed(s, n - s.ring.free_slots(), "ring_full")
        if s.ring.free_slots() < n:
            s.rejected_frames += 1
            raise SessionBackloggedError(
                f"session {s.session_id} has {s.queued_windows} windows waiting and "
                f"{s.ring.n_slots} slots of audio still needed; frame not accepted")
        mono, wall = time.monotonic(), time.time()
        if s.arrival.size != s.ring.n_slots:
            s.arrival = np.zeros(s.ring.n_slots, np.float64)
        for w in windows:
            k = s.ring.write(w)
            s.write_times.append((mono, wall))
            s.arrival[k % s.ring.n_slots] = mono
        s.windows_written += n

    def touch(self, session_id: str) -> None:
        """A keepalive: the session is not idle."""
        self._get(session_id).last_activity = time.monotonic()

    def set_playback(self, session_id: str, active: bool) -> None:
        s = self._get(session_id)
        s.core.set_playback(active)
        s.last_activity = time.monotonic()

    def force_end_of_turn(self, session_id: str) -> None:
        s = self._get(session_id)
        s.core.force_end_of_turn()
        s.last_activity = time.monotonic()
        self._pump(s)

    def flush(self, session_id: str) -> None:
        s = self._get(session_id)
        s.core.flush()
        s.last_activity = time.monotonic()
        self._pump(s)

    def reconfigure(self, session_id: str, config: EngineConfig) -> None:
        s = self._get(session_id)
        s.base_config = config
        s.core.reconfigure(degrade(config, self.ladder.level))

    async def finish_session(self, session_id: str, timeout: float | None = None) -> None:
        """End of input: analyse what is queued, finalise, end the open turn, deliver every
        event, then close (last event ``session_closed`` with reason ``finished``)."""
        s = self._get(session_id)
        await self._finish(s, "finished", self.config.drain_grace if timeout is None
                           else timeout)

    def close_session(self, session_id: str, reason: str = "client") -> None:
        """Drop a session now (client went away): no further events except session_closed."""
        self._close(self._get(session_id), reason)

    async def events(self, session_id: str) -> AsyncIterator[Event]:
        """The session's events in order, ending after ``session_closed``."""
        s = self._get(session_id)
        while True:
            ev = await s.events.get()
            if ev is None:
                return
            yield ev

    def session_ids(self) -> list[str]:
        return list(self._sessions)

    def _get(self, session_id: str) -> LiveSession:
        s = self._sessions.get(session_id)
        if s is None:
            # The id is the caller's: quoted, and cut short (it may be a megabyte long).
            shown = session_id if len(session_id) <= 64 else session_id[:64] + "..."
            raise SessionNotFoundError(f"no open session {shown!r}")
        return s

    async def _drain(self, s: LiveSession, grace: float) -> None:
        """Take the session's audio until an utterance boundary (or until its audio stops),
        for half of ``grace`` at most, then finish it as at end of input. At a boundary its
        last final comes back first (a turn decision already asked for may come with it; if
        not, the turn ends forced, as at end of input). The frames it did not take are its
        client's to send to another daemon: a rolling restart neither cuts an utterance in
        two nor loses its final."""
        deadline = time.monotonic() + grace
        s.draining = True
        try:
            await self._wait(s, lambda: s.input_closed(time.monotonic()),
                             deadline - grace / 2)
            await self._wait(s, lambda: s.closing or not any(
                j.kind is JobKind.FINAL for j in s.core.in_flight), deadline)
        except TimeoutError:
            log.info("session %s: no utterance boundary in time (%d decodes out: %s)",
                     s.session_id, len(s.core.in_flight),
                     ", ".join(sorted({j.kind.name for j in s.core.in_flight})))
        s.input_cut = True
        await self._finish(s, "shutdown", max(0.0, deadline - time.monotonic()))

    async def _finish(self, s: LiveSession, reason: str, timeout: float) -> None:
        if s.closing:
            return
        s.closing = True
        deadline = time.monotonic() + timeout
        try:
            with contextlib.suppress(SessionBackloggedError):
                self._write(s, s.tail_windows())
            self._dispatch()
            await self._wait(s, lambda: s.queued_windows == 0 and not s.vad_in_flight,
                             deadline)
            s.core.flush()
            s.core.force_end_of_turn()
            self._pump(s)
            await self._wait(s, lambda: not s.core.in_flight, deadline)
            self._pump(s)
        except TimeoutError:
            log.warning("session %s: %s did not complete within %.1f s; closing anyway",
                        s.session_id, reason, timeout)
        finally:
            self._close(s, reason)

    async def _wait(self, s: LiveSession, done: Callable[[], bool], deadline: float) -> None:
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError
            s.progress.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(s.progress.wait(), min(remaining, 0.2))

    def _close(self, s: LiveSession, reason: str) -> None:
        if s.closed_reason is not None:
            return
        s.closed_reason = reason
        s.closing = True
        self._sessions.pop(s.session_id, None)
        self._by_key.pop(s.key, None)
        closed = s.core.close(reason)
        for ev in s.core.drain_events():
            self._deliver(s, ev)
        if s.last_event != closed.TYPE:
            # Held behind a final still being decoded (a finish that ran out of time): that
            # final and what follows it will not come, but the client still learns the
            # session is over, last, as always -- not from a stream that merely stops.
            log.warning("session %s closed with %d decodes still out; their events are lost",
                        s.session_id, len(s.core.in_flight))
            self._deliver(s, closed)
        s.events.put_nowait(None)
        # Workers may still hold a mapping (it stays valid after unlink); they drop it when
        # the next control state no longer lists the ring.
        s.ring.close()
        with contextlib.suppress(FileNotFoundError):
            s.ring.unlink()
        self._publish_state()
        log.info("session %s closed (%s)", s.session_id, reason)

    # ------------------------------------------------------------------ figures

    def frames_in_queue(self) -> int:
        return sum(s.queued_windows for s in self._sessions.values())

    def session_status(self, session_id: str) -> dict[str, Any]:
        """One session's status (the per-session part of ``status()``)."""
        now = time.monotonic()
        s = self._get(session_id)
        return session_status(s, now, self._session_lag_ms(s, now))

    def _session_lag_ms(self, s: LiveSession, now: float) -> float:
        return session_lag_ms(s, self.scheduler.owed_since(s.key), now)

    def _standing(self, s: LiveSession, now: float) -> Standing:
        holder = self.pool.workers.get(s.vad_worker) if s.vad_in_flight else None
        return Standing.of(
            ahead_s=math.inf if s.paced else s.ahead_s(now),
            tolerance_s=self.config.limits.realtimeTolerance,
            vad_on_suspect=holder is not None and self.pool.suspect(holder, now),
            catching_up=s.vad_next < s.catch_up_to)

    # ------------------------------------------------------------------ moving on

    def _pump(self, s: LiveSession) -> None:
        """Move a session's new jobs to the queue and its ready events to its client."""
        if s.closed_reason is not None:
            return
        for task in self.scheduler.take_superseded(s):
            s.core.on_result(JobResult.skip(task.job, "superseded by the final"))
        self.scheduler.enqueue(s, s.core.take_jobs(), time.monotonic())
        for ev in s.core.drain_events():
            self._deliver(s, ev)
        s.ring.set_reader(RETAIN_READER, min(s.core.retain_from() // WINDOW, s.ring.write_seq))

    def _deliver(self, s: LiveSession, ev: Event) -> None:
        if isinstance(ev, PartialTranscription | FinalTranscription | TurnEnded):
            # Latency as a voice agent feels it: from the arrival of the audio the event
            # refers to (its offset) to the event being handed to the client.
            arrived = s.arrival_of(ev.audio_offset_ms)
            if arrived is not None:
                self._observe(f"{ev.TYPE}_latency_ms", (time.monotonic() - arrived) * 1000)
        s.events.put_nowait(ev)
        s.events_sent += 1
        s.last_event = ev.TYPE
        s.last_event_at = time.monotonic()

    def _shed(self, s: LiveSession, n: int, reason: str) -> None:
        """Skip VAD of the oldest ``n`` queued windows: counted, reported, never silent."""
        n = min(n, s.queued_windows)
        if n <= 0 or s.vad_in_flight:
            return
        first = s.vad_next
        s.vad_next += n
        s.ring.set_reader(VAD_READER, s.vad_next)
        for _ in range(n):
            s.write_times.popleft()
        s.core.on_skipped(n)
        s.windows_dropped += n
        self.counters.frames_dropped += n
        end_ms = samples_to_ms(s.vad_next * WINDOW)
        s.core.post(FramesDropped(audio_offset_ms=end_ms, start_ms=samples_to_ms(first * WINDOW),
                                  end_ms=end_ms, frames=n, reason=reason))
        self._pump(s)
