"""The HTTP ops surface (aiohttp, on the supervisor's event loop; 127.0.0.1:8015 default).

Endpoints (paths and JSON field names are the product spec's):

* ``GET /pipeline/status`` -- the status document: pipelineState, performanceMetrics (also
  under its older name performanceMonitor), resourceOptimization, per-worker and
  per-session detail.
* ``GET /metrics`` -- Prometheus exposition; ``GET /metrics.json`` -- the spec's JSON metrics.
* ``GET /session/{id}/status`` -- one session (404 if unknown).
* ``POST /optimize`` -- body ``{"triggerGC", "cleanupSessions", "optimizeBuffers"}`` (all
  booleans, all optional, default true); answers what it did and freed.
* ``POST /process_frame`` -- multipart ``session_id`` + ``audio`` (one frame) for clients
  that cannot stream; answers the events produced once that frame is analysed.
* ``GET /ws`` -- the browser protocol (:mod:`.ws_bridge`).
* ``POST /whip``, ``DELETE /whip/{id}`` -- WebRTC ingest (:mod:`.webrtc`), unless
  ``webrtc.enabled`` is false; ``GET /console`` -- the voice console that uses it.
* ``GET /monitor`` -- the live dashboard (:mod:`.monitor`).
* ``POST /drain`` -- start the drain SIGTERM starts (:mod:`.drain`), when ``serve`` runs it.
* ``GET /healthz`` -- liveness (the event loop answers; 503 once health is failed);
  ``GET /readyz`` -- readiness (running with workers up; 503 while starting or draining).

Errors are JSON ``{"error": {"code", "message"}}`` with a 4xx status that says what was wrong.
Prometheus metrics are read from the supervisor at scrape time (a custom collector), except
latencies, which are histograms fed by the supervisor's observations as they happen.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from ..runtime.errors import SessionNotFoundError
from ..runtime.health import Health
from ..runtime.supervisor import DaemonState, Supervisor
from .auth import ANONYMOUS, UNAUTHENTICATED, Authenticator, Principal
from .bridge import SessionBridge
from .console import Console
from .drain import DrainEndpoint
from .errors import ApiError, api_error, json_error
from .events_json import wire
from .http_errors import MAX_BODY_BYTES, json_errors, reason
from .monitor import Monitor
from .tls import TlsFiles
from .web_security import PRINCIPAL, OriginPolicy, add_security_headers
from .webrtc_ice import WebRtcConfig

if TYPE_CHECKING:
    from .webrtc import WhipApi
from .ws_bridge import WsBridge

log = logging.getLogger(__name__)

FRAME_OUTBOX_LIMIT = 1000
"""Events a process_frame session keeps between two calls (per-window ones are shed first)."""
ANALYSED_TIMEOUT_S = 2.0
"""How long a process_frame call waits for its frame's analysis before answering."""

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 150, 200, 300, 400, 600, 800, 1000, 1500, 2500, 5000)
FRAME_BUCKETS_MS = (0.25, 0.5, 1, 2, 5, 10, 20, 50, 100, 250, 1000)


@dataclass(frozen=True, slots=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8015
    allowed_origins: tuple[str, ...] = ()
    """Web origins (``https://console.example``) besides the daemon's own whose pages may
    POST and open WebSockets here (:mod:`.web_security`); ``"*"`` allows any."""
    agent_check_host: str = "127.0.0.1"
    agent_check_port: int | None = None
    """HAProxy ``agent-check`` responder's TCP port (:mod:`..ops.agent_check`); unset: off."""


class _SupervisorCollector(Collector):
    """Counters and gauges read from the supervisor at scrape time."""

    def __init__(self, sup: Supervisor) -> None:
        self.sup = sup

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        sup = self.sup
        c = sup.counters

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"alfred_{name}", doc, value=value)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"alfred_{name}", doc, value=value)

        yield counter("frames_analysed", "32 ms windows analysed by VAD", c.windows_analysed)
        yield counter("frames_dropped", "windows whose analysis was shed", c.frames_dropped)
        yield counter("sessions_opened", "sessions admitted", c.sessions_opened)
        yield counter("sessions_refused", "sessions refused at admission", c.sessions_refused)
        yield counter("jobs", "Whisper and Smart Turn jobs completed", c.jobs_done)
        yield counter("job_errors", "jobs that failed", c.job_errors)
        yield counter("final_fallbacks", "finals decoded again on the 30 s window (looped)",
                      c.final_fallbacks)
        yield counter("partials_shed", "partial decodes skipped under load", c.partials_shed)
        yield counter("speculations_skipped",
                      "speculations (finals, Smart Turn asks) abandoned before running",
                      c.speculations_skipped)
        yield counter("jobs_discarded", "job results no longer wanted on return (wasted work)",
                      c.jobs_discarded)
        yield counter("worker_restarts", "workers respawned after a death or hang",
                      c.worker_restarts)
        yield counter("backpressure_events", "backpressure ladder transitions",
                      c.backpressure_events)
        yield counter("alerts_raised", "alerts raised", c.alerts_raised)
        yield gauge("sessions_active", "open sessions", len(sup.session_ids()))
        yield gauge("frames_in_queue", "windows waiting for VAD", sup.frames_in_queue())
        yield gauge("processing_load", "backpressure load figure (1 = at capacity)", sup.load)
        yield gauge("backpressure_level", "0 none .. 3 pause_processing", int(sup.ladder.level))
        health = GaugeMetricFamily("alfred_health", "1 for the current health state",
                                   labels=["state"])
        for h in Health:
            health.add_metric([h.value], 1.0 if sup.health is h else 0.0)
        yield health
        memory = GaugeMetricFamily("alfred_memory_pss_bytes", "PSS per daemon process",
                                   labels=["pid", "role"])
        worker_pids = {w["pid"] for w in sup.status()["workers"]}
        for pid, mb in sup.memory_by_pid.items():
            role = "worker" if pid in worker_pids else "supervisor"
            memory.add_metric([str(pid), role], mb * 1024 * 1024)
        yield memory


class _LazyWhip:
    """The WHIP endpoints, with the WebRTC stack imported at the first request.

    aiortc and PyAV bring ~35 MB of libraries (codecs, DTLS) into the daemon's process: a
    daemon whose clients all speak gRPC or WebSocket should not carry them. The first offer
    pays the import (about a second) instead.
    """

    def __init__(self, sup: Supervisor, config: WebRtcConfig, auth: Authenticator) -> None:
        self._args = (sup, config, auth)
        self.api: WhipApi | None = None

    def _api(self) -> WhipApi:
        if self.api is None:
            from .webrtc import WhipApi

            self.api = WhipApi(*self._args)
        return self.api

    async def post(self, request: web.Request) -> web.Response:
        return await self._api().post(request)

    async def delete(self, request: web.Request) -> web.Response:
        return await self._api().delete(request)

    async def stop(self) -> None:
        if self.api is not None:
            await self.api.stop()


class HttpApi:
    def __init__(self, sup: Supervisor, config: HttpConfig | None = None, *,
                 warnings: list[str] | None = None, auth: Authenticator | None = None,
                 metrics_public: bool = True, tls: TlsFiles | None = None,
                 webrtc: WebRtcConfig | None = None,
                 drain: Callable[[], None] | None = None) -> None:
        self.sup = sup
        self.config = config or HttpConfig()
        self.auth = auth or Authenticator()
        self.metrics_public = metrics_public
        self.tls = tls
        self.warnings = list(warnings or [])
        """Configuration warnings (an insecure exposure), listed in the status document."""
        self.registry = CollectorRegistry()
        self.registry.register(_SupervisorCollector(sup))
        self._histograms = {
            "frame_ms": Histogram("alfred_frame_time_ms", "ring write -> VAD result, ms",
                                  buckets=FRAME_BUCKETS_MS, registry=self.registry),
            "partial_transcription_latency_ms": Histogram(
                "alfred_partial_latency_ms", "audio arrival -> partial delivered, ms",
                buckets=LATENCY_BUCKETS_MS, registry=self.registry),
            "final_transcription_latency_ms": Histogram(
                "alfred_final_latency_ms", "audio arrival (end of speech) -> final, ms",
                buckets=LATENCY_BUCKETS_MS, registry=self.registry),
            "turn_ended_latency_ms": Histogram(
                "alfred_turn_latency_ms", "audio arrival -> turn_ended delivered, ms",
                buckets=LATENCY_BUCKETS_MS, registry=self.registry),
        }
        sup.on_observation(self._observe)
        self.ws = WsBridge(sup, auth=self.auth)
        self.monitor = Monitor(sup)
        webrtc = webrtc or WebRtcConfig()
        self.whip = _LazyWhip(sup, webrtc, self.auth) if webrtc.enabled else None
        self.console = Console()
        self.drain = DrainEndpoint(sup, drain) if drain is not None else None
        self._frame_sessions: dict[str, SessionBridge] = {}
        self._frame_owners: dict[str, str] = {}
        self._pumps: set[asyncio.Task[None]] = set()
        """Sessions fed by POST /process_frame, with their undelivered events."""
        self._runner: web.AppRunner | None = None
        self.port = 0

    OPEN_PATHS = frozenset({"/healthz", "/readyz", "/monitor", "/monitor/monitor.js",
                            "/monitor/monitor.css", "/ws", "/console", "/console/console.js",
                            "/console/console.css"})
    """Served without a token: probes, the monitor's and the console's static pages (their
    data and WHIP need one), and the WebSocket, which authenticates by header or by its
    first message."""

    @web.middleware
    async def _authenticate(self, request: web.Request,
                            handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                            ) -> web.StreamResponse:
        open_path = request.path in self.OPEN_PATHS or (
            self.metrics_public and request.path in ("/metrics", "/metrics.json"))
        principal = self.auth.authenticate(request.headers.get("Authorization"))
        if principal is None and not open_path:
            response = json_error(401, "unauthenticated", UNAUTHENTICATED)
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        request[PRINCIPAL] = principal or ANONYMOUS
        return await handler(request)

    def _observe(self, name: str, value: float) -> None:
        hist = self._histograms.get(name)
        if hist is not None:
            hist.observe(value)

    def app(self) -> web.Application:
        policy = OriginPolicy(self.config.allowed_origins, self.config.host)
        app = web.Application(client_max_size=MAX_BODY_BYTES,
                              middlewares=[json_errors, policy.middleware(),
                                           self._authenticate])
        app.on_response_prepare.append(add_security_headers)
        if self.sup.config.daemon_id:
            app.on_response_prepare.append(self._daemon_id_header)
        app.add_routes([
            web.get("/pipeline/status", self.pipeline_status),
            web.get("/metrics", self.metrics),
            web.get("/metrics.json", self.metrics_json),
            web.get("/session/{session_id}/status", self.session_status),
            web.post("/optimize", self.optimize),
            web.get("/healthz", self.healthz),
            web.get("/readyz", self.readyz),
            web.post("/process_frame", self.process_frame),
            web.get("/ws", self.ws.handle),
            web.get("/monitor", self.monitor.page),
            web.get("/monitor/monitor.js", self.monitor.script),
            web.get("/monitor/monitor.css", self.monitor.style),
            web.get("/monitor/history", self.monitor.history_json),
            web.get("/monitor/stream", self.monitor.stream),
        ])
        if self.drain is not None:
            app.add_routes([web.post("/drain", self.drain.post)])
        if self.whip is not None:
            app.add_routes([
                web.post("/whip", self.whip.post),
                web.delete("/whip/{session_id}", self.whip.delete),
                web.get("/console", self.console.page),
                web.get("/console/console.js", self.console.script),
                web.get("/console/console.css", self.console.style),
            ])
        return app

    async def _daemon_id_header(self, request: web.Request,
                                response: web.StreamResponse) -> None:
        """``alfred-daemon-id`` on every answer: a balancer learns which daemon holds a
        session from it, and a client sends it back to be routed there again."""
        response.headers["alfred-daemon-id"] = self.sup.config.daemon_id

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.host, self.config.port,
                           reuse_port=False,
                           ssl_context=self.tls.http_context() if self.tls else None)
        await site.start()
        self.monitor.start()
        server = site._server  # the bound port (config port 0 = any)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.port
        log.info("HTTP listening on %s:%d", self.config.host, self.port)

    async def stop(self) -> None:
        await self.monitor.stop()
        if self.whip is not None:
            await self.whip.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ handlers

    async def pipeline_status(self, request: web.Request) -> web.Response:
        doc = self.sup.status()
        doc["performanceMonitor"] = doc["performanceMetrics"]
        doc["warnings"] = self.warnings
        return web.json_response(doc)

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def metrics_json(self, request: web.Request) -> web.Response:
        doc = self.sup.status()
        return web.json_response({
            "pipelineState": doc["pipelineState"],
            "performanceMetrics": doc["performanceMetrics"],
            "resourceOptimization": doc["resourceOptimization"],
            "counters": doc["counters"],
            "latencyMs": {name: _histogram_summary(h) for name, h in self._histograms.items()},
        })

    async def session_status(self, request: web.Request) -> web.Response:
        sid = request.match_info["session_id"]
        try:
            return web.json_response(self.sup.session_status(sid))
        except SessionNotFoundError as exc:
            return api_error(exc).response()  # 404; the id quoted, cut short

    async def optimize(self, request: web.Request) -> web.Response:
        flags = {"triggerGC": True, "cleanupSessions": True, "optimizeBuffers": True}
        raw = await request.read() if request.can_read_body else b""
        if raw:
            # A form or text/plain body is what a cross-site page can send without a
            # preflight; JSON is not.
            if request.content_type != "application/json":
                return json_error(415, "unsupported_media_type",
                                  "send the options as application/json")
            try:
                body: Any = json.loads(raw.decode())
            except UnicodeDecodeError:
                return json_error(400, "invalid_json", "body is not UTF-8 text")
            except json.JSONDecodeError as exc:
                return json_error(400, "invalid_json", f"body is not JSON: {exc.msg}")
            except RecursionError:
                return json_error(400, "invalid_json", "body is nested too deeply")
            except ValueError as exc:  # e.g. an integer over Python's 4300-digit limit
                return json_error(400, "invalid_json", f"body is not usable JSON ({reason(exc)})")
            if not isinstance(body, dict):
                return json_error(400, "invalid_body", "body must be a JSON object")
            unknown = sorted(set(body) - set(flags))
            if unknown:
                return json_error(400, "unknown_field",
                                  f"unknown field(s) {unknown}; allowed: {sorted(flags)}")
            for key, value in body.items():
                if not isinstance(value, bool):
                    return json_error(400, "invalid_field",
                                      f"{key} must be true or false, not {value!r}")
                flags[key] = value
        done = await self.sup.optimize(trigger_gc=flags["triggerGC"],
                                       cleanup_sessions=flags["cleanupSessions"],
                                       optimize_buffers=flags["optimizeBuffers"])
        return web.json_response(done)

    async def process_frame(self, request: web.Request) -> web.Response:
        """For clients that cannot stream: multipart ``audio`` (LINEAR16, typically 20 ms)
        and, from the second frame on, the ``session_id`` the first answer gave (optional
        ``sample_rate``, default 16000, used when the first frame creates the session).
        Answers once the frame's audio has been analysed, with every event the session
        produced since the previous call.

        The daemon chooses the id: a client-chosen one let a second client push frames into
        another's session and read its events. An id this endpoint did not create is 404.
        """
        if not request.content_type.startswith("multipart/"):
            return json_error(400, "invalid_body", "send multipart/form-data with audio (and "
                              "session_id after the first frame)")
        try:
            form = await request.post()
        except (ValueError, LookupError, HttpProcessingError) as exc:
            # aiohttp's multipart reader says what it could not parse (no boundary, a body
            # that ends before its closing boundary, an unknown charset) in a ValueError,
            # LookupError or HttpProcessingError; none of it is the daemon's fault.
            return json_error(400, "invalid_multipart", "the multipart body could not be read "
                              f"({reason(exc)}); send multipart/form-data with a boundary and "
                              "an audio part")
        sid = form.get("session_id") or None
        audio = form.get("audio")
        principal: Principal = request[PRINCIPAL]
        if sid is not None and (not isinstance(sid, str) or sid not in self._frame_sessions
                                or self._frame_owners.get(sid) != principal.name):
            return json_error(404, "session_not_found",
                              "no process_frame session has this session_id; leave it out on the "
                              "first frame and send the sessionId of the answer after that")
        if audio is None:
            return json_error(400, "missing_field", "audio (LINEAR16 bytes) is required")
        pcm = audio.file.read() if isinstance(audio, web.FileField) else str(audio).encode()
        try:
            rate = int(str(form.get("sample_rate", "16000")))
        except ValueError:
            return json_error(400, "invalid_field", "sample_rate must be an integer")
        if sid is not None:
            session = self._frame_sessions[sid]
        else:
            over = self.auth.over_limit(principal, self.sup.sessions_of(principal.name))
            if over is not None:
                return json_error(429, "session_limit", over)
            try:
                session = self._open_frame_session(principal, rate)
            except ApiError as err:
                return err.response()
        try:
            windows = await session.feed(pcm)
        except ApiError as err:
            return err.response()
        await session.analysed(ANALYSED_TIMEOUT_S)
        events = [wire(ev) for ev in await session.ready_events()]
        return web.json_response({"sessionId": session.session_id, "windows": windows,
                                  "events": events})

    def _open_frame_session(self, principal: Principal, rate: int) -> SessionBridge:
        """A process_frame session: per-window VAD results are this endpoint's answer, so
        frame events are on (every one of them)."""
        engine = dataclasses.replace(self.sup.config.engine, frame_events=True)
        session = SessionBridge.open(self.sup, engine, sample_rate=rate,
                                     owner=self.auth.owner(principal), transport="http",
                                     outbox_limit=FRAME_OUTBOX_LIMIT, frame_event_every=1)
        sid = session.session_id
        self._frame_owners[sid] = principal.name
        self._frame_sessions[sid] = session
        task = asyncio.create_task(self._pump_frames(session))
        self._pumps.add(task)
        task.add_done_callback(self._pumps.discard)
        return session

    async def _pump_frames(self, session: SessionBridge) -> None:
        try:
            await session.pump()
        finally:
            self._frame_sessions.pop(session.session_id, None)
            self._frame_owners.pop(session.session_id, None)

    async def healthz(self, request: web.Request) -> web.Response:
        health = self.sup.health
        status = 503 if health is Health.FAILED else 200
        return web.json_response({"status": health.value, "state": self.sup.state},
                                 status=status)

    async def readyz(self, request: web.Request) -> web.Response:
        ready = self.sup.state == DaemonState.RUNNING and self.sup.health is not Health.FAILED
        return web.json_response({"ready": ready, "state": self.sup.state},
                                 status=200 if ready else 503)


def _histogram_summary(hist: Histogram) -> dict[str, float]:
    """Count and sum of a histogram (the JSON view; percentiles come from Prometheus)."""
    count = total = 0.0
    for metric in hist.collect():
        for sample in metric.samples:
            if sample.name.endswith("_count"):
                count = sample.value
            elif sample.name.endswith("_sum"):
                total = sample.value
    return {"count": count, "mean": (total / count) if count else 0.0}
