"""Fairness: whose backlog moves the shared ladder, and whose work waits for spare capacity.

The backpressure ladder degrades every session at once, so it may only move for load the
daemon owes clients that send at real time. Two kinds of backlog are not that:

* A session **ahead of real time** -- its client has sent more audio than the wall clock has
  seen pass since its first frame (a file pushed at full speed, a flood) -- made its backlog
  itself. Its work is served from spare capacity only: ranked after every other session's,
  started only while no real-time session speaks or waits for a job, never on the last
  lane, left out of the load and health figures. Its intake is flow-controlled
  (``Supervisor.feed``): paced to real time while other sessions stream at it (each of its
  messages costs the event loop they share), and cut with a sentence if its ring stays
  full.
* A session **stalled by a fault** -- its VAD request sits on a worker that stopped
  answering, or it is catching up on the windows that piled up meanwhile -- is behind
  because of a worker, not load. Degrading everyone for it would change their words, and
  shedding its backlog would throw away the audio the recovery exists to save.

Pure functions of figures the supervisor passes in, so the policy is tested without
processes (tests/integration/test_fairness.py).
"""

from __future__ import annotations

from dataclasses import dataclass

AHEAD_RANK = 10
"""Added to an ahead session's task rank: after every kind of work of other sessions."""


@dataclass(frozen=True, slots=True)
class Standing:
    """What the scheduler and the load figure need to know about one session now."""

    ahead: bool
    stalled: bool
    """Its VAD request is on a worker that looks hung (``worker_suspect``)."""
    catching_up: bool
    """It is analysing the windows that piled up while a worker it used was dead or hung."""

    @classmethod
    def of(cls, *, ahead_s: float, tolerance_s: float, vad_on_suspect: bool,
           catching_up: bool) -> Standing:
        """``ahead_s``: audio sent beyond real time since the first frame (a client that
        reconnects and resends what it captured meanwhile is not ahead: the disconnection
        counted as time); ``vad_on_suspect``: its VAD request in flight is on a worker
        that looks hung."""
        return cls(ahead=ahead_s > tolerance_s, stalled=vad_on_suspect,
                   catching_up=catching_up)

    @property
    def counts_toward_load(self) -> bool:
        return not (self.ahead or self.stalled or self.catching_up)

    @property
    def may_shed(self) -> bool:
        """Only backlog that moves the ladder is shed by it."""
        return self.counts_toward_load


AHEAD_BUSY_MAX = 0.4
"""Busy fraction of the job lanes (real-time work only, smoothed) above which no work of a
session ahead of real time is started. A decode cannot be preempted: one started when the
real-time sessions need the lanes holds a lane from them for its whole length (seconds, for
a long utterance), so ahead work runs only while they leave most of the machine idle."""


def lanes_for_ahead_work(job_lanes: int, busy: float, *, real_time_work: bool) -> int:
    """Job lanes that may run ahead-of-real-time work at once. A decode cannot be
    preempted: one started when a real-time session needs the lanes holds one from it for
    its whole length (seconds, for a long utterance). So none while a real-time session is
    speaking or has a job issued or due (``real_time_work``), or the lanes are more than
    ``AHEAD_BUSY_MAX`` busy with real-time work; otherwise all but one, so a session that
    starts to speak finds a lane no such work holds (one lane is all there is on a
    single-lane daemon)."""
    if busy > AHEAD_BUSY_MAX or real_time_work:
        return 0
    return max(1, job_lanes - 1)


def worker_suspect(vad_silent_s: float, heartbeat_interval: float) -> bool:
    """Whether a worker looks hung from its VAD lane, long before the heartbeat timeout
    kills it. The lane reports every ``heartbeat_interval``, idle or busy (a batch reports
    between its steps, each milliseconds), so silence means stuck, never merely loaded: a
    big batch on a starved CPU is load and must count as load. A suspect worker's lanes
    are neither capacity nor load."""
    return vad_silent_s > 3 * heartbeat_interval
