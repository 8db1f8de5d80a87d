"""The browser protocol's JSON messages, shared by the WebSocket bridge and WebRTC.

Both transports promise the same thing: one JSON object per event with the product spec's
names (``speechStart``, ``finalTranscription``, ``turnEnd``, ...) and camelCase fields,
and the same client control messages. One module builds and parses them, so the two can
never drift apart (a test compares a WebRTC session's messages with this converter).

Daemon -> client: :func:`wire` (every engine/runtime event), :func:`session_started`,
:func:`events_shed`, :func:`error`. Client -> daemon: :func:`parse_client_message` reads
``{"type": "control", "action": ...}`` and ``{"type": "end"}``; the session bridge
(:meth:`.bridge.SessionBridge.control`) applies the action.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..engine.events import Event
from .bridge import ACTIONS, RECONFIGURE
from .convert import InvalidRequestError
from .outbox import ShedCounts

SPEC_NAMES = {
    "frame_processed": "frameProcessed", "speech_started": "speechStart",
    "speech_ended": "speechEnd", "partial_transcription": "partialTranscription",
    "final_transcription": "finalTranscription", "turn_ended": "turnEnd",
    "turn_resumed": "turnResumed", "interruption": "interruption",
    "pipeline_health": "pipelineHealth", "backpressure_triggered": "backpressureTriggered",
    "backpressure_recovered": "backpressureRecovered", "frames_dropped": "framesDropped",
    "worker_recovered": "workerRecovered", "session_closed": "sessionClosed",
}

CONTROLS = ACTIONS - {RECONFIGURE}
"""The control actions a browser may send (a session's parameters are fixed by its config)."""

MAX_QUOTED = 80
"""Characters of a client's unusable message quoted back in the error."""


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(w.title() for w in rest)


def wire(event: Event) -> dict[str, Any]:
    """An engine/runtime event as the browser protocol's JSON object."""
    body = event.to_dict()
    kind = body.pop("type")
    return {"type": SPEC_NAMES.get(kind, camel(kind)),
            **{camel(k): v for k, v in body.items()}}


def session_started(session_id: str, sample_rate: int, transport: str) -> dict[str, Any]:
    """The first message of every session: its id (for ``/session/{id}/status``), the
    rate the daemon reads its audio at, and how it arrives."""
    return {"type": "sessionStarted", "sessionId": session_id, "sampleRate": sample_rate,
            "transport": transport}


def events_shed(shed: ShedCounts) -> dict[str, Any]:
    return {"type": "eventsShed", "partials": shed.partials,
            "frameEvents": shed.frame_events, "other": shed.other}


def error(code: str, message: str) -> dict[str, Any]:
    return {"type": "error", "code": code, "message": message}


def parse_json(text: str) -> Any:
    """A client's JSON message, or None if it is not JSON (nested too deeply for the parser
    counts as not JSON: RecursionError is not a JSONDecodeError)."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A control action (``kind == "control"``) or the end of input (``kind == "end"``)."""

    kind: str
    action: str = ""


def parse_client_message(text: str, *, binary_audio: bool = True) -> ClientMessage:
    """A client's text message after the config, or InvalidRequestError saying what it may
    send instead (``binary_audio``: whether audio also comes as messages, as on the
    WebSocket; over WebRTC it comes as RTP)."""
    body = parse_json(text)
    kind = body.get("type") if isinstance(body, dict) else None
    action = body.get("action") if isinstance(body, dict) else None
    if kind == "end":
        return ClientMessage("end")
    if kind == "control" and isinstance(action, str) and action in CONTROLS:
        return ClientMessage("control", action)
    audio = "binary audio, " if binary_audio else ""
    raise InvalidRequestError(
        f"unexpected message {text[:MAX_QUOTED]!r}: send {audio}"
        'a {"type": "control", "action": ...} or {"type": "end"}')

