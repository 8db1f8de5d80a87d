"""Shared fixtures: real models (loaded once per test run) and the speech corpus.

The corpus lives in ``tests/data`` (sources and licences in its README.md and
``long/SOURCES.md``); ``ALFRED_SHARED_AUDIO`` points the suite at another copy.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from alfred_daemon.engine.audio import read_wav
from alfred_daemon.engine.jobs import Models
from alfred_daemon.engine.models import ModelsConfig, resolve_all

REPO = Path(__file__).resolve().parent.parent
SHARED_AUDIO = Path(os.environ.get("ALFRED_SHARED_AUDIO", REPO / "tests" / "data"))
"""Harvard sentences, jfk.wav, the labelled VAD clip and ``long/``."""


@dataclass(frozen=True)
class Utterance:
    file: str
    transcript: str
    audio: npt.NDArray[np.float32]


def _manifest() -> dict[str, Any]:
    path = SHARED_AUDIO / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"speech corpus not found at {path}; restore tests/data or set ALFRED_SHARED_AUDIO"
        )
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return _manifest()


@pytest.fixture(scope="session")
def utterances(manifest: dict[str, Any]) -> list[Utterance]:
    out = []
    for u in manifest["utterances"]:
        audio, rate = read_wav(SHARED_AUDIO / u["file"])
        assert rate == 16_000
        out.append(Utterance(u["file"], u["transcript"], audio))
    return out


@pytest.fixture(scope="session")
def long_utterances() -> list[Utterance]:
    """tests/data/long: 47 real-speech clips, 1-36 s, with transcripts (long/SOURCES.md)."""
    path = SHARED_AUDIO / "long" / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"long speech corpus not found at {path}")
    out = []
    for u in json.loads(path.read_text())["utterances"]:
        audio, rate = read_wav(SHARED_AUDIO / "long" / u["file"])
        assert rate == 16_000
        out.append(Utterance(u["file"], u["transcript"], audio))
    return out


@pytest.fixture(scope="session")
def models() -> Iterator[Models]:
    paths = resolve_all(ModelsConfig())
    yield Models.load(paths, threads=1)


def silence(seconds: float) -> npt.NDArray[np.float32]:
    return np.zeros(int(seconds * 16_000), dtype=np.float32)
