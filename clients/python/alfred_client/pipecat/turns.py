"""User-turn strategies for Pipecat 1.14 driven by alfred-daemon's turn decisions.

Pipecat 1.x decides where a user turn starts and stops in the user aggregator
(``LLMUserAggregator``), with the strategies of a ``UserTurnStrategies``: start strategies
open the turn (``UserStartedSpeakingFrame``, and an interruption of the bot), stop
strategies close it, after which the aggregator writes the turn's transcript to the context
and runs the LLM. The stock stop strategy is ``TurnAnalyzerUserTurnStopStrategy`` with a
local ``LocalSmartTurnAnalyzerV3``, fed by a local Silero VAD in the aggregator.

Here the daemon has already made those decisions, on the same audio, with the same models
(Silero, Smart Turn v3, Whisper): :class:`~alfred_client.pipecat.stt.AlfredSTTService`
turns its ``speech_started`` (of a new turn) into Pipecat's
``ProposedUserStartedSpeakingFrame`` and its ``turn_ended`` into an
:class:`AlfredTurnEndedFrame` (a ``ProposedUserStoppedSpeakingFrame``), the proposals a
service with its own turn detection sends in 1.14 (as Deepgram Flux does). The strategies
below resolve them. They are built by the service (:meth:`AlfredSTTService.
user_turn_strategies`) and keep a reference to it, because two decisions need its state:

* whether opening a turn should interrupt the bot: not while the bot is speaking, when the
  daemon itself judges the barge-in (its ``interruption`` event, which the service
  broadcasts), so one barge-in gives one interruption;
* whether a turn that Pipecat ended on its own (the aggregator's ``user_turn_stop_timeout``
  watchdog, the end of the session) is still open in the daemon: then the daemon is told
  to end it too (``FORCE_END_OF_TURN``), so both sides agree on where the next turn starts.

That watchdog (5 s by default) is only 2 s above the daemon's 3 s silence fallback: a daemon
running seconds behind real time (an overloaded host) lets it end turns first. Raise
``LLMUserAggregatorParams(user_turn_stop_timeout=...)`` if the daemon may lag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from loguru import logger
from pipecat.frames.frames import (
    Frame,
    ProposedUserStartedSpeakingFrame,
    ProposedUserStoppedSpeakingFrame,
    UserStartedSpeakingFrame,
)
from pipecat.turns.types import ProcessFrameResult
from pipecat.turns.user_start import ExternalUserTurnStartStrategy
from pipecat.turns.user_stop import BaseUserTurnStopStrategy
from pipecat.turns.user_turn_strategies import UserTurnStrategies

if TYPE_CHECKING:
    from .stt import AlfredSTTService

__all__ = ["AlfredTurnEndedFrame", "AlfredUserTurnStartStrategy", "AlfredUserTurnStopStrategy",
           "alfred_user_turn_strategies"]


@dataclass
class AlfredTurnEndedFrame(ProposedUserStoppedSpeakingFrame):
    """The daemon's ``turn_ended``: a proposal to stop the user turn, with its details.

    A ``ProposedUserStoppedSpeakingFrame`` (a control frame), so it stays ordered behind the
    turn's last ``TranscriptionFrame`` -- the daemon never sends ``turn_ended`` before the
    turn's last final, and the service pushes both in that order -- and the aggregator
    treats it as any proposal (it is consumed there, not passed on to the LLM).
    """

    turn_id: int = 0
    reason: str = ""
    """``model`` (Smart Turn said complete), ``silence_fallback`` or ``forced``."""
    probability: float | None = None
    """Smart Turn's last output; None if it never ran."""
    transcript: str = ""
    """The whole turn's text, as the daemon assembled it from the turn's finals."""


class AlfredUserTurnStartStrategy(ExternalUserTurnStartStrategy):
    """Opens the user turn on the service's proposal (the daemon's first ``speech_started``
    of a turn).

    ``enable_interruptions`` interrupts whatever the bot is doing when the user starts a
    turn (an LLM answer in flight), as Pipecat's own start strategies do -- except while the
    bot is speaking: the service has then told the daemon ``PLAYBACK_STARTED``, the daemon
    reports the barge-in as ``interruption`` and the service broadcasts that one.
    """

    def __init__(self, service: AlfredSTTService, *, enable_interruptions: bool = True) -> None:
        super().__init__(enable_interruptions=enable_interruptions)
        self._service = service

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, ProposedUserStartedSpeakingFrame):
            interrupt = self._enable_interruptions and not self._service.bot_speaking
            await self.trigger_user_turn_started(enable_interruptions=interrupt)
            return ProcessFrameResult.STOP
        if isinstance(frame, UserStartedSpeakingFrame):
            result: ProcessFrameResult = await super().process_frame(frame)
            return result
        return ProcessFrameResult.CONTINUE


class AlfredUserTurnStopStrategy(BaseUserTurnStopStrategy):
    """Ends the user turn when the daemon ends it (:class:`AlfredTurnEndedFrame`).

    No waiting for transcripts (unlike ``ExternalUserTurnStopStrategy``): the daemon's
    ``turn_ended`` comes after the turn's last final by contract, and the frames keep that
    order, so the aggregator already holds the whole transcript when this fires.
    """

    def __init__(self, service: AlfredSTTService) -> None:
        super().__init__()
        self._service = service
        self._ended_by_daemon = False

    @property
    def resolves_proposed_turn_stop_frames(self) -> bool:
        return True

    async def process_frame(self, frame: Frame) -> ProcessFrameResult:
        if isinstance(frame, AlfredTurnEndedFrame):
            logger.debug(f"{self}: daemon ended turn {frame.turn_id} ({frame.reason}, "
                         f"p={frame.probability})")
            self._ended_by_daemon = True
            await self.trigger_user_turn_stopped()
            return ProcessFrameResult.STOP
        return ProcessFrameResult.CONTINUE

    async def handle_user_turn_started(self) -> None:
        self._ended_by_daemon = False

    async def handle_user_turn_stopped(self) -> None:
        """Called whoever ended the turn; if it was not the daemon and the daemon's turn is
        still open, end that one too."""
        if not self._ended_by_daemon and self._service.daemon_turn_open:
            logger.debug(f"{self}: turn ended in Pipecat first; forcing the daemon's end")
            await self._service.force_end_of_turn()
        self._ended_by_daemon = False


def alfred_user_turn_strategies(service: AlfredSTTService, *,
                                enable_interruptions: bool = True) -> UserTurnStrategies:
    """The start and stop strategies for ``LLMUserAggregatorParams(user_turn_strategies=)``:
    turns decided by the daemon behind ``service`` (no local VAD, Smart Turn or Whisper)."""
    return UserTurnStrategies(
        start=[AlfredUserTurnStartStrategy(service, enable_interruptions=enable_interruptions)],
        stop=[AlfredUserTurnStopStrategy(service)])
