"""The voice console: ``GET /console`` (the page, its ``console.js`` and ``console.css``).

A person opens it, allows the microphone, and watches what the daemon hears: the page
connects over WHIP (:mod:`.webrtc`) with an ``events`` data channel and renders the
browser protocol's events. Plain files, no build step; like the monitor it has no inline
script or style (the HTTP layer's Content-Security-Policy forbids both) and renders every
server string as text. With tokens, open it as ``/console#token=<token>``: the fragment
never leaves the browser and the token goes out only as an Authorization header.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

FILES = ("console.html", "console.js", "console.css")


class Console:
    def __init__(self) -> None:
        static = resources.files(__package__).joinpath("static")
        self._files = {name: static.joinpath(name).read_text() for name in FILES}

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["console.html"], content_type="text/html")

    async def script(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["console.js"], content_type="text/javascript")

    async def style(self, request: web.Request) -> web.Response:
        return web.Response(text=self._files["console.css"], content_type="text/css")
