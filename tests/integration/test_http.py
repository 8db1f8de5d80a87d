"""The HTTP ops surface against a live runtime with a streaming session (real models, real
speech): every endpoint, and the 4xx answers."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alfred_client import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from alfred_daemon.api.grpc_config import GrpcConfig
from alfred_daemon.api.grpc_server import GrpcApi
from alfred_daemon.api.http_server import HttpApi
from alfred_daemon.runtime.config import LimitsConfig, ProcessorConfig
from alfred_daemon.runtime.supervisor import Supervisor

from ..http_helpers import jfk_pcm, live_http

pytestmark = pytest.mark.slow



def test_endpoints_with_a_live_session(tmp_path: Path) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    pcm = jfk_pcm()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with live_http(tmp_path) as (sup, http):
            base = f"http://127.0.0.1:{http.port}"
            sid = sup.open_session()
            events: list[str] = []

            async def consume() -> None:
                async for ev in sup.events(sid):
                    events.append(ev.TYPE)

            consumer = asyncio.create_task(consume())
            async with aiohttp.ClientSession() as client:
                t0 = time.monotonic()
                half = len(pcm) // 2 // 640 * 640
                for k, i in enumerate(range(0, half, 640)):  # the first half, real time
                    sup.push(sid, pcm[i : i + 640])
                    await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
                out["scrape1"] = await (await client.get(f"{base}/metrics")).text()
                out["status"] = await (await client.get(f"{base}/pipeline/status")).json()
                r = await client.get(f"{base}/session/{sid}/status")
                out["session"] = (r.status, await r.json())
                for i in range(half, len(pcm), 640):
                    sup.push(sid, pcm[i : i + 640])
                await sup.finish_session(sid)
                await asyncio.wait_for(consumer, 10)
                r = await client.get(f"{base}/metrics")
                out["metrics"] = (r.status, r.headers["Content-Type"], await r.text())
                out["metrics_json"] = await (await client.get(f"{base}/metrics.json")).json()
                r = await client.get(f"{base}/session/nope/status")
                out["unknown"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", json={"triggerGC": True,
                                                                "cleanupSessions": False})
                out["optimize"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", data="{not json",
                                      headers={"Content-Type": "application/json"})
                out["bad_json"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", data=b"\xff\xfe",
                                      headers={"Content-Type": "application/json"})
                out["not_utf8"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", data="[" * 2000 + "]" * 2000,
                                      headers={"Content-Type": "application/json"})
                out["deep"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", data='{"triggerGC": true}')
                out["text_plain"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", json={"triggerGC": "yes"})
                out["bad_type"] = (r.status, await r.json())
                r = await client.post(f"{base}/optimize", json={"gc": True})
                out["bad_field"] = (r.status, await r.json())
                r = await client.get(f"{base}/healthz")
                out["healthz"] = (r.status, await r.json())
                r = await client.get(f"{base}/readyz")
                out["readyz"] = (r.status, await r.json())
                r = await client.get(f"{base}/nothing-here")
                out["404"] = r.status
            out["events"] = events
            out["optimize_after"] = sup.status()["resourceOptimization"]

    asyncio.run(asyncio.wait_for(main(), 120))

    status = out["status"]
    for key in ("health", "processingLoad", "memoryUsage", "sessionsActive", "framesInQueue"):
        assert key in status["pipelineState"], key
    assert status["pipelineState"]["sessionsActive"] == 1
    for key in ("averageFrameTime", "throughput", "errorRate", "memoryEfficiency"):
        assert key in status["performanceMetrics"], key
    assert status["performanceMonitor"] == status["performanceMetrics"]
    for key in ("gcTriggered", "sessionsCleanedUp", "memoryOptimizations", "backpressureEvents"):
        assert key in status["resourceOptimization"], key
    assert len(status["workers"]) == 2 and all(w["state"] == "ready" for w in status["workers"])
    assert status["performanceMetrics"]["throughput"] > 0

    code, session = out["session"]
    assert code == 200 and session["windowsWritten"] > 100 and session["state"] == "active"

    code, ctype, text = out["metrics"]
    assert code == 200 and ctype.startswith("text/plain")
    # Parses with prometheus-client's own parser, and the counters moved while streaming.
    def samples(body: str) -> dict[str, float]:
        return {s.name: s.value for fam in text_string_to_metric_families(body)
                for s in fam.samples if not s.labels}

    first, later = samples(out["scrape1"]), samples(text)
    assert later["alfred_frames_analysed_total"] > first["alfred_frames_analysed_total"] > 0
    assert later["alfred_jobs_total"] > first["alfred_jobs_total"]
    assert later["alfred_frame_time_ms_count"] > first["alfred_frame_time_ms_count"]
    for name in ("alfred_frames_analysed_total", "alfred_sessions_active",
                 "alfred_frame_time_ms_bucket", "alfred_final_latency_ms_count",
                 "alfred_partial_latency_ms_count", "alfred_turn_latency_ms_count",
                 "alfred_memory_pss_bytes", "alfred_backpressure_level",
                 'alfred_health{state="healthy"}', "alfred_worker_restarts_total"):
        assert name in text, name
    finals = [line for line in text.splitlines()
              if line.startswith("alfred_final_latency_ms_count")]
    assert finals and float(finals[0].split()[-1]) >= 1
    assert out["metrics_json"]["latencyMs"]["final_transcription_latency_ms"]["count"] >= 1

    assert out["unknown"][0] == 404 and out["unknown"][1]["error"]["code"] == "session_not_found"
    code, done = out["optimize"]
    assert code == 200 and done["triggerGC"] is True and done["cleanupSessions"] is False
    assert "freedMB" in done and "memoryBeforeMB" in done
    assert out["optimize_after"]["gcTriggered"] >= 1
    assert out["bad_json"][0] == 400 and "not JSON" in out["bad_json"][1]["error"]["message"]
    assert out["not_utf8"][0] == 400 and "UTF-8" in out["not_utf8"][1]["error"]["message"]
    assert out["deep"][0] == 400 and "nested" in out["deep"][1]["error"]["message"]
    assert out["text_plain"][0] == 415  # what a cross-site form could send
    assert out["bad_type"][0] == 400 and "triggerGC" in out["bad_type"][1]["error"]["message"]
    assert out["bad_field"][0] == 400 and "gc" in out["bad_field"][1]["error"]["message"]
    assert out["healthz"][0] == 200 and out["readyz"][0] == 200
    assert out["404"] == 404
    assert "final_transcription" in out["events"]


def test_websocket_bridge_and_process_frame(tmp_path: Path) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    pcm = jfk_pcm()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with live_http(tmp_path) as (sup, http):
            await with_grpc(sup, http)

    async def with_grpc(sup: Supervisor, http: HttpApi) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
        grpc_api = GrpcApi(sup, GrpcConfig(listen="127.0.0.1:0"))
        await grpc_api.start()
        base = f"http://127.0.0.1:{http.port}"

        async def via_grpc() -> list[str]:
            async with AsyncClient(f"127.0.0.1:{grpc_api.port}") as c:
                return [ev.data["text"] async for ev in c.stream_pcm(pcm, 16_000,
                                                                     realtime=True)
                        if ev.type == "final_transcription"]

        grpc_finals = asyncio.create_task(via_grpc())
        try:
            async with aiohttp.ClientSession() as client:
                # The browser protocol, real time (alongside the same audio over gRPC).
                async with client.ws_connect(f"{base}/ws") as ws:
                    await ws.send_json({"type": "config", "sampleRate": 16000,
                                        "frameEventEvery": 10})
                    started = await ws.receive_json(timeout=10)
                    t0 = time.monotonic()
                    for k, i in enumerate(range(0, len(pcm), 640)):
                        await ws.send_bytes(pcm[i : i + 640])
                        await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
                    await ws.send_json({"type": "end"})
                    received = []
                    while True:
                        msg = await ws.receive(timeout=20)
                        if msg.type != aiohttp.WSMsgType.TEXT:
                            break
                        received.append(msg.json())
                out["ws"] = (started, received)
                out["grpc_finals"] = await asyncio.wait_for(grpc_finals, 30)
                # A bad config, and audio before the config.
                async with client.ws_connect(f"{base}/ws") as ws:
                    await ws.send_json({"type": "config", "sampleRateHz": 22050})
                    out["ws_bad_rate"] = (await ws.receive_json(timeout=10),
                                          (await ws.receive(timeout=10)).type)
                async with client.ws_connect(f"{base}/ws") as ws:
                    await ws.send_bytes(b"\x00\x00" * 320)
                    out["ws_audio_first"] = await ws.receive_json(timeout=10)
                # POST /process_frame: 20 ms frames, the first one creates the session
                # and its answer names it.
                answers = []
                sid = ""
                for i in range(0, 16_000 * 2 * 2, 640):  # 2 s
                    form = aiohttp.FormData()
                    if sid:
                        form.add_field("session_id", sid)
                    form.add_field("audio", pcm[i : i + 640], filename="frame.pcm")
                    r = await client.post(f"{base}/process_frame", data=form)
                    answers.append((r.status, await r.json()))
                    sid = answers[-1][1].get("sessionId", "")
                # A made-up id (or one a client saw elsewhere) does not join a session.
                form = aiohttp.FormData()
                form.add_field("session_id", "http-client-1")
                form.add_field("audio", pcm[:640], filename="frame.pcm")
                r = await client.post(f"{base}/process_frame", data=form)
                out["pf_made_up"] = (r.status, await r.json())
                form = aiohttp.FormData()
                form.add_field("session_id", sid)
                form.add_field("audio", b"\x00\x01\x02", filename="odd.pcm")
                r = await client.post(f"{base}/process_frame", data=form)
                out["pf_odd"] = (r.status, await r.json())
                r = await client.post(f"{base}/process_frame", json={"session_id": "x"})
                out["pf_not_multipart"] = r.status
                out["pf"] = answers
        finally:
            grpc_finals.cancel()
            await grpc_api.stop()

    asyncio.run(asyncio.wait_for(main(), 120))

    started, received = out["ws"]
    ws_finals = [m["text"] for m in received if m["type"] == "finalTranscription"]
    assert ws_finals and ws_finals == out["grpc_finals"], (ws_finals, out["grpc_finals"])
    assert started["type"] == "sessionStarted" and started["sessionId"]
    types = [m["type"] for m in received]
    for name in ("speechStart", "speechEnd", "partialTranscription", "finalTranscription",
                 "turnEnd", "frameProcessed", "pipelineHealth"):
        assert name in types, (name, types)
    assert types[-1] == "sessionClosed" and received[-1]["reason"] == "finished"
    finals = " ".join(m["text"] for m in received if m["type"] == "finalTranscription")
    assert "ask not what your country" in finals.lower().replace("!", "").replace(".", "") \
        or "country can do for you" in finals.lower()
    assert all("audioOffsetMs" in m for m in received)
    err, close_type = out["ws_bad_rate"]
    assert err["type"] == "error" and err["code"] == "INVALID_ARGUMENT"
    assert "22050" in err["message"] and close_type == aiohttp.WSMsgType.CLOSE
    assert out["ws_audio_first"]["code"] == "INVALID_ARGUMENT"
    assert "config first" in out["ws_audio_first"]["message"]

    answers = out["pf"]
    assert all(code == 200 for code, _ in answers)
    assert len({a["sessionId"] for _, a in answers}) == 1  # one session, the daemon's id
    assert answers[0][1]["sessionId"] != "http-client-1"
    assert out["pf_made_up"][0] == 404
    assert "first frame" in out["pf_made_up"][1]["error"]["message"]
    frame_events = [e for _, a in answers for e in a["events"] if e["type"] == "frameProcessed"]
    windows = sum(a["windows"] for _, a in answers)
    assert windows >= 60 and len(frame_events) >= windows - 2  # each analysed window answered
    assert any(e["type"] == "speechStart" for _, a in answers for e in a["events"])
    assert out["pf_odd"][0] == 400 and "even" in out["pf_odd"][1]["error"]["message"]
    assert out["pf_not_multipart"] == 400


def test_one_frame_sessions_lose_their_slots_within_seconds(tmp_path: Path) -> None:
    """The session-limit exhaustion attack: sessions opened with one frame each and then
    left fill max_concurrent_sessions; they are closed once limits.firstAudioTimeout has
    passed without a second of audio, and a new client is admitted."""
    out: dict[str, Any] = {}
    frame = b"\x00\x00" * 320

    async def main() -> None:
        async with live_http(
                tmp_path, processor=ProcessorConfig(max_concurrent_sessions=4),
                limits=LimitsConfig(firstAudioTimeout=2.0)) as (sup, http), \
                aiohttp.ClientSession() as client:
            base = f"http://127.0.0.1:{http.port}"

            async def one_frame() -> int:
                form = aiohttp.FormData()
                form.add_field("audio", frame, filename="f.pcm")
                r = await client.post(f"{base}/process_frame", data=form)
                return r.status

            out["filled"] = [await one_frame() for _ in range(4)]
            out["refused"] = await one_frame()
            t0 = time.monotonic()
            while sup.session_ids() and time.monotonic() - t0 < 15.0:
                await asyncio.sleep(0.1)
            out["freed_after_s"] = time.monotonic() - t0
            out["left"] = sup.session_ids()
            out["admitted"] = await one_frame()
            out["cleaned"] = sup.status()["counters"]["sessions_cleaned_up"]
            # A megabyte-long id is refused without being echoed or kept.
            form = aiohttp.FormData()
            form.add_field("session_id", "x" * 1_000_000)
            form.add_field("audio", frame, filename="f.pcm")
            r = await client.post(f"{base}/process_frame", data=form)
            out["long_id"] = (r.status, len(await r.read()))
            r = await client.get(f"{base}/session/{'y' * 4000}/status")
            out["long_status_id"] = (r.status, len(await r.read()))

    asyncio.run(asyncio.wait_for(main(), 120))
    assert out["filled"] == [200] * 4
    assert out["refused"] == 503
    assert out["left"] == [] and out["freed_after_s"] < 10.0, out  # idle timeout: 120 s
    assert out["admitted"] == 200
    assert out["cleaned"] == 4
    assert out["long_id"][0] == 404 and out["long_id"][1] < 1000
    assert out["long_status_id"][0] == 404 and out["long_status_id"][1] < 1000
