"""What keeps a web page in an operator's browser from driving the daemon's HTTP surface.

A browser sends requests to ``127.0.0.1:8015`` on behalf of *any* page it has open, and
reads nothing back only if the server refuses. So:

* **Origin.** A state-changing request (POST and the like) or a WebSocket upgrade that
  carries an ``Origin`` header is served only if that origin is the daemon's own -- the
  scheme and ``Host`` of the request, where the host is a loopback name or the address the
  daemon is bound to -- or is listed in ``http.allowed_origins``. Anything else gets 403.
  Requests without ``Origin`` (curl, SDKs, the Python and Node clients) are not a browser
  acting for another site and pass. Requiring the ``Host`` to be a known name keeps DNS
  rebinding out: a page at ``evil.example`` re-pointed at 127.0.0.1 sends
  ``Origin: http://evil.example:8015`` *and* ``Host: evil.example:8015``, which agree.
* **Headers** on every response: a Content-Security-Policy that allows only the daemon's own
  scripts and styles (no inline script: the monitor page has none), forbids framing, and
  ``X-Content-Type-Options: nosniff``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from .auth import Principal

PRINCIPAL = web.RequestKey("principal", Principal)
"""Who made an HTTP request, set by the authentication middleware for every handler."""

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})

MAX_ORIGIN_SHOWN = 100
"""An origin is quoted in the 403's message up to this many characters (it is the client's)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class OriginPolicy:
    """Which ``Origin`` values may change state or open a WebSocket (see the module doc)."""

    def __init__(self, allowed_origins: Iterable[str], bound_host: str) -> None:
        self.allowed = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.own_hosts = LOOPBACK_NAMES | {bound_host.strip("[]").lower()}

    def allows(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.allowed or origin in self.allowed:
            return True
        host = (request.host or "").lower()
        hostname = urlsplit(f"//{host}").hostname or ""
        return hostname in self.own_hosts and origin == f"{request.scheme}://{host}"

    def middleware(self) -> Middleware:
        @web.middleware
        async def check_origin(request: web.Request, handler: Handler) -> web.StreamResponse:
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            if (request.method in STATE_CHANGING or upgrade) and not self.allows(request):
                origin = request.headers.get("Origin", "")[:MAX_ORIGIN_SHOWN]
                return web.json_response({"error": {
                    "code": "forbidden_origin",
                    "message": f"requests from the web origin {origin!r} are not accepted; "
                               "an operator can allow it in http.allowed_origins"}},
                    status=403)
            return await handler(request)

        return check_origin


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare`` hook: runs before the headers of any response go out,
    streamed (SSE) and WebSocket ones included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
