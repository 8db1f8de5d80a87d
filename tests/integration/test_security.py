"""Attacks on the daemon that must do no harm: cross-site requests, DNS rebinding, log
injection, huge ids, an exposed plaintext bind. Fast tests (no models) except where a real
daemon is the point (the CLI refusal starts one)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from alfred_daemon.api.web_security import SECURITY_HEADERS, OriginPolicy, add_security_headers
from alfred_daemon.ops.logs import TextFormatter, one_line
from alfred_daemon.ops.security import SecurityConfig, exposure, exposure_policy, is_loopback

EVIL = "http://evil.example"


async def _serve(policy: OriginPolicy, probe: Any) -> Any:
    """A minimal app with the daemon's origin middleware and headers, on a free port."""
    async def ok(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            await ws.close()
            return ws
        return web.json_response({"ok": True})

    app = web.Application(middlewares=[policy.middleware()])
    app.on_response_prepare.append(add_security_headers)
    app.add_routes([web.post("/optimize", ok), web.get("/ws", ok), web.get("/page", ok)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as client:
            return await probe(client, f"http://127.0.0.1:{port}", port)
    finally:
        await runner.cleanup()


def test_cross_origin_posts_and_websockets_are_refused() -> None:
    async def probe(client: aiohttp.ClientSession, base: str, port: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, headers in {
            "evil": {"Origin": EVIL},
            "null": {"Origin": "null"},  # sandboxed frames, file:// pages
            "same": {"Origin": base},
            "localhost": {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"},
            "none": {},
            "allowed": {"Origin": "https://console.example"},
            # DNS rebinding: the page's own name, re-pointed at 127.0.0.1.
            "rebound": {"Origin": f"http://evil.example:{port}", "Host": f"evil.example:{port}"},
        }.items():
            r = await client.post(f"{base}/optimize", headers=headers, json={})
            out[name] = (r.status, await r.json())
        r = await client.get(f"{base}/ws", headers={
            "Origin": EVIL, "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
        out["ws_evil"] = r.status
        async with client.ws_connect(f"{base}/ws", origin=base) as ws:
            out["ws_same"] = (await ws.receive()).type
        r = await client.get(f"{base}/page", headers={"Origin": EVIL})
        out["get"] = (r.status, dict(r.headers))
        return out

    policy = OriginPolicy(["https://console.example/"], "127.0.0.1")
    out = asyncio.run(_serve(policy, probe))
    assert out["evil"][0] == 403
    assert out["evil"][1]["error"]["code"] == "forbidden_origin"
    assert "evil.example" in out["evil"][1]["error"]["message"]
    assert out["null"][0] == 403
    assert out["rebound"][0] == 403
    for name in ("same", "localhost", "none", "allowed"):
        assert out[name][0] == 200, (name, out[name])
    assert out["ws_evil"] == 403
    assert out["ws_same"] == aiohttp.WSMsgType.CLOSE  # upgraded, then closed by the server
    status, headers = out["get"]
    assert status == 200  # reading is not state-changing; the headers still apply
    for name, value in SECURITY_HEADERS.items():
        assert headers[name] == value
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]


def test_a_newline_in_a_logged_client_string_cannot_forge_a_line() -> None:
    sid = "abc\n2026-01-01 00:00:00,000 CRITICAL alfred_daemon: forged\r\x1b[2J"
    record = logging.LogRecord("alfred_daemon.x", logging.INFO, __file__, 1,
                               "session %s closed", (sid,), None)
    record.peer = "1.2.3.4\nforged=1"
    line = TextFormatter(journald=False).format(record)
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "abc\\n2026-01-01" in line and "\\x1b[2J" in line
    assert "peer=1.2.3.4\\nforged=1" in line
    assert one_line("a\u2028b\x85c") == "a\\u2028b\\u0085c"


def test_a_traceback_keeps_its_lines() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (),
                                   sys.exc_info())
    assert "\nTraceback" in TextFormatter(journald=False).format(record)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("10.0.0.5", False),
    ("alfred.internal", False), ("", False)])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_exposure_policy() -> None:
    """Beyond loopback a surface must authenticate (tokens; client certificates for gRPC)
    unless allowed insecure; without TLS it warns."""
    open_ = SecurityConfig()
    assert exposure_policy(open_, "127.0.0.1:1", "127.0.0.1") == (None, [])
    refusal, _ = exposure_policy(open_, "0.0.0.0:1", "127.0.0.1")
    assert refusal is not None and "gRPC on 0.0.0.0:1" in refusal
    refusal, _ = exposure_policy(SecurityConfig(tls_client_ca="ca.pem"), "0.0.0.0:1",
                                 "0.0.0.0")
    assert refusal is not None and "HTTP on 0.0.0.0" in refusal and "gRPC on" not in refusal
    refusal, warnings = exposure_policy(SecurityConfig(tokens_file="t"), "0.0.0.0:1",
                                        "0.0.0.0")
    assert refusal is None and len(warnings) == 1 and "plaintext" in warnings[0]
    assert exposure_policy(SecurityConfig(tokens_file="t", tls_cert="c", tls_key="k"),
                           "0.0.0.0:1", "0.0.0.0") == (None, [])
    refusal, warnings = exposure_policy(SecurityConfig(allow_insecure=True), "0.0.0.0:1",
                                        "127.0.0.1")
    assert refusal is None and "without authentication" in warnings[0]


def test_exposure_names_each_surface_bound_beyond_loopback() -> None:
    assert exposure("127.0.0.1:50051", "127.0.0.1") == []
    assert exposure("[::1]:50051", "localhost") == []
    assert exposure("0.0.0.0:50051", "127.0.0.1") == ["gRPC on 0.0.0.0:50051"]
    assert exposure("[::]:50051", "10.1.2.3") == ["gRPC on [::]:50051", "HTTP on 10.1.2.3"]


@pytest.mark.parametrize("flags", [["--listen", "0.0.0.0:0"], ["--http-host", "0.0.0.0"]])
def test_serve_on_an_open_address_without_protection_exits_with_one_sentence(
        tmp_path: Path, flags: list[str]) -> None:
    cli = Path(sys.executable).parent / "alfred-daemon"
    r = subprocess.run([str(cli), "serve", *flags, "--http-port", "0",
                        "--runtime-dir", str(tmp_path / "run")],
                       check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "without authentication" in lines[0] and "allow_insecure" in lines[0]
    assert "Traceback" not in r.stderr
