"""The daemon's signals to a load balancer, without models or a running daemon: the HAProxy
agent-check line, ``POST /drain``, and the daemon id in resume tokens and headers
(issue 17; the whole chain through a real HAProxy is tests/integration/test_scale_out.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import cast

import aiohttp
import grpc
import pytest
from alfred_client import routing_metadata
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

from alfred_daemon.api.auth import Authenticator, TokenStore
from alfred_daemon.api.grpc_session import new_resume_token
from alfred_daemon.api.http_server import HttpApi, HttpConfig
from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.ops.agent_check import AgentCheck, agent_reply, capacity_cap
from alfred_daemon.ops.config import load
from alfred_daemon.runtime.backpressure import Level
from alfred_daemon.runtime.config import RuntimeConfig
from alfred_daemon.runtime.health import Health
from alfred_daemon.runtime.supervisor import Supervisor

from ..grpc_helpers import RATE, ScriptedSupervisor, in_process_server


@dataclasses.dataclass
class FakeDaemon:
    state: str = "running"
    load: float = 0.0
    sessions: int = 0
    health: Health = Health.HEALTHY

    def session_ids(self) -> list[str]:
        return [f"s{i}" for i in range(self.sessions)]


def reply(d: FakeDaemon, *, max_sessions: int = 10, level: Level = Level.NORMAL,
          draining: bool = False, cap: float = 1.0) -> str:
    return agent_reply(d, max_sessions=max_sessions, level=level, draining=draining, cap=cap)


def test_capacity_is_what_the_load_figure_and_the_session_limit_leave() -> None:
    assert reply(FakeDaemon()) == "up ready 100%"
    assert reply(FakeDaemon(load=0.35)) == "up ready 65%"
    # Sessions count against the limit even when the pipeline is idle, and the larger of
    # the two uses wins.
    assert reply(FakeDaemon(sessions=4)) == "up ready 60%"
    assert reply(FakeDaemon(sessions=4, load=0.7)) == "up ready 30%"
    # Over capacity but still admitting: a last resort, never weight 0.
    assert reply(FakeDaemon(load=1.6)) == "up ready 1%"
    # No measurement yet (NaN) is no load.
    assert reply(FakeDaemon(load=math.nan)) == "up ready 100%"


def test_full_failed_or_paused_daemons_are_down_and_draining_ones_drain() -> None:
    assert reply(FakeDaemon(sessions=10)) == "down"
    assert reply(FakeDaemon(), level=Level.PAUSE_PROCESSING) == "down"
    assert reply(FakeDaemon(health=Health.FAILED)) == "down"
    assert reply(FakeDaemon(state="starting")) == "down"
    assert reply(FakeDaemon(), draining=True) == "drain"
    assert reply(FakeDaemon(state="draining")) == "drain"
    # Draining wins over full: HAProxy keeps routing the sessions' resumes there.
    assert reply(FakeDaemon(sessions=10), draining=True) == "drain"


def test_the_capacity_override_caps_the_figure() -> None:
    assert reply(FakeDaemon(), cap=0.05) == "up ready 5%"
    assert reply(FakeDaemon(load=0.99), cap=0.5) == "up ready 1%"
    assert capacity_cap({}) == 1.0
    assert capacity_cap({"ALFRED_AGENT_CAPACITY": "5"}) == 0.05
    assert capacity_cap({"ALFRED_AGENT_CAPACITY": "40%"}) == 0.4
    for bad in ("lots", "101", "-1"):
        with pytest.raises(ConfigError, match="must be a percentage between 0 and 100"):
            capacity_cap({"ALFRED_AGENT_CAPACITY": bad})


async def ask(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await asyncio.wait_for(reader.read(), 5.0)
    finally:
        writer.close()


def test_the_responder_answers_one_line_per_connection_and_survives_a_bad_override(
        monkeypatch: pytest.MonkeyPatch) -> None:
    daemon = FakeDaemon(load=0.5)

    async def main() -> list[bytes]:
        agent = AgentCheck(lambda cap: reply(daemon, cap=cap), "127.0.0.1", 0)
        await agent.start()
        try:
            answers = [await ask(agent.port)]
            daemon.sessions = 10
            answers.append(await ask(agent.port))
            daemon.sessions = 0
            monkeypatch.setenv("ALFRED_AGENT_CAPACITY", "10")
            answers.append(await ask(agent.port))
            monkeypatch.setenv("ALFRED_AGENT_CAPACITY", "plenty")
            answers.append(await ask(agent.port))
            return answers
        finally:
            await agent.stop()

    assert asyncio.run(main()) == [b"up ready 50%\n", b"down\n", b"up ready 10%\n",
                                   b"up ready 50%\n"]


def test_a_taken_agent_port_is_a_sentence() -> None:
    async def main() -> None:
        first = AgentCheck(lambda cap: "up", "127.0.0.1", 0)
        await first.start()
        try:
            with pytest.raises(OSError, match=r"agent check cannot listen on 127\.0\.0\.1:"):
                await AgentCheck(lambda cap: "up", "127.0.0.1", first.port).start()
        finally:
            await first.stop()

    asyncio.run(main())


def test_daemon_id_is_validated_and_configurable_from_the_file_and_environment(
        tmp_path: Path) -> None:
    for bad in ("has.dot", "a" * 64, "spa ce", "ü"):
        with pytest.raises(ConfigError, match=r"daemon_id = .* must be 1-63 letters"):
            RuntimeConfig(daemon_id=bad)
    path = tmp_path / "alfred.toml"
    path.write_text('[runtime]\ndaemon_id = "eu-1"\n[http]\nagent_check_port = 8016\n')
    cfg = load(path, environ={})
    assert (cfg.runtime.daemon_id, cfg.http.agent_check_port) == ("eu-1", 8016)
    assert cfg.http.agent_check_host == "127.0.0.1"
    assert load(None, environ={"ALFRED__RUNTIME__DAEMON_ID": "pod-7"}).runtime.daemon_id \
        == "pod-7"
    assert load(None, environ={}).http.agent_check_port is None  # off by default


def test_resume_tokens_carry_the_daemon_id_and_the_client_sends_it_back() -> None:
    plain, named = new_resume_token(""), new_resume_token("d2")
    assert "." not in plain and len(plain) == 32
    assert named.startswith("d2.") and "." not in named[3:]
    auth = (("authorization", "Bearer x"),)
    assert routing_metadata(auth, named) == (*auth, ("alfred-daemon-id", "d2"))
    assert routing_metadata(None, named) == (("alfred-daemon-id", "d2"),)
    # Tokens of a daemon without an id, and the first stream (no token), add nothing.
    assert routing_metadata(auth, plain) is auth
    assert routing_metadata(None, "") is None


def test_a_stream_names_its_daemon_in_headers_and_token() -> None:
    sup = ScriptedSupervisor([])
    sup.config = RuntimeConfig(daemon_id="d3")

    async def main() -> tuple[str | None, str]:
        async with (in_process_server(sup) as (_, target),
                    grpc.aio.insecure_channel(target) as channel):
            stub = pb_grpc.AlfredStub(channel)
            call = stub.StreamSession(iter([pb.ClientMessage(
                config=pb.SessionConfig(sample_rate_hz=RATE))]))
            header = dict(await call.initial_metadata()).get("alfred-daemon-id")
            token = ""
            async for msg in call:
                if msg.WhichOneof("event") == "session_started":
                    token = msg.session_started.resume_token
            return cast(str | None, header), token

    header, token = asyncio.run(main())
    assert header == "d3"
    assert token.startswith("d3.")


def test_post_drain_starts_the_drain_with_the_same_auth_as_other_posts(
        tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("ops 0123456789abcdef0123\n")
    auth = Authenticator(TokenStore.load(tokens))
    sup = Supervisor(RuntimeConfig(daemon_id="d1"))
    drains: list[int] = []

    async def main() -> list[tuple[int, object, str | None]]:
        api = HttpApi(sup, HttpConfig(port=0), auth=auth, drain=lambda: drains.append(1))
        await api.start()
        url = f"http://127.0.0.1:{api.port}"
        good = {"Authorization": "Bearer 0123456789abcdef0123"}
        out: list[tuple[int, object, str | None]] = []
        try:
            async with aiohttp.ClientSession() as s:
                for headers in ({}, {**good, "Origin": "https://evil.example"}, good, good):
                    async with s.post(f"{url}/drain", headers=headers) as r:
                        out.append((r.status, (await r.json()),
                                    r.headers.get("alfred-daemon-id")))
        finally:
            await api.stop()
        return out

    (anon, cross, first, again) = asyncio.run(main())
    assert anon[0] == 401 and cross[0] == 403
    assert first[0] == 202 and first[2] == "d1"
    assert first[1] == {"draining": True, "already": False, "sessions": 0, "graceS": 10.0,
                        "then": "exit"}
    assert again[0] == 202 and cast(dict[str, object], again[1])["already"] is True
    assert drains == [1]  # one drain, however often it is asked for
