"""The Python client installs and works beside the protobuf its users' frameworks pin.

Pipecat caps protobuf below 7, others sit on 5.x, the daemon needs 7.x: the client ships
its messages once per protobuf major (clients/python/generate.py). Each case here is a
fresh virtual environment with one grpcio/protobuf pair, the oldest and the newest of each
major the client declares, into which ``clients/python`` is installed from source as a
user would (no daemon, no numpy); a script there streams jfk.wav to one live daemon and
must get the same finals as this environment's client.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from alfred_client import Client

from ..conftest import REPO
from ..grpc_helpers import JFK, STEADY_LADDER_ENV, Daemon, running_daemon

pytestmark = pytest.mark.slow

CLIENT = REPO / "clients" / "python"

CASES = [
    # (grpcio, protobuf): each major's oldest supported release with the client's grpcio
    # floor, and its newest release (pinned, so the test does not move under us).
    ("1.64.0", "5.26.1"),
    ("1.85.3", "5.29.6"),
    ("1.64.0", "6.30.0"),
    ("1.85.3", "6.33.6"),
    ("1.64.0", "7.35.0"),
    ("1.85.3", "7.36.2"),
]

SCRIPT = """
import json, sys
import google.protobuf, grpc
from alfred_client import Client
with Client(sys.argv[1]) as client:
    finals = [ev.data["text"] for ev in client.stream_wav(sys.argv[2])
              if ev.type == "final_transcription"]
print(json.dumps({"protobuf": google.protobuf.__version__, "grpcio": grpc.__version__,
                  "finals": finals}))
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    with running_daemon(tmp_path_factory.mktemp("compat"), env=STEADY_LADDER_ENV) as d:
        yield d


@pytest.fixture(scope="module")
def reference(daemon: Daemon) -> list[str]:
    with Client(daemon.target) as client:
        finals = [ev.data["text"] for ev in client.stream_wav(JFK)
                  if ev.type == "final_transcription"]
    assert len(finals) >= 2, finals
    return finals


def _fresh_env(where: Path, grpcio: str, protobuf: str) -> Path:
    # Built from a copy: pip builds in the source tree and would leave build/ in the repo.
    source = shutil.copytree(CLIENT, where / "client-src",
                             ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv.EnvBuilder(with_pip=True).create(where / "venv")
    where = where / "venv"
    python = where / "bin" / "python"
    # Only what a user's environment would give pip: no constraints of ours, the client's
    # own declared ranges must admit the pinned pair or pip fails here.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_CONSTRAINT",
                                                                    "VIRTUAL_ENV"))}
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         f"grpcio=={grpcio}", f"protobuf=={protobuf}", str(source)],
        capture_output=True, text=True, timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return python


@pytest.mark.timeout(900)
@pytest.mark.parametrize(("grpcio", "protobuf"), CASES)
def test_client_streams_in_a_fresh_env(tmp_path: Path, daemon: Daemon, reference: list[str],
                                       grpcio: str, protobuf: str) -> None:
    python = _fresh_env(tmp_path, grpcio, protobuf)
    done = subprocess.run([str(python), "-c", SCRIPT, daemon.target, str(JFK)],
                          capture_output=True, text=True, timeout=120, check=False,
                          cwd=tmp_path)  # not the repo: import the installed client only
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert (out["grpcio"], out["protobuf"]) == (grpcio, protobuf), out
    assert out["finals"] == reference, (out, reference)
    assert "Traceback" not in done.stderr and "Warning" not in done.stderr, done.stderr

