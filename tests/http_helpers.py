"""A live runtime with its HTTP ops surface, for the HTTP, WebSocket and monitor tests."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np

from alfred_daemon.api.auth import Authenticator
from alfred_daemon.api.http_server import HttpApi, HttpConfig
from alfred_daemon.engine.audio import float_to_pcm16, read_wav
from alfred_daemon.runtime.config import RuntimeConfig, WorkersConfig
from alfred_daemon.runtime.supervisor import Supervisor

from .conftest import REPO
from .runtime_helpers import steady_ladder

JFK = REPO / "tests" / "data" / "jfk.wav"


def jfk_pcm(tail_s: float = 1.0) -> bytes:
    """jfk.wav as LINEAR16 with ``tail_s`` of silence after it."""
    audio, _ = read_wav(JFK)
    return float_to_pcm16(np.concatenate([audio, np.zeros(int(16_000 * tail_s), np.float32)]))


@contextlib.asynccontextmanager
async def live_http(tmp_path: Path, auth: Authenticator | None = None,
                    **runtime: Any) -> AsyncIterator[tuple[Supervisor, HttpApi]]:
    """Supervisor (2 real workers) + HTTP on a free port; stopped afterwards. The ladder is
    held at NORMAL (``steady_ladder``): a test compares WebSocket and gRPC finals.
    ``auth``: tokens to require; ``runtime``: further :class:`RuntimeConfig` fields."""
    sup = Supervisor(RuntimeConfig(runtime_dir=str(tmp_path / "run"),
                                   shm_prefix=f"alfhttp{secrets.token_hex(3)}",
                                   workers=WorkersConfig(count=2),
                                   **{**steady_ladder(), **runtime}))
    await sup.start()
    http = HttpApi(sup, HttpConfig(port=0), auth=auth)
    try:
        await http.start()
        yield sup, http
    finally:
        await http.stop()
        await sup.stop(grace=0)
