"""The fairness policy (runtime/fairness.py): whose backlog moves the shared ladder and
whose work waits for spare capacity. Pure functions; the multi-process behaviour (a flood
next to real-time sessions) is benchmarks/flood_bench.py's and test_faults.py's."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from alfred_daemon.engine.events import (
    BackpressureRecovered,
    BackpressureTriggered,
    Event,
    FramesDropped,
)
from alfred_daemon.engine.jobs import Models
from alfred_daemon.runtime.config import LimitsConfig, WorkersConfig
from alfred_daemon.runtime.errors import SessionBackloggedError
from alfred_daemon.runtime.fairness import (
    AHEAD_BUSY_MAX,
    Standing,
    lanes_for_ahead_work,
    worker_suspect,
)
from alfred_daemon.runtime.supervisor import Supervisor

from ..conftest import REPO
from ..runtime_helpers import (
    FINALS_ONLY,
    Stream,
    collect,
    final_texts,
    pcm_of,
    push_realtime,
    reference_events,
    run_async,
    runtime_config,
    wav_speech,
)

JFK = REPO / "tests" / "data" / "jfk.wav"


def standing(ahead_s: float = 0.0, vad_on_suspect: bool = False,
             catching_up: bool = False) -> Standing:
    return Standing.of(ahead_s=ahead_s, tolerance_s=2.0, vad_on_suspect=vad_on_suspect,
                       catching_up=catching_up)


def test_a_real_time_session_counts_and_may_be_shed() -> None:
    s = standing(ahead_s=0.5)
    assert not s.ahead and not s.stalled and not s.catching_up
    assert s.counts_toward_load and s.may_shed


@pytest.mark.parametrize("ahead_s, expected", [(2.0, False), (2.01, True), (-30.0, False)])
def test_ahead_only_beyond_the_tolerance(ahead_s: float, expected: bool) -> None:
    """A reconnecting client is behind (negative), not ahead, while it resends."""
    assert standing(ahead_s=ahead_s).ahead is expected


def test_an_ahead_session_neither_counts_nor_is_shed() -> None:
    s = standing(ahead_s=30.0)
    assert not s.counts_toward_load and not s.may_shed


@pytest.mark.parametrize("on_suspect", [False, True])
def test_a_vad_request_on_a_suspect_worker_is_a_stall(on_suspect: bool) -> None:
    s = standing(vad_on_suspect=on_suspect)
    assert s.stalled is on_suspect
    assert s.counts_toward_load is not on_suspect


def test_catching_up_after_a_fault_is_not_load_and_not_shed() -> None:
    s = standing(catching_up=True)
    assert not s.counts_toward_load and not s.may_shed


@pytest.mark.parametrize("lanes, allowed", [(1, 1), (2, 1), (3, 2), (8, 7)])
def test_ahead_work_leaves_one_lane(lanes: int, allowed: int) -> None:
    assert lanes_for_ahead_work(lanes, busy=0.0, real_time_work=False) == allowed


@pytest.mark.parametrize("busy, allowed", [(0.0, 1), (AHEAD_BUSY_MAX, 1),
                                           (AHEAD_BUSY_MAX + 0.01, 0), (1.0, 0)])
def test_no_ahead_work_while_real_time_sessions_keep_the_lanes_busy(
    busy: float, allowed: int
) -> None:
    """A decode cannot be preempted: started while the lanes are needed, it holds one."""
    assert lanes_for_ahead_work(2, busy=busy, real_time_work=False) == allowed


def test_no_ahead_work_while_a_real_time_session_speaks_or_waits_for_a_job() -> None:
    assert lanes_for_ahead_work(4, busy=0.0, real_time_work=True) == 0


@pytest.mark.parametrize("silent_s, suspect", [(0.0, False), (1.5, False), (1.51, True),
                                               (9.0, True)])
def test_worker_suspect_from_its_vad_lane_silence(silent_s: float, suspect: bool) -> None:
    """Three missed heartbeats, busy or idle: a batch's age says nothing (it reports
    progress between its steps), so a long batch on a loaded machine is not a stall."""
    assert worker_suspect(vad_silent_s=silent_s, heartbeat_interval=0.5) is suspect


# ---------------------------------------------------------------------------- real runtime
# A flood next to a real-time session, with real workers, models and speech.


@pytest.mark.slow
def test_a_flood_moves_no_ladder_and_costs_a_real_time_session_no_words(  # noqa: PLR0915  (one scenario, read top to bottom)
    tmp_path: Path, models: Models
) -> None:
    """Session B pushes 20 sentences (about 60 s, 1 s pauses over a noise floor) as fast as
    ``feed`` takes them while session A streams
    jfk.wav at real time, with the daemon's own backpressure settings. B is ahead of real
    time: it must not move the shared ladder, not get a new session refused, not lose its
    own audio (nothing dropped), and A's finals must be the undisturbed run's."""
    jfk = wav_speech(JFK)
    pause = pcm_of(np.random.default_rng(3).normal(0.0, 1e-3, 16_000).astype(np.float32))
    flood_pcm = b"".join(
        wav_speech(REPO / "tests" / "data" / f"spk{k % 2 + 1}_snt{k % 5 + 1}.wav") + pause
        for k in range(20))
    reference = final_texts(reference_events(models, jfk, FINALS_ONLY))
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2), engine=FINALS_ONLY)
    out: dict[str, Any] = {}

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            a = Stream(sup.open_session(), jfk)
            b = sup.open_session()
            collector = asyncio.create_task(collect(sup, a))
            b_events: list[Event] = []

            async def drain_b() -> None:
                async for ev in sup.events(b):
                    b_events.append(ev)

            b_collector = asyncio.create_task(drain_b())

            async def flood() -> None:
                t0 = time.monotonic()
                try:
                    for i in range(0, len(flood_pcm), 3200):  # 100 ms frames, no pacing
                        await sup.feed(b, flood_pcm[i : i + 3200])
                    out["flood"] = "all accepted"
                except SessionBackloggedError as exc:
                    out["flood"] = str(exc)
                out["flood_s"] = time.monotonic() - t0
                out["b_ahead"] = sup.session_status(b)["aheadS"]
                await sup.finish_session(b, timeout=60.0)

            async def admit_during_flood() -> None:
                await asyncio.sleep(2.0)
                extra = sup.open_session()  # raises AdmissionError if refused
                sup.close_session(extra)
                out["admitted"] = True

            await asyncio.gather(push_realtime(sup, a), flood(), admit_during_flood())
            await sup.finish_session(a.sid, timeout=30.0)
            await asyncio.wait_for(asyncio.gather(collector, b_collector), 60.0)
            out["a_events"] = a.events
            out["b_events"] = b_events
            out["levels"] = [t.action for t in sup.transitions]
        finally:
            await sup.stop(grace=0)

    run_async(main, 150)
    print("flood:", {k: v for k, v in out.items() if not k.endswith("events")})
    assert out["admitted"]
    assert out["levels"] == [], "a client ahead of real time moved the shared ladder"
    assert final_texts(out["a_events"]) == reference
    b_events = out["b_events"]
    assert not [e for e in b_events if isinstance(e, FramesDropped)]
    # B was told it is paced (once), A was told nothing: the ladder did not move.
    told = [e.action for e in b_events if isinstance(e, BackpressureTriggered)]
    assert told.count("pace_to_real_time") == 1, told
    assert not [e for e in out["a_events"]
                if isinstance(e, BackpressureTriggered | BackpressureRecovered)]
    # B gets what A leaves idle: all of its audio, or a refusal that says why.
    if out["flood"] == "all accepted":
        assert len(final_texts(b_events)) >= 18  # twenty sentences, none lost to shedding
    else:
        assert "faster than real time" in out["flood"], out["flood"]


@pytest.mark.slow
def test_a_frame_that_finds_no_room_waits_then_is_refused_with_a_sentence(
    tmp_path: Path
) -> None:
    """Flow control's end: with both workers stopped nothing is analysed or decoded, the
    ring fills, and ``feed`` waits ``limits.backlogTimeout`` before refusing the frame with
    a sentence that says why; the session itself stays open. Its client was told when the
    wait began (``backpressure_triggered``, ``wait_for_room``), before the refusal."""
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2),
                            limits=LimitsConfig(backlogTimeout=1.0))
    out: dict[str, Any] = {}

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        pids = [w["pid"] for w in sup.status()["workers"]]
        try:
            sid = sup.open_session()
            stream = Stream(sid, b"")
            collector = asyncio.create_task(collect(sup, stream))
            for pid in pids:
                os.kill(pid, signal.SIGSTOP)
            frame = b"\x01\x00" * 16_000  # 1 s
            for _ in range(int(config.ring_seconds) - 1):
                sup.push(sid, frame)
            t0 = time.monotonic()
            try:
                for _ in range(5):
                    await sup.feed(sid, frame)
            except SessionBackloggedError as exc:
                out["error"] = str(exc)
            out["waited"] = time.monotonic() - t0
            out["open"] = sid in sup.session_ids()
            await asyncio.sleep(0.2)  # the event loop delivers what was posted
            out["told"] = [(type(e).__name__, e.action) for e in stream.events
                           if isinstance(e, BackpressureTriggered | BackpressureRecovered)]
            collector.cancel()
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
            await sup.stop(grace=0)

    run_async(main, 60)
    assert "error" in out, out
    assert 1.0 <= out["waited"] < 3.0, out
    assert "had no room for audio for 1 s" in out["error"]
    assert "faster than real time" in out["error"] and "\n" not in out["error"]
    assert out["open"]
    assert out["told"] == [("BackpressureTriggered", "wait_for_room")], out["told"]
