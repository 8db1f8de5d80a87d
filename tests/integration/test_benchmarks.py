"""The load benchmark's own logic: the audio it streams (both profiles), how it judges and
reports rows, and a short real run against a real daemon (the smoke version of ``make
bench-load``; figures of speed are the benchmark's business, this checks that the harness
measures and accounts)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))

import loadgen  # noqa: E402
from load_bench import last_frame  # noqa: E402
from load_report import (  # noqa: E402
    judge,
    largest_within,
    markdown,
    relative_judgement,
)

HARVARD_1000_40_SHA256 = "f9416e85552dfb6230d3e2905ce0434959327b8927e3dbefe4a22ec1cef124c9"
"""sha256 of ``make_script(1000, 40).pcm`` before profiles existed (commit fcbee82)."""
HARVARD_1000_40_ENDS = [194, 415, 585, 773, 948, 1104, 1299, 1451, 1596, 1731, 1940]


def frame_db(pcm: bytes) -> npt.NDArray[np.float64]:
    """RMS dBFS of each 20 ms frame."""
    x = np.frombuffer(pcm, "<i2").astype(np.float64).reshape(-1, loadgen.FRAME) / 32768
    return np.asarray(10 * np.log10(np.mean(x**2, axis=1) + 1e-20), dtype=np.float64)


@pytest.mark.parametrize("profile", loadgen.PROFILES)
def test_script_is_deterministic_and_paced_in_whole_frames(profile: str) -> None:
    a, b = loadgen.make_script(1000, 12, profile), loadgen.make_script(1000, 12, profile)
    assert a == b
    assert a != loadgen.make_script(1001, 12, profile)
    assert len(a.pcm) == 12 * loadgen.RATE * 2
    assert {len(f) for f in a.frames} == {loadgen.FRAME * 2}
    assert a.speech_ends == sorted(a.speech_ends)
    assert a.speech_ends and all(0 < e < len(a.frames) for e in a.speech_ends)
    assert len(a.speech_ms) == len(a.speech_ends)
    assert {len(a.tail_frame(k)) for k in range(3)} == {loadgen.FRAME * 2}


def test_harvard_profile_is_byte_identical_to_the_scripts_before_profiles() -> None:
    script = loadgen.make_script(1000, 40, "harvard")
    assert hashlib.sha256(script.pcm).hexdigest() == HARVARD_1000_40_SHA256
    assert script.speech_ends == HARVARD_1000_40_ENDS
    assert script.tail_frame(0) == bytes(loadgen.FRAME * 2)  # digital silence after it
    assert loadgen.make_script(1000, 40) != script  # realistic is the default


def test_realistic_script_has_a_noise_floor_under_everything() -> None:
    seed, seconds = 1000, 40
    script = loadgen.make_script(seed, seconds)
    levels = frame_db(script.pcm)
    assert levels.min() > -60.0  # no frame is digital silence
    # Pauses (no clip placed there) carry exactly the floor: the same noise, alone.
    pool = {c.name: c for c in loadgen.realistic_pool()}
    covered = np.zeros(len(script.pcm) // 2, dtype=bool)
    for name, start in script.layout:
        covered[start : start + pool[name].audio.size] = True
    pause = ~covered.reshape(-1, loadgen.FRAME).any(axis=1)
    assert 0.1 < pause.mean() < 0.4  # 1-2 s after clips of 1-19 s
    extra = round(loadgen.TAIL_NOISE_S / loadgen.FRAME_S) * loadgen.FRAME
    noise = loadgen.noise_floor(seed, covered.size + extra)
    floor = np.frombuffer(loadgen.to_pcm(noise[: covered.size]), "<i2").reshape(
        -1, loadgen.FRAME)
    frames = np.frombuffer(script.pcm, "<i2").reshape(-1, loadgen.FRAME)
    assert np.array_equal(frames[pause], floor[pause])
    pause_db = 10 * np.log10(np.mean((frames[pause].astype(np.float64) / 32768) ** 2))
    assert pause_db == pytest.approx(loadgen.NOISE_DBFS, abs=1.0)
    tail_db = 10 * np.log10(np.mean(10 ** (frame_db(script.tail) / 10)))
    assert tail_db == pytest.approx(loadgen.NOISE_DBFS, abs=1.0)  # the floor goes on


def test_noise_floor_is_pink_at_minus_50_dbfs() -> None:
    x = loadgen.noise_floor(5, 20 * loadgen.RATE)
    assert 20 * np.log10(np.sqrt(np.mean(x**2))) == pytest.approx(loadgen.NOISE_DBFS, abs=0.01)
    assert np.array_equal(x, loadgen.noise_floor(5, 20 * loadgen.RATE))
    power = np.abs(np.fft.rfft(x)) ** 2
    freq = np.fft.rfftfreq(x.size, 1 / loadgen.RATE)

    def density(lo: float, hi: float) -> float:
        return float(power[(freq >= lo) & (freq < hi)].mean())

    # 1/f: a decade down in frequency is ten times the power per Hz (white would be 1).
    assert 7 < density(100, 200) / density(1000, 2000) < 14
    assert 3 < density(1000, 2000) / density(4000, 8000) < 6


def test_realistic_speech_ends_come_from_the_clean_clips() -> None:
    script = loadgen.make_script(1003, 40)
    pool = {c.name: c for c in loadgen.realistic_pool()}
    expected = [((start + e) // loadgen.FRAME, round((e - s) * 1000 / loadgen.RATE))
                for name, start in script.layout for s, e in pool[name].utterances]
    expected = [(e, ms) for e, ms in expected if e < len(script.frames)]
    assert list(zip(script.speech_ends, script.speech_ms, strict=True)) == expected
    # Measured under the floor instead, the end of a clip with a quiet tail would be lost:
    # -45 dB of its loudest frame is -61 dBFS, below the -50 dBFS floor.
    clip = pool["cheetah_test-en.wav"]
    assert loadgen.speech_end(clip.audio) / loadgen.RATE == pytest.approx(3.47, abs=0.02)
    noisy = clip.audio + loadgen.noise_floor(0, clip.audio.size).astype(np.float32)
    assert loadgen.speech_end(noisy) > clip.audio.size - loadgen.RATE // 10


def test_utterance_lengths_and_bands() -> None:
    assert [loadgen.band(ms) for ms in (0, 2999, 3000, 7999, 8000, 16_000)] == [
        "<3 s", "<3 s", "3-8 s", "3-8 s", ">=8 s", ">=8 s"]
    pool = {c.name: c for c in loadgen.realistic_pool()}
    # A clip with pauses of its own: one utterance per stretch of speech between them.
    assert [(round(s / 16_000, 2), round(e / 16_000, 2))
            for s, e in pool["uberi_english.wav"].utterances] == [
        (0.05, 0.43), (1.05, 1.47), (2.11, 2.61)]
    # Every band is represented in the pool, the long one by the 16 s passage.
    lengths = [e - s for c in pool.values() for s, e in c.utterances]
    assert {loadgen.band(n * 1000 / loadgen.RATE) for n in lengths} == {
        b for b, _, _ in loadgen.BANDS}
    script = loadgen.Script(b"\0" * 640 * 300, [100, 250], [2500, 9000])
    assert script.speech_ms_for(250) == 9000 and script.speech_ms_for(101) is None


def test_excluded_clips_follow_the_floor_rule() -> None:
    long_dir = loadgen.SHARED_AUDIO / "long"
    names = loadgen._manifest(long_dir / "manifest.json")
    assert set(loadgen.EXCLUDED) | set(loadgen.TRIMMED) <= set(names)
    pool = {c.name for c in loadgen.realistic_pool()}
    for name in names:
        floor = loadgen.clip_floor_db(loadgen.read_clip(long_dir / name))
        by_floor = loadgen.EXCLUDED.get(name, "").startswith("floor")
        assert by_floor == (floor > loadgen.FLOOR_MAX_DB and name not in loadgen.TRIMMED), name
        assert (name in pool) == (name not in loadgen.EXCLUDED), name
    assert "jfk.wav" not in pool  # left out of both profiles (see speech_ends)


def silero_segments(audio: npt.NDArray[np.float32]) -> list[tuple[float, float]]:
    """Speech segments (s) as the daemon's VAD defaults cut them: Silero probability >= 0.5
    starts one, it ends after 200 ms below 0.35 (``VadConfig``), at the last window above."""
    from alfred_daemon.engine.models import resolve_vad
    from alfred_daemon.engine.vad import WINDOW, SileroVad, VadState

    vad, state = SileroVad(resolve_vad(None)), VadState()
    probs = [vad.prob(state, audio[i : i + WINDOW])
             for i in range(0, audio.size - WINDOW + 1, WINDOW)]
    out, start, last, low = [], -1, 0, 0
    for i, p in enumerate(probs):
        if start < 0 and p >= 0.5:
            start, last, low = i, i, 0
        elif start >= 0:
            last, low = (i, 0) if p >= 0.35 else (last, low + 1)
            if low * WINDOW >= 0.2 * loadgen.RATE:
                out.append((start, last))
                start = -1
    if start >= 0:
        out.append((start, last))
    return [(a * WINDOW / loadgen.RATE, (b + 1) * WINDOW / loadgen.RATE) for a, b in out]


@pytest.mark.slow
def test_realistic_clips_speech_ends_agree_with_silero() -> None:
    """Why the pool is what it is: on every clip streamed, as streamed (over the floor), the
    VAD's last speech ends between 100 ms before (its 32 ms windows; a faint last fricative
    under its threshold) and 150 ms after (its hangover) the end measured on the clean clip,
    every place the VAD ends a segment is within 200 ms of a measured end (so each final can
    be attributed), and nothing speech-like follows the last end. The clips EXCLUDED for
    their ends read them 0.12-1.9 s late (0.07-0.11 s for the 1 s command whose floor is
    above the -45 dB end threshold)."""
    lead = loadgen.RATE
    for clip in loadgen.realistic_pool():
        audio = np.concatenate([np.zeros(lead), clip.audio, np.zeros(lead)])
        audio += loadgen.noise_floor(7, audio.size)
        segments = [(a - 1, b - 1) for a, b in silero_segments(audio.astype(np.float32))]
        ends = [e / loadgen.RATE for _, e in clip.utterances]
        assert segments, clip.name
        assert -0.1 <= segments[-1][1] - ends[-1] <= 0.15, (clip.name, segments, ends)
        assert all(min(abs(b - e) for e in ends) <= 0.2 for _, b in segments), (
            clip.name, segments, ends)
        assert all(a < ends[-1] for a, _ in segments), (clip.name, segments, ends)


def test_speech_ends_found_on_the_audio() -> None:
    rate = loadgen.RATE
    rng = np.random.default_rng(0)
    tone = (0.3 * np.sin(np.arange(rate) * 2 * np.pi * 220 / rate)).astype(np.float32)
    floor = (1e-4 * rng.standard_normal(rate // 2)).astype(np.float32)
    clip = np.concatenate([floor, tone, floor, tone, floor])
    ends = loadgen.speech_ends(clip)
    # Two bursts separated by 500 ms of near-silence: two speech ends, each at a burst's end.
    assert [round(e / rate, 2) for e in ends] == [1.5, 3.0]
    assert loadgen.speech_end(clip) == ends[-1]
    assert [round(s / rate, 2) for s, _ in loadgen.utterances(clip)] == [0.5, 2.0]


def test_utterance_attribution_tolerance() -> None:
    script = loadgen.Script(b"\0" * 640 * 300, [100, 250])
    assert script.utterance_end_for(104) == 100
    assert script.utterance_end_for(240) == 250
    assert script.utterance_end_for(175) is None  # nowhere near a speech end
    assert last_frame(20) == 0 and last_frame(21) == 1 and last_frame(0) == 0


def row(system: str, n: int, final_p95: float, *, turn_p95: float = 250.0,
        partial_p95: float = 100.0, dropped: int = 0, pss: float = 300.0) -> dict[str, Any]:
    def lat(p95: float) -> dict[str, Any]:
        return {"p50": p95 / 2, "p95": p95, "p99": p95, "count": 10}

    r: dict[str, Any] = {
        "system": system, "n": n, "final_latency": lat(final_p95),
        "turn_latency": lat(turn_p95), "partial_lag": lat(partial_p95),
        "fallback_turn_latency": lat(3000), "frame_rtt": lat(5), "frames_dropped": dropped,
        "frames_unaccounted": 0, "unmatched_finals": 0, "unmatched_turns": 0,
        "errors": [], "cpu_percent": 50.0, "pss_mb_peak": pss, "send_lag_ms_max": 1.0,
        "bands": {"<3 s": {"final_latency": lat(final_p95 - 50),
                           "turn_latency": lat(turn_p95)},
                  ">=8 s": {"final_latency": {"p50": None, "p95": None, "p99": None,
                                              "count": 0}}},
        "pipecat": {"load_s": 1.0}, "pipecat_sessions": []}
    judge(r)
    return r


def test_largest_n_is_an_unbroken_run_from_the_smallest() -> None:
    rows = [row("alfred", 1, 300), row("alfred", 2, 350), row("alfred", 4, 450),
            row("alfred", 6, 390)]  # passes again after a failure: does not count
    assert [r["within_bounds"] for r in rows] == [True, True, False, True]
    assert rows[2]["outside_bounds"] == ["final_p95"]
    assert largest_within(rows, "alfred") == 2
    assert largest_within(rows, "pipecat") is None


def test_bounds_per_system_and_waived_turn_bound() -> None:
    assert loadgen.BOUNDS == {"partial_lag_p95": 250.0, "final_p95": 400.0, "turn_p95": 400.0}
    slow_turn = [row("alfred", 1, 300, turn_p95=420), row("alfred", 2, 300, turn_p95=430),
                 row("alfred", 4, 300, turn_p95=440, dropped=3, pss=390)]
    assert largest_within(slow_turn, "alfred") is None
    assert largest_within(slow_turn, "alfred", frozenset({"turn_p95"})) == 2
    # Pipecat has no partials: the partial bound is not held against it.
    assert row("pipecat", 1, 390, partial_p95=10_000)["within_bounds"]
    assert not row("alfred", 1, 390, partial_p95=10_000)["within_bounds"]
    text = markdown(slow_turn)
    assert ("Largest N within bounds, alfred: **None** (PSS - MB at that N; "
            "all bounds but end of turn: 2)") in text
    text = markdown([row("alfred", 1, 300, pss=350.4), row("alfred", 2, 300, pss=380)])
    assert "Largest N within bounds, alfred: **2** (PSS 380 MB at that N;" in text


def test_relative_judgement_against_pipecats_own_n1() -> None:
    rows = [row("pipecat", 1, 600, turn_p95=700), row("pipecat", 2, 700, turn_p95=800),
            row("pipecat", 4, 900, turn_p95=800)]
    rows += [row("alfred", n, 300 + 10 * n, turn_p95=350 + 20 * n, pss=200 + 10 * n)
             for n in (1, 2, 4, 6, 8)]
    rows += [row("alfred", 10, 800, turn_p95=500), row("alfred", 12, 300)]  # broken run
    rel = relative_judgement(rows)
    assert rel["available"]
    assert rel["bounds"] == pytest.approx({"final_p95": 720.0, "turn_p95": 840.0})
    # Pipecat's own N = 2 passes (700 <= 720, 800 <= 840), N = 4 does not (900 > 720).
    assert rel["largest_n"] == {"pipecat": 2, "alfred": 8}
    assert rel["pss_mb_at_largest"] == {"pipecat": 300.0, "alfred": 280.0}
    assert rel["ratio"] == pytest.approx(4.0) and rel["ratio_met"]
    assert rel["growth"]["final_p95"] == pytest.approx(360 / 310)
    assert rel["growth"]["turn_p95"] == pytest.approx(470 / 370)
    assert rel["growth"]["partial_lag_p95"] == pytest.approx(1.0)
    assert rel["growth_met"] is True
    # Dropped frames fail the relative bounds too, and the run stops there.
    rows[5] = row("alfred", 4, 340, turn_p95=430, dropped=1)
    rel = relative_judgement(rows)
    assert rel["largest_n"]["alfred"] == 2 and rel["ratio"] == pytest.approx(1.0)
    assert not rel["ratio_met"]
    text = markdown(rows, rel)
    assert "Relative bounds (Pipecat's own p95 at N = 1, +20 %): final <= 720 ms, " \
           "end of turn <= 840 ms" in text
    assert "- alfred / Pipecat: **1.0x** (target >= 3x: not met)" in text
    assert "| alfred | 1 | 130 / 260 (10) | - | - | 185 / 370 (10) | - | - |" in text  # bands
    # Without Pipecat at N = 1 there is nothing to be relative to.
    no_base = relative_judgement([r for r in rows if r["system"] == "alfred"])
    assert not no_base["available"]
    assert "Relative judgement: not available" in markdown(rows[3:], no_base)


@pytest.mark.slow
def test_smoke_run_against_a_real_daemon(tmp_path: Path) -> None:
    """Two sessions of the realistic profile for 10 s through a freshly started daemon."""
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "load_bench.py"), "--systems", "alfred",
         "--profile", "realistic", "--sessions", "2", "--seconds", "10", "--out",
         str(tmp_path), "--no-plot"],
        capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((tmp_path / "load_bench_realistic.json").read_text())
    assert data["meta"]["profile"] == "realistic" and data["meta"]["host"]["cores"] >= 1
    (r,) = data["rows"]
    assert r["system"] == "alfred" and r["n"] == 2
    assert r["errors"] == []
    assert r["frames_sent"] == 2 * 500
    assert r["frames_unaccounted"] == 0  # every frame analysed, dropped or still queued
    assert r["frames_dropped"] == 0
    # Each session's script has 2 utterances and ends a turn. Which of them the benchmark
    # can time depends on where the VAD put the speech end: on a busy host a final or a
    # turn may end away from the script's speech end and is counted as unattributed
    # (CI once saw 1 timed fallback turn and 1 unattributed one), so all are counted here.
    assert r["final_latency"]["count"] + r["unmatched_finals"] >= 4
    assert r["final_latency"]["count"] >= 1
    assert (r["turn_latency"]["count"] + r["fallback_turn_latency"]["count"]
            + r["unmatched_turns"]) >= 2
    # 14 s of audio per session is 437 VAD windows, each with its frame event unless the
    # outbox shed it (counted) or the daemon was at pause_processing, which turns them off
    # (a loaded host gets there); a window or two either side of each pause may go either way.
    windows = r["frame_rtt"]["count"] + r["frame_events_shed"] + r["paused_ms"] / 32
    assert windows >= 2 * 437 - 2 * r["pause_stretches"], r
    assert all(v > 0 for v in r["raw"]["final_latency"])  # arrivals after the speech ended
    assert len(r["raw"]["final_speech_ms"]) == r["final_latency"]["count"]
    assert sum(b["final_latency"]["count"] for b in r["bands"].values()) == (
        r["final_latency"]["count"])
    assert r["cpu_percent"] > 0 and r["pss_mb_peak"] > 100
    text = (tmp_path / "load_bench_realistic.md").read_text()
    assert "| alfred | 2 |" in text and "Host: " in text
    assert r["daemon_counters"]["final_fallbacks"] >= 0  # the counter is read per N
    assert "| N | finals on the 30 s window | partials shed | jobs re-run |" in text


def test_webrtc_bench_pools_rounds_and_judges_the_added_p95() -> None:
    """webrtc_bench's verdict: WebRTC's p95 minus gRPC's, pooled over rounds, per N."""
    from webrtc_bench import BOUND_MS, summary

    def row(path: str, n: int, finals: list[float], turns: list[float]) -> dict[str, Any]:
        return {"system": path, "n": n, "frames_dropped": 0, "client_cpu_percent": 10.0,
                "cpu_percent": 40.0 * n, "final_model_ms_mean": finals[0] - 200,
                "errors": [], "raw": {"final_latency": finals, "turn_latency": turns,
                                      "partial_lag": [100.0], "frame_rtt": [5.0, 7.0]},
                "daemon_side_mean_ms": {"final": finals[0] - 100, "turn": 20.0,
                                        "partial": 150.0}}

    grpc = [float(v) for v in range(300, 400)]
    rows = [row("grpc", 1, grpc[:50], grpc[:50]), row("grpc", 1, grpc[50:], grpc[50:]),
            row("webrtc", 1, [v + 30 for v in grpc], [v + 30 for v in grpc]),
            row("grpc", 4, grpc, grpc), row("webrtc", 4, [v + 90 for v in grpc], grpc)]
    verdicts, text = summary(rows, [1, 4])
    assert [v["n"] for v in verdicts] == [1, 4]
    assert verdicts[0]["added_p95_ms"]["final"] == pytest.approx(30.0)
    assert verdicts[0]["within_bound"]
    assert verdicts[1]["added_p95_ms"]["final"] == pytest.approx(90.0)
    assert verdicts[1]["added_p95_ms"]["final"] > BOUND_MS
    assert verdicts[1]["added_p95_ms"]["turn"] == pytest.approx(0.0)
    assert not verdicts[1]["within_bound"]
    assert "OVER the 60 ms bound" in text and "| 4 | webrtc |" in text
    # The frame round trip pooled; the daemon's own means, the finals' model time and the
    # CPU averaged over the rounds.
    assert ("| 1 | grpc | 350 / 394 (100) | 350 / 394 (100) | 100 | 6 / 7 | 225 / 150 | 125 "
            "| 0 | 40 / 10 |" in text), text


def test_haproxy_bench_pools_rounds_and_judges_the_added_p95() -> None:
    """haproxy_bench's verdict: HAProxy's p95 final minus direct's, pooled over rounds."""
    from haproxy_bench import BOUND_MS, summary

    def row(path: str, finals: list[float]) -> dict[str, Any]:
        return {"system": path, "frames_dropped": 0, "haproxy_cpu_percent": 2.0,
                "errors": [], "raw": {"final_latency": finals, "turn_latency": finals,
                                      "partial_lag": [100.0]}}

    direct = [float(v) for v in range(300, 400)]
    near = [row("direct", direct[:50]), row("haproxy", [v + 4 for v in direct[:50]]),
            row("haproxy", [v + 4 for v in direct[50:]]), row("direct", direct[50:])]
    verdict, text = summary(near)
    assert verdict["added_final_p95_ms"] == pytest.approx(4.0)
    assert verdict["within_bound"]
    assert verdict["pooled"]["direct"]["final_latency"]["count"] == 100
    assert "| haproxy |" in text and "within the 10 ms bound" in text
    far, text = summary([row("direct", direct), row("haproxy", [v + 25 for v in direct])])
    assert far["added_final_p95_ms"] == pytest.approx(25.0)
    assert far["added_final_p95_ms"] > BOUND_MS
    assert not far["within_bound"] and "OVER the 10 ms bound" in text
