"""Errors of the runtime's in-process API, each mapping to one client-facing status.

The API layers translate them: AdmissionError (and its SharedMemoryFullError) ->
RESOURCE_EXHAUSTED / HTTP 503,
SessionNotFoundError -> NOT_FOUND / 404, DaemonUnavailableError -> UNAVAILABLE / 503,
SessionBackloggedError -> RESOURCE_EXHAUSTED / 429. Bad audio raises the engine's
InvalidAudioError (INVALID_ARGUMENT / 400).
"""

from __future__ import annotations


class RuntimeApiError(Exception):
    """Base class: something a caller of the runtime did or asked cannot be done now."""


class AdmissionError(RuntimeApiError):
    """A new session was refused; the message says why (limit, overload, memory)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SharedMemoryFullError(AdmissionError):
    """A new session's audio ring found no room in /dev/shm (a full tmpfs).

    An admission refusal like any other, so that every API layer already answers it with
    RESOURCE_EXHAUSTED / 503 and the daemon's sentence; the ring module raises it (as
    :class:`~alfred_daemon.runtime.ring.RingSpaceError`) before a single page is touched,
    because a write to an unbacked tmpfs page kills the writer with SIGBUS.
    """

    def __init__(self, message: str) -> None:
        super().__init__("shm_full", message)


class SessionNotFoundError(RuntimeApiError, KeyError):
    """No open session has this id (never existed, or already closed)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown session"


class DaemonUnavailableError(RuntimeApiError):
    """The daemon is starting, draining or stopped."""


class SessionBackloggedError(RuntimeApiError):
    """The session's ring is full of audio still needed; the frame was not accepted."""


class WorkersFailedError(RuntimeApiError):
    """The daemon could not start: a worker kept failing to start and the crash-loop brake
    tripped. The message names the worker and its last exit."""
