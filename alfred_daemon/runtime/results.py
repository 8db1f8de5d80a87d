"""The update step: what comes back from workers, applied to sessions.

A layer of :class:`~.supervisor.Supervisor` (under it sits :class:`~.sessions.SessionApi`),
kept apart so that everything a worker can tell the daemon reads in one place: a lane's
hello, a VAD result (probabilities and the session's new VAD state), a job reply, and a
worker lost with the requests it held (:class:`~.workers.InFlight`), which are re-run.
"""

from __future__ import annotations

import logging
import time

from ..engine.events import WorkerRecovered
from ..engine.jobs import JobResult
from ..engine.session import samples_to_ms
from .live_session import VAD_READER
from .load import LoadMeter
from .protocol import Hello, JobReply, VadResult, loads
from .sessions import SessionApi
from .stats import Figures
from .workers import InFlight, Lane, WorkerHandle

log = logging.getLogger(__name__)


class ResultsApplier(SessionApi):
    """Applies workers' messages; see the module docstring."""

    # Provided by the supervisor.
    figures: Figures
    meter: LoadMeter

    def _on_frame(self, identity: bytes, payload: bytes) -> None:
        """One message from a lane (the control plane's receive loop), then dispatch: the
        lane is idle again, and the result may have made work."""
        lane = self.pool.lanes.get(identity)
        if lane is None:
            return  # a lane of a worker already written off
        lane.last_seen = time.monotonic()
        try:
            msg = loads(payload)
            if isinstance(msg, Hello):
                if self.pool.on_hello(lane, msg):
                    self._publish_state()
            elif isinstance(msg, VadResult | JobReply):
                self._on_result(lane, msg)
            # A heartbeat only says the lane is alive: last_seen above.
        except Exception:
            log.exception("failed to apply a message from %s", identity.decode())
        self._dispatch()

    def _on_result(self, lane: Lane, msg: VadResult | JobReply) -> None:
        req = lane.request
        if req is None or req.request_id != msg.request_id:
            return  # not what this lane owes us (cannot happen with one request each)
        self.meter.lane_done(lane, time.monotonic())
        lane.clear()
        if isinstance(msg, VadResult):
            lane.worker.vad_batches += 1
            self._on_vad_result(msg, lane.worker.worker_id)
        else:
            lane.worker.jobs_done += 1
            self._on_job_reply(msg, lane.worker.worker_id)

    def _on_vad_result(self, msg: VadResult, worker_id: int) -> None:
        self.counters.vad_batches += 1
        fig = self.figures
        now = time.monotonic()
        per_window = msg.ms / max(1, sum(len(i.probs) for i in msg.items))
        for item in msg.items:
            s = self._by_key.get(item.session_key)
            if s is None:
                continue
            s.vad_in_flight = False
            s.progress.set()
            try:
                if item.error is not None:
                    # The worker could not read the windows. Rewind so the next request
                    # starts at the same place; if that keeps failing the session errors.
                    self.counters.vad_errors += 1
                    fig.outcomes.append((now, False))
                    s.errors += 1
                    s.ring.set_reader(VAD_READER, s.vad_next)
                    log.warning("session %s: VAD failed: %s", s.session_id, item.error)
                    if s.errors > 10:
                        self._close(s, "error")
                    continue
                fig.outcomes.append((now, True))
                s.vad_state = item.state
                s.last_worker = worker_id
                # The health figure leaves out the frames of a client ahead of real time:
                # it queues its own windows, which says nothing about the daemon's health.
                # The metric (observers) has every frame.
                timed = self._standing(s, now).counts_toward_load
                for p in item.probs:
                    mono, written = s.write_times.popleft()
                    self._observe("frame_ms", (now - mono) * 1000.0)
                    if timed:
                        fig.frame_times_ms.append((now - mono) * 1000.0)
                        fig.handoff_ms.append((msg.picked_up - written) * 1000.0)
                    s.core.on_vad(float(p), per_window)
                n = len(item.probs)
                s.vad_next += n
                s.windows_analysed += n
                self.counters.windows_analysed += n
                fig.analysed_at.append((now, n))
                self._pump(s)
            except Exception:
                log.exception("session %s: applying VAD results failed", s.session_id)
                self._close(s, "error")

    def _on_job_reply(self, msg: JobReply, worker_id: int) -> None:
        if len(msg.results) > 1:
            self.counters.decode_batches += 1
            self.counters.batched_partials += sum(r.batch > 1 for _, r in msg.results)
        for session_key, result in msg.results:
            self._on_job_result(session_key, result, worker_id)

    def _on_job_result(self, session_key: int, result: JobResult, worker_id: int) -> None:
        self.counters.jobs_done += 1
        ok = result.error is None
        if not ok:
            self.counters.job_errors += 1
        if result.fallback:
            self.counters.final_fallbacks += 1
        self.figures.outcomes.append((time.monotonic(), ok))
        s = self._by_key.get(session_key)
        if s is None:
            return
        s.last_worker = worker_id
        if not s.core.wants(result.job):
            self.counters.jobs_discarded += 1
        try:
            s.core.on_result(result)
            self._pump(s)
        except Exception:
            log.exception("session %s: applying a job result failed", s.session_id)
            self._close(s, "error")
        s.progress.set()

    def _on_worker_lost(self, w: WorkerHandle, reason: str, lost: InFlight) -> None:
        """Re-queue exactly what the dead worker held, tell its sessions, respawn it."""
        affected: dict[int, list[int]] = {}  # session key -> [jobs, windows]
        for req in lost.vad:
            for item in req.items:
                s = self._by_key.get(item.session_key)
                if s is None:
                    continue
                # The worker may or may not have advanced the shared read index before
                # dying; the supervisor's vad_next is the truth. The state it sent is
                # still s.vad_state (results replace it, requests only copy it).
                s.ring.set_reader(VAD_READER, s.vad_next)
                s.vad_in_flight = False
                # What piled up meanwhile is caught up on, not shed: a fault is not load.
                s.catch_up_to = max(s.catch_up_to, s.ring.write_seq)
                affected.setdefault(s.key, [0, 0])[1] += item.count
        for task in lost.tasks:
            if task.session_key in self._by_key:
                self.scheduler.requeue(task, time.monotonic())
                self.counters.jobs_rerun += 1
                affected.setdefault(task.session_key, [0, 0])[0] += 1
        for key, (jobs, frames) in affected.items():
            s = self._by_key[key]
            s.core.post(WorkerRecovered(audio_offset_ms=samples_to_ms(s.core.position),
                                        worker_id=w.worker_id, reason=reason,
                                        rerun_jobs=jobs, rerun_frames=frames))
            self._pump(s)
        self.pool.respawn(w)
        self._dispatch()
