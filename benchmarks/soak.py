"""Soak: one real daemon under 8 real-time sessions with churn for 30 minutes.

Usage::

    PYTHONPATH=. .venv/bin/python benchmarks/soak.py [--minutes 30] [--seed 1]
        [--sessions 8] [--workers 2] [--warmup 300] [--out benchmarks/results]

One ``alfred-daemon serve`` subprocess (temporary runtime dir, loopback ports, its own
``shm_prefix``), and ``--sessions`` slots in this process. Each slot loops: open a gRPC
session with the Python client (``alfred_client``), stream real speech at real-time pace --
1-3 clips of ``loadgen.realistic_pool`` (``tests/data/long`` and the Harvard sentences,
levelled), or a ~60 s monologue of such clips -- over a -50 dBFS pink noise floor that
also fills every pause (never digital zeros), then, drawn from a seeded RNG:

* ``clean``: end the stream and wait for every final and session_closed;
* ``abandon``: drop the connection mid-stream and walk away (the daemon must close the
  session itself once the resume window passes);
* ``resume``: drop the connection mid-stream; the client reconnects with its resume token,
  re-sends what the daemon had not confirmed, and finishes cleanly.

A dropped connection is a real one: each slot reaches the daemon through its own loopback
TCP relay (:class:`CuttableRelay`) whose sockets are aborted, as a network failure does,
so the client sees a broken stream rather than an orderly end.

Checks, per cleanly finished or resumed session: a final for every clip streamed (finals
are attributed to clips by their midpoint), the WER of its joined finals against the joined
references (Whisper's English normaliser on both) at most :data:`WER_BOUND` (sessions of
:data:`WER_MIN_WORDS` words or more; each outcome's pooled WER too), event sequence
numbers 1..n without a gap or a duplicate across a resume, and session_closed received; a
resumed session must really have resumed. Over the run: the daemon tree's PSS (supervisor +
workers), open fds and threads at the start of the measured run (after ``--warmup`` s of the
same load, which the run does not count), at 1/3, 2/3 and the end of it (10, 20, 30 min by
default) and every 30 s for a series; PSS drift (end vs start)
at most :data:`PSS_DRIFT_MAX`; fds and threads flat (:data:`IDLE_SLACK`,
:data:`THREADS_SLACK`); every abandoned session closed by the daemon; after SIGTERM, exit
code 0, no worker left, nothing under the daemon's ``shm_prefix`` in /dev/shm, and no
traceback in its log.
Writes ``soak.json`` (every figure) and ``soak.txt`` (the table and the checks) to ``--out``;
exits 1 if a check failed.

The daemon helpers (``start_daemon``, ``Daemon.pss_mb``, ``stop_daemon``, ``reap``, ``wer``)
are the test suite's (``tests/grpc_helpers.py``), so the run needs the repository root on
``PYTHONPATH`` and the dev extra (pytest) installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import random
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import jiwer
import numpy as np
import numpy.typing as npt
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from alfred_client import AsyncClient, StreamError
from load_report import host_info, host_line
from loadgen import (
    PAUSE_S,
    RATE,
    REPO,
    SHARED_AUDIO,
    Clip,
    noise_floor,
    realistic_pool,
    stop_like_ctrl_c_on_sigterm,
    to_pcm,
)

from tests.grpc_helpers import STEADY_LADDER_ENV, Daemon, reap, start_daemon, stop_daemon, wer

OUTCOMES = ("clean", "abandon", "resume")
MONOLOGUE_S = 60.0
MONOLOGUE_SHARE = 0.25
"""Share of sessions that stream a ~60 s monologue rather than 1-3 clips."""
LEAD_S = (0.3, 1.0)
"""Noise before the first word (uniform)."""
TAIL_S = 2.5
"""Noise after the last word, so its utterance ends in the stream, as in a live call."""
CUT_AT = (0.3, 0.8)
"""Where in the stream an abandon or a resume drops the connection (share of its frames)."""
FRAME = 320
FRAME_S = FRAME / RATE
NOISE_BANK_S = 150.0
"""One noise floor is generated and sliced at random offsets: generating it per session
would cost the client's CPU what the 2-core machine's daemon needs."""
REFUSED_BACKOFF_S = 2.0
"""Pause before a slot's next session after the daemon refused one."""
SESSION_SLACK_S = 90.0
"""A session may take this long beyond its audio (finals, a resume) before it is cut."""
SAMPLE_EVERY_S = 30.0
MARK_READINGS = 31
READING_GAP_S = 2.0
"""A mark's PSS is the median of :data:`MARK_READINGS` readings this far apart, ending at
the mark (60 s): a worker's PSS follows each decode by tens of MB, up to 140 MB for a batch
of long windows (its lanes hand freed heap back after every job), so a reading, or a few
seconds of them, says more about the decodes in flight than about the trend."""
WER_BOUND = 0.35
"""Held to by each session of at least :data:`WER_MIN_WORDS` reference words, and by each
outcome's pooled WER."""
WER_MIN_WORDS = 20
"""Below this many words one slip of the model ("tear a thin sheet ... pad" heard as
"Terra thin sheet ... pan": 0.38) passes the bound; such sessions count in the pooled WER
and are listed, not failed. A pipeline fault (audio lost or doubled across a resume) shows
as a clip without a final or in the longer sessions."""
PSS_DRIFT_MAX = 0.05
IDLE_SLACK = 2
"""Flat fds: with no session open, after the load, at most this many more than with no
session open after the warm-up sessions. Under load fds follow the sessions open (each open
session holds its ring's fd in the supervisor and in every worker that attached it, and an
abandoned one stays open for the resume window), so the loaded figures are reported with
the sessions open rather than compared."""
THREADS_SLACK = 4
"""Flat threads: start and end of the load, and idle before and after it, at most this far
apart. Threads do not follow sessions, but the supervisor's asyncio executor (its PSS
sampling) starts threads on demand up to min(32, cores + 4), so a few may appear late."""


# ----------------------------------------------------------------------------- audio


@functools.cache
def _whisper_normaliser() -> Callable[[str], str]:
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    norm: Callable[[str], str] = EnglishTextNormalizer({})  # type: ignore[no-untyped-call]
    return norm


def whisper_norm(text: str) -> str:
    """Whisper's English normaliser, then "one" as "1" and each run of all-digit words
    joined into one: the normaliser reads "one two three" as "123" but "1. 2. 3." as
    "one 2 3" (it keeps a lone one as a word)."""
    words: list[str] = []
    for word in _whisper_normaliser()(text).split():
        w = "1" if word == "one" else word
        if w.isdigit() and words and words[-1].isdigit():
            words[-1] += w
        else:
            words.append(w)
    return " ".join(words)


def whisper_wer(reference: str, hypothesis: str) -> float:
    """WER after :func:`whisper_norm` on both sides (as tests/integration/test_streaming_real.py
    scores, with Whisper's normaliser): spelled-out numbers in the references against
    Whisper's digits ("fourteen fifty five" / "1455") are formatting, not lost words."""
    return float(jiwer.wer(whisper_norm(reference), whisper_norm(hypothesis) or "-"))


def references() -> dict[str, str]:
    """Reference transcript of every corpus clip, by file name."""
    out: dict[str, str] = {}
    for manifest in (SHARED_AUDIO / "manifest.json", SHARED_AUDIO / "long" / "manifest.json"):
        for u in json.loads(manifest.read_text())["utterances"]:
            out[str(u["file"])] = str(u["transcript"])
    return out


@dataclass(frozen=True)
class Plan:
    """One session: its audio, where each clip lies in it, and how it ends."""

    pcm: bytes
    clips: list[tuple[str, int, int]]
    """Clip name, start ms and end ms (the end of its following pause) in the stream."""
    kind: str
    """``clips`` or ``monologue``."""
    outcome: str
    cut_frame: int | None
    """Frame index before which the connection drops (abandon, resume)."""

    @property
    def frames(self) -> list[bytes]:
        step = FRAME * 2
        return [self.pcm[i : i + step] for i in range(0, len(self.pcm), step)]

    @property
    def seconds(self) -> float:
        return len(self.pcm) / 2 / RATE


def plan_session(rng: random.Random, pool: tuple[Clip, ...],
                 noise: npt.NDArray[np.float64], *, warm_up: bool = False) -> Plan:
    """Audio and ending for one session, from ``rng`` alone (the same seed, the same run).
    ``warm_up``: one clip, ended cleanly."""
    monologue = rng.random() < MONOLOGUE_SHARE and not warm_up
    lead = int(rng.uniform(*LEAD_S) * RATE)
    parts: list[npt.NDArray[np.float32]] = [np.zeros(lead, np.float32)]
    pos = lead
    clips: list[tuple[str, int, int]] = []
    n_clips = 1 if warm_up else rng.randint(1, 3)
    for _ in range(1000):  # bounded: a monologue of 60 s takes ~10 clips
        if (monologue and pos >= MONOLOGUE_S * RATE) or (not monologue and len(clips) >= n_clips):
            break
        clip = pool[rng.randrange(len(pool))]
        pause = int(rng.uniform(*PAUSE_S) * RATE)
        end = pos + clip.audio.size + pause
        clips.append((clip.name, pos * 1000 // RATE, end * 1000 // RATE))
        parts += [clip.audio, np.zeros(pause, np.float32)]
        pos += clip.audio.size + pause
    parts.append(np.zeros(int(TAIL_S * RATE), np.float32))
    clean = np.concatenate(parts)
    clean = np.concatenate([clean, np.zeros((-clean.size) % FRAME, np.float32)])
    off = rng.randrange(max(1, noise.size - clean.size))
    floor = np.resize(noise[off:], clean.size)  # cycles if a session outgrows the bank
    outcome = "clean" if warm_up else rng.choice(OUTCOMES)
    n_frames = clean.size // FRAME
    cut = int(rng.uniform(*CUT_AT) * n_frames) if outcome != "clean" else None
    return Plan(to_pcm(clean + floor), clips, "monologue" if monologue else "clips",
                outcome, cut)


# ----------------------------------------------------------------------------- the network


class CuttableRelay:
    """A loopback TCP relay in front of the daemon for one session slot. :meth:`cut` aborts
    every connection through it on both sides at once (a reset, as when a network path
    fails), so client and daemon each see a broken connection, not an orderly close."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self.cuts = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if (task := asyncio.current_task()) is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        pair = {writer, up_writer}
        self._live |= pair
        try:
            await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        finally:
            self._live -= pair
            for w in pair:
                w.transport.abort()

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        # Ends with the connection (EOF, or the reset :meth:`cut` causes).
        with contextlib.suppress(OSError, ConnectionError):
            while chunk := await src.read(1 << 16):
                dst.write(chunk)
                await dst.drain()
        dst.transport.abort()

    def cut(self) -> None:
        self.cuts += 1
        for w in list(self._live):
            w.transport.abort()

    async def close(self) -> None:
        """Stop listening and end every connection; its handlers are awaited (bounded), so
        none is left for the event loop's teardown to cancel."""
        if self._server is not None:
            self._server.close()
        self.cut()
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=5.0)
        if self._server is not None:
            await self._server.wait_closed()


# ----------------------------------------------------------------------------- sessions


@dataclass
class SessionRecord:
    slot: int
    index: int
    kind: str
    outcome: str
    clips: list[str]
    seconds: float
    cut_at_s: float | None = None
    session_id: str = ""
    finals: int = 0
    clips_missing_final: list[str] = field(default_factory=list)
    wer: float | None = None
    """With Whisper's English normaliser ("42" is "forty two"): what is held to the bound."""
    wer_plain: float | None = None
    """Lower case, punctuation removed (``tests.grpc_helpers.wer``)."""
    reference_words: int = 0
    hypothesis: str = ""
    reference: str = ""
    event_sequences_ok: bool | None = None
    sequence_problem: str = ""
    resumes: int = 0
    closed: bool = False
    frames_dropped: int = 0
    refused: bool = False
    """The daemon refused to open it (the error says why)."""
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def checked(self) -> bool:
        """Cleanly finished or resumed: its finals are held to the checks."""
        return self.outcome in ("clean", "resume")

    @property
    def ok(self) -> bool:
        if self.outcome == "abandon":
            return not self.errors
        return (not self.errors and self.closed and not self.clips_missing_final
                and bool(self.event_sequences_ok) and self.wer is not None
                and (self.wer <= WER_BOUND or self.reference_words < WER_MIN_WORDS)
                and (self.outcome != "resume" or self.resumes >= 1))


def sequence_problem(seqs: list[int]) -> str:
    """Empty if ``seqs`` is exactly 1..n; otherwise what is wrong (gap, duplicate, order)."""
    if not seqs:
        return "no numbered event"
    if len(set(seqs)) != len(seqs):
        dup = sorted({s for s in seqs if seqs.count(s) > 1})
        return f"duplicate event_sequence {dup[:10]}"
    if seqs != sorted(seqs):
        return "event_sequence out of order"
    missing = sorted(set(range(1, seqs[-1] + 1)) - set(seqs))
    return f"missing event_sequence {missing[:10]}" if missing else ""


def attribute_finals(finals: list[tuple[int, int, str]],
                     clips: list[tuple[str, int, int]]) -> dict[str, list[str]]:
    """Texts of the finals ``(start_ms, end_ms, text)`` each clip received (clip name ->
    texts, in order; a clip streamed twice is keyed ``name#i``): a final belongs to the clip
    whose span (the clip and its following pause) holds its midpoint."""
    out: dict[str, list[str]] = {_clip_key(clips, i): [] for i in range(len(clips))}
    for start, end, text in finals:
        mid = (start + end) / 2
        for i, (_, a, b) in enumerate(clips):
            if a <= mid < b or (i == len(clips) - 1 and mid >= a):
                out[_clip_key(clips, i)].append(text)
                break
    return out


def _clip_key(clips: list[tuple[str, int, int]], i: int) -> str:
    return f"{clips[i][0]}#{i}"


async def run_session(plan: Plan, relay: CuttableRelay, rec: SessionRecord,
                      refs: dict[str, str]) -> None:
    frames = plan.frames
    resumable = plan.outcome != "abandon"
    finals: list[tuple[int, int, str]] = []
    seqs: list[int] = []
    gone = asyncio.Event()

    async def paced() -> AsyncIterator[bytes]:
        t0 = time.monotonic()
        for k, frame in enumerate(frames):
            if k == plan.cut_frame:
                rec.cut_at_s = round(k * FRAME_S, 2)
                relay.cut()
                if not resumable:
                    await gone.wait()  # abandoned: nothing more is sent, nor an end
                    return
            await asyncio.sleep(max(0.0, t0 + k * FRAME_S - time.monotonic()))
            yield frame

    async with AsyncClient(relay.target, max_resumes=3 if resumable else 0) as client:
        try:
            async for ev in client.stream(paced(), RATE):
                if ev.event_sequence:
                    seqs.append(ev.event_sequence)
                if ev.type == "session_started":
                    rec.session_id = client.session_id
                    rec.resumes += bool(ev.data.get("resumed"))
                elif ev.type == "final_transcription":
                    finals.append((int(ev.data.get("start_ms", 0)), ev.audio_offset_ms,
                                   str(ev.data.get("text", ""))))
                elif ev.type == "frames_dropped":
                    rec.frames_dropped += int(ev.data.get("frames", 0))
                elif ev.type == "session_closed":
                    rec.closed = True
        except StreamError as exc:
            rec.refused = not rec.session_id
            if resumable or rec.cut_at_s is None:
                rec.errors.append(str(exc))
        finally:
            gone.set()
    rec.finals = len(finals)
    if not rec.checked:
        return
    problem = sequence_problem(seqs)
    rec.event_sequences_ok, rec.sequence_problem = not problem, problem
    got = attribute_finals(finals, plan.clips)
    rec.clips_missing_final = [k for k, texts in got.items() if not any(t.strip() for t in texts)]
    rec.reference = " ".join(refs[name] for name, _, _ in plan.clips)
    rec.hypothesis = " ".join(t for _, _, t in finals)
    rec.reference_words = len(rec.reference.split())
    rec.wer = round(whisper_wer(rec.reference, rec.hypothesis), 4)
    rec.wer_plain = round(wer(rec.reference, rec.hypothesis), 4)


@dataclass(frozen=True)
class Corpus:
    """What every slot draws its sessions from."""

    pool: tuple[Clip, ...]
    noise: npt.NDArray[np.float64]
    refs: dict[str, str]


async def warm_up(daemon: Daemon, relays: list[CuttableRelay], corpus: Corpus,
                  seed: int, records: list[SessionRecord]) -> dict[str, Any]:
    """One short clean session per slot at once, then the idle sample once they closed.

    What the first sessions start once and keep stays out of the idle comparison: the
    resource tracker the supervisor starts with its first shared-memory segment (a process
    and a pipe), gRPC's connection machinery; with every slot at once, every worker has
    attached a ring. Their records (slot -1) are checked like any clean session's."""
    rng = random.Random(seed - 1)
    plans = [plan_session(rng, corpus.pool, corpus.noise, warm_up=True) for _ in relays]
    recs = [SessionRecord(-1, i, p.kind, p.outcome, [c for c, _, _ in p.clips], p.seconds)
            for i, p in enumerate(plans)]
    await asyncio.wait_for(asyncio.gather(*(run_session(p, r, rec, corpus.refs)
                                            for p, r, rec in zip(plans, relays, recs,
                                                                 strict=True))),
                           max(p.seconds for p in plans) + SESSION_SLACK_S)
    records += recs
    for _ in range(30):  # bounded: 15 s for the sessions to be gone
        if await sessions_active(daemon) == 0:
            break
        await asyncio.sleep(0.5)
    return await sample(daemon, time.monotonic(), "idle before", MARK_READINGS)


async def slot_loop(slot: int, relay: CuttableRelay, corpus: Corpus, *, seed: int,
                    deadline: float, records: list[SessionRecord]) -> None:
    """Sessions back to back until ``deadline`` (bounded in count too)."""
    rng = random.Random(seed * 1000 + slot)
    max_sessions = math.ceil((deadline - time.monotonic()) / 3.0) + 1  # none is under 3 s
    for index in range(max_sessions):
        if time.monotonic() >= deadline:
            break
        plan = plan_session(rng, corpus.pool, corpus.noise)
        rec = SessionRecord(slot, index, plan.kind, plan.outcome,
                            [name for name, _, _ in plan.clips], round(plan.seconds, 2))
        records.append(rec)
        t = time.monotonic()
        try:
            await asyncio.wait_for(run_session(plan, relay, rec, corpus.refs),
                                   plan.seconds + SESSION_SLACK_S)
        except TimeoutError:
            rec.errors.append(f"not done within {plan.seconds + SESSION_SLACK_S:.0f} s")
        except Exception as exc:  # recorded: one broken session must not end the soak
            rec.errors.append(f"{type(exc).__name__}: {exc}")
        rec.wall_s = round(time.monotonic() - t, 2)
        if rec.refused:
            await asyncio.sleep(REFUSED_BACKOFF_S)


# ----------------------------------------------------------------------------- sampling


def tree_snapshot(daemon: Daemon) -> dict[str, dict[str, float]]:
    """PSS (MB), open fds and threads of each process of the daemon's tree, keyed
    ``supervisor`` or ``child[pid]`` (its workers, and the resource tracker that the
    supervisor starts with its first shared-memory segment)."""
    out: dict[str, dict[str, float]] = {}
    for p in daemon.tree():
        with contextlib.suppress(psutil.Error):
            name = "supervisor" if p.pid == daemon.pid else f"child[{p.pid}]"
            out[name] = {"pss_mb": p.memory_full_info().pss / 1e6, "fds": p.num_fds(),
                         "threads": p.num_threads()}
    return out


def fd_kinds(daemon: Daemon) -> dict[str, dict[str, int]]:
    """What each process of the tree holds open, counted by kind (``socket``, ``pipe``,
    ``anon_inode:[eventpoll]``, a path...): compared before and after the load, it names
    what a leak leaks."""
    out: dict[str, dict[str, int]] = {}
    for p in daemon.tree():
        name = "supervisor" if p.pid == daemon.pid else f"child[{p.pid}]"
        kinds: dict[str, int] = {}
        fd_dir = Path(f"/proc/{p.pid}/fd")
        with contextlib.suppress(OSError):
            for entry in fd_dir.iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(entry)
                    kind = (target.split(":", 1)[0]
                            if target.startswith(("socket:", "pipe:")) else target)
                    kinds[kind] = kinds.get(kind, 0) + 1
        out[name] = dict(sorted(kinds.items()))
    return out


def fd_diff(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
            ) -> dict[str, dict[str, int]]:
    """Per process, the kinds whose count changed (after minus before)."""
    out: dict[str, dict[str, int]] = {}
    for proc in sorted(set(before) | set(after)):
        b, a = before.get(proc, {}), after.get(proc, {})
        changed = {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b))
                   if a.get(k, 0) != b.get(k, 0)}
        if changed:
            out[proc] = changed
    return out


async def sessions_active(daemon: Daemon) -> int | None:
    try:
        async with AsyncClient(daemon.target) as c:
            status = await asyncio.wait_for(c.status(), 5.0)
        return int(status["pipelineState"]["sessionsActive"])
    except Exception:  # a sample without the figure rather than a failed soak
        return None


async def sample(daemon: Daemon, t0: float, label: str, readings: int = 1) -> dict[str, Any]:
    """One point: PSS is the median of ``readings`` readings :data:`READING_GAP_S` apart
    (total and per process), fds and threads those of the last reading."""
    snaps: list[dict[str, dict[str, float]]] = []
    for i in range(readings):
        if i:
            await asyncio.sleep(READING_GAP_S)
        snaps.append(await asyncio.to_thread(tree_snapshot, daemon))
    last = snaps[-1]
    out: dict[str, Any] = {
        "label": label, "t_s": round(time.monotonic() - t0, 1),
        "pss_mb": round(statistics.median(sum(p["pss_mb"] for p in snap.values())
                                          for snap in snaps), 1),
        "fds": int(sum(p["fds"] for p in last.values())),
        "threads": int(sum(p["threads"] for p in last.values())),
        "processes": len(last),
        "by_process": {name: {"pss_mb": round(statistics.median(
                                  snap[name]["pss_mb"] for snap in snaps if name in snap), 1),
                              "fds": int(p["fds"]), "threads": int(p["threads"])}
                       for name, p in last.items()}}
    if label.startswith("idle"):
        out["fd_kinds"] = await asyncio.to_thread(fd_kinds, daemon)
    out["sessions_active"] = await sessions_active(daemon)
    return out


def pss_slope(series: list[dict[str, Any]], from_s: float) -> float:
    """Least-squares slope of the PSS series from ``from_s`` on, in MB per 10 minutes: a
    leak shows as a steady slope, a worker's decode-by-decode swing only as scatter."""
    pts = [(p["t_s"], p["pss_mb"]) for p in series if p["t_s"] >= from_s]
    if len(pts) < 3:
        return float("nan")
    slope, _ = statistics.linear_regression([t for t, _ in pts], [v for _, v in pts])
    return round(slope * 600.0, 2)


def mark_times(total_s: float, warmup_s: float) -> list[tuple[str, float]]:
    """``start`` at the end of the warm-up, then 1/3, 2/3 and the end of the measured run
    (10, 20 and 30 min of a 30-minute soak), labelled in minutes of the measured run; times
    count from the start of the load, and each mark's readings end at its time."""
    return [("start", warmup_s),
            *((f"{total_s * f / 60:.3g} min", warmup_s + total_s * f)
              for f in (1 / 3, 2 / 3, 1.0))]


async def sampler(daemon: Daemon, t0: float, *, total_s: float, warmup_s: float,
                  series: list[dict[str, Any]], marks: list[dict[str, Any]]) -> None:
    """The series every :data:`SAMPLE_EVERY_S` and the marks, until the run's end."""
    pending = mark_times(total_s, warmup_s)
    window = (MARK_READINGS - 1) * READING_GAP_S
    next_series = 0.0
    # Bounded: ticks of >= 0.5 s until the end.
    for _ in range(int((warmup_s + total_s) / 0.5) + 10):
        now = time.monotonic() - t0
        if pending and now >= pending[0][1] - window:
            label, _ = pending.pop(0)
            marks.append(await sample(daemon, t0, label, MARK_READINGS))
            series.append(marks[-1])
        elif now >= next_series:
            series.append(await sample(daemon, t0, "series"))
            next_series = now + SAMPLE_EVERY_S
        if not pending:
            return
        await asyncio.sleep(0.5)


# ----------------------------------------------------------------------------- the run


def shm_left(prefix: str) -> list[str]:
    return sorted(p.name for p in Path("/dev/shm").glob(f"{prefix}-*"))


def log_problems(daemon: Daemon) -> dict[str, Any]:
    text = daemon.log.read_text(errors="replace") if daemon.log.is_file() else ""
    lines = text.splitlines()
    return {"tracebacks": sum("Traceback (most recent call last)" in ln for ln in lines),
            "error_lines": [ln for ln in lines if " ERROR " in ln or " CRITICAL " in ln][:20],
            "log_lines": len(lines)}


def category(records: list[SessionRecord], outcome: str) -> dict[str, Any]:
    recs = [r for r in records if r.outcome == outcome]
    out: dict[str, Any] = {"sessions": len(recs), "failed": sum(not r.ok for r in recs),
                           "errors": sum(bool(r.errors) for r in recs),
                           "monologues": sum(r.kind == "monologue" for r in recs),
                           "audio_s": round(sum(r.seconds for r in recs), 1),
                           "frames_dropped": sum(r.frames_dropped for r in recs)}
    if outcome == "abandon":
        return out
    out["clips"] = sum(len(r.clips) for r in recs)
    out["finals"] = sum(r.finals for r in recs)
    out["clips_missing_final"] = sum(len(r.clips_missing_final) for r in recs)
    out["sequence_problems"] = sum(r.event_sequences_ok is False for r in recs)
    out["not_closed"] = sum(not r.closed for r in recs)
    scored = [r for r in recs if r.wer is not None]
    out["wer_pooled"] = (round(whisper_wer(" ".join(r.reference for r in scored),
                                   " ".join(r.hypothesis for r in scored)), 4)
                         if scored else None)
    out["wer_plain_pooled"] = (round(wer(" ".join(r.reference for r in scored),
                                         " ".join(r.hypothesis for r in scored)), 4)
                               if scored else None)
    out["wer_max"] = max((r.wer for r in scored if r.wer is not None), default=None)
    out["over_wer_bound"] = sum(r.wer is not None and r.wer > WER_BOUND for r in scored)
    if outcome == "resume":
        out["resumes"] = sum(r.resumes for r in recs)
        out["not_resumed"] = sum(r.resumes == 0 for r in recs)
    return out


async def soak(args: argparse.Namespace, daemon: Daemon, shm_prefix: str
               ) -> tuple[dict[str, Any], list[SessionRecord]]:
    total_s = args.minutes * 60.0
    warmup_s = args.warmup
    corpus = Corpus(realistic_pool(), noise_floor(args.seed, int(NOISE_BANK_S * RATE)),
                    references())
    relays = [CuttableRelay(daemon.port) for _ in range(args.sessions)]
    records: list[SessionRecord] = []
    series: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    try:
        for r in relays:
            await r.start()
        idle_before = await warm_up(daemon, relays, corpus, args.seed, records)
        t0 = time.monotonic()
        sampling = asyncio.create_task(sampler(daemon, t0, total_s=total_s, warmup_s=warmup_s,
                                               series=series, marks=marks))
        slots = [asyncio.create_task(slot_loop(i, relays[i], corpus, seed=args.seed,
                                               deadline=t0 + warmup_s + total_s,
                                               records=records))
                 for i in range(args.sessions)]
        await asyncio.wait_for(sampling, warmup_s + total_s + 120)
        # The slots finish the session each is in (bounded by its own timeout).
        await asyncio.wait_for(asyncio.gather(*slots), MONOLOGUE_S + 30 + SESSION_SLACK_S)
    finally:
        for r in relays:
            await r.close()
    # Abandoned sessions stay resumable for the resume window; then the daemon closes them.
    active: int | None = None
    drain_deadline = time.monotonic() + args.resume_window + 30
    for _ in range(int((args.resume_window + 30) / 2) + 1):
        active = await sessions_active(daemon)
        if active == 0 or time.monotonic() > drain_deadline:
            break
        await asyncio.sleep(2.0)
    idle_after = await sample(daemon, t0, "idle after", MARK_READINGS)
    async with AsyncClient(daemon.target) as c:
        status = await asyncio.wait_for(c.status(), 5.0)
    return {"series": series, "marks": marks, "idle_before": idle_before,
            "pss_slope_mb_per_10min": pss_slope(series, warmup_s),
            "idle_after": idle_after,
            "idle_fd_diff": fd_diff(idle_before["fd_kinds"], idle_after["fd_kinds"]),
            "sessions_active_at_end": active,
            "daemon_counters": status.get("counters", {}),
            "relay_cuts": sum(r.cuts for r in relays)}, records


def judge(run: dict[str, Any], records: list[SessionRecord],
          categories: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each pass criterion: ``{"pass": bool, "figure": ...}``."""
    marks = run["marks"]
    checks: dict[str, dict[str, Any]] = {}
    before, after = run["idle_before"], run["idle_after"]
    loaded = "; under load " + ", ".join(
        f"{m['label']} {m['fds']} with {m['sessions_active']} sessions open" for m in marks)
    checks["fds_flat"] = {
        "pass": after["fds"] - before["fds"] <= IDLE_SLACK,
        "figure": f"idle {before['fds']} after the warm-up, {after['fds']} after the load "
                  f"(bound +{IDLE_SLACK}); changed: {run['idle_fd_diff'] or 'nothing'}"
                  + loaded}
    dthr_idle = after["threads"] - before["threads"]
    if len(marks) >= 2:
        first, last = marks[0], marks[-1]
        drift = (last["pss_mb"] - first["pss_mb"]) / first["pss_mb"]
        checks["pss_drift"] = {"pass": drift <= PSS_DRIFT_MAX,
                               "figure": f"{drift * 100:+.1f} % ({first['pss_mb']:.0f} -> "
                                         f"{last['pss_mb']:.0f} MB; bound +{PSS_DRIFT_MAX:.0%})"}
        dthr = last["threads"] - first["threads"]
        checks["threads_flat"] = {
            "pass": abs(dthr) <= THREADS_SLACK and dthr_idle <= THREADS_SLACK,
            "figure": f"under load {first['threads']} -> {last['threads']} ({dthr:+d}; bound "
                      f"+-{THREADS_SLACK}); idle {before['threads']} -> {after['threads']} "
                      f"(bound +{THREADS_SLACK})"}
    else:
        checks["marks"] = {"pass": False, "figure": f"only {len(marks)} mark samples"}
    checked = [r for r in records if r.checked]
    missing = sum(len(r.clips_missing_final) for r in checked)
    checks["every_final"] = {
        "pass": missing == 0 and all(r.closed for r in checked) and bool(checked),
        "figure": f"{sum(len(r.clips) for r in checked)} clips in {len(checked)} clean or "
                  f"resumed sessions, {missing} without a final, "
                  f"{sum(not r.closed for r in checked)} without session_closed"}
    over = [r for r in checked if r.wer is None or r.wer > WER_BOUND]
    long_over = [r for r in over if r.wer is None or r.reference_words >= WER_MIN_WORDS]
    pooled = {o: c["wer_pooled"] for o, c in categories.items() if "wer_pooled" in c}
    checks["wer"] = {
        "pass": not long_over and all(w is not None and w <= WER_BOUND
                                      for w in pooled.values()),
        "figure": f"pooled {', '.join(f'{o} {w}' for o, w in pooled.items())} (bound "
                  f"{WER_BOUND}); {len(long_over)} sessions of >= {WER_MIN_WORDS} words over "
                  f"{WER_BOUND}; {len(over) - len(long_over)} shorter ones over it: "
                  + ("; ".join(f"{r.wer:.2f} on {r.reference_words} words" for r in over
                               if r not in long_over) or "none")}
    seq_bad = [r for r in checked if not r.event_sequences_ok]
    checks["event_sequences"] = {"pass": not seq_bad,
                                 "figure": f"{len(seq_bad)} sessions with a gap or duplicate"}
    resumed = [r for r in records if r.outcome == "resume"]
    checks["resumed"] = {"pass": all(r.resumes >= 1 for r in resumed),
                         "figure": f"{sum(r.resumes >= 1 for r in resumed)} of {len(resumed)} "
                                   "resume sessions resumed"}
    errored = [r for r in records if r.errors]
    checks["session_errors"] = {"pass": not errored,
                                "figure": f"{len(errored)} sessions with an error"}
    checks["abandoned_closed"] = {"pass": run["sessions_active_at_end"] == 0,
                                  "figure": f"{run['sessions_active_at_end']} sessions open "
                                            "after the resume window"}
    checks["exit_code"] = {"pass": run["exit_code"] == 0, "figure": run["exit_code"]}
    checks["workers_gone"] = {"pass": not run["outlived"], "figure": run["outlived"]}
    checks["dev_shm_clean"] = {"pass": not run["shm_left"], "figure": run["shm_left"] or "clean"}
    checks["no_traceback"] = {"pass": run["log"]["tracebacks"] == 0,
                              "figure": f"{run['log']['tracebacks']} tracebacks, "
                                        f"{len(run['log']['error_lines'])} ERROR lines"}
    return checks


def report(doc: dict[str, Any]) -> str:
    host = doc["host"]
    lines = [f"Soak: {doc['minutes']:g} min, {doc['sessions']} real-time session slots, "
             f"{doc['workers']} workers, seed {doc['seed']}, ladder {doc['ladder']}",
             f"Command: {doc['command']}",
             host_line(host),
             f"Started {doc['started']}, wall {doc['wall_s'] / 60:.1f} min", "",
             f"{'mark':>10} {'t (s)':>7} {'PSS MB':>8} {'superv.':>8} {'others':>8} "
             f"{'fds':>5} {'threads':>8} {'sessions':>9}"]
    for m in [doc["run"]["idle_before"], *doc["run"]["marks"], doc["run"]["idle_after"]]:
        active = "?" if m["sessions_active"] is None else m["sessions_active"]
        sup = m["by_process"].get("supervisor", {}).get("pss_mb", float("nan"))
        lines.append(f"{m['label']:>10} {m['t_s']:>7.0f} {m['pss_mb']:>8.1f} {sup:>8.1f} "
                     f"{m['pss_mb'] - sup:>8.1f} {m['fds']:>5} {m['threads']:>8} {active:>9}")
    lines += ["", f"t: seconds since the load began; the measured run starts after "
              f"{doc['warmup_s']:g} s of the same load (the 'start' mark). PSS: the daemon "
              "tree (supervisor, workers, resource tracker), median of "
              f"{MARK_READINGS} readings {READING_GAP_S:g} s apart ending at the mark; "
              "'superv.': the supervisor's own, 'others': the rest (workers, tracker; "
              "per-process figures and a 30 s series: soak.json). 'idle' rows: no session "
              "open (before: after one warm-up session per slot). Series slope over the "
              f"measured run: {doc['run'].get('pss_slope_mb_per_10min', float('nan')):+.1f} "
              "MB per 10 min (least squares over the 30 s series).",
              "", "Sessions by outcome (WER with Whisper's English normaliser):"]
    for outcome, c in doc["categories"].items():
        lines.append(f"  {outcome}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    lines += ["", "Checks:"]
    for name, c in doc["checks"].items():
        lines.append(f"  {'PASS' if c['pass'] else 'FAIL'} {name}: {c['figure']}")
    failed = doc["sessions_failed"]
    if failed:
        lines += ["", f"Failed sessions ({len(failed)}, first 10):"]
        for r in failed[:10]:
            lines.append(f"  slot {r['slot']} #{r['index']} {r['outcome']} {r['kind']} "
                         f"wer {r['wer']} missing {r['clips_missing_final']} "
                         f"seq '{r['sequence_problem']}' errors {r['errors']}")
    lines += ["", f"Overall: {'PASS' if doc['pass'] else 'FAIL'}"]
    return "\n".join(lines) + "\n"


def main() -> int:
    stop_like_ctrl_c_on_sigterm()
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sessions", type=int, default=8, help="concurrent session slots")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=300.0,
                    help="seconds of the same load before the measured run and its 'start' "
                         "mark: caches (oneDNN primitives, allocator arenas) fill in the "
                         "first minutes, and drift is about what comes after")
    ap.add_argument("--resume-window", type=float, default=30.0,
                    help="the daemon's grpc.resume_window_s (set for the run)")
    ap.add_argument("--ladder", choices=("steady", "default"), default="steady",
                    help="steady (default): hold the backpressure ladder at NORMAL, so that "
                         "a lost final is a fault, not load shedding on a busy host; "
                         "default: the daemon's own thresholds")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = ap.parse_args()
    if args.minutes <= 0 or args.sessions < 1 or args.warmup < 0:
        ap.error("--minutes and --sessions must be positive, --warmup not negative")
    args.out.mkdir(parents=True, exist_ok=True)
    host = host_info()
    print(host_line(host), flush=True)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    wall0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="alfred-soak-"))
    shm_prefix = f"soak{os.getpid()}"
    daemon = start_daemon(workdir, args.workers, env={
        **(STEADY_LADDER_ENV if args.ladder == "steady" else {}),
        "ALFRED__RUNTIME__SHM_PREFIX": shm_prefix,
        "ALFRED__GRPC__RESUME_WINDOW_S": str(args.resume_window),
        "ORT_DISABLE_TELEMETRY": "1"})
    print(f"daemon pid {daemon.pid} on {daemon.target}, log {daemon.log}", flush=True)
    try:
        run, records = asyncio.run(soak(args, daemon, shm_prefix))
    finally:
        code = stop_daemon(daemon)
        outlived = reap(daemon)
    time.sleep(0.5)  # the resource tracker unlinks a dead owner's leftovers just after it
    run.update(exit_code=code, outlived=outlived, shm_left=shm_left(shm_prefix),
               log=log_problems(daemon))
    categories = {o: category(records, o) for o in OUTCOMES}
    checks = judge(run, records, categories)
    doc: dict[str, Any] = {
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "seed": args.seed, "minutes": args.minutes, "ladder": args.ladder,
        "sessions": args.sessions,
        "workers": args.workers, "warmup_s": args.warmup,
        "host": host, "started": started, "wall_s": round(time.monotonic() - wall0, 1),
        "shm_prefix": shm_prefix, "bounds": {
            "wer": WER_BOUND, "wer_min_words": WER_MIN_WORDS, "pss_drift": PSS_DRIFT_MAX,
            "idle_fds": IDLE_SLACK, "threads": THREADS_SLACK},
        "run": run,
        "categories": categories,
        "checks": checks, "pass": all(c["pass"] for c in checks.values()),
        "sessions_failed": [asdict(r) for r in records if not r.ok],
        "sessions_all": [asdict(r) for r in records],
    }
    (args.out / "soak.json").write_text(json.dumps(doc, indent=1))
    text = report(doc)
    (args.out / "soak.txt").write_text(text)
    print(text, end="", flush=True)
    if doc["pass"]:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"daemon log kept: {daemon.log}", flush=True)
    return 0 if doc["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
