"""Once-a-second upkeep: control state, memory, health and alerts, idle-session cleanup,
garbage collection and heap trimming (here and, through the control state, in workers).

It acts on sessions the way the supervisor does (closing, finishing them), so it holds the
supervisor and uses its session helpers; nothing here schedules work or talks to a worker.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import time
from typing import TYPE_CHECKING, Any

from ..engine.config import SAMPLE_RATE
from ..engine.vad import WINDOW
from .health import HealthInputs
from .memory import malloc_trim, total_pss_mb
from .stats import DaemonState

if TYPE_CHECKING:
    from .supervisor import Supervisor

log = logging.getLogger(__name__)


class Housekeeping:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.trim_generation = 0
        """Bumped by :meth:`release_memory`; lanes trim their heap when it changes."""
        self._background: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Once a second: control state, memory, health, alerts; cleanup on its interval."""
        sup = self.sup
        last_cleanup = time.monotonic()
        while True:
            await asyncio.sleep(1.0)
            try:
                sup._publish_state()
                await self.measure_memory()
                self.evaluate_health(time.monotonic())
                now = time.monotonic()
                sup.counters.sessions_cleaned_up += self.close_unfed(now)
                if now - last_cleanup >= sup.config.limits.cleanupInterval:
                    last_cleanup = now
                    self.cleanup_sessions(now)
                    limits = sup.config.limits
                    if (sup.config.processor.memory_optimization and sup.memory_mb
                            > limits.gcTriggerThreshold * limits.maxMemoryUsageMB):
                        sup.counters.gc_triggered += 1
                        self.release_memory()
            except Exception:
                log.exception("housekeeping failed")

    async def measure_memory(self) -> None:
        pids = [os.getpid(), *self.sup.pool.pids()]
        by_pid = await asyncio.to_thread(total_pss_mb, pids)
        self.sup.memory_by_pid = by_pid
        self.sup.memory_mb = sum(by_pid.values())

    def evaluate_health(self, now: float) -> None:
        sup = self.sup
        if sup.state is not DaemonState.RUNNING:
            # Starting or draining on purpose: workers missing then are not a fault, and an
            # operator's alerting must not page on every deploy.
            return
        workers = sup.pool.workers
        # alerts.memory_mb is the spec's per-daemon figure from its single-process days; the
        # comparable figure now is the largest process (one worker carries the models).
        # The whole tree is held to limits.maxMemoryUsageMB (admission, GC trigger).
        largest = max(sup.memory_by_pid.values(), default=0.0)
        inputs = HealthInputs(
            frame_time_ms=sup.average_frame_time(), memory_mb=largest, load=sup.load,
            error_rate=sup.error_rate(now), queue_frames=sum(
                s.queued_windows for s in sup._sessions.values()
                if sup._standing(s, now).counts_toward_load),
            workers_alive=sum(1 for w in workers.values() if w.ready),
            workers_expected=max(len(workers), sup.config.workers.resolved_count()),
            level=sup.ladder.level)
        before = sup.monitor.health
        for alert in sup.monitor.evaluate(inputs, now):
            if alert.active:
                sup.counters.alerts_raised += 1
        if sup.monitor.health != before:
            log.warning("health %s -> %s", before.value, sup.monitor.health.value)
            sup._health_changed(sup.monitor.health)

    def close_unfed(self, now: float) -> int:
        """Close sessions that have not had a second of audio ``limits.firstAudioTimeout``
        after they opened: each holds a slot of ``max_concurrent_sessions``, and a client
        that opens sessions with one frame each could otherwise fill every slot for the
        whole ``idleSessionTimeout``."""
        closed = 0
        for s in list(self.sup._sessions.values()):
            if (not s.closing and now - s.created > self.sup.config.limits.firstAudioTimeout
                    and s.ring.write_seq * WINDOW < SAMPLE_RATE):
                self.sup._close(s, "idle")
                closed += 1
        return closed

    def cleanup_sessions(self, now: float) -> int:
        """Close idle and unfed sessions; finish those past ``limits.maxSessionDuration``."""
        sup = self.sup
        limits = sup.config.limits
        cleaned = self.close_unfed(now)
        for s in list(sup._sessions.values()):
            if s.closing:
                continue
            if now - s.created > limits.maxSessionDuration:
                task = asyncio.create_task(
                    sup._finish(s, "max_duration", sup.config.drain_grace))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
                cleaned += 1
            elif now - s.last_activity > limits.idleSessionTimeout:
                sup._close(s, "idle")
                cleaned += 1
        sup.counters.sessions_cleaned_up += cleaned
        return cleaned

    def release_memory(self) -> int:
        """Collect garbage, compact sessions' buffers, return freed heap to the OS here and
        (the next control state asks them) in every worker lane."""
        collected = gc.collect()
        for s in self.sup._sessions.values():
            s.pending = s.pending.copy()
        malloc_trim()
        self.trim_generation += 1
        self.sup.counters.memory_optimizations += 1
        self.sup._publish_state()
        return collected

    async def optimize(self, *, trigger_gc: bool, cleanup_sessions: bool,
                       optimize_buffers: bool) -> dict[str, Any]:
        """See :meth:`Supervisor.optimize`."""
        sup = self.sup
        await self.measure_memory()
        before = sup.memory_mb
        done: dict[str, Any] = {"triggerGC": trigger_gc, "cleanupSessions": cleanup_sessions,
                                "optimizeBuffers": optimize_buffers}
        if trigger_gc:
            sup.counters.gc_triggered += 1
            done["gcCollectedObjects"] = gc.collect()
        if cleanup_sessions:
            done["sessionsCleanedUp"] = self.cleanup_sessions(time.monotonic())
        if optimize_buffers:
            self.release_memory()
            await asyncio.sleep(max(0.3, 2 * sup.config.workers.heartbeat_interval))
        await self.measure_memory()
        done["memoryBeforeMB"] = round(before, 1)
        done["memoryAfterMB"] = round(sup.memory_mb, 1)
        done["freedMB"] = round(max(0.0, before - sup.memory_mb), 1)
        return done
