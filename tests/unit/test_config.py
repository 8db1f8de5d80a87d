"""The config file: every knob, validated with messages that name the key, env overrides."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from alfred_daemon.engine.errors import ConfigError
from alfred_daemon.ops.config import (
    DaemonConfig,
    dumps,
    from_mapping,
    load,
    restart_needed,
    to_mapping,
)
from alfred_daemon.runtime.backpressure import Level
from alfred_daemon.runtime.supervisor import Supervisor

from ..conftest import REPO

EXAMPLE = REPO / "systemd" / "alfred-daemon.toml"


def flat_keys(doc: dict[str, object], prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in doc.items():
        key = f"{prefix}.{k}" if prefix else k
        out |= flat_keys(v, key) if isinstance(v, dict) else {key}
    return out


def test_example_file_loads_and_documents_every_key() -> None:
    cfg = load(EXAMPLE, environ={})
    assert cfg.runtime.coordination.threshold == 0.8
    assert cfg.runtime.coordination.recovery_threshold == 0.6
    assert cfg.http.port == 8015 and cfg.grpc.listen == "127.0.0.1:50051"
    text = EXAMPLE.read_text()
    sections = set(re.findall(r"^\[([\w.]+)\]$", text, re.M))
    for key in flat_keys(to_mapping(DaemonConfig())):
        section, name = key.rsplit(".", 1)
        assert section in sections, section
        assert re.search(rf"^#? ?{re.escape(name)} = ", text, re.M), key


def test_defaults_round_trip_through_show() -> None:
    import tomllib

    text = dumps(to_mapping(DaemonConfig()))
    assert from_mapping(tomllib.loads(text)) == from_mapping({})


@pytest.mark.parametrize(("doc", "message"), [
    ({"processor": {"max_batch_size": 0}}, "processor.max_batch_size = 0 is out of range"),
    ({"limits": {"maxMemoryMB": 5}}, "unknown key limits.maxMemoryMB; allowed: maxMemoryUsageMB"),
    ({"engine": {"stt": {"beam_size": "five"}}}, "engine.stt.beam_size = 'five' must be an int"),
    ({"coordination": {"threshold": 0.5}}, "coordination.recovery_threshold"),
    ({"coordination": {"degradation_steps": ["sleep"]}}, "unknown step 'sleep'"),
    ({"nonsense": {}}, "unknown section [nonsense]"),
    ({"workers": {"pin": "yes"}}, "workers.pin = 'yes' must be true or false"),
    ({"logging": {"format": "xml"}}, "logging.format = 'xml'"),
    ({"engine": {"vad": {"threshold": 1.5}}}, "vad.threshold = 1.5 is out of range"),
    # A key is shown quoted when TOML would quote it: a newline in it (found by the fuzz
    # campaign) must not split the one-line error.
    ({"\n": 1}, 'unknown section ["\\n"]'),
    ({"limits": {"a b\r\n": 1}}, 'unknown key limits."a b\\r\\n"'),
    ({"engine": {"\x1b[31m": 1}}, 'unknown key engine."\\u001b[31m"'),
])
def test_errors_name_the_key(doc: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(doc)
    assert message in str(exc.value)
    assert str(exc.value).isprintable(), str(exc.value)


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[engine.stt]\nbeam_size = 3\n[limits]\nmaxMemoryUsageMB = 900\n")
    cfg = load(path, environ={"ALFRED__ENGINE__STT__BEAM_SIZE": "1",
                              "ALFRED__LIMITS__MAXMEMORYUSAGEMB": "2048",
                              "ALFRED__GRPC__LISTEN": "0.0.0.0:6000",
                              "UNRELATED": "x"})
    assert cfg.runtime.engine.stt.beam_size == 1
    assert cfg.runtime.limits.maxMemoryUsageMB == 2048
    assert cfg.grpc.listen == "0.0.0.0:6000"
    with pytest.raises(ConfigError, match="ALFRED__ENGINE__NOPE"):
        load(None, environ={"ALFRED__ENGINE__NOPE": "1"})
    with pytest.raises(ConfigError, match="not found"):
        load(tmp_path / "missing.toml", environ={})


def test_reload_applies_live_keys_and_names_the_rest() -> None:
    old = DaemonConfig()
    new = from_mapping({"coordination": {"threshold": 0.9}, "workers": {"count": 3},
                        "alerts": {"load": 0.95}, "grpc": {"listen": "127.0.0.1:1"}})
    assert set(restart_needed(old, new)) == {"workers.count", "grpc.listen"}
    sup = Supervisor(old.runtime)  # never started: apply_config is pure bookkeeping
    sup.apply_config(new.runtime)
    assert sup.ladder.config.threshold == 0.9 and sup.ladder.level is Level.NORMAL
    assert sup.monitor.thresholds.load == 0.95
    assert sup.config.workers.count == old.runtime.workers.count  # kept until a restart


@pytest.mark.parametrize(("content", "message"), [
    (b"[processor]\nmax_batch_size = 3\xc9\n", r"not UTF-8 text \(byte 30\); TOML files are UTF-8"),
    (b"engine = 1\n", r"\[engine\] must be a table"),
    (b"runtime = [1, 2]\n", r"\[runtime\] must be a table"),
])
def test_unreadable_or_misshapen_files_are_one_sentence(tmp_path: Path, content: bytes,
                                                        message: str) -> None:
    """Found by benchmarks/fuzz_campaign.py: these raised UnicodeDecodeError, TypeError or
    AttributeError, so `config check` ended with a traceback and exit 1."""
    path = tmp_path / "bad.toml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load(path, environ={})


def test_a_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot be read"):
        load(tmp_path, environ={})
