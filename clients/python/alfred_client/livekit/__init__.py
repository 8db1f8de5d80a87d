"""alfred-daemon for LiveKit Agents: streaming STT whose end of speech is the daemon's turn.

Install with the extra (``pip install "alfred-client[livekit]"``, tested with the
livekit-agents release pinned in ``clients/python/requirements-livekit.txt``)::

    from livekit.agents import AgentSession
    from alfred_client.livekit import STT

    session = AgentSession(
        stt=STT("127.0.0.1:50051"),
        vad=None,                                   # the daemon runs its own VAD
        turn_handling={"turn_detection": "stt",     # the STT's END_OF_SPEECH ends the turn
                       "endpointing": {"min_delay": 0.0}},
        llm=..., tts=...,
    )

The daemon runs Silero VAD, faster-whisper and Smart Turn on one gRPC stream; the plugin
turns its events into LiveKit ``SpeechEvent``s. ``START_OF_SPEECH`` opens a user turn,
``END_OF_SPEECH`` closes it only when the daemon says ``turn_ended`` (Smart Turn judged the
turn complete, or the silence fallback, or a forced end) -- a pause Smart Turn judged
incomplete (``turn_resumed`` when the user goes on) keeps the turn open. That is LiveKit's
``turn_detection="stt"`` mode, the one it uses for providers with their own turn model
(Deepgram Flux, AssemblyAI): no LiveKit-side VAD or turn-detector model is needed.
"""

from __future__ import annotations

from .stt import STT, SpeechStream, api_error

__all__ = ["STT", "SpeechStream", "api_error"]
