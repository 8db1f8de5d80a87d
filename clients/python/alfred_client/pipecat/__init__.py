"""alfred-daemon for Pipecat 1.14: an STT service and the user-turn strategies it drives.

Install with the extra: ``pip install 'alfred-client[pipecat]'`` (Pipecat 1.14.x).
One daemon session per pipeline replaces the pipeline's local Silero VAD, Whisper STT and
Smart Turn analyzer::

    stt = AlfredSTTService(target="127.0.0.1:50051")
    user, assistant = LLMContextAggregatorPair(
        context, user_params=LLMUserAggregatorParams(
            user_turn_strategies=stt.user_turn_strategies()))
    Pipeline([transport.input(), stt, user, llm, tts, transport.output(), assistant])
"""

from .stt import DAEMON_RATES, AlfredSTTService
from .turns import (
    AlfredTurnEndedFrame,
    AlfredUserTurnStartStrategy,
    AlfredUserTurnStopStrategy,
    alfred_user_turn_strategies,
)

__all__ = ["DAEMON_RATES", "AlfredSTTService", "AlfredTurnEndedFrame",
           "AlfredUserTurnStartStrategy", "AlfredUserTurnStopStrategy",
           "alfred_user_turn_strategies"]
