"""Scale-out (issue 17): a real HAProxy (deploy config, rendered by
``alfred_daemon.ops.haproxy``) in front of three real daemons on loopback, one worker each.

One cluster for the module, its steps in order (each restart costs a model load, so the
daemons are restarted only where a step needs another configuration):

1. 12 sessions held open through the balancer spread 4/4/4 within one;
2. a stream whose client connection is cut resumes through the balancer on the daemon that
   holds it (routed by ``alfred-daemon-id``) and no frame is lost;
3. a rolling restart under streaming load (acceptance 3): 6 sessions stream real speech
   (Harvard sentences with pauses) at real-time pace while d1, d2 and d3 are drained
   (``POST /drain``) and started again one at a time, each back in HAProxy before the
   next drains. Each drained session ends at an utterance boundary and the client carries
   on on another daemon with the frames that one did not take: every sentence's final
   arrives once, none is missing, and every stream ends cleanly;
4. d1 restarted with a session limit of 1 and d3 with its agent reporting 2%: once d1 is
   full (agent ``down``), new sessions, which leastconn alone would give d1, go to d2, and
   none to the loaded d3 -- and none fails.

Held sessions (steps 1, 2, 4) carry silence only (VAD work, no decodes), so that the
2-core machine is not the thing under test; every wait is bounded in time and every loop
in count.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import io
import itertools
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from alfred_client import AsyncClient, SessionOptions, StreamError
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

from alfred_daemon.ops.haproxy import Backend, render

from ..conftest import REPO, Utterance
from ..grpc_helpers import (
    FRAME_BYTES,
    FRAME_S,
    JFK,
    JFK_REFERENCE,
    RATE,
    STEADY_LADDER_ENV,
    Daemon,
    daemon_executable,
    frames_of,
    free_port,
    pcm_ms,
    reap,
    silence_pcm,
    stop_daemon,
    utterance_pcm,
    wait_serving,
    wav_pcm,
    wer,
)

pytestmark = pytest.mark.slow

HOLD_FRAME_EVERY_S = 0.5
"""A held session gets 20 ms of silence this often (limits.firstAudioTimeout and
idleSessionTimeout would close a session that gets nothing)."""
ROUTE_TIMEOUT_S = 30.0
"""How long HAProxy may take to see an agent's or health check's new answer."""


# ----------------------------------------------------------------------------- the cluster


@dataclass
class Node:
    backend: Backend
    workdir: Path
    daemon: Daemon | None = None
    starts: int = 0

    @property
    def name(self) -> str:
        return self.backend.name


def launch(node: Node, env: dict[str, str] | None = None) -> None:
    """Start the node's daemon (not waiting for it); ``env``: extra variables."""
    b = node.backend
    node.starts += 1
    log = node.workdir / f"daemon-{node.starts}.log"
    node.workdir.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [daemon_executable(), "serve", "--listen", f"127.0.0.1:{b.grpc_port}",
             "--http-port", str(b.http_port), "--runtime-dir", str(node.workdir / "run"),
             "--workers", "1"],
            cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, **STEADY_LADDER_ENV, "ALFRED__RUNTIME__DAEMON_ID": b.name,
                 "ALFRED__HTTP__AGENT_CHECK_PORT": str(b.agent_port),
                 "ALFRED__RUNTIME__DRAIN_GRACE": "10", **(env or {})})
    node.daemon = Daemon(proc, b.grpc_port, node.workdir, log, b.http_port)


def ready(node: Node) -> None:
    import psutil

    assert node.daemon is not None
    wait_serving(node.daemon)
    node.daemon.children = psutil.Process(node.daemon.pid).children(recursive=True)


def drain(node: Node) -> dict[str, object]:
    """POST /drain on the daemon itself; it must exit 0 (drained) and leave no worker."""
    d = node.daemon
    assert d is not None
    req = urllib.request.Request(f"http://127.0.0.1:{d.http_port}/drain", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 202
        answer: dict[str, object] = json.loads(r.read())
    code = d.proc.wait(timeout=60)
    assert code == 0, f"{node.name} exited {code} after /drain:\n{d.log_tail()}"
    assert not reap(d), f"{node.name}'s workers outlived it"
    node.daemon = None
    return answer


def restart(nodes: list[Node], env: dict[str, dict[str, str]]) -> None:
    """Drain ``nodes`` (in parallel: each drain waits only for its own sessions), then
    start each with ``env[name]`` and wait until they serve."""
    for node in nodes:
        drain(node)
    for node in nodes:
        launch(node, env.get(node.name))
    for node in nodes:
        ready(node)


@dataclass
class Cluster:
    nodes: list[Node]
    front: str
    stats_socket: Path
    haproxy: subprocess.Popen[bytes]
    haproxy_log: Path
    daemons_seen: collections.Counter[str] = field(default_factory=collections.Counter)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def stats(self) -> dict[str, dict[str, str]]:
        """HAProxy's view of the gRPC backend's servers (``show stat``), by name."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.stats_socket))
            s.sendall(b"show stat\n")
            chunks = []
            for _ in range(1000):
                chunk = s.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        text = b"".join(chunks).decode().lstrip("# ")
        return {row["svname"]: row for row in csv.DictReader(io.StringIO(text))
                if row["pxname"] == "alfred_grpc" and row["svname"] not in
                ("FRONTEND", "BACKEND")}

    def wait_for(self, what: str, condition: Callable[[dict[str, dict[str, str]]], bool],
                 timeout: float = ROUTE_TIMEOUT_S) -> dict[str, dict[str, str]]:
        stats: dict[str, dict[str, str]] = {}
        for _ in range(int(timeout / 0.1)):
            stats = self.stats()
            if condition(stats):
                return stats
            time.sleep(0.1)
        view = {k: (v["status"], v["weight"], v["scur"]) for k, v in stats.items()}
        pytest.fail(f"HAProxy did not see {what} within {timeout:.0f} s: {view}")


def all_up(stats: dict[str, dict[str, str]]) -> bool:
    return len(stats) == 3 and all(s["status"] == "UP" and int(s["weight"]) >= 50
                                   for s in stats.values())


def haproxy_binary() -> str:
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("haproxy is not installed: make setup apt-installs it")
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("scale-out")
    nodes = [Node(Backend(f"d{i}", "127.0.0.1", free_port(), free_port(), free_port()),
                  base / f"d{i}") for i in (1, 2, 3)]
    front_grpc, front_http = free_port(), free_port()
    sock = base / "haproxy.sock"
    cfg = base / "haproxy.cfg"
    cfg.write_text(render([n.backend for n in nodes], grpc_port=front_grpc,
                          http_port=front_http, stats_socket=str(sock)))
    log = base / "haproxy.log"
    proxy: subprocess.Popen[bytes] | None = None
    try:
        for node in nodes:
            launch(node)
        for node in nodes:
            ready(node)
        with log.open("wb") as out:
            proxy = subprocess.Popen([haproxy_binary(), "-db", "-f", str(cfg)],
                                     stdin=subprocess.DEVNULL, stdout=out,
                                     stderr=subprocess.STDOUT)
        for _ in range(100):
            if sock.exists() or proxy.poll() is not None:
                break
            time.sleep(0.1)
        assert sock.exists(), f"haproxy did not start:\n{log.read_text(errors='replace')}"
        c = Cluster(nodes, f"127.0.0.1:{front_grpc}", sock, proxy, log)
        c.wait_for("three daemons UP at full weight", all_up)
        yield c
    finally:
        if proxy is not None:
            proxy.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proxy.wait(timeout=10)
            if proxy.poll() is None:
                proxy.kill()
                proxy.wait(timeout=10)
        for node in nodes:
            if node.daemon is not None:
                stop_daemon(node.daemon)
                reap(node.daemon)


# ----------------------------------------------------------------------------- sessions


@dataclass
class Held:
    """A session held open through the balancer on silence; ``daemon`` from the
    ``alfred-daemon-id`` the daemon answered with."""

    call: Any
    feeder: asyncio.Task[None]
    stop: asyncio.Event
    daemon: str = ""
    session_id: str = ""


async def hold(stub: pb_grpc.AlfredStub, pin: str | None = None) -> Held:
    """Open a session (pinned to daemon ``pin`` by header, or left to the balancer) and
    return once it started; it is fed silence until ``close_all``."""
    stop = asyncio.Event()
    metadata = (("alfred-daemon-id", pin),) if pin else None
    call: Any = cast(Any, stub).StreamSession(metadata=metadata)
    await call.write(pb.ClientMessage(config=pb.SessionConfig(sample_rate_hz=RATE)))

    async def feed() -> None:
        for seq in range(1, int(600 / HOLD_FRAME_EVERY_S)):
            await call.write(pb.ClientMessage(audio=pb.AudioFrame(sequence=seq,
                                                                  pcm=bytes(FRAME_BYTES))))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), HOLD_FRAME_EVERY_S)
            if stop.is_set():
                break
        await call.done_writing()

    first = await asyncio.wait_for(call.read(), 30)
    assert isinstance(first, pb.ServerEvent) and first.WhichOneof("event") == \
        "session_started", f"session not started: {first!r}"
    metadata_in = dict(await asyncio.wait_for(call.initial_metadata(), 30))
    held = Held(call, asyncio.create_task(feed()), stop,
                daemon=str(metadata_in.get("alfred-daemon-id", "")),
                session_id=first.session_started.session_id)
    return held


async def close_all(sessions: list[Held]) -> None:
    """Half-close every held session and read it to its session_closed; each must end
    cleanly (status OK)."""
    async def finish(h: Held) -> None:
        h.stop.set()
        await h.feeder
        reasons = []
        for _ in range(10_000):
            msg = await h.call.read()
            if msg is grpc.aio.EOF:
                break
            if msg.WhichOneof("event") == "session_closed":
                reasons.append(msg.session_closed.reason)
        assert await h.call.code() == grpc.StatusCode.OK, await h.call.details()
        assert reasons == ["finished"], reasons

    await asyncio.wait_for(asyncio.gather(*(finish(h) for h in sessions)), 60)


# ----------------------------------------------------------------------------- the steps


def test_twelve_sessions_spread_evenly(cluster: Cluster) -> None:
    async def main() -> collections.Counter[str]:
        async with grpc.aio.insecure_channel(cluster.front) as channel:
            stub = pb_grpc.AlfredStub(channel)
            sessions = []
            for _ in range(12):
                sessions.append(await hold(stub))
            spread = collections.Counter(h.daemon for h in sessions)
            # HAProxy's count of open streams agrees with the daemons' answers.
            stats = cluster.stats()
            assert {k: int(v["scur"]) for k, v in stats.items()} == dict(spread), stats
            await close_all(sessions)
            return spread

    spread = asyncio.run(main())
    assert set(spread) == {"d1", "d2", "d3"}, spread
    assert all(3 <= n <= 5 for n in spread.values()), f"12 sessions spread as {spread}"


class Relay:
    """A TCP relay between the client and HAProxy whose connections can be cut, as a
    network failure between client and balancer would."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.transports: list[asyncio.WriteTransport] = []
        self.server: asyncio.Server | None = None
        self.port = 0
        self.accepted = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        self.transports += [writer.transport, up_writer.transport]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Reset every relayed connection (the listener stays: the client reconnects)."""
        for t in self.transports:
            t.abort()
        self.transports.clear()

    async def stop(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


def test_resume_through_the_balancer_reaches_the_same_daemon_and_loses_no_frame(
        cluster: Cluster) -> None:
    pcm = wav_pcm(JFK)

    async def main() -> tuple[list[str], list[dict[str, object]], int, str]:
        relay = Relay(cluster.front)
        await relay.start()
        types: list[str] = []
        data: list[dict[str, object]] = []
        try:
            async with AsyncClient(f"127.0.0.1:{relay.port}", max_resumes=10) as client:
                cut_done = False
                async for ev in client.stream_pcm(pcm, RATE, realtime=True):
                    types.append(ev.type)
                    data.append({"type": ev.type, "offset": ev.audio_offset_ms, **ev.data})
                    # Cut once speech is under way (2 s into the clip's 11 s).
                    if not cut_done and ev.audio_offset_ms >= 2000:
                        cut_done = True
                        relay.cut()
                token = client.resume_token
        finally:
            await relay.stop()
        return types, data, relay.accepted, token

    types, data, accepted, token = asyncio.run(main())
    assert accepted >= 2, "the client never reconnected: the cut did not happen"
    started = [d for d in data if d["type"] == "session_started"]
    assert [d["resumed"] for d in started] == [False, True], started
    assert len({d["session_id"] for d in started}) == 1
    holder = token.split(".", 1)[0]
    assert holder in {"d1", "d2", "d3"}, token
    finals = [str(d["text"]) for d in data if d["type"] == "final_transcription"]
    assert wer(JFK_REFERENCE, " ".join(finals)) <= 0.1, finals
    closed = [d for d in data if d["type"] == "session_closed"]
    assert len(closed) == 1 and closed[0]["reason"] == "finished", closed
    # Every frame reached the daemon once: the session's position is the clip's length
    # (within the last partial 32 ms window, padded when the session finishes).
    clip_ms = len(pcm) // 2 * 1000 // RATE
    assert clip_ms <= int(str(closed[0]["offset"])) <= clip_ms + 32, (closed, clip_ms)
    assert types.count("session_closed") == 1


SENTENCE_GAP_S = 2.0
"""Silence after each sentence of a rolling-restart session: a pause in which a draining
daemon can end the session between two utterances."""
ROLLING_SESSIONS = 6
MAX_STREAM_S = 300.0
"""A rolling-restart session's audio is cut here whatever happens (a bound, never reached
when the restarts take the usual minute or two)."""


@dataclass
class Talk:
    """One rolling-restart session: what it sent (sentence, stream offset) and got."""

    name: str
    sentences: list[tuple[str, float, float]] = field(default_factory=list)
    """(transcript, start ms, end ms) in the stream's audio, in the order sent."""
    events: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


async def talk(target: str, t: Talk, corpus: list[tuple[str, bytes]], first: int,
               restarts_done: asyncio.Event) -> None:
    """Stream sentences from ``corpus`` (starting at ``first``, cycling) at real-time pace,
    each followed by a pause, until the rolling restart is over, then half-close."""
    gap = silence_pcm(SENTENCE_GAP_S)

    async def frames() -> AsyncIterator[bytes]:
        t0 = time.monotonic()
        sent = 0
        for k in range(int(MAX_STREAM_S / 1.5)):
            if restarts_done.is_set() and k >= len(corpus):
                break
            text, pcm = corpus[(first + k) % len(corpus)]
            start = sent * FRAME_S * 1000
            t.sentences.append((text, start, start + pcm_ms(pcm)))
            audio = pcm + gap
            for frame in frames_of(audio + bytes(-len(audio) % FRAME_BYTES)):
                yield frame
                sent += 1
                await asyncio.sleep(max(0.0, t0 + sent * FRAME_S - time.monotonic()))
            if sent * FRAME_S >= MAX_STREAM_S:
                break

    try:
        async with AsyncClient(target, max_resumes=20) as client:
            # Finals only (no partials, no Smart Turn): what is checked here is the finals,
            # and 6 real-time sessions on 3 one-worker daemons on 2 shared cores are
            # already near the machine's capacity without them.
            async for ev in client.stream(frames(), RATE, options=SessionOptions(
                    partials=False, turn_enabled=False)):
                t.events.append({"type": ev.type, "base": ev.session_base_ms,
                                 "offset": ev.audio_offset_ms, **ev.data})
    except StreamError as exc:
        t.error = str(exc)


def sentence_finals(t: Talk) -> list[list[str]]:
    """Each sentence's finals: those whose speech starts (in the stream's audio) within the
    sentence or the pause half before or after it."""
    half = SENTENCE_GAP_S * 1000 / 2
    out: list[list[str]] = [[] for _ in t.sentences]
    stray = []
    for ev in t.events:
        if ev["type"] != "final_transcription" or not str(ev["text"]).strip():
            continue
        at = int(ev["start_ms"]) + int(ev["base"])
        for i, (_, start, end) in enumerate(t.sentences):
            if start - half <= at < end + half:
                out[i].append(str(ev["text"]))
                break
        else:
            stray.append((at, ev["text"]))
    assert not stray, f"{t.name}: finals outside every sentence: {stray}"
    return out


def test_rolling_restart_under_streaming_load_delivers_every_final_once(
        cluster: Cluster, utterances: list[Utterance]) -> None:
    corpus = [(u.transcript, utterance_pcm(u)) for u in utterances]
    talks = [Talk(f"s{i}") for i in range(ROLLING_SESSIONS)]
    drained: dict[str, dict[str, object]] = {}

    def back_up(name: str) -> Callable[[dict[str, dict[str, str]]], bool]:
        # UP with a weight (the others carry the load meanwhile, so their agents may
        # report less than all_up's 50%).
        return lambda s: s[name]["status"] == "UP" and int(s[name]["weight"]) > 0

    def rolling_restart() -> None:
        for node in cluster.nodes:
            drained[node.name] = drain(node)
            launch(node)
            ready(node)
            cluster.wait_for(f"{node.name} back in HAProxy", back_up(node.name))

    async def main() -> None:
        done = asyncio.Event()
        streams = [asyncio.create_task(talk(cluster.front, t, corpus, 3 * i, done))
                   for i, t in enumerate(talks)]
        try:
            # Every session streaming (started, speech under way) before the first drain.
            for _ in range(300):
                if all(any(e["type"] == "final_transcription" for e in t.events)
                       for t in talks) or any(s.done() for s in streams):
                    break
                await asyncio.sleep(0.1)
            await asyncio.to_thread(rolling_restart)
        finally:
            done.set()
        await asyncio.wait_for(asyncio.gather(*streams), MAX_STREAM_S + 60)

    asyncio.run(main())
    for t in talks:
        summary = [(e["type"], e.get("text", e.get("reason", ""))) for e in t.events
                   if e["type"] in ("session_started", "final_transcription",
                                    "session_closed")]
        errors = {x.name: x.error for x in talks if x.error}
        assert not t.error, f"{t.name} failed: {t.error} (all: {errors})\n{summary}"
        started = [e for e in t.events if e["type"] == "session_started"]
        # Handed over at least once, each time to a new session on a live daemon.
        assert len(started) >= 2, f"{t.name} was never handed over: {summary}"
        assert not any(e["resumed"] for e in started), summary
        holders = [str(e["resume_token"]).split(".", 1)[0] for e in started]
        assert all(a != b for a, b in itertools.pairwise(holders)), holders
        closed = [e for e in t.events if e["type"] == "session_closed"]
        assert [e["reason"] for e in closed] == ["finished"], summary
        assert t.events[-1]["type"] == "session_closed"
        for (text, _, _), finals in zip(t.sentences, sentence_finals(t), strict=True):
            # Missing: no final; duplicated: the sentence's words twice (WER 1 or more).
            # The bound leaves room for the model's own errors (2-3 words of 8).
            said = " ".join(finals)
            assert finals, f"{t.name}: no final for {text!r}\n{summary}"
            assert wer(text, said) <= 0.5, f"{t.name}: {text!r} got {finals}\n{summary}"
            assert len(said.split()) < 1.5 * len(text.split()), \
                f"{t.name}: {text!r} got {finals} (doubled?)\n{summary}"
    # The drains were real: each found sessions to drain (6 sessions over 3 daemons, and
    # every one of them sat on some daemon as it drained).
    assert sum(int(str(a["sessions"])) for a in drained.values()) >= ROLLING_SESSIONS, drained
    print(f"rolling restart: sessions drained per daemon "
          f"{ {k: a['sessions'] for k, a in drained.items()} }; per stream, sessions / "
          f"sentences / finals: "
          + ", ".join(f"{len([e for e in t.events if e['type'] == 'session_started'])} / "
                      f"{len(t.sentences)} / "
                      f"{len([e for e in t.events if e['type'] == 'final_transcription'])}"
                      for t in talks))


def test_full_and_loaded_daemons_get_no_new_sessions_and_none_fails(cluster: Cluster) -> None:
    restart([cluster.node("d1"), cluster.node("d3")],
            {"d1": {"ALFRED__PROCESSOR__MAX_CONCURRENT_SESSIONS": "1"},
             "d3": {"ALFRED_AGENT_CAPACITY": "2"}})
    cluster.wait_for("d3 at 2% weight, d1 and d2 up",
                     lambda s: s["d3"]["status"] == "UP" and int(s["d3"]["weight"]) <= 2
                     and s["d1"]["status"] == "UP" and s["d2"]["status"] == "UP")

    async def main() -> tuple[collections.Counter[str], dict[str, dict[str, str]]]:
        async with grpc.aio.insecure_channel(cluster.front) as channel:
            stub = pb_grpc.AlfredStub(channel)
            # d1's one session, routed there by its id: d1 is full and says "down".
            pinned = await hold(stub, pin="d1")
            assert pinned.daemon == "d1"
            stats = await asyncio.to_thread(
                cluster.wait_for, "full d1 DOWN", lambda s: s["d1"]["status"].startswith("DOWN"))
            # d3's load: a session of its own, at 2% capacity. (Leastconn weighs the count
            # of open streams, so a daemon that holds none ties with an idle one whatever
            # its weight; load comes with sessions.)
            loaded = await hold(stub, pin="d3")
            assert loaded.daemon == "d3"
            # Leastconn alone would now prefer d1 (1 stream) over d2 once d2 holds more,
            # and d3 (1 stream) likewise. Every new session must start, on d2.
            sessions = []
            for _ in range(6):
                sessions.append(await hold(stub))
            spread = collections.Counter(h.daemon for h in sessions)
            await close_all([pinned, loaded, *sessions])
            return spread, stats

    spread, stats = asyncio.run(main())
    assert spread == {"d2": 6}, f"new sessions went to {dict(spread)}; HAProxy saw {stats}"

