"""A LiveKit Agents voice agent whose ears and turn-taking are alfred-daemon.

The daemon does what silero VAD + a cloud STT + LiveKit's turn-detector model do otherwise:
VAD, streaming transcripts and the end-of-turn decision (Smart Turn), on your own machine.
LiveKit's session is told to take the turn from the STT (``turn_detection="stt"``): the
plugin emits END_OF_SPEECH when the daemon says ``turn_ended``, and not at a pause Smart Turn
judged incomplete. The LLM and TTS stay whatever you use (LiveKit Inference model strings
here; they need LiveKit credentials when the agent runs, not to build it).

    pip install "alfred-client[livekit]"        # or ./clients/python[livekit]
    alfred-daemon serve                          # gRPC on 127.0.0.1:50051
    ALFRED_TARGET=127.0.0.1:50051 python livekit_agent.py dev   # LIVEKIT_URL/_API_KEY/_SECRET
"""

from __future__ import annotations

import os

from alfred_client import SessionOptions
from alfred_client.livekit import STT
from livekit.agents import (
    NOT_GIVEN,
    Agent,
    AgentServer,
    AgentSession,
    JobContext,
    NotGivenOr,
    TurnHandlingOptions,
    cli,
)

LLM_MODEL = os.environ.get("LLM_MODEL", "openai/gpt-4.1-mini")
TTS_MODEL = os.environ.get("TTS_MODEL", "cartesia/sonic-3")


def build_session(target: str | None = None, *, llm: NotGivenOr[str] = NOT_GIVEN,
                  tts: NotGivenOr[str] = NOT_GIVEN) -> AgentSession[None]:
    """The session: the daemon's STT and turn detection, no LiveKit-side VAD or turn model.
    ``llm``/``tts``: LiveKit Inference model strings (resolved, with credentials, when given).

    ``endpointing.min_delay`` counts from where the user's speech ended; the daemon has
    already waited its own pause (``turn_silence_ms``, 200 ms, then Smart Turn; 3 s of
    silence ends a turn regardless), so 0 takes its decision as it comes. ``max_delay`` is
    not used in this mode.
    """
    return AgentSession(
        stt=STT(target or os.environ.get("ALFRED_TARGET", "127.0.0.1:50051"),
                token=os.environ.get("ALFRED_TOKEN"),
                options=SessionOptions(language="en")),
        vad=None,  # the daemon runs Silero VAD itself; LiveKit's would be a second copy
        turn_handling=TurnHandlingOptions(turn_detection="stt",
                                          endpointing={"min_delay": 0.0}),
        llm=llm,
        tts=tts,
    )


server = AgentServer()


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session = build_session(llm=LLM_MODEL, tts=TTS_MODEL)
    await session.start(
        agent=Agent(instructions="You are a helpful voice assistant. Answer briefly."),
        room=ctx.room)


if __name__ == "__main__":
    cli.run_app(server)
