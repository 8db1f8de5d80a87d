"""``POST /drain``: the drain SIGTERM starts, asked for over HTTP.

An orchestrator that cannot send signals to the daemon's process (a Kubernetes ``preStop``
hook in the same pod, a deploy script on another host) drains it here. The request only
starts the drain and answers ``202`` at once: the daemon then does exactly what SIGTERM does
(gRPC health NOT_SERVING, ``/readyz`` 503, the agent check ``drain``, new sessions refused,
open utterances finished within ``runtime.drain_grace``) and exits 0, so that the
orchestrator (Kubernetes, systemd's ``Restart=always``, ``deploy/local-cluster.sh``) starts
the replacement. A daemon that stayed up drained would be a process nobody uses and that
still holds its ports and memory. A second request while draining answers ``202`` again
with ``"already": true``.

It is a state-changing POST, so it goes through the same checks as ``/optimize``: a bearer
token when the daemon has tokens, and the Origin policy against cross-site pages.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from ..runtime.supervisor import Supervisor


class DrainEndpoint:
    """``request_drain`` is the daemon's drain (in ``serve``: SIGTERM's own path)."""

    def __init__(self, sup: Supervisor, request_drain: Callable[[], None]) -> None:
        self.sup = sup
        self.request_drain = request_drain
        self.requested = False

    async def post(self, request: web.Request) -> web.Response:
        already = self.requested
        if not already:
            self.requested = True
            self.request_drain()
        return web.json_response({
            "draining": True, "already": already, "sessions": len(self.sup.session_ids()),
            "graceS": self.sup.config.drain_grace,
            "then": "exit"}, status=202)
