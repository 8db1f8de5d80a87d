"""alfred_client.livekit, the LiveKit Agents STT, against a live daemon.

LiveKit Agents lives in its own virtualenv, ``.venv-livekit`` (``make setup`` builds it from
clients/python/requirements-livekit.txt and installs clients/python[livekit] from source
into it), as a LiveKit user has it. ``tests/livekit_driver.py`` runs there: it pushes
jfk.wav, 4 s of silence, a TIMIT sentence and 4 s of silence as 10 ms ``rtc.AudioFrame``s
at real-time pace, at 48 kHz as a room carries them, into ``STT().stream()`` and prints the
``SpeechEvent``s it yielded and the daemon events behind them. The daemon runs in this
environment (``running_daemon``).

What it shows: LiveKit sees START_OF_SPEECH, interims and finals, END_OF_SPEECH for each
turn, in that order; END_OF_SPEECH comes exactly when the daemon said ``turn_ended`` --
each LiveKit turn's finals are the daemon turn's whole transcript, so a pause the daemon
resumed after (``turn_resumed``) did not end LiveKit's turn; the finals' WER is bounded.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..conftest import REPO
from ..grpc_helpers import JFK, JFK_REFERENCE, STEADY_LADDER_ENV, Daemon, running_daemon, wer

pytestmark = pytest.mark.slow

VENV = REPO / ".venv-livekit"
PYTHON = VENV / "bin" / "python"
DRIVER = REPO / "tests" / "livekit_driver.py"
EXAMPLE = REPO / "clients" / "python" / "examples" / "livekit_agent.py"
CLIENT = REPO / "clients" / "python" / "alfred_client"

TIMIT = REPO / "tests" / "data" / "long" / "deepspeech_LDC93S1.wav"
TIMIT_REFERENCE = "She had your dark suit in greasy wash water all year."
GAP_S = 4.0
"""Silence after each file: past the daemon's 3 s fallback, so each file ends a turn."""
WER_BOUND = 0.10
"""jfk.wav + the TIMIT sentence are 33 words. The daemon's default model (tiny.en) gets JFK
right and hears "She had your dog suit in greasy wash for all year": 2 of 33 (0.06). 0.10
allows one word more, not a lost or repeated utterance."""
END_LATENCY_BOUND_S = 8.0
"""END_OF_SPEECH after the user's speech ended, a sanity bound rather than a latency claim:
the daemon waits 200 ms of silence (Smart Turn) up to 3 s (fallback) and sends the turn end
after the turn's final, whose decode took 2-3.7 s on this shared, loaded 2-core machine."""


FIRST_AUDIO_TIMEOUT_S = 5.0
"""The daemon's ``limits.firstAudioTimeout`` (default): a session without a second of audio
by then is closed as idle. The module's daemon sweeps every 0.5 s (default 30 s) so the
reopen case sees that within a second."""
DAEMON_ENV = {**STEADY_LADDER_ENV, "ALFRED__LIMITS__CLEANUPINTERVAL": "0.5",
              "ALFRED__LIMITS__FIRSTAUDIOTIMEOUT": str(FIRST_AUDIO_TIMEOUT_S)}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("livekit"), env=DAEMON_ENV) as d:
        yield d


def _installed_client() -> Path:
    if not PYTHON.is_file():
        pytest.fail(f"{PYTHON} is missing: `make setup` (or `make livekit-env`) builds "
                    ".venv-livekit with LiveKit Agents and clients/python[livekit]")
    found = sorted(VENV.glob("lib/python3*/site-packages/alfred_client"))
    if not found:
        pytest.fail(f"alfred_client is not installed in {VENV}: run `make livekit-env`")
    return found[-1]


def test_installed_plugin_is_this_tree() -> None:
    """The driver imports the installed copy: it must be the source in the tree (make
    rebuilds .venv-livekit when clients/python changes; a direct pytest run does not)."""
    installed = _installed_client()
    for rel in ("__init__.py", "livekit/__init__.py", "livekit/stt.py"):
        assert (installed / rel).read_bytes() == (CLIENT / rel).read_bytes(), (
            f"{installed / rel} differs from the tree: run `make livekit-env`")


@pytest.fixture(scope="module")
def run(daemon: Daemon) -> dict[str, Any]:
    _installed_client()
    done = subprocess.run(
        [str(PYTHON), str(DRIVER), daemon.target, str(EXAMPLE), str(FIRST_AUDIO_TIMEOUT_S + 1),
         str(JFK), str(GAP_S), str(TIMIT), str(GAP_S)],
        capture_output=True, text=True, timeout=240, check=False,
        cwd=VENV)  # not the repo: import the installed client only
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def _turns(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """The events between each START_OF_SPEECH and its END_OF_SPEECH; asserts that every
    transcript is inside one and that they do not nest."""
    turns: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] | None = None
    for ev in events:
        kind = ev["type"]
        if kind == "start_of_speech":
            assert current is None, f"START_OF_SPEECH inside a turn: {ev}"
            current = []
        elif kind == "end_of_speech":
            assert current is not None, f"END_OF_SPEECH outside a turn: {ev}"
            turns.append(current)
            current = None
        elif kind in ("interim_transcript", "final_transcript"):
            assert current is not None, f"transcript outside START/END_OF_SPEECH: {ev}"
            current.append(ev)
    assert current is None, "the last turn was not ended"
    return turns


def _finals(turn: list[dict[str, Any]]) -> list[str]:
    return [ev["text"] for ev in turn if ev["type"] == "final_transcript"]


def test_speech_events_in_order(run: dict[str, Any]) -> None:
    events = run["events"]
    turns = _turns(events)
    assert len(turns) >= 2, [e["type"] for e in events]
    for turn in turns:
        kinds = [ev["type"] for ev in turn]
        assert "final_transcript" in kinds, kinds
        assert kinds[-1] == "final_transcript", f"a turn ended on an interim: {kinds}"
    interims = [ev for ev in events if ev["type"] == "interim_transcript"]
    assert len(interims) >= 3, "partials were not forwarded as INTERIM_TRANSCRIPT"
    finals = [ev for ev in events if ev["type"] == "final_transcript"]
    assert all(ev["language"] == "en" for ev in finals)
    starts = [ev["start_time"] for ev in finals]
    assert starts == sorted(starts), starts
    assert all(0 <= ev["start_time"] < ev["end_time"] for ev in finals), finals
    assert len({ev["request_id"] for ev in events}) == 1, "one daemon session"
    assert "recognition_usage" in {ev["type"] for ev in events}


def test_finals_wer(run: dict[str, Any]) -> None:
    finals = [ev["text"] for ev in run["events"] if ev["type"] == "final_transcript"]
    reference = f"{JFK_REFERENCE} {TIMIT_REFERENCE}"
    assert wer(reference, " ".join(finals)) <= WER_BOUND, finals
    # STT.recognize (non-streaming): the same audio in one buffer.
    assert run["recognize"]["type"] == "final_transcript"
    assert wer(reference, run["recognize"]["text"]) <= WER_BOUND, run["recognize"]


def test_end_of_speech_is_the_daemons_turn_end(run: dict[str, Any]) -> None:
    """One LiveKit turn per daemon turn, holding exactly that turn's finals: LiveKit's end of
    turn is Smart Turn's (or the daemon's silence fallback), not a pause's."""
    turns = _turns(run["events"])
    ended = [ev for ev in run["daemon"] if ev["type"] == "turn_ended"]
    assert len(turns) == len(ended), (len(turns), [e["transcript"] for e in ended])
    for turn, end in zip(turns, ended, strict=True):
        assert wer(end["transcript"], " ".join(_finals(turn))) == 0.0, (turn, end)
    # The files are GAP_S apart: the JFK sentence's last words and the TIMIT sentence are
    # in different turns, and the last turn is the TIMIT sentence, ended after its last
    # word (the stream's last END_OF_SPEECH follows the last final).
    last = " ".join(_finals(turns[-1])).lower()
    assert "greasy" in last and "year" in last and "country" not in last, last
    assert run["events"][-1]["type"] in ("end_of_speech", "recognition_usage")


def test_turn_resumed_keeps_the_turn_open(run: dict[str, Any]) -> None:
    """Where the daemon resumed a turn (speech after a pause Smart Turn judged incomplete),
    the utterances before and after the pause are finals of one LiveKit turn."""
    daemon = run["daemon"]
    resumed = {ev["turn_id"] for ev in daemon if ev["type"] == "turn_resumed"}
    ended = [ev["turn_id"] for ev in daemon if ev["type"] == "turn_ended"]
    turns = _turns(run["events"])
    for turn_id in resumed:
        turn = turns[ended.index(turn_id)]
        assert len(_finals(turn)) >= 2, (turn_id, turn)
    # Each turn with several utterances shows the same thing without turn_resumed too.
    utterances = sum(1 for ev in daemon if ev["type"] == "speech_started")
    assert utterances > len(turns) or resumed, "no pause inside a turn was exercised"


def test_start_and_end_times(run: dict[str, Any]) -> None:
    events = run["events"]
    for ev in events:
        if ev["type"] == "start_of_speech":
            assert ev["speech_start_time"] is not None
            assert ev["speech_start_time"] <= ev["created_at"] + 0.05, ev
        if ev["type"] == "end_of_speech":
            end = ev["speech_end_time"]
            assert end is not None and end <= ev["created_at"] + 0.05, ev
            assert ev["created_at"] - end <= END_LATENCY_BOUND_S, ev


def test_example_agent_builds(run: dict[str, Any]) -> None:
    assert run["example"] == {"stt": "alfred_client.livekit.stt.STT",
                              "turn_detection": "stt", "vad": False}


def test_errors_drive_livekits_retry(run: dict[str, Any]) -> None:
    """An unreachable daemon is a retryable APIConnectionError: LiveKit tries max_retry (2)
    more times, then gives up. A config the daemon refuses (INVALID_ARGUMENT) is a 400
    APIStatusError: no retry, it would be refused again."""
    unreachable, refused = run["errors"]["unreachable"], run["errors"]["refused"]
    assert unreachable["raised"] == "APIConnectionError", unreachable
    assert [e["recoverable"] for e in unreachable["errors"]] == [True, True, False], unreachable
    assert all(e["error"] == "APIConnectionError" for e in unreachable["errors"]), unreachable
    assert refused["raised"] == "APIStatusError", refused
    assert refused["errors"] == [{"error": "APIStatusError", "recoverable": False,
                                  "status_code": 400}], refused


def test_session_opens_at_first_audio_and_reopens(run: dict[str, Any]) -> None:
    """No daemon session while LiveKit's stream has no audio (the daemon would close it
    after firstAudioTimeout); one the daemon closes while the stream goes on (idle) is
    followed by another at the next frame, which carries the speech to its turn end."""
    reopen = run["reopen"]
    assert reopen["sessions_before_audio"] == 0, reopen
    assert reopen["started"] == 2 and reopen["closed"][0] == "idle", reopen
    turns = _turns(reopen["events"])
    assert len(turns) >= 1, reopen["events"]
    finals = " ".join(f for turn in turns for f in _finals(turn))
    assert wer(JFK_REFERENCE, finals) <= WER_BOUND, finals
