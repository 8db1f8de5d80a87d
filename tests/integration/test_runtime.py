"""Integration tests of the multi-process runtime: real worker processes, real models, real
speech, real signals.

Each test runs a Supervisor inside this process with ``asyncio.run`` (or the real daemon
process, tests/daemon_driver.py, for the signal tests). Every wait is bounded; reference
finals come from the single-process engine (``Session``) on the same bytes in the same
20 ms frames, computed once per audio.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
import pytest

from alfred_daemon.engine.config import EngineConfig, SttConfig
from alfred_daemon.engine.errors import InvalidAudioError
from alfred_daemon.engine.events import (
    BackpressureTriggered,
    Event,
    FrameProcessed,
    FramesDropped,
    SessionClosed,
    WorkerRecovered,
)
from alfred_daemon.engine.jobs import Models
from alfred_daemon.engine.text import norm_text
from alfred_daemon.engine.vad import WINDOW
from alfred_daemon.runtime.backpressure import BackpressureConfig, Level, Transition
from alfred_daemon.runtime.config import ProcessorConfig, WorkersConfig
from alfred_daemon.runtime.errors import AdmissionError, SessionNotFoundError
from alfred_daemon.runtime.rundir import InstanceRunningError
from alfred_daemon.runtime.supervisor import Supervisor

from ..conftest import REPO, Utterance, silence
from ..runtime_helpers import (
    Driver,
    Stream,
    apoll,
    collect,
    final_texts,
    kill_quietly,
    offset_order_violations,
    pad_to_window,
    pcm_of,
    poll,
    process_state,
    push_realtime,
    reference_events,
    run_async,
    runtime_config,
    shm_segments,
    steady_ladder,
    unique_prefix,
)

pytestmark = pytest.mark.slow

JFK = REPO / "tests" / "data" / "jfk.wav"

MIXES: tuple[tuple[str, ...], ...] = (
    ("spk1_snt1.wav", "spk2_snt2.wav", "spk1_snt3.wav"),
    ("spk2_snt1.wav", "spk1_snt2.wav"),
    ("spk1_snt4.wav", "spk2_snt3.wav", "spk2_snt5.wav"),
    ("spk2_snt4.wav", "spk1_snt5.wav"),
)
"""Four different mixes covering the ten Harvard sentences of the shared corpus."""

EXACT = EngineConfig(frame_events=True, stt=SttConfig(partials=False))
"""The engine config of the tests that compare finals word for word with the single-process
engine: no partials. A final's decode starts with the words partials committed and its
window after the words they anchored, and how many partials ran depends on how fast the
decodes came back: on a busy machine (a core kept busy by another process) fewer partials
committed fewer words, and a final gained a comma. Without partials a final depends only on
its audio, the finals before it and the beam (the ladder held: ``steady_ladder``), so
"equal" holds on any machine; partials under the runtime are tested elsewhere."""


def _mix(corpus: dict[str, Utterance], files: tuple[str, ...], gap_s: float,
         tail_s: float) -> npt.NDArray[np.float32]:
    parts: list[npt.NDArray[np.float32]] = []
    for i, name in enumerate(files):
        if i:
            parts.append(silence(gap_s))
        parts.append(corpus[name].audio)
    parts.append(silence(tail_s))
    return pad_to_window(np.concatenate(parts))


@pytest.fixture(scope="module")
def corpus(utterances: list[Utterance]) -> dict[str, Utterance]:
    return {u.file: u for u in utterances}


@pytest.fixture(scope="module")
def mixes(corpus: dict[str, Utterance]) -> list[bytes]:
    """2-3 utterances, 1.0 s of silence between them, 1.5 s after; whole windows."""
    return [pcm_of(_mix(corpus, files, 1.0, 1.5)) for files in MIXES]


@pytest.fixture(scope="module")
def clips(corpus: dict[str, Utterance]) -> dict[str, bytes]:
    """Single utterances with 1.5 s of trailing silence (tests 8 and 9)."""
    return {name: pcm_of(_mix(corpus, (name,), 0.0, 1.5))
            for name in ("spk2_snt2.wav", "spk1_snt4.wav", "spk2_snt4.wav")}


@pytest.fixture(scope="module")
def references(
    models: Models, mixes: list[bytes], clips: dict[str, bytes]
) -> tuple[list[list[str]], dict[str, list[str]]]:
    """Reference finals of every mix and clip: the single-process engine (``Session``, with
    ``EXACT``) in this process on the same bytes in the same 20 ms frames. (The engine
    computes features with one BLAS thread everywhere -- engine/numerics.py -- so the
    workers' one-thread settings cannot change a word.)"""
    mix_finals = [final_texts(reference_events(models, pcm, EXACT)) for pcm in mixes]
    clip_finals = {n: final_texts(reference_events(models, pcm, EXACT))
                   for n, pcm in clips.items()}
    for files, texts in zip(MIXES, mix_finals, strict=True):
        assert len(texts) >= len(files), (files, texts)  # the reference itself is sane
    assert all(len(texts) == 1 and texts[0] for texts in clip_finals.values()), clip_finals
    return mix_finals, clip_finals


@pytest.fixture(scope="module")
def mix_finals(references: tuple[list[list[str]], dict[str, list[str]]]) -> list[list[str]]:
    return references[0]


@pytest.fixture(scope="module")
def clip_finals(
    references: tuple[list[list[str]], dict[str, list[str]]]
) -> dict[str, list[str]]:
    return references[1]


def _summary(events: list[Event]) -> list[tuple[str, int]]:
    """Compact event list for failure messages (FrameProcessed left out)."""
    return [(e.TYPE, e.audio_offset_ms) for e in events if not isinstance(e, FrameProcessed)]


def _transitions(ts: list[Transition]) -> list[tuple[str, str, float]]:
    return [("triggered" if t.triggered else "recovered", t.action, round(t.load, 2))
            for t in ts]


# ============================================================================ 1


def test_four_sessions_match_single_process_engine(
    tmp_path: Path, mixes: list[bytes], mix_finals: list[list[str]]
) -> None:
    """Four real-time sessions on two workers give exactly the single-process engine's
    finals, in offset order. Relies on the ladder staying at NORMAL (``steady_ladder``) and
    on finals alone deciding the words (``EXACT``); what it guarantees when degraded is
    tested by the overload test."""
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2),
                            engine=EXACT, **steady_ladder())
    streams: list[Stream] = []
    transitions: list[Transition] = []

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            streams.extend(Stream(sup.open_session(), pcm) for pcm in mixes)
            collectors = [asyncio.create_task(collect(sup, s)) for s in streams]

            async def run_one(s: Stream) -> None:
                await push_realtime(sup, s)
                await sup.finish_session(s.sid)

            await asyncio.gather(*(run_one(s) for s in streams))
            await asyncio.wait_for(asyncio.gather(*collectors), 10)
            transitions.extend(sup.transitions)
        finally:
            await sup.stop(grace=0)

    run_async(main, 90)

    assert len(streams) == 4
    for i, s in enumerate(streams):
        assert s.bytes_pushed == len(mixes[i])
        assert final_texts(s.events) == mix_finals[i], (
            f"session {i} ({MIXES[i]}): finals differ from the single-process engine; "
            f"backpressure transitions during the run: {_transitions(transitions)}; "
            f"events: {_summary(s.events)}")
        closed = [e for e in s.events if isinstance(e, SessionClosed)]
        assert len(closed) == 1 and s.events[-1] is closed[0]
        assert closed[0].reason == "finished"
    # The engine's ordering contract (engine/session.py docstring): offsets never go back,
    # FrameProcessed excepted.
    violations = {i: offset_order_violations(s.events) for i, s in enumerate(streams)}
    assert all(not v for v in violations.values()), \
        f"audio_offset_ms went backwards (session: [(earlier event, later event)]): {violations}"


# ============================================================================ 2


def test_kill_worker_mid_stream_loses_nothing(  # noqa: PLR0915  (one scenario, read top to bottom)
    tmp_path: Path, mixes: list[bytes], mix_finals: list[list[str]]
) -> None:
    """SIGKILL of a worker with a decode in flight: every window is analysed exactly once
    and the finals equal the engine's. The ladder is held at NORMAL (``steady_ladder``):
    on a slow machine the re-run work alone can push load past 0.8, and then beam 1 or
    skipped windows would change words for a reason that is not this test's subject."""
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2),
                            engine=EXACT, **steady_ladder())
    streams: list[Stream] = []
    written: dict[str, int] = {}
    kill: dict[str, Any] = {}
    transitions: list[Transition] = []

    async def killer(sup: Supervisor) -> None:
        await asyncio.sleep(2.0)
        # Kill a worker while its job lane has a request out (a decode in flight), so
        # there is work to re-run; fall back to worker 0 if none is seen within 4 s.
        victim: dict[str, Any] | None = None
        deadline = time.monotonic() + 4.0
        while victim is None and time.monotonic() < deadline:
            busy = [w for w in sup.status()["workers"]
                    if w["state"] == "ready" and w["lanes"]["job"]["busy"]]
            if busy:
                victim = busy[0]
            else:
                await asyncio.sleep(0.003)
        kill["saw_busy_lane"] = victim is not None
        if victim is None:
            victim = sup.status()["workers"][0]
        kill["id"], kill["pid"] = victim["id"], victim["pid"]
        os.kill(victim["pid"], signal.SIGKILL)
        t_kill = time.monotonic()
        kill["at_audio_s"] = t_kill - kill["t0"]
        # How fast a replacement loads its models is the runtime benchmark's business (a
        # busy machine takes seconds); here it must come, well within the start timeout.
        deadline = t_kill + 20.0
        while time.monotonic() < deadline:
            for w in sup.status()["workers"]:
                if w["id"] == victim["id"] and w["pid"] != victim["pid"] \
                        and w["state"] == "ready":
                    kill["new_pid"] = w["pid"]
                    kill["ready_after_s"] = time.monotonic() - t_kill
                    return
            await asyncio.sleep(0.02)

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            streams.extend(Stream(sup.open_session(), pcm) for pcm in mixes)
            collectors = [asyncio.create_task(collect(sup, s)) for s in streams]

            async def run_one(s: Stream) -> None:
                await push_realtime(sup, s)
                written[s.sid] = sup.session_status(s.sid)["windowsWritten"]
                await sup.finish_session(s.sid)

            kill["t0"] = time.monotonic()
            await asyncio.gather(killer(sup), *(run_one(s) for s in streams))
            await asyncio.wait_for(asyncio.gather(*collectors), 10)
            kill["restarts"] = sup.status()["counters"]["worker_restarts"]
            transitions.extend(sup.transitions)
        finally:
            await sup.stop(grace=0)

    run_async(main, 90)

    print("kill:", kill, "transitions:", _transitions(transitions))
    assert kill["saw_busy_lane"], "no worker had a job in flight within 4 s (test setup)"
    assert 1.5 < kill["at_audio_s"] < 7.0
    for i, s in enumerate(streams):
        n = len(mixes[i]) // 2 // WINDOW
        assert written[s.sid] == n
        offsets = [e.audio_offset_ms for e in s.events if isinstance(e, FrameProcessed)]
        expected = [32 * (k + 1) for k in range(n)]
        if offsets != expected:
            dup = len(offsets) - len(set(offsets))
            missing = sorted(set(expected) - set(offsets))[:20]
            pytest.fail(f"session {i}: FrameProcessed offsets are not 32..{n * 32}: "
                        f"{len(offsets)} events, {dup} duplicates, missing {missing}; "
                        f"transitions {_transitions(transitions)}")
        assert final_texts(s.events) == mix_finals[i], (
            f"session {i}: finals differ after the worker kill; transitions "
            f"{_transitions(transitions)}; events {_summary(s.events)}")
        assert isinstance(s.events[-1], SessionClosed) and s.events[-1].reason == "finished"
    recovered = [e for s in streams for e in s.events if isinstance(e, WorkerRecovered)]
    assert recovered, "no session was told about the worker it lost"
    assert all(e.worker_id == kill["id"] for e in recovered)
    assert sum(e.rerun_jobs + e.rerun_frames for e in recovered) >= 1
    assert "new_pid" in kill, "no replacement worker became ready within 20 s of the kill"
    assert kill["new_pid"] != kill["pid"]
    assert process_state(kill["pid"]) == "gone"
    assert kill["restarts"] == 1


# ============================================================================ 3

# Overload arithmetic (2 workers = 2 VAD lanes, whatever the core count):
# * 6 sessions at real time publish 6 x 31.25 = 187.5 windows/s.
# * vad_cost_ms_per_window = 25 makes a VAD lane spend >= 25 ms per window, so the two lanes
#   analyse at most 2 x 40 = 80 windows/s: the queue grows by >= 107 windows/s, ~18/s per
#   session. Lag (age of the oldest unanalysed window; max_lag_ms 1000 = load 1.0) passes
#   0.8 after ~1.4 s (it grows ~0.57 s per s) and the queue figure (queued / 40) soon
#   after: load > threshold 0.8, and the ladder takes one step per step_interval_s = 0.5 s:
#   reduce_quality, drop_frames, pause_processing by ~2.5 s (measured: 2.1-2.3 s).
# * From drop_frames on, each session's queue is shed to frame_queue_size // 4 = 10 windows
#   per VAD request, but the lanes still analyse only 80 of the 187.5 windows/s: the oldest
#   waiting window stays hundreds of ms old (measured load 0.85-1.3), above
#   recovery_threshold 0.6, so nothing recovers while audio keeps coming. The costs are
#   sleeps, not CPU, so the margin is the same on a 2-core and a 32-core machine.
# * job_cost_multiplier = 2 doubles decode time: busy job lanes add load without making the
#   finals of the drain (beam 1 at reduce_quality) slow enough to hit the 20 s drain bound.
# * After the last session closes there is no queue and no lag; the busy EWMA (2 s) drops
#   under 0.6 within ~1 s; each rung then needs recovery_hold_s = 1.0 s of quiet, so NORMAL
#   ~3 s after the end (measured 2.9 s). Whole test: 12 s streaming + ~5 s = ~17 s.
OVERLOAD_STREAM_S = 12.0


def _long_speech(corpus: dict[str, Utterance], start: int, seconds: float) -> bytes:
    names = sorted(n for n in corpus if n.startswith("spk"))
    parts: list[npt.NDArray[np.float32]] = []
    total = 0
    i = start
    while total < seconds * 16_000:
        parts += [corpus[names[i % len(names)]].audio, silence(0.4)]
        total += parts[-2].size + parts[-1].size
        i += 1
    audio = np.concatenate(parts)[: int(seconds * 16_000)]
    return pcm_of(pad_to_window(audio))


def test_overload_steps_down_ladder_and_recovers(  # noqa: PLR0915  (one scenario, read top to bottom)
    tmp_path: Path, corpus: dict[str, Utterance]
) -> None:
    config = runtime_config(
        tmp_path, workers=WorkersConfig(count=2), job_cost_multiplier=2.0,
        vad_cost_ms_per_window=25.0,
        processor=ProcessorConfig(max_concurrent_sessions=6, frame_queue_size=40),
        coordination=BackpressureConfig(step_interval_s=0.5, recovery_hold_s=1.0),
    )
    pcms = [_long_speech(corpus, i, OVERLOAD_STREAM_S) for i in range(6)]
    streams: list[Stream] = []
    snapshots: dict[str, dict[str, Any]] = {}
    drained: dict[str, bool] = {}
    out: dict[str, Any] = {}
    transitions: list[Transition] = []

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        t0 = time.monotonic()
        try:
            streams.extend(Stream(sup.open_session(), pcm) for pcm in pcms)
            try:
                extra = sup.open_session()
                out["seventh"] = "admitted"
                sup.close_session(extra)
            except AdmissionError as exc:
                out["seventh"] = exc.reason
            collectors = [asyncio.create_task(collect(sup, s)) for s in streams]

            async def run_one(s: Stream) -> None:
                await push_realtime(sup, s)
                # Stopped streaming: wait until every written window was analysed or
                # dropped, then read the counters (no tail window: audio is whole windows).
                drained[s.sid] = await apoll(
                    lambda: sup.session_status(s.sid)["windowsQueued"] == 0, 20.0)
                snapshots[s.sid] = sup.session_status(s.sid)
                await sup.finish_session(s.sid, timeout=20.0)

            tasks = [asyncio.create_task(run_one(s)) for s in streams]
            out["paused"] = await apoll(
                lambda: sup.ladder.level >= Level.PAUSE_PROCESSING, OVERLOAD_STREAM_S - 2)
            out["paused_at_s"] = time.monotonic() - t0
            # Free a slot at the pause rung: the sixth session stops and finishes; a new
            # session must now be refused as overloaded (not by the session limit).
            streams[5].stop.set()
            await tasks[5]
            out["level_at_probe"] = sup.ladder.level
            try:
                probe = sup.open_session()
                out["probe"] = "admitted"
                sup.close_session(probe)
            except AdmissionError as exc:
                out["probe"] = exc.reason
            await asyncio.gather(*tasks)
            await asyncio.wait_for(asyncio.gather(*collectors), 10)
            out["streaming_done_s"] = time.monotonic() - t0
            out["normal"] = await apoll(lambda: sup.ladder.level == Level.NORMAL, 30.0)
            out["normal_at_s"] = time.monotonic() - t0
            transitions.extend(sup.transitions)
            out["dropped_total"] = sup.status()["counters"]["frames_dropped"]
        finally:
            await sup.stop(grace=0)

    run_async(main, 120)

    print("overload:", out, _transitions(transitions))
    assert out["seventh"] == "session_limit"
    assert out["paused"], f"pause_processing not reached: {_transitions(transitions)}"
    assert out["level_at_probe"] == Level.PAUSE_PROCESSING
    assert out["probe"] == "overloaded"

    # The ladder: down one rung at a time, then back up, ending at NORMAL.
    assert out["normal"], f"ladder did not recover within 30 s: {_transitions(transitions)}"
    levels = [Level.NORMAL] + [t.level for t in transitions]
    assert all(abs(b - a) == 1 for a, b in itertools.pairwise(levels)), levels
    triggered = [t.action for t in transitions if t.triggered]
    assert triggered[:3] == ["reduce_quality", "drop_frames", "pause_processing"], triggered
    first_pause = next(i for i, t in enumerate(transitions) if t.level == Level.PAUSE_PROCESSING)
    recovered = [t.action for t in transitions[first_pause:] if not t.triggered]
    assert recovered[-3:] == ["pause_processing", "drop_frames", "reduce_quality"], recovered
    assert transitions[-1].level == Level.NORMAL and not transitions[-1].triggered

    # Every session saw the first three steps, in order, as events.
    for i, s in enumerate(streams):
        actions = [e.action for e in s.events if isinstance(e, BackpressureTriggered)]
        assert actions[:3] == ["reduce_quality", "drop_frames", "pause_processing"], (i, actions)

    # Accounting: nothing analysed twice, nothing lost silently.
    total_dropped = 0
    for i, s in enumerate(streams):
        snap = snapshots[s.sid]
        assert drained[s.sid], f"session {i} queue did not drain: {snap}"
        assert snap["windowsWritten"] == s.windows_pushed, (i, snap)
        assert snap["windowsAnalysed"] + snap["windowsDropped"] == snap["windowsWritten"], \
            (i, snap)
        reported = sum(e.frames for e in s.events if isinstance(e, FramesDropped))
        assert reported == snap["windowsDropped"], (i, reported, snap)
        closed = s.events[-1]
        assert isinstance(closed, SessionClosed) and closed.reason == "finished", (i, closed)
        total_dropped += snap["windowsDropped"]
    assert total_dropped > 0, "drop_frames never dropped a window"
    assert out["dropped_total"] == total_dropped


# ============================================================================ 4


def test_no_shm_or_processes_left_after_stop(
    tmp_path: Path, clips: dict[str, bytes]
) -> None:
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2))
    out: dict[str, Any] = {}

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            out["pids"] = [w["pid"] for w in sup.status()["workers"]]
            streams = [Stream(sup.open_session(), clips["spk2_snt2.wav"]) for _ in range(2)]
            collectors = [asyncio.create_task(collect(sup, s)) for s in streams]
            for s in streams:
                s.pcm = s.pcm[: 640 * 50]  # 1 s of audio each, then stop while still open
            await asyncio.gather(*(push_realtime(sup, s) for s in streams))
            out["during"] = shm_segments(config.shm_prefix, os.getpid())
        finally:
            await sup.stop()
        out["closed"] = [s.events[-1] for s in streams]
        await asyncio.wait_for(asyncio.gather(*collectors), 5)

    run_async(main, 60)
    try:
        assert len(out["during"]) == 2, out["during"]  # one ring per open session
        assert shm_segments(config.shm_prefix) == []
        states = {pid: process_state(pid) for pid in out["pids"]}
        assert states == dict.fromkeys(out["pids"], "gone"), states
        assert all(isinstance(e, SessionClosed) and e.reason == "shutdown"
                   for e in out["closed"])
    finally:
        kill_quietly(out.get("pids", []))


# ============================================================================ 5


def test_sigterm_drains_and_exits_zero(tmp_path: Path) -> None:
    prefix = unique_prefix()
    driver = Driver({"wav": str(JFK), "runtime_dir": str(tmp_path / "run"),
                     "shm_prefix": prefix, "sessions": 2, "workers": 2, "loops": 1},
                    tmp_path / "driver.log")
    workers: list[int] = []
    try:
        ready = driver.wait_for(lambda m: "ready" in m, 60)
        assert ready is not None, driver.log_tail()
        t_ready = time.monotonic()
        workers = list(ready["workers"])
        started: dict[int, int] = {}

        def speech_started(m: dict[str, Any]) -> bool:
            if m.get("type") == "speech_started":
                started.setdefault(m["session"], m["utterance_id"])
            return len(started) == 2

        assert driver.wait_for(speech_started, 5.0) is not None, driver.lines
        driver.wait_for(lambda _: False, t_ready + 1.5 - time.monotonic())  # read until 1.5 s
        n_before = len(driver.lines)
        driver.signal(signal.SIGTERM)
        exit_line = driver.wait_for(lambda m: "exit" in m, 30)
        rc = driver.proc.wait(timeout=15)
        driver.drain(5)
        assert rc == 0, driver.log_tail()
        assert exit_line == {"exit": 0}
        for i in (0, 1):
            before = [m for m in driver.lines[:n_before] if m.get("session") == i]
            after = [m for m in driver.lines[n_before:] if m.get("session") == i]
            utt = started[i]
            assert not [m for m in before if m.get("utterance_id") == utt
                        and m["type"] in ("speech_ended", "final_transcription")], \
                f"session {i}: utterance {utt} was not in progress at SIGTERM: {before}"
            finals = [m for m in after if m["type"] == "final_transcription"
                      and m["utterance_id"] == utt]
            assert len(finals) == 1, (i, after)
            assert norm_text(finals[0]["text"]).startswith("and so"), finals[0]
            assert after[-1]["type"] == "session_closed", after[-3:]
            assert after[-1]["reason"] == "shutdown"
            assert after.index(finals[0]) < len(after) - 1
        assert shm_segments(prefix) == []
        assert poll(lambda: all(process_state(p) == "gone" for p in workers), 3.0), \
            {p: process_state(p) for p in workers}
    finally:
        driver.close()
        kill_quietly(workers)


# ============================================================================ 6


def test_sigkill_supervisor_workers_exit_and_next_start_sweeps(tmp_path: Path) -> None:
    prefix = unique_prefix()
    driver = Driver({"wav": str(JFK), "runtime_dir": str(tmp_path / "run1"),
                     "shm_prefix": prefix, "sessions": 2, "workers": 2, "loops": 3},
                    tmp_path / "driver.log")
    workers: list[int] = []
    out: dict[str, Any] = {}
    try:
        ready = driver.wait_for(lambda m: "ready" in m, 60)
        assert ready is not None, driver.log_tail()
        workers = list(ready["workers"])
        driver.wait_for(lambda m: m.get("type") == "speech_started", 5.0)  # streaming
        dead_pid = driver.proc.pid
        rings = shm_segments(prefix, dead_pid)
        assert len(rings) == 2, rings
        # Python's resource tracker (a child of the daemon) would unlink the rings when the
        # daemon dies, hiding whether the next start sweeps. Kill it first, as a SIGKILL of
        # the daemon's whole cgroup (systemd, OOM killer) would.
        trackers = [c for c in psutil.Process(dead_pid).children()
                    if "resource_tracker" in " ".join(c.cmdline())]
        for tracker in trackers:
            os.kill(tracker.pid, signal.SIGKILL)
        os.kill(dead_pid, signal.SIGKILL)
        t_kill = time.monotonic()
        driver.proc.wait(timeout=10)
        exited = poll(lambda: all(process_state(p) != "alive" for p in workers), 3.0)
        out["exit_s"] = time.monotonic() - t_kill
        assert exited, {p: process_state(p) for p in workers}
        if trackers:
            assert poll(lambda: process_state(trackers[0].pid) != "alive", 3.0)
            assert shm_segments(prefix, dead_pid) == rings  # left behind: a sweep is needed

        config = runtime_config(tmp_path, shm_prefix=prefix, workers=WorkersConfig(count=1))

        async def main() -> None:
            sup = Supervisor(config)
            await sup.start()
            try:
                out["after_start"] = shm_segments(prefix, dead_pid)
                out["pids"] = [w["pid"] for w in sup.status()["workers"]]
            finally:
                await sup.stop()

        run_async(main, 60)
        print("sigkill:", out, "trackers killed:", len(trackers))
        assert out["after_start"] == []
        assert shm_segments(prefix) == []
    finally:
        driver.close()
        kill_quietly(workers + out.get("pids", []))


# ============================================================================ 7


def test_workers_pinned_to_distinct_single_cores(tmp_path: Path) -> None:
    config = runtime_config(tmp_path)  # workers.count = 0: one per usable core
    out: dict[str, Any] = {}

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            workers = sup.status()["workers"]
            out["workers"] = workers
            out["affinity"] = {w["pid"]: os.sched_getaffinity(w["pid"]) for w in workers}
            # Every thread, not just the main one: threads started before pinning would
            # keep the whole CPU set.
            out["threads"] = {w["pid"]: {t.id: os.sched_getaffinity(t.id)
                                         for t in psutil.Process(w["pid"]).threads()}
                              for w in workers}
        finally:
            await sup.stop()

    run_async(main, 60)
    cores = sorted(os.sched_getaffinity(0))
    workers = out["workers"]
    assert len(workers) == len(cores)
    seen: set[int] = set()
    for w in workers:
        affinity = out["affinity"][w["pid"]]
        assert len(affinity) == 1, (w["pid"], affinity)
        assert affinity == {w["core"]}
        assert out["threads"][w["pid"]] and all(
            a == affinity for a in out["threads"][w["pid"]].values()), out["threads"]
        seen |= affinity
    assert sorted(seen) == cores  # distinct, and every usable core used


# ============================================================================ 8


def test_second_instance_refuses_same_runtime_dir(
    tmp_path: Path, clips: dict[str, bytes], clip_finals: dict[str, list[str]]
) -> None:
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2), engine=EXACT,
                            **steady_ladder())
    out: dict[str, Any] = {}
    name = "spk2_snt4.wav"

    async def main() -> None:
        first = Supervisor(config)
        await first.start()
        try:
            second = Supervisor(config)
            try:
                await second.start()
                out["second"] = "started"
                await second.stop(grace=0)
            except InstanceRunningError as exc:
                out["second"] = exc
            out["second_state"] = second.state
            s = Stream(first.open_session(), clips[name])
            collector = asyncio.create_task(collect(first, s))
            await push_realtime(first, s)
            await first.finish_session(s.sid)
            await asyncio.wait_for(collector, 10)
            out["events"] = s.events
        finally:
            await first.stop(grace=0)

    run_async(main, 60)
    assert isinstance(out["second"], InstanceRunningError), out["second"]
    assert str(os.getpid()) in str(out["second"])  # names the holder
    assert final_texts(out["events"]) == clip_finals[name]
    assert isinstance(out["events"][-1], SessionClosed)
    assert out["events"][-1].reason == "finished"
    # A refused start leaves the supervisor stopped (so it can be retried later).
    assert out["second_state"] == "stopped"


# ============================================================================ 9


def test_bad_frame_rejected_other_session_unaffected(
    tmp_path: Path, clips: dict[str, bytes], clip_finals: dict[str, list[str]]
) -> None:
    config = runtime_config(tmp_path, workers=WorkersConfig(count=2), engine=EXACT,
                            **steady_ladder())
    names = ("spk2_snt2.wav", "spk1_snt4.wav")
    out: dict[str, Any] = {"errors": []}
    statuses: list[dict[str, Any]] = []
    streams: list[Stream] = []

    async def main() -> None:
        sup = Supervisor(config)
        await sup.start()
        try:
            streams.extend(Stream(sup.open_session(), clips[n]) for n in names)
            collectors = [asyncio.create_task(collect(sup, s)) for s in streams]

            def bad_frames(k: int) -> None:
                if k != 40:  # 0.8 s in: mid speech
                    return
                for sid, frame in ((streams[0].sid, b"\x01" * 641),
                                   ("no-such-session", b"\x00" * 640)):
                    try:
                        sup.push(sid, frame)
                        out["errors"].append(None)
                    except (InvalidAudioError, SessionNotFoundError) as exc:
                        out["errors"].append(exc)

            await asyncio.gather(push_realtime(sup, streams[0], bad_frames),
                                 push_realtime(sup, streams[1]))
            statuses.extend(sup.session_status(s.sid) for s in streams)
            await asyncio.gather(*(sup.finish_session(s.sid) for s in streams))
            await asyncio.wait_for(asyncio.gather(*collectors), 10)
            try:
                sup.push(streams[0].sid, b"\x00" * 640)
                out["after_close"] = None
            except SessionNotFoundError as exc:
                out["after_close"] = exc
        finally:
            await sup.stop(grace=0)

    run_async(main, 60)
    odd, unknown = out["errors"]
    assert isinstance(odd, InvalidAudioError) and not isinstance(odd, SessionNotFoundError)
    assert isinstance(unknown, SessionNotFoundError)
    assert isinstance(out["after_close"], SessionNotFoundError)
    assert statuses[0]["framesRejected"] == 1 and statuses[1]["framesRejected"] == 0
    for i, s in enumerate(streams):
        assert s.frames_pushed == -(-len(s.pcm) // 640)
        assert statuses[i]["framesReceived"] == s.frames_pushed
        assert final_texts(s.events) == clip_finals[names[i]], (i, _summary(s.events))
        assert isinstance(s.events[-1], SessionClosed) and s.events[-1].reason == "finished"
