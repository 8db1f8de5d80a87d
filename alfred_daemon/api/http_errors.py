"""The HTTP surface's own errors in its JSON form: ``{"error": {"code", "message"}}``.

aiohttp answers some requests itself -- no route, wrong method, a body over the limit, a
request it cannot parse -- with a bare reason and, for the last, an ERROR log with a
traceback. Here they get the API's JSON error with a sentence, and a client's malformed
request is logged as the client's mistake (one DEBUG line), not the daemon's.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from .errors import json_error

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
"""The largest request body (a process_frame's multipart, an /optimize document)."""

MAX_PATH_SHOWN = 100
"""A request path is quoted in a 404's message up to this many characters (it is the
client's)."""


def http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    """aiohttp's own 4xx (no route, wrong method, body too large, not a WebSocket upgrade)
    in this API's JSON error form, with a sentence instead of aiohttp's bare reason."""
    status = exc.status
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        response = json_error(413, "too_large", f"the request body is over the {MAX_BODY_BYTES} "
                              "byte limit; send one 20-100 ms frame per request")
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = json_error(405, "method_not_allowed",
                              f"{exc.method} is not allowed on this path; allowed: {allowed}")
    elif isinstance(exc, web.HTTPNotFound):
        response = json_error(404, "not_found",
                              f"no endpoint at {request.path[:MAX_PATH_SHOWN]!r}")
    else:
        # The text aiohttp gives its remaining 4xx is a sentence already ("No WebSocket
        # UPGRADE hdr: ..."); only the status line's reason is added if it has none.
        message = (exc.text or exc.reason or "bad request").strip()
        response = json_error(status, exc.reason.lower().replace(" ", "_") or "bad_request",
                              message.removeprefix(f"{status}: "))
    for name in ("Allow", "WWW-Authenticate"):
        if name in exc.headers:
            response.headers[name] = exc.headers[name]
    return response


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                      ) -> web.StreamResponse:
    """Every error a request can meet before or outside a handler's own checks answers in
    the JSON error form. A declared body over the limit is refused before anything reads
    it (a handler's parser could otherwise fail on it first with a less telling error)."""
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        return http_error(request, web.HTTPRequestEntityTooLarge(MAX_BODY_BYTES, length))
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(request, exc)
    except ConnectionResetError:
        # The client closed its side before the body it announced was complete: there is
        # no one left to answer, and nothing the daemon did wrong to log a traceback for.
        log.debug("HTTP %s %s: client closed before its body was complete", request.method,
                  request.path[:MAX_PATH_SHOWN])
        return json_error(400, "incomplete_body", "the connection closed before the request "
                          "body was complete")


class ClientProtocolErrors(logging.Filter):
    """aiohttp answers a request it cannot parse (a header line over 8 KiB, a bad chunk
    size, a Content-Length that is not a number) with 400 itself, then logs it as an ERROR
    with the parser's traceback: a client's mistake, not the daemon's. Such records become
    one DEBUG line (aiohttp already logs non-HTTP bytes on the port at DEBUG, so as not to
    fill the log with noise); errors of the daemon's own keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.args = (record.getMessage(), reason(exc))
            record.msg = "%s: %s"
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


_AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")
if not any(isinstance(f, ClientProtocolErrors) for f in _AIOHTTP_SERVER_LOG.filters):
    _AIOHTTP_SERVER_LOG.addFilter(ClientProtocolErrors())


MAX_REASON_SHOWN = 120
"""An exception's text quoted in an error message is cut here (it may quote the client's
bytes)."""


def reason(exc: BaseException) -> str:
    """One line saying why a request body could not be parsed, from the parser's exception:
    its message, without aiohttp's "400, message:" prefix, cut short."""
    text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
    text = " ".join(text.split()) or type(exc).__name__
    return text if len(text) <= MAX_REASON_SHOWN else text[:MAX_REASON_SHOWN] + "..."
