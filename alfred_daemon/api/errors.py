"""The one table from the runtime's errors to what every API surface answers.

A runtime call (open a session, feed it a frame, look it up) fails with one of the errors
of :mod:`alfred_daemon.runtime.errors` or the engine's :class:`InvalidAudioError`. Each
surface answers it in its own terms -- a gRPC status, an HTTP status with a JSON error
code, a WebSocket close code, a ``{"type": "error", "code": ...}`` message on the WebRTC
data channel -- and all of them take those terms from :data:`TABLE`, so that a refusal
means the same thing whichever transport a client uses. The message is always the
runtime's own sentence (``str(exc)``), which says what happened and what to do.

Clients of earlier versions rely on every value here (tests pin them): change none
without a protocol version.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from aiohttp import WSCloseCode, web

from ..engine.errors import InvalidAudioError
from ..runtime.errors import (
    AdmissionError,
    DaemonUnavailableError,
    SessionBackloggedError,
    SessionNotFoundError,
    WorkersFailedError,
)
from .webrtc_ice import RETRY_AFTER_S


@dataclass(frozen=True, slots=True)
class Status:
    """How each surface answers one kind of error."""

    grpc: grpc.StatusCode
    http: int
    ws_close: int
    code: str
    """The HTTP JSON error's ``code``; an :class:`AdmissionError` gives its own reason
    (``session_limit``, ``overloaded``, ``memory``, ...) instead."""


TABLE: dict[type[Exception], Status] = {
    # The frame was refused whole and the session is as it was; 1007 is RFC 6455's "data
    # not consistent with the message type".
    InvalidAudioError: Status(grpc.StatusCode.INVALID_ARGUMENT, 400,
                              WSCloseCode.INVALID_TEXT, "invalid_audio"),
    # Refused at admission (limit, overload, memory, a full /dev/shm): temporary.
    AdmissionError: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 503,
                           WSCloseCode.TRY_AGAIN_LATER, "admission"),
    # The session is over: for a stream, a normal end rather than a failure.
    SessionNotFoundError: Status(grpc.StatusCode.NOT_FOUND, 404, WSCloseCode.OK,
                                 "session_not_found"),
    # Starting, draining or stopped: another daemon (or this one, later) can take it.
    DaemonUnavailableError: Status(grpc.StatusCode.UNAVAILABLE, 503,
                                   WSCloseCode.TRY_AGAIN_LATER, "unavailable"),
    # The session's audio outran the daemon: this session's problem, not the daemon's.
    SessionBackloggedError: Status(grpc.StatusCode.RESOURCE_EXHAUSTED, 429,
                                   WSCloseCode.TRY_AGAIN_LATER, "backlogged"),
    # The daemon could not start its workers: nothing is served until an operator acts.
    WorkersFailedError: Status(grpc.StatusCode.UNAVAILABLE, 503,
                               WSCloseCode.TRY_AGAIN_LATER, "workers_failed"),
}

MAPPED: tuple[type[Exception], ...] = tuple(TABLE)
"""The errors :func:`api_error` maps, for an ``except`` clause."""


class ApiError(Exception):
    """A runtime error with the answer every surface gives it (:data:`TABLE`)."""

    def __init__(self, status: Status, code: str, message: str, cause: Exception) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.cause = cause

    @property
    def grpc(self) -> grpc.StatusCode:
        return self.status.grpc

    @property
    def name(self) -> str:
        """The gRPC status's name, the ``code`` of the browser protocol's error message."""
        name: str = self.status.grpc.name
        return name

    @property
    def http(self) -> int:
        return self.status.http

    @property
    def ws_close(self) -> int:
        return self.status.ws_close

    @property
    def invalid(self) -> bool:
        """The client's input was wrong (INVALID_ARGUMENT): sent again, it fails again."""
        return self.status.grpc is grpc.StatusCode.INVALID_ARGUMENT

    @property
    def gone(self) -> bool:
        """The session has ended: a stream stops quietly, a request is 404."""
        return isinstance(self.cause, SessionNotFoundError)

    def response(self) -> web.Response:
        """The HTTP answer: the JSON error, with Retry-After when it is a 503."""
        if self.status.http == 503:
            return retry_later(self.code, self.message)
        return json_error(self.status.http, self.code, self.message)


def api_error(exc: Exception) -> ApiError:
    """``exc`` (one of :data:`MAPPED`, or a subclass) with its answer; the nearest class in
    its MRO decides, so a :class:`SharedMemoryFullError` answers as an AdmissionError."""
    for cls in type(exc).__mro__:
        status = TABLE.get(cls)
        if status is not None:
            code = exc.reason if isinstance(exc, AdmissionError) else status.code
            return ApiError(status, code, str(exc), exc)
    raise TypeError(f"{type(exc).__name__} is not in the API error table") from exc


def json_error(status: int, code: str, message: str) -> web.Response:
    """The HTTP surfaces' error form: ``{"error": {"code", "message"}}``."""
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def retry_later(code: str, message: str) -> web.Response:
    """503 with Retry-After (process_frame and WHIP alike): a refusal that is temporary
    (sessions end, load falls, a drain finishes)."""
    response = json_error(503, code, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response
