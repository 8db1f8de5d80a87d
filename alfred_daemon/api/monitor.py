"""The live monitor: ``GET /monitor`` (the page, its ``monitor.js`` and ``monitor.css``),
``GET /monitor/history`` (the last hour, one sample a second, kept server-side),
``GET /monitor/stream`` (Server-Sent Events: a new sample, the session table, health and
alerts every second).

SSE rather than a WebSocket: the page only listens, and EventSource reconnects by itself.
The page has no inline script or style, so the HTTP layer's Content-Security-Policy can
forbid both, and the script renders every server-supplied string (session ids come from
clients) as text, never as HTML.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from importlib import resources
from typing import Any

from aiohttp import web

from ..runtime.supervisor import Supervisor

HISTORY_S = 3600


class Monitor:
    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup
        self.history: deque[dict[str, Any]] = deque(maxlen=HISTORY_S)
        self._sampler: asyncio.Task[None] | None = None
        static = resources.files(__package__).joinpath("static")
        self._files = {name: static.joinpath(name).read_text()
                       for name in ("monitor.html", "monitor.js", "monitor.css")}

    def start(self) -> None:
        self._sampler = asyncio.create_task(self._sample_loop(), name="alfred-monitor")

    async def stop(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)

    def sample(self) -> dict[str, Any]:
        st = self.sup.status()
        ps, pm = st["pipelineState"], st["performanceMetrics"]
        lag = max((s["lagMs"] for s in st["sessions"]), default=0.0)
        return {"t": round(time.time(), 3), "frameTime": pm["averageFrameTime"],
                "throughput": pm["throughput"], "load": ps["processingLoad"],
                "memory": ps["memoryUsage"], "sessions": ps["sessionsActive"],
                "queue": ps["framesInQueue"], "lag": lag}

    async def _sample_loop(self) -> None:
        while True:
            self.history.append(self.sample())
            await asyncio.sleep(1.0)

    def snapshot(self) -> dict[str, Any]:
        st = self.sup.status()
        return {
            "sample": self.history[-1] if self.history else self.sample(),
            "health": st["pipelineState"]["health"],
            "backpressure": st["pipelineState"]["backpressureLevel"],
            "alerts": st["alerts"],
            "resourceOptimization": st["resourceOptimization"],
            "sessions": [{"id": s["sessionId"], "transport": s["transport"] or "-",
                          "state": s["state"],
                          "durationS": s["durationS"], "worker": s["lastWorker"],
                          "lastEvent": s["lastEvent"], "lagMs": s["lagMs"]}
                         for s in st["sessions"]],
        }

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["monitor.html"], content_type="text/html")

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["monitor.js"], content_type="text/javascript")

    async def style(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["monitor.css"], content_type="text/css")

    async def history_json(self, request: web.Request) -> web.Response:
        return web.json_response(list(self.history))

    async def stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            for _ in range(24 * HISTORY_S):  # bounded: a day per connection; it reconnects
                data = json.dumps(self.snapshot())
                await asyncio.wait_for(resp.write(f"data: {data}\n\n".encode()), 10.0)
                await asyncio.sleep(1.0)
        except (ConnectionError, TimeoutError):
            pass
        return resp
