"""The monitor dashboard in real headless Chromium (Debian's package, driven by Playwright):
the page loads, its charts move while a session streams, the optimize button works; a
screenshot is saved to test-artifacts/monitor.png."""

from __future__ import annotations

import asyncio
import functools
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from alfred_daemon.api.http_server import HttpApi
from alfred_daemon.runtime.config import LimitsConfig
from alfred_daemon.runtime.supervisor import Supervisor

from ..conftest import REPO
from ..http_helpers import jfk_pcm, live_http

pytestmark = pytest.mark.slow

ARTIFACTS = REPO / "test-artifacts"


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("chromium is not installed (make setup installs Debian's chromium)")
    return path


async def wait_js(page: Any, expression: str, timeout_s: float = 15.0) -> None:
    """Poll ``expression`` in the page until it is truthy. Playwright's wait_for_function
    compiles its argument inside the page, which the monitor's Content-Security-Policy
    (no eval) forbids; page.evaluate goes through the DevTools protocol instead."""
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(expression):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} still false after {timeout_s} s")
        await asyncio.sleep(0.1)


def test_dashboard_in_headless_chromium(tmp_path: Path) -> None:  # noqa: PLR0915  (one scenario, read top to bottom)
    from playwright.async_api import async_playwright

    browser_path = chromium()
    pcm = jfk_pcm(0.5)
    out: dict[str, Any] = {}

    async def main() -> None:
        async with live_http(tmp_path) as (sup, http):
            await drive(sup, http)

    async def drive(sup: Supervisor, http: HttpApi) -> None:
        sid = sup.open_session()

        async def stream() -> None:
            t0 = time.monotonic()
            for k, i in enumerate(range(0, len(pcm), 640)):
                sup.push(sid, pcm[i : i + 640])
                await asyncio.sleep(max(0.0, t0 + (k + 1) * 0.02 - time.monotonic()))
            await sup.finish_session(sid)

        async def drain() -> None:
            async for _ in sup.events(sid):
                pass

        streaming = asyncio.gather(stream(), drain())
        try:
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=browser_path,
                                                   args=["--no-sandbox"])
                page = await browser.new_page(viewport={"width": 1400, "height": 1000})
                await page.goto(f"http://127.0.0.1:{http.port}/monitor")
                await wait_js(page, "window.alfredMonitor.updates >= 2")
                first = await page.evaluate(
                    "document.getElementById('c-throughput').toDataURL()")
                out["rows"] = await page.locator("#sessions tbody tr").count()
                await asyncio.sleep(3.0)
                out["updates"] = await page.evaluate("window.alfredMonitor.updates")
                second = await page.evaluate(
                    "document.getElementById('c-throughput').toDataURL()")
                out["moved"] = first != second
                out["throughput"] = await page.evaluate(
                    "Math.max(...window.alfredMonitor.history.map(s => s.throughput))")
                out["banner"] = await page.text_content("#banner")
                before = sup.status()["resourceOptimization"]["memoryOptimizations"]
                await page.click("#optimize")
                await wait_js(page, "window.alfredMonitor.optimized !== undefined")
                out["optimize_text"] = await page.text_content("#optimize-result")
                out["optimizations"] = (
                    before, sup.status()["resourceOptimization"]["memoryOptimizations"])
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "monitor.png"), full_page=True)
                await browser.close()
            await asyncio.wait_for(streaming, 30)
        finally:
            streaming.cancel()

    asyncio.run(asyncio.wait_for(main(), 120))

    assert out["rows"] == 1, out
    assert out["updates"] >= 4, out
    assert out["moved"], "the throughput chart did not change while a session streamed"
    assert out["throughput"] > 0
    assert out["banner"] and out["banner"].startswith("health:")
    assert out["optimize_text"] and out["optimize_text"].startswith("freed")
    assert out["optimizations"][1] == out["optimizations"][0] + 1
    assert (ARTIFACTS / "monitor.png").stat().st_size > 10_000


def _note_dialog(seen: list[str], dialog: Any) -> None:
    seen.append(dialog.message)


XSS_IDS = [
    '<img src=x onerror="document.title=\'XSS\'">',
    "<script>document.title='XSS'</script>",
    "<b>bold</b>",
    "x</td><td><img src=x onerror=alert(1)>",
    '"><svg onload="document.title=\'XSS\'">',
    "&lt;i&gt;escaped&lt;/i&gt;",
]
"""Session ids as a hostile client would choose them (through the supervisor's API: the
HTTP and gRPC surfaces no longer let a client choose one, but the page must not depend on
that)."""


def test_session_ids_render_as_text_never_as_html(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    browser_path = chromium()
    out: dict[bool, dict[str, Any]] = {}

    async def main() -> None:
        # The sessions get no audio; they must outlive the first-audio rule for the test.
        async with live_http(tmp_path, limits=LimitsConfig(firstAudioTimeout=120.0)) as (
                sup, http):
            for sid in XSS_IDS:
                sup.open_session(session_id=sid)
            async with async_playwright() as pw:
                browser = await pw.chromium.launch(executable_path=browser_path,
                                                   args=["--no-sandbox"])
                # Under the page's Content-Security-Policy, and without it: rendering as
                # text must hold on its own.
                for bypass_csp in (False, True):
                    context = await browser.new_context(bypass_csp=bypass_csp)
                    page = await context.new_page()
                    dialogs: list[str] = []
                    page.on("dialog", functools.partial(_note_dialog, dialogs))
                    await page.goto(f"http://127.0.0.1:{http.port}/monitor")
                    await wait_js(page, "window.alfredMonitor.updates >= 2")
                    out[bypass_csp] = {
                        "title": await page.title(),
                        "dialogs": dialogs,
                        "cells": await page.eval_on_selector_all(
                            "#sessions tbody tr td:first-child",
                            "tds => tds.map(td => td.textContent)"),
                        "injected": await page.evaluate(
                            "document.querySelectorAll('#sessions img, #sessions script, "
                            "#sessions svg, #sessions b, #sessions i').length"),
                        "cells_per_row": await page.eval_on_selector_all(
                            "#sessions tbody tr", "trs => trs.map(tr => tr.children.length)"),
                    }
                    await context.close()
                await browser.close()

    asyncio.run(asyncio.wait_for(main(), 120))

    for bypass_csp in (False, True):
        seen = out[bypass_csp]
        assert seen["title"] == "alfred-daemon monitor", (bypass_csp, seen)
        assert seen["dialogs"] == []
        assert seen["injected"] == 0
        assert sorted(seen["cells"]) == sorted(sid[:12] for sid in XSS_IDS)
        assert seen["cells_per_row"] == [7] * len(XSS_IDS)


def test_with_tokens_the_monitor_takes_its_token_from_the_fragment(tmp_path: Path) -> None:
    """/monitor#token=...: the data requests carry it as a header (the fragment is never
    sent); without it the page says a token is needed."""
    from playwright.async_api import async_playwright

    from alfred_daemon.api.auth import Authenticator, Principal, TokenStore

    token = "monitor-token-0123456789"
    auth = Authenticator(TokenStore([(Principal("ops"), token)]))
    browser_path = chromium()
    out: dict[str, Any] = {}

    async def main() -> None:
        async with live_http(tmp_path, auth=auth) as (_, http), async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=browser_path,
                                               args=["--no-sandbox"])
            page = await browser.new_page()
            await page.goto(f"http://127.0.0.1:{http.port}/monitor#token={token}")
            await wait_js(page, "window.alfredMonitor.updates >= 2")
            out["updates"] = await page.evaluate("window.alfredMonitor.updates")
            await page.click("#optimize")
            await wait_js(page, "window.alfredMonitor.optimized !== undefined")
            out["optimized"] = await page.text_content("#optimize-result")
            bare = await browser.new_page()
            await bare.goto(f"http://127.0.0.1:{http.port}/monitor")
            await wait_js(bare, "document.getElementById('banner').textContent"
                                ".includes('token')")
            out["bare_updates"] = await bare.evaluate("window.alfredMonitor.updates")
            await browser.close()

    asyncio.run(asyncio.wait_for(main(), 120))
    assert out["updates"] >= 2
    assert out["optimized"] and out["optimized"].startswith("freed")
    assert out["bare_updates"] == 0
