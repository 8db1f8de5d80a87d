"""A real daemon process for fault tests: ``python tests/daemon_driver.py CONFIG_JSON``.

Runs ``alfred_daemon.ops.serve.serve`` (the same code path as ``alfred-daemon serve``, with
its signal handling), and once the daemon is up opens the sessions the config asks for and
streams a WAV file into each at real-time pace, looping. It prints one JSON object per line
on stdout: ``{"ready": ...}`` with worker pids and ring names, then every event as
``{"session": i, ...event fields}``, then ``{"exit": code}``. Tests SIGTERM or SIGKILL it.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from alfred_daemon.engine.audio import read_wav
from alfred_daemon.engine.config import EngineConfig
from alfred_daemon.ops.serve import serve
from alfred_daemon.runtime.config import RuntimeConfig, WorkersConfig
from alfred_daemon.runtime.errors import RuntimeApiError
from alfred_daemon.runtime.supervisor import Supervisor


def emit(obj: dict[str, Any]) -> None:
    print(json.dumps(obj), flush=True)


async def stream(sup: Supervisor, index: int, sid: str, pcm: bytes, loops: int) -> None:
    frame = 640  # 20 ms of 16 kHz int16
    t0 = time.monotonic()
    sent = 0
    try:
        for _ in range(loops):
            for i in range(0, len(pcm), frame):
                sup.push(sid, pcm[i : i + frame])
                sent += 1
                delay = t0 + sent * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
        await sup.finish_session(sid)
    except RuntimeApiError:
        pass  # draining: the supervisor finishes the session itself


async def relay(sup: Supervisor, index: int, sid: str) -> None:
    async for ev in sup.events(sid):
        emit({"session": index, **ev.to_dict()})


def main() -> int:
    spec = json.loads(sys.argv[1])
    audio, rate = read_wav(Path(spec["wav"]))
    assert rate == 16_000
    pcm = (audio * 32768).astype("<i2").tobytes()
    config = RuntimeConfig(
        runtime_dir=spec["runtime_dir"], shm_prefix=spec.get("shm_prefix", "alfredtest"),
        workers=WorkersConfig(count=spec.get("workers", 2)),
        drain_grace=spec.get("drain_grace", 10.0),
        engine=EngineConfig(frame_events=spec.get("frame_events", False)),
    )
    tasks: list[asyncio.Task[None]] = []

    async def on_ready(sup: Supervisor) -> None:
        sids = [sup.open_session() for _ in range(spec.get("sessions", 1))]
        status = sup.status()
        emit({"ready": True,
              "workers": [w["pid"] for w in status["workers"]],
              "sessions": sids})
        for i, sid in enumerate(sids):
            tasks.append(asyncio.create_task(relay(sup, i, sid)))
            tasks.append(asyncio.create_task(stream(sup, i, sid, pcm, spec.get("loops", 1))))

    code = asyncio.run(serve(config, None, on_ready=on_ready))
    emit({"exit": code})
    return code


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
