"""deploy/haproxy/haproxy.cfg and its renderer, offline: the checked-in file is the
renderer's output, HAProxy itself accepts it (``haproxy -c``, no traffic), it has the rules
issue 17 asks for, and bad input is a sentence. The config at work in front of real daemons
is tests/integration/test_scale_out.py."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.ops.haproxy import Backend, loopback, main, render

from ..conftest import REPO

CHECKED_IN = REPO / "deploy" / "haproxy" / "haproxy.cfg"


def haproxy() -> str:
    path = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail("haproxy is not installed: make setup apt-installs it")
    return path


def test_the_checked_in_config_is_the_renderers_output_and_haproxy_accepts_it() -> None:
    assert CHECKED_IN.read_text() == render(loopback(3)), (
        "deploy/haproxy/haproxy.cfg is stale: regenerate it with "
        "python -m alfred_daemon.ops.haproxy 3 > deploy/haproxy/haproxy.cfg")
    done = subprocess.run([haproxy(), "-c", "-f", str(CHECKED_IN)], capture_output=True,
                          text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[WARNING]" not in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_config_has_the_rules_the_scale_out_relies_on(tmp_path: Path) -> None:
    text = render(loopback(2), stats_socket=str(tmp_path / "s.sock"))
    for rule in ("bind 127.0.0.1:50050 proto h2", "balance leastconn",
                 "option httpchk GET /readyz", "stick match req.hdr(alfred-daemon-id)",
                 "stick store-response res.hdr(alfred-daemon-id)", "option persist",
                 "timeout tunnel 1h", "http-request deny deny_status 403 if { path /drain }",
                 "cookie alfred_srv insert indirect nocache",
                 f"stats socket {tmp_path / 's.sock'}"):
        assert rule in text, rule
    # gRPC servers: h2c traffic, HTTP/1 health check on the daemon's HTTP port, the agent.
    assert ("server d2 127.0.0.1:50062 proto h2 weight 100 check inter 1000ms fall 2 rise 1 "
            "agent-check agent-inter 500ms port 8022 check-proto h1 agent-port 8032") in text
    assert "server d1 127.0.0.1:8021 weight 100 check" in text and "cookie d1" in text
    path = tmp_path / "h.cfg"
    path.write_text(text)
    done = subprocess.run([haproxy(), "-c", "-f", str(path)], capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_daemon_lists_are_sentences(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match="at least one daemon"):
        render([])
    with pytest.raises(ConfigError, match="daemon names must be distinct; got d1, d1"):
        render([*loopback(1), *loopback(1)])
    with pytest.raises(ConfigError, match=r"daemon name 'a\.b' must be 1-63 letters"):
        Backend("a.b", "127.0.0.1", 1, 2, 3)
    with pytest.raises(ConfigError, match="daemon d1: agent port 0 is not 1-65535"):
        Backend("d1", "127.0.0.1", 1, 2, 0)
    assert main(["0"]) == 2
    assert capsys.readouterr().err == "error: daemon count 0 is out of range; allowed 1 .. 64\n"
    assert main(["2"]) == 0
    assert capsys.readouterr().out == render(loopback(2))


def test_local_cluster_script_parses_and_refuses_a_bad_count() -> None:
    script = REPO / "deploy" / "local-cluster.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30, check=False).returncode == 0
    for bad in ([], ["x"], ["0"], ["17"]):
        done = subprocess.run(["bash", str(script), *bad], capture_output=True, text=True,
                              timeout=30, check=False)
        assert done.returncode == 2 and "usage:" in done.stderr, (bad, done.stderr)
