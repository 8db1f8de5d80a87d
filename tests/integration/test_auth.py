"""Bearer tokens: the tokens file, and a real daemon that checks them on gRPC, HTTP and the
WebSocket (missing / wrong / right token, per-token session limits, token names in status,
tokens never in logs or documents)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from alfred_client import AsyncClient
from alfred_client._gen.alfred.v1 import alfred_pb2 as pb
from alfred_client._gen.alfred.v1 import alfred_pb2_grpc as pb_grpc

from alfred_daemon.api.auth import ANONYMOUS, Authenticator, Principal, TokenStore, bearer
from alfred_daemon.engine.errors import ConfigError

from ..grpc_helpers import (
    audio_message,
    config_message,
    health_check,
    running_daemon,
    silence_pcm,
)

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-fedcba9876543210xyz"
WRONG = "not-a-token-at-all-0000000000"


def write_tokens(path: Path) -> Path:
    path.write_text(f"# name token sessions\nalice {ALICE} 1\nbob {BOB}  # no limit\n")
    return path


# ----------------------------------------------------------------------------- unit


def test_tokens_file_maps_tokens_to_names_and_limits(tmp_path: Path) -> None:
    store = TokenStore.load(write_tokens(tmp_path / "tokens"))
    assert len(store) == 2
    assert store.authenticate(ALICE) == Principal("alice", 1)
    assert store.authenticate(BOB) == Principal("bob", None)
    assert store.authenticate(WRONG) is None
    assert store.authenticate(ALICE[:-1]) is None
    assert store.authenticate(None) is None


@pytest.mark.parametrize(("text", "message"), [
    ("alice", "expected 'name token [sessions]'"),
    ("alice sh0rt-t0ken", "shorter than 16"),
    (f"alice {ALICE} many", "session limit"),
    (f"alice {ALICE} 0", "session limit"),
    (f"alice {ALICE}\nalice {BOB}", "used twice"),
    (f"al/ice {ALICE}", "token name"),
    ("# nothing\n", "holds no token"),
])
def test_a_bad_tokens_file_names_the_line_never_the_token(
        tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "tokens"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        TokenStore.load(path)
    assert message in str(err.value)
    for secret in (ALICE, BOB, "sh0rt-t0ken"):
        assert secret not in str(err.value)


def test_bearer_header_parsing() -> None:
    assert bearer(f"Bearer {ALICE}") == ALICE
    assert bearer(f"bearer   {ALICE} ") == ALICE
    assert bearer(f"Basic {ALICE}") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_without_a_tokens_file_everyone_is_anonymous() -> None:
    auth = Authenticator()
    assert not auth.required
    assert auth.authenticate(None) is ANONYMOUS
    assert auth.over_limit(Principal("x", 2), 1) is None
    refusal = auth.over_limit(Principal("x", 2), 2)
    assert refusal is not None and "limit" in refusal


# ----------------------------------------------------------------------------- daemon


def test_tokens_on_every_surface(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens")
    out: dict[str, Any] = {}
    env = {"ALFRED__SECURITY__TOKENS_FILE": str(tokens),
           "ALFRED__SECURITY__METRICS_PUBLIC": "false"}
    with running_daemon(tmp_path / "d", env=env) as d:
        with grpc.insecure_channel(d.target) as channel:
            out["health"] = health_check(channel)  # probes carry no token
        asyncio.run(asyncio.wait_for(_drive(d.target, d.http_port, out), 120))
        log = d.log.read_text(errors="replace")

    assert out["health"] == 1  # SERVING
    for case in ("none", "wrong"):
        code, details = out[f"grpc_{case}"]
        assert code == grpc.StatusCode.UNAUTHENTICATED, (case, code)
        assert details == "missing or invalid bearer token"
    assert out["grpc_right"] == "ok"
    assert out["grpc_second_alice"] == grpc.StatusCode.RESOURCE_EXHAUSTED, out.get(
        "grpc_second_alice_details")
    assert "alice" in out["grpc_second_alice_details"]
    assert out["grpc_bob_while_alice_holds_one"] == "started"
    assert out["alice_session_token_name"] == "alice"

    for case in ("none", "wrong"):
        assert out[f"http_{case}"][0] == 401, out[f"http_{case}"]
        assert out[f"http_{case}"][1] == "Bearer"
    assert out["http_right"] == 200
    assert out["healthz"] == 200 and out["readyz"] == 200
    assert out["metrics_without"] == 401 and out["metrics_with"] == 200
    assert out["monitor_page"] == 200  # static; its data needs the token
    assert out["pf_bob"] == 200
    assert out["pf_alice_with_bobs_id"] == 404  # not alice's session
    assert out["ws_none"]["code"] == "UNAUTHENTICATED"
    assert out["ws_wrong"]["code"] == "UNAUTHENTICATED"
    assert out["ws_wrong"]["message"] == out["ws_none"]["message"]  # no hint which
    assert out["ws_first_message"]["type"] == "sessionStarted"
    assert out["ws_header"]["type"] == "sessionStarted"

    documents = json.dumps(out["documents"])
    for secret in (ALICE, BOB, WRONG):
        assert secret not in log, "a token reached the log"
        assert secret not in documents, "a token reached a status document or metrics"
    assert "token alice" in log  # the name is what the log shows
    assert out["client_token"] == "running"
    assert out["client_no_token"] == grpc.StatusCode.UNAUTHENTICATED


async def _stream_until_started(stub: pb_grpc.AlfredAsyncStub, token: str | None,
                                ) -> tuple[Any, pb.ServerEvent | None, grpc.StatusCode | None,
                                           str]:
    """Open a stream, send the config and, once the session has started, a second of
    silence; return the call (still open) and its first event, or the status it failed
    with. The audio waits for the first event because grpc.aio replaces the status of a
    call the server ended with "INTERNAL: Internal error from Core" when a write was still
    in flight (grpc/grpc#36066), and a refused session ends right after its config."""
    metadata = (("authorization", f"Bearer {token}"),) if token else None
    call = stub.StreamSession(metadata=metadata)
    try:
        await call.write(config_message())
        first = await call.read()
        if first is grpc.aio.EOF:
            return call, None, await call.code(), await call.details() or ""
        assert isinstance(first, pb.ServerEvent)
        await call.write(audio_message(0, silence_pcm(1.0)))
        return call, first, None, ""
    except grpc.aio.AioRpcError as exc:
        return call, None, exc.code(), exc.details() or ""
    except asyncio.InvalidStateError:
        # The daemon refused the stream before the audio was written: the status says why.
        return call, None, await call.code(), await call.details() or ""


async def _drive(target: str, http_port: int, out: dict[str, Any]) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    base = f"http://127.0.0.1:{http_port}"
    documents: list[Any] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.AlfredStub(channel)
        for case, token in (("none", None), ("wrong", WRONG)):
            md = (("authorization", f"Bearer {token}"),) if token else None
            try:
                await stub.GetPipelineStatus(pb.GetPipelineStatusRequest(), metadata=md)
                out[f"grpc_{case}"] = ("accepted", "")
            except grpc.aio.AioRpcError as exc:
                out[f"grpc_{case}"] = (exc.code(), exc.details())
        doc = await stub.GetPipelineStatus(pb.GetPipelineStatusRequest(),
                                           metadata=(("authorization", f"Bearer {BOB}"),))
        documents.append(json.loads(doc.json))
        out["grpc_right"] = "ok"

        # alice may hold one session: the second is refused, bob is not affected.
        first_call, first, _, _ = await _stream_until_started(stub, ALICE)
        assert first is not None and first.WhichOneof("event") == "session_started"
        sid = first.session_started.session_id
        second_call, _, code, details = await _stream_until_started(stub, ALICE)
        out["grpc_second_alice"], out["grpc_second_alice_details"] = code, details
        bob_call, bob_first, _, _ = await _stream_until_started(stub, BOB)
        out["grpc_bob_while_alice_holds_one"] = (
            "started" if bob_first is not None
            and bob_first.WhichOneof("event") == "session_started" else "refused")
        status = await stub.GetSessionStatus(pb.GetSessionStatusRequest(session_id=sid),
                                             metadata=(("authorization", f"Bearer {BOB}"),))
        out["alice_session_token_name"] = json.loads(status.json)["tokenName"]
        documents.append(json.loads(status.json))
        for call in (first_call, second_call, bob_call):
            call.cancel()

    async with aiohttp.ClientSession() as http:
        for case, token in (("none", None), ("wrong", WRONG)):
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            r = await http.get(f"{base}/pipeline/status", headers=headers)
            out[f"http_{case}"] = (r.status, r.headers.get("WWW-Authenticate"))
        right = {"Authorization": f"Bearer {BOB}"}
        r = await http.get(f"{base}/pipeline/status", headers=right)
        out["http_right"] = r.status
        documents.append(await r.json())
        out["healthz"] = (await http.get(f"{base}/healthz")).status
        out["readyz"] = (await http.get(f"{base}/readyz")).status
        out["metrics_without"] = (await http.get(f"{base}/metrics")).status
        r = await http.get(f"{base}/metrics", headers=right)
        out["metrics_with"] = r.status
        documents.append(await r.text())
        out["monitor_page"] = (await http.get(f"{base}/monitor")).status

        # process_frame: bob's session is not alice's, even with its id.
        form = aiohttp.FormData()
        form.add_field("audio", silence_pcm(0.02), filename="f.pcm")
        r = await http.post(f"{base}/process_frame", data=form,
                            headers={"Authorization": f"Bearer {BOB}"})
        pf = await r.json()
        out["pf_bob"] = r.status
        form = aiohttp.FormData()
        form.add_field("session_id", pf["sessionId"])
        form.add_field("audio", silence_pcm(0.02), filename="f.pcm")
        r = await http.post(f"{base}/process_frame", data=form,
                            headers={"Authorization": f"Bearer {ALICE}"})
        out["pf_alice_with_bobs_id"] = r.status

        # WebSocket: the token by header, or in the config message (browsers).
        async with http.ws_connect(f"{base}/ws") as ws:
            await ws.send_json({"type": "config", "sampleRateHz": 16000})
            out["ws_none"] = await ws.receive_json(timeout=10)
        async with http.ws_connect(f"{base}/ws") as ws:
            await ws.send_json({"type": "config", "sampleRateHz": 16000, "token": WRONG})
            out["ws_wrong"] = await ws.receive_json(timeout=10)
        async with http.ws_connect(f"{base}/ws") as ws:
            await ws.send_json({"type": "config", "sampleRateHz": 16000, "token": BOB})
            out["ws_first_message"] = await ws.receive_json(timeout=10)
        async with http.ws_connect(f"{base}/ws", headers=right) as ws:
            await ws.send_json({"type": "config", "sampleRateHz": 16000})
            out["ws_header"] = await ws.receive_json(timeout=10)
    # The Python client takes the token.
    async with AsyncClient(target, token=BOB) as client:
        out["client_token"] = (await client.status())["state"]
    async with AsyncClient(target) as client:
        try:
            await client.status()
            out["client_no_token"] = "accepted"
        except grpc.aio.AioRpcError as exc:
            out["client_no_token"] = exc.code()
    out["documents"] = documents
